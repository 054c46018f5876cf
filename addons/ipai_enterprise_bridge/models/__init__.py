from . import ipai_event_outbox
from . import hr_expense
from . import hr_expense_sheet
from . import ipai_equipment_booking
from . import maintenance_equipment
from . import res_config_settings
