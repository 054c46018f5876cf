from odoo import models


class HrExpense(models.Model):
    _inherit = "hr.expense"

    def _ipai_payloads(self):
        """The catalog's expense payload of each line, by line id."""
        names = self._ipai_reference_names()
        return {expense.id: {
            "expense_id": expense.id,
            "employee_id": expense.employee_id.id or None,
            "employee_name": expense.employee_id.sudo().name or None,
            "employee_code": expense.employee_id.sudo().barcode or None,
            "amount": expense.total_amount_currency,
            "currency": names.get(("res.currency", expense.currency_id.id)),
            "description": expense.name or None,
            "date": expense.date,
            "category": names.get(("product.product", expense.product_id.id)),
            "state": expense.state,
        } for expense in self}

    def _ipai_reference_names(self):
        """{(model, id): name} of these lines' currencies and categories, in one query.

        This runs on the user's request path, where the ORM would spend a query and a
        fetch per model (product names even two) on names nothing else in the submission
        reads. The tables are flushed first, so the query sees this transaction's changes.
        """
        currencies, products = self.currency_id, self.product_id
        if not currencies and not products:
            return {}
        self.env["res.currency"].flush_model(["name"])
        self.env["product.product"].flush_model(["product_tmpl_id"])
        self.env["product.template"].flush_model(["name"])
        self.env.cr.execute("""
            SELECT 'res.currency', id, name FROM res_currency WHERE id = ANY(%(currencies)s)
            UNION ALL
            SELECT 'product.product', product.id,
                   COALESCE(template.name->>%(lang)s, template.name->>'en_US')
              FROM product_product product
              JOIN product_template template ON template.id = product.product_tmpl_id
             WHERE product.id = ANY(%(products)s)""",
                            {"currencies": currencies.ids, "products": products.ids,
                             "lang": self.env.lang or "en_US"})
        return {(model, record_id): name for model, record_id, name in self.env.cr.fetchall()}
