from datetime import date
from unittest.mock import patch

from odoo import fields
from odoo.exceptions import AccessError, ValidationError
from odoo.tests import tagged

from .common import FinanceCase


@tagged("post_install", "-at_install")
class TestGeneratorAndRules(FinanceCase):
    def generate(self, period_type, **values):
        wizard = self.env["ipai.filing.task.generator"].create(
            {"project_id": self.project.id, "period_type": period_type, "year": 2026, **values}
        )
        action = wizard.action_generate()
        return self.env["project.task"].search(action["domain"], order="ipai_filing_deadline, id")

    def deadlines(self, tasks):
        return {
            task.ipai_bir_form_id.code: (task.ipai_prep_deadline, task.ipai_filing_deadline)
            for task in tasks
        }

    def test_month_generates_the_monthly_forms_with_their_deadlines(self):
        tasks = self.generate("month", month="1")
        self.assertEqual(
            self.deadlines(tasks),
            {
                "1601-C": (date(2026, 2, 5), date(2026, 2, 10)),
                "0619-E": (date(2026, 2, 5), date(2026, 2, 10)),
            },
        )
        self.assertEqual(set(tasks.mapped("ipai_period_covered")), {"2026-01"})
        self.assertEqual(
            len(self.outbox("finance_task.created")), 2, "generated tasks announce themselves"
        )

    def test_quarter_generates_the_quarterly_forms_with_their_deadlines(self):
        tasks = self.generate("quarter", quarter="1")
        self.assertEqual(
            self.deadlines(tasks),
            {
                "1601-EQ": (date(2026, 4, 25), date(2026, 4, 30)),  # last day of the next month
                "2550Q": (date(2026, 4, 20), date(2026, 4, 25)),  # 25 days after the quarter
                "1702Q": (date(2026, 5, 25), date(2026, 5, 30)),  # 60 days after the quarter
            },
        )
        self.assertEqual(tasks.mapped("ipai_task_code")[0][:4], "BIR-")

    def deadline_in_manila_of_2550q_for_q1(self):
        tasks = self.generate("quarter", quarter="1")
        task = tasks.filtered(lambda t: t.ipai_bir_form_id.code == "2550Q")
        local = fields.Datetime.context_timestamp(
            task.with_context(tz="Asia/Manila"), task.date_deadline
        )
        return local.date(), local.hour

    def test_generated_deadlines_fall_on_the_filing_day_where_the_company_is(self):
        """'File by 2026-04-25' must read 25 April 09:00 in Manila, whatever the server's zone."""
        self.env.company.partner_id.tz = "Asia/Manila"
        self.assertEqual(self.deadline_in_manila_of_2550q_for_q1(), (date(2026, 4, 25), 9))

    def test_without_a_company_zone_deadlines_fall_in_manila_not_in_the_users_zone(self):
        """A company with no time zone, an administrator in Paris: still 09:00 in Manila."""
        self.env.company.partner_id.tz = False
        self.env.user.tz = "Europe/Paris"
        self.assertEqual(self.deadline_in_manila_of_2550q_for_q1(), (date(2026, 4, 25), 9))

    def test_the_generator_offers_the_periods_that_just_closed(self):
        """Opened on 2 December 2026: November (2026), Q3 (2026), and the year 2025; in
        January, December of the year before."""
        generator = self.env["ipai.filing.task.generator"].with_context(ipai_today=None)
        for today, month, quarter, year_of in [
            (date(2026, 12, 2), ("2026", "11"), ("2026", "3"), 2025),
            (date(2027, 1, 5), ("2026", "12"), ("2026", "4"), 2026),
        ]:
            with patch.object(fields.Date, "context_today", lambda *a, today=today: today):
                wizard = generator.create({"project_id": self.project.id})
                self.assertEqual((str(wizard.year), wizard.month), month)
                self.assertEqual(wizard.quarter, quarter[1])
                wizard.period_type = "quarter"
                wizard._onchange_period_type()
                self.assertEqual(str(wizard.year), quarter[0])
                wizard.period_type = "year"
                wizard._onchange_period_type()
                self.assertEqual(wizard.year, year_of)

    def test_days_late_is_not_summed_over_a_group(self):
        """The filing list grouped by period shows the worst lateness, not a sum of days."""
        tasks = self.new_task(ipai_filing_deadline=date(2026, 2, 10)) | self.new_task(
            ipai_filing_deadline=date(2026, 2, 12), ipai_prep_deadline=date(2026, 2, 5)
        )
        tasks.with_context(ipai_today=date(2026, 2, 15))._compute_ipai_days_overdue()
        self.assertEqual(sorted(tasks.mapped("ipai_days_overdue")), [3, 5])
        [group] = self.env["project.task"].web_read_group(
            [("id", "in", tasks.ids)], ["ipai_days_overdue"], ["ipai_period_covered"]
        )["groups"]
        self.assertEqual(group["ipai_days_overdue"], 5)

    def test_generator_is_idempotent(self):
        first = self.generate("month", month="1")
        again = self.generate("month", month="1")
        self.assertTrue(first and not again, "an existing form and period is skipped")

    def test_monthly_cron_generates_what_just_closed(self):
        self.project.ipai_auto_generate = True
        created = self.env["project.task"]._cron_generate_filing_tasks(today=date(2026, 4, 1))
        self.assertEqual(set(created.mapped("ipai_period_covered")), {"2026-03", "2026-Q1"})

    def test_filing_deadline_before_preparation_is_refused(self):
        with self.assertRaises(ValidationError) as caught:
            self.new_task(ipai_prep_deadline=date(2026, 2, 12))
        self.assertIn("before the preparation deadline", str(caught.exception))

    def test_unknown_period_format_is_refused(self):
        with self.assertRaises(ValidationError) as caught:
            self.new_task(ipai_period_covered="January 2026")
        self.assertIn("Write 2026-01 for a month", str(caught.exception))
        with self.assertRaises(ValidationError) as caught:
            self.new_task(ipai_period_covered="2026-Q1")
        self.assertIn("1601-C is filed monthly", str(caught.exception))

    def test_stage_mapped_twice_is_refused(self):
        with self.assertRaises(ValidationError) as caught:
            self.env["project.task.type"].create(
                {
                    "name": "Also filed",
                    "ipai_finance_step": "filed",
                    "project_ids": [(4, self.project.id)],
                }
            )
        self.assertIn("already mapped to the stage Filed", str(caught.exception))

    def test_logframe_levels_must_descend(self):
        goal = self.env["ipai.logframe"].create({"name": "Compliance", "level": "goal"})
        with self.assertRaises(ValidationError):
            self.env["ipai.logframe"].create(
                {"name": "Backwards", "level": "goal", "parent_id": goal.id}
            )

    def test_project_users_read_the_calendar_and_managers_edit_it(self):
        as_user = self.env(user=self.accountant)
        self.assertTrue(as_user["ipai.bir.form"].search([("code", "=", "1601-C")]))
        with self.assertRaises(AccessError):
            as_user["ipai.bir.form"].browse(self.form_1601c.id).write({"deadline_day": 15})
        with self.assertRaises(AccessError):
            as_user["ipai.filing.task.generator"].create({"project_id": self.project.id})
        manager = self.env["res.users"].create(
            {
                "name": "Finance Manager",
                "login": "finance.manager",
                "groups_id": [(6, 0, [self.env.ref("project.group_project_manager").id])],
            }
        )
        self.env(user=manager)["ipai.bir.form"].browse(self.form_1601c.id).write({"deadline_day": 12})
        self.assertEqual(self.form_1601c.deadline_day, 12)
