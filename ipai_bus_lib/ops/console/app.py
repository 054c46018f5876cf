"""The console as a WSGI application: sign-in, the pages, and the actions (retry, resume), each
request checked before it reads or changes anything."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

from ...core.errors import DatabaseUnavailable, InvalidInput
from ...storage.db import Database
from .. import operations
from . import data, pages
from .auth import (
    LOGIN_COOKIE,
    OPERATOR_NAME,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    Sessions,
    SignInThrottle,
    tokens_match,
)

log = logging.getLogger("ipai_bus.console")
StartResponse = Callable[..., Any]
MAX_FORM_BYTES = 64 * 1024
WRONG_PASSWORD_DELAY_SECONDS = 0.5
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]


class Answer(Exception):
    """A request answered before its page: a redirect, or a refusal with its page."""

    def __init__(self, status: int, body: str = "", headers: list[tuple[str, str]] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or []


class Console:
    """``Console(database, sessions, destinations)`` is the WSGI application."""

    def __init__(
        self,
        database: Database,
        sessions: Sessions,
        destinations: Mapping[str, Mapping[str, Any]] | None = None,
        throttle: SignInThrottle | None = None,
        unrouted: Callable[[list[str]], list[str]] = lambda event_types: [],
    ) -> None:
        self.database, self.sessions = database, sessions
        self.destinations = dict(destinations or {})
        self.unrouted = unrouted  # which event types no route of the routes file takes
        self.throttle = throttle or SignInThrottle()

    def __call__(self, environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, body, headers = self._route(environ)
        except Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        except DatabaseUnavailable:
            status, body, headers = (
                503,
                pages.layout(
                    "Database unavailable",
                    _problem("The bus database does not answer; this page comes back once it does."),
                ),
                [],
            )
        except Exception:  # noqa: BLE001 - a page, never a traceback
            log.exception("console: unexpected error")
            status, body, headers = 500, pages.layout("Error", _problem("Something went wrong.")), []
        content_type = "text/css" if environ.get("PATH_INFO") == "/console.css" else "text/html"
        encoded = body.encode()
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [
                ("Content-Type", f"{content_type}; charset=utf-8"),
                ("Content-Length", str(len(encoded))),
                *SECURITY_HEADERS,
                *headers,
            ],
        )
        return [encoded]

    # --- routing ------------------------------------------------------------------------------

    def _route(self, environ: Mapping[str, Any]) -> tuple[int, str, list[tuple[str, str]]]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        if path == "/console.css":
            return 200, pages.STYLE, [("Cache-Control", "max-age=3600")]
        if path == "/favicon.ico":
            raise Answer(404)
        if path == "/login":
            return self._login(environ) if method == "POST" else self._login_form(environ)
        session = self.sessions.read(_cookies(environ).get(SESSION_COOKIE))
        if session is None:
            if method == "GET":
                raise Answer(303, headers=[("Location", "/login")])
            raise Answer(
                401, pages.layout("Sign in first", _problem("Sign in first: nothing was changed."))
            )
        if method == "POST":
            form = _form(environ)
            _require_same_origin(environ)
            if not tokens_match(session.csrf, form.get("csrf")):
                raise Answer(
                    403,
                    pages.layout(
                        "Refused",
                        _problem(
                            "This form is stale or came from elsewhere (CSRF token missing or wrong):"
                            " nothing was changed. Reload the page and try again."
                        ),
                    ),
                )
            if path == "/retry":
                return self._retry(session, form)
            if path == "/resume":
                return self._resume(session, form)
            if path == "/logout":
                self.sessions.end(session)
                return 303, "", [("Location", "/login"), _clear_cookie(SESSION_COOKIE)]
            raise Answer(404, pages.layout("Not found", _problem("No such action.")))
        if method != "GET":
            raise Answer(405, pages.layout("Not allowed", _problem("Use GET or POST.")))
        query = _query(environ)
        page = self._page(path, query, session)
        flash = query.get("message")
        body = pages.layout(
            page[0],
            page[1],
            operator=session.operator,
            csrf=session.csrf,
            here=page[2],
            flash=flash,
            flash_error=query.get("error") == "1",
        )
        return 200, body, []

    def _with_cursor(self, work: Callable[[Any], Any]) -> Any:
        """``work(cursor)``, tried again once when the database did not answer: the first
        request after PostgreSQL restarts finds the pool's connections closed under it."""
        try:
            with self.database.autocommit() as cursor:
                return work(cursor)
        except DatabaseUnavailable:
            with self.database.autocommit() as cursor:
                return work(cursor)

    def _page(self, path: str, query: Mapping[str, str], session: Session) -> tuple[str, str, str]:
        page: tuple[str, str, str] = self._with_cursor(
            lambda cursor: self._read_page(cursor, path, query, session)
        )
        return page

    def _read_page(
        self, cursor: Any, path: str, query: Mapping[str, str], session: Session
    ) -> tuple[str, str, str]:
        if path == "/":
            return "Overview", pages.overview_page(data.overview(cursor)), "/"
        if path == "/events":
            filters = _filters(query)
            page = _or_400(lambda: data.events_page(cursor, filters, query.get("before")))
            return "Events", pages.events_page(page, query), "/events"
        if path.startswith("/events/"):
            event_id = _event_id(path.removeprefix("/events/"))
            history = data.event_detail(cursor, event_id)
            if history is None:
                raise Answer(404, pages.layout("Not found", _problem(f"No event {event_id}.")))
            return f"Event {event_id}", pages.event_page(event_id, history, session.csrf), "/events"
        if path == "/dead":
            kind = query.get("type") or None
            page = _or_400(lambda: data.dead_letters(cursor, query.get("before"), kind))
            return "Dead letters", pages.dead_page(page, session.csrf, kind), "/dead"
        if path == "/destinations":
            states = data.destination_states(cursor)
            return (
                "Destinations",
                pages.destinations_page(self.destinations, states, session.csrf),
                "/destinations",
            )
        raise Answer(404, pages.layout("Not found", _problem("No such page.")))

    # --- sign-in ------------------------------------------------------------------------------

    def _login_form(
        self, environ: Mapping[str, Any], error: str | None = None, operator: str = "", status: int = 200
    ) -> tuple[int, str, list[tuple[str, str]]]:
        # One token per browser until it signs in: a second tab (or a favicon request sent to
        # the sign-in page) must not make the first form stale.
        token = _cookies(environ).get(LOGIN_COOKIE) or self.sessions.login_token()
        cookie = _cookie(LOGIN_COOKIE, token, environ, max_age=900)
        return status, pages.login_page(token, error, operator), [cookie]

    def _login(self, environ: Mapping[str, Any]) -> tuple[int, str, list[tuple[str, str]]]:
        form = _form(environ)
        operator = form.get("operator", "").strip()
        if not tokens_match(_cookies(environ).get(LOGIN_COOKIE), form.get("login_token")):
            return self._login_form(environ, "This sign-in form is stale; try again.", operator, 403)
        if not OPERATOR_NAME.fullmatch(operator):
            return self._login_form(
                environ, "Give your name (letters, digits, . @ + - _ and spaces).", operator, 400
            )
        client = str(environ.get("REMOTE_ADDR", ""))
        wait = self.throttle.wait_seconds(client, operator)
        if wait > 0:
            status, body, headers = self._login_form(
                environ,
                f"Too many wrong passwords from here or for this name: try again in {wait:.0f} s.",
                operator,
                429,
            )
            return status, body, [*headers, ("Retry-After", str(max(1, round(wait))))]
        if not self.sessions.password_matches(form.get("password", "")):
            self.throttle.failed(client, operator)
            time.sleep(WRONG_PASSWORD_DELAY_SECONDS)
            log.warning("console: wrong password for %r from %s", operator, client)
            return self._login_form(environ, "Wrong password.", operator, 401)
        self.throttle.succeeded(client, operator)
        cookie_value, _ = self.sessions.issue(operator)
        return (
            303,
            "",
            [
                ("Location", "/"),
                _cookie(SESSION_COOKIE, cookie_value, environ, max_age=SESSION_SECONDS),
                _clear_cookie(LOGIN_COOKIE),
            ],
        )

    # --- the action -------------------------------------------------------------------------------

    def _retry(
        self, session: Session, form: Mapping[str, Any]
    ) -> tuple[int, str, list[tuple[str, str]]]:
        back = _same_site_path(form.get("back", ""), "/dead")
        # The dead letters' one form: "Retry selected" sends the ticked ids, "Retry all shown"
        # (scope=shown) every id the page listed.
        texts = form.get("shown[]" if form.get("scope") == "shown" else "id[]", [])
        reason = form.get("reason", "").strip()
        if not texts:
            return _back(back, "Select at least one event to retry; nothing was changed.", error=True)
        if not reason:
            return _back(
                back, "Say why you retry (for the audit trail); nothing was changed.", error=True
            )
        try:
            ids = operations.parse_event_ids(texts)
        except InvalidInput as exc:
            raise Answer(
                400, pages.layout("Bad request", _problem(f"{exc}; nothing was changed."))
            ) from None

        def retry(cursor: Any) -> tuple[int, list[str]]:
            done = operations.retry(cursor, ids, actor=session.operator, reason=reason)
            return done, self.unrouted(operations.types_of(cursor, ids)) if done else []

        retried, unrouted = self._with_cursor(retry)
        if not retried:
            return _back(back, "Nothing retried: only failed or dead events are.", error=True)
        message = f"{retried} event(s) back to pending, recorded as retried by {session.operator}."
        if unrouted:
            message += (
                f" No route takes {', '.join(unrouted)}: those events will go dead again;"
                " add a route and restart the routers."
            )
        return _back(back, message, error=bool(unrouted))

    def _resume(
        self, session: Session, form: Mapping[str, Any]
    ) -> tuple[int, str, list[tuple[str, str]]]:
        name, reason = form.get("destination", "").strip(), form.get("reason", "").strip()
        if not name or not reason:
            return _back(
                "/destinations",
                "Name the destination and say why you resume it; nothing was changed.",
                error=True,
            )
        resumed = self._with_cursor(
            lambda cursor: operations.resume_destination(
                cursor, name, actor=session.operator, reason=reason
            )
        )
        if not resumed:
            return _back("/destinations", f"{name} is not paused; nothing was changed.", error=True)
        return _back(
            "/destinations",
            f"{name} resumed by {session.operator}: its next delivery is the trial.",
        )


