"""IPAI integration bus: signed business events from Odoo 18, stored durably and routed onwards.

The core (catalog, signing, outbox access, migrations) needs only psycopg2, so Odoo imports it as
it is; the receiver, router and embedded PostgreSQL come with the ``server`` extra.
"""

from .core.catalog import CATALOG
from .core.envelope import Envelope, new_envelope, parse_envelope
from .core.errors import IpaiBusError
from .core.signing import sign, signature_headers, verify

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "Envelope",
    "IpaiBusError",
    "new_envelope",
    "parse_envelope",
    "sign",
    "signature_headers",
    "verify",
]
