"""Routing: which formatter and which destinations each event type goes to.

Routes come from a TOML file (IPAI_ROUTES_FILE) or, without one, from the built-in default that
mirrors the seed's n8n router: expense.*, asset.* and finance_task.* each to their own formatter,
delivered to Mattermost when MATTERMOST_WEBHOOK_URL is set, else to the console. The first route
whose pattern matches wins. Secrets are never in the file: it names environment variables.

    [destinations.finance]
    type = "mattermost"            # mattermost | email | http | nats | rabbitmq | console | noop
    url_env = "MATTERMOST_WEBHOOK_URL"
    channel = "finance-ops"        # optional
    rate_per_second = 10           # optional token bucket
    burst = 100
    permanent_statuses = [400, 413]  # optional: HTTP answers that refuse the event for good

    [[routes]]
    match = "expense.*"            # exact name, prefix.*, or *
    formatter = "expense"          # optional: chosen from the event's domain
    destinations = ["finance"]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core.catalog import DOMAINS
from ..core.contract import EVENT_TYPE_PATTERN
from ..core.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DESTINATION_TYPES = ("mattermost", "email", "http", "nats", "rabbitmq", "console", "noop")
FORMATTERS = ("expense", "asset", "finance_task", "generic", "auto")


@dataclass(frozen=True)
class DestinationSpec:
    """One named destination: its type and options (secrets by environment variable name)."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    rate_per_second: float | None = None
    burst: int = 1
    # HTTP answers that refuse an event for good, when the routes file sets them (else the
    # destination type's own set, see destinations.http_client).
    permanent_statuses: frozenset[int] | None = None


@dataclass(frozen=True)
class Route:
    """Events whose type matches ``pattern`` go through ``formatter`` to ``destinations``."""

    pattern: str
    destinations: tuple[str, ...]
    formatter: str = "auto"

    def matches(self, event_type: str) -> bool:
        """True when ``event_type`` matches: ``*``, a ``domain.*`` prefix, or the exact type."""
        if self.pattern == "*":
            return True
        if self.pattern.endswith(".*"):
            return event_type.startswith(self.pattern[:-1])
        return event_type == self.pattern


@dataclass(frozen=True)
class RoutingTable:
    """The routes in order and the destinations they name."""

    routes: tuple[Route, ...]
    destinations: Mapping[str, DestinationSpec]

    def route_for(self, event_type: str) -> Route | None:
        """The first route matching ``event_type``, or None (the event is then unrouted)."""
        return next((route for route in self.routes if route.matches(event_type)), None)


def default_routing(env: Mapping[str, str]) -> RoutingTable:
    """The seed's routing: a route per catalog domain, to Mattermost (or the console without a
    URL), then everything else."""
    if env.get("MATTERMOST_WEBHOOK_URL"):
        target = DestinationSpec("mattermost", "mattermost", {"url_env": "MATTERMOST_WEBHOOK_URL"})
    else:
        target = DestinationSpec("console", "console")
    routes = tuple(Route(f"{domain.name}.*", (target.name,), domain.name) for domain in DOMAINS)
    return RoutingTable(routes + (Route("*", (target.name,), "generic"),), {target.name: target})


def load_routing(path: str | Path | None, env: Mapping[str, str]) -> RoutingTable:
    """The routes file at ``path``, or the default routing when ``path`` is None.

    Raises ConfigurationError naming the file and the entry that is wrong.
    """
    if path is None:
        return default_routing(env)
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"routes file {path}: {exc.strerror}", setting="IPAI_ROUTES_FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"routes file {path}: not valid TOML: {exc}", setting="IPAI_ROUTES_FILE"
        ) from None
    return parse_routing(document, env, origin=str(path))


def parse_routing(
    document: Mapping[str, Any], env: Mapping[str, str], *, origin: str = "routes"
) -> RoutingTable:
    """Validate a decoded routes document; raises ConfigurationError on the first problem."""
    destinations = {
        name: _destination(name, spec, env, origin)
        for name, spec in _table(document.get("destinations", {}), origin, "[destinations]").items()
    }
    raw_routes = document.get("routes", [])
    if not isinstance(raw_routes, list) or not raw_routes:
        raise _problem(origin, "needs at least one [[routes]] entry")
    routes = tuple(
        _route(index, raw, destinations, origin) for index, raw in enumerate(raw_routes, start=1)
    )
    return RoutingTable(routes, destinations)


