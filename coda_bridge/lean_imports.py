"""What a process of the node imports no more of than it needs: dynaconf without Flask.

Every bridge and worker process (under ``start``, ``--one-process`` and the
Procfile's lines) calls :func:`import_dynaconf_without_flask` before its
first settings load; only the probes app serves Flask.
"""

from __future__ import annotations

import sys

__all__ = ["import_dynaconf_without_flask"]


def import_dynaconf_without_flask() -> None:
    """Import dynaconf without the Flask it loads for its Flask extension (about 20 MiB per process).

    dynaconf's ``contrib`` imports ``flask.config`` when Flask is installed;
    no bridge or worker process serves Flask, so the import is refused while
    dynaconf loads, and allowed again afterwards (a later ``import flask``
    works as usual; only dynaconf's own Flask extension is left out).
    """
    if "dynaconf" in sys.modules or "flask" in sys.modules:
        return
    sys.modules["flask"] = None  # type: ignore[assignment]  # makes `import flask...` raise ImportError
    try:
        import dynaconf  # noqa: F401, PLC0415 - here, with flask blocked: that is the point
    finally:
        del sys.modules["flask"]
