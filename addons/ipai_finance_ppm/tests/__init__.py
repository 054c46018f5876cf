from . import test_finance_events, test_generator_and_rules
