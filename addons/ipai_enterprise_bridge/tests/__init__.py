from . import (
    test_booking_events,
    test_chat_actions,
    test_cron_waker,
    test_expense_events,
    test_outbox_dispatch,
    test_settings_access,
)
