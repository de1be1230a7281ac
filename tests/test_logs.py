"""The secret filter: keys, JWTs and bearer values never leave through a log handler."""

from __future__ import annotations

import io
import logging

from coda_bridge.cloud.signing import Signer, generate_private_key_pem
from coda_bridge.logs import SecretFilter, mask


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger(f"test-secret-filter-{id(out)}")
    logger.addHandler(handler)
    logger.propagate = False
    return logger, out


def test_messages_and_tracebacks_are_masked() -> None:
    key = generate_private_key_pem()
    token = Signer(key, "k", "q").sign()
    logger, out = _logger()

    logger.warning("header was Bearer %s and key %s", token, key)
    try:
        raise RuntimeError(f"gateway echoed Authorization: Bearer {token}")
    except RuntimeError:
        logger.exception("delivery failed")

    text = out.getvalue()
    assert token not in text
    assert key.splitlines()[1] not in text
    assert "[secret]" in text
    assert "delivery failed" in text and "RuntimeError" in text


def test_mask_leaves_ordinary_text_alone() -> None:
    assert mask("job j-1 completed in 3.2 ms") == "job j-1 completed in 3.2 ms"
