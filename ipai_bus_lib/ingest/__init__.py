"""Ingest: the signed webhook receiver, its HTTP front and metrics (the sender that posts to it
is core/sender.py, shared with the Odoo addon)."""
