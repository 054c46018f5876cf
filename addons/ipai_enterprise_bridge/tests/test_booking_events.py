from datetime import datetime, timedelta
from unittest.mock import patch

from odoo import fields
from odoo.exceptions import UserError, ValidationError
from odoo.tests import tagged

from .common import BridgeCase


@tagged("post_install", "-at_install")
class TestBookingEvents(BridgeCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.category = cls.env["maintenance.equipment.category"].create({"name": "AV equipment"})
        cls.projector = cls.env["maintenance.equipment"].create(
            {"name": "Epson EB-X51", "category_id": cls.category.id}
        )
        cls.user = cls.env["res.users"].create(
            {
                "name": "Juan dela Cruz",
                "login": "juan",
                "groups_id": [(6, 0, [cls.env.ref("base.group_user").id])],
            }
        )
        cls.start = datetime(2026, 1, 26, 1, 0)

    def book(self, start=None, hours=8, equipment=None):
        start = start or self.start
        return self.env["ipai.equipment.booking"].create(
            {
                "equipment_id": (equipment or self.projector).id,
                "user_id": self.user.id,
                "date_from": start,
                "date_to": start + timedelta(hours=hours),
            }
        )

    def test_each_step_emits_once_with_the_catalog_payload(self):
        """Reserve, check out, check in: one event each, payload per the catalog."""
        booking = self.book()
        for action, event_type in [
            ("action_reserve_asset", "asset.reserved"),
            ("action_checkout_asset", "asset.checked_out"),
            ("action_checkin_asset", "asset.checked_in"),
        ]:
            getattr(booking, action)()
            getattr(booking, action)()  # a double click
            events = self.outbox(event_type)
            self.assertEqual(len(events), 1, f"{event_type} exactly once")
            payload = self.assertCatalogPayload(events)
            self.assertEqual(payload["booking_state"], booking.state)
        self.assertEqual(payload["asset_name"], "Epson EB-X51")
        self.assertEqual(payload["asset_category"], "AV equipment")
        self.assertEqual(payload["reserved_by_name"], "Juan dela Cruz")
        self.assertEqual(payload["reserved_from"], "2026-01-26T01:00:00Z")
        self.assertEqual(events.aggregate_type, "maintenance.equipment")
        self.assertEqual(events.aggregate_id, str(self.projector.id))

    def test_equipment_buttons_act_on_the_current_booking(self):
        """Check out / check in from the equipment form move its current booking."""
        booking = self.book()
        booking.action_reserve_asset()
        self.projector.action_checkout_asset()
        self.assertEqual(booking.state, "checked_out")
        self.projector.action_checkin_asset()
        self.assertEqual(booking.state, "checked_in")
        with self.assertRaises(UserError) as caught:
            self.projector.action_checkout_asset()
        self.assertIn("no reserved or checked-out booking", str(caught.exception))

    def test_impossible_transition_is_refused_clearly(self):
        """Checking in a booking that was never checked out says what state it must be in."""
        booking = self.book()
        booking.action_reserve_asset()
        with self.assertRaises(UserError) as caught:
            booking.action_checkin_asset()
        self.assertIn("is Reserved; it must be Checked out", str(caught.exception))
        self.assertFalse(self.outbox("asset.checked_in"))

    def test_overlapping_booking_is_refused(self):
        """Two active bookings of one asset may not overlap; the message names the holder."""
        self.book().action_reserve_asset()
        clash = self.book(start=self.start + timedelta(hours=4))
        with self.assertRaises(ValidationError) as caught:  # rolls back to a savepoint
            clash.action_reserve_asset()
        self.assertIn("already booked by Juan dela Cruz", str(caught.exception))
        self.assertEqual(len(self.outbox("asset.reserved")), 1)
        self.book(start=self.start + timedelta(hours=8)).action_reserve_asset()  # back to back is fine

    def test_booking_must_end_after_it_starts(self):
        with self.assertRaises(ValidationError) as caught:
            self.book(hours=-1)
        self.assertIn("must end after it starts", str(caught.exception))

    def test_one_equipment_cannot_be_out_with_two_bookings(self):
        """Two reservations on different days; the first is out: the second cannot leave."""
        monday, tuesday = self.book(), self.book(start=self.start + timedelta(days=1))
        (monday | tuesday).action_reserve_asset()
        monday.action_checkout_asset()
        with self.assertRaises(UserError) as caught:
            tuesday.action_checkout_asset()
        self.assertIn("still checked out by Juan dela Cruz", str(caught.exception))
        self.assertEqual(tuesday.state, "reserved")
        self.assertEqual(len(self.outbox("asset.checked_out")), 1, "no second check-out told")
        self.assertEqual(self.projector.ipai_current_booking_id, monday)

    def test_two_check_outs_at_the_same_moment_the_loser_is_told_in_words(self):
        """Two sessions check out two bookings of one projector at once: each passes the holder
        check (neither sees the other's yet), the unique index lets one through, and the other
        reads a sentence, not "duplicate key value violates unique constraint"."""
        monday, tuesday = self.book(), self.book(start=self.start + timedelta(days=1))
        (monday | tuesday).action_reserve_asset()
        monday.action_checkout_asset()
        booking_class = type(tuesday)
        with (
            patch.object(booking_class, "_ipai_check_can_leave", lambda booking: None),
            self.assertRaises(UserError) as caught,
        ):
            tuesday.action_checkout_asset()
        message = str(caught.exception)
        self.assertIn("Epson EB-X51 was checked out for another booking at the same moment", message)
        self.assertNotIn("duplicate key", message)
        self.assertEqual(tuesday.state, "reserved")
        self.assertEqual(len(self.outbox("asset.checked_out")), 1, "no second check-out told")

    def test_checking_out_long_before_the_start_is_refused(self):
        """Within an hour of the start is fine; days ahead the booking would lie."""
        soon = self.book(start=fields.Datetime.now() + timedelta(minutes=30))
        later = self.book(
            start=fields.Datetime.now() + timedelta(days=3),
            equipment=self.env["maintenance.equipment"].create({"name": "Mic"}),
        )
        (soon | later).action_reserve_asset()
        soon.action_checkout_asset()
        self.assertEqual(soon.state, "checked_out")
        with self.assertRaises(UserError) as caught:
            later.action_checkout_asset()
        self.assertIn("can be checked out from", str(caught.exception))
        self.assertEqual(later.state, "reserved")

    def test_equipment_shows_its_current_booking_and_whether_it_is_late(self):
        booking = self.book()
        self.assertFalse(self.projector.ipai_current_booking_id)
        booking.action_reserve_asset()
        self.assertEqual(self.projector.ipai_current_booking_state, "reserved")
        booking.action_checkout_asset()
        self.projector.invalidate_recordset()
        self.assertEqual(
            (self.projector.ipai_current_booking_state, self.projector.ipai_booking_overdue),
            ("checked_out", True),
            "out since January: late",
        )

    def test_booking_names_and_messages_read_in_the_users_time_zone(self):
        """01:00 UTC is 09:00 in Manila: that is what the name and a refusal say."""
        self.env.user.tz = "Asia/Manila"
        booking = self.book()
        self.assertEqual(booking.name, "Epson EB-X51 2026-01-26 09:00")

    def test_only_equipment_still_out_is_overdue(self):
        """Reserved but never taken, cancelled, or returned: nothing is out, nothing is late."""
        reserved, cancelled = self.book(), self.book(start=self.start + timedelta(hours=9))
        reserved.action_reserve_asset()
        cancelled.action_reserve_asset()
        cancelled.action_cancel()
        model = self.env["ipai.equipment.booking"]
        self.assertEqual(model._cron_detect_overdue_bookings(now=self.start + timedelta(days=3)), 0)
        self.assertFalse(self.outbox("asset.overdue"))

    def test_overdue_cron_emits_once_per_booking_per_day(self):
        """A booking out past its end is announced at most once a day."""
        booking = self.book()
        booking.action_reserve_asset()
        booking.action_checkout_asset()
        model = self.env["ipai.equipment.booking"]
        day_after = self.start + timedelta(days=1)
        self.assertEqual(model._cron_detect_overdue_bookings(now=day_after), 1)
        self.assertEqual(model._cron_detect_overdue_bookings(now=day_after + timedelta(hours=3)), 0)
        self.assertEqual(len(self.outbox("asset.overdue")), 1)
        self.assertEqual(model._cron_detect_overdue_bookings(now=day_after + timedelta(days=1)), 1)
        self.assertEqual(len(self.outbox("asset.overdue")), 2)
        booking.action_checkin_asset()
        self.assertEqual(model._cron_detect_overdue_bookings(now=day_after + timedelta(days=2)), 0)
