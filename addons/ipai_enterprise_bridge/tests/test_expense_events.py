from odoo import Command, fields
from odoo.addons.hr_expense.tests.common import TestExpenseCommon
from odoo.tests import tagged

from .common import OutboxAssertions


@tagged("post_install", "-at_install")
class TestExpenseEvents(OutboxAssertions, TestExpenseCommon):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.expense_employee.barcode = "20170017"

    def two_line_report(self, payment_mode="own_account"):
        line = {
            "employee_id": self.expense_employee.id,
            "product_id": self.product_c.id,
            "date": self.frozen_today,
            "payment_mode": payment_mode,
            "company_id": self.company_data["company"].id,
            "currency_id": self.company_data["currency"].id,
        }
        return self.env["hr.expense.sheet"].create(
            {
                "name": "Client visit",
                "employee_id": self.expense_employee.id,
                "company_id": self.company_data["company"].id,
                "expense_line_ids": [
                    Command.create({**line, "name": "Taxi", "total_amount_currency": 250.0}),
                    Command.create({**line, "name": "Lunch", "total_amount_currency": 480.5}),
                ],
            }
        )

    def approved_company_paid_report(self):
        """Paid by the company: posting its journal entry makes it paid at once."""
        sheet = self.two_line_report(payment_mode="company_account")
        sheet.action_submit_sheet()
        sheet.action_approve_expense_sheets()
        return sheet

    def test_submit_emits_one_event_per_line_with_the_catalog_payload(self):
        """Submitting a report emits expense.submitted once for each of its lines."""
        sheet = self.two_line_report()
        sheet.action_submit_sheet()
        events = self.outbox("expense.submitted")
        self.assertEqual(len(events), 2, "one event per expense line")
        self.assertEqual(set(events.mapped("res_id")), set(sheet.expense_line_ids.ids))
        taxi = sheet.expense_line_ids.filtered(lambda line: line.name == "Taxi")
        payload = self.assertCatalogPayload(events.filtered(lambda e: e.res_id == taxi.id))
        self.assertEqual(payload["expense_id"], taxi.id)
        self.assertEqual(payload["employee_code"], "20170017")
        self.assertEqual(payload["amount"], 250.0)
        self.assertEqual(payload["currency"], self.company_data["currency"].name)
        self.assertEqual(payload["description"], "Taxi")
        self.assertEqual(payload["date"], "2022-01-25")
        self.assertEqual(payload["category"], self.product_c.name)
        self.assertEqual(events[0].aggregate_type, "hr.expense")
        self.assertTrue(
            all(event.idempotency_key.startswith("expense.submitted:") for event in events),
            "key is {event_type}:{record_id}:{timestamp}",
        )

    def test_a_renamed_category_is_what_the_next_event_carries(self):
        """The stored names the events read follow the product and currency they copy."""
        sheet = self.two_line_report()
        self.product_c.name = "Ground transport"
        sheet.action_submit_sheet()
        payload = self.assertCatalogPayload(self.outbox("expense.submitted")[0])
        self.assertEqual(payload["category"], "Ground transport")
        self.assertEqual(payload["currency"], sheet.expense_line_ids[0].currency_id.name)

    def test_double_submit_emits_nothing_more(self):
        """A second click on Submit is not a transition: no second event."""
        sheet = self.two_line_report()
        sheet.action_submit_sheet()
        sheet.action_submit_sheet()
        self.assertEqual(len(self.outbox("expense.submitted")), 2)

    def test_approve_emits_once_per_line(self):
        """Approval emits expense.approved once per line, and a repeat emits nothing."""
        sheet = self.two_line_report()
        sheet.action_submit_sheet()
        sheet.action_approve_expense_sheets()
        sheet._do_approve()
        events = self.outbox("expense.approved")
        self.assertEqual(len(events), 2)
        self.assertEqual(self.assertCatalogPayload(events[0])["state"], "approved")

    def test_refuse_emits_rejected(self):
        """Refusal (Odoo 18's _do_refuse) emits expense.rejected once per line."""
        sheet = self.two_line_report()
        sheet.action_submit_sheet()
        sheet._do_refuse("Receipt missing")
        sheet._do_refuse("Receipt missing")
        self.assertEqual(len(self.outbox("expense.rejected")), 2)

    def test_paid_is_emitted_at_commit_and_the_cron_never_repeats_it(self):
        """A company-paid report becomes paid on posting: expense.paid once per line."""
        sheet = self.approved_company_paid_report()
        sheet.action_sheet_move_post()
        self.assertEqual(sheet.payment_state, "paid")
        self.env.cr.flush()  # what a real commit runs first: flush, then pre-commit hooks
        self.assertEqual(len(self.outbox("expense.paid")), 2)
        self.env["hr.expense.sheet"]._cron_detect_paid_expenses()
        self.env["hr.expense.sheet"]._cron_detect_paid_expenses()
        self.assertEqual(len(self.outbox("expense.paid")), 2, "the safety net never emits twice")

    def test_paid_is_seen_when_the_cache_knew_nothing_of_the_report(self):
        """Posting in a fresh transaction (empty cache): the stored state is the 'before'."""
        sheet = self.approved_company_paid_report()
        self.env.flush_all()
        self.env.invalidate_all()
        sheet.action_sheet_move_post()
        self.env.cr.flush()
        self.assertEqual(len(self.outbox("expense.paid")), 2)

    def test_cron_catches_a_paid_report_nobody_announced(self):
        """If the commit-time emission was missed, the hourly cron emits expense.paid once."""
        sheet = self.approved_company_paid_report()
        sheet.action_sheet_move_post()
        self.env.flush_all()
        self.env.cr.precommit.clear()  # as if the process died before committing the events
        self.assertFalse(self.outbox("expense.paid"))
        self.assertEqual(self.env["hr.expense.sheet"]._cron_detect_paid_expenses(), 1)
        self.env["hr.expense.sheet"]._cron_detect_paid_expenses()
        events = self.outbox("expense.paid")
        self.assertEqual(len(events), 2)
        self.assertEqual(self.assertCatalogPayload(events[0])["state"], "done")

    def test_reports_paid_before_the_bridge_are_history_not_news(self):
        """Installing (or upgrading) the bridge marks reports already paid as announced: the
        paid cron then announces none of them, and a report paid afterwards still is."""
        history = [self.approved_company_paid_report() for _ in range(3)]
        for sheet in history:
            sheet.action_sheet_move_post()
        self.env.flush_all()
        self.env.cr.precommit.clear()  # as if these were paid before the bridge existed
        lines = self.env["hr.expense"].union(*(sheet.expense_line_ids for sheet in history))
        self.env.cr.execute(
            "UPDATE hr_expense SET ipai_paid_announced = FALSE WHERE id = ANY(%s)", (lines.ids,)
        )
        self.env.invalidate_all()
        self.assertEqual(self.env["hr.expense"]._ipai_mark_paid_history(), 6, "what install runs")
        self.assertEqual(self.env["hr.expense.sheet"]._cron_detect_paid_expenses(), 0)
        self.assertFalse(self.outbox("expense.paid"), "three paid reports, zero events")
        news = self.approved_company_paid_report()
        news.action_sheet_move_post()
        self.env.cr.flush()
        self.assertEqual(len(self.outbox("expense.paid")), 2, "paid from now on: announced")

    def test_paid_event_carries_the_payment_date_not_the_moment_it_was_noticed(self):
        sheet = self.approved_company_paid_report()
        sheet.action_sheet_move_post()
        self.env.flush_all()
        self.env.cr.precommit.clear()  # noticed later, by the hourly cron
        self.env["hr.expense.sheet"]._cron_detect_paid_expenses()
        events = self.outbox("expense.paid")
        paid_on = sheet.account_move_ids._get_reconciled_amls().mapped(
            "date"
        ) or sheet.account_move_ids.mapped("date")
        self.assertEqual({event.occurred_at.date() for event in events}, {max(paid_on)})
        self.assertNotEqual(max(paid_on), fields.Date.today(), "the test's payment is not today")

    def test_rolled_back_transaction_emits_nothing(self):
        """Events live in the business transaction: a rollback takes them away too."""
        sheet = self.two_line_report()
        with self.assertRaises(RuntimeError), self.env.cr.savepoint():
            sheet.action_submit_sheet()
            self.env.flush_all()
            self.assertEqual(len(self.outbox("expense.submitted")), 2)
            raise RuntimeError("the user's transaction fails after submitting")
        self.env.invalidate_all()
        self.assertFalse(self.outbox("expense.submitted"), "no event leaves a rolled-back transaction")
