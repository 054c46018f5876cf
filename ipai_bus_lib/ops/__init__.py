"""Operator tooling: the ``ipai-bus`` command, the stack ``up`` runs, the demo, and the
operations (status, events, retry, purge) behind them."""
