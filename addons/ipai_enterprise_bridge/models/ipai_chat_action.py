"""Acting from Mattermost: the callback of a message button, checked and carried out as the
Odoo user mapped to the Mattermost user who clicked, and recorded, accepted or refused.

Mattermost posts a button's context to its URL with no signature (its advisory
GHSA-wp43-vprh-c3w5): everything this trusts comes from the capability in the context, signed
by the bus with a key only the bus and Odoo hold (ipai_bus_lib.core.chat_actions). The act
itself goes through the methods Odoo's own buttons call, with the clicker's rights, so Odoo's
rules decide; the events it causes go out through the bridge's outbox like any other.
"""

import logging

import psycopg2
from odoo import api, fields, models
from odoo.exceptions import AccessError, RedirectWarning, UserError, ValidationError
from odoo.tools import SQL
from odoo.tools.misc import format_datetime

from ipai_bus_lib.core import chat_actions
from ipai_bus_lib.core.catalog import CATALOG, EXPENSE, catalogued

_logger = logging.getLogger(__name__)

ACTION_KEYS_PARAMETER = "ipai.chat_actions.keys"
MATTERMOST_URL_PARAMETER = "ipai.chat_actions.mattermost_url"
ACTION_SWITCH_PARAMETER = "ipai.chat_actions.%s"  # "0" turns one action off
CALLBACK_PATH = "/ipai_bus/mattermost/action"
MAX_REASON_CHARS = 500
ACTION_OFF = ("0", "False", "false")
ODOO_REFUSALS = (AccessError, RedirectWarning, UserError, ValidationError)


def action_enabled(env, action):
    """Whether an administrator left ``action`` on (every action is, until turned off)."""
    return (
        env["ir.config_parameter"].sudo().get_param(ACTION_SWITCH_PARAMETER % action, "1")
        not in ACTION_OFF
    )


class ChatActionRefused(Exception):
    """Nothing was done; ``reason`` is recorded and ``answer`` is what the clicker reads."""

    def __init__(self, reason, answer):
        super().__init__(reason)
        self.reason, self.answer = reason, answer


