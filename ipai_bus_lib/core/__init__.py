"""Core rules: the event catalog and envelope, signing, configuration and errors.

Nothing here touches the network or the database; Odoo imports these modules as they are.
"""
