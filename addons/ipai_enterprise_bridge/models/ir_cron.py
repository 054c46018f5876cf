from odoo import models

from ..utils.cron_waker import wake_cron_workers


class IrCron(models.Model):
    _inherit = "ir.cron"

    def _notifydb(self):
        """Odoo's wake-up of the cron workers after ``_trigger()``, sent on this process's kept
        connection instead of a new one each time (utils/cron_waker.py has the figures): the
        same NOTIFY on the same channel, without a connection's cost on the user's request."""
        wake_cron_workers(self.env.cr.dbname)
