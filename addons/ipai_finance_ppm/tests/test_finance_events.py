from datetime import date

from odoo.tests import tagged

from .common import FinanceCase


@tagged("post_install", "-at_install")
class TestFinanceEvents(FinanceCase):
    def test_created_once_with_the_catalog_payload(self):
        """A finance task announces itself once, with every catalog field."""
        task = self.new_task()
        [event] = self.outbox("finance_task.created")
        payload = self.assertCatalogPayload(event)
        self.assertEqual(event.res_id, task.id)
        self.assertEqual(payload["bir_form"], "1601-C")
        self.assertEqual(payload["period_covered"], "2026-01")
        self.assertEqual(payload["filing_deadline"], "2026-02-10")
        self.assertEqual(payload["prep_deadline"], "2026-02-05")
        self.assertEqual(payload["assigned_to"], "Ana Reyes")
        self.assertEqual(payload["logframe_level"], "output")
        self.assertEqual(event.aggregate_type, "project.task")

    def test_each_step_emits_once_per_real_transition(self):
        """Moving through the mapped stages emits in_progress, submitted, approved, filed once."""
        task = self.new_task()
        for step in ("in_progress", "submitted", "approved", "filed"):
            task.stage_id = self.stages[step]
            task.stage_id = self.stages[step]  # the same stage again is no transition
            task.write({"description": "notes, no step change"})
            events = self.outbox(f"finance_task.{step}")
            self.assertEqual(len(events), 1, f"finance_task.{step} exactly once")
            self.assertEqual(self.assertCatalogPayload(events)["status"], step)

    def test_unmapped_stage_and_other_writes_emit_nothing(self):
        task = self.new_task()
        unmapped = self.env["project.task.type"].create(
            {"name": "Waiting for documents", "project_ids": [(4, self.project.id)]}
        )
        task.stage_id = unmapped
        task.name = "1601-C January (renamed)"
        self.assertEqual(len(self.outbox()), 1, "only the created event")

    def test_ordinary_project_tasks_stay_quiet(self):
        plain = self.env["project.project"].create({"name": "Office move"})
        self.env["project.task"].create({"name": "Book movers", "project_id": plain.id})
        self.assertFalse(self.outbox())

    def test_overdue_cron_counts_days_and_does_not_repeat_the_same_day(self):
        """Three days after the filing deadline: days_overdue 3, one event that day."""
        task = self.new_task()
        model = self.env["project.task"]
        self.assertEqual(model._cron_detect_overdue_finance_tasks(today=date(2026, 2, 13)), 1)
        model._cron_detect_overdue_finance_tasks(today=date(2026, 2, 13))
        [event] = self.outbox("finance_task.overdue")
        self.assertEqual(self.assertCatalogPayload(event)["days_overdue"], 3)
        self.assertEqual(task.ipai_days_overdue, 3)
        model._cron_detect_overdue_finance_tasks(today=date(2026, 2, 14))
        self.assertEqual(len(self.outbox("finance_task.overdue")), 2, "a new day, a new reminder")

    def test_overdue_cron_never_fires_for_filed_tasks(self):
        task = self.new_task()
        task.stage_id = self.stages["filed"]
        self.assertEqual(
            self.env["project.task"]._cron_detect_overdue_finance_tasks(today=date(2026, 3, 1)), 0
        )
        self.assertFalse(self.outbox("finance_task.overdue"))

    def test_overdue_cron_never_fires_for_done_or_cancelled_tasks(self):
        """A task closed in Odoo (done or cancelled) is no longer work to chase."""
        done, cancelled, still_open = self.new_task(), self.new_task(), self.new_task()
        done.state = "1_done"
        cancelled.state = "1_canceled"
        count = self.env["project.task"]._cron_detect_overdue_finance_tasks(today=date(2026, 3, 1))
        self.assertEqual(count, 1, "only the open task is overdue")
        [event] = self.outbox("finance_task.overdue")
        self.assertEqual(event.res_id, still_open.id)
        self.assertEqual(
            (done.ipai_days_overdue, cancelled.ipai_days_overdue),
            (0, 0),
            "closed tasks show no days overdue",
        )

    def test_created_straight_into_a_mapped_stage_announces_created_then_that_step(self):
        """Quick-create in the Preparing column: created, then in_progress, in that order;
        status is the step code and the stage's name travels in its own field."""
        task = self.new_task(stage_id=self.stages["in_progress"].id)
        events = self.outbox()
        self.assertEqual(
            events.mapped("event_type"), ["finance_task.created", "finance_task.in_progress"]
        )
        payload = self.assertCatalogPayload(events[1])
        self.assertEqual((payload["status"], payload["stage_name"]), ("in_progress", "Preparing"))
        self.assertEqual(events.mapped("res_id"), [task.id, task.id])
        task.stage_id = self.stages["in_progress"]
        self.assertEqual(len(self.outbox()), 2, "no step change, nothing more")

    def test_status_is_a_step_code_even_in_an_unmapped_stage(self):
        self.new_task()
        payload = self.assertCatalogPayload(self.outbox("finance_task.created"))
        self.assertEqual((payload["status"], payload["stage_name"]), ("draft", "To prepare"))
