from odoo import api, fields, models
from odoo.exceptions import UserError

from ipai_bus_lib.core.chat_actions import MIN_ACTION_KEY_LENGTH

from .ipai_chat_action import (
    ACTION_KEYS_PARAMETER,
    ACTION_SWITCH_PARAMETER,
    CALLBACK_PATH,
    MATTERMOST_URL_PARAMETER,
    action_enabled,
)
from .res_config_settings import secret_fingerprint


class ResConfigSettings(models.TransientModel):
    """Settings → IPAI Bus → Actions from Mattermost: where Mattermost reaches Odoo, the key
    the buttons are signed with (write-only, the previous one still accepted until forgotten),
    the Mattermost server (for the Refuse dialog), the people linked, a switch per action."""

    _inherit = "res.config.settings"

    def _ipai_chat_switches(self):
        """Each action's switch: {settings field: catalog action}; addons add theirs."""
        return {"ipai_chat_approve_enabled": "approve", "ipai_chat_refuse_enabled": "refuse"}

    ipai_chat_callback_url = fields.Char(
        string="Callback URL", compute="_compute_ipai_chat_callback_url"
    )
    ipai_chat_action_key = fields.Char(
        string="New action key",
        groups="base.group_system",
        help=f"The key the bus signs message buttons with (IPAI_ACTION_KEY on the bus), at least "
        f"{MIN_ACTION_KEY_LENGTH} characters. The stored one is never shown; the one it replaces "
        "is still accepted until you forget it, so buttons already posted keep working.",
    )
    ipai_chat_action_key_status = fields.Char(
        string="Action key", compute="_compute_ipai_chat_action_key_status"
    )
    ipai_chat_mattermost_url = fields.Char(
        string="Mattermost server",
        config_parameter=MATTERMOST_URL_PARAMETER,
        help="Where Odoo asks Mattermost to open the Refuse dialog, e.g. https://chat.example.ph",
    )
    ipai_chat_approve_enabled = fields.Boolean(string="Approve from the channel")
    ipai_chat_refuse_enabled = fields.Boolean(string="Refuse from the channel")
    ipai_chat_linked_users = fields.Integer(
        string="Linked users", compute="_compute_ipai_chat_linked_users"
    )

    @api.depends("company_id")
    def _compute_ipai_chat_callback_url(self):
        base = (self.env["ir.config_parameter"].sudo().get_param("web.base.url") or "").rstrip("/")
        for settings in self:
            settings.ipai_chat_callback_url = base + CALLBACK_PATH

    @api.depends("ipai_chat_action_key")
    def _compute_ipai_chat_action_key_status(self):
        keys = _stored_keys(self.env)
        if not keys:
            status = self.env._("Not set: no button works")
        else:
            status = self.env._("Set · fingerprint %s", secret_fingerprint(keys[0]))
            if len(keys) > 1:
                status += self.env._(" (previous %s still accepted)", secret_fingerprint(keys[1]))
        for settings in self:
            settings.ipai_chat_action_key_status = status

    @api.depends("company_id")
    def _compute_ipai_chat_linked_users(self):
        count = self.env["res.users"].sudo().search_count([("ipai_mattermost_user_id", "!=", False)])
        for settings in self:
            settings.ipai_chat_linked_users = count

    @api.model
    def get_values(self):
        values = super().get_values()
        for field, action in self._ipai_chat_switches().items():
            values[field] = action_enabled(self.env, action)
        return values

    def set_values(self):
        for settings in self:
            key = settings.sudo().ipai_chat_action_key or ""
            if key and (len(key) < MIN_ACTION_KEY_LENGTH or "," in key or key != key.strip()):
                raise UserError(
                    self.env._(
                        "The action key must be at least %(length)s characters, without commas "
                        "or surrounding spaces.",
                        length=MIN_ACTION_KEY_LENGTH,
                    )
                )
            server = (settings.ipai_chat_mattermost_url or "").strip()
            if server and not server.startswith(("http://", "https://")):
                raise UserError(
                    self.env._(
                        "The Mattermost server must start with http:// or https://, "
                        "e.g. https://chat.example.ph."
                    )
                )
        result = super().set_values()
        params = self.env["ir.config_parameter"].sudo()
        for settings in self:
            key = settings.sudo().ipai_chat_action_key
            if key and key not in _stored_keys(self.env)[:1]:
                # The new key signs from now on; the one it replaces still verifies the buttons
                # already in the channel, until an administrator forgets it.
                params.set_param(ACTION_KEYS_PARAMETER, ",".join([key, *_stored_keys(self.env)[:1]]))
            for field, action in settings._ipai_chat_switches().items():
                params.set_param(ACTION_SWITCH_PARAMETER % action, "1" if settings[field] else "0")
        return result

    def action_ipai_chat_forget_previous_key(self):
        """Stop accepting buttons signed with the key before the current one."""
        keys = _stored_keys(self.env)
        if len(keys) > 1:
            self.env["ir.config_parameter"].sudo().set_param(ACTION_KEYS_PARAMETER, keys[0])
        return {"type": "ir.actions.client", "tag": "reload"}

    def action_ipai_chat_linked_users(self):
        """The users and their Mattermost accounts, to link one (an administrator's job)."""
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("Mattermost accounts"),
            "res_model": "res.users",
            "view_mode": "list,form",
            "views": [
                (self.env.ref("ipai_enterprise_bridge.view_users_list_ipai_mattermost").id, "list"),
                (False, "form"),
            ],  # fmt: skip
            "domain": [("share", "=", False)],
        }


def _stored_keys(env):
    raw = env["ir.config_parameter"].sudo().get_param(ACTION_KEYS_PARAMETER) or ""
    return [key for key in raw.split(",") if key]
