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


@tagged("post_install", "-at_install")
class TestChatActionSettings(BridgeCase):
    KEY = "settings-action-key-0123456789abcdefgh"

    def save(self, **values):
        settings = self.env["res.config.settings"].create(values)
        settings.execute()
        return settings

    def stored(self):
        params = self.env["ir.config_parameter"].sudo()
        return params.get_param("ipai.chat_actions.keys"), params.get_param(
            "ipai.chat_actions.mattermost_url"
        )

    def test_a_new_key_signs_and_the_previous_one_is_accepted_until_forgotten(self):
        self.save(ipai_chat_action_key=self.KEY)
        newer = "newer-action-key-0123456789abcdefghij"
        settings = self.save(ipai_chat_action_key=newer)
        self.assertEqual(self.stored()[0], f"{newer},{self.KEY}")
        status = self.env["res.config.settings"].create({}).ipai_chat_action_key_status
        self.assertIn("previous", status)
        self.assertNotIn(newer, status, "only fingerprints are shown")
        settings.action_ipai_chat_forget_previous_key()
        self.assertEqual(self.stored()[0], newer)
        reopened = self.env["res.config.settings"].create({})
        self.assertFalse(reopened.ipai_chat_action_key, "the form never carries the key")
        self.assertTrue(reopened.ipai_chat_callback_url.endswith("/ipai_bus/mattermost/action"))

    def test_a_bad_key_or_server_is_refused_and_nothing_is_saved(self):
        self.save(ipai_chat_action_key=self.KEY, ipai_chat_mattermost_url="https://chat.example.ph")
        for values, says in (
            ({"ipai_chat_action_key": "too-short"}, "at least 32 characters"),
            ({"ipai_chat_action_key": "a,b" + "x" * 40}, "without commas"),
            ({"ipai_chat_action_key": " " + "x" * 40}, "surrounding spaces"),
            ({"ipai_chat_mattermost_url": "chat.example.ph"}, "must start with http"),
        ):
            with self.assertRaisesRegex(UserError, says):
                self.save(**values)
            self.assertEqual(self.stored(), (self.KEY, "https://chat.example.ph"))

    def test_the_switches_turn_actions_off_and_on(self):
        settings = self.env["res.config.settings"].create({})
        self.assertTrue(settings.ipai_chat_approve_enabled and settings.ipai_chat_refuse_enabled)
        self.save(ipai_chat_approve_enabled=False, ipai_chat_refuse_enabled=True)
        params = self.env["ir.config_parameter"].sudo()
        self.assertEqual(params.get_param("ipai.chat_actions.approve"), "0")
        self.assertFalse(self.env["res.config.settings"].create({}).ipai_chat_approve_enabled)

    def test_only_an_administrator_links_a_mattermost_account(self):
        user = self.env["res.users"].create(
            {
                "name": "Finance Clerk",
                "login": "clerk",
                "groups_id": [(6, 0, [self.env.ref("base.group_user").id])],
            }
        )
        with self.assertRaises(AccessError):
            user.with_user(user).write({"ipai_mattermost_user_id": "8ugbh9ugdiyxpkrp8q8qh7rwnh"})
        user.ipai_mattermost_user_id = "8ugbh9ugdiyxpkrp8q8qh7rwnh"
        other = user.copy({"login": "clerk2"})
        self.assertFalse(other.ipai_mattermost_user_id, "a copy is not linked")
        with self.assertRaises(psycopg2.errors.UniqueViolation), self.env.cr.savepoint():
            other.ipai_mattermost_user_id = "8ugbh9ugdiyxpkrp8q8qh7rwnh"
            other.flush_recordset()
