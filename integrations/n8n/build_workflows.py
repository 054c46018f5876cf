"""Writes the importable n8n workflows of this folder from the JavaScript in code/.

The JSON files are what a user imports into n8n; code/*.js is what a developer edits, so each
rule (the signature check, the Markdown-safe text, each handler) is written once and shared by
both workflows. ``// {{name.js}}`` in a file is replaced by code/name.js.

    python integrations/n8n/build_workflows.py           # rewrite the JSON files
    python integrations/n8n/build_workflows.py --check   # exit 1 when a JSON file is stale
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CODE = HERE / "code"
NAMESPACE = uuid.UUID("6f1c1d55-0000-4000-8000-00000000ba55")
WORKER = "n8n-poller-1"
SMTP_CREDENTIAL = {"id": "ipaiBusSmtp00001", "name": "IPAI bus SMTP"}
POSTGRES_CREDENTIAL = {"id": "ipaiBusPgsql0001", "name": "IPAI bus database (service_role)"}
Node = dict[str, Any]


def stable_id(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def script(file: str) -> str:
    text = (CODE / file).read_text()
    return re.sub(r"// \{\{([\w.]+)\}\}\n", lambda m: script(m.group(1)), text)


def node(name: str, kind: str, version: float, position: list[int], **parameters: Any) -> Node:
    return {"parameters": parameters, "id": stable_id(name), "name": name,
            "type": f"n8n-nodes-base.{kind}", "typeVersion": version, "position": position}  # fmt: skip


def code(name: str, file: str, position: list[int]) -> Node:
    return node(name, "code", 2, position, jsCode=script(file))


def equals(left: str, right: str) -> dict[str, Any]:
    return {"id": stable_id(left + right), "leftValue": left, "rightValue": right,
            "operator": {"type": "string", "operation": "equals"}}  # fmt: skip


def conditions(*checks: dict[str, Any]) -> dict[str, Any]:
    return {"options": {"caseSensitive": True, "leftValue": "", "typeValidation": "strict", "version": 2},
            "conditions": list(checks), "combinator": "and"}  # fmt: skip


def switch(
    name: str, field: str, keys: list[str], position: list[int], fallback: str | None = None
) -> Node:
    rules = [{"conditions": conditions(equals("={{ $json.%s }}" % field, key)), "renameOutput": True, "outputKey": key}
             for key in keys]  # fmt: skip
    options = {"fallbackOutput": "extra", "renameFallbackOutput": fallback} if fallback else {}
    return node(name, "switch", 3.2, position, rules={"values": rules}, options=options)


def respond(name: str, status: int, body: str, position: list[int]) -> Node:
    return node(name, "respondToWebhook", 1.1, position, respondWith="json", responseBody=body,
                options={"responseCode": status})  # fmt: skip


def sql(
    name: str, query: str, position: list[int], *, replacement: str | None = None, once: bool = False
) -> Node:
    options = {"queryReplacement": replacement} if replacement else {}
    made = node(name, "postgres", 2.5, position, operation="executeQuery", query=query, options=options)
    made["credentials"] = {"postgres": POSTGRES_CREDENTIAL}
    if once:
        made["executeOnce"] = True
    return made


def note(name: str, text: str, position: list[int], width: int, height: int) -> Node:
    return node(name, "stickyNote", 1, position, content=text, width=width, height=height)


def to(*names: str) -> list[dict[str, Any]]:
    return [{"node": name, "type": "main", "index": 0} for name in names]


def handlers(x: int) -> list[Node]:
    """The seed's three handlers and the Mattermost post they share, as both workflows use them."""
    return [
        code("Expense message", "expense.js", [x, 0]),
        code("Asset message", "asset.js", [x, 160]),
        code("Finance message", "finance.js", [x, 320]),
        node("Post to Mattermost", "httpRequest", 4.2, [x + 240, 160], method="POST",
             url="={{ $env.MATTERMOST_WEBHOOK_URL }}", sendBody=True, specifyBody="json",
             jsonBody="={{ JSON.stringify({ text: $json.text }) }}", options={"timeout": 10000}),
    ]  # fmt: skip


