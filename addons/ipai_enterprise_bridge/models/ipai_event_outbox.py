import json
import logging
import threading
from datetime import timedelta
from functools import partial

from odoo import api, fields, models
from odoo.exceptions import UserError
from odoo.tools.sql import create_index

from ipai_bus_lib.core.catalog import Envelope

from ..utils.cron_waker import wake_cron_workers
from ..utils.ipai_webhook import (
    BATCH_EVENTS,
    SECRET_PARAMETER,
    SOURCE_PARAMETER,
    URL_PARAMETER,
    BatchPoster,
    DeliveryError,
    default_source,
)

_logger = logging.getLogger(__name__)

# Minutes before each retry; the last one repeats. The event is never dropped: an administrator
# sees it failing (state, attempts, last error) and can press Retry.
RETRY_MINUTES = (1, 2, 5, 10, 30, 60)
# Events taken per cron run; the cron reports what remains (Odoo's progress API), so it runs
# again at once while a backlog lasts instead of waiting for its next minute.
DISPATCH_BATCH = 500
# Outcomes are committed after every batch request (BATCH_EVENTS): a worker killed mid-run
# resends at most one batch, which the bus answers as duplicates, storing nothing twice.
RETENTION_PARAMETER = "ipai.outbox.retention_days"
DEFAULT_RETENTION_DAYS = 30
NOT_CONFIGURED = (
    "bus not configured: set the webhook URL and secret under Settings > IPAI Bus;"
    " the events wait and go out once they are saved"
)
DISPATCH_CRON = "ipai_enterprise_bridge.ir_cron_dispatch_events"
WAKE_KEY = "ipai_enterprise_bridge.dispatcher_woken"
# Appended to the queueing statement: the dispatch cron's trigger row, only if rows were queued.
WAKE_CTE = (
    ", woken AS (INSERT INTO ir_cron_trigger (cron_id, call_at, create_uid, create_date,"
    " write_uid, write_date) SELECT %s, %s, %s, %s, %s, %s"
    " WHERE EXISTS (SELECT FROM queued))"
)


