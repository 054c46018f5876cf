from . import test_expense_events
from . import test_booking_events
from . import test_outbox_dispatch
from . import test_settings_access
from . import test_cron_waker