HANDLER_LINKS = {
    "By event type": {"main": [to("Expense message"), to("Asset message"), to("Finance message")]},
    "Expense message": {"main": [to("Post to Mattermost")]},
    "Asset message": {"main": [to("Post to Mattermost")]},
    "Finance message": {"main": [to("Post to Mattermost")]},
}
FAILING_HANDLER_NODES = ["Expense message", "Asset message", "Finance message", "Post to Mattermost"]


def with_error_outputs(nodes: list[Node], links: dict[str, Any], names: list[str], target: str) -> None:
    """A failing node's item goes to ``target`` instead of failing the execution: n8n answers a
    webhook whose execution failed before its Respond node with an empty 200, which the bus
    would take as delivered."""
    for made in nodes:
        if made["name"] in names:
            made["onError"] = "continueErrorOutput"
            links[made["name"]]["main"].append(to(target))


HANDLED_TABLE = "ipai_bus_handled"
HANDLED_TABLE_REFERENCE = {"__rl": True, "mode": "name", "value": HANDLED_TABLE}
WEBHOOK_ID = "={{ $('Verify signature').first().json.webhookId }}"
RECEIVER_NOTE = f"""## IPAI bus → n8n: receive events
The bus POSTs each event to this Webhook, signed per Standard Webhooks, `webhook-id` = the event id.

n8n's environment: `IPAI_BUS_WEBHOOK_SECRET` (whsec_…), `N8N_BLOCK_ENV_ACCESS_IN_NODE=false`, \
`NODE_FUNCTION_ALLOW_BUILTIN=crypto`, `MATTERMOST_WEBHOOK_URL`, `IPAI_FINANCE_MAIL_FROM`, \
`IPAI_FINANCE_MAIL_TO`; the SMTP credential "IPAI bus SMTP".

Handled webhook-ids are rows of the data table `{HANDLED_TABLE}` (made on first use, a row \
each, so concurrent executions never overwrite each other's); rows older than 7 days are \
deleted daily.

Answers: 401 bad signature (retried: a secret being rotated), 200 duplicate (handled before), \
200 handled, 503 a handler failed (retried). See integrations/n8n/README.md in the bus."""


def data_table(name: str, position: list[int], **parameters: Any) -> Node:
    return node(name, "dataTable", 1, position, **parameters)


