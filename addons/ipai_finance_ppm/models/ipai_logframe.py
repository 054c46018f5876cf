from odoo import api, fields, models
from odoo.exceptions import ValidationError

LEVELS = [("goal", "Goal"), ("outcome", "Outcome"), ("output", "Output"), ("activity", "Activity")]
LEVEL_RANK = {level: rank for rank, (level, _label) in enumerate(LEVELS)}


class IpaiLogframe(models.Model):
    """A logical-framework element: goal → outcome → output → activity."""

    _name = "ipai.logframe"
    _description = "Logframe element"
    _parent_store = True
    _order = "complete_name"
    _rec_name = "complete_name"

    name = fields.Char(required=True)
    level = fields.Selection(LEVELS, required=True)
    parent_id = fields.Many2one("ipai.logframe", index=True, ondelete="restrict")
    parent_path = fields.Char(index=True)
    child_ids = fields.One2many("ipai.logframe", "parent_id")
    complete_name = fields.Char(compute="_compute_complete_name", store=True, recursive=True)

    @api.depends("name", "parent_id.complete_name")
    def _compute_complete_name(self):
        for element in self:
            parent = element.parent_id.complete_name
            element.complete_name = f"{parent} / {element.name}" if parent else element.name

    @api.constrains("level", "parent_id")
    def _check_hierarchy(self):
        if self._has_cycle():
            raise ValidationError(self.env._("A logframe element cannot be its own ancestor."))
        for element in self.filtered("parent_id"):
            if LEVEL_RANK[element.level] <= LEVEL_RANK[element.parent_id.level]:
                raise ValidationError(
                    self.env._(
                        "%(name)s (%(level)s) must be a level below its parent %(parent)s "
                        "(%(parent_level)s): goal → outcome → output → activity.",
                        name=element.name,
                        level=element.level,
                        parent=element.parent_id.name,
                        parent_level=element.parent_id.level,
                    )
                )
