"""Ingest: the signed webhook receiver, its HTTP front and metrics, and the sender that signs and
posts events to it."""
