import select
import time

import psycopg2
from odoo.sql_db import connection_info_for
from odoo.tests import TransactionCase, tagged

from ..utils import cron_waker


@tagged("post_install", "-at_install")
class TestCronWaker(TransactionCase):
    """The NOTIFY that wakes Odoo's cron workers, on the connection the waker keeps."""

    def setUp(self):
        super().setUp()
        _, params = connection_info_for("postgres")
        self.listener = psycopg2.connect(**params)
        self.listener.autocommit = True
        self.listener.cursor().execute("LISTEN cron_trigger")
        self.addCleanup(self.listener.close)

    def notifications(self, expected=1, timeout=5.0):
        """The payloads heard, once ``expected`` of them arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while len(self.listener.notifies) < expected and time.monotonic() < deadline:
            select.select([self.listener], [], [], 0.2)
            self.listener.poll()
        received = [notify.payload for notify in self.listener.notifies]
        self.listener.notifies.clear()
        return received

    def test_cron_workers_hear_this_database_named(self):
        cron_waker.wake_cron_workers(self.env.cr.dbname)
        self.assertEqual(self.notifications(), [self.env.cr.dbname])

    def test_the_connection_is_kept_between_wakes(self):
        cron_waker.wake_cron_workers(self.env.cr.dbname)
        kept = cron_waker._connection
        for _ in range(3):
            cron_waker.wake_cron_workers(self.env.cr.dbname)
        self.assertIs(cron_waker._connection, kept)
        self.assertEqual(self.notifications(expected=4), [self.env.cr.dbname] * 4)

    def test_a_lost_connection_is_noticed_logged_and_replaced(self):
        """The NOTIFY is sent without waiting, so the loss shows at the next wake at the latest."""
        cron_waker.wake_cron_workers(self.env.cr.dbname)
        self.notifications()
        self.listener.cursor().execute(
            "SELECT pg_terminate_backend(%s, 5000)", (cron_waker._connection.get_backend_pid(),)
        )
        with self.assertLogs(cron_waker.__name__, "WARNING") as logs:
            cron_waker.wake_cron_workers(self.env.cr.dbname)
            cron_waker.wake_cron_workers(self.env.cr.dbname)
        self.assertIn("Cron workers not woken", logs.output[0])
        cron_waker.wake_cron_workers(self.env.cr.dbname)
        self.assertIn(self.env.cr.dbname, self.notifications())
