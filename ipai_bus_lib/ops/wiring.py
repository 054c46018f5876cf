"""A router wired from the settings: the routes file (or the default routes), its destinations
with their secrets, rate limits, metrics and database. `route`, `up` and `routes check` use it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..core.settings import Settings
from ..delivery.router import Router


def make_router(settings: Settings, url: str, *, worker: str | None = None) -> Router:
    """A router wired from the settings: routes file (or the default), destinations, limits."""
    from ..core.memory import cap_malloc_arenas
    from ..delivery.router import ROUTER_SESSION_SETTINGS, Router, RouterConfig
    from ..delivery.router.metrics import RouterMetrics
    from ..storage.db import Database

    cap_malloc_arenas()  # before the delivery threads exist
    routing, destinations, limits = routing_from(settings)
    config = RouterConfig(
        batch_size=settings.router_batch_size,
        lease_seconds=settings.router_lease_seconds,
        poll_seconds=settings.router_poll_seconds,
        concurrency=settings.router_concurrency,
        listen=settings.router_listen,
        retry_delays=settings.retry_delays,
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_seconds=settings.breaker_cooldown_seconds,
        odoo_base_url=settings.odoo_base_url,
    )
    if worker:
        config = replace(config, worker=worker)
    database = Database(
        url,
        max_size=4,
        application_name="ipai-bus router",
        settings=ROUTER_SESSION_SETTINGS,
        deadline_seconds=settings.router_lease_seconds,
    )
    from ..core import tracing

    tracing.set_service_name("ipai-bus-router")
    # The metrics read the breakers of the router made on the next line (when scraped).
    metrics = RouterMetrics(database, lambda: router.deliverer.breakers)
    router = Router(config, database, routing, destinations, limits, metrics=metrics)
    return router


def routing_from(settings: Settings) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The routes (file or default), their destinations and rate limits, all checked: raises
    ConfigurationError naming the problem before anything is started."""
    from ..delivery.destinations import SmtpDefaults, TokenBucket, build_destination
    from ..delivery.routes import load_routing

    routing = load_routing(settings.routes_file, settings.environment)
    smtp = SmtpDefaults(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password,
        sender=settings.smtp_from,
    )
    destinations = {
        name: build_destination(
            spec, settings.environment, smtp=smtp, timeout=settings.delivery_timeout_seconds
        )
        for name, spec in routing.destinations.items()
    }
    limits = {
        name: TokenBucket(spec.rate_per_second, spec.burst)
        for name, spec in routing.destinations.items()
        if spec.rate_per_second
    }
    return routing, destinations, limits


def check_routing(settings: Settings) -> None:
    """Raise ConfigurationError if the routes or a destination are wrong; start nothing."""
    _, destinations, _ = routing_from(settings)
    for destination in destinations.values():
        destination.close()


def configured_destinations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each destination's type, rate limit, where it points and the routes using it, as the
    routes file says (nothing secret); {} when the routes cannot be read here (the console then
    shows what the database knows)."""
    from ..core.errors import ConfigurationError
    from ..delivery.routes import load_routing, routes_using, where_it_points

    try:
        routing = load_routing(settings.routes_file, settings.environment)
    except ConfigurationError:
        return {}
    return {
        name: {
            "type": spec.type,
            "rate": spec.rate_per_second,
            "target": where_it_points(spec, settings.environment),
            "routes": routes_using(routing, name),
        }
        for name, spec in routing.destinations.items()
    }


def types_without_route(settings: Settings, event_types: list[str]) -> list[str]:
    """Which of ``event_types`` no route matches (none when the routes file cannot be read:
    `routes check` says why)."""
    from ..core.errors import ConfigurationError
    from ..delivery.routes import load_routing

    try:
        routing = load_routing(settings.routes_file, settings.environment)
    except ConfigurationError:
        return []
    return [event_type for event_type in event_types if routing.route_for(event_type) is None]
