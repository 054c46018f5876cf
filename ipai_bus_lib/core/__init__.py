"""Core rules: the wire contract (wire_contract.json), the event catalog and envelope, signing,
configuration and errors, and the one sender of signed events.

Nothing here touches the database and nothing needs more than the standard library and
psycopg2: the Odoo addons import these modules as they are, and only these.
"""
