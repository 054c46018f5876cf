from datetime import datetime, time, timedelta

import pytz
from odoo import api, fields, models
from odoo.addons.ipai_enterprise_bridge.utils.ipai_webhook import ipai_event, send_ipai_events
from odoo.addons.project.models.project_task import CLOSED_STATES
from odoo.exceptions import ValidationError

from ipai_bus_lib.core.catalog import FINANCE_TASK

from .ipai_bir_form import PERIOD_FORMATS, parse_period, period_label

# Generated filing tasks are due at this hour of their filing day, local time: the company's,
# else the BIR's (not the user's, whose zone would move a Manila deadline to another hour).
FILING_HOUR = 9
BIR_TIME_ZONE = "Asia/Manila"


class ProjectTask(models.Model):
    _inherit = "project.task"

    ipai_task_code = fields.Char(string="Task code", index=True, copy=False)
    ipai_bir_form_id = fields.Many2one("ipai.bir.form", string="BIR form", index=True)
    ipai_period_covered = fields.Char(
        string="Period covered", help="2026-01 (monthly), 2026-Q1 (quarterly), 2026 (annual)"
    )
    ipai_employee_code = fields.Char(string="Employee code")
    ipai_prep_deadline = fields.Date(string="Preparation deadline")
    ipai_filing_deadline = fields.Date(string="Filing deadline", index=True)
    ipai_logframe_id = fields.Many2one("ipai.logframe", string="Logframe element")
    ipai_logframe_level = fields.Selection(related="ipai_logframe_id.level", store=True)
    ipai_finance_step = fields.Selection(
        related="stage_id.ipai_finance_step", store=True, string="Finance step"
    )
    ipai_days_overdue = fields.Integer(
        string="Days overdue",
        aggregator="max",  # a group's worst lateness; a sum of days means nothing
        compute="_compute_ipai_days_overdue",
        store=True,
        help="Days past the filing deadline while not filed; refreshed daily",
    )

    @api.depends("ipai_filing_deadline", "ipai_finance_step", "state")
    def _compute_ipai_days_overdue(self):
        today = self.env.context.get("ipai_today") or fields.Date.context_today(self)
        for task in self:
            late = task.ipai_filing_deadline and task._ipai_is_open()
            task.ipai_days_overdue = max(0, (today - task.ipai_filing_deadline).days) if late else 0

    def _ipai_is_open(self):
        """Work still to do: not filed, not done, not cancelled (Odoo 18's closed states)."""
        self.ensure_one()
        return self.ipai_finance_step != "filed" and self.state not in CLOSED_STATES

    @api.constrains("ipai_prep_deadline", "ipai_filing_deadline")
    def _check_ipai_deadlines(self):
        for task in self:
            if (
                task.ipai_prep_deadline
                and task.ipai_filing_deadline
                and task.ipai_filing_deadline < task.ipai_prep_deadline
            ):
                raise ValidationError(
                    self.env._(
                        "%(task)s: the filing deadline (%(filing)s) is before the preparation "
                        "deadline (%(prep)s). Preparation must come first.",
                        task=task.name,
                        filing=task.ipai_filing_deadline,
                        prep=task.ipai_prep_deadline,
                    )
                )

    @api.constrains("ipai_period_covered", "ipai_bir_form_id")
    def _check_ipai_period(self):
        for task in self.filtered("ipai_period_covered"):
            parsed = parse_period(task.ipai_period_covered)
            form = task.ipai_bir_form_id
            if parsed is None:
                raise ValidationError(
                    self.env._(
                        "%(task)s: %(period)s is not a period. Write 2026-01 for a month, 2026-Q1 "
                        "for a quarter or 2026 for a year.",
                        task=task.name,
                        period=task.ipai_period_covered,
                    )
                )
            if form and parsed[0] != form.frequency:
                raise ValidationError(
                    self.env._(
                        "%(task)s: %(form)s is filed %(frequency)s, so its period looks like "
                        "%(example)s.",
                        task=task.name,
                        form=form.code,
                        frequency=form.frequency,
                        example=PERIOD_FORMATS[form.frequency][1],
                    )
                )

    # --- events: one per real transition ---------------------------------------------------------

    def _ipai_is_finance(self):
        self.ensure_one()
        return bool(self.ipai_bir_form_id or self.project_id.ipai_is_finance_ppm)

    @api.model_create_multi
    def create(self, vals_list):
        tasks = super().create(vals_list)
        finance = tasks.filtered(lambda task: task._ipai_is_finance())
        # A task created straight into a mapped stage (kanban quick-create, an import) has
        # reached that step too: created first, then the step, as if it had been moved there.
        send_ipai_events(
            self.env,
            [
                ipai_event(FINANCE_TASK.event_type("created"), task, task._ipai_payload())
                for task in finance
            ]
            + [
                ipai_event(FINANCE_TASK.event_type(task.ipai_finance_step), task, task._ipai_payload())
                for task in finance
                if task.ipai_finance_step
            ],
        )
        return tasks

    def write(self, vals):
        if "stage_id" not in vals:
            return super().write(vals)
        steps_before = {task.id: task.stage_id.ipai_finance_step for task in self}
        result = super().write(vals)
        moved = self.filtered(
            lambda task: (
                task._ipai_is_finance()
                and task.ipai_finance_step
                and task.ipai_finance_step != steps_before.get(task.id)
            )
        )
        for step in {task.ipai_finance_step for task in moved}:
            moved.filtered(lambda task, step=step: task.ipai_finance_step == step)._ipai_emit(
                FINANCE_TASK.event_type(step)
            )
        return result

    def _ipai_emit(self, event_type, stamp=None):
        send_ipai_events(
            self.env, [ipai_event(event_type, task, task._ipai_payload(), stamp=stamp) for task in self]
        )

    def _ipai_payload(self):
        self.ensure_one()
        return {
            "task_id": self.id,
            "task_name": self.name,
            "task_code": self.ipai_task_code or None,
            "bir_form": self.ipai_bir_form_id.code or None,
            "period_covered": self.ipai_period_covered or None,
            "employee_code": self.ipai_employee_code or None,
            "prep_deadline": self.ipai_prep_deadline or None,
            "filing_deadline": self.ipai_filing_deadline or None,
            "status": self.ipai_finance_step or "draft",
            "stage_name": self.stage_id.name or None,
            "assigned_to": ", ".join(self.user_ids.mapped("name")) or None,
            "logframe_id": self.ipai_logframe_id.id or None,
            "logframe_level": self.ipai_logframe_level or None,
            "days_overdue": self.ipai_days_overdue,
        }

    # --- crons ------------------------------------------------------------------------------------

    @api.model
    def _cron_detect_overdue_finance_tasks(self, today=None):
        """finance_task.overdue for unfiled tasks past their filing deadline: once a task a day."""
        today = today or fields.Date.context_today(self)
        late = self.with_context(ipai_today=today).search(
            [
                ("ipai_filing_deadline", "<", today),
                ("ipai_bir_form_id", "!=", False),
                ("state", "not in", list(CLOSED_STATES)),
                "|",
                ("ipai_finance_step", "=", False),
                ("ipai_finance_step", "!=", "filed"),
            ]
        )
        late._compute_ipai_days_overdue()
        # The key carries the day, so a second run the same day queues nothing new.
        late._ipai_emit(FINANCE_TASK.event_type("overdue"), stamp=datetime.combine(today, time.min))
        return len(late)

    @api.model
    def _ipai_generate_filing_tasks(self, project, frequency, period):
        """The filing tasks of ``period`` for ``project``, one per active form of that frequency,
        skipping forms that already have a task for that period. Returns the tasks created."""
        forms = self.env["ipai.bir.form"].search([("frequency", "=", frequency)])
        existing = set(
            self.search([("project_id", "=", project.id), ("ipai_period_covered", "=", period)])
            .mapped("ipai_bir_form_id")
            .ids
        )
        values = []
        for form in forms.filtered(lambda form: form.id not in existing):
            prep, filing = form.deadlines(period)
            values.append(
                {
                    "name": f"{form.code} {form.name} — {period}",
                    "project_id": project.id,
                    "ipai_bir_form_id": form.id,
                    "ipai_period_covered": period,
                    "ipai_task_code": f"BIR-{form.code.replace('-', '')}-{period}",
                    "ipai_prep_deadline": prep,
                    "ipai_filing_deadline": filing,
                    "date_deadline": self._ipai_local_to_utc(filing, FILING_HOUR),
                }
            )
        return self.create(values)

    @api.model
    def _ipai_local_to_utc(self, day, hour):
        """``hour`` o'clock on ``day`` where the company is (else in Manila, the BIR's zone), as
        the naive UTC Odoo stores: a deadline 'by 25 April' reads 25 April in Manila."""
        tz_name = self.env.company.partner_id.tz or BIR_TIME_ZONE
        local = pytz.timezone(tz_name).localize(datetime.combine(day, time(hour, 0)))
        return local.astimezone(pytz.utc).replace(tzinfo=None)

    @api.model
    def _cron_generate_filing_tasks(self, today=None):
        """On the first days of a month: the filings of the periods that just closed."""
        today = today or fields.Date.context_today(self)
        closed = today.replace(day=1) - timedelta(days=1)
        periods = [("monthly", period_label("monthly", closed.year, closed.month))]
        if closed.month % 3 == 0:
            periods.append(("quarterly", period_label("quarterly", closed.year, closed.month // 3)))
        if closed.month == 12:
            periods.append(("annual", period_label("annual", closed.year)))
        created = self.browse()
        for project in self.env["project.project"].search([("ipai_auto_generate", "=", True)]):
            for frequency, period in periods:
                created |= self._ipai_generate_filing_tasks(project, frequency, period)
        return created
