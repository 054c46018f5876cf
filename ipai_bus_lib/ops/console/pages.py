"""The console's pages as HTML: server-rendered, no script, every value escaped. The chart is an
inline SVG drawn here; the style sheet is served by the app (/console.css)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from ...core import exact_json
from ...delivery.router.settling import NO_ROUTE_ERROR
from .. import operations
from ..operations import age, when
from .data import Overview, Page

STATUSES = ("pending", "processing", "failed", "dead", "completed")
# Times are typed as the tables show them (a time copied from a table works as it is).
MOMENT_EXAMPLE = "2026-12-02 14:00 UTC"

STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --accent: #2f6fb0; --bad: #b42318;
        --warn: #a15c07; --good: #1b7f3b; --bg: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #102a43; color: #fff; padding: 0 24px; display: flex; align-items: center;
         gap: 24px; }
header h1 { font-size: 17px; margin: 0; padding: 14px 0; }
header nav a { color: #d9e2ec; text-decoration: none; margin-right: 18px; padding: 14px 0;
               display: inline-block; }
header nav a.here { color: #fff; border-bottom: 3px solid #7cc4fa; }
header .who { margin-left: auto; color: #bcccdc; }
header .who button { margin-left: 10px; }
main { padding: 20px 24px 40px; max-width: 1280px; }
h2 { font-size: 20px; margin: 4px 0 16px; }
h3 { font-size: 16px; margin: 24px 0 8px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
        min-width: 140px; }
.card .n { font-size: 26px; font-weight: 600; }
.card .label { color: var(--muted); }
.card a { color: inherit; text-decoration: none; display: block; }
.card a:hover .label { text-decoration: underline; }
form.filters a { align-self: center; }
.card.bad .n { color: var(--bad); } .card.warn .n { color: var(--warn); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #eef2f7; font-weight: 600; font-size: 13px; color: var(--muted); }
td.err { color: var(--bad); min-width: 16em; max-width: 520px; overflow-wrap: anywhere; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
          background: #e4e7eb; }
.status.completed { background: #d3f9d8; color: var(--good); }
.status.dead { background: #ffe3e3; color: var(--bad); }
.status.failed { background: #fff3c4; color: var(--warn); }
form.resume { display: flex; gap: .4rem; margin-top: .4rem; }
td.t { white-space: nowrap; }
.status.pending, .status.processing { background: #dceefb; color: var(--accent); }
form.filters, p.filters { display: flex; gap: 10px; flex-wrap: wrap; align-items: end;
                          margin-bottom: 14px; }
form.filters label, p.filters label { display: flex; flex-direction: column; font-size: 13px;
                                      color: var(--muted); }
input, select, textarea, button { font: inherit; padding: 5px 8px; border: 1px solid #9fb3c8;
                                  border-radius: 4px; background: #fff; color: var(--ink); }
button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
button.quiet { background: #fff; color: var(--ink); border-color: #9fb3c8; }
pre { background: #fff; border: 1px solid var(--line); padding: 12px; overflow: auto;
      max-height: 420px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #fff;
     border: 1px solid var(--line); padding: 12px 16px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.flash { background: #d3f9d8; border: 1px solid #8bd5a0; padding: 8px 12px; margin-bottom: 14px; }
.flash.error { background: #ffe3e3; border-color: #f5a3a3; }
.note { color: var(--muted); }
.waiting { background: #fff3c4; border: 1px solid #f0c36d; padding: 8px 12px; margin: 12px 0; }
.pager { margin-top: 12px; }
.login { max-width: 380px; margin: 80px auto; background: #fff; border: 1px solid var(--line);
         padding: 24px; border-radius: 6px; }
.login label { display: block; margin: 12px 0 4px; color: var(--muted); }
.login input { width: 100%; }
.login button { margin-top: 16px; width: 100%; }
svg.chart { background: #fff; border: 1px solid var(--line); max-width: 100%; height: auto; }
svg.chart.narrow { display: none; }
.scroll { overflow-x: auto; max-width: 100%; }
code.id { user-select: all; font-size: 15px; overflow-wrap: anywhere; }
.warn-note { background: #fff3c4; border: 1px solid #f0c36d; padding: 8px 12px; margin: 12px 0; }
@media (max-width: 640px) {
  header { flex-wrap: wrap; gap: 0 16px; padding: 0 12px; }
  header h1 { padding: 10px 0 0; }
  header nav { width: 100%; }
  header nav a { margin-right: 12px; padding: 8px 0; }
  header .who { margin-left: 0; padding-bottom: 8px; }
  main { padding: 12px 12px 32px; }
  .card { flex: 1 1 40%; min-width: 0; }
  form.filters label { flex: 1 1 40%; }
  form.filters input, form.filters select { width: 100%; }
  dl { grid-template-columns: 1fr; }
  dt { margin-top: 6px; }
  svg.chart.wide { display: none; }
  svg.chart.narrow { display: block; }
}
"""