def receiver() -> dict[str, Any]:
    mail_worthy = ("={{ $('Verify signature').first().json.domain === 'finance_task'"
                   " && ['overdue', 'filed'].includes($('Verify signature').first().json.type.split('.')[1]) }}")  # fmt: skip
    payload = "$('Verify signature').first().json.event.data.payload"
    webhook_id_is = {"matchType": "allConditions",
                     "filters": {"conditions": [{"keyName": "webhook_id", "condition": "eq", "keyValue": WEBHOOK_ID}]}}  # fmt: skip
    nodes = [
        note("Read me", RECEIVER_NOTE, [-40, -460], 600, 380),
        node("IPAI bus webhook", "webhook", 2, [0, 0], httpMethod="POST", path="ipai-bus",
             responseMode="responseNode", options={"rawBody": True}),
        code("Verify signature", "verify.js", [220, 0]),
        switch("Outcome", "route", ["refused", "handle"], [440, 0]),
        respond("Refuse: bad signature", 401, "={{ JSON.stringify({ error: 'signature', reason: $json.reason }) }}", [680, -200]),
        data_table("Handled-ids table", [680, 0], resource="table", operation="create", tableName=HANDLED_TABLE,
                   columns={"column": [{"name": "webhook_id", "type": "string"}]}, options={"createIfNotExists": True}),
        data_table("Look up webhook-id", [900, 0], resource="row", operation="get", dataTableId=HANDLED_TABLE_REFERENCE,
                   limit=1, **webhook_id_is),
        node("Handled before?", "if", 2.2, [1120, 0], options={}, conditions=conditions(
            {"id": stable_id("handled-before"), "leftValue": "={{ !!$json.webhook_id }}", "rightValue": "",
             "operator": {"type": "boolean", "operation": "true", "singleValue": True}})),
        respond("Answer: duplicate", 200, "={{ JSON.stringify({ duplicate: true, webhook_id: $json.webhook_id }) }}", [1340, -160]),
        code("The event", "the_event.js", [1340, 40]),
        switch("By event type", "domain", ["expense", "asset", "finance_task"], [1560, 40], fallback="other"),
        *handlers(1800),
        node("E-mail the filing team?", "if", 2.2, [2280, 160], options={}, conditions=conditions(
            {"id": stable_id("mail-worthy"), "leftValue": mail_worthy, "rightValue": "",
             "operator": {"type": "boolean", "operation": "true", "singleValue": True}})),
        node("E-mail the filing team", "emailSend", 2.1, [2500, 60], fromEmail="={{ $env.IPAI_FINANCE_MAIL_FROM }}",
             toEmail="={{ $env.IPAI_FINANCE_MAIL_TO }}", emailFormat="text", options={"appendAttribution": False},
             subject="={{ (p => `BIR ${p.bir_form} ${p.period_covered}: ${p.days_overdue > 0 ? p.days_overdue + ' days overdue' : p.stage_name}`)(%s) }}" % payload,
             text="={{ (p => `${p.task_name} (${p.task_code})\\nStage: ${p.stage_name}\\nFiling deadline: ${p.filing_deadline}\\nAssigned to: ${p.assigned_to}\\n`)(%s) }}" % payload),
        data_table("Remember webhook-id", [2720, 160], resource="row", operation="insert", dataTableId=HANDLED_TABLE_REFERENCE,
                   columns={"mappingMode": "defineBelow", "value": {"webhook_id": WEBHOOK_ID}, "matchingColumns": [],
                            "schema": [{"id": "webhook_id", "displayName": "webhook_id", "required": False, "defaultMatch": False,
                                        "display": True, "type": "string", "canBeUsedToMatch": True}],
                            "attemptToConvertTypes": False, "convertFieldsToString": False}, options={}),
        respond("Answer: handled", 200, "={{ JSON.stringify({ handled: $('Verify signature').first().json.type,"
                " webhook_id: $json.webhook_id }) }}", [2940, 160]),
        respond("Answer: failed, retry later", 503,
                "={{ JSON.stringify({ error: 'handler failed', node: $prevNode.name,"
                " message: String(($json.error && $json.error.message) || $json.error || '') }) }}", [2280, 520]),
        node("Every day", "scheduleTrigger", 1.2, [680, 480], rule={"interval": [{"field": "days", "daysInterval": 1}]}),
        data_table("Forget ids older than 7 days", [900, 480], resource="row", operation="deleteRows",
                   dataTableId=HANDLED_TABLE_REFERENCE, matchType="allConditions", options={},
                   filters={"conditions": [{"keyName": "createdAt", "condition": "lt",
                                            "keyValue": "={{ $now.minus({ days: 7 }).toISO() }}"}]}),
    ]  # fmt: skip
    named = {made["name"]: made for made in nodes}
    named["E-mail the filing team"]["credentials"] = {"smtp": SMTP_CREDENTIAL}
    named["IPAI bus webhook"]["webhookId"] = stable_id("webhook path")
    named["Look up webhook-id"]["alwaysOutputData"] = True  # no row: one empty item, "not handled"
    links = {
        "IPAI bus webhook": {"main": [to("Verify signature")]},
        "Verify signature": {"main": [to("Outcome")]},
        "Outcome": {"main": [to("Refuse: bad signature"), to("Handled-ids table")]},
        "Handled-ids table": {"main": [to("Look up webhook-id")]},
        "Look up webhook-id": {"main": [to("Handled before?")]},
        "Handled before?": {"main": [to("Answer: duplicate"), to("The event")]},
        "The event": {"main": [to("By event type")]},
        **json.loads(json.dumps(HANDLER_LINKS)),
        "Post to Mattermost": {"main": [to("E-mail the filing team?")]},
        "E-mail the filing team?": {"main": [to("E-mail the filing team"), to("Remember webhook-id")]},
        "E-mail the filing team": {"main": [to("Remember webhook-id")]},
        "Remember webhook-id": {"main": [to("Answer: handled")]},
        "Every day": {"main": [to("Forget ids older than 7 days")]},
    }
    links["By event type"]["main"].append(to("Remember webhook-id"))
    # Concurrent first executions both make the table; the loser's failure is harmless (the
    # look-up after it fails too, into the error output, if the table really cannot be had).
    named["Handled-ids table"]["onError"] = "continueRegularOutput"
    failing = ["Verify signature", "Look up webhook-id", "The event", *FAILING_HANDLER_NODES,
               "E-mail the filing team", "Remember webhook-id"]  # fmt: skip
    with_error_outputs(nodes, links, failing, "Answer: failed, retry later")
    return workflow("ipaiBusReceive01", "IPAI bus: receive events", nodes, links)


