from . import (
    test_booking_events,
    test_cron_waker,
    test_expense_events,
    test_outbox_dispatch,
    test_settings_access,
)
