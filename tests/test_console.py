"""The operator console in a real headless browser (Debian's chromium, driven by Playwright),
against a real console process, router, PostgreSQL and HTTP destination.

Screenshots of each page go to build/screenshots/ (IPAI_SCREENSHOT_DIR to change it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import requests

from ipai_bus_lib.core.envelope import Envelope
from ipai_bus_lib.storage import outbox

from .helpers import console_sign_in, free_port, snapshot, wait_until
from .readiness import http_answers, wait_for_server
from .sinks import HttpSink, Reply

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("IPAI_SCREENSHOT_DIR", ROOT / "build" / "screenshots"))
CHROMIUM = os.environ.get("IPAI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "console-test-password-0123456789"
SINK_SECRET = "whsec_dGVzdC1zdGFuZGFyZC13ZWJob29rcy1rZXk="

playwright_api = pytest.importorskip("playwright.sync_api", reason="the test extra installs it")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"browser tests skipped: no chromium at {CHROMIUM} (make test installs Debian's"
        " chromium as root; set IPAI_CHROMIUM to another)",
    ),
]


class Destination:
    """The HTTP destination: refuses asset.checked_out (400) until it is fixed."""

    def __init__(self) -> None:
        self.fixed = False

    def __call__(self, request) -> Reply:
        if request.json()["type"] == "asset.checked_out" and not self.fixed:
            return Reply(400, b"this channel does not take check-outs")
        return Reply(200)


def add_event(url: str, event_type: str, record: str, key: str) -> str:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        envelope = Envelope(event_type, "maintenance.equipment", record, {"booking_id": 7})
        event_id = outbox.record_event(cursor, envelope, idempotency_key=key).event_id
    conn.close()
    return str(event_id)


def status_of(url: str, event_id: str) -> str:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute("select status from integration.event_state where id = %s", (event_id,))
        status = cursor.fetchone()[0]
    conn.close()
    return status


@pytest.fixture()
def bus(clean_bus, tmp_path):
    """A router delivering to the destination, and the console, as `up` would run them."""
    destination = Destination()
    password_file = tmp_path / "console-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    with HttpSink(destination) as sink:
        routes = tmp_path / "routes.toml"
        routes.write_text(
            f'[destinations.booking-hook]\ntype = "http"\nurl = "{sink.url}"\n'
            f'secret = "{SINK_SECRET}"\nrate_per_second = 50\n\n'
            '[[routes]]\nmatch = "asset.*"\ndestinations = ["booking-hook"]\n'
        )
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": clean_bus,
            "IPAI_ROUTES_FILE": str(routes),
            "IPAI_CONSOLE_PASSWORD_FILE": str(password_file),
            "IPAI_ROUTER_METRICS_PORT": "0",
            "IPAI_ROUTER_POLL_SECONDS": "0.2",
        }
        command = [sys.executable, "-m", "ipai_bus_lib.ops.cli"]
        logs = [open(tmp_path / name, "w") for name in ("console.log", "router.log")]
        processes = [
            subprocess.Popen(
                [*command, "console", "--port", str(port)],
                env=env,
                stdout=logs[0],
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen([*command, "route"], env=env, stdout=logs[1], stderr=subprocess.STDOUT),
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_server(
                "the console",
                http_answers(base + "/login"),
                process=processes[0],
                log=tmp_path / "console.log",
            )
            yield base, clean_bus, destination
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=20)
            for log in logs:
                log.close()


def test_an_operator_signs_in_looks_around_and_retries_a_dead_event(bus):
    base, url, destination = bus
    delivered = [add_event(url, "asset.reserved", f"EQ-{n}", f"ok-{n}") for n in range(3)]
    dead = add_event(url, "asset.checked_out", "EQ-9", "refused-1")
    wait_until(lambda: status_of(url, dead) == "dead", what="the refused event to go dead")
    wait_until(lambda: all(status_of(url, i) == "completed" for i in delivered), what="deliveries")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/")
        assert page.url == base + "/login", "no session: the sign-in page"
        page.screenshot(path=SCREENSHOTS / "console-1-sign-in.png")

        page.fill("#operator", "Ana Reyes")
        page.fill("#password", "not-the-password")
        page.click("button[type=submit]")
        assert page.get_by_role("alert").inner_text() == "Wrong password."
        page.screenshot(path=SCREENSHOTS / "console-2-wrong-password.png")

        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        assert page.locator('[data-card="dead"] .n').inner_text() == "1"
        assert page.locator('[data-card="completed"] .n').inner_text() == "3"
        assert page.locator('[data-card="pending"] .n').inner_text() == "0"
        assert page.locator("h3").nth(0).inner_text().endswith("last hour: 4 accepted")
        assert page.locator("svg.chart.wide rect").count() == 60
        axis = page.locator("svg.chart.wide text").evaluate_all("texts => texts.map(t => t.textContent)")
        assert "per minute, UTC" in axis and "0" in axis, "a count axis and the zone"
        assert len([t for t in axis if re.fullmatch(r"\d\d:\d\d", t)]) == 5, "clock times under the bars"
        page.screenshot(path=SCREENSHOTS / "console-3-overview.png", full_page=True)

        page.click("text=Events")
        page.select_option("select[name=status]", "completed")
        page.fill("input[name=type]", "asset.*")
        page.click("text=Filter")
        page.wait_for_url("**/events?*status=completed*")
        assert page.locator("tbody tr").count() == 3
        page.screenshot(path=SCREENSHOTS / "console-4-events-filtered.png", full_page=True)

        since = page.locator("td.t").first.inner_text()  # a time as the table shows it
        page.fill("input[name=since]", since)
        page.click("text=Filter")
        assert page.locator("tbody tr").count() >= 1, "a time copied from the table is a filter"
        assert page.get_attribute("input[name=since]", "type") == "text"

        page.goto(base + f"/events/{dead}")
        assert "this channel does not take check-outs" in page.inner_text("main")
        assert page.locator("h2 code.id").inner_text() == dead, "the whole id, selectable at once"
        assert re.search(r"accepted\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.inner_text("dl")), (
            "times say their zone"
        )
        assert '"booking_id": 7' in page.inner_text("pre")
        page.screenshot(path=SCREENSHOTS / "console-5-dead-event.png", full_page=True)

        destination.fixed = True  # the operator fixes the destination, then retries
        page.click("text=Dead letters")
        assert page.locator(f'a[title="{dead}"]').count() == 1, "a short id carries the whole one"
        page.check(f'input[type=checkbox][value="{dead}"]')
        page.fill("input[name=reason]", "channel now takes check-outs")
        page.screenshot(path=SCREENSHOTS / "console-6-dead-letters.png", full_page=True)
        page.click("text=Retry selected")
        assert re.search(
            r"1 event\(s\) back to pending, recorded as retried by Ana Reyes",
            page.get_by_role("status").inner_text(),
        )
        page.screenshot(path=SCREENSHOTS / "console-7-retried.png", full_page=True)

        wait_until(lambda: status_of(url, dead) == "completed", what="the retried event's delivery")
        page.goto(base + f"/events/{dead}")
        text = page.inner_text("main")
        assert "completed" in text and "Ana Reyes" in text and "channel now takes check-outs" in text
        assert "last error" not in page.inner_text("dl"), "a delivered event shows no error"
        page.screenshot(path=SCREENSHOTS / "console-8-delivered-after-retry.png", full_page=True)

        page.click("text=Destinations")
        row = page.inner_text("tbody tr")
        assert "booking-hook" in row and "50.0/s" in row
        assert re.search(r"http://127\.0\.0\.1:\d+/…", row), "where it points, host only"
        assert "\tasset.*\t" in row, "the routes using it"
        assert "refused for good: HTTP 400: this channel does not take check-outs" in row
        page.screenshot(path=SCREENSHOTS / "console-9-destinations.png", full_page=True)

        session_cookie = next(c for c in page.context.cookies() if c["name"] == "ipai_console_session")
        assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
        browser.close()


def test_every_refusal_leaves_the_data_untouched(bus):
    base, url, _ = bus
    dead = add_event(url, "asset.checked_out", "EQ-5", "refused-2")
    wait_until(lambda: status_of(url, dead) == "dead", what="the event to go dead")
    before = snapshot(url)
    form = {"id": dead, "reason": "r", "back": "/dead"}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    no_session = requests.post(base + "/retry", data=form, allow_redirects=False, timeout=5)
    assert no_session.status_code == 401 and "Sign in first" in no_session.text
    assert requests.get(base + "/dead", allow_redirects=False, timeout=5).headers["Location"] == "/login"

    _, wrong = console_sign_in(base, "Eve", "guess")
    assert wrong.status_code == 401 and "Wrong password." in wrong.text
    assert "ipai_console_session" not in wrong.headers.get("Set-Cookie", "")
    forged = requests.post(
        base + "/login",
        data={"login_token": "made-up", "operator": "Eve", "password": PASSWORD},
        allow_redirects=False,
    )
    assert forged.status_code == 403, "a sign-in without the form's own token is refused"

    operator, signed_in = console_sign_in(base, "Ana", PASSWORD)
    assert signed_in.status_code == 303
    missing_csrf = operator.post(base + "/retry", data=form, headers=headers, allow_redirects=False)
    assert missing_csrf.status_code == 403 and "CSRF token missing or wrong" in missing_csrf.text
    wrong_csrf = operator.post(
        base + "/retry", data={**form, "csrf": "x" * 32}, headers=headers, allow_redirects=False
    )
    assert wrong_csrf.status_code == 403
    csrf = re.search(r'name="csrf" value="([^"]+)"', operator.get(base + "/dead").text)[1]
    cross_site = operator.post(
        base + "/retry",
        data={**form, "csrf": csrf},
        headers={**headers, "Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert cross_site.status_code == 403 and "another site" in cross_site.text
    bad_id = operator.post(
        base + "/retry", data={**form, "id": "17", "csrf": csrf}, headers=headers, allow_redirects=False
    )
    assert bad_id.status_code == 400 and "is not an event id" in bad_id.text
    bad_filter = operator.get(base + "/events?since=yesterday")
    assert bad_filter.status_code == 400 and "is not a date and time" in bad_filter.text
    assert operator.get(base + "/events/not-an-id").status_code == 400
    assert operator.get(base + "/events?before=garbage").status_code == 400
    assert operator.get(base + "/dead?before=2026-01-01T00:00:00|not-a-uuid").status_code == 400
    forged_cookie = requests.get(
        base + "/dead",
        cookies={"ipai_console_session": operator.cookies["ipai_console_session"][:-4] + "AAAA"},
        allow_redirects=False,
    )
    assert forged_cookie.headers["Location"] == "/login", "a tampered session is no session"
    assert snapshot(url) == before, "no refusal changed anything"
    assert time.time()  # the session cookie below was never shown to another origin
    assert "Secure" not in signed_in.headers["Set-Cookie"], "plain HTTP on loopback"
    over_tls = requests.get(base + "/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in over_tls.headers["Set-Cookie"]


def pause(url: str, name: str) -> None:
    """The state a router writes when a destination's breaker opens."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "insert into integration.destination_state (destination, state, failures, open_until,"
            " last_error) values (%s, 'open', 5, now() + interval '5 minutes', 'HTTP 502: bad gateway')",
            (name,),
        )
    conn.close()


