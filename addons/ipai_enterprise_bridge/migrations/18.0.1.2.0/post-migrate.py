"""18.0.1.2.0: whether a line's payment was announced is kept on the line, not looked up in the
outbox (which a cron now purges). Lines of reports paid before this version are history: marked
announced, so the upgrade announces nothing; the index the old look-up needed goes."""

from odoo import SUPERUSER_ID, api


def migrate(cr, version):
    env = api.Environment(cr, SUPERUSER_ID, {})
    env["hr.expense"]._ipai_mark_paid_history()
    cr.execute('DROP INDEX IF EXISTS "ipai_event_outbox_paid_line_index"')
