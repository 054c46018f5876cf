from odoo import api, fields, models

# Events carry names in the source language, whoever's click emitted them.
EVENT_LANGUAGE = "en_US"
PAID_WATERMARK_PARAMETER = "ipai_enterprise_bridge.paid_history_until"


class HrExpense(models.Model):
    _inherit = "hr.expense"

    # Stored copies of the two names the events carry: emitting then reads them with the line's
    # own row, which the submission loads anyway, instead of querying products, templates and
    # currencies on the user's request path. The ORM keeps them current on a rename.
    ipai_currency_code = fields.Char(
        related="currency_id.name", store=True, string="Currency code (events)"
    )
    ipai_category_name = fields.Char(
        compute="_compute_ipai_category_name", store=True, string="Category name (events)"
    )
    # Whether expense.paid was announced for this line; lines paid before the bridge was
    # installed are marked at install (history is not news), so the outbox can be purged.
    ipai_paid_announced = fields.Boolean(string="Payment announced", readonly=True, copy=False)

    @api.model
    def _ipai_mark_paid_history(self):
        """Mark every line of an already paid report as announced: run at install and upgrade,
        so that only reports paid from now on are announced. Records when in a parameter."""
        self.env.flush_all()
        self.env.cr.execute(
            "UPDATE hr_expense line SET ipai_paid_announced = TRUE FROM hr_expense_sheet sheet"
            " WHERE line.sheet_id = sheet.id AND sheet.payment_state = 'paid'"
            " AND line.ipai_paid_announced IS NOT TRUE"
        )
        marked = self.env.cr.rowcount
        self.env["ir.config_parameter"].sudo().set_param(
            PAID_WATERMARK_PARAMETER, fields.Datetime.to_string(fields.Datetime.now())
        )
        self.invalidate_model(["ipai_paid_announced"])
        return marked

    @api.depends("product_id.name")
    def _compute_ipai_category_name(self):
        for expense in self:
            expense.ipai_category_name = (
                expense.product_id.with_context(lang=EVENT_LANGUAGE).name or False
            )

    def _ipai_payload(self):
        """The catalog's expense payload for this line."""
        self.ensure_one()
        employee = self.employee_id.sudo()
        return {
            "expense_id": self.id,
            "employee_id": employee.id or None,
            "employee_name": employee.name or None,
            "employee_code": employee.barcode or None,
            "amount": self.total_amount_currency,
            "currency": self.ipai_currency_code or None,
            "description": self.name or None,
            "date": self.date,
            "category": self.ipai_category_name or None,
            "state": self.state,
        }
