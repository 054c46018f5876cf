"""Shared set-up: the catalog's fields, the outbox, and the live receiver the harness provides.

The project's test harness (tests/test_odoo_addons.py) starts a real receiver from the bus
library on loopback and passes its URL, secret and database through the environment. Tests that
need the far side skip, saying so, when those are absent (e.g. a bare odoo-bin run).
"""

import json
import os
import socket
from datetime import timedelta

from odoo.tests import TransactionCase

from ipai_bus_lib.core.catalog import CATALOG

RECEIVER_URL = os.environ.get("IPAI_TEST_RECEIVER_URL")
RECEIVER_SECRET = os.environ.get("IPAI_TEST_WEBHOOK_SECRET")
BUS_DATABASE_URL = os.environ.get("IPAI_TEST_BUS_DATABASE_URL")
LIVE_RECEIVER_REASON = (
    "no live receiver: run through the project's harness, which sets "
    "IPAI_TEST_RECEIVER_URL, IPAI_TEST_WEBHOOK_SECRET, IPAI_TEST_BUS_DATABASE_URL"
)


def closed_port_url():
    """A loopback URL where nothing listens (the receiver is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/functions/v1/odoo-webhook"


class OutboxAssertions:
    """Helpers for a TransactionCase; list it first among the bases so its setUp runs."""

    def setUp(self):
        super().setUp()
        # Only the rows a test makes count, whatever the database held before.
        self.env.cr.execute("SELECT coalesce(max(id), 0) FROM ipai_event_outbox")
        self._outbox_floor = self.env.cr.fetchone()[0]

    def outbox(self, event_type=None):
        domain = [("id", ">", self._outbox_floor)]
        if event_type:
            domain.append(("event_type", "=", event_type))
        return self.env["ipai.event.outbox"].sudo().search(domain, order="id")

    def assertCatalogPayload(self, event, msg=None):
        payload = json.loads(event.payload)
        self.assertEqual(
            list(payload),
            list(CATALOG[event.event_type].payload_fields),
            msg or f"{event.event_type} payload must have exactly the catalog fields",
        )
        return payload

    def configure_receiver(self, url, secret):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param("ipai.webhook.url", url)
        params.set_param("ipai.webhook.secret", secret)


class BridgeCase(OutboxAssertions, TransactionCase):
    """A TransactionCase with the outbox helpers."""

    @classmethod
    def new_booking(cls, equipment_name, start, hours=8):
        """A draft booking of a new piece of equipment by the current user."""
        equipment = cls.env["maintenance.equipment"].create({"name": equipment_name})
        return cls.env["ipai.equipment.booking"].create(
            {
                "equipment_id": equipment.id,
                "user_id": cls.env.user.id,
                "date_from": start,
                "date_to": start + timedelta(hours=hours),
            }
        )


MATTERMOST_CHANNEL = "4xp9fdt77pncbef59f4k1qe83o"


def mattermost_call(user_id, context, **fields):
    """A button's callback exactly as Mattermost's server builds it (PostActionIntegrationRequest
    in its model/integration_action.go): who clicked where, and the button's context."""
    return {
        "user_id": user_id,
        "user_name": "maria.santos",
        "channel_id": MATTERMOST_CHANNEL,
        "channel_name": "finance",
        "team_id": "rdc9bgriktyx9p4kowh3dmgqyc",
        "team_domain": "ipai",
        "post_id": "6xqz7a1m3jrx5b8wcpgz6mq8ya",
        "trigger_id": "dHJpZ2dlcg==",
        "type": "",
        "data_source": "",
        "context": context,
        **fields,
    }
