"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` variables; off by default.

Turn it on with ``OTEL_TRACES_EXPORTER=otlp`` (plus ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, OTLP over HTTP/protobuf) or ``console``; the
sampler comes from ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (SDK default:
parent-based always-on), the service name from ``OTEL_SERVICE_NAME`` (default ``serving``).

Spans, per request: ``infer`` (SERVER, continues a W3C ``traceparent`` from HTTP headers or
gRPC metadata) -> ``queue`` (waiting for its batch); a pipeline's request has a ``pipeline.step`` span per step,
with the step model's ``queue`` under it. Per model execution: ``batch``, a child
of the first request it served with a link to every request span, then ``model.run``.
Batch spans are recorded after the fact with their measured start and end times, so the
batcher's hot path only captures the request's span context.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

_enabled = False
_tracer = trace.get_tracer("serving")


def enabled() -> bool:
    return _enabled


def configure_from_env() -> bool:
    """Install a tracer provider as ``OTEL_TRACES_EXPORTER`` asks (``none``/unset: tracing off)."""
    global _enabled, _tracer
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "serving")})
    )
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console); ignored", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("serving")
    _enabled = True
    log.info("tracing on: exporters %s", names)
    return True


def shutdown() -> None:
    """Flush and stop the exporters (at process exit)."""
    provider = trace.get_tracer_provider()
    if _enabled and hasattr(provider, "shutdown"):
        provider.shutdown()


class RequestSpan:
    """The ``infer`` span of one request, current while the request is served."""

    __slots__ = ("_span", "_token")

    def __init__(self, carrier: Mapping[str, str], protocol: str, model: str, version: str) -> None:
        parent = propagate.extract(carrier)
        self._span = _tracer.start_span(
            "infer",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"serving.protocol": protocol, "serving.model": model, "serving.version": version},
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, outcome: str, version: str) -> None:
        self._span.set_attribute("serving.outcome", outcome)
        self._span.set_attribute("serving.version", version)
        if outcome != "ok":
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        otel_context.detach(self._token)
        self._span.end()


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
    """A child span of the current one around a block (a pipeline step): spans started inside,
    the step model's queue and batch spans included, nest under it. Nothing when tracing is off."""
    if not _enabled or not trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=dict(attributes)):
        yield


def current_span_context() -> SpanContext | None:
    """The current request's span context, or None (tracing off, or no request span)."""
    if not _enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def record_batch(
    attributes: Mapping[str, Any],
    traces: Sequence[SpanContext | None],
    queue_ns: Sequence[int],
    start_ns: int,
    input_ns: int,
    infer_ns: int,
    output_ns: int,
    rows: int,
    error: str | None = None,
) -> None:
    """Record the queue spans of a batch's requests, the batch span and its model run.

    ``start_ns`` is the batch's start on the monotonic clock; durations are nanoseconds.
    """
    to_wall = time.time_ns() - time.monotonic_ns()
    start = start_ns + to_wall
    requests = [t for t in traces if t is not None]
    for t, waited in zip(traces, queue_ns):
        if t is not None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(t))
            _tracer.start_span("queue", context=parent, start_time=start - waited, attributes=dict(attributes)).end(
                end_time=start
            )
    if not requests:
        return
    parent = trace.set_span_in_context(trace.NonRecordingSpan(requests[0]))
    batch = _tracer.start_span(
        "batch",
        context=parent,
        links=[Link(t) for t in requests],
        start_time=start,
        attributes={**attributes, "serving.batch_size": rows, "serving.batch_requests": len(traces)},
    )
    run = _tracer.start_span(
        "model.run",
        context=trace.set_span_in_context(batch),
        start_time=start + input_ns,
        attributes=dict(attributes),
    )
    if error is not None:
        run.set_status(Status(StatusCode.ERROR, error))
        batch.set_status(Status(StatusCode.ERROR, error))
    run.end(end_time=start + input_ns + infer_ns)
    batch.end(end_time=start + input_ns + infer_ns + output_ns)
