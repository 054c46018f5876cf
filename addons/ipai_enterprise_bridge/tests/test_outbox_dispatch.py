import json
import unittest
from datetime import datetime, timedelta

import psycopg2
from odoo import fields
from odoo.exceptions import UserError
from odoo.tests import tagged

from ..utils.ipai_webhook import default_source
from .common import (
    BUS_DATABASE_URL,
    LIVE_RECEIVER_REASON,
    RECEIVER_SECRET,
    RECEIVER_URL,
    BridgeCase,
    closed_port_url,
)


def bus_query(sql, params):
    """Rows of a query on the bus's database."""
    conn = psycopg2.connect(BUS_DATABASE_URL)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        conn.close()


def bus_rows(idempotency_keys):
    """The bus's stored outbox rows and audit copies for these keys (the rows' bus_key)."""
    return bus_query(
        "select o.id::text, o.event_type, o.payload, o.signature_digest,"
        " (select count(*) from integration.event_log l where l.event_id = o.id)"
        " from integration.outbox o where o.idempotency_key = any(%s)",
        (list(idempotency_keys),),
    )


def stored_in_order(events):
    """The bus keys of these events that the bus stored, in the bus's order (seq)."""
    rows = bus_query(
        "select idempotency_key from integration.outbox where idempotency_key = any(%s) order by seq",
        (events.mapped("bus_key"),),
    )
    return [row[0] for row in rows]


