"""The Prometheus alert rules (deploy/prometheus/): they load, each fires on what should raise it
and stays quiet otherwise (promtool's own rule evaluation), and they use only what the bus exports."""

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

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "ipai-bus-alerts.yml"
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


def test_every_rule_uses_only_metrics_the_bus_exports(database):
    """Each ipai_* name in an expression is one a router or a receiver serves on /metrics."""
    router = RouterMetrics(database, lambda: {"n8n": CircuitBreaker("n8n")})
    router.observe_claim(1)
    receiver = ReceiverMetrics(database)
    receiver.observe("accepted", 0.01)
    exported = set(re.findall(r"^(ipai_[a-z_]+)", router.render()[0].decode(), re.MULTILINE))
    exported |= set(re.findall(r"^(ipai_[a-z_]+)", receiver.render()[0].decode(), re.MULTILINE))
    used = {name for rule in rules().values() for name in re.findall(r"\bipai_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported
    runbooks = [rule["annotations"]["runbook"] for rule in rules().values()]
    assert all("ipai-bus" in runbook or "curl" in runbook for runbook in runbooks)