def resume_state(url: str) -> tuple:
    conn = psycopg2.connect(url)
    with conn.cursor() as cursor:
        cursor.execute(
            "select count(*) from integration.destination_state where resume_requested_at is not null"
        )
        requested = cursor.fetchone()[0]
        cursor.execute(
            "select actor, reason, detail from integration.operator_actions where action = 'resume'"
        )
        actions = cursor.fetchall()
    conn.close()
    return requested, actions


def test_an_operator_resumes_a_paused_destination_from_the_console(bus):
    base, url, _ = bus
    pause(url, "booking-hook")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    operator, _ = console_sign_in(base, "Ana Reyes", PASSWORD)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    form = {"destination": "booking-hook", "reason": "gateway fixed"}
    assert (
        operator.post(base + "/resume", data=form, headers=headers, allow_redirects=False).status_code
        == 403
    )
    csrf = re.search(r'name="csrf" value="([^"]+)"', operator.get(base + "/destinations").text)[1]
    no_reason = operator.post(
        base + "/resume",
        data={**form, "reason": " ", "csrf": csrf},
        headers=headers,
        allow_redirects=False,
    )
    assert no_reason.status_code == 303 and "error=1" in no_reason.headers["Location"]
    not_paused = operator.post(
        base + "/resume", data={**form, "destination": "mattermost", "csrf": csrf}, headers=headers
    )
    assert "mattermost is not paused; nothing was changed." in not_paused.text
    assert resume_state(url) == (0, []), "no refusal recorded or changed anything"

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 700})
        sign_in(page, base)
        page.click("text=Destinations")
        assert "paused until" in page.inner_text("table") and "HTTP 502: bad gateway" in page.inner_text(
            "table"
        )
        page.fill("form.resume input[name=reason]", "gateway fixed")
        page.screenshot(path=SCREENSHOTS / "console-10-destination-paused.png", full_page=True)
        page.click("text=Resume now")
        assert "booking-hook resumed by Ana Reyes: its next delivery is the trial." in (
            page.get_by_role("status").inner_text()
        )
        assert "the next delivery is the trial" in page.inner_text("table")
        assert page.locator("form.resume").count() == 0, "asked once: no second form"
        page.screenshot(path=SCREENSHOTS / "console-11-destination-resumed.png", full_page=True)
        browser.close()
    assert resume_state(url) == (1, [("Ana Reyes", "gateway fixed", {"destination": "booking-hook"})])


