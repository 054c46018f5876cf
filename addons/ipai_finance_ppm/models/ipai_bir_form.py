import calendar
import re
from datetime import date, timedelta

from dateutil.relativedelta import relativedelta
from odoo import api, fields, models
from odoo.exceptions import ValidationError

PERIOD_FORMATS = {
    "monthly": (re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$"), "2026-01"),
    "quarterly": (re.compile(r"^(\d{4})-Q([1-4])$"), "2026-Q1"),
    "annual": (re.compile(r"^(\d{4})$"), "2026"),
}


def parse_period(period):
    """(frequency, first day, last day) of ``2026-01``, ``2026-Q1`` or ``2026``; None if unknown."""
    for frequency, (pattern, _example) in PERIOD_FORMATS.items():
        match = pattern.match(period or "")
        if not match:
            continue
        year = int(match[1])
        if frequency == "monthly":
            start = date(year, int(match[2]), 1)
            return frequency, start, start + relativedelta(months=1, days=-1)
        if frequency == "quarterly":
            start = date(year, 3 * int(match[2]) - 2, 1)
            return frequency, start, start + relativedelta(months=3, days=-1)
        return frequency, date(year, 1, 1), date(year, 12, 31)
    return None


def period_label(frequency, year, number=None):
    """The period text of a frequency: ``2026-01``, ``2026-Q1``, ``2026``."""
    if frequency == "monthly":
        return f"{year}-{number:02d}"
    if frequency == "quarterly":
        return f"{year}-Q{number}"
    return str(year)


class IpaiBirForm(models.Model):
    """A BIR return and its statutory calendar: data, editable by the finance team."""

    _name = "ipai.bir.form"
    _description = "BIR form"
    _order = "frequency, code"
    _rec_name = "code"

    code = fields.Char(required=True, help="e.g. 1601-C")
    name = fields.Char(required=True)
    frequency = fields.Selection(
        [("monthly", "Monthly"), ("quarterly", "Quarterly"), ("annual", "Annual")], required=True
    )
    deadline_rule = fields.Selection(
        [
            ("day_of_month", "A day of a month after the period"),
            ("days_after", "A number of days after the period"),
        ],
        required=True,
        default="day_of_month",
    )
    deadline_month_offset = fields.Integer(
        default=1, help="Months after the period's last month (day_of_month rule)"
    )
    deadline_day = fields.Integer(
        default=10, help="Day of that month (capped at its last day) or days after the period"
    )
    prep_lead_days = fields.Integer(
        string="Preparation lead (days)",
        default=5,
        help="The preparation deadline is this many days before filing",
    )
    active = fields.Boolean(default=True)

    _sql_constraints = [("code_unique", "unique (code)", "A BIR form code is unique.")]

    @api.constrains("deadline_day", "deadline_month_offset", "prep_lead_days")
    def _check_rule(self):
        for form in self:
            if form.deadline_day < 1 or form.deadline_month_offset < 0 or form.prep_lead_days < 0:
                raise ValidationError(
                    self.env._(
                        "%s: the deadline day must be at least 1 and the offsets not negative.",
                        form.code,
                    )
                )

    def filing_deadline(self, period_end):
        """The statutory filing deadline for a period ending on ``period_end``."""
        self.ensure_one()
        if self.deadline_rule == "days_after":
            return period_end + timedelta(days=self.deadline_day)
        month = period_end + relativedelta(day=1, months=self.deadline_month_offset)
        last_day = calendar.monthrange(month.year, month.month)[1]
        return month.replace(day=min(self.deadline_day, last_day))

    def deadlines(self, period):
        """(preparation deadline, filing deadline) of ``period`` for this form."""
        self.ensure_one()
        parsed = parse_period(period)
        if not parsed or parsed[0] != self.frequency:
            example = PERIOD_FORMATS[self.frequency][1]
            raise ValidationError(
                self.env._(
                    "%(form)s is filed %(frequency)s: its period looks like "
                    "%(example)s, not %(period)s.",
                    form=self.code,
                    frequency=self.frequency,
                    example=example,
                    period=period,
                )
            )
        filing = self.filing_deadline(parsed[2])
        return filing - timedelta(days=self.prep_lead_days), filing
