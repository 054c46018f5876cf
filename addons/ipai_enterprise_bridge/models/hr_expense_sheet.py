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

    # --- paid: payment_state is computed, so the change is seen here and emitted at commit ------

    def _compute_from_account_move_ids(self):
        field = self._fields["payment_state"]
        known_before = {sheet.id: self.env.cache.get(sheet, field, None) for sheet in self}
        super()._compute_from_account_move_ids()
        paid_now = [sheet.id for sheet in self if sheet.id and sheet.payment_state == "paid"]
        if not paid_now:
            return  # the common case (e.g. a submission) costs no query
        stored = self._ipai_stored_payment_states(
            [sheet_id for sheet_id in paid_now if known_before[sheet_id] is None]
        )
        newly_paid = {
            sheet_id
            for sheet_id in paid_now
            if (known_before[sheet_id] or stored.get(sheet_id)) != "paid"
        }
        if newly_paid:
            pending = self.env.cr.precommit.data.setdefault(PAID_PRECOMMIT_KEY, set())
            if not pending:
                self.env.cr.precommit.add(self._ipai_emit_paid_at_commit)
            pending.update(newly_paid)

    def _ipai_stored_payment_states(self, ids):
        """payment_state as last written to the table, for sheets the cache knew nothing of."""
        ids = [sheet_id for sheet_id in ids if isinstance(sheet_id, int)]
        if not ids:
            return {}
        self.env.cr.execute("SELECT id, payment_state FROM hr_expense_sheet WHERE id = ANY(%s)", (ids,))
        return dict(self.env.cr.fetchall())

    def _ipai_emit_paid_at_commit(self):
        ids = self.env.cr.precommit.data.pop(PAID_PRECOMMIT_KEY, set())
        sheets = self.env["hr.expense.sheet"].sudo().browse(sorted(ids)).exists()
        sheets.filtered(lambda sheet: sheet.payment_state == "paid")._ipai_emit_paid()

    def _ipai_emit_paid(self):
        """expense.paid once per expense line, ever (the line records it), dated when the
        payment was made: the cron and the compute share this."""
        lines_of = {
            sheet.id: sheet.expense_line_ids.filtered(lambda line: not line.ipai_paid_announced)
            for sheet in self
        }
        unannounced = self.filtered(lambda sheet: lines_of[sheet.id])
        unannounced._ipai_emit(
            EXPENSE.event_type("paid"),
            lines_of=lines_of,
            occurred_at_of={sheet.id: sheet._ipai_paid_at() for sheet in unannounced},
        )
        announced = self.env["hr.expense"].union(*lines_of.values())
        if announced:
            # SQL, not the ORM: this runs in a pre-commit hook, after the ORM's last flush.
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
        """Safety net: paid sheets with lines not yet announced get expense.paid for them."""
        self.env.flush_all()  # the query below reads the tables, not the ORM cache
        self.env.cr.execute(
            """
            SELECT DISTINCT sheet.id FROM hr_expense_sheet sheet
              JOIN hr_expense line ON line.sheet_id = sheet.id
             WHERE sheet.payment_state = 'paid' AND line.ipai_paid_announced IS NOT TRUE
             ORDER BY sheet.id LIMIT %s""",
            (limit,),
        )
        sheets = self.sudo().browse([row[0] for row in self.env.cr.fetchall()])
        sheets._ipai_emit_paid()
        return len(sheets)
