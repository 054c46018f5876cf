from . import (
    hr_expense,
    hr_expense_sheet,
    ipai_bus_link,
    ipai_chat_action,
    ipai_equipment_booking,
    ipai_event_outbox,
    maintenance_equipment,
    res_config_settings,
    res_users,
)
