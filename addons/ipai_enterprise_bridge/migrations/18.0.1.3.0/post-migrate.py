"""18.0.1.3.0: a database's default source is made from its database.uuid, no longer from its
name (two databases called alike shared one). A database upgraded from an earlier release keeps
the source it has been sending under, written down as its setting, so a record's history at the
bus is not split: 'odoo' before 18.0.1.2.0, its database's name (as 18.0.1.2.0 made it) since.
Events queued before the upgrade keep their key (bus_key empty): they may have reached the bus.
They come due at once: their back-off clocks were the earlier releases' (one per event); the
dispatcher now probes the bus as a whole, and backs off only an event the bus refuses."""

import re

from odoo import SUPERUSER_ID, api
from odoo.addons.ipai_enterprise_bridge.utils.ipai_webhook import SOURCE_PARAMETER
from odoo.tools import parse_version


def source_sent_under(dbname, version):
    if parse_version(version) < parse_version("18.0.1.2.0"):
        return "odoo"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", dbname)[:64] or "odoo"


def migrate(cr, version):
    params = api.Environment(cr, SUPERUSER_ID, {})["ir.config_parameter"]
    if not params.get_param(SOURCE_PARAMETER):
        params.set_param(SOURCE_PARAMETER, source_sent_under(cr.dbname, version))
    cr.execute(
        "UPDATE ipai_event_outbox SET next_attempt_at = now() at time zone 'UTC'"
        " WHERE state IN ('pending', 'failed') AND next_attempt_at > now() at time zone 'UTC'"
    )
