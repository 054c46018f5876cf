from odoo import api, fields, models
from odoo.exceptions import UserError


class MaintenanceEquipment(models.Model):
    _inherit = "maintenance.equipment"

    ipai_booking_ids = fields.One2many("ipai.equipment.booking", "equipment_id", string="Bookings")
    ipai_current_booking_id = fields.Many2one(
        "ipai.equipment.booking",
        string="Current booking",
        compute="_compute_ipai_current_booking_id",
        help="The booking that has the equipment out, else the next reserved one",
    )
    # Computed together (not related fields): a booking's change then recomputes its
    # equipment through ipai_booking_ids, with no search on a non-stored field.
    ipai_current_booking_state = fields.Selection(
        [("reserved", "Reserved"), ("checked_out", "Checked out")],
        string="Booking state",
        compute="_compute_ipai_current_booking_id",
    )
    ipai_booking_overdue = fields.Boolean(string="Overdue", compute="_compute_ipai_current_booking_id")

    @api.depends("ipai_booking_ids.state", "ipai_booking_ids.date_from", "ipai_booking_ids.date_to")
    def _compute_ipai_current_booking_id(self):
        for equipment in self:
            out = equipment.ipai_booking_ids.filtered(lambda b: b.state == "checked_out")
            reserved = equipment.ipai_booking_ids.filtered(lambda b: b.state == "reserved")
            current = out[:1] or reserved.sorted("date_from")[:1]
            equipment.ipai_current_booking_id = current
            equipment.ipai_current_booking_state = current.state or False
            equipment.ipai_booking_overdue = current.is_overdue

    def action_reserve_asset(self):
        """Open a new booking of this equipment; it is reserved from the booking's form."""
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "res_model": "ipai.equipment.booking",
            "view_mode": "form",
            "target": "new",
            "name": self.env._("Reserve %s", self.name),
            "context": {"default_equipment_id": self.id},
        }

    def action_checkout_asset(self):
        return self._ipai_current_booking().action_checkout_asset()

    def action_checkin_asset(self):
        return self._ipai_current_booking().action_checkin_asset()

    def _ipai_current_booking(self):
        self.ensure_one()
        if not self.ipai_current_booking_id:
            raise UserError(
                self.env._("%s has no reserved or checked-out booking. Reserve it first.", self.name)
            )
        return self.ipai_current_booking_id