class IpaiChatActionLog(models.Model):
    _name = "ipai.chat.action.log"
    _description = "Action from the chat"
    _order = "id desc"
    _rec_name = "action"

    create_date = fields.Datetime(string="When", readonly=True)
    mattermost_user_id = fields.Char(string="Mattermost user id", readonly=True)
    mattermost_user_name = fields.Char(string="Mattermost user", readonly=True)
    channel_id = fields.Char(string="Channel id", readonly=True)
    user_id = fields.Many2one("res.users", string="Acted as", readonly=True, ondelete="set null")
    action = fields.Char(readonly=True)
    record_ref = fields.Char(string="Record (as signed)", readonly=True)
    record_link = fields.Reference(
        selection="_selection_record_models", string="Record", compute="_compute_record_link"
    )
    event_id = fields.Char(string="Bus event", readonly=True)
    outcome = fields.Selection(
        [("accepted", "Done"), ("refused", "Refused")], required=True, readonly=True
    )
    reason = fields.Char(string="Why refused", readonly=True)
    note = fields.Char(string="Reason given", readonly=True)
    # Set on accepted rows only: the capability's single-use id, unique, so that whatever
    # Mattermost retries a capability acts at most once.
    used_token = fields.Char(readonly=True, copy=False, index=True)

    _sql_constraints = [
        ("used_token_unique", "unique(used_token)", "A capability acts at most once."),
    ]

    @api.model
    def _selection_record_models(self):
        models_acted_on = sorted({model for model, _action in self._ipai_chat_handlers()})
        return [(name, self.env[name]._description) for name in models_acted_on if name in self.env]

    @api.depends("record_ref")
    def _compute_record_link(self):
        """The record the callback named, as a link, when it still exists."""
        known = dict(self._selection_record_models())
        for log in self:
            model, _, record_id = (log.record_ref or "").partition("/")
            exists = (
                model in known
                and record_id.isdigit()
                and self.env[model].browse(int(record_id)).exists()
            )
            log.record_link = f"{model},{record_id}" if exists else False

    # --- the callback --------------------------------------------------------------------------

    @api.model
    def _ipai_handle_mattermost_call(self, call):
        """Mattermost's POST (a button's context, or a dialog's submission): the answer it shows,
        ``{"update": …}`` for the post or ``{"ephemeral_text": …}`` for the clicker alone."""
        call = call if isinstance(call, dict) else {}
        log = {
            "mattermost_user_id": text_of(call.get("user_id")),
            "mattermost_user_name": text_of(call.get("user_name")),
            "channel_id": text_of(call.get("channel_id")),
        }
        context = call.get("context") if isinstance(call.get("context"), dict) else {}
        dialog = call.get("type") == "dialog_submission"
        token = call.get("state") if dialog else context.get("capability")
        try:
            capability = self._ipai_verified(token, log)
            log.update(
                action=capability.action,
                record_ref=capability.record,
                event_id=capability.event_id,
            )
            if context.get("record", capability.record) != capability.record and not dialog:
                raise ChatActionRefused(
                    "capability for another record",
                    self.env._("This button belongs to another message: nothing was changed."),
                )
            user = self._ipai_mapped_user(log["mattermost_user_id"])
            log["user_id"] = user.id
            submission = call.get("submission") if isinstance(call.get("submission"), dict) else {}
            reason = text_of(submission.get("reason"), MAX_REASON_CHARS) if dialog else ""
            log["note"] = reason or False
            if dialog and call.get("cancelled"):
                raise ChatActionRefused(
                    "dialog cancelled", self.env._("Cancelled: nothing was changed.")
                )
            answer = self._ipai_act(capability, user, reason, call, context)
        except ChatActionRefused as refused:
            self._ipai_record({**log, "outcome": "refused", "reason": refused.reason})
            # A dialog shows an error in itself; a button's answer goes to the clicker alone.
            return {"error": refused.answer} if dialog else {"ephemeral_text": refused.answer}
        # A dialog's answer closes it (Mattermost updates no post for one): the channel
        # learns of the refusal from the expense.rejected event it causes.
        return {} if dialog else answer

    def _ipai_verified(self, token, log):
        keys = (self.env["ir.config_parameter"].sudo().get_param(ACTION_KEYS_PARAMETER) or "").split(",")
        try:
            capability = chat_actions.verify(token, keys)
        except ValueError as exc:  # CapabilityRefused, or no key configured
            reason = getattr(exc, "reason", "actions are not configured")
            raise ChatActionRefused(
                f"capability {reason}" if hasattr(exc, "reason") else reason,
                self.env._("This button cannot be used (%s): nothing was changed.", reason),
            ) from None
        if not capability.allows(log["mattermost_user_id"], log["channel_id"]):
            raise ChatActionRefused(
                "not for this user or channel",
                self.env._("This button is not yours to use here: nothing was changed."),
            )
        if not action_enabled(self.env, capability.action):
            raise ChatActionRefused(
                "action turned off",
                self.env._("This action is turned off in Odoo: nothing was changed."),
            )
        return capability

    def _ipai_mapped_user(self, mattermost_user_id):
        user = (
            self.env["res.users"]
            .sudo()
            .search([("ipai_mattermost_user_id", "=", mattermost_user_id or False)], limit=2)
        )
        if len(user) != 1:
            raise ChatActionRefused(
                "Mattermost user not mapped to an Odoo user",
                self.env._(
                    "Your Mattermost account is not linked to an Odoo user: ask an Odoo "
                    "administrator to set it on your user. Nothing was changed."
                ),
            )
        return user

    def _ipai_chat_handlers(self):
        """What each (model, action) of the catalog's chat actions does in this Odoo: addons
        that own a model add theirs (ipai_finance_ppm: the BIR filing steps)."""
        return {
            ("hr.expense", "approve"): _approve_expense,
            ("hr.expense", "refuse"): _refuse_expense,
        }

    def _ipai_act(self, capability, user, reason, call, context):
        handler = self._ipai_chat_handlers().get((capability.model, capability.action))
        if handler is None:
            raise ChatActionRefused(
                "action unknown to this Odoo",
                self.env._("Odoo does not know this action: nothing was changed."),
            )
        record = self.env[capability.model].sudo().browse(capability.record_id).exists()
        if not record:
            raise ChatActionRefused(
                "record gone", self.env._("The record no longer exists: nothing was changed.")
            )
        return handler(self, capability, record.with_user(user), reason, call, context)

    def _ipai_record(self, values):
        """The audit row of a refusal (whatever the act did was rolled back with its savepoint)."""
        _logger.info("chat action refused: %s", values.get("reason"))
        self.sudo().create(values)

    def _ipai_once(self, capability, values, act):
        """Claim the capability's single use, then ``act()``, both or neither: a capability used
        already (a retry, a replay) refuses, and an act Odoo refuses leaves it unused."""
        try:
            with self.env.cr.savepoint():
                self.sudo().create({**values, "outcome": "accepted", "used_token": capability.token_id})
                act()
        except psycopg2.errors.UniqueViolation:
            raise ChatActionRefused(
                "capability already used",
                self.env._("This button was used already: nothing more was changed."),
            ) from None
        except ODOO_REFUSALS as exc:
            raise odoo_refused(self.env, exc) from None


