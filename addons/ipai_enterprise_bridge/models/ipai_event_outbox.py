import json
import logging
import threading
from datetime import timedelta

from odoo import _, api, fields, models
from odoo.exceptions import UserError

from ipai_bus_lib.catalog import Envelope

from ..utils.ipai_webhook import SECRET_PARAMETER, URL_PARAMETER, DeliveryError, post_event

_logger = logging.getLogger(__name__)

# Minutes before each retry; the last one repeats. The event is never dropped: an administrator
# sees it failing (state, attempts, last error) and can press Retry.
RETRY_MINUTES = (1, 2, 5, 10, 30, 60)
DISPATCH_BATCH = 100


class IpaiEventOutbox(models.Model):
    """Events written in the same transaction as the business change, posted after commit."""

    _name = "ipai.event.outbox"
    _description = "IPAI event outbox"
    _order = "id desc"
    _rec_name = "idempotency_key"

    event_type = fields.Char(required=True, readonly=True, index=True)
    aggregate_type = fields.Char(required=True, readonly=True)
    aggregate_id = fields.Char(required=True, readonly=True)
    res_model = fields.Char(string="Record model", readonly=True)
    res_id = fields.Integer(string="Record ID", readonly=True)
    payload = fields.Text(required=True, readonly=True)
    idempotency_key = fields.Char(required=True, readonly=True)
    occurred_at = fields.Datetime(required=True, readonly=True, default=fields.Datetime.now)
    state = fields.Selection(
        [("pending", "Pending"), ("sent", "Sent"), ("failed", "Failed, will retry")],
        default="pending", required=True, readonly=True, index=True)
    attempts = fields.Integer(readonly=True, default=0)
    next_attempt_at = fields.Datetime(readonly=True, default=fields.Datetime.now, index=True)
    last_error = fields.Text(readonly=True)
    sent_at = fields.Datetime(readonly=True)
    bus_event_id = fields.Char(string="Bus event ID", readonly=True)

    _sql_constraints = [
        ("idempotency_key_unique", "unique (idempotency_key)",
         "This event was already queued (same idempotency key)."),
    ]

    @api.model
    def _enqueue_many(self, events):
        """Queue events in one statement; a key queued already is skipped (idempotent).

        ``events`` are dicts with event_type, aggregate_type, aggregate_id, payload, key and
        record. Returns the rows inserted now. Raw SQL on purpose: this runs inside the user's
        transaction on every business action, and one multi-row INSERT is the cheapest write.
        """
        if not events:
            return self.browse()
        now = fields.Datetime.now()
        uid = self.env.uid
        rows = [(event["event_type"], event["aggregate_type"], event["aggregate_id"],
                 event["record"]._name, event["record"].id, json.dumps(event["payload"]),
                 event["key"], now, "pending", 0, now, uid, now, uid, now) for event in events]
        self.env.cr.execute(
            "INSERT INTO ipai_event_outbox (event_type, aggregate_type, aggregate_id, res_model,"
            " res_id, payload, idempotency_key, occurred_at, state, attempts, next_attempt_at,"
            " create_uid, create_date, write_uid, write_date) VALUES %s"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
            % ", ".join(["%s"] * len(rows)), rows)
        inserted = self.browse([row[0] for row in self.env.cr.fetchall()])
        if inserted:
            self._wake_dispatcher_at_commit()
        return inserted

    def _wake_dispatcher_at_commit(self):
        """Once per transaction, at commit: the cron posts after this transaction is durable, in
        a cron worker, so the user's request never waits on the bus."""
        data = self.env.cr.precommit.data
        if not data.get("ipai_enterprise_bridge.wake_dispatcher"):
            data["ipai_enterprise_bridge.wake_dispatcher"] = True
            self.env.cr.precommit.add(self._trigger_dispatch)

    def _trigger_dispatch(self):
        self.env.cr.precommit.data.pop("ipai_enterprise_bridge.wake_dispatcher", None)
        self.env.ref("ipai_enterprise_bridge.ir_cron_dispatch_events").sudo()._trigger()

    def _envelope(self):
        self.ensure_one()
        return Envelope(
            event_type=self.event_type, aggregate_type=self.aggregate_type,
            aggregate_id=self.aggregate_id, payload=json.loads(self.payload),
            occurred_at=self.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"), source="odoo")

    @api.model
    def _cron_dispatch_events(self, limit=DISPATCH_BATCH):
        """Post due events, oldest first; reschedule the ones that fail with back-off."""
        params = self.env["ir.config_parameter"].sudo()
        url, secret = params.get_param(URL_PARAMETER), params.get_param(SECRET_PARAMETER)
        self.flush_model()  # the query below reads the table, not the ORM cache
        self.env.cr.execute(
            "SELECT id FROM ipai_event_outbox WHERE state IN ('pending', 'failed')"
            " AND next_attempt_at <= %s ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED", (fields.Datetime.now(), limit))
        due = self.browse([row[0] for row in self.env.cr.fetchall()])
        for event in due:
            event._dispatch(url, secret)
            if not getattr(threading.current_thread(), "testing", False):
                self.env.cr.commit()  # each event's outcome stands on its own
        return len(due)

    def _dispatch(self, url, secret):
        self.ensure_one()
        try:
            answer = post_event(url, secret, self._envelope(), self.idempotency_key)
        except DeliveryError as error:
            delay = RETRY_MINUTES[min(self.attempts, len(RETRY_MINUTES) - 1)]
            self.write({
                "state": "failed", "attempts": self.attempts + 1, "last_error": str(error),
                "next_attempt_at": fields.Datetime.now() + timedelta(minutes=delay)})
            _logger.warning("IPAI event %s not delivered: %s", self.idempotency_key, error)
            return False
        self.write({"state": "sent", "attempts": self.attempts + 1, "last_error": False,
                    "sent_at": fields.Datetime.now(), "bus_event_id": answer.get("event_id")})
        return True

    def action_retry(self):
        """Make the selected undelivered events due now and wake the dispatcher."""
        undelivered = self.filtered(lambda event: event.state != "sent")
        if not undelivered:
            raise UserError(_("These events were already delivered; there is nothing to retry."))
        undelivered.write({"state": "pending", "next_attempt_at": fields.Datetime.now()})
        self._wake_dispatcher_at_commit()
