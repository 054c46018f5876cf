"""Operator tooling: the ``ipai-bus`` command, the stack ``up`` runs, the demo, ``send``, and
the operations (status, events, retry, purge) behind them."""