@tagged("post_install", "-at_install")
class TestOutboxDispatch(BridgeCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.booking = cls.new_booking("Dispatch test drill", datetime(2026, 3, 2, 1))

    def reserve(self):
        self.booking.action_reserve_asset()
        return self.outbox("asset.reserved")

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_event_is_signed_posted_and_stored_by_the_receiver(self):
        """The dispatch cron posts the event; the receiver verifies and stores it."""
        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        event = self.reserve()
        self.assertEqual(event.state, "pending", "nothing is posted on the user's request path")
        self.assertEqual(self.env["ipai.event.outbox"]._cron_dispatch_events(), 1)
        self.assertEqual(event.state, "sent", event.last_error)
        [(bus_id, event_type, payload, digest, logged)] = bus_rows([event.bus_key])
        self.assertEqual((bus_id, event_type), (event.bus_event_id, "asset.reserved"))
        self.assertEqual(payload, json.loads(event.payload))
        self.assertTrue(digest, "the receiver kept the accepted signature's fingerprint")
        self.assertEqual(logged, 1, "and an audit copy in event_log")

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_receiver_down_then_back_delivers_once(self):
        """With the receiver down the event waits, failing; once it is back it arrives once."""
        self.configure_receiver(closed_port_url(), RECEIVER_SECRET)
        event = self.reserve()
        link = self.env["ipai.bus.link"]._current()
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual((event.state, event.attempts), ("failed", 0), "a probe is no attempt")
        self.assertIn("unreachable", event.last_error)
        self.assertNotIn(RECEIVER_SECRET, event.last_error)
        self.assertLessEqual(event.next_attempt_at, fields.Datetime.now(), "due once the bus is")
        self.assertTrue(link.away_since)
        self.assertIn("unreachable", link.last_error)
        self.assertEqual(self.env["ipai.event.outbox"]._cron_dispatch_events(), 0, "probe not due")
        self.assertEqual(link.probes, 1, "no post before the probe is due")

        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        link.next_probe_at = fields.Datetime.now() - timedelta(seconds=1)  # time passes
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual((event.state, event.attempts), ("sent", 1))
        self.assertFalse(link.away_since or link.next_probe_at, "the bus answers again")
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual(len(bus_rows([event.bus_key])), 1, "delivered exactly once")

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_a_resend_of_a_delivered_event_is_a_duplicate_at_the_bus(self):
        """Redelivery (a crash after posting, before committing 'sent') stores nothing new."""
        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        event = self.reserve()
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        first = event.bus_event_id
        event.write({"state": "pending", "next_attempt_at": fields.Datetime.now()})
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual(event.bus_event_id, first, "the bus answered with the first event's id")
        self.assertEqual(len(bus_rows([event.bus_key])), 1)

    def test_wrong_secret_is_refused_by_the_receiver_and_kept_for_retry(self):
        """A receiver refusal is shown to the administrator, the event is kept."""
        if not RECEIVER_URL:
            self.skipTest(LIVE_RECEIVER_REASON)
        self.configure_receiver(RECEIVER_URL, "a-secret-the-receiver-does-not-have")
        event = self.reserve()
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual(event.state, "failed")
        self.assertIn("HTTP 401: invalid signature", event.last_error)
        self.assertIn("HTTP 401", self.env["ipai.bus.link"]._current().last_error)

    def test_malformed_url_fails_the_event_with_a_clear_error(self):
        self.configure_receiver("bus.example.ph/hook", "a-secret-of-sixteen-chars")
        event = self.reserve()
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual(event.state, "failed")
        self.assertIn("must start with http:// or https://", event.last_error)

    def test_retry_button(self):
        """Retry makes an undelivered event due now; a delivered one cannot be retried."""
        self.configure_receiver(closed_port_url(), "a-secret-of-sixteen-chars")
        event = self.reserve()
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        link = self.env["ipai.bus.link"]._current()
        self.assertGreater(link.next_probe_at, fields.Datetime.now())
        event.action_retry()
        self.assertEqual(event.state, "pending")
        self.assertLessEqual(event.next_attempt_at, fields.Datetime.now())
        self.assertLessEqual(link.next_probe_at, fields.Datetime.now(), "the bus is tried at once")
        event.write({"state": "sent"})
        with self.assertRaises(UserError) as caught:
            event.action_retry()
        self.assertIn("already delivered", str(caught.exception))

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_after_an_outage_every_records_events_arrive_in_order_in_one_run(self):
        """Twenty bookings go through three steps while the bus is away, the dispatcher
        running between the steps as the cron would: one probe per interval, nothing else
        posted, no attempts counted. When the bus answers, the whole backlog goes in one run
        and the bus holds every booking's events in the order Odoo queued them."""
        self.configure_receiver(closed_port_url(), RECEIVER_SECRET)
        outbox, link = self.env["ipai.event.outbox"], self.env["ipai.bus.link"]._current()
        bookings = [
            self.new_booking(f"Outage projector {n}", datetime(2026, 5, 1, 1) + timedelta(days=n))
            for n in range(20)
        ]
        for step in ("action_reserve_asset", "action_checkout_asset", "action_checkin_asset"):
            for booking in bookings:
                getattr(booking, step)()
            outbox._cron_dispatch_events()  # the probe, refused
            self.assertTrue(
                self.dispatch_triggers().filtered(lambda t: t.call_at == link.next_probe_at),
                "the dispatcher is woken for the probe",
            )
            before = [(e.state, e.attempts, e.last_error) for e in self.outbox()]
            self.assertEqual(outbox._cron_dispatch_events(), 0)  # woken by a user, too early
            self.assertEqual([(e.state, e.attempts, e.last_error) for e in self.outbox()], before)
            link.next_probe_at = fields.Datetime.now() - timedelta(seconds=1)  # 5 s pass
        queued = self.outbox()
        self.assertEqual(len(queued), 60)
        self.assertEqual((link.probes, set(queued.mapped("attempts"))), (3, {0}))

        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)  # the bus answers again
        self.assertEqual(outbox._cron_dispatch_events(), 60, "the backlog goes in one run")
        self.assertEqual(set(queued.mapped("state")), {"sent"})
        self.assertFalse(link.away_since)
        for booking in bookings:
            events = queued.filtered(lambda e, b=booking: e.aggregate_id == str(b.equipment_id.id))
            self.assertEqual(len(events), 3)
            self.assertEqual(stored_in_order(events), events.mapped("bus_key"), booking.display_name)

    def dispatch_triggers(self):
        cron = self.env.ref("ipai_enterprise_bridge.ir_cron_dispatch_events")
        return self.env["ir.cron.trigger"].sudo().search([("cron_id", "=", cron.id)])

    def test_queueing_wakes_the_dispatch_cron_once_per_transaction(self):
        """Events queued → one due trigger of the dispatch cron, committed with them."""
        self.env.cr.precommit.clear()  # a transaction that has woken nothing yet
        before = self.dispatch_triggers()
        self.reserve()
        self.booking.action_checkout_asset()
        self.assertEqual(len(self.outbox()), 2)
        woken = self.dispatch_triggers() - before
        self.assertEqual(len(woken), 1, "one trigger per transaction, not per event")
        self.assertLessEqual(woken.call_at, fields.Datetime.now())

    def test_a_transaction_that_queues_nothing_wakes_nothing(self):
        """Only duplicates queued (a double click): no trigger, no notification."""
        self.reserve()
        self.env.cr.precommit.clear()
        self.env.cr.postcommit.clear()
        before = self.dispatch_triggers()
        self.booking.action_reserve_asset()  # already reserved: not a transition
        key = self.outbox()[-1].idempotency_key
        send = self.env["ipai.event.outbox"]._enqueue_many
        self.assertFalse(
            send(
                [
                    {
                        "event_type": "asset.reserved",
                        "aggregate_type": "x",
                        "aggregate_id": "1",
                        "payload": {},
                        "key": key,
                        "record": self.booking,
                    }
                ]
            )
        )
        self.assertFalse(self.dispatch_triggers() - before)
        self.assertFalse(self.env.cr.postcommit._funcs, "no notification after commit")


