import hashlib

from odoo import api, fields, models
from odoo.exceptions import UserError
from odoo.tools.misc import format_datetime

from ipai_bus_lib.core.contract import MIN_SECRET_LENGTH, SOURCE_PATTERN
from ipai_bus_lib.core.envelope import Envelope

from ..utils.ipai_webhook import SECRET_PARAMETER, DeliveryError, post_event


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
            url = (settings.ipai_webhook_url or "").strip()
            if url and not url.startswith(("http://", "https://")):
                raise UserError(
                    self.env._(
                        "The IPAI webhook URL must start with http:// or https://, "
                        "e.g. https://bus.example.ph/functions/v1/odoo-webhook."
                    )
                )
            source = (settings.ipai_webhook_source or "").strip()
            if source and not SOURCE_PATTERN.fullmatch(source):
                raise UserError(
                    self.env._(
                        "The source name must be 1-64 letters, digits, '_', '.' or '-',"
                        " e.g. odoo-manila."
                    )
                )
            secret = settings.sudo().ipai_webhook_secret or ""
            if secret and (len(secret) < MIN_SECRET_LENGTH or "," in secret or secret != secret.strip()):
                raise UserError(
                    self.env._(
                        "The IPAI webhook secret must be at least %(length)s characters, "
                        "without commas or surrounding spaces.",
                        length=MIN_SECRET_LENGTH,
                    )
                )
        result = super().set_values()
        params = self.env["ir.config_parameter"].sudo()
        for settings in self:
            if settings.sudo().ipai_webhook_secret:
                params.set_param(SECRET_PARAMETER, settings.sudo().ipai_webhook_secret)
        if params.get_param("ipai.webhook.url") and params.get_param("ipai.webhook.secret"):
            self.env["ipai.bus.link"]._current()._probe_now()
            self.env["ipai.event.outbox"]._wake_dispatcher()  # what waited goes out now
        return result

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
