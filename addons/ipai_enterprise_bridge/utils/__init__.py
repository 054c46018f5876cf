from . import ipai_webhook