def _table(value: Any, origin: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _problem(origin, f"{where} must be a table")
    return value


def _destination(name: str, raw: Any, env: Mapping[str, str], origin: str) -> DestinationSpec:
    spec = dict(_table(raw, origin, f"[destinations.{name}]"))
    kind = spec.pop("type", None)
    if kind not in DESTINATION_TYPES:
        raise _problem(
            origin,
            f"[destinations.{name}] type must be one of {', '.join(DESTINATION_TYPES)}; got {kind!r}",
        )
    for key, value in spec.items():
        if key.endswith("_env") and not env.get(str(value)):
            raise _problem(
                origin, f"[destinations.{name}] {key} names {value}, which is not set in the environment"
            )
    rate = spec.pop("rate_per_second", None)
    burst = spec.pop("burst", 1 if rate is None else max(1, int(rate)))
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise _problem(origin, f"[destinations.{name}] rate_per_second must be a positive number")
    if not isinstance(burst, int) or burst < 1:
        raise _problem(origin, f"[destinations.{name}] burst must be a whole number >= 1")
    permanent = _permanent_statuses(name, kind, spec.pop("permanent_statuses", None), origin)
    return DestinationSpec(name, kind, spec, float(rate) if rate else None, burst, permanent)


def _permanent_statuses(name: str, kind: str, raw: Any, origin: str) -> frozenset[int] | None:
    """A destination's own set of HTTP answers that refuse an event for good (None: its type's)."""
    if raw is None:
        return None
    where = f"[destinations.{name}] permanent_statuses"
    if kind not in ("http", "mattermost"):
        raise _problem(origin, f"{where}: only http and mattermost destinations answer in HTTP")
    valid = isinstance(raw, list) and all(
        isinstance(code, int) and 400 <= code <= 599 and code != 429 for code in raw
    )
    if not valid:
        raise _problem(
            origin, f"{where} must be a list of 4xx/5xx statuses (429 is always a pause), got {raw!r}"
        )
    return frozenset(raw)


def _route(index: int, raw: Any, destinations: Mapping[str, DestinationSpec], origin: str) -> Route:
    entry = _table(raw, origin, f"route #{index}")
    pattern = entry.get("match")
    if not isinstance(pattern, str) or not _valid_pattern(pattern):
        raise _problem(
            origin, f"route #{index}: match must be an event type, a prefix.* or *; got {pattern!r}"
        )
    names = entry.get("destinations")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _problem(
            origin, f"route #{index} ({pattern}): destinations must be a non-empty list of names"
        )
    unknown = [name for name in names if name not in destinations]
    if unknown:
        raise _problem(origin, f"route #{index} ({pattern}): no destination named {', '.join(unknown)}")
    formatter = entry.get("formatter", "auto")
    if formatter not in FORMATTERS:
        raise _problem(
            origin, f"route #{index} ({pattern}): formatter must be one of {', '.join(FORMATTERS)}"
        )
    return Route(pattern, tuple(names), formatter)


def _valid_pattern(pattern: str) -> bool:
    if pattern == "*":
        return True
    stem = pattern[:-2] if pattern.endswith(".*") else pattern
    return bool(EVENT_TYPE_PATTERN.fullmatch(stem))


def _problem(origin: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"routes file {origin}: {message}", setting="IPAI_ROUTES_FILE")


def where_it_points(spec: DestinationSpec, env: Mapping[str, str]) -> str:
    """Where ``spec`` delivers, with nothing secret in it: a URL as scheme, host and port only
    (a webhook URL's path or query often is its key, and user info is a password), e-mail's
    recipients, a broker's exchange or subject prefix; the variable a URL comes from, named."""
    options = spec.options
    variable = options.get("url_env")
    url = env.get(str(variable), "") if variable else str(options.get("url", ""))
    parts = urlsplit(url) if url else None
    place = ""
    if parts and parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        place = f"{parts.scheme}://{parts.hostname}{port}" + ("/…" if parts.path.strip("/") else "")
    elif variable:
        place = "not set"
    if variable:
        place = f"{place} (from {variable})"
    if spec.type == "email":
        return "to " + ", ".join(str(address) for address in options.get("to", []))
    if spec.type == "rabbitmq":
        return f"exchange {options.get('exchange', '')} at {place}"
    if spec.type == "nats":
        return f"subjects {options.get('subject_prefix', 'ipai')}.> at {place}"
    if spec.type == "mattermost" and options.get("channel"):
        return f"{place}, channel {options['channel']}"
    return place or spec.type


def routes_using(routing: RoutingTable, name: str) -> list[str]:
    """The patterns of the routes that deliver to destination ``name``, in the file's order."""
    return [route.pattern for route in routing.routes if name in route.destinations]
