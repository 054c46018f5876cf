"""Signing in to the console: one operator password (generated like the webhook secret, kept 0600
in the config directory), a signed session cookie, and a CSRF token on every action.

The session cookie holds the operator's name, its expiry and its CSRF token, signed with a key
made when the console starts (a restart signs everybody out). It is HttpOnly and SameSite=Strict,
and Secure when the console is reached over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import ConfigurationError
from ...core.secret_files import config_dir, write_private_file

# The console password is the console's own rule, not the webhook secret's.
MIN_PASSWORD_LENGTH = 16

SESSION_COOKIE = "ipai_console_session"
LOGIN_COOKIE = "ipai_console_login"
SESSION_SECONDS = 8 * 3600
PASSWORD_FILE = "console-password"
OPERATOR_NAME = re.compile(r"^[\w.@+ -]{1,80}$")


def password_file(configured: Path | None, config_directory: Path | None) -> Path:
    """IPAI_CONSOLE_PASSWORD_FILE, else ``console-password`` in the config directory."""
    return configured or config_dir(config_directory) / PASSWORD_FILE


def ensure_password(path: Path) -> str:
    """The console password at ``path``, made (64 hex characters, mode 0600) if missing."""
    if not path.exists():
        try:
            write_private_file(path, secrets.token_hex(32) + "\n", exclusive=True)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"console password file {path}: {exc.strerror}") from None
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigurationError(
            f"console password file {path}: at least {MIN_PASSWORD_LENGTH} characters, please"
        )
    return password


@dataclass(frozen=True)
class Session:
    """A signed-in operator; ``csrf`` also names the session (sign-out revokes it)."""

    operator: str
    csrf: str
    expires: float


class Sessions:
    """Issues and checks session cookies and sign-in tokens; remembers signed-out sessions."""

    def __init__(self, password: str, key: bytes | None = None) -> None:
        self._password_digest = hashlib.sha256(password.encode()).digest()
        self._key = key or secrets.token_bytes(32)
        self._ended: dict[str, float] = {}  # csrf token -> expiry, of sessions signed out
        self._lock = threading.Lock()

    def end(self, session: Session) -> None:
        """Sign ``session`` out: its cookie is refused from now on, wherever it was copied."""
        now = time.time()
        with self._lock:
            self._ended = {token: expiry for token, expiry in self._ended.items() if expiry > now}
            self._ended[session.csrf] = session.expires

    def password_matches(self, offered: str) -> bool:
        """Constant-time: how much of a wrong password is right is never measurable."""
        return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), self._password_digest)

    def issue(self, operator: str) -> tuple[str, Session]:
        session = Session(operator, secrets.token_urlsafe(24), time.time() + SESSION_SECONDS)
        body = json.dumps(
            {"operator": operator, "csrf": session.csrf, "expires": session.expires}
        ).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None: unsigned, tampered or expired."""
        if not cookie or "." not in cookie:
            return None
        encoded, _, signature = cookie.partition(".")
        try:
            body = _unb64(encoded)
            valid = hmac.compare_digest(_unb64(signature), self._sign(body))
            document = json.loads(body) if valid else None
        except (ValueError, TypeError):
            return None
        if not document or document.get("expires", 0) < time.time():
            return None
        if document["csrf"] in self._ended:
            return None
        return Session(str(document["operator"]), str(document["csrf"]), float(document["expires"]))

    def login_token(self) -> str:
        """A token for the sign-in form, set as a cookie too (the form is checked against it)."""
        return secrets.token_urlsafe(24)

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()


class SignInThrottle:
    """Wrong passwords slow sign-in down, per client address and per operator name alike.

    The first ``free`` wrong passwords of a client (or for a name) cost nothing more; after
    each further one, that client (or name) must wait 1 s, then 2, 4, … up to ``longest``
    before the next attempt is even checked. A right password clears both. Entries are
    forgotten an hour after their last failure, and at most ``capacity`` are kept.
    """

    def __init__(self, *, free: int = 5, longest: float = 900.0, capacity: int = 10_000) -> None:
        self.free, self.longest, self.capacity = free, longest, capacity
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, unlocked at)
        self._lock = threading.Lock()

    def wait_seconds(self, client: str, operator: str) -> float:
        """How long this client, or anyone for this name, must still wait (0: may try now)."""
        now = time.monotonic()
        with self._lock:
            return max(
                (self._failures.get(key, (0, now))[1] - now for key in _keys(client, operator)),
                default=0.0,
            )

    def failed(self, client: str, operator: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._forget_stale(now)
            for key in _keys(client, operator):
                count = self._failures.get(key, (0, now))[0] + 1
                delay = 0.0 if count <= self.free else min(2.0 ** (count - self.free - 1), self.longest)
                self._failures.pop(key, None)  # re-inserted last: the dict stays oldest-first
                self._failures[key] = (count, now + delay)

    def succeeded(self, client: str, operator: str) -> None:
        with self._lock:
            for key in _keys(client, operator):
                self._failures.pop(key, None)

    def _forget_stale(self, now: float) -> None:
        while self._failures:
            key, (_, unlocked_at) = next(iter(self._failures.items()))
            if len(self._failures) < self.capacity and unlocked_at > now - 3600:
                return
            del self._failures[key]


def _keys(client: str, operator: str) -> tuple[str, str]:
    return f"client:{client}", f"name:{operator.casefold()}"


def tokens_match(expected: str | None, offered: str | None) -> bool:
    """Constant-time comparison of a CSRF token with the one the session or cookie holds."""
    if not expected or not offered:
        return False
    return hmac.compare_digest(expected.encode(), offered.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
