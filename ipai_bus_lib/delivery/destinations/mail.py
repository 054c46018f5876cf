"""E-mail over SMTP: STARTTLS, TLS or plain; plain text and HTML."""

from __future__ import annotations

import functools
import smtplib
import ssl
import time
from email.message import EmailMessage

from ...core.errors import ConfigurationError
from ...core.watchdog import WATCHDOG, shutdown_socket
from ...storage.outbox import OutboxEvent
from ..formatters import Message
from .base import DEFAULT_TIMEOUT_SECONDS, DeliveryFailed
from .http_client import _ERROR_BODY_CHARS


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

    def deliver(self, event: OutboxEvent, message: Message | None) -> int | None:
        assert message is not None
        mail = EmailMessage()
        mail["Subject"] = f"{message.emoji} {message.title}"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Message-ID"] = f"<{event.id}@ipai-bus>"  # the same on every retry
        mail.set_content(message.plain_text)
        mail.add_alternative(message.html, subtype="html")
        started = time.monotonic()
        guard = None
        try:
            with self._connect() as smtp:
                left = self.timeout - (time.monotonic() - started)
                assert smtp.sock is not None  # connected by the constructor
                guard = WATCHDOG.register(
                    max(left, 0.001), functools.partial(shutdown_socket, smtp.sock.fileno())
                )
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            if guard is not None and guard.expired:
                raise DeliveryFailed(f"SMTP server did not finish within {self.timeout:g} s") from None
            raise self._failure(exc) from None
        finally:
            if guard is not None:
                WATCHDOG.cancel(guard)
        return None

    @staticmethod
    def _failure(exc: Exception) -> DeliveryFailed:
        """An SMTP error as a delivery failure: 5xx answers are permanent (but a login refusal)."""
        if isinstance(exc, smtplib.SMTPResponseException):
            permanent = 500 <= exc.smtp_code < 600 and not isinstance(
                exc, smtplib.SMTPAuthenticationError
            )
            return DeliveryFailed(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:_ERROR_BODY_CHARS], retryable=not permanent
            )
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return DeliveryFailed(f"recipients refused: {sorted(exc.recipients)}", retryable=False)
        return DeliveryFailed(f"SMTP connection failed: {type(exc).__name__}: {exc}")

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.tls_context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            smtp.starttls(context=self.tls_context)
        return smtp

    def close(self) -> None:
        pass
