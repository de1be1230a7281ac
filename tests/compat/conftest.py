"""Fixtures of the compat tests: real backends of the first runtime in an environment of their own.

See ``support/compat_env.py`` for how that environment is built and cached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
# Helpers and the README-shaped executor live in support/, importable by name.
sys.path.insert(0, str(SUPPORT))

from compat_env import CompatUnavailable, compat_environment  # noqa: E402


@pytest.fixture(scope="session")
def compat_python() -> Path:
    """The compat environment's interpreter; the test is skipped, with the reason, when it cannot be built."""
    try:
        return compat_environment()
    except CompatUnavailable as exc:
        pytest.skip(str(exc))
