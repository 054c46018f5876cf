"""Delivery: the routes file, the router that claims, delivers and settles events, the
destinations it delivers to, and the formatters that turn events into messages."""
