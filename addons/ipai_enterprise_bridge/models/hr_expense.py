from odoo import models


class HrExpense(models.Model):
    _inherit = "hr.expense"

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
            "currency": self.currency_id.name or None,
            "description": self.name or None,
            "date": self.date,
            "category": self.product_id.display_name or None,
            "state": self.state,
        }
