from datetime import datetime, time, timedelta

import psycopg2.errors
from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError
from odoo.tools import SQL

from ipai_bus_lib.core.catalog import ASSET

from ..utils.ipai_webhook import send_ipai_event

ACTIVE_STATES = ("reserved", "checked_out")
ONE_CHECKED_OUT_INDEX = "ipai_equipment_booking_one_checked_out"
# How long before its start a booking may be checked out (ir.config_parameter, minutes).
EARLY_CHECKOUT_PARAMETER = "ipai.booking.early_checkout_minutes"
DEFAULT_EARLY_CHECKOUT_MINUTES = 60
# state before → (action, state after, event)
TRANSITIONS = {
    "reserve": ("draft", "reserved", ASSET.event_type("reserved")),
    "checkout": ("reserved", "checked_out", ASSET.event_type("checked_out")),
    "checkin": ("checked_out", "checked_in", ASSET.event_type("checked_in")),
}


class IpaiEquipmentBooking(models.Model):
    """Who has which piece of equipment, from when to when."""

    _name = "ipai.equipment.booking"
    _description = "Equipment booking"
    _order = "date_from desc, id desc"

    name = fields.Char(compute="_compute_name", store=True)
    equipment_id = fields.Many2one(
        "maintenance.equipment", required=True, index=True, ondelete="restrict"
    )
    user_id = fields.Many2one(
        "res.users", string="Booked by", required=True, default=lambda self: self.env.user
    )
    date_from = fields.Datetime(string="From", required=True)
    date_to = fields.Datetime(string="To", required=True)
    state = fields.Selection(
        [
            ("draft", "Draft"),
            ("reserved", "Reserved"),
            ("checked_out", "Checked out"),
            ("checked_in", "Checked in"),
            ("cancelled", "Cancelled"),
        ],
        default="draft",
        required=True,
        readonly=True,
        index=True,
        copy=False,
    )
    overdue_notified_on = fields.Date(
        readonly=True, copy=False, help="Last day an asset.overdue event was emitted"
    )

    is_overdue = fields.Boolean(
        string="Overdue",
        compute="_compute_is_overdue",
        help="Checked out and past its end: the equipment is late",
    )

    def init(self):
        # One piece of equipment is in one place: at most one booking has it checked out, even
        # when two check-outs race.
        self.env.cr.execute(  # Odoo 18's create_unique_index takes no WHERE
            SQL(
                "CREATE UNIQUE INDEX IF NOT EXISTS %s"
                " ON ipai_equipment_booking (equipment_id) WHERE state = 'checked_out'",
                SQL.identifier(ONE_CHECKED_OUT_INDEX),
            )
        )

    @api.depends("equipment_id", "date_from")
    def _compute_name(self):
        # Stored: in the zone of whoever booked (else the company's), as they read it.
        for booking in self:
            start = booking._ipai_local(booking.date_from)
            booking.name = f"{booking.equipment_id.name or ''} {start}".strip()

    @api.depends("state", "date_to")
    def _compute_is_overdue(self):
        now = fields.Datetime.now()
        for booking in self:
            booking.is_overdue = booking.state == "checked_out" and booking.date_to < now

    def _ipai_local(self, moment):
        """``moment`` (naive UTC) as the people of the booking's company read it."""
        if not moment:
            return ""
        tz = self.env.user.tz or self.env.company.partner_id.tz or "UTC"
        local = fields.Datetime.context_timestamp(self.with_context(tz=tz), moment)
        return local.strftime("%Y-%m-%d %H:%M")

    @api.constrains("date_from", "date_to")
    def _check_dates(self):
        for booking in self:
            if booking.date_to <= booking.date_from:
                raise ValidationError(
                    self.env._("A booking must end after it starts (%s).", booking.name)
                )

    @api.constrains("equipment_id", "date_from", "date_to", "state")
    def _check_overlap(self):
        for booking in self.filtered(lambda b: b.state in ACTIVE_STATES):
            clash = self.search(
                [
                    ("id", "!=", booking.id),
                    ("equipment_id", "=", booking.equipment_id.id),
                    ("state", "in", ACTIVE_STATES),
                    ("date_from", "<", booking.date_to),
                    ("date_to", ">", booking.date_from),
                ],
                limit=1,
            )
            if clash:
                raise ValidationError(
                    self.env._(
                        "%(equipment)s is already booked by %(user)s from %(start)s to %(end)s. "
                        "Choose another time or another piece of equipment.",
                        equipment=booking.equipment_id.name,
                        user=clash.user_id.name,
                        start=self._ipai_local(clash.date_from),
                        end=self._ipai_local(clash.date_to),
                    )
                )

    # --- the seed's actions ----------------------------------------------------------------------

    def action_reserve_asset(self):
        return self._ipai_move("reserve")

    def action_checkout_asset(self):
        return self._ipai_move("checkout")

    def action_checkin_asset(self):
        return self._ipai_move("checkin")

    def action_cancel(self):
        for booking in self:
            if booking.state not in ("draft", "reserved"):
                raise UserError(
                    self.env._(
                        "Only a draft or reserved booking can be cancelled; %(booking)s is %(state)s.",
                        booking=booking.name,
                        state=booking.state,
                    )
                )
        self.write({"state": "cancelled"})

    def _ipai_move(self, action):
        expected, target, event_type = TRANSITIONS[action]
        for booking in self:
            if booking.state == target:
                continue  # a double click: the transition already happened, emit nothing
            if booking.state != expected:
                raise UserError(
                    self.env._(
                        "%(booking)s is %(state)s; it must be %(expected)s to do that.",
                        booking=booking.name,
                        state=dict(self._fields["state"].selection)[booking.state],
                        expected=dict(self._fields["state"].selection)[expected],
                    )
                )
            if action == "checkout":
                booking._ipai_check_can_leave()
                booking._ipai_take_equipment()
            else:
                booking.state = target
            booking._ipai_emit(event_type)
        return True

    def _ipai_check_can_leave(self):
        """The equipment can go out for this booking: nobody else has it, and the booking
        starts soon enough (within the allowed early check-out)."""
        self.ensure_one()
        holder = self.search(
            [
                ("equipment_id", "=", self.equipment_id.id),
                ("state", "=", "checked_out"),
                ("id", "!=", self.id),
            ],
            limit=1,
        )
        if holder:
            raise UserError(
                self.env._(
                    "%(equipment)s is still checked out by %(user)s (%(booking)s). Check it in "
                    "before it goes out again.",
                    equipment=self.equipment_id.name,
                    user=holder.user_id.name,
                    booking=holder.name,
                )
            )
        minutes = int(
            self.env["ir.config_parameter"]
            .sudo()
            .get_param(EARLY_CHECKOUT_PARAMETER, DEFAULT_EARLY_CHECKOUT_MINUTES)
        )
        earliest = self.date_from - timedelta(minutes=minutes)
        if fields.Datetime.now() < earliest:
            raise UserError(
                self.env._(
                    "%(booking)s starts at %(start)s; it can be checked out from %(earliest)s "
                    "(%(minutes)s minutes before). Change the booking's start to take it earlier.",
                    booking=self.name,
                    start=self._ipai_local(self.date_from),
                    earliest=self._ipai_local(earliest),
                    minutes=minutes,
                )
            )

    def _ipai_take_equipment(self):
        """Check the booking out. Two check-outs of one piece of equipment at the same moment
        both pass _ipai_check_can_leave (neither sees the other's yet); the unique index lets
        one through, and the other is told so in words, not as a database error."""
        self.ensure_one()
        try:
            # Not a flushing savepoint: that would run the precommit hooks now, and with them
            # the outbox's one-wake-per-transaction bookkeeping.
            with self.env.cr.savepoint(flush=False):
                self.state = "checked_out"
                self.flush_recordset(["state"])
        except psycopg2.errors.UniqueViolation as error:
            if error.diag.constraint_name != ONE_CHECKED_OUT_INDEX:
                raise
            self.invalidate_recordset(["state"], flush=False)  # the database kept "reserved"
            raise UserError(
                self.env._(
                    "%(equipment)s was checked out for another booking at the same moment. "
                    "Reload to see who has it, and check it in before it goes out again.",
                    equipment=self.equipment_id.name,
                )
            ) from None

    def _ipai_emit(self, event_type):
        self.ensure_one()
        send_ipai_event(
            self.env, event_type, self, self._ipai_payload(), aggregate_id=self.equipment_id.id
        )

    def _ipai_payload(self):
        self.ensure_one()
        return {
            "booking_id": self.id,
            "asset_id": self.equipment_id.id,
            "asset_name": self.equipment_id.name,
            "asset_category": self.equipment_id.category_id.name or None,
            "reserved_by": self.user_id.id,
            "reserved_by_name": self.user_id.name,
            "reserved_from": self.date_from,
            "reserved_to": self.date_to,
            "booking_state": self.state,
        }

    @api.model
    def _cron_detect_overdue_bookings(self, now=None):
        """asset.overdue for bookings still checked out past their end: once per booking per day."""
        now = now or fields.Datetime.now()
        today = fields.Date.to_date(now)
        overdue = self.search(
            [
                ("state", "=", "checked_out"),
                ("date_to", "<", now),
                "|",
                ("overdue_notified_on", "=", False),
                ("overdue_notified_on", "<", today),
            ]
        )
        day = datetime.combine(today, time.min)
        for booking in overdue:
            booking.overdue_notified_on = today
            send_ipai_event(
                self.env,
                ASSET.event_type("overdue"),
                booking,
                booking._ipai_payload(),
                aggregate_id=booking.equipment_id.id,
                stamp=day,
            )
        return len(overdue)
