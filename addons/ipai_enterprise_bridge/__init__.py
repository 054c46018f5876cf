from . import controllers, models, utils
from .models.hr_expense import PAID_WATERMARK_PARAMETER
from .models.ipai_chat_action import CHAT_ACTION_PARAMETERS
from .models.ipai_equipment_booking import EARLY_CHECKOUT_PARAMETER
from .models.ipai_event_outbox import RETENTION_PARAMETER
from .utils.ipai_webhook import SECRET_PARAMETER, SOURCE_PARAMETER, URL_PARAMETER

# Every system parameter the bridge reads or writes: they go when it is uninstalled.
ADDON_PARAMETERS = (
    URL_PARAMETER,
    SECRET_PARAMETER,
    SOURCE_PARAMETER,
    RETENTION_PARAMETER,
    EARLY_CHECKOUT_PARAMETER,
    PAID_WATERMARK_PARAMETER,
    *CHAT_ACTION_PARAMETERS,
)


def post_init_hook(env):
    """Reports paid before the bridge was installed are history, not news: never announced."""
    env["hr.expense"]._ipai_mark_paid_history()


def uninstall_hook(env):
    """The bridge's settings go with it: the webhook secret must not outlive the addon."""
    env["ir.config_parameter"].sudo().search([("key", "in", ADDON_PARAMETERS)]).unlink()
