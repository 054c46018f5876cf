"""W3C Trace Context for events, and OpenTelemetry spans when the ``otel`` extra is installed.

Every event can carry a ``traceparent`` (and ``tracestate``) from the sender to the
destination: the sender puts one on each request and, in a batch, on each event; the receiver
keeps the event's with the event; the router continues it and passes it on in the headers of
what it delivers. That works with or without OpenTelemetry: without it the contexts are passed
through untouched (a sender that has none makes its own ids), so a tracing system downstream
still sees one trace per event.

With ``pip install 'ipai-bus[otel]'`` each part also records spans named and attributed as
OpenTelemetry's messaging conventions say (``send``/``create`` at the sender, ``receive`` at the
receiver, ``process`` and ``settle`` at the router, an HTTP client span per delivery), exported
by OTLP/HTTP to where the standard ``OTEL_*`` variables say. Export starts only when one of
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` is set, and never when ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``; a process that configured OpenTelemetry itself (for example
under ``opentelemetry-instrument``) keeps its own provider.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .contract import MAX_TRACESTATE_CHARS, TRACEPARENT_HEADER, TRACESTATE_HEADER, TRACESTATE_PATTERN

log = logging.getLogger("ipai_bus.tracing")


# Any version's traceparent begins with version 00's four fields (later versions may add more).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

# OpenTelemetry's messaging conventions: the names of the operations and their attributes.
SYSTEM = "ipai_bus"
BUS_DESTINATION = "ipai.bus"
ATTR_SYSTEM = "messaging.system"
ATTR_OPERATION_TYPE = "messaging.operation.type"
ATTR_OPERATION_NAME = "messaging.operation.name"
ATTR_DESTINATION = "messaging.destination.name"
ATTR_MESSAGE_ID = "messaging.message.id"
ATTR_BATCH_COUNT = "messaging.batch.message_count"
ATTR_EVENT_TYPE = "ipai_bus.event.type"
ATTR_ERROR_TYPE = "error.type"


@dataclass(frozen=True)
class TraceContext:
    """One W3C trace context: a valid version-00 ``traceparent`` and an optional ``tracestate``."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def sampled(self) -> bool:
        return int(self.traceparent[53:55], 16) & 1 == 1

    def headers(self) -> dict[str, str]:
        """The headers (or batch element fields) that carry it: ``traceparent``, and
        ``tracestate`` when there is one."""
        found = {TRACEPARENT_HEADER: self.traceparent}
        if self.tracestate:
            found[TRACESTATE_HEADER] = self.tracestate
        return found

    fields = headers

    def child(self) -> TraceContext:
        """The same trace under a new span id: what a sender without OpenTelemetry gives each
        event of a batch, so each can be told apart downstream."""
        return TraceContext(
            f"00-{self.trace_id}-{secrets.token_hex(8)}-{self.traceparent[53:]}", self.tracestate
        )


def parse_trace_context(traceparent: Any, tracestate: Any = None) -> TraceContext | None:
    """The context these header values carry, or None when ``traceparent`` is absent or not valid
    W3C Trace Context (then, as the recommendation says, it is ignored and a new trace starts).
    A later version's traceparent is read as version 00; a ``tracestate`` that is too long or not
    printable ASCII is dropped, the traceparent kept."""
    if not isinstance(traceparent, str):
        return None
    value = traceparent.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and len(value) != 55:
        return None
    if version != "00" and len(value) > 55 and value[55] != "-":
        return None
    state = tracestate.strip() if isinstance(tracestate, str) else None
    if not state or len(state) > MAX_TRACESTATE_CHARS or not TRACESTATE_PATTERN.match(state):
        state = None
    return TraceContext(f"00-{trace_id}-{span_id}-{flags}", state)