def odoo_refused(env, exc):
    """Odoo's own refusal (its rules decided), as the clicker and the audit log read it."""
    message = exc.args[0] if exc.args else str(exc)
    return ChatActionRefused(f"Odoo refused: {message}", env._("Odoo refused: %s", message))


def locked(record):
    """``record``, its row locked for this transaction and its cache dropped: two clicks at once
    act one after the other, and the second sees what the first did."""
    record.env.cr.execute(
        SQL("SELECT id FROM %s WHERE id = %s FOR UPDATE", SQL.identifier(record._table), record.id)
    )
    record.invalidate_recordset()
    return record


def text_of(value, limit=255):
    return value[:limit].strip() if isinstance(value, str) else ""


def outcome_line(env, user, caused):
    """ "✅ Approved by Ana Reyes at 14:02 Asia/Manila": the event type the act caused (its
    catalog emoji and step), who, and when in that user's zone."""
    spec = catalogued(caused)
    stamp = format_datetime(
        env(user=user), fields.Datetime.now(), tz=user.tz or "UTC", dt_format="HH:mm"
    )
    return env._(
        "%(emoji)s %(step)s by %(name)s at %(time)s %(zone)s",
        emoji=spec.emoji,
        step=spec.step.replace("_", " ").capitalize(),
        name=user.name,
        time=stamp,
        zone=user.tz or "UTC",
    )


def updated_post(context, line):
    """Mattermost's update of the post: its text as the bus wrote it, the outcome under it, no
    buttons left."""
    message = text_of(context.get("message"), 16000)
    return {
        "update": {
            "message": f"{message}\n\n**{line}**" if message else f"**{line}**",
            "props": {"attachments": []},
        }
    }


def _expense_sheet(log, capability, expense):
    """The report of the expense line the message was about, locked for this transaction so that
    two clicks at once act one after the other."""
    sheet = expense.sheet_id
    if not sheet:
        raise ChatActionRefused(
            "expense not in a report", log.env._("This expense is in no report: nothing was changed.")
        )
    locked(sheet)
    if sheet.sudo().approval_state != "submit":
        state = dict(sheet.sudo()._fields["approval_state"].selection).get(
            sheet.sudo().approval_state, log.env._("not submitted")
        )
        raise ChatActionRefused(
            "report not waiting for approval",
            log.env._(
                "%(report)s is already %(state)s: nothing was changed.",
                report=sheet.sudo().name,
                state=state,
            ),  # fmt: skip
        )
    return sheet


