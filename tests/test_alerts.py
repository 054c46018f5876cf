"""The Prometheus alert rules (deploy/prometheus/) and the Grafana dashboard (deploy/grafana/):
the rules load, each fires on what should raise it and stays quiet otherwise (promtool's own rule
evaluation), every dashboard query parses as PromQL, and both use only what the bus exports."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ipai_bus_lib.delivery.destinations import CircuitBreaker
from ipai_bus_lib.delivery.router.metrics import RouterMetrics
from ipai_bus_lib.ingest.metrics import ReceiverMetrics

from . import helpers
from .helpers import PRIMARY_SECRET, free_port, receiver_process, wait_until
from .readiness import http_answers, wait_for_server
from .sinks import HttpSink, Reply
from .test_router_processes import ROUTES, router_process

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


PROMETHEUS = shutil.which("prometheus")


@pytest.fixture()
def refusing_sink():
    """A destination that refuses every event with a 400: each delivery goes dead, refused."""
    with HttpSink(lambda request: Reply(status=400, body=b"amount must be positive")) as sink:
        yield sink


@contextlib.contextmanager
def prometheus(tmp_path, targets: dict[str, str]) -> Iterator[str]:
    """Debian's Prometheus scraping ``targets`` ({job: host:port}) every second with the bus's
    alert rules evaluated every second; yields its base URL."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server("Prometheus", http_answers(base + "/-/ready"), process=process, log=log_path)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def prometheus_api(base: str, path: str, **params: str) -> Any:
    answer = requests.get(f"{base}/api/v1/{path}", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def series(base: str, query: str) -> list[dict]:
    """The instant vector a query answers now."""
    return prometheus_api(base, "query", query=query)["result"]


def firing(base: str) -> dict[str, list[dict]]:
    """The alerts Prometheus has firing now, by name, each with its labels."""
    alerts: dict[str, list[dict]] = {}
    for alert in prometheus_api(base, "alerts")["alerts"]:
        if alert["state"] == "firing":
            alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    return alerts


def scraped_names(*metrics_urls: str) -> set[str]:
    """Every series name served live on these /metrics, counting a histogram's and a counter's
    derived names."""
    text = "".join(requests.get(url, timeout=10).text for url in metrics_urls)
    names = set(re.findall(r"^(ipai_[a-z_]+)", text, re.MULTILINE))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for name, kind in re.findall(r"^# TYPE (ipai_[a-z_]+) (\w+)", text, re.MULTILINE):
        names |= {name, *(name + suffix for suffix in suffixes.get(kind, ()))}
    return names


@pytest.mark.slow
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="live Prometheus test skipped: no prometheus (make test installs Debian's prometheus)",
)
def test_a_real_prometheus_scraping_a_running_bus_fires_when_events_go_dead(
    clean_bus, tmp_path, refusing_sink
):
    """A running receiver and router, scraped by Prometheus with the shipped rules: quiet while
    all is well, IpaiBusEventsWentDead firing (reason refused) once a destination refuses, and
    every dashboard query answered from the live series."""
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    router_port = free_port()
    router_log = tmp_path / "router.log"
    with receiver_process(clean_bus, tmp_path, secrets=PRIMARY_SECRET) as receiver:
        router = router_process(
            clean_bus,
            routes,
            refusing_sink.url,
            router_log,
            IPAI_ROUTER_METRICS_PORT=str(router_port),
        )
        router_metrics = f"http://127.0.0.1:{router_port}/metrics"
        try:
            wait_for_server("the router's /metrics", http_answers(router_metrics), process=router)
            targets = {
                "ipai-bus-router": f"127.0.0.1:{router_port}",
                "ipai-bus-receiver": receiver.base_url.removeprefix("http://"),
            }
            with prometheus(tmp_path, targets) as base:
                wait_until(
                    lambda: len(series(base, 'up{job=~"ipai-bus.*"} == 1')) == 2,
                    timeout=60,
                    what="Prometheus to scrape the router and the receiver",
                )
                time.sleep(3)  # a few evaluations with every series at its starting value
                assert firing(base) == {}, "nothing fires while all is well"

                for n in range(3):
                    body = helpers.event_body(f"refused-{n}")
                    answer = helpers.post(
                        receiver.base_url, body, helpers.signed(body, key=f"refused-{n}")
                    )
                    assert answer.status_code == 200, answer.text
                wait_until(lambda: refusing_sink.count() == 3, what="three refused deliveries")
                wait_until(
                    lambda: "IpaiBusEventsWentDead" in firing(base),
                    timeout=60,
                    what="IpaiBusEventsWentDead to fire",
                )
                [labels] = firing(base)["IpaiBusEventsWentDead"]
                assert labels["reason"] == "refused" and labels["severity"], labels
                assert set(firing(base)) == {"IpaiBusEventsWentDead"}, firing(base)

                live = scraped_names(router_metrics, receiver.base_url + "/metrics")
                for query in dashboard_queries():
                    used = set(re.findall(r"\bipai_[a-z_]+", query))
                    assert used <= live, (query, used - live)
                    prometheus_api(base, "query", query=query)  # evaluates on the live series
                [dead] = series(base, "sum(ipai_router_dead_events_total{reason='refused'})")
                assert float(dead["value"][1]) == 3
        finally:
            router.terminate()
            router.wait(timeout=30)
    deaths = [
        json.loads(line[line.index("{") :])
        for line in router_log.read_text().splitlines()
        if '"event": "event_dead"' in line
    ]
    assert sorted(d["record"] for d in deaths) == [f"hr.expense/refused-{n}" for n in range(3)]
    assert {d["reason"] for d in deaths} == {"refused"}
    assert helpers.counts(clean_bus)[0] == 3, "the dead events are kept, not lost"