NAV = (
    ("/", "Overview"),
    ("/events", "Events"),
    ("/dead", "Dead letters"),
    ("/destinations", "Destinations"),
)


def h(value: Any) -> str:
    """A value as text in HTML; None as an em dash."""
    return "—" if value is None else escape(str(value), quote=True)


def td(content: str, css: str = "") -> str:
    """A cell of already-escaped content."""
    return f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>"


def table(headers: list[str], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{h(name)}</th>" for name in headers)
    body = "".join(rows) or f"<tr><td colspan={len(headers)}>{h(empty)}</td></tr>"
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def event_link(event_id: Any) -> str:
    return f'<a href="/events/{h(event_id)}" title="{h(event_id)}">{h(str(event_id)[:8])}…</a>'


def error_cell(text: str | None, width: int) -> str:
    return td(h(operations.shorten(text or "", width)) if text else "", "err")


def older_link(path: str, query: Mapping[str, str]) -> str:
    href = h(f"{path}?{urlencode(query)}")
    return f'<div class="pager"><a rel="next" href="{href}">Older →</a></div>'


def text_field(
    name: str, value: str | None, *, label: str = "", placeholder: str = "", kind: str = "text"
) -> str:
    hint = f' placeholder="{h(placeholder)}"' if placeholder else ""
    return (
        f'<label>{h(label or name)}<input type="{kind}" name="{name}"'
        f' value="{h(value or "")}"{hint}></label>'
    )


def layout(
    title: str,
    body: str,
    *,
    operator: str | None = None,
    csrf: str | None = None,
    here: str = "",
    flash: str | None = None,
    flash_error: bool = False,
) -> str:
    nav = "".join(
        f'<a href="{path}"{" class=here" if path == here else ""}>{label}</a>' for path, label in NAV
    )
    who = ""
    if operator is not None:
        who = (
            f'<form class="who" method="post" action="/logout">signed in as {h(operator)}'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            '<button class="quiet" type="submit">Sign out</button></form>'
        )
    message = ""
    if flash:
        message = f'<div class="flash{" error" if flash_error else ""}" role="status">{h(flash)}</div>'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · ipai-bus</title>"
        '<link rel="stylesheet" href="/console.css"></head><body>'
        f"<header><h1>ipai-bus</h1><nav>{nav if operator else ''}</nav>{who}</header>"
        f"<main>{message}{body}</main></body></html>"
    )


def login_page(token: str, error: str | None = None, operator: str = "") -> str:
    body = (
        '<form class="login" method="post" action="/login">'
        "<h2>Sign in</h2>"
        + (f'<div class="flash error" role="alert">{h(error)}</div>' if error else "")
        + f'<input type="hidden" name="login_token" value="{h(token)}">'
        '<label for="operator">Your name (for the audit trail)</label>'
        f'<input id="operator" name="operator" value="{h(operator)}" required autocomplete="username">'
        '<label for="password">Console password</label>'
        '<input id="password" name="password" type="password" required'
        ' autocomplete="current-password">'
        '<button type="submit">Sign in</button>'
        '<p class="note">The password is in the console password file'
        " (see <code>ipai-bus up</code>'s output).</p></form>"
    )
    return layout("Sign in", body)


def status_badge(status: str) -> str:
    return f'<span class="status {h(status)}">{h(status)}</span>'


