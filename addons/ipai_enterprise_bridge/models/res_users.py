from odoo import fields, models


class ResUsers(models.Model):
    _inherit = "res.users"

    # Set by an administrator only: a Mattermost user may act in Odoo as this user from the
    # buttons of the bus's messages. Never matched from a name.
    ipai_mattermost_user_id = fields.Char(
        string="Mattermost user id",
        copy=False,
        groups="base.group_system",
        help="The id of this person's Mattermost account (System Console → Users, or "
        "/api/v4/users/username/<name>): their clicks on the bus's message buttons act as this "
        "user, with this user's rights.",
    )

    _sql_constraints = [
        (
            "ipai_mattermost_user_id_unique",
            "unique(ipai_mattermost_user_id)",
            "A Mattermost user can be linked to one Odoo user only.",
        ),
    ]
