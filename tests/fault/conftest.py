"""A fault test that fails keeps its evidence: the node's logs, copied out of pytest's temporary directory.

pytest removes the temporary directories of older runs, so a failure seen
once (on a loaded machine, say) had lost its logs by the time anyone read
them.  The failure's report now shows where the logs were kept and the last
lines of each (:func:`fault_support.keep_evidence`).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from fault_support import keep_evidence


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    workdir = getattr(item, "funcargs", {}).get("tmp_path")
    if report.when == "call" and report.failed and isinstance(workdir, Path):
        report.sections.append(("fault evidence", keep_evidence(workdir, item.name)))
