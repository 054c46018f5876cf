from odoo import fields, models


class ResConfigSettings(models.TransientModel):
    """A switch for each BIR filing step offered in the channel, beside the bridge's."""

    _inherit = "res.config.settings"

    ipai_chat_submit_filing_enabled = fields.Boolean(
        string="Submit a filing for review from the channel"
    )
    ipai_chat_approve_filing_enabled = fields.Boolean(string="Approve a filing from the channel")
    ipai_chat_mark_filed_enabled = fields.Boolean(string="Mark a filing filed from the channel")

    def _ipai_chat_switches(self):
        return {
            **super()._ipai_chat_switches(),
            "ipai_chat_submit_filing_enabled": "submit_filing",
            "ipai_chat_approve_filing_enabled": "approve_filing",
            "ipai_chat_mark_filed_enabled": "mark_filed",
        }