POLLER_NOTE = f"""## IPAI bus: poll the outbox (the seed's pattern)
For users who keep the seed's polling instead of an `http` route. **Never beside `ipai-bus route`** \
on the same events: both would claim from one outbox.

Every 30 s it claims up to 50 events as `{WORKER}` for 120 s, renews their leases to 300 s \
(a slow handler renews again before it runs out), posts each to Mattermost, acknowledges it; a \
failed handler calls fail_outbox (retried after 30 s, 90 s, 5 min, then dead); a type with no \
handler is given up at once (dead, with the reason). A record's events come one per claim, in \
order. The Postgres credential connects as service_role or the owner."""


def poller() -> dict[str, Any]:
    nodes = [
        note("Read me", POLLER_NOTE, [-40, -420], 560, 340),
        node("Every 30 seconds", "scheduleTrigger", 1.2, [0, 0],
             rule={"interval": [{"field": "seconds", "secondsInterval": 30}]}),
        sql("Claim events", "select id, event_type, aggregate_type, aggregate_id, payload, attempts\n"
            f"  from public.claim_outbox(p_worker => '{WORKER}', p_limit => 50, p_lease_seconds => 120)", [220, 0]),
        sql("Extend leases", f"select public.extend_leases(p_ids => $1::uuid[], p_worker => '{WORKER}', p_lease_seconds => 300) as extended",
            [440, 0], replacement="={{ [ $('Claim events').all().map(claimed => claimed.json.id) ] }}", once=True),
        code("Read the event", "poll_read.js", [660, 0]),
        switch("By event type", "domain", ["expense", "asset", "finance_task"], [880, 0], fallback="other"),
        *handlers(1120),
        sql("Acknowledge", f"select public.ack_outbox(p_ids => array[$1::uuid], p_worker => '{WORKER}') as acknowledged",
            [1600, 160], replacement="={{ $('Read the event').item.json.id }}"),
        sql("Fail: retry later", f"select public.fail_outbox(p_id => $1::uuid, p_worker => '{WORKER}', p_error => $2) as status",
            [1600, 420], replacement="={{ [ $('Read the event').item.json.id, String(($json.error && $json.error.message) || $json.error || 'handler failed') ] }}"),
        sql("Give up: no handler", f"select public.fail_outbox(p_id => $1::uuid, p_worker => '{WORKER}', p_error => $2, p_give_up => true) as status",
            [1120, 560], replacement="={{ [ $json.id, 'no handler in the n8n poller for ' + $json.type ] }}"),
    ]  # fmt: skip
    links = {
        "Every 30 seconds": {"main": [to("Claim events")]},
        "Claim events": {"main": [to("Extend leases")]},
        "Extend leases": {"main": [to("Read the event")]},
        "Read the event": {"main": [to("By event type")]},
        **json.loads(json.dumps(HANDLER_LINKS)),
        "Post to Mattermost": {"main": [to("Acknowledge")]},
    }
    links["By event type"]["main"].append(to("Give up: no handler"))
    with_error_outputs(nodes, links, FAILING_HANDLER_NODES, "Fail: retry later")
    return workflow("ipaiBusPollOutbx", "IPAI bus: poll the outbox", nodes, links)


def workflow(workflow_id: str, name: str, nodes: list[Node], links: dict[str, Any]) -> dict[str, Any]:
    return {"id": workflow_id, "name": name, "nodes": nodes, "connections": links, "active": False,
            "settings": {"executionOrder": "v1", "saveDataSuccessExecution": "none", "saveDataErrorExecution": "all"},
            "pinData": {}, "tags": []}  # fmt: skip


WORKFLOWS = {"ipai-bus-receive.json": receiver, "ipai-bus-poll-outbox.json": poller}


def main(argv: list[str]) -> int:
    stale = []
    for file, build in WORKFLOWS.items():
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        path = HERE / file
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(file)
        else:
            path.write_text(text)
    if stale:
        print(
            f"stale: {', '.join(stale)}; run python integrations/n8n/build_workflows.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
