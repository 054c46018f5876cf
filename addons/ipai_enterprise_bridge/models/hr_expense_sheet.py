from datetime import datetime, time

from odoo import api, models

from ipai_bus_lib.core.catalog import EXPENSE

from ..utils.ipai_webhook import ipai_event, send_ipai_events

PAID_PRECOMMIT_KEY = "ipai_enterprise_bridge.paid_sheet_ids"


class HrExpenseSheet(models.Model):
    _inherit = "hr.expense.sheet"

    # --- Odoo 18's funnel points: one event per expense line, only on a real transition --------

    def _do_submit(self):
        before = {sheet.id: sheet.approval_state for sheet in self}
        result = super()._do_submit()
        self._ipai_emit_transition(EXPENSE.event_type("submitted"), "submit", before)
        return result

    def _do_approve(self):
        before = {sheet.id: sheet.approval_state for sheet in self}
        result = super()._do_approve()
        self._ipai_emit_transition(EXPENSE.event_type("approved"), "approve", before)
        return result

    def _do_refuse(self, reason):
        before = {sheet.id: sheet.approval_state for sheet in self}
        result = super()._do_refuse(reason)
        self._ipai_emit_transition(EXPENSE.event_type("rejected"), "cancel", before)
        return result

    def _ipai_emit_transition(self, event_type, approval_state, before):
        changed = self.filtered(
            lambda sheet: (
                sheet.approval_state == approval_state and before.get(sheet.id) != approval_state
            )
        )
        changed._ipai_emit(event_type)

    def _ipai_emit(self, event_type, lines_of=None, occurred_at_of=None):
        send_ipai_events(
            self.env,
            [
                ipai_event(
                    event_type,
                    expense,
                    expense._ipai_payload(),
                    key_record=sheet,
                    occurred_at=(occurred_at_of or {}).get(sheet.id),
                )
                for sheet in self
                for expense in (lines_of or {}).get(sheet.id, sheet.expense_line_ids)
            ],
        )

    # --- paid: one rule (_ipai_emit_paid); the compute and the cron only propose sheets -------

    def _compute_from_account_move_ids(self):
        """payment_state is computed here: a sheet that comes out paid is proposed for
        expense.paid at commit, when its payment is final (a recompute of one already
        announced proposes it again, and _ipai_emit_paid finds nothing left to announce)."""
        result = super()._compute_from_account_move_ids()
        paid = [sheet.id for sheet in self if sheet.id and sheet.payment_state == "paid"]
        if paid:
            pending = self.env.cr.precommit.data.setdefault(PAID_PRECOMMIT_KEY, set())
            if not pending:
                self.env.cr.precommit.add(self._ipai_emit_paid_at_commit)
            pending.update(paid)
        return result

    def _ipai_emit_paid_at_commit(self):
        ids = self.env.cr.precommit.data.pop(PAID_PRECOMMIT_KEY, set())
        self.env["hr.expense.sheet"].sudo().browse(sorted(ids)).exists()._ipai_emit_paid()

    def _ipai_emit_paid(self):
        """The one place that decides expense.paid: each expense line of a report whose
        payment_state is paid gets it once, ever (the line records it), dated when the
        payment was made."""
        paid = self.filtered(lambda sheet: sheet.payment_state == "paid")
        lines_of = {
            sheet.id: sheet.expense_line_ids.filtered(lambda line: not line.ipai_paid_announced)
            for sheet in paid
        }
        unannounced = paid.filtered(lambda sheet: lines_of[sheet.id])
        unannounced._ipai_emit(
            EXPENSE.event_type("paid"),
            lines_of=lines_of,
            occurred_at_of={sheet.id: sheet._ipai_paid_at() for sheet in unannounced},
        )
        announced = self.env["hr.expense"].union(*lines_of.values())
        if announced:
            # SQL, not the ORM: at commit this runs after the ORM's last flush.
            self.env.cr.execute(
                "UPDATE hr_expense SET ipai_paid_announced = TRUE WHERE id = ANY(%s)", (announced.ids,)
            )
            announced.invalidate_recordset(["ipai_paid_announced"])

    def _ipai_paid_at(self):
        """When the report was paid: the latest payment reconciled with its entries (or, paid
        by the company, its entry's own date), at the start of that day."""
        self.ensure_one()
        moves = self.account_move_ids
        dates = moves._get_reconciled_amls().mapped("date") or moves.mapped("date")
        return datetime.combine(max(dates), time.min) if dates else None

    @api.model
    def _cron_detect_paid_expenses(self, limit=500):
        """Safety net for payments the compute did not see (e.g. written by SQL): proposes
        paid sheets with a line not yet announced. Returns how many it proposed."""
        sheets = self.sudo().search(
            [("payment_state", "=", "paid"), ("expense_line_ids.ipai_paid_announced", "=", False)],
            order="id",
            limit=limit,
        )
        sheets._ipai_emit_paid()
        return len(sheets)
