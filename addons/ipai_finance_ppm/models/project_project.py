from odoo import fields, models


class ProjectProject(models.Model):
    _inherit = "project.project"

    ipai_is_finance_ppm = fields.Boolean(
        string="Finance PPM", help="Its tasks are BIR filings: they announce themselves on the bus"
    )
    ipai_auto_generate = fields.Boolean(
        string="Generate filing tasks monthly",
        help="The monthly cron creates the period's filing tasks from the BIR calendar",
    )
