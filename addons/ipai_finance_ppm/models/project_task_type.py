from odoo import api, fields, models
from odoo.exceptions import ValidationError

FINANCE_STEPS = [
    ("in_progress", "In progress"),
    ("submitted", "Submitted"),
    ("approved", "Approved"),
    ("filed", "Filed"),
]


class ProjectTaskType(models.Model):
    _inherit = "project.task.type"

    ipai_finance_step = fields.Selection(
        FINANCE_STEPS,
        string="Finance step",
        help="Moving a finance task into this stage announces this step on the bus",
    )

    @api.constrains("ipai_finance_step", "project_ids")
    def _check_step_mapped_once(self):
        for stage in self.filtered("ipai_finance_step"):
            for project in stage.project_ids:
                twin = self.search(
                    [
                        ("id", "!=", stage.id),
                        ("project_ids", "in", project.id),
                        ("ipai_finance_step", "=", stage.ipai_finance_step),
                    ],
                    limit=1,
                )
                if twin:
                    raise ValidationError(
                        self.env._(
                            "In %(project)s the step %(step)s is already mapped to the stage "
                            "%(twin)s; map each step to one stage only.",
                            project=project.name,
                            step=dict(FINANCE_STEPS)[stage.ipai_finance_step],
                            twin=twin.name,
                        )
                    )
