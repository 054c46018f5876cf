"""E-mail over SMTP: STARTTLS, TLS or plain; plain text and HTML."""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from ...core.errors import ConfigurationError
from ...core.stored_event import StoredEvent
from ...core.watchdog import WATCHDOG, shutdown_socket
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS, MAX_ERROR_CHARS, DeliveryFailed


class EmailDestination:
    """One e-mail per event over SMTP (STARTTLS, TLS or plain), plain text plus HTML."""

    needs_message = True
    waits_on_network = True

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ConfigurationError(f"destination {name}: security must be starttls, tls or none")
        if not recipients:
            raise ConfigurationError(f"destination {name}: needs at least one recipient in `to`")
        self.name, self.host, self.port, self.sender = name, host, port, sender
        self.recipients, self.security, self.timeout = recipients, security, timeout
        self.username, self.password = username, password
        self.tls_context = tls_context or ssl.create_default_context()

    def deliver(self, event: StoredEvent, message: Message | None) -> int | None:
        """Send one e-mail; every byte of the SMTP session, greeting to QUIT, within the budget.

        Past the budget the socket is shut down; the delivery then fails (and is retried) even
        if a reply cut short had already read as positive.
        """
        assert message is not None
        mail = self._mail(event, message)
        sockets: list[socket.socket] = []
        guard = WATCHDOG.register(self.timeout, functools.partial(_shut_down_all, sockets))
        smtp = None
        try:
            smtp = self._connect(sockets.append)
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(mail)
            with contextlib.suppress(OSError, smtplib.SMTPException):  # the mail is accepted
                smtp.quit()
        except (OSError, smtplib.SMTPException) as exc:
            if guard.expired:
                raise DeliveryFailed(f"SMTP server did not finish within {self.timeout:g} s") from None
            raise self._failure(exc) from None
        finally:
            WATCHDOG.cancel(guard)
            if smtp is not None:
                smtp.close()
        if guard.expired:  # the last reply may have been cut short by the budget
            raise DeliveryFailed(f"SMTP server did not finish within {self.timeout:g} s")
        return None

    def _mail(self, event: StoredEvent, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = f"{message.emoji} {message.title}"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Message-ID"] = f"<{event.id}@ipai-bus>"  # the same on every retry
        mail.set_content(message.plain_text)
        mail.add_alternative(message.html, subtype="html")
        return mail

    @staticmethod
    def _failure(exc: Exception) -> DeliveryFailed:
        """An SMTP error as a delivery failure: 5xx answers are permanent (but a login refusal)."""
        if isinstance(exc, smtplib.SMTPResponseException):
            permanent = 500 <= exc.smtp_code < 600 and not isinstance(
                exc, smtplib.SMTPAuthenticationError
            )
            return DeliveryFailed(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:MAX_ERROR_CHARS], retryable=not permanent
            )
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return DeliveryFailed(f"recipients refused: {sorted(exc.recipients)}", retryable=False)
        return DeliveryFailed(f"SMTP connection failed: {type(exc).__name__}: {exc}")

    def _connect(self, on_socket: Callable[[socket.socket], None]) -> smtplib.SMTP:
        implicit_tls = self.tls_context if self.security == "tls" else None
        smtp = _BudgetedSMTP(on_socket, implicit_tls, timeout=self.timeout)
        smtp.connect(self.host, self.port)
        if self.security == "starttls":
            smtp.starttls(context=self.tls_context)
        return smtp

    def close(self) -> None:
        pass


def _shut_down_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        shutdown_socket(sock.fileno())


class _WholeLines:
    """A reply stream that refuses a line cut short: "250 O" then end of stream is no answer."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readline(self, limit: int = -1) -> bytes:
        line = self._stream.readline(limit)
        if line and not line.endswith(b"\n") and (limit < 0 or len(line) < limit):
            raise smtplib.SMTPServerDisconnected("the SMTP server's reply ended mid-line")
        return bytes(line)

    def close(self) -> None:
        self._stream.close()


class _BudgetedSMTP(smtplib.SMTP):
    """smtplib's client, except that its socket is handed to ``on_socket`` the moment it
    exists (before the greeting, and before the TLS handshake of implicit TLS), so the caller's
    budget covers every byte; and that a reply line cut short is an error, not an answer."""

    def __init__(
        self,
        on_socket: Callable[[socket.socket], None],
        implicit_tls: ssl.SSLContext | None,
        *,
        timeout: float,
    ) -> None:
        self._on_socket = on_socket
        self._implicit_tls = implicit_tls
        super().__init__(timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout, self.source_address)
        self._on_socket(sock)
        if self._implicit_tls is not None:
            return self._implicit_tls.wrap_socket(sock, server_hostname=host)
        return sock

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _WholeLines(self.sock.makefile("rb"))
        return super().getreply()
