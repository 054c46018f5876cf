import hashlib
import re
import unittest

import psycopg2
from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged

from .common import (
    BUS_DATABASE_URL,
    LIVE_RECEIVER_REASON,
    RECEIVER_SECRET,
    RECEIVER_URL,
    BridgeCase,
    closed_port_url,
)


@tagged("post_install", "-at_install")
class TestSettingsAndAccess(BridgeCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.employee = cls.env["res.users"].create(
            {
                "name": "Plain Employee",
                "login": "plain_employee",
                "groups_id": [(6, 0, [cls.env.ref("base.group_user").id])],
            }
        )

    def save_settings(self, url, secret):
        settings = self.env["res.config.settings"].create(
            {"ipai_webhook_url": url, "ipai_webhook_secret": secret}
        )
        settings.execute()
        return settings

    def params(self):
        params = self.env["ir.config_parameter"].sudo()
        return params.get_param("ipai.webhook.url"), params.get_param("ipai.webhook.secret")

    def test_settings_round_trip_through_system_parameters(self):
        self.save_settings(
            "https://bus.example.ph/functions/v1/odoo-webhook", "a-secret-of-sixteen-chars"
        )
        self.assertEqual(
            self.params(),
            ("https://bus.example.ph/functions/v1/odoo-webhook", "a-secret-of-sixteen-chars"),
        )
        reopened = self.env["res.config.settings"].create({})
        self.assertEqual(reopened.ipai_webhook_url, "https://bus.example.ph/functions/v1/odoo-webhook")

    def test_bad_url_is_refused_and_nothing_is_saved(self):
        self.save_settings("https://bus.example.ph/hook", "a-secret-of-sixteen-chars")
        with self.assertRaisesRegex(UserError, "must start with http:// or https://"):
            self.save_settings("bus.example.ph/hook", "a-secret-of-sixteen-chars")
        self.assertEqual(self.params()[0], "https://bus.example.ph/hook")

    def test_short_secret_is_refused_without_echoing_it(self):
        self.save_settings("https://bus.example.ph/hook", "a-secret-of-sixteen-chars")
        with self.assertRaises(UserError) as caught:
            self.save_settings("https://bus.example.ph/hook", "tiny-secret")
        self.assertIn("at least 16 characters", str(caught.exception))
        self.assertNotIn("tiny-secret", str(caught.exception))
        self.assertEqual(self.params()[1], "a-secret-of-sixteen-chars")

    def test_plain_employee_cannot_read_the_outbox_or_the_secret(self):
        self.configure_receiver("https://bus.example.ph/hook", "a-secret-of-sixteen-chars")
        as_employee = self.env(user=self.employee)
        with self.assertRaises(AccessError):
            as_employee["ipai.event.outbox"].search([])
        with self.assertRaises(AccessError):
            as_employee["ir.config_parameter"].get_param("ipai.webhook.secret")
        with self.assertRaises(AccessError):
            as_employee["res.config.settings"].create({})

    def test_send_test_event_to_an_unreachable_receiver_says_so(self):
        settings = self.save_settings(closed_port_url(), "a-secret-of-sixteen-chars")
        with self.assertRaises(UserError) as caught:
            settings.action_ipai_send_test_event()
        self.assertIn("unreachable", str(caught.exception))
        self.assertNotIn("a-secret-of-sixteen-chars", str(caught.exception))

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_send_test_event_reports_the_receivers_answer(self):
        settings = self.save_settings(RECEIVER_URL, RECEIVER_SECRET)
        action = settings.action_ipai_send_test_event()
        self.assertEqual(action["params"]["type"], "success")
        self.assertIn("stored the test event", action["params"]["message"])

    @unittest.skipUnless(RECEIVER_URL, LIVE_RECEIVER_REASON)
    def test_send_test_event_goes_under_the_configured_source(self):
        settings = self.env["res.config.settings"].create(
            {
                "ipai_webhook_url": RECEIVER_URL,
                "ipai_webhook_secret": RECEIVER_SECRET,
                "ipai_webhook_source": "odoo-manila-settings",
            }
        )
        message = settings.action_ipai_send_test_event()["params"]["message"]
        event_id = re.search(r"[0-9a-f-]{36}", message)[0]
        conn = psycopg2.connect(BUS_DATABASE_URL)
        try:
            with conn.cursor() as cursor:
                cursor.execute("select source from integration.outbox where id = %s", (event_id,))
                self.assertEqual(cursor.fetchone(), ("odoo-manila-settings",))
        finally:
            conn.close()

    def test_the_secret_is_write_only_and_shown_by_its_fingerprint(self):
        self.save_settings("https://bus.example.ph/hook", "a-secret-of-sixteen-chars")
        reopened = self.env["res.config.settings"].create({})
        self.assertFalse(reopened.ipai_webhook_secret, "the stored secret never reaches the form")
        fingerprint = hashlib.sha256(b"a-secret-of-sixteen-chars").hexdigest()[:12]
        self.assertEqual(reopened.ipai_webhook_secret_status, f"Set · fingerprint {fingerprint}")
        reopened.execute()  # saved with the secret field left empty
        self.assertEqual(self.params()[1], "a-secret-of-sixteen-chars", "kept, not erased")
        self.save_settings("https://bus.example.ph/hook", "another-secret-of-16+")
        self.assertEqual(self.params()[1], "another-secret-of-16+", "replaced when one is typed")
