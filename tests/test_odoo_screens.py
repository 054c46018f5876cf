"""The Odoo screens as an administrator and a finance user meet them: real Odoo 18 serving a fresh
database with the addons, driven in Debian's chromium by Playwright. Each screen is checked for
what a person looks at (the buttons offered, the link, the time zone, the ribbon) and saved as a
screenshot in build/screenshots/ (IPAI_SCREENSHOT_DIR to change it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import xmlrpc.client
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from .helpers import free_port, wait_until
from .readiness import http_answers, wait_for_server
from .test_console import CHROMIUM, SCREENSHOTS
from .test_odoo_addons import (
    ODOO_PATH,
    odoo_bin,
    odoo_command,
    odoo_database,  # noqa: F401 - fixture
    odoo_env,
    odoo_ready,  # noqa: F401 - fixture
)
from .test_odoo_addons import pytestmark as odoo_marks

playwright_api = pytest.importorskip("playwright.sync_api", reason="the test extra installs it")
pytestmark = [
    *odoo_marks,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"browser tests skipped: no chromium at {CHROMIUM}",
    ),
]
SECRET = "screens-test-secret-0123456789"
USER_ZONE = "Asia/Manila"


def users_today() -> date:
    """The date where the administrator works: from 16:00 UTC it is already tomorrow in Manila,
    and Odoo counts days late and the current month in the user's zone."""
    return datetime.now(ZoneInfo(USER_ZONE)).date()


EQUIPMENT = "Projector — Room 2"


