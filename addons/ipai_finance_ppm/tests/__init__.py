from . import test_chat_actions, test_finance_events, test_generator_and_rules
