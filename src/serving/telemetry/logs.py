"""Structured logs: one JSON object per line with the request id and trace id of the request
being served (from context variables the request tracker sets). Payloads are never logged:
only messages the code writes, and they never include tensor data."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("serving_request_id", default="")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            doc["request_id"] = request_id
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            doc["trace_id"] = f"{ctx.trace_id:032x}"
            doc["span_id"] = f"{ctx.span_id:016x}"
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = record.exc_info[0].__name__
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send the ``serving`` loggers to stderr as JSON lines (``fmt="json"``) or plain text."""
    logger = logging.getLogger("serving")
    handler = logging.StreamHandler(sys.__stderr__)  # not a stream Serve may have redirected
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
