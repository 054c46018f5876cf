import logging
import threading
from datetime import timedelta
from functools import partial

from odoo import api, fields, models

from ..utils.cron_waker import wake_cron_workers
from .ipai_event_outbox import DISPATCH_CRON

_logger = logging.getLogger(__name__)

# While the bus does not take a batch, the dispatcher sends one batch (the oldest due events)
# this often, instead of every event keeping a back-off clock of its own: the backlog goes out
# within seconds of the bus answering again, however long it was away.
PROBE_SECONDS = 5


class IpaiBusLink(models.Model):
    """Whether the bus takes this database's events: one row (``bus_link``), kept by the
    dispatch cron. Away means the last batch was not taken; the next probe is when the
    dispatcher tries again."""

    _name = "ipai.bus.link"
    _description = "IPAI bus link"

    away_since = fields.Datetime(readonly=True)
    next_probe_at = fields.Datetime(readonly=True)
    last_error = fields.Text(readonly=True)
    probes = fields.Integer(string="Failed probes", readonly=True)

    @api.model
    def _current(self):
        return self.env.ref("ipai_enterprise_bridge.bus_link").sudo()

    def _waiting_for_probe(self, now):
        """True while the bus is away and its next probe is not due: nothing is posted."""
        self.ensure_one()
        return bool(self.next_probe_at and self.next_probe_at > now)

    def _mark_away(self, error, now):
        """The bus did not take a batch: probe again in PROBE_SECONDS, woken for it."""
        self.ensure_one()
        probe_at = now + timedelta(seconds=PROBE_SECONDS)
        if not self.away_since:
            _logger.warning("IPAI bus away (%s): probing every %d s", error, PROBE_SECONDS)
        self.write(
            {
                "away_since": self.away_since or now,
                "next_probe_at": probe_at,
                "last_error": error,
                "probes": self.probes + 1,
            }
        )
        self._wake_dispatcher_at(probe_at)

    def _probe_now(self):
        """An administrator acted (saved the settings, pressed Retry): try the bus at once."""
        self.ensure_one()
        if self.next_probe_at:
            self.next_probe_at = fields.Datetime.now()

    def _mark_back(self):
        self.ensure_one()
        if self.away_since:
            _logger.info("IPAI bus answers again (away since %s UTC)", self.away_since)
            self.write({"away_since": False, "next_probe_at": False, "last_error": False, "probes": 0})

    def _wake_dispatcher_at(self, moment):
        """A trigger row for the moment, and, since Odoo's cron workers look at future
        triggers only once a minute, a notification of them at that moment from this process."""
        self.env.ref(DISPATCH_CRON).sudo()._trigger(at=moment)
        if getattr(threading.current_thread(), "testing", False):
            return
        # Datetime fields hold whole seconds: wake just after the trigger is due.
        delay = (moment - fields.Datetime.now()).total_seconds() + 0.5
        self.env.cr.postcommit.add(partial(_wake_later, self.env.cr.dbname, delay))


def _wake_later(dbname, delay):
    timer = threading.Timer(max(delay, 0), wake_cron_workers, (dbname,))
    timer.daemon = True
    timer.start()
