"""One log format for every process: text, or one JSON object per line (issue 16, item 4)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from coda_bridge import ConfigError, load_settings
from coda_bridge.logs import FORMAT, configure_logging

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """A plain StreamHandler on the root logger with a foreign format, as dramatiq installs one."""
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [PID %(process)d] [%(name)s] %(message)s"))
    saved, level = root.handlers[:], root.level
    root.handlers = [handler]
    try:
        yield out
    finally:
        root.handlers, root.level = saved, level


def test_json_format_is_one_masked_object_per_line_on_handlers_already_there(
    root_stream: io.StringIO,
) -> None:
    # given dramatiq's handler on the root logger; when logging is configured for JSON
    configure_logging("INFO", "json")
    logging.getLogger("coda_bridge.test").warning("key is %s", PEM)
    # then the line is a JSON object with the fields, and the key is masked
    entry = json.loads(root_stream.getvalue().strip())
    assert (entry["level"], entry["logger"], entry["pid"]) == ("WARNING", "coda_bridge.test", os.getpid())
    assert entry["message"] == "key is [private key]"


def test_text_format_replaces_a_foreign_one(root_stream: io.StringIO) -> None:
    # given dramatiq's handler; when logging is configured with the default format
    configure_logging("INFO", "text")
    logging.getLogger("coda_bridge.test").info("hello")
    # then the line has our text format, not dramatiq's
    line = root_stream.getvalue().strip()
    assert FORMAT.endswith("%(message)s") and line.endswith("MainProcess coda_bridge.test: hello")
    assert "[PID" not in line


def test_a_process_configured_by_the_environment_logs_json() -> None:
    # given CODA_LOG_FORMAT=json; when a process configures logging without naming a format
    code = "import logging; from coda_bridge.logs import configure_logging as c; c(); logging.warning('up')"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "CODA_LOG_FORMAT": "json"}, capture_output=True,
        text=True, check=False, timeout=30,
    )  # fmt: skip
    # then its stderr is JSON
    assert json.loads(done.stderr.strip())["message"] == "up"


def test_an_unknown_log_format_is_a_setting_error(clean_env: pytest.MonkeyPatch) -> None:
    # given CODA_LOG_FORMAT=xml; when settings load, then it is refused, naming the variable
    clean_env.setenv("CODA_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"CODA_LOG_FORMAT='xml' is not valid: .*text or json"):
        load_settings()
    clean_env.setenv("CODA_LOG_FORMAT", "JSON")
    assert load_settings().log_format == "json"
