"""The n8n workflows in integrations/n8n/, checked on every run without n8n.

Their structure (every connection names a node, every Switch output goes somewhere, the Webhook
keeps the raw body and answers from the workflow), and their Code nodes' JavaScript run under
Node the way n8n runs it (tests/n8n/run_code_node.cjs): the signature check against the shared
Standard Webhooks vectors, the Markdown-safe payload text
against the bus's own rule, and each handler on every catalogued event type. The same
workflows run in a real n8n in tests/test_n8n_live.py when n8n is installed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ipai_bus_lib.core.samples import all_samples
from ipai_bus_lib.core.signing import standard_webhooks_headers, standard_webhooks_key
from ipai_bus_lib.core.stored_event import StoredEvent
from ipai_bus_lib.delivery.destinations.http_forward import forward_body
from ipai_bus_lib.delivery.safe_text import escape_markdown, neutralise

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "integrations" / "n8n"
RECEIVER = WORKFLOWS / "ipai-bus-receive.json"
POLLER = WORKFLOWS / "ipai-bus-poll-outbox.json"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "standard_webhooks.json").read_text())
RUN_CODE_NODE = ROOT / "tests" / "n8n" / "run_code_node.cjs"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js not installed: n8n Code nodes not run")
# Nodes the workflows may use: all ship with n8n 2.x itself, no community node.
BUILT_IN_TYPES = {
    "n8n-nodes-base.webhook", "n8n-nodes-base.code", "n8n-nodes-base.switch",
    "n8n-nodes-base.if", "n8n-nodes-base.httpRequest", "n8n-nodes-base.emailSend",
    "n8n-nodes-base.respondToWebhook", "n8n-nodes-base.stickyNote",
    "n8n-nodes-base.scheduleTrigger", "n8n-nodes-base.postgres", "n8n-nodes-base.dataTable",
}  # fmt: skip


def workflow(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def node(flow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in flow["nodes"] if n["name"] == name)


def run_code(code: str, **job: Any) -> dict[str, Any]:
    done = subprocess.run(
        [NODE, str(RUN_CODE_NODE)], input=json.dumps({"code": code, **job}),
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def verify(vector: dict[str, Any]) -> dict[str, Any]:
    headers = {"webhook-id": vector["webhook_id"], "content-type": "application/json"}
    if vector["webhook_timestamp"] is not None:
        headers["webhook-timestamp"] = vector["webhook_timestamp"]
    if vector["webhook_signature"] is not None:
        headers["webhook-signature"] = vector["webhook_signature"]
    item = {"json": {"headers": headers}, "rawBody": base64.b64encode(vector["body"].encode()).decode()}
    return run_code(
        node(workflow(RECEIVER), "Verify signature")["parameters"]["jsCode"],
        items=[item], env={"IPAI_BUS_WEBHOOK_SECRET": " ".join(vector["secrets"])},
        nowMs=vector["now_s"] * 1000,
    )  # fmt: skip


def signed_vector(body: str, *, webhook_id: str = "evt-1", now_s: int = 1769066787) -> dict[str, Any]:
    secret = VECTORS["vectors"][0]["secrets"][0]
    headers = standard_webhooks_headers(
        standard_webhooks_key(secret), message_id=webhook_id, body=body.encode(), timestamp_s=now_s
    )
    return {"secrets": [secret], "webhook_id": webhook_id, "webhook_timestamp": str(now_s),
            "webhook_signature": headers["webhook-signature"], "body": body, "now_s": now_s}  # fmt: skip


# --- structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RECEIVER, POLLER], ids=lambda p: p.name)
def test_every_connection_joins_nodes_of_the_workflow_and_every_node_is_built_in(path):
    flow = workflow(path)
    names = [n["name"] for n in flow["nodes"]]
    assert len(names) == len(set(names)), "node names are unique"
    assert {n["type"] for n in flow["nodes"]} <= BUILT_IN_TYPES
    reached = set()
    for source, outputs in flow["connections"].items():
        assert source in names
        for output in outputs["main"]:
            assert output, f"an output of {source} leads nowhere"
            for link in output:
                assert link["node"] in names
                reached.add(link["node"])
    triggers = {n["name"] for n in flow["nodes"] if n["type"].endswith(("webhook", "scheduleTrigger"))}
    notes = {n["name"] for n in flow["nodes"] if n["type"].endswith("stickyNote")}
    assert set(names) - notes - triggers == reached, "every node but the trigger is reached"


@pytest.mark.parametrize("path", [RECEIVER, POLLER], ids=lambda p: p.name)
def test_every_switch_has_an_output_for_each_rule_and_its_fallback(path):
    flow = workflow(path)
    for switch in (n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.switch"):
        rules = len(switch["parameters"]["rules"]["values"])
        fallback = switch["parameters"]["options"].get("fallbackOutput") == "extra"
        assert len(flow["connections"][switch["name"]]["main"]) == rules + fallback


def test_the_webhook_keeps_the_raw_body_and_answers_from_the_workflow():
    hook = node(workflow(RECEIVER), "IPAI bus webhook")
    assert hook["parameters"]["options"]["rawBody"] is True
    assert hook["parameters"]["responseMode"] == "responseNode"
    assert hook["parameters"]["httpMethod"] == "POST"


def test_no_secret_is_in_a_workflow():
    """Secrets stay in n8n's environment and credentials; a workflow only names them."""
    for path in (RECEIVER, POLLER):
        assert not re.search(r"whsec_[A-Za-z0-9+/]{30,}", path.read_text())
        for made in workflow(path)["nodes"]:
            for credential in made.get("credentials", {}).values():
                assert set(credential) == {"id", "name"}