def overview_page(view: Overview) -> str:
    cards = "".join(
        _card(
            status,
            view.waiting.get(status, 0),
            link=f"/events?status={status}",
            tone="bad"
            if status == "dead" and view.waiting.get(status)
            else "warn"
            if status == "failed" and view.waiting.get(status)
            else "",
        )
        for status in ("pending", "processing", "failed", "dead")
    )
    completed = f"{view.completed:,}" if view.completed_exact else f"≈ {view.completed:,}"
    cards += _card("completed", completed, link="/events?status=completed")
    cards += _card("oldest pending", age(view.oldest_pending_seconds))
    body = f"<h2>Overview</h2><div class=cards>{cards}</div>"
    notes = []
    if view.held_by_order:
        notes.append(
            f"{view.held_by_order} waiting event(s) are held behind an earlier event of the same"
            " record (events of one record are delivered in order)."
        )
    if view.expired_leases:
        notes.append(
            f"{view.expired_leases} lease(s) expired: a router died holding them; the next claim"
            " takes them back."
        )
    body += "".join(f'<p class="waiting">{h(note)}</p>' for note in notes)
    total = sum(view.per_minute)
    body += f"<h3>Events accepted per minute, last hour: {total:,} accepted</h3>"
    # Drawn twice, so that a phone shows labels at a readable size instead of a shrunken chart.
    body += per_minute_chart(view.per_minute, view.now, css="wide")
    body += per_minute_chart(view.per_minute, view.now, width=376, css="narrow")
    body += "<h3>Paused destinations</h3>"
    rows = [
        "<tr>"
        + td(h(row["destination"]))
        + td(h(row["failures"]))
        + td(_paused_until(row))
        + error_cell(row["last_error"], 160)
        + "</tr>"
        for row in view.paused
    ]
    headers = ["destination", "failures in a row", "paused until", "last error"]
    return body + table(headers, rows, "None: every destination is taking deliveries.")


def _paused_until(row: Mapping[str, Any]) -> str:
    if row["trial_due"]:
        return "pause over, next delivery is a trial"
    return h(when(row["open_until"]))


def _card(label: str, value: Any, *, link: str | None = None, tone: str = "") -> str:
    number = f'<div class="n">{h(f"{value:,}" if isinstance(value, int) else value)}</div>'
    inner = f'{number}<div class="label">{h(label)}</div>'
    if link:
        inner = f'<a href="{link}">{inner}</a>'
    return f'<div class="card {tone}" data-card="{h(label)}">{inner}</div>'


_AXIS_TEXT = 'font-size="13" fill="#616e7c"'  # about 7 px on a 400 px phone, where it shrinks


