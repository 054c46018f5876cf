"""Wall-clock deadlines for blocking I/O: one thread that cuts a socket when its time is up.

Socket timeouts bound each read, not a whole exchange: a peer trickling one byte every few
seconds, or a frozen database that accepted the bytes and never answers, holds a blocking call
for as long as it likes. A deadline registered here shuts the socket down when it passes, which
makes the blocked call fail at once, whatever library made it (http.client, smtplib, libpq).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator


class Deadline:
    """One registered deadline; ``expired`` tells whether it fired before it was cancelled."""

    def __init__(self, at: float, on_expire: Callable[[], None]) -> None:
        self.at = at
        self.on_expire = on_expire
        self.expired = False
        self.cancelled = False
        # Held while the action runs and while cancelling, so an action never runs after
        # cancel() returned (the socket may belong to another request by then).
        self.lock = threading.Lock()

    def fire(self) -> None:
        with self.lock:
            if self.cancelled:
                return
            self.expired = True
            try:
                self.on_expire()
            except Exception:  # noqa: BLE001 - a failed cut must not stop the watchdog
                pass


class Watchdog:
    """Runs each registered deadline's action once its monotonic time passes, unless cancelled.

    Cheap to use per request: registering is a heap push under a lock; one daemon thread serves
    every deadline of the process (started on first use, and again after a fork).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def register(self, seconds: float, on_expire: Callable[[], None]) -> Deadline:
        """Call ``on_expire`` in ``seconds`` unless ``cancel`` is called on the result first."""
        deadline = Deadline(time.monotonic() + seconds, on_expire)
        with self._condition:
            self._ensure_thread()
            heapq.heappush(self._heap, (deadline.at, next(self._counter), deadline))
            if self._heap[0][2] is deadline:
                self._condition.notify()
        return deadline

    def cancel(self, deadline: Deadline) -> None:
        """The guarded call finished: the action will not run after this returns."""
        with deadline.lock:
            deadline.cancelled = True

    @contextlib.contextmanager
    def guard(self, seconds: float, on_expire: Callable[[], None]) -> Iterator[Deadline]:
        """``on_expire`` runs if the block is still running ``seconds`` from now."""
        deadline = self.register(seconds, on_expire)
        try:
            yield deadline
        finally:
            self.cancel(deadline)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="ipai-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    if self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                        continue
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(timeout)
                _, _, deadline = heapq.heappop(self._heap)
            deadline.fire()


WATCHDOG = Watchdog()


def shutdown_socket(fileno: int) -> None:
    """Shut a socket down by descriptor (both directions): blocked reads and writes on it fail.

    The descriptor stays open (its owner closes it), so it cannot be reused meanwhile.
    """
    try:
        duplicate = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()