# A path of this console: "/" then no second "/" or "\\" (which browsers read as "//", another
# site), and nothing but printable ASCII without spaces.
_SAME_SITE_PATH = re.compile(r"/(?![/\\])[!-~]*")


def _same_site_path(path: str, fallback: str) -> str:
    """``path`` when it stays on this site, else ``fallback``: a redirect never leaves it."""
    return path if _SAME_SITE_PATH.fullmatch(path) and "\\" not in path else fallback


def _problem(text: str) -> str:
    return f'<div class="flash error" role="alert">{pages.h(text)}</div><p><a href="/">Overview</a></p>'


def _back(path: str, message: str, *, error: bool = False) -> tuple[int, str, list[tuple[str, str]]]:
    separator = "&" if "?" in path else "?"
    query = urlencode({"message": message, **({"error": "1"} if error else {})})
    return 303, "", [("Location", f"{path}{separator}{query}")]


def _or_400(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except ValueError as exc:
        raise Answer(400, pages.layout("Bad request", _problem(str(exc)))) from None


def _event_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Answer(
            400, pages.layout("Bad request", _problem(f"{text!r} is not an event id (a UUID)."))
        ) from None


def _filters(query: Mapping[str, str]) -> data.EventFilter:
    status = query.get("status") or None
    if status is not None and status not in pages.STATUSES:
        raise Answer(400, pages.layout("Bad request", _problem(f"No status {status!r}.")))
    return data.EventFilter(
        status=status,
        type_pattern=query.get("type") or None,
        source=query.get("source") or None,
        record=query.get("record") or None,
        since=_moment(query.get("since"), "since"),
        until=_moment(query.get("until"), "until"),
    )


def _moment(text: str | None, name: str) -> datetime | None:
    """A moment as typed, or as copied from a table ("2026-12-02 14:00:05 UTC")."""
    if not text:
        return None
    text = text.strip()
    if text.endswith(" UTC"):
        text = text.removesuffix(" UTC") + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Answer(
            400,
            pages.layout(
                "Bad request",
                _problem(f"{name}: {text!r} is not a date and time like {pages.MOMENT_EXAMPLE}."),
            ),
        ) from None
    return moment if moment.tzinfo else moment.astimezone()  # the console's own zone


def _query(environ: Mapping[str, Any]) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def _form(environ: Mapping[str, Any]) -> dict[str, Any]:
    """The url-encoded form; repeated ``id`` and ``shown`` fields are gathered under ``id[]``
    and ``shown[]``."""
    media = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise Answer(415, pages.layout("Refused", _problem("Send the page's own form.")))
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_FORM_BYTES:
        raise Answer(413, pages.layout("Refused", _problem("That form is too large.")))
    raw = environ["wsgi.input"].read(length).decode("utf-8", "replace")
    parsed = parse_qs(raw, keep_blank_values=True)
    form: dict[str, Any] = {key: values[-1] for key, values in parsed.items()}
    form["id[]"] = parsed.get("id", [])
    form["shown[]"] = parsed.get("shown", [])
    return form


def _require_same_origin(environ: Mapping[str, Any]) -> None:
    """A browser names the page a form came from; one from another site is refused."""
    origin = environ.get("HTTP_ORIGIN")
    host = environ.get("HTTP_HOST", "")
    if origin and origin != "null" and origin.split("://", 1)[-1] != host:
        raise Answer(
            403,
            pages.layout("Refused", _problem("That form came from another site: nothing was changed.")),
        )


def _cookies(environ: Mapping[str, Any]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header is no cookie
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _secure(environ: Mapping[str, Any]) -> bool:
    return (
        environ.get("wsgi.url_scheme") == "https"
        or str(environ.get("HTTP_X_FORWARDED_PROTO", "")).lower() == "https"
    )


def _cookie(name: str, value: str, environ: Mapping[str, Any], *, max_age: int) -> tuple[str, str]:
    flags = f"Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    if _secure(environ):
        flags += "; Secure"
    return "Set-Cookie", f"{name}={value}; {flags}"


def _clear_cookie(name: str) -> tuple[str, str]:
    return "Set-Cookie", f"{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
