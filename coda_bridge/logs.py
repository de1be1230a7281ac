"""Logging set-up shared by every process, with secrets masked on the way out.

Every process that configures logging writes the same format: text
(:data:`FORMAT`) or, with ``CODA_LOG_FORMAT=json``, one JSON object per
line.  The handlers already on the root logger (dramatiq's, in a worker
process) get the same formatter, so a node's log reads as one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from typing import Any

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "SecretFilter",
    "configure_logging",
    "iso_time",
    "json_logging",
    "log_formatter",
    "mask",
]

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"
#: What ``CODA_LOG_FORMAT`` (the ``log_format`` setting) may be.
LOG_FORMATS = ("text", "json")
#: The variable read when a process configures logging before its settings are loaded.
LOG_FORMAT_VARIABLE = "CODA_LOG_FORMAT"

_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_JWT = re.compile(r"\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]{6,}")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.I)
_TRACEBACKS = logging.Formatter()


def iso_time(timestamp: float) -> str:
    """``timestamp`` (epoch seconds) as ISO 8601 in UTC, to the millisecond: ``...T20:53:30.513Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mask(text: str) -> str:
    """``text`` with private keys, JWTs and bearer values replaced."""
    text = _PEM.sub("[private key]", text)
    text = _JWT.sub("[jwt]", text)
    return _BEARER.sub(r"\1[secret]", text)


class SecretFilter(logging.Filter):
    """A last line of defence: no key, JWT or bearer value leaves through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(_TRACEBACKS.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, process, pid, logger, message, any traceback."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "process": record.processName,
            "pid": record.process,
            "thread": record.threadName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def json_logging(log_format: str | None = None) -> bool:
    """Whether ``log_format`` (default: ``CODA_LOG_FORMAT``, else text) asks for JSON lines."""
    return (log_format or os.environ.get(LOG_FORMAT_VARIABLE) or "text").strip().lower() == "json"


def log_formatter(log_format: str | None = None) -> logging.Formatter:
    """The formatter of ``log_format`` (default: ``CODA_LOG_FORMAT``, else text); unknown values mean text."""
    return JsonFormatter() if json_logging(log_format) else logging.Formatter(FORMAT)


def configure_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """Root logging to stderr in the node's one format, with the secret filter on every handler."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level)
    formatter = log_formatter(log_format)
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:  # ours or dramatiq's; never a test's capture handler
            handler.setFormatter(formatter)
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    logging.getLogger("urllib3").setLevel(logging.WARNING)