@tagged("post_install", "-at_install")
class TestCatchUpAndConfiguration(BridgeCase):
    """A backlog goes out in one run sequence; an unconfigured bus is a state, not an error."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.booking = cls.new_booking("Backlog projector", datetime(2026, 4, 1, 1))

    def queue_backlog(self, count):
        """``count`` distinct asset.reserved events, as a busy morning would leave them."""
        from ..utils.ipai_webhook import ipai_event, send_ipai_events

        start = datetime(2026, 4, 1)
        send_ipai_events(
            self.env,
            [
                ipai_event(
                    "asset.reserved",
                    self.booking,
                    self.booking._ipai_payload(),
                    stamp=start + timedelta(seconds=number),
                )
                for number in range(count)
            ],
        )
        return self.outbox("asset.reserved")

    def run_cron_sequence(self):
        """What Odoo 18's cron runner does: call the job again at once while it reports work
        remaining (up to 10 calls a run), through the progress API."""
        cron = self.env.ref("ipai_enterprise_bridge.ir_cron_dispatch_events")
        progress = self.env["ir.cron.progress"].create({"cron_id": cron.id})
        outbox = self.env["ipai.event.outbox"].with_context(ir_cron_progress_id=progress.id)
        calls = 0
        while calls < 10:
            calls += 1
            outbox._cron_dispatch_events()
            if not progress.remaining:
                break
        return calls, progress

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_a_thousand_queued_events_go_out_in_one_run_sequence_each_once(self):
        """1,000 events waiting: the cron reports what remains and runs again at once, so all
        are delivered in one sequence of runs, not one batch a minute; each is stored once."""
        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        backlog = self.queue_backlog(1000)
        self.assertEqual(len(backlog), 1000)
        calls, progress = self.run_cron_sequence()
        self.assertEqual(set(backlog.mapped("state")), {"sent"}, "every event delivered")
        self.assertGreater(calls, 1, "the cron ran again while events remained")
        self.assertEqual(progress.remaining, 0)
        stored = bus_rows(backlog.mapped("bus_key"))
        self.assertEqual(len(stored), 1000, "each event stored once at the bus")
        self.assertEqual(len({row[0] for row in stored}), 1000)

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_large_events_go_in_batches_the_bus_takes(self):
        """Twenty events of 210 KiB each, 4.1 MiB together: over the bus's 4 MiB a batch,
        which it would refuse whole at every probe. Cut by size, they all go in one run."""
        from ..utils.ipai_webhook import ipai_event, send_ipai_events

        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        payload = {**self.booking._ipai_payload(), "asset_name": "Projector " + "x" * 210 * 1024}
        start = datetime(2026, 4, 1)
        send_ipai_events(
            self.env,
            [
                ipai_event("asset.reserved", self.booking, payload, stamp=start + timedelta(seconds=n))
                for n in range(20)
            ],
        )
        large = self.outbox("asset.reserved")
        self.assertEqual(self.env["ipai.event.outbox"]._cron_dispatch_events(), 20)
        self.assertEqual(set(large.mapped("state")), {"sent"}, set(large.mapped("last_error")))
        self.assertEqual(stored_in_order(large), large.mapped("bus_key"))

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_unconfigured_bus_keeps_events_waiting_then_sends_them_once_saved(self):
        """Before the URL and secret are set, events wait saying why, without spending
        attempts; saving the settings wakes the dispatcher and they go out."""
        self.configure_receiver("", "")
        [event] = self.queue_backlog(1)
        outbox = self.env["ipai.event.outbox"]
        self.assertEqual(outbox._cron_dispatch_events(), 0)
        outbox._cron_dispatch_events()
        self.assertEqual((event.state, event.attempts), ("pending", 0), "not retried in a loop")
        self.assertIn("bus not configured", event.last_error)
        self.assertNotIn("http://", event.last_error)

        cron = self.env.ref("ipai_enterprise_bridge.ir_cron_dispatch_events")
        triggers_before = self.env["ir.cron.trigger"].search_count([("cron_id", "=", cron.id)])
        self.env["res.config.settings"].create(
            {"ipai_webhook_url": RECEIVER_URL, "ipai_webhook_secret": RECEIVER_SECRET}
        ).execute()
        self.assertGreater(
            self.env["ir.cron.trigger"].search_count([("cron_id", "=", cron.id)]),
            triggers_before,
            "saving the settings wakes the dispatcher",
        )
        self.assertEqual(outbox._cron_dispatch_events(), 1)
        self.assertEqual((event.state, event.attempts), ("sent", 1))

    def test_sent_events_past_the_retention_are_deleted_and_nothing_else(self):
        """The outbox does not grow forever: sent rows older than the retention go."""
        old, recent, waiting = self.queue_backlog(3)
        long_ago = fields.Datetime.now() - timedelta(days=40)
        (old | recent).write({"state": "sent", "sent_at": long_ago})
        recent.sent_at = fields.Datetime.now() - timedelta(days=2)
        self.env["ir.config_parameter"].sudo().set_param("ipai.outbox.retention_days", "30")
        self.assertEqual(self.env["ipai.event.outbox"]._cron_purge_sent(), 1)
        self.assertFalse(old.exists(), "the old sent event is gone")
        self.assertTrue(recent.exists() and waiting.exists(), "recent and waiting ones stay")

    def test_events_go_under_a_source_unique_to_this_database_and_keys_scoped_to_it(self):
        """By default the source is made from database.uuid, which no two databases share
        whatever they are called; Settings shows the one in use and can name it otherwise.
        Every event's key at the bus is scoped to the database too."""
        [event] = self.queue_backlog(1)
        database_uuid = self.env["ir.config_parameter"].sudo().get_param("database.uuid")
        self.assertEqual(event._envelope().source, default_source(database_uuid))
        self.assertEqual(event.bus_key, f"{event.idempotency_key}@{database_uuid}")
        settings = self.env["res.config.settings"].create({})
        self.assertEqual(settings.ipai_webhook_source_in_use, f"odoo-{database_uuid}")
        self.env["res.config.settings"].create({"ipai_webhook_source": "odoo-manila"}).execute()
        self.assertEqual(event._envelope().source, "odoo-manila")
        self.assertEqual(
            self.env["res.config.settings"].create({}).ipai_webhook_source_in_use, "odoo-manila"
        )
        with self.assertRaises(UserError):
            self.env["res.config.settings"].create({"ipai_webhook_source": "Odoo Manila!"}).execute()
        self.assertEqual(event._envelope().source, "odoo-manila", "a refused name changes nothing")

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_each_records_events_reach_the_bus_in_order_and_wait_behind_a_failure(self):
        """Records are posted side by side, each record's events one after the other: the bus
        accepts them in order; when one cannot be delivered, that record's later events wait
        while other records' go on."""
        self.configure_receiver(RECEIVER_URL, RECEIVER_SECRET)
        first_record = self.queue_backlog(3)
        other = self.new_booking("Other", datetime(2026, 4, 2, 1))
        from ..utils.ipai_webhook import (
            WAITING_BEHIND,
            ipai_event,
            send_ipai_events,
        )

        second_record = send_ipai_events(
            self.env,
            [
                ipai_event(
                    "asset.reserved",
                    other,
                    other._ipai_payload(),
                    aggregate_id=other.equipment_id.id,
                    stamp=datetime(2026, 4, 2) + timedelta(seconds=n),
                )
                for n in range(3)
            ],
        )
        second_record[1].sudo().write({"event_type": "Not.A.Type"})  # the bus refuses it (400)
        self.env["ipai.event.outbox"]._cron_dispatch_events()
        self.assertEqual(set(first_record.mapped("state")), {"sent"})
        self.assertEqual(second_record.mapped("state"), ["sent", "failed", "pending"])
        self.assertIn("event_type must be lowercase dotted words", second_record[1].last_error)
        self.assertEqual(second_record[2].last_error, WAITING_BEHIND)
        self.assertEqual(stored_in_order(first_record), first_record.mapped("bus_key"))

        # Later runs: the third is due, but the second backs off, so the third still waits.
        outbox = self.env["ipai.event.outbox"]
        self.assertGreater(second_record[1].next_attempt_at, fields.Datetime.now())
        self.assertEqual(outbox._cron_dispatch_events(), 0)
        self.assertEqual(second_record[2].state, "pending")
        self.assertEqual(stored_in_order(second_record), second_record[:1].mapped("bus_key"))
        # The second is mended and comes due: both go, in order.
        second_record[1].sudo().write(
            {"event_type": "asset.reserved", "next_attempt_at": fields.Datetime.now()}
        )
        self.assertEqual(outbox._cron_dispatch_events(), 2)
        self.assertEqual(stored_in_order(second_record), second_record.mapped("bus_key"))