class IpaiEventOutbox(models.Model):
    """Events written in the same transaction as the business change, posted after commit."""

    _name = "ipai.event.outbox"
    _description = "IPAI event outbox"
    _order = "id desc"
    _rec_name = "idempotency_key"

    event_type = fields.Char(required=True, readonly=True)
    aggregate_type = fields.Char(required=True, readonly=True)
    aggregate_id = fields.Char(required=True, readonly=True)
    res_model = fields.Char(string="Record model", readonly=True)
    res_id = fields.Integer(string="Record ID", readonly=True)
    payload = fields.Text(required=True, readonly=True)
    idempotency_key = fields.Char(required=True, readonly=True)
    occurred_at = fields.Datetime(required=True, readonly=True, default=fields.Datetime.now)
    state = fields.Selection(
        [("pending", "Pending"), ("sent", "Sent"), ("failed", "Failed, will retry")],
        default="pending",
        required=True,
        readonly=True,
    )
    attempts = fields.Integer(readonly=True, default=0)
    next_attempt_at = fields.Datetime(readonly=True, default=fields.Datetime.now)
    last_error = fields.Text(readonly=True)
    sent_at = fields.Datetime(readonly=True)
    bus_event_id = fields.Char(string="Bus event ID", readonly=True)
    record_ref = fields.Reference(
        selection="_selection_record_models", string="Record", compute="_compute_record_ref"
    )
    payload_display = fields.Text(string="Payload", compute="_compute_payload_display")

    @api.model
    def _selection_record_models(self):
        return [(model.model, model.name) for model in self.env["ir.model"].sudo().search([])]

    @api.depends("res_model", "res_id")
    def _compute_record_ref(self):
        for event in self:
            known = event.res_model in self.env and event.res_id
            event.record_ref = f"{event.res_model},{event.res_id}" if known else False

    @api.depends("payload")
    def _compute_payload_display(self):
        """The payload as a person reads it: indented, accents and dashes as themselves."""
        for event in self:
            try:
                event.payload_display = json.dumps(
                    json.loads(event.payload), indent=2, ensure_ascii=False
                )
            except (TypeError, ValueError):
                event.payload_display = event.payload

    _sql_constraints = [
        (
            "idempotency_key_unique",
            "unique (idempotency_key)",
            "This event was already queued (same idempotency key).",
        ),
    ]

    def init(self):
        # A partial index instead of one per column: every index is written on the user's
        # request path, and this one covers what is searched (due rows).
        create_index(
            self.env.cr,
            "ipai_event_outbox_due_index",
            self._table,
            ["next_attempt_at"],
            where="state IN ('pending', 'failed')",
        )

    @api.model
    def _enqueue_many(self, events):
        """Queue events in one statement; a key queued already is skipped (idempotent).

        ``events`` are dicts with event_type, aggregate_type, aggregate_id, payload, key and
        record. Returns the rows inserted now. Raw SQL on purpose: this runs inside the user's
        transaction on every business action, so the rows and the dispatcher's wake-up (see
        ``_dispatch_cron_to_wake``) are written by one statement, one round trip.
        """
        if not events:
            return self.browse()
        now = fields.Datetime.now()
        uid = self.env.uid
        rows = [
            (
                event["event_type"],
                event["aggregate_type"],
                event["aggregate_id"],
                event["record"]._name,
                event["record"].id,
                json.dumps(event["payload"]),
                event["key"],
                event.get("occurred_at") or now,
                "pending",
                0,
                now,
                uid,
                now,
                uid,
                now,
            )
            for event in events
        ]
        cron_id = self._dispatch_cron_to_wake()
        self.env.cr.execute(
            "WITH queued AS ("  # noqa: UP031 - the %s placeholders are psycopg2's to fill
            " INSERT INTO ipai_event_outbox (event_type, aggregate_type, aggregate_id, res_model,"
            " res_id, payload, idempotency_key, occurred_at, state, attempts, next_attempt_at,"
            " create_uid, create_date, write_uid, write_date) VALUES %s"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)%s"
            " SELECT id FROM queued" % (", ".join(["%s"] * len(rows)), cron_id and WAKE_CTE or ""),
            rows + ([cron_id, now, uid, now, uid, now] if cron_id else []),
        )
        inserted = self.browse([row[0] for row in self.env.cr.fetchall()])
        if inserted and cron_id:
            self.env.cr.precommit.data[WAKE_KEY] = True
            self.env.cr.postcommit.add(partial(wake_cron_workers, self.env.cr.dbname))
        return inserted

    def _dispatch_cron_to_wake(self):
        """The dispatch cron's id if this transaction has not woken it yet, else None.

        Waking is what ``ir.cron._trigger()`` does, folded into the queueing statement
        (WAKE_CTE): a trigger row committed with the events, then a notification of the cron
        workers after commit (on a kept connection, see utils/cron_waker.py). The cron posts
        once the events are durable, in a cron worker, so the user's request never waits on
        the bus. The cron's own schedule is the fallback.
        """
        if self.env.cr.precommit.data.get(WAKE_KEY):  # cleared at commit and rollback
            return None
        return self.env["ir.model.data"]._xmlid_to_res_id(DISPATCH_CRON, raise_if_not_found=False)

    def _envelope(self, source=None):
        self.ensure_one()
        return Envelope(
            event_type=self.event_type,
            aggregate_type=self.aggregate_type,
            aggregate_id=self.aggregate_id,
            payload=json.loads(self.payload),
            occurred_at=self.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            source=source or self._ipai_source(),
        )

    @api.model
    def _ipai_source(self):
        """The name this database gives the bus (``ipai.webhook.source``), by default derived
        from the database's name: the bus keeps records of different sources apart."""
        configured = self.env["ir.config_parameter"].sudo().get_param(SOURCE_PARAMETER)
        return configured or default_source(self.env.cr.dbname)

    @api.model
    def _cron_dispatch_events(self, limit=DISPATCH_BATCH):
        """Post due events, oldest first, over one kept-alive connection; reschedule the ones
        that fail with back-off; tell the cron how many remain. Returns how many were taken."""
        params = self.env["ir.config_parameter"].sudo()
        url, secret = params.get_param(URL_PARAMETER), params.get_param(SECRET_PARAMETER)
        self.flush_model()  # the queries below read the table, not the ORM cache
        if not url or not secret:
            self._note_not_configured()
            return 0
        self.env.cr.execute(
            "SELECT id FROM ipai_event_outbox WHERE state IN ('pending', 'failed')"
            " AND next_attempt_at <= %s ORDER BY id LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (fields.Datetime.now(), limit),
        )
        due = self.browse([row[0] for row in self.env.cr.fetchall()])
        testing = getattr(threading.current_thread(), "testing", False)
        source = self._ipai_source()
        items = [
            (
                event.id,
                (event.aggregate_type, event.aggregate_id),
                event._envelope(source),
                event.idempotency_key,
            )
            for event in due
        ]
        with BatchPoster(url, secret) as poster:
            for start in range(0, len(items), BATCH_EVENTS):
                self._record_outcomes(poster.post_all(items[start : start + BATCH_EVENTS]))
                if not testing:
                    # Each batch's outcomes are kept before the next is posted: a crash resends
                    # at most one batch, which the bus answers as duplicates.
                    self.env.cr.commit()  # pylint: disable=invalid-commit
        self.env["ir.cron"]._notify_progress(done=len(due), remaining=self._count_due())
        return len(due)

    def _count_due(self):
        self.flush_model()
        self.env.cr.execute(
            "SELECT count(*) FROM ipai_event_outbox WHERE state IN"
            " ('pending', 'failed') AND next_attempt_at <= %s",
            (fields.Datetime.now(),),
        )
        return self.env.cr.fetchone()[0]

    def _note_not_configured(self):
        """Waiting events say why, once; nothing is attempted or counted meanwhile."""
        self.env.cr.execute(
            "UPDATE ipai_event_outbox SET last_error = %s WHERE state IN ('pending', 'failed')"
            " AND last_error IS DISTINCT FROM %s",
            (NOT_CONFIGURED, NOT_CONFIGURED),
        )
        self.invalidate_model(["last_error"])

    @api.model
    def _record_outcomes(self, outcomes):
        """Write what posting came to, set-based: sent (with the bus's event id), or failed
        with the reason and when to try again (RETRY_MINUTES by attempts so far).

        ``outcomes``: {outbox id: the bus's answer for it, or a DeliveryError}.
        """
        now = fields.Datetime.now()
        sent = [
            (event_id, answer.get("event_id"))
            for event_id, answer in outcomes.items()
            if isinstance(answer, dict)
        ]
        if sent:
            self.env.cr.execute(
                "UPDATE ipai_event_outbox o SET state = 'sent', attempts = o.attempts + 1,"  # noqa: UP031
                " last_error = NULL, sent_at = %s, bus_event_id = v.bus_id, write_date = %s,"
                " write_uid = %s FROM (VALUES " + ", ".join(["%s"] * len(sent)) + ") AS v(id, bus_id)"
                " WHERE o.id = v.id",
                [now, now, self.env.uid, *sent],
            )
        failures = {}
        for event_id, outcome in outcomes.items():
            if isinstance(outcome, DeliveryError):
                failures.setdefault(str(outcome), []).append(event_id)
        for error, event_ids in failures.items():
            self.env.cr.execute(
                "UPDATE ipai_event_outbox SET state = 'failed', attempts = attempts + 1,"
                " last_error = %s, next_attempt_at = %s + make_interval(mins =>"
                " (%s::int[])[least(attempts + 1, %s)]), write_date = %s, write_uid = %s"
                " WHERE id = ANY(%s)",
                (error, now, list(RETRY_MINUTES), len(RETRY_MINUTES), now, self.env.uid, event_ids),
            )
            _logger.warning("%d IPAI event(s) not delivered: %s", len(event_ids), error)
        self.invalidate_model()

    @api.model
    def _cron_purge_sent(self, batch=10000):
        """Delete sent events older than the retention (ipai.outbox.retention_days, default
        30): the bus keeps its own audit copy; nothing in Odoo reads old sent rows."""
        days = int(
            self.env["ir.config_parameter"].sudo().get_param(RETENTION_PARAMETER, DEFAULT_RETENTION_DAYS)
            or DEFAULT_RETENTION_DAYS
        )
        self.flush_model()
        self.env.cr.execute(
            "DELETE FROM ipai_event_outbox WHERE id IN (SELECT id FROM ipai_event_outbox"
            " WHERE state = 'sent' AND sent_at < %s LIMIT %s)",
            (fields.Datetime.now() - timedelta(days=max(days, 1)), batch),
        )
        deleted = self.env.cr.rowcount
        self.invalidate_model()
        return deleted

    @api.model
    def _wake_dispatcher(self):
        """Run the dispatch cron as soon as a cron worker is free."""
        self.env.ref(DISPATCH_CRON).sudo()._trigger()

    def action_retry(self):
        """Make the selected undelivered events due now and wake the dispatcher."""
        undelivered = self.filtered(lambda event: event.state != "sent")
        if not undelivered:
            raise UserError(
                self.env._("These events were already delivered; there is nothing to retry.")
            )
        undelivered.write({"state": "pending", "next_attempt_at": fields.Datetime.now()})
        self._wake_dispatcher()