def sign_in(page, base: str) -> None:
    """Sign in as Ana Reyes through the form, as a person would."""
    page.goto(base + "/login")
    page.fill("#operator", "Ana Reyes")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def test_dead_letters_filter_by_type_warn_of_no_route_and_fit_a_phone(bus):
    base, url, _ = bus
    refused = add_event(url, "asset.checked_out", "EQ-9", "refused-2")
    unrouted = add_event(url, "finance_task.overdue", "BIR-77", "unrouted-1")  # routes take asset.*
    wait_until(lambda: status_of(url, refused) == "dead", what="the refused event to go dead")
    wait_until(lambda: status_of(url, unrouted) == "dead", what="the unrouted event to go dead")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, base)
        page.goto(base + "/dead")
        assert "No route took finance_task.overdue" in page.inner_text(".warn-note")
        assert page.locator("text=Retry all 2 shown").count() == 1
        page.fill("form.filters input[name=type]", "asset.checked_out")
        page.click("text=Filter")
        assert (
            page.locator("tbody tr").count() == 1 and page.locator(f'a[title="{refused}"]').count() == 1
        )
        assert page.locator(".warn-note").count() == 0, "the shown events all have a route"
        page.screenshot(path=SCREENSHOTS / "console-12-dead-letters-by-type.png", full_page=True)

        page.goto(base + "/dead?type=finance_task.overdue")
        page.fill("input[name=reason]", "trying the overdue one")
        page.click("text=Retry all 1 shown")
        flash = page.get_by_role("status").inner_text()
        assert "1 event(s) back to pending" in flash, flash
        assert "No route takes finance_task.overdue: those events will go dead again" in flash, flash
        assert status_of(url, refused) == "dead", "only the events shown are retried"
        page.screenshot(path=SCREENSHOTS / "console-13-retried-without-a-route.png", full_page=True)
        wait_until(
            lambda: status_of(url, unrouted) == "dead",  # pending since the retry answered
            what="the retried unrouted event to go dead again, as the flash warned",
        )

        phone = browser.new_page(viewport={"width": 400, "height": 800})
        phone.context.add_cookies(page.context.cookies())
        for name, path in [("overview", "/"), ("events", "/events"), ("dead", "/dead"),
                           ("destinations", "/destinations"), ("event", f"/events/{refused}")]:  # fmt: skip
            phone.goto(base + path)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 400, (
                f"{name} at 400 px is {width} px wide: the page must not scroll sideways"
            )
            if name == "overview":
                assert phone.locator("svg.chart.narrow").is_visible(), "a chart drawn for the phone"
                assert not phone.locator("svg.chart.wide").is_visible()
            phone.screenshot(path=SCREENSHOTS / f"console-400px-{name}.png", full_page=True)
        browser.close()
