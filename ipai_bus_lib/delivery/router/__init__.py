"""The router: claims events from the outbox, delivers them to their routes' destinations, and
acknowledges, retries or buries each one — recording every attempt.

Any number of routers may run against one database; claim_outbox's turns (an advisory lock) and
its leases keep them apart, and its per-aggregate ordering keeps each record's events in the
order accepted. A router wakes on the outbox NOTIFY and polls only as a fallback.

The parts, one concern each: ``loop`` (claiming, waking, the pipeline), ``planning`` (which
destinations, which message, what cannot be delivered), ``delivering`` (rate limits, breakers,
concurrency), ``settling`` (each event's fate, written with its attempts), ``leases`` (renewing
what is held), ``config``.
"""

from .config import NOTIFY_CHANNEL, ROUTER_SESSION_SETTINGS, RouterConfig, default_worker_name
from .loop import Router
from .planning import Attempt, unreadable_reason
from .settling import Verdict, judge, record_attempts

__all__ = [
    "NOTIFY_CHANNEL",
    "ROUTER_SESSION_SETTINGS",
    "Attempt",
    "Router",
    "RouterConfig",
    "Verdict",
    "default_worker_name",
    "judge",
    "record_attempts",
    "unreadable_reason",
]
