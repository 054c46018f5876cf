import hashlib

from odoo import api, fields, models
from odoo.exceptions import UserError
from odoo.tools.misc import format_datetime

from ipai_bus_lib.core.chat_actions import MIN_ACTION_KEY_LENGTH
from ipai_bus_lib.core.contract import MIN_SECRET_LENGTH, SOURCE_PATTERN
from ipai_bus_lib.core.envelope import Envelope

from ..utils.ipai_webhook import SECRET_PARAMETER, DeliveryError, post_event
from .ipai_chat_action import (
    ACTION_KEYS_PARAMETER,
    ACTION_SWITCH_PARAMETER,
    CALLBACK_PATH,
    MATTERMOST_URL_PARAMETER,
    action_enabled,
)


def check_secret(env, value, min_length, what):
    """A secret typed into the settings: long enough, no commas (they separate rotated
    secrets), no surrounding spaces; UserError naming the rule, never the value."""
    if value and (len(value) < min_length or "," in value or value != value.strip()):
        raise UserError(
            env._(
                "The %(what)s must be at least %(length)s characters, without commas or "
                "surrounding spaces.",
                what=what,
                length=min_length,
            )
        )


def check_http_url(env, value, what, example):
    """A URL typed into the settings: empty, or http(s); UserError with an example otherwise."""
    url = (value or "").strip()
    if url and not url.startswith(("http://", "https://")):
        raise UserError(
            env._(
                "The %(what)s must start with http:// or https://, e.g. %(example)s.",
                what=what,
                example=example,
            )
        )