# --- the signature check ----------------------------------------------------------------------


def test_the_vectors_valid_signatures_are_the_ones_the_bus_makes():
    for vector in (v for v in VECTORS["vectors"] if v["name"] == "valid"):
        made = standard_webhooks_headers(
            standard_webhooks_key(vector["secrets"][0]), message_id=vector["webhook_id"],
            body=vector["body"].encode(), timestamp_s=int(vector["webhook_timestamp"]),
        )  # fmt: skip
        assert made["webhook-signature"] == vector["webhook_signature"]


@needs_node
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_the_code_node_checks_each_vector_as_expected(vector):
    answer = verify(vector)
    assert "error" not in answer, answer
    [item] = answer["result"]
    if vector["expected"] == "valid":
        assert item["json"]["route"] == "handle"
        assert item["json"]["webhookId"] == vector["webhook_id"]
    else:
        assert item["json"] == {"route": "refused", "status": 401, "reason": vector["expected"]}


@needs_node
def test_without_raw_body_or_secret_the_node_fails_saying_what_to_set():
    code = node(workflow(RECEIVER), "Verify signature")["parameters"]["jsCode"]
    no_raw = run_code(
        code, items=[{"json": {"headers": {}}}], env={"IPAI_BUS_WEBHOOK_SECRET": "whsec_x"}
    )
    assert "Raw Body" in no_raw["error"]
    no_secret = run_code(code, items=[{"json": {"headers": {}}}], env={})
    assert "IPAI_BUS_WEBHOOK_SECRET" in no_secret["error"]


HOSTILE = [
    "[Pay now](https://evil.example/login) @channel <!here> ~town-square #urgent",
    "Claim at www.evil.example or 10.0.0.1, total 1,250.50",
    "line one\nline two\u202eevil\u202c :smile: javascript:alert(1) //host",
    "**bold** _it_ `code` | table | \\ back",
    "ｈｔｔｐｓ：／／evil。example",
]


@needs_node
def test_payload_text_is_made_safe_for_markdown_exactly_as_the_bus_does():
    body = json.dumps(
        {"type": "expense.submitted", "data": {"payload": {"texts": HOSTILE, "amount": 5}}}
    )
    item = verify(signed_vector(body))["result"][0]["json"]
    assert item["shown"] == {"texts": [escape_markdown(neutralise(t)) for t in HOSTILE], "amount": 5}


def forwarded_body(envelope) -> str:
    """The body the bus's http destination sends for ``envelope``, as the receiver stored it."""
    now = datetime.now(timezone.utc)
    event = StoredEvent(
        id=uuid.uuid4(), source=envelope.source, event_type=envelope.event_type,
        aggregate_type=envelope.aggregate_type, aggregate_id=envelope.aggregate_id,
        payload=dict(envelope.payload), status="processing", attempts=1, max_attempts=4,
        available_at=now, created_at=now, occurred_at=now,
    )  # fmt: skip
    return forward_body(event).decode()


@needs_node
@pytest.mark.parametrize("sample", all_samples(), ids=lambda e: e.event_type)
def test_each_handler_writes_a_full_message_for_each_event_type(sample):
    item = verify(signed_vector(forwarded_body(sample)))["result"][0]["json"]
    handler = {"expense": "Expense message", "asset": "Asset message", "finance_task": "Finance message"}
    answer = run_code(
        node(workflow(RECEIVER), handler[item["domain"]])["parameters"]["jsCode"], items=[{"json": item}]
    )
    [message] = answer["result"]
    assert "undefined" not in message["json"]["text"] and "null" not in message["json"]["text"]


def test_the_workflow_files_are_built_from_the_code_folder():
    built = subprocess.run(
        [sys.executable, str(WORKFLOWS / "build_workflows.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr


def test_the_install_script_says_where_and_how_and_installs_nothing_for_help():
    shown = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_n8n.sh"), "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and shown.stdout.startswith("Usage: install_n8n.sh")
    assert "N8N_PATH" in shown.stdout and "2.8.4" in shown.stdout and "set -euo" not in shown.stdout
