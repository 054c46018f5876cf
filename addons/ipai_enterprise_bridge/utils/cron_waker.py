"""Wake Odoo's cron workers without opening a database connection on every request.

Odoo's cron workers LISTEN on the ``cron_trigger`` channel of the ``postgres`` database, and
``ir.cron._notifydb()`` sends that NOTIFY through Odoo's pool, which never keeps connections
to ``postgres`` (``sql_db.Cursor.close``): each call opens one and authenticates, about 5 ms on
the user's request. This module keeps one such connection per process instead.

A failure here costs only latency: the trigger row is already committed, and the cron runs on
its own schedule anyway.
"""

import logging
import os
import threading

import psycopg2
from psycopg2 import sql

from odoo.addons.base.models.ir_cron import ODOO_NOTIFY_FUNCTION
from odoo.sql_db import connection_info_for

_logger = logging.getLogger(__name__)

_lock = threading.Lock()
_connection = None
_connection_pid = None
# Connections a forked child inherited from its parent: never used, and never garbage
# collected either, since closing one would end the parent's session on the shared socket.
_inherited = []


def wake_cron_workers(dbname):
    """Tell the cron workers of every Odoo process that ``dbname`` has a job due now."""
    with _lock:
        try:
            with _notify_connection().cursor() as cursor:
                cursor.execute(sql.SQL("SELECT {}('cron_trigger', %s)").format(
                    sql.Identifier(ODOO_NOTIFY_FUNCTION)), (dbname,))
        except psycopg2.Error as error:
            _logger.warning("Cron workers not woken (%s): events wait for the dispatch cron's "
                            "next scheduled run.", type(error).__name__)
            _forget_connection()


def _notify_connection():
    """This process's connection to the postgres database (a forked child opens its own)."""
    global _connection, _connection_pid
    if _connection is not None and _connection_pid != os.getpid():
        _inherited.append(_connection)
        _connection = None
    if _connection is None or _connection.closed:
        _, params = connection_info_for("postgres")
        _connection = psycopg2.connect(**params)
        _connection.autocommit = True
        _connection_pid = os.getpid()
    return _connection


def _forget_connection():
    global _connection
    if _connection is not None:
        try:
            _connection.close()
        except psycopg2.Error:
            pass
    _connection = None
