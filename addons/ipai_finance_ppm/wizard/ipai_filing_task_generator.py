import calendar
from datetime import timedelta

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..models.ipai_bir_form import period_label

FREQUENCY_OF = {"month": "monthly", "quarter": "quarterly", "year": "annual"}


def just_closed(today):
    """The periods that closed last before ``today``, as (year, number) by period type: on
    2 December 2026, November, Q3 and 2025. Filings are made for those, not the running one."""
    last_month = today.replace(day=1) - timedelta(days=1)
    quarter_end = today.replace(day=1, month=(today.month - 1) // 3 * 3 + 1) - timedelta(days=1)
    return {
        "month": (last_month.year, last_month.month),
        "quarter": (quarter_end.year, (quarter_end.month - 1) // 3 + 1),
        "year": (today.year - 1, None),
    }


class IpaiFilingTaskGenerator(models.TransientModel):
    """Create a period's filing tasks for a project from the BIR calendar."""

    _name = "ipai.filing.task.generator"
    _description = "Generate BIR filing tasks"

    project_id = fields.Many2one(
        "project.project",
        required=True,
        domain=[("ipai_is_finance_ppm", "=", True)],
        default=lambda self: self._default_project(),
    )
    period_type = fields.Selection(
        [("month", "Month"), ("quarter", "Quarter"), ("year", "Year")], required=True, default="month"
    )
    year = fields.Integer(required=True, default=lambda self: self._just_closed()["month"][0])
    month = fields.Selection(
        [(str(n), calendar.month_name[n]) for n in range(1, 13)],
        default=lambda self: str(self._just_closed()["month"][1]),
    )
    quarter = fields.Selection(
        [(str(n), f"Q{n}") for n in range(1, 5)],
        default=lambda self: str(self._just_closed()["quarter"][1]),
    )

    @api.model
    def _just_closed(self):
        return just_closed(fields.Date.context_today(self))

    @api.onchange("period_type")
    def _onchange_period_type(self):
        """The year of the period of this type that just closed (December's filings are made
        in January, of the year before)."""
        if self.period_type:
            self.year = self._just_closed()[self.period_type][0]

    @api.model
    def _default_project(self):
        """The project the wizard was opened from (its form, or a default in the context)."""
        context = self.env.context
        if context.get("active_model") == "project.project" and context.get("active_id"):
            return context["active_id"]
        return context.get("default_project_id") or False

    @api.model
    def _check_year(self, year):
        if not 2000 <= year <= 2100:
            raise UserError(self.env._("Choose a year between 2000 and 2100."))

    def period(self):
        """The period these settings name: ``2026-01``, ``2026-Q1`` or ``2026``."""
        self.ensure_one()
        self._check_year(self.year)
        number = {"month": self.month, "quarter": self.quarter}.get(self.period_type)
        if self.period_type != "year" and not number:
            raise UserError(self.env._("Choose the %s.", self.period_type))
        return period_label(FREQUENCY_OF[self.period_type], self.year, int(number or 0))

    def action_generate(self):
        self.ensure_one()
        tasks = self.env["project.task"]._ipai_generate_filing_tasks(
            self.project_id, FREQUENCY_OF[self.period_type], self.period()
        )
        return {
            "type": "ir.actions.act_window",
            "res_model": "project.task",
            "name": self.env._("Filing tasks created for %s", self.period()),
            "view_mode": "list,form",
            "domain": [("id", "in", tasks.ids)],
        }
