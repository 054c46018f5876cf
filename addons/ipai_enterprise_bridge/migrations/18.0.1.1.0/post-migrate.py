"""18.0.1.1.0: the outbox's per-column indexes gave way to two partial ones (see the model's
init()); Odoo keeps indexes a field no longer asks for, so drop them here."""

from odoo.tools import SQL

OBSOLETE_INDEXES = (
    "ipai_event_outbox__event_type_index",
    "ipai_event_outbox__state_index",
    "ipai_event_outbox__next_attempt_at_index",
)


def migrate(cr, version):
    for index in OBSOLETE_INDEXES:
        cr.execute(SQL("DROP INDEX IF EXISTS %s", SQL.identifier(index)))
