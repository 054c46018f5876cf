"""Wake Odoo's cron workers without opening a database connection on every request.

Odoo's cron workers LISTEN on the ``cron_trigger`` channel of the ``postgres`` database, and
``ir.cron._notifydb()`` (what ``_trigger()`` calls after commit) sends that NOTIFY through
Odoo's pool, which never keeps connections to ``postgres`` (``sql_db.Cursor.close``): each call
opens one and authenticates, on the user's request. This module keeps one such connection per
process instead, in psycopg2's asynchronous mode: a wake only sends the NOTIFY (the server runs
it on receipt) and the answer is read at the next wake, so the request does not wait for a
round trip either. The cron wakes as fast either way: the NOTIFY and the channel are the same.

Measured (``bench/odoo_wake_bench.py --runs 300``: a transaction writing the cron's trigger
row and committing, real Odoo 18, durable PostgreSQL, a 2-core host; median added to the
commit over no wake-up at all):

                                                   quiet host   beside the test suite
    ir.cron._trigger(), NOTIFY through _notifydb()   +1.74 ms       +17.17 ms
    the same NOTIFY on this kept connection          +0.27 ms        +1.20 ms

A submission takes about 70 ms on that host (24 ms on a faster one); opening a connection
costs the most when the machine is busy. The trigger row itself is written by the queueing
statement (models/ipai_event_outbox.py ``_dispatch_cron_to_wake`` says why not ``_trigger()``).

A failure here costs only latency: the trigger row is already committed, and the cron runs on
its own schedule anyway.
"""

import logging
import os
import select
import threading

import psycopg2
from odoo.addons.base.models.ir_cron import ODOO_NOTIFY_FUNCTION
from odoo.sql_db import connection_info_for
from psycopg2 import extensions, sql

_logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5

_lock = threading.Lock()
_connection = None
_cursor = None  # kept: psycopg2 cannot poll an asynchronous query whose cursor is gone
_connection_pid = None
# Connections a forked child inherited from its parent: never used, and never garbage
# collected either, since closing one would end the parent's session on the shared socket.
_inherited = []


def wake_cron_workers(dbname):
    """Tell the cron workers of every Odoo process that ``dbname`` has a job due now."""
    with _lock:
        try:
            _finish(_notify_connection())  # the previous wake's answer, normally there already
            _cursor.execute(
                sql.SQL("SELECT {}('cron_trigger', %s)").format(sql.Identifier(ODOO_NOTIFY_FUNCTION)),
                (dbname,),
            )
        except (psycopg2.Error, OSError) as error:
            _logger.warning(
                "Cron workers not woken (%s): events wait for the dispatch cron's next scheduled run.",
                type(error).__name__,
            )
            _forget_connection()


def _notify_connection():
    """This process's connection to the postgres database (a forked child opens its own)."""
    global _connection, _cursor, _connection_pid
    if _connection is not None and _connection_pid != os.getpid():
        _inherited.append(_connection)
        _connection = None
    if _connection is None or _connection.closed:
        _, params = connection_info_for("postgres")
        _connection = psycopg2.connect(**params, async_=True)
        _connection_pid = os.getpid()
        _finish(_connection)
        _cursor = _connection.cursor()
    return _connection


def _finish(connection):
    """Wait for what the connection is doing (connecting, or the last NOTIFY) to end."""
    while True:
        state = connection.poll()
        if state == extensions.POLL_OK:
            return
        waiting = ([connection], []) if state == extensions.POLL_READ else ([], [connection])
        if not any(select.select(*waiting, [], CONNECT_TIMEOUT_SECONDS)[:2]):
            raise psycopg2.OperationalError("timed out waiting for the postgres database")


def _forget_connection():
    global _connection, _cursor
    if _connection is not None:
        try:
            _connection.close()
        except psycopg2.Error as error:  # already broken: that is why it is being forgotten
            _logger.debug("IPAI cron waker: closing a broken connection: %s", error)
    _connection = _cursor = None
