"""SIGTERM and SIGINT turned into one call, safely, however many arrive and whenever.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is,
even inside another run of the same handler. A handler that takes a lock (``Event.set``,
``Condition.notify``, logging) can therefore deadlock on a lock its own thread already holds:
a burst of SIGTERMs hung the router that way. The handler here only writes one byte to a pipe,
which takes no lock; a helper thread reads it and makes the call, once, where locks are safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def call_on_stop_signal(
    callback: Callable[[], None], signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> None:
    """Install handlers so that the first of ``signals`` calls ``callback`` once, on a helper
    thread; later signals change nothing. Call from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def handle(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(write_end, b"!")

    def wait_then_call() -> None:
        os.read(read_end, 1)
        callback()

    threading.Thread(target=wait_then_call, name="stop-signal", daemon=True).start()
    for signum in signals:
        signal.signal(signum, handle)


def ignore_stop_signals(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
    """Ignore ``signals`` from now on: call when a command has stopped and is about to exit.

    While Python finalizes it puts back the default action of each signal it handled, which
    is to die: the last SIGTERM of a burst could then turn a clean exit into -15."""
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)
