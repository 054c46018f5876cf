"""The library's exceptions: one root, one subclass per failure an operator or caller can act on."""

from __future__ import annotations


class IpaiBusError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigurationError(IpaiBusError):
    """A setting is missing or malformed; the message names the variable and what it wants."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class EnvelopeError(IpaiBusError):
    """An event envelope or its payload does not have the shape the wire contract asks for."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BatchTooLarge(EnvelopeError):
    """A batch request holds more events than one request may carry (answered 413)."""


class SignatureError(IpaiBusError):
    """A request's signature headers do not prove it came from a holder of an active secret."""

    reason = "invalid signature"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.reason)


class MissingTimestamp(SignatureError):
    """The x-ipai-timestamp header is absent."""

    reason = "missing x-ipai-timestamp header"


class MalformedTimestamp(SignatureError):
    """The x-ipai-timestamp header is not integer milliseconds since the Unix epoch."""

    reason = "x-ipai-timestamp must be integer milliseconds since the Unix epoch"


class StaleTimestamp(SignatureError):
    """The request was signed longer ago than the tolerance allows (or replayed later)."""

    reason = "timestamp outside the 5 minute window (too old)"


class TimestampInSeconds(StaleTimestamp):
    """A timestamp that is now if read as seconds: a sender that forgot the milliseconds."""

    reason = (
        "timestamp outside the 5 minute window (too old): it is now if read as seconds;"
        " x-ipai-timestamp is milliseconds since the Unix epoch"
    )


class FutureTimestamp(SignatureError):
    """The request claims to be signed further in the future than the tolerance allows."""

    reason = "timestamp outside the 5 minute window (in the future)"


class MissingSignature(SignatureError):
    """The x-ipai-signature header is absent or empty."""

    reason = "missing x-ipai-signature header"


class InvalidSignature(SignatureError):
    """No digest in the header matches any active secret over the exact bytes received."""

    reason = "invalid signature"


class ReplayedSignature(SignatureError):
    """The signature was already accepted under another idempotency key."""

    reason = "replayed signature"


class DatabaseError(IpaiBusError):
    """The database refused or failed an operation."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached; try again later (senders retry, routers wait)."""


class DatabaseBusy(DatabaseError):
    """A statement lost a race for rows another transaction held (a lock wait past lock_timeout,
    a deadlock, a serialization failure). The database is answering; trying again is safe."""


class InvalidInput(IpaiBusError):
    """An operator's input (a command-line argument, a console form) is not what it must be;
    nothing was changed. The message says what was expected."""


class InvalidArgument(DatabaseError):
    """A SQL function refused its arguments (SQLSTATE 22023); nothing was written."""


class MigrationError(DatabaseError):
    """A migration failed, or a migration that was applied has since been edited."""


class EmbeddedPostgresError(IpaiBusError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""