def new_trace_context() -> TraceContext:
    """A context of a new trace, sampled: what a sender without OpenTelemetry starts with."""
    return TraceContext(f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")


# The context the current delivery passes on (see propagating); destinations read it.
_PROPAGATED: ContextVar[TraceContext | None] = ContextVar("ipai_bus_propagated_trace", default=None)


@contextmanager
def propagating(context: TraceContext | None) -> Iterator[None]:
    """Within the block, ``outgoing_headers`` passes on ``context`` (a delivery's span)."""
    token = _PROPAGATED.set(context)
    try:
        yield
    finally:
        _PROPAGATED.reset(token)


def outgoing_headers(stored: TraceContext | None) -> dict[str, str]:
    """The trace headers a destination sends: the current delivery's span when one is being
    recorded, else the event's stored context unchanged; none when the event has none."""
    context = _PROPAGATED.get() or stored
    return context.headers() if context is not None else {}


class Span:
    """A span being recorded, or (without OpenTelemetry) a stand-in whose ``context`` is the
    context to pass on."""

    def __init__(self, context: TraceContext | None, span: Any = None) -> None:
        self.context = context
        self._span = span

    @property
    def recording(self) -> bool:
        return self._span is not None

    def set(self, name: str, value: Any) -> None:
        """Set one attribute (ignored when not recording, or when ``value`` is None)."""
        if self._span is not None and value is not None:
            self._span.set_attribute(name, value)

    def fail(self, error_type: str, description: str | None = None) -> None:
        """Mark the span failed: ``error.type`` and an error status with ``description``."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute(ATTR_ERROR_TYPE, error_type)
            self._span.set_status(Status(StatusCode.ERROR, description))

    def link_all(self, contexts: Iterable[TraceContext | None]) -> None:
        """Link the span to these contexts (a batch's receive span to each event's creation)."""
        if self._span is None or not hasattr(self._span, "add_link"):
            return
        for context in contexts:
            if context is not None:
                self._span.add_link(_remote_span(context).get_span_context())

    def end(self, end_ns: int | None = None) -> None:
        if self._span is not None:
            self._span.end(end_time=end_ns)


class Tracer:
    """Starts spans; without OpenTelemetry (or with export off) every span is a stand-in that
    passes its parent's context on, or a new one for a span without a parent when ``origin``."""

    enabled = False

    def start(
        self,
        name: str,
        kind: str,
        parent: TraceContext | Span | None = None,
        attributes: Mapping[str, Any] | None = None,
        *,
        links: Sequence[TraceContext] = (),
        start_ns: int | None = None,
        origin: bool = False,
    ) -> Span:
        """Start a span of ``kind`` (client, server, producer, consumer, internal) under
        ``parent``; end it with ``Span.end``."""
        context = parent.context if isinstance(parent, Span) else parent
        if context is None and origin:
            context = new_trace_context()
        return Span(context)

    @contextmanager
    def span(
        self,
        name: str,
        kind: str,
        parent: TraceContext | Span | None = None,
        attributes: Mapping[str, Any] | None = None,
        *,
        links: Sequence[TraceContext] = (),
        origin: bool = False,
    ) -> Iterator[Span]:
        """A span around the block; an exception marks it failed with its type's name."""
        started = self.start(name, kind, parent, attributes, links=links, origin=origin)
        try:
            yield started
        except BaseException as error:
            started.fail(type(error).__name__, str(error)[:200])
            raise
        finally:
            started.end()


class _OpenTelemetryTracer(Tracer):
    enabled = True

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer
        self._kinds = {
            "client": trace.SpanKind.CLIENT,
            "server": trace.SpanKind.SERVER,
            "producer": trace.SpanKind.PRODUCER,
            "consumer": trace.SpanKind.CONSUMER,
            "internal": trace.SpanKind.INTERNAL,
        }

    def start(
        self,
        name: str,
        kind: str,
        parent: TraceContext | Span | None = None,
        attributes: Mapping[str, Any] | None = None,
        *,
        links: Sequence[TraceContext] = (),
        start_ns: int | None = None,
        origin: bool = False,
    ) -> Span:
        from opentelemetry.context import Context

        remote = parent.context if isinstance(parent, Span) else parent
        parent_context: Any = Context()  # a root: never whatever span happens to be current
        if isinstance(parent, Span) and parent.recording:
            parent_context = self._trace.set_span_in_context(parent._span)
        elif remote is not None:
            parent_context = self._trace.set_span_in_context(_remote_span(remote))
        span = self._tracer.start_span(
            name,
            context=parent_context,
            kind=self._kinds[kind],
            attributes={key: value for key, value in (attributes or {}).items() if value is not None},
            links=[self._trace.Link(_remote_span(link).get_span_context()) for link in links],
            start_time=start_ns,
        )
        return Span(self._context_of(span), span)

    @staticmethod
    def _context_of(span: Any) -> TraceContext | None:
        found = span.get_span_context()
        if not found.is_valid:
            return None
        state = found.trace_state.to_header() or None
        return TraceContext(
            f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}", state
        )