def per_minute_chart(
    per_minute: list[int], now: datetime, width: int = 720, height: int = 170, css: str = ""
) -> str:
    """60 bars, an hour ago on the left, this minute on the right, with a count axis and clock
    times (in ``now``'s zone) under every quarter hour; a title per bar."""
    left, bottom, top = 44, 22, 10
    plot_width, plot_height = width - left - 8, height - bottom - top
    peak = _axis_top(max(per_minute))
    bar = plot_width / 60
    parts = []
    for tick in (0, peak // 2, peak) if peak % 2 == 0 else (0, peak):
        y = top + plot_height - plot_height * tick / peak
        parts.append(
            f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d9e2ec"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" {_AXIS_TEXT} text-anchor="end">{tick:,}</text>'
        )
    for index, count in enumerate(reversed(per_minute)):
        minutes_ago = 59 - index
        tall = plot_height * count / peak
        parts.append(
            f'<rect x="{left + index * bar + 1:.1f}" y="{top + plot_height - tall:.1f}"'
            f' width="{bar - 2:.1f}" height="{tall:.1f}" fill="#2f6fb0"><title>{count:,} event(s),'
            f" {(now - timedelta(minutes=minutes_ago)):%H:%M}</title></rect>"
        )
    for minutes_ago, anchor in (
        (59, "start"),
        (45, "middle"),
        (30, "middle"),
        (15, "middle"),
        (0, "end"),
    ):
        # The outer labels align with the plot's edges, so that none is cut by the frame.
        x = {"start": left, "end": width - 8}.get(anchor, left + (59 - minutes_ago) * bar + bar / 2)
        parts.append(
            f'<text x="{x:.1f}" y="{height - 6}" {_AXIS_TEXT} text-anchor="{anchor}">'
            f"{(now - timedelta(minutes=minutes_ago)):%H:%M}</text>"
        )
    zone = now.strftime("%Z")
    parts.append(
        f'<text x="{width - 8}" y="{top + 2}" {_AXIS_TEXT} text-anchor="end">'
        f"per minute, {h(zone)}</text>"
    )
    return (
        f'<svg class="chart {css}" role="img" aria-label="events per minute, last hour" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def _axis_top(peak: int) -> int:
    """The count at the top of the axis: the peak rounded up to 1, 2 or 5 times a power of ten."""
    if peak <= 2:
        return 2
    scale = 10 ** (len(str(peak)) - 1)
    return next(step * scale for step in (1, 2, 5, 10) if step * scale >= peak)


def events_page(page: Page, query: Mapping[str, str]) -> str:
    filters = page.filters
    options = "".join(
        f'<option value="{s}"{" selected" if filters.status == s else ""}>{s}</option>' for s in STATUSES
    )
    form = (
        '<form class="filters" method="get" action="/events">'
        f'<label>status<select name="status"><option value="">any</option>{options}</select></label>'
        + text_field("type", filters.type_pattern, placeholder="expense.*")
        + text_field("source", filters.source)
        + text_field("record", filters.record, label="record id")
        + text_field("since", query.get("since"), placeholder=MOMENT_EXAMPLE)
        + text_field("until", query.get("until"), placeholder=MOMENT_EXAMPLE)
        + '<button type="submit">Filter</button><a href="/events">clear</a></form>'
    )
    rows = [
        "<tr>"
        + td(event_link(row["id"]))
        + td(h(when(row["at"])), "t")
        + td(h(row["event_type"]))
        + td(f"{h(row['aggregate_type'])} {h(row['aggregate_id'])}")
        + td(h(row["source"]))
        + td(status_badge(row["status"]))
        + td(h(row["attempts"]))
        + error_cell(row["last_error"] if row["status"] in ("failed", "dead") else None, 90)
        + "</tr>"
        for row in page.rows
    ]
    headers = ["event", "accepted", "type", "record", "source", "status", "attempts", "last error"]
    pager = ""
    if page.next_cursor:
        older = {k: v for k, v in query.items() if k not in ("before", "message", "error") and v}
        older["before"] = page.next_cursor
        pager = older_link("/events", older)
    return f"<h2>Events</h2>{form}{table(headers, rows, 'No event matches.')}{pager}"


def event_page(event_id: Any, history: Mapping[str, Any], csrf: str) -> str:
    row = history["outbox"] or {}
    logged = history["event_log"] or {}
    source = row or logged
    facts = [
        ("event id", event_id),
        ("type", source.get("event_type")),
        ("record", f"{source.get('aggregate_type')} {source.get('aggregate_id')}"),
        ("source", source.get("source")),
        ("idempotency key", source.get("idempotency_key")),
        ("occurred", when(source.get("occurred_at"))),
        ("accepted", when(logged.get("received_at") or row.get("created_at"))),
    ]
    status = row.get("status") or "completed"  # a delivered event leaves the outbox
    facts.append(("status", None))
    if row:
        facts.append(("attempts", f"{row['attempts']} of {row['max_attempts']}"))
        if row["status"] in ("pending", "failed"):
            facts.append(("next try", when(row["available_at"])))
        if row.get("last_error") and row["status"] in ("failed", "dead"):
            facts.append(("last error", row["last_error"]))
    else:
        done = history.get("completion") or {}
        facts += [
            ("attempts", done.get("attempts") or "—"),
            ("delivered", when(done.get("delivered_at"))),
        ]
    items = "".join(
        f"<dt>{h(name)}</dt><dd>{status_badge(status) if name == 'status' else h(value)}</dd>"
        for name, value in facts
    )
    whole_id = f'<code class="id" title="one click selects it whole">{h(event_id)}</code>'
    body = f"<h2>Event {whole_id}</h2><dl>{items}</dl>"
    waiting = history.get("waiting_behind")
    if row.get("status") in ("pending", "failed") and waiting:
        body += (
            f'<p class="waiting">Waiting behind event <a href="/events/{h(waiting["id"])}">'
            f"{h(waiting['id'])}</a> ({h(waiting['status'])}), an earlier event of the same record:"
            " events of one record are delivered in order.</p>"
        )
    if row.get("status") in ("dead", "failed"):
        body += retry_form([str(event_id)], csrf, f"/events/{event_id}")
    body += f"<h3>Payload</h3><pre>{h(_pretty(source.get('payload')))}</pre>"
    attempts = "".join(
        f'<tr><td class="t">{h(when(a["attempted_at"]))}</td><td>{_attempt_number(a)}</td>'
        f"<td>{h(a['destination'])}</td>"
        f"<td>{h(a['outcome'])}</td><td>{h(a['http_status'])}</td><td>{a['duration_ms']:.0f} ms</td>"
        f'<td>{h(a["worker"])}</td><td class="err">{h(a["error"] or "")}</td></tr>'
        for a in history["attempts"]
    )
    body += (
        '<h3>Delivery attempts</h3><div class="scroll"><table><thead><tr><th>when</th><th>#</th>'
        "<th>destination</th><th>outcome</th><th>HTTP</th><th>took</th><th>worker</th><th>error</th>"
        f"</tr></thead><tbody>{attempts or '<tr><td colspan=8>No delivery attempt yet.</td></tr>'}"
        "</tbody></table></div>"
    )
    actions = "".join(
        f'<tr><td class="t">{h(when(a["acted_at"]))}</td><td>{h(a["action"])}</td>'
        f"<td>{h(a['actor'])}</td>"
        f"<td>{h(a['reason'] or '')}</td></tr>"
        for a in history["actions"]
    )
    if actions:
        body += (
            '<h3>Operator actions</h3><div class="scroll"><table><thead><tr><th>when</th>'
            f"<th>action</th><th>by</th><th>reason</th></tr></thead><tbody>{actions}</tbody></table></div>"
        )
    return body


def _attempt_number(attempt: Mapping[str, Any]) -> str:
    """A deferred delivery (its destination paused) was not tried and counts as no attempt."""
    if attempt["outcome"] == "deferred":
        return '<span title="not tried: the destination was paused; not counted">—</span>'
    return h(attempt["attempt"])


def _pretty(payload: Any) -> str:
    if isinstance(payload, (dict, list)):
        return exact_json.dumps(payload, indent=2, default=str)
    return str(payload)


def retry_form(ids: Iterable[str], csrf: str, back: str, label: str = "Retry") -> str:
    hidden = "".join(f'<input type="hidden" name="id" value="{h(i)}">' for i in ids)
    return (
        f'<form method="post" action="/retry" class="filters">{hidden}'
        f'<input type="hidden" name="csrf" value="{h(csrf)}">'
        f'<input type="hidden" name="back" value="{h(back)}">'
        '<label>why (for the audit trail)<input name="reason" required size="40"'
        ' placeholder="channel recreated"></label>'
        f'<button type="submit">{h(label)}</button></form>'
    )


def dead_page(page: Page, csrf: str, type_pattern: str | None = None) -> str:
    rows = [
        "<tr>"
        + td(f'<input type="checkbox" name="id" value="{h(r["id"])}" aria-label="select {h(r["id"])}">')
        + td(event_link(r["id"]))
        + td(h(when(r["updated_at"])), "t")
        + td(h(r["event_type"]))
        + td(f"{h(r['aggregate_type'])} {h(r['aggregate_id'])}")
        + td(h(r["attempts"]))
        + error_cell(r["last_error"], 140)
        + "</tr>"
        for r in page.rows
    ]
    form = (
        '<form class="filters" method="get" action="/dead">'
        + text_field("type", type_pattern, placeholder="expense.*")
        + '<button type="submit">Filter</button><a href="/dead">clear</a></form>'
    )
    if not rows:
        nothing = (
            "No dead event of that type." if type_pattern else "None: nothing has been given up on."
        )
        return f'<h2>Dead letters</h2>{form if type_pattern else ""}<p class="note">{h(nothing)}</p>'
    pager = ""
    if page.next_cursor:
        older = {"before": page.next_cursor, **({"type": type_pattern} if type_pattern else {})}
        pager = older_link("/dead", older)
    back = "/dead" + (f"?{urlencode({'type': type_pattern})}" if type_pattern else "")
    headers = ["", "event", "died", "type", "record", "attempts", "why"]
    return (
        f"<h2>Dead letters</h2>{form}{_no_route_warning(page.rows)}"
        '<form method="post" action="/retry">'
        f'<input type="hidden" name="csrf" value="{h(csrf)}">'
        f'<input type="hidden" name="back" value="{h(back)}">'
        + "".join(f'<input type="hidden" name="shown" value="{h(r["id"])}">' for r in page.rows)
        + table(headers, rows, "")
        + '<p class="filters"><label>why retry (for the audit trail)<input name="reason" required'
        ' size="40" placeholder="channel recreated"></label>'
        '<button type="submit">Retry selected</button>'
        f'<button type="submit" name="scope" value="shown">Retry all {len(page.rows)} shown</button>'
        "</p></form>" + pager
    )


def _no_route_warning(rows: list[dict[str, Any]]) -> str:
    """Events that died for want of a route die again when retried, until a route takes them."""
    types = sorted({r["event_type"] for r in rows if (r["last_error"] or "").startswith(NO_ROUTE_ERROR)})
    if not types:
        return ""
    return (
        f'<p class="warn-note">No route took {h(", ".join(types))}: retried as they are, those'
        " events die again. Add a route to the routes file and restart the routers first"
        " (<code>ipai-bus routes check FILE</code> shows what goes where).</p>"
    )


def _resume_cell(name: str, state: Mapping[str, Any], csrf: str) -> str:
    """A paused destination's way out: asked already (no router has met it since), or the form."""
    asked = state.get("resume_requested_at")
    if asked is not None and state.get("updated_at") is not None and asked >= state["updated_at"]:
        return f'<p class="note">resume asked {h(when(asked))}: the next delivery is the trial</p>'
    return _resume_form(name, csrf)


def _resume_form(name: str, csrf: str) -> str:
    """End a destination's pause now (ipai-bus resume): its next delivery is the trial."""
    return (
        '<form method="post" action="/resume" class="resume">'
        f'<input type="hidden" name="csrf" value="{h(csrf)}">'
        f'<input type="hidden" name="destination" value="{h(name)}">'
        '<input name="reason" required placeholder="why (for the audit trail)"'
        f' aria-label="why resume {h(name)}">'
        f'<button type="submit">Resume now</button></form>'
    )


def destinations_page(
    configured: Mapping[str, Mapping[str, Any]], states: Mapping[str, Mapping[str, Any]], csrf: str
) -> str:
    names = sorted(set(configured) | set(states))
    rows = []
    for name in names:
        spec, state = configured.get(name, {}), states.get(name, {})
        paused = state.get("state") == "open"
        breaker = f"paused until {h(when(state.get('open_until')))}" if paused else "taking deliveries"
        rate = spec.get("rate")
        routes = ", ".join(spec.get("routes", [])) or ("no route" if spec else "—")
        rows.append(
            f"<tr><td>{h(name)}</td><td>{h(spec.get('type', 'not in this routes file'))}</td>"
            f"<td>{h(spec.get('target'))}</td><td>{h(routes)}</td>"
            f"<td>{h(f'{rate}/s' if rate else 'no limit')}</td>"
            f'<td><span class="status {"dead" if paused else "completed"}">{breaker}</span>'
            f"{_resume_cell(name, state, csrf) if paused else ''}</td>"
            f"<td>{h(state.get('failures', 0))}</td>"
            f"{_latest_failure_cell(state)}"
            f'<td class="t">{h(when(state.get("updated_at")))}</td></tr>'
        )
    headers = ["destination", "type", "where it points", "routes", "rate limit", "breaker",
               "failures in a row", "newest failure or refusal", "changed"]  # fmt: skip
    return (
        "<h2>Destinations</h2>"
        + table(headers, rows, "No destination yet.")
        + '<p class="note">Routes are read when a router starts; this page shows the routes file'
        " the console was started with. Addresses show their host only: a webhook URL's path is"
        " often its key.</p>"
    )


def _latest_failure_cell(state: Mapping[str, Any]) -> str:
    """The newest failed or refused attempt (a refusal never pauses, so the breaker has none)."""
    failure = state.get("latest_failure")
    if not failure:
        return error_cell(state.get("last_error"), 160)
    error = failure.get("error") or ""
    status = failure.get("http_status")
    answer = f"HTTP {status}: " if status and not error.startswith("HTTP ") else ""
    kind = "refused for good" if failure["outcome"] == "dead" else "failed, retried"
    text = f"{when(failure['attempted_at'])}, {kind}: {answer}{error}"
    return error_cell(text, 200)