@pytest.fixture(scope="module")
def odoo(odoo_ready, odoo_database, tmp_path_factory):  # noqa: F811
    """Odoo 18 serving a new database with both addons (no demo data), admin/admin."""
    installed = odoo_bin(
        odoo_database, "server", "-i", "ipai_finance_ppm", "--stop-after-init", "--without-demo=all"
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    install_log = installed.stdout + installed.stderr
    assert "have the same label" not in install_log, [
        line for line in install_log.splitlines() if "same label" in line
    ]
    port = free_port()
    log_path = tmp_path_factory.mktemp("odoo") / "odoo.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        odoo_command(
            odoo_database,
            "server",
            "--db-filter",
            f"^{odoo_database['name']}$",
            "--http-interface",
            "127.0.0.1",
            "--http-port",
            str(port),
            f"--gevent-port={free_port()}",
            "--workers",
            "0",
            "--max-cron-threads",
            "0",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ODOO_PATH,
        env=odoo_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # A new database's first page builds its asset bundles: slow, and still "not ready yet".
        wait_for_server("Odoo", http_answers(base + "/web/login"), process=server, log=log_path)
        yield base, odoo_database["name"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


class Rpc:
    """Odoo's external API as the administrator."""

    def __init__(self, base: str, database: str) -> None:
        self.base, self.database = base, database
        self.uid = xmlrpc.client.ServerProxy(f"{base}/xmlrpc/2/common").authenticate(
            database, "admin", "admin", {}
        )
        self.models = xmlrpc.client.ServerProxy(f"{base}/xmlrpc/2/object", allow_none=True)

    def __call__(self, model: str, method: str, *args, **kwargs):
        return self.models.execute_kw(
            self.database, self.uid, "admin", model, method, list(args), kwargs
        )


@pytest.fixture(scope="module")
def data(odoo):
    """What the screens show: an overdue check-out, its events, a filed and a late BIR task."""
    base, database = odoo
    rpc = Rpc(base, database)
    rpc("res.users", "write", [rpc.uid], {"tz": USER_ZONE})
    rpc("ir.config_parameter", "set_param", "ipai.webhook.url", "http://127.0.0.1:9/hook")
    rpc("ir.config_parameter", "set_param", "ipai.webhook.secret", SECRET)
    equipment = rpc("maintenance.equipment", "create", {"name": EQUIPMENT})
    start = datetime.utcnow().replace(second=0, microsecond=0) - timedelta(hours=3)
    booking = rpc(
        "ipai.equipment.booking",
        "create",
        {
            "equipment_id": equipment,
            "user_id": rpc.uid,
            "date_from": start.strftime("%Y-%m-%d %H:%M:%S"),
            "date_to": (start + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    rpc("ipai.equipment.booking", "action_reserve_asset", [booking])
    rpc("ipai.equipment.booking", "action_checkout_asset", [booking])
    events = rpc("ipai.event.outbox", "search", [], order="id")
    rpc(
        "ipai.event.outbox",
        "write",
        events[:1],
        {
            "state": "sent",
            "sent_at": start.strftime("%Y-%m-%d %H:%M:%S"),
            "bus_event_id": "6c2f0a4e-0000-4000-8000-000000000001",
        },
    )
    # The dispatch cron, run as an administrator may (Run Manually): the webhook URL answers
    # nothing, so the check-out's event fails and the bus is marked away.
    [dispatch] = rpc("ir.cron", "search", [("name", "=", "IPAI: post queued events to the bus")])
    rpc("ir.cron", "method_direct_trigger", [dispatch])

    project = rpc("project.project", "create", {"name": "BIR filings 2026", "ipai_is_finance_ppm": True})
    stages = {
        step: rpc(
            "project.task.type",
            "create",
            {"name": name, "ipai_finance_step": step, "project_ids": [(4, project)]},
        )
        for step, name in (("in_progress", "Preparing"), ("filed", "Filed"))
    }
    form = rpc("ipai.bir.form", "search", [("code", "=", "1601-C")], limit=1)[0]
    other_form = rpc("ipai.bir.form", "search", [("code", "=", "0619-E")], limit=1)[0]
    late = (users_today() - timedelta(days=48)).isoformat()
    tasks = {
        step: rpc(
            "project.task",
            "create",
            {
                "name": f"1601-C {label}",
                "project_id": project,
                "stage_id": stages[step],
                "ipai_bir_form_id": form,
                "ipai_period_covered": "2026-09",
                "ipai_filing_deadline": late,
                "date_deadline": late,
            },
        )
        for step, label in (("filed", "September (filed)"), ("in_progress", "September (late)"))
    }
    tasks["other_late"] = rpc(  # a second late return of the period: days late are not added up
        "project.task",
        "create",
        {
            "name": "0619-E September (late)",
            "project_id": project,
            "stage_id": stages["in_progress"],
            "ipai_bir_form_id": other_form,
            "ipai_period_covered": "2026-09",
            "ipai_filing_deadline": late,
            "date_deadline": late,
        },
    )
    today = users_today().isoformat()  # due today: on this month's calendar, not late yet
    tasks["due_today"] = rpc(
        "project.task",
        "create",
        {
            "name": "1601-C October (due today)",
            "project_id": project,
            "stage_id": stages["in_progress"],
            "ipai_bir_form_id": form,
            "ipai_period_covered": "2026-10",
            "ipai_filing_deadline": today,
            "date_deadline": today,
        },
    )
    return {
        "rpc": rpc,
        "equipment": equipment,
        "booking": booking,
        "events": events,
        "project": project,
        "tasks": tasks,
        "start": start,
    }


@pytest.fixture(scope="module")
def page(odoo):
    base, _ = odoo
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # A finance user in Manila: the browser's zone is the user's (Odoo shows dates in it).
        context = browser.new_context(viewport={"width": 1440, "height": 1000}, timezone_id=USER_ZONE)
        tab = context.new_page()
        tab.set_default_timeout(90_000)  # a busy machine is slow, not wrong
        tab.goto(base + "/web/login")
        tab.fill("input[name=login]", "admin")
        tab.fill("input[name=password]", "admin")
        tab.click("button[type=submit]")
        tab.wait_for_url(lambda url: "/web/login" not in url)
        # The web client's prefix: /odoo in Odoo 18 (this tree renames the product, and it).
        tab.base = base + "/" + urlsplit(tab.url).path.split("/")[1]
        yield tab
        browser.close()


def shot(page, name: str) -> None:
    page.wait_for_timeout(400)  # let the last render settle
    page.screenshot(path=SCREENSHOTS / f"odoo-{name}.png", full_page=True)


def test_settings_show_the_secret_only_by_its_fingerprint_beside_full_width_fields(page, data):
    page.goto(page.base + "/settings#ipai_enterprise_bridge")
    block = page.locator("#ipai_webhook_setting")
    block.wait_for()
    fingerprint = hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    assert f"Set · fingerprint {fingerprint}" in block.inner_text()
    secret_input = block.locator("div[name=ipai_webhook_secret] input")
    assert secret_input.input_value() == "", "the stored secret never reaches the browser"
    assert SECRET not in page.content()
    database_uuid = data["rpc"]("ir.config_parameter", "get_param", "database.uuid")
    source_in_use = block.locator("div[name=ipai_webhook_source_in_use]").inner_text()
    assert source_in_use == f"odoo-{database_uuid}", "the source actually used, not a placeholder"
    bus_status = block.locator("div[name=ipai_bus_link_status]").inner_text()
    assert "Not taking events since" in bus_status and "unreachable" in bus_status, bus_status
    assert "Next try" in bus_status
    url_box = block.locator("div[name=ipai_webhook_url] input").bounding_box()
    assert url_box["width"] > 400, "the URL field is not squeezed beside its label"
    icon = page.locator(
        ".settings_tab .icon[style*='ipai_enterprise_bridge/static/description/icon.png']"
    )
    assert icon.count() == 1, "the app has its icon in the settings sidebar"
    assert (
        requests.get(
            page.base.rsplit("/", 1)[0] + "/ipai_enterprise_bridge/static/description/icon.png",
            timeout=30,
        ).headers["Content-Type"]
        == "image/png"
    )
    shot(page, "1-settings")


def test_bus_events_link_to_their_record_and_read_plainly(page, data):
    page.goto(page.base + "/action-ipai_enterprise_bridge.ipai_event_outbox_action")
    page.locator(".o_list_view").wait_for()
    page.locator(".o_data_row").first.wait_for()
    page.locator(".o_searchview_facet .o_facet_remove").first.click()  # every state, sent too
    total = data["rpc"]("ipai.event.outbox", "search_count", [])
    rows = page.locator(".o_data_row")
    wait_until(lambda: rows.count() == total, what=f"the {total} events listed")
    sent_row = rows.filter(has_text="Sent")
    assert sent_row.locator("td[name=next_attempt_at]").inner_text().strip() == ""
    shot(page, "2-bus-events")
    rows.filter(has_text="asset.checked_out").first.click()
    page.locator(".o_form_view").wait_for()
    record = page.locator("div[name=record_ref] a")
    assert EQUIPMENT in record.inner_text(), "the event links to its booking"
    payload = page.locator("div[name=payload_display]").inner_text()
    assert EQUIPMENT in payload and "\\u2014" not in payload, "the payload reads as text"
    shot(page, "3-bus-event")


def test_the_equipment_shows_its_overdue_booking_and_only_the_button_that_applies(page, data):
    page.goto(page.base + f"/action-maintenance.hr_equipment_action/{data['equipment']}")
    page.locator(".o_form_view").wait_for()
    header = page.locator(".o_form_statusbar, .o_form_view header").first
    assert header.get_by_role("button", name="Check in").is_visible()
    for hidden in ("Reserve", "Check out"):
        assert header.get_by_role("button", name=hidden).count() == 0
    ribbon = page.locator(".ribbon", has_text="Overdue")
    assert ribbon.is_visible()
    sheet, band = page.locator(".o_form_sheet").bounding_box(), ribbon.bounding_box()
    assert band["y"] - sheet["y"] < 60, f"at the top of the sheet: {band} in {sheet}"
    assert abs(band["x"] + band["width"] - (sheet["x"] + sheet["width"])) < 5, "its right corner"
    assert ribbon.locator("span").inner_text().strip().lower() == "overdue", "not cut to OV…"
    assert EQUIPMENT in page.locator("div[name=ipai_current_booking_id]").inner_text()
    shot(page, "4-equipment")


def test_the_booking_reads_in_the_users_time_zone_with_an_overdue_ribbon(page, data):
    page.goto(
        page.base + f"/action-ipai_enterprise_bridge.ipai_equipment_booking_action/{data['booking']}"
    )
    page.locator(".o_form_view").wait_for()
    manila = data["start"] + timedelta(hours=8)
    title = page.locator(".oe_title").inner_text()
    assert manila.strftime("%Y-%m-%d %H:%M") in title, f"the title is in Manila time: {title}"
    shown = page.locator("div[name=date_from]").inner_text()
    assert manila.strftime("%m/%d/%Y %H:%M") in shown, f"like the dates beside it: {shown}"
    assert page.locator(".ribbon", has_text="Overdue").is_visible()
    assert page.locator(".o_form_statusbar").get_by_role("button", name="Check in").is_visible()
    assert page.locator(".o_form_statusbar").get_by_role("button", name="Reserve").count() == 0
    shot(page, "5-booking")


def test_a_filed_return_shows_no_red_countdown_and_a_late_one_says_so(page, data):
    page.goto(
        page.base + f"/action-project.act_project_project_2_project_task_all?active_id={data['project']}"
    )
    page.goto(page.base + f"/project/{data['project']}/tasks")
    page.locator(".o_kanban_record").first.wait_for()
    filed = page.locator(".o_kanban_record", has_text="September (filed)")
    late = page.locator(".o_kanban_record", has_text="1601-C September (late)")
    assert "filed" in filed.inner_text() and "days late" not in filed.inner_text()
    assert filed.locator(".o_field_remaining_days .text-danger").count() == 0
    assert "48 days late" in late.inner_text()
    shot(page, "6-bir-kanban")


def test_the_filing_calendar_and_the_list_by_period(page, data):
    page.goto(page.base + "/action-ipai_finance_ppm.ipai_filing_calendar_action")
    page.locator(".o_calendar_view").wait_for()
    due_today = page.locator(".o_event", has_text="1601-C October (due today)")
    due_today.first.wait_for()
    assert "late" not in due_today.first.inner_text()
    shot(page, "7-filing-calendar")
    page.locator(".o_switch_view.o_list").click()
    page.locator(".o_group_header").first.wait_for()
    september = page.locator(".o_group_header").first
    assert "2026-09 (3)" in september.inner_text().replace("\n", " ")
    days_late = september.locator("td.o_list_number").all_inner_texts()
    assert "48" in days_late and "96" not in days_late, f"the worst, not a sum: {days_late}"
    page.locator(".o_group_header").first.click()
    late_row = page.locator(".o_data_row", has_text="1601-C September (late)")
    assert "text-danger" in (late_row.get_attribute("class") or "")
    shot(page, "8-filing-list")


def test_the_generator_reads_as_a_person_does_and_knows_its_project(page, data):
    page.goto(page.base + f"/project/{data['project']}")
    page.locator(".o_form_view").wait_for()
    page.get_by_role("tab", name="Finance PPM").click()
    page.get_by_role("button", name="Generate filing tasks").click()
    dialog = page.locator(".modal-dialog")
    dialog.wait_for()
    assert "BIR filings 2026" in dialog.locator("div[name=project_id]").inner_text() or (
        dialog.locator("div[name=project_id] input").input_value() == "BIR filings 2026"
    )
    closed = users_today().replace(day=1) - timedelta(days=1)  # the month that just closed
    year = dialog.locator("div[name=year] input").input_value()
    assert year == str(closed.year), "that month's year, with no thousands comma"
    month = dialog.locator("div[name=month] select")
    assert month.locator("option:checked").inner_text() == closed.strftime("%B")
    shot(page, "9-generator")
    dialog.get_by_role("button", name="Cancel").click()


def test_administrators_see_each_waiting_and_failed_event_failing_first(page, data):
    """Not folded into one "Failed, will retry (N)" line with attempts summed: each event,
    the failing ones first."""
    rpc = data["rpc"]
    page.goto(page.base + "/action-ipai_enterprise_bridge.ipai_event_outbox_waiting_action")
    rows = page.locator(".o_data_row")
    rows.first.wait_for()
    waiting = rpc("ipai.event.outbox", "search_count", [("state", "!=", "sent")])
    wait_until(lambda: rows.count() == waiting, what=f"the {waiting} waiting events listed")
    assert page.locator(".o_group_header").count() == 0
    assert waiting > 1 and "Pending" in rows.last.inner_text()
    assert "Failed, will retry" in rows.first.inner_text(), "failing first, though queued first"
    assert "unreachable" in rows.first.inner_text()
    shot(page, "10-waiting-and-failed")
    page.locator(".o_navbar_apps_menu .dropdown-toggle").click()
    integration = page.locator(".o_app", has_text="Integration")
    integration.first.wait_for()
    assert integration.count() == 1, "in the apps menu"
    shot(page, "11-integration")


def test_the_bookings_list_shows_minutes_not_seconds(page, data):
    page.goto(page.base + "/action-ipai_enterprise_bridge.ipai_equipment_booking_action")
    row = page.locator(".o_data_row").first
    row.wait_for()
    shown = row.locator("td[name=date_from]").inner_text().strip()
    manila = data["start"] + timedelta(hours=8)
    assert shown == manila.strftime("%m/%d/%Y %H:%M"), f"no seconds: {shown!r}"
    shot(page, "12-bookings")


ACTION_KEY = "screens-action-key-0123456789abcdefgh"
CHANNEL_ID = "4xp9fdt77pncbef59f4k1qe83o"


def xmlid(rpc: Rpc, module: str, name: str) -> int:
    [row] = rpc(
        "ir.model.data", "search_read", [("module", "=", module), ("name", "=", name)], ["res_id"]
    )
    return row["res_id"]


@pytest.fixture(scope="module")
def submitted_report(data):
    """A submitted expense report, a manager mapped to a Mattermost user, the action key set."""
    rpc = data["rpc"]
    rpc("ir.config_parameter", "set_param", "ipai.chat_actions.keys", ACTION_KEY)
    manager = rpc(
        "res.users",
        "create",
        {
            "name": "Ana Reyes",
            "login": "ana.reyes",
            "tz": USER_ZONE,
            "groups_id": [(4, xmlid(rpc, "hr_expense", "group_hr_expense_manager"))],
            "ipai_mattermost_user_id": "8ugbh9ugdiyxpkrp8q8qh7rwnh",
        },
    )
    employee = rpc("hr.employee", "create", {"name": "Maria Santos", "work_email": "maria@example.ph"})
    [contact] = rpc("hr.employee", "read", [employee], ["work_contact_id"])
    bank = rpc(
        "res.partner.bank",
        "create",
        {"acc_number": "PH-0017", "partner_id": contact["work_contact_id"][0]},
    )
    rpc("hr.employee", "write", [employee], {"bank_account_id": bank})
    sheet = rpc(
        "hr.expense.sheet",
        "create",
        {
            "name": "Client visit, Makati",
            "employee_id": employee,
            "expense_line_ids": [
                (
                    0,
                    0,
                    {
                        "name": "Grab to BIR RDO 050",
                        "employee_id": employee,
                        "total_amount_currency": 250.0,
                    },
                )
            ],
        },
    )
    submitted = requests.post(  # JSON-RPC: the button answers None, which XML-RPC cannot carry
        rpc.base + "/jsonrpc",
        json={
            "jsonrpc": "2.0",
            "method": "call",
            "params": {
                "service": "object",
                "method": "execute_kw",
                "args": [
                    rpc.database,
                    rpc.uid,
                    "admin",
                    "hr.expense.sheet",
                    "action_submit_sheet",
                    [[sheet]],
                ],
            },
        },
        timeout=120,
    ).json()
    assert "error" not in submitted, submitted
    [line] = rpc("hr.expense.sheet", "read", [sheet], ["expense_line_ids"])[0]["expense_line_ids"]
    return {"rpc": rpc, "sheet": sheet, "line": line, "manager": manager}


def test_clicks_at_once_approve_once_and_the_audit_list_shows_each(page, submitted_report):
    """Mattermost's callback (its server's shape) posted four times at once to a running Odoo:
    one approval, one expense.approved in the outbox, four audit rows, shown to an admin."""
    from concurrent.futures import ThreadPoolExecutor

    from ipai_bus_lib.core import chat_actions

    rpc, line = submitted_report["rpc"], submitted_report["line"]
    token = chat_actions.issue(
        ACTION_KEY,
        action="approve",
        event_id="7f0c",
        record=f"hr.expense/{line}",
        who=f"channel:{CHANNEL_ID}",
    )
    call = {
        "user_id": "8ugbh9ugdiyxpkrp8q8qh7rwnh",
        "user_name": "ana.reyes",
        "channel_id": CHANNEL_ID,
        "team_id": "rdc9bgriktyx9p4kowh3dmgqyc",
        "post_id": "6xqz7a1m3jrx5b8wcpgz6mq8ya",
        "trigger_id": "dHJpZ2dlcg==",
        "type": "",
        "data_source": "",
        "context": {
            "action": "approve",
            "capability": token,
            "record": f"hr.expense/{line}",
            "message": "📝 **Expense submitted**",
        },  # fmt: skip
    }
    endpoint = page.base.rsplit("/", 1)[0] + "/ipai_bus/mattermost/action"
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: requests.post(endpoint, json=call, timeout=120).json(), range(4))
        )
    updates = [answer["update"]["message"] for answer in answers if "update" in answer]
    assert len(updates) == 1, answers
    assert "✅ Approved by Ana Reyes at" in updates[0] and "Asia/Manila" in updates[0]
    refusals = [answer["ephemeral_text"] for answer in answers if "ephemeral_text" in answer]
    assert len(refusals) == 3 and all("nothing" in text for text in refusals), refusals
    [sheet] = rpc("hr.expense.sheet", "read", [submitted_report["sheet"]], ["approval_state"])
    assert sheet["approval_state"] == "approve"
    approved = rpc("ipai.event.outbox", "search_count", [("event_type", "=", "expense.approved")])
    assert approved == 1, "the act comes back on the bus once"
    outcomes = rpc("ipai.chat.action.log", "search_read", [], ["outcome", "reason"])
    assert sorted(o["outcome"] for o in outcomes) == ["accepted", "refused", "refused", "refused"], (
        outcomes,
        answers,
    )

    page.goto(page.base + "/action-ipai_enterprise_bridge.ipai_chat_action_log_action")
    page.locator(".o_data_row").first.wait_for()
    rows = page.locator(".o_data_row")
    wait_until(lambda: rows.count() == 4, what="the four callbacks listed")
    assert rows.filter(has_text="Done").count() == 1 and rows.filter(has_text="Refused").count() == 3
    assert "Ana Reyes" in rows.first.inner_text()
    assert "Grab to BIR RDO 050" in rows.first.inner_text(), "the record by its name, a link"
    shot(page, "9-actions-from-the-chat")


def test_settings_show_the_chat_actions_callback_key_fingerprint_and_switches(page, submitted_report):
    page.goto(page.base + "/settings#ipai_enterprise_bridge")
    block = page.locator("#ipai_chat_actions_setting")
    block.wait_for()
    text = block.inner_text()
    fingerprint = hashlib.sha256(ACTION_KEY.encode()).hexdigest()[:12]
    assert f"Set · fingerprint {fingerprint}" in text
    assert ACTION_KEY not in page.content(), "the key never reaches the browser"
    callback = block.locator("div[name=ipai_chat_callback_url]").inner_text()
    assert callback.startswith("http") and callback.endswith("/ipai_bus/mattermost/action")
    assert "Approve from the channel" in text and "Refuse from the channel" in text
    assert block.locator("div[name=ipai_chat_linked_users]").inner_text().strip() == "1"
    block.scroll_into_view_if_needed()
    page.wait_for_timeout(400)
    block.screenshot(path=SCREENSHOTS / "odoo-10-settings-chat-actions.png")
    block.get_by_role("button", name="Link Mattermost accounts").click()
    page.locator(".o_list_view").wait_for()
    row = page.locator(".o_data_row").filter(has_text="Ana Reyes")
    assert "8ugbh9ugdiyxpkrp8q8qh7rwnh" in row.inner_text()
    shot(page, "11-mattermost-accounts")