def _approve_expense(log, capability, expense, reason, call, context):
    sheet = _expense_sheet(log, capability, expense)

    def approve():
        if isinstance(sheet.action_approve_expense_sheets(), dict):
            # Odoo asks a question first (possible duplicates): that needs its own screen.
            raise UserError(log.env._("it asks about possible duplicates first: approve it in Odoo"))

    log._ipai_once(capability, log_values(capability, expense.env.user, call), approve)
    return updated_post(context, outcome_line(log.env, expense.env.user, EXPENSE.event_type("approved")))


def _refuse_expense(log, capability, expense, reason, call, context):
    sheet = _expense_sheet(log, capability, expense)
    if not reason:
        try:
            sheet.action_refuse_expense_sheets()  # Odoo's own check, as its Refuse button runs it
        except ODOO_REFUSALS as exc:
            raise odoo_refused(log.env, exc) from None
        return _ask_for_reason(log, capability, call, context)

    def refuse():
        sheet.action_refuse_expense_sheets()
        wizard = (
            log.env["hr.expense.refuse.wizard"]
            .with_user(expense.env.user)
            .with_context(active_ids=sheet.ids)
            .create({"reason": reason, "sheet_ids": [(6, 0, sheet.ids)]})
        )
        wizard.action_refuse()

    values = {**log_values(capability, expense.env.user, call), "note": reason}
    log._ipai_once(capability, values, refuse)
    line = outcome_line(log.env, expense.env.user, EXPENSE.event_type("rejected")) + f": {reason}"
    return updated_post(context, line)


def _ask_for_reason(log, capability, call, context):
    """Refuse needs a reason: Mattermost is asked to open a dialog for it (the trigger_id
    authorises that), whose submission comes back here with the capability as its state."""
    trigger = text_of(call.get("trigger_id"), 1000)
    server = (log.env["ir.config_parameter"].sudo().get_param(MATTERMOST_URL_PARAMETER) or "").rstrip(
        "/"
    )
    if not trigger or not server:
        raise ChatActionRefused(
            "no reason given",
            log.env._("A refusal needs a reason: refuse it in Odoo. Nothing was changed."),
        )
    dialog = {
        "trigger_id": trigger,
        "url": log.env.context.get("ipai_endpoint_url", ""),
        "dialog": {
            "callback_id": f"refuse:{capability.record}",
            "title": "Refuse expense report",
            "submit_label": "Refuse",
            "state": context.get("capability", ""),
            "elements": [
                {
                    "display_name": "Reason",
                    "name": "reason",
                    "type": "textarea",
                    "max_length": MAX_REASON_CHARS,
                }  # fmt: skip
            ],
        },
    }
    import requests  # noqa: PLC0415 - Odoo ships it; needed only here

    try:
        requests.post(
            f"{server}/api/v4/actions/dialogs/open", json=dialog, timeout=10
        ).raise_for_status()
    except requests.RequestException as exc:
        raise ChatActionRefused(
            f"dialog not opened: {exc}",
            log.env._("Mattermost could not ask for the reason: refuse it in Odoo."),
        ) from None
    return {}


def log_values(capability, user, call):
    return {
        "mattermost_user_id": text_of(call.get("user_id")),
        "mattermost_user_name": text_of(call.get("user_name")),
        "channel_id": text_of(call.get("channel_id")),
        "user_id": user.id,
        "action": capability.action,
        "record_ref": capability.record,
        "event_id": capability.event_id,
    }


# Every system parameter of the chat actions (they go when the bridge is uninstalled).
CHAT_ACTION_PARAMETERS = (
    ACTION_KEYS_PARAMETER,
    MATTERMOST_URL_PARAMETER,
    *sorted({ACTION_SWITCH_PARAMETER % a.name for spec in CATALOG.values() for a in spec.actions}),
)
