"""What an operator looks up: the event catalog (`ipai-bus types`) and a routes file checked
before it is used (`ipai-bus routes check FILE`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.catalog import CATALOG
from ..core.settings import Settings


def types_table() -> str:
    """The 14 event types as a Markdown table: the README shows exactly this."""
    lines = [
        "| event type | record (aggregate type) | payload fields |",
        "| --- | --- | --- |",
    ]
    for name, spec in CATALOG.items():
        fields = ", ".join(f"`{field}`" for field in spec.payload_fields)
        lines.append(f"| {spec.emoji} `{name}` | `{spec.domain.aggregate_type}` | {fields} |")
    return "\n".join(lines)


def cmd_types(args: argparse.Namespace, settings: Settings) -> int:
    if args.json:
        document = [
            {
                "event_type": name,
                "aggregate_type": spec.domain.aggregate_type,
                "payload_fields": list(spec.payload_fields),
                "title": spec.title,
            }
            for name, spec in CATALOG.items()
        ]
        print(json.dumps(document, indent=2, ensure_ascii=False))
    elif args.markdown:
        print(types_table())
    else:
        for name, spec in CATALOG.items():
            print(f"{name:<26} {spec.domain.aggregate_type:<24} {', '.join(spec.payload_fields)}")
    return 0


def cmd_routes_check(args: argparse.Namespace, settings: Settings) -> int:
    """Load FILE as `route` and `up` would (destinations and their secrets included); say what
    goes where, and which catalogued types no route takes."""
    from dataclasses import replace

    from ..delivery.routes import where_it_points
    from .wiring import routing_from

    routing, destinations, _ = routing_from(replace(settings, routes_file=Path(args.file)))
    for destination in destinations.values():
        destination.close()
    print(f"{args.file}: valid; routes are read when a router starts (restart it after a change)")
    for name, spec in routing.destinations.items():
        print(f"  destination {name:<16} {spec.type:<10} {where_it_points(spec, settings.environment)}")
    for route in routing.routes:
        print(f"  route {route.pattern:<24} → {', '.join(route.destinations)}")
    unrouted = [name for name in CATALOG if routing.route_for(name) is None]
    if unrouted:
        print("  no route takes (they would go dead): " + ", ".join(unrouted))
    return 0
