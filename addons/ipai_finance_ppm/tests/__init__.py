from . import test_finance_events
from . import test_generator_and_rules