def secret_fingerprint(secret):
    """Enough of a secret's hash to tell two apart, nothing to sign with."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    ipai_webhook_url = fields.Char(string="IPAI webhook URL", config_parameter="ipai.webhook.url")
    ipai_webhook_source = fields.Char(
        string="Source name",
        config_parameter="ipai.webhook.source",
        help="How this database is named on the bus (letters, digits, _ . -). Databases that "
        "share one bus need different names; empty means one made from this database's "
        "unique id (database.uuid), shown above.",
    )
    ipai_webhook_source_in_use = fields.Char(
        string="Source in use", compute="_compute_ipai_webhook_source_in_use"
    )
    ipai_bus_link_status = fields.Char(string="Bus status", compute="_compute_ipai_bus_link_status")
    # Write-only: the form starts empty whatever is stored, and shows only whether a secret is
    # set and its fingerprint. Typing one replaces it; leaving it empty keeps the stored one.
    ipai_webhook_secret = fields.Char(
        string="New webhook secret",
        groups="base.group_system",
        help=f"Type a secret to set or replace it (at least {MIN_SECRET_LENGTH} characters). The "
        "stored one is never shown; leave this empty to keep it.",
    )
    ipai_webhook_secret_status = fields.Char(
        string="Webhook secret", compute="_compute_ipai_webhook_secret_status"
    )

    @api.depends("ipai_webhook_secret")
    def _compute_ipai_webhook_secret_status(self):
        stored = self.env["ir.config_parameter"].sudo().get_param(SECRET_PARAMETER)
        for settings in self:
            settings.ipai_webhook_secret_status = (
                self.env._("Set · fingerprint %s", secret_fingerprint(stored))
                if stored
                else self.env._("Not set")
            )

    @api.depends("ipai_webhook_source")
    def _compute_ipai_webhook_source_in_use(self):
        in_use = self.env["ipai.event.outbox"]._ipai_source()
        for settings in self:
            settings.ipai_webhook_source_in_use = in_use

    @api.depends("ipai_webhook_url")  # without a dependency, a new form never computes it
    def _compute_ipai_bus_link_status(self):
        link = self.env["ipai.bus.link"]._current()
        if link.away_since:
            status = self.env._(
                "Not taking events since %(since)s: %(error)s. Next try %(probe)s.",
                since=format_datetime(self.env, link.away_since),  # in the user's zone
                error=link.last_error,
                probe=format_datetime(self.env, link.next_probe_at),
            )
        else:
            status = self.env._("Taking events")
        for settings in self:
            settings.ipai_bus_link_status = status

    def set_values(self):
        for settings in self:
            check_http_url(
                self.env,
                settings.ipai_webhook_url,
                self.env._("IPAI webhook URL"),
                "https://bus.example.ph/functions/v1/odoo-webhook",
            )
            source = (settings.ipai_webhook_source or "").strip()
            if source and not SOURCE_PATTERN.fullmatch(source):
                raise UserError(
                    self.env._(
                        "The source name must be 1-64 letters, digits, '_', '.' or '-',"
                        " e.g. odoo-manila."
                    )
                )
            check_secret(
                self.env,
                settings.sudo().ipai_webhook_secret,
                MIN_SECRET_LENGTH,
                self.env._("IPAI webhook secret"),
            )
        self._ipai_chat_check()
        result = super().set_values()
        self._ipai_chat_store()
        params = self.env["ir.config_parameter"].sudo()
        for settings in self:
            if settings.sudo().ipai_webhook_secret:
                params.set_param(SECRET_PARAMETER, settings.sudo().ipai_webhook_secret)
        if params.get_param("ipai.webhook.url") and params.get_param("ipai.webhook.secret"):
            self.env["ipai.bus.link"]._current()._probe_now()
            self.env["ipai.event.outbox"]._wake_dispatcher()  # what waited goes out now
        return result

    # --- Actions from Mattermost: where Mattermost reaches Odoo, the key the buttons are signed
    # with (write-only; the previous one accepted until forgotten), the Mattermost server (for
    # the Refuse dialog), the people linked, a switch per action. ------------------------------

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

    def _ipai_chat_check(self):
        for settings in self:
            check_secret(
                self.env,
                settings.sudo().ipai_chat_action_key,
                MIN_ACTION_KEY_LENGTH,
                self.env._("action key"),
            )
            check_http_url(
                self.env,
                settings.ipai_chat_mattermost_url,
                self.env._("Mattermost server"),
                "https://chat.example.ph",
            )

    def _ipai_chat_store(self):
        params = self.env["ir.config_parameter"].sudo()
        for settings in self:
            key = settings.sudo().ipai_chat_action_key
            if key and key not in _stored_keys(self.env)[:1]:
                # The new key signs from now on; the one it replaces still verifies the buttons
                # already in the channel, until an administrator forgets it.
                params.set_param(ACTION_KEYS_PARAMETER, ",".join([key, *_stored_keys(self.env)[:1]]))
            for field, action in settings._ipai_chat_switches().items():
                params.set_param(ACTION_SWITCH_PARAMETER % action, "1" if settings[field] else "0")

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

    def action_ipai_send_test_event(self):
        """Post one signed test event now and report the receiver's answer."""
        self.ensure_one()
        self.execute()  # save what is on the screen first
        params = self.env["ir.config_parameter"].sudo()
        envelope = Envelope(
            event_type="test",
            aggregate_type="res.config.settings",
            aggregate_id=str(self.env.uid),
            payload={"message": "Test event from Odoo settings", "database": self.env.cr.dbname},
            occurred_at=fields.Datetime.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=self.env["ipai.event.outbox"]._ipai_source(),  # as every event of this database
        )
        key = f"test:{self.env.uid}:{fields.Datetime.now().timestamp()}"
        try:
            answer = post_event(
                params.get_param("ipai.webhook.url"),
                params.get_param("ipai.webhook.secret"),
                envelope,
                key,
            )
        except DeliveryError as error:
            raise UserError(self.env._("The test event was not delivered: %s", error)) from None
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "type": "success",
                "title": self.env._("IPAI bus"),
                "message": self.env._("The receiver stored the test event %s.", answer.get("event_id")),
            },
        }


def _stored_keys(env):
    raw = env["ir.config_parameter"].sudo().get_param(ACTION_KEYS_PARAMETER) or ""
    return [key for key in raw.split(",") if key]
