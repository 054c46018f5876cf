"""The Prometheus alert rules (deploy/prometheus/) and the Grafana dashboard (deploy/grafana/):
the rules load, each fires on what should raise it and stays quiet otherwise (promtool's own rule
evaluation), every dashboard query parses as PromQL, and both use only what the bus exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ipai_bus_lib.delivery.destinations import CircuitBreaker
from ipai_bus_lib.delivery.router.metrics import RouterMetrics
from ipai_bus_lib.ingest.metrics import ReceiverMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "ipai-bus-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "ipai-bus-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="alert rule tests skipped: no promtool (make test installs Debian's prometheus)",
)


def rules() -> dict[str, dict]:
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def expected(alert: str, summary: str, **labels: str) -> dict:
    """An alert as promtool reports it: its labels, and its annotations with the summary given."""
    rule = rules()[alert]
    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {**rule["annotations"], "summary": summary},
    }


ROUTER = 'job="ipai-bus-router", instance="r1"'
RECEIVER = 'job="ipai-bus-receiver", instance="v1"'
# (name, series, [(minute, alert, [expected alerts])])
CASES = [
    (
        "dead events appear, then nothing new",
        {
            f'ipai_router_dead_events_total{{{ROUTER}, reason="refused"}}': "0 0 1 2" + " 2" * 17,
            f'ipai_router_dead_events_total{{{ROUTER}, reason="no_route"}}': "0x20",
        },
        [
            (1, "IpaiBusEventsWentDead", []),
            (
                5,
                "IpaiBusEventsWentDead",
                [
                    expected(
                        "IpaiBusEventsWentDead",
                        "2 event(s) went dead in 10 minutes (refused)",
                        reason="refused",
                    )
                ],
            ),
            (20, "IpaiBusEventsWentDead", []),
        ],
    ),
    (
        "dead events left an hour",
        {
            f'ipai_outbox_events{{{RECEIVER}, status="dead"}}': "3x90",
            f'ipai_outbox_events{{{RECEIVER}, status="pending"}}': "50x90",
        },
        [
            (50, "IpaiBusDeadEventsUnhandled", []),
            (
                70,
                "IpaiBusDeadEventsUnhandled",
                [
                    expected(
                        "IpaiBusDeadEventsUnhandled",
                        "3 dead event(s) have waited an hour for an operator",
                    )
                ],
            ),
        ],
    ),
    (
        "ten events retrying never alert; eleven for ten minutes do",
        {f'ipai_outbox_events{{{RECEIVER}, status="failed"}}': "10x5 11x20"},
        [
            (5, "IpaiBusManyEventsRetrying", []),
            (12, "IpaiBusManyEventsRetrying", []),
            (
                17,
                "IpaiBusManyEventsRetrying",
                [
                    expected(
                        "IpaiBusManyEventsRetrying",
                        "11 events have been waiting for a retry for 10 minutes",
                    )
                ],
            ),
        ],
    ),
    (
        "lag over five minutes for five minutes",
        {f"ipai_outbox_lag_seconds{{{ROUTER}}}": "0 100 200 310 370 430 490 550 610 670 730"},
        [
            (6, "IpaiBusDeliveryLagging", []),
            (
                9,
                "IpaiBusDeliveryLagging",
                [
                    expected(
                        "IpaiBusDeliveryLagging", "The oldest due event has waited 11m 10s for delivery"
                    )
                ],
            ),
        ],
    ),
    (
        "one destination paused ten minutes, another briefly",
        {
            f'ipai_router_breaker_open{{{ROUTER}, destination="n8n"}}': "1x15",
            f'ipai_router_breaker_open{{{ROUTER}, destination="mattermost"}}': "1 1 1" + " 0" * 13,
        },
        [
            (
                12,
                "IpaiBusDestinationPaused",
                [
                    expected(
                        "IpaiBusDestinationPaused",
                        "Destination n8n has been paused for 10 minutes",
                        destination="n8n",
                    )
                ],
            )
        ],
    ),
    (
        "the receiver answers 503, then only accepts",
        {
            f'ipai_receiver_requests_total{{{RECEIVER}, outcome="unavailable"}}': "0+5x10 50+0x10",
            f'ipai_receiver_requests_total{{{RECEIVER}, outcome="accepted"}}': "0+100x20",
        },
        [
            (3, "IpaiBusReceiverRefusingWith503", []),
            (
                10,
                "IpaiBusReceiverRefusingWith503",
                [
                    expected(
                        "IpaiBusReceiverRefusingWith503", "The receiver has answered 503 for 5 minutes"
                    )
                ],
            ),
            (20, "IpaiBusReceiverRefusingWith503", []),
        ],
    ),
    (
        "a router stops answering; another job's target is not ours",
        {f"up{{{ROUTER}}}": "1 1 0 0 0 0", 'up{job="node", instance="n1"}': "0x5"},
        [
            (
                5,
                "IpaiBusTargetDown",
                [
                    expected(
                        "IpaiBusTargetDown",
                        "ipai-bus-router at r1 does not answer its /metrics",
                        job="ipai-bus-router",
                        instance="r1",
                    )
                ],
            )
        ],
    ),
]


@needs_promtool
def test_the_rules_load():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@needs_promtool
def test_each_alert_fires_on_what_should_raise_it_and_only_then(tmp_path):
    tests = [
        {
            "name": name,
            "interval": "1m",
            "input_series": [
                {"series": series, "values": values} for series, values in series_map.items()
            ],
            "alert_rule_test": [
                {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": alerts}
                for minute, alert, alerts in checks
            ],
        }
        for name, series_map, checks in CASES
    ]
    covered = {alert for _, _, checks in CASES for _, alert, alerts in checks if alerts}
    assert covered == set(rules()), "every alert has a case where it fires"
    document = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}
    test_file = tmp_path / "alerts.test.json"  # JSON is YAML too
    test_file.write_text(json.dumps(document))
    tested = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def exported_names(database) -> set[str]:
    """Every series name a router and a receiver serve on /metrics."""
    router = RouterMetrics(database, lambda: {"n8n": CircuitBreaker("n8n")})
    router.observe_claim(1)
    receiver = ReceiverMetrics(database)
    receiver.observe("accepted", 0.01)
    text = router.render()[0].decode() + receiver.render()[0].decode()
    names = set(re.findall(r"^(ipai_[a-z_]+)", text, re.MULTILINE))  # series with samples
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for name, kind in re.findall(r"^# TYPE (ipai_[a-z_]+) (\w+)", text, re.MULTILINE):
        names |= {name, *(name + suffix for suffix in suffixes.get(kind, ()))}  # none observed yet
    return names


def test_the_rules_and_the_dashboard_use_only_metrics_the_bus_exports(database):
    """Each ipai_* name in an expression is one a router or a receiver serves on /metrics."""
    exported = exported_names(database)
    expressions = [rule["expr"] for rule in rules().values()] + dashboard_queries()
    used = {name for expression in expressions for name in re.findall(r"\bipai_[a-z_]+", expression)}
    assert used and used <= exported, used - exported


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool reads each query as a recording rule's expression: a typo fails here."""
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": q}
                    for n, q in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    rule_file = tmp_path / "dashboard-queries.json"
    rule_file.write_text(json.dumps(recording))
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(rule_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    runbooks = [rule["annotations"]["runbook"] for rule in rules().values()]
    assert all("ipai-bus" in runbook or "curl" in runbook for runbook in runbooks)