def _remote_span(context: TraceContext) -> Any:
    """``context`` as OpenTelemetry's span of another process (a parent or a link)."""
    from opentelemetry import trace

    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=int(context.trace_id, 16),
            span_id=int(context.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(context.traceparent[53:55], 16)),
            trace_state=trace.TraceState.from_header([context.tracestate or ""]),
        )
    )


_lock = threading.Lock()
_tracer: Tracer | None = None
_service_name = "ipai-bus"


def set_service_name(name: str) -> None:
    """The service name spans are exported under unless OTEL_SERVICE_NAME says otherwise; set
    before the first span (each command sets its own: ipai-bus-receiver, ipai-bus-router)."""
    global _service_name
    _service_name = name


def tracer() -> Tracer:
    """The process's tracer: recording when the ``otel`` extra is installed and export is
    configured (see the module's docstring), else one that only passes contexts on."""
    global _tracer
    if _tracer is None:
        with _lock:
            if _tracer is None:
                _tracer = _configured_tracer()
    return _tracer


def reconfigure() -> None:
    """Forget the tracer, so the next ``tracer()`` reads the environment again (benchmarks
    comparing export on and off in one process)."""
    global _tracer
    with _lock:
        _tracer = None


def export_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for spans to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _configured_tracer() -> Tracer:
    try:
        from opentelemetry import trace
    except ImportError:
        return Tracer()
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracer()
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _OpenTelemetryTracer(trace.get_tracer("ipai_bus"))  # the process set its own up
    if not export_configured():
        return Tracer()
    try:
        provider = _sdk_provider()
    except ImportError as missing:
        log.warning(
            "tracing: OTEL_* variables are set but %s is not installed: pip install 'ipai-bus[otel]'",
            missing.name,
        )
        return Tracer()
    trace.set_tracer_provider(provider)
    return _OpenTelemetryTracer(trace.get_tracer("ipai_bus"))


def _sdk_provider() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {SERVICE_NAME: _service_name})
    provider = TracerProvider(resource=resource)
    exporters = [
        name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    ]
    for name in filter(None, exporters):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            log.warning(
                "tracing: OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name
            )
    return provider


def flush(timeout_seconds: float = 5.0) -> None:
    """Export the spans still buffered (a process about to exit calls it)."""
    if not tracer().enabled:
        return
    from opentelemetry import trace

    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_seconds * 1000))


def now_ns() -> int:
    """The clock spans are timed by (epoch nanoseconds)."""
    return time.time_ns()


def messaging(operation: str, name: str | None = None) -> dict[str, Any]:
    """The messaging attributes of an ``operation`` on the bus (create, send, receive, process,
    settle); ``name`` is the system's own name for it when that differs (ack, fail)."""
    return {
        ATTR_SYSTEM: SYSTEM,
        ATTR_OPERATION_TYPE: operation,
        ATTR_OPERATION_NAME: name or operation,
        ATTR_DESTINATION: BUS_DESTINATION,
    }
