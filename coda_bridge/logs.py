"""Logging set-up shared by every process, with secrets masked on the way out."""

from __future__ import annotations

import logging
import re

__all__ = ["SecretFilter", "configure_logging", "mask"]

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"

_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_JWT = re.compile(r"\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]{6,}")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.I)
_TRACEBACKS = logging.Formatter()


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


def configure_logging(level: str = "INFO") -> None:
    """Root logging to stderr with the secret filter on every handler."""
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    logging.getLogger("urllib3").setLevel(logging.WARNING)
