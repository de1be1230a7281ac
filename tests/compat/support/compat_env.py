"""Real backends of the first runtime against coda-bridge, in a virtual environment of their own.

coda-qubic (from ``../shared/compat/coda-qubic``, installed unchanged) and
coda-node 0.1.1 go into a separate environment layered on the test one: a
plain venv whose ``.pth`` file adds the site-packages named in
``COMPAT_TEST_SITE_DIRS`` (the running test venv's, set by
:func:`compat_environment`) behind its own.  So the node's processes run
with both coda-bridge and coda-qubic importable, while every other test keeps
discovering exactly what it did (coda-qubic's ``executor_factory`` module
never lands in the test venv).  The environment is built once per set of
inputs (the test venv's installed versions among them, not its path: a
fresh clone reuses it) and kept under
``~/.cache/coda-bridge``; a file lock makes a second builder (another
pytest-xdist worker, another session) wait for the first and use what it
built.
:func:`compat_environment` gives its interpreter, or raises
:class:`CompatUnavailable` saying why the packages cannot be installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SUPPORT = Path(__file__).resolve().parent
#: The coda-qubic snapshot; ``CODA_QUBIC_SRC`` points elsewhere.
QUBIC_SRC = Path(os.environ.get("CODA_QUBIC_SRC", REPO.parent / "shared" / "compat" / "coda-qubic"))
#: What the environment installs besides coda-qubic, pinned so the cache key names its whole content.
COMPAT_REQUIREMENTS = ("coda-node==0.1.1", "qiskit==2.6.2", "qiskit-aer==0.18.2")
#: What a finished environment must import.
IMPORT_CHECK = ("coda_bridge", "coda_node.server.ir", "coda_qubic.executor_factory", "qiskit_aer")
#: Bump when the way the environment is built changes (a new key, so a new environment).
LAYOUT_VERSION = "2"
#: The variable naming the test venv's site-packages (``os.pathsep``-separated) that the compat
#: environment adds behind its own; not ``CODA_``-prefixed, so a stack passes it to its processes.
SITE_DIRS_VARIABLE = "COMPAT_TEST_SITE_DIRS"
#: The compat environment's ``.pth`` line: at start-up, add the test venv's site-packages (their own
#: ``.pth`` files, the editable coda-bridge's among them, run too).
_PTH_LINE = (
    "import os, site; list(map(site.addsitedir, "
    f"filter(None, os.environ.get({SITE_DIRS_VARIABLE!r}, '').split(os.pathsep))))\n"
)
#: Where built environments are kept; ``CODA_COMPAT_CACHE`` points elsewhere.
CACHE_DIR = Path(os.environ.get("CODA_COMPAT_CACHE", Path.home() / ".cache" / "coda-bridge"))
#: Longest tail of pip's output quoted in a skip reason (characters).
REASON_MAX_CHARS = 600
#: Longest a whole environment build may take (seconds): two pip runs over the network.
BUILD_TIMEOUT_SEC = 600


def _test_site_dirs() -> list[str]:
    """The site-packages of the environment running the tests (with its editable coda-bridge)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _test_distributions() -> list[str]:
    """What the test venv has installed (``name==version``): pip left out what it found there."""
    found = {f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()}
    return sorted(found)


def _cache_key() -> str:
    digest = hashlib.sha256()
    for part in (LAYOUT_VERSION, _PTH_LINE, sys.version, *COMPAT_REQUIREMENTS, *_test_distributions()):
        digest.update(part.encode() + b"\0")
    for path in sorted(p for p in QUBIC_SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(QUBIC_SRC)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _run(argv: list[str]) -> None:
    """Run one build step; a failure raises with the step's output kept for the skip reason."""
    env = {**os.environ, SITE_DIRS_VARIABLE: os.pathsep.join(_test_site_dirs())}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SEC, check=False, env=env
    )
    if done.returncode != 0:
        tail = " ".join((done.stdout + done.stderr).split())[-REASON_MAX_CHARS:]
        raise RuntimeError(f"`{' '.join(argv[2:5])} ...` exited {done.returncode}: {tail}")


def _build(target: Path) -> None:
    """Build the environment at a temporary name, then rename it into place (a venv runs anywhere
    through ``python -m``; only its bin/ scripts name the old path, and none is used)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{target.name}.building-", dir=target.parent))
    try:
        _run([sys.executable, "-m", "venv", "--clear", str(building)])
        python = str(building / "bin" / "python")
        site_dir = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (Path(site_dir) / "zz_coda_bridge_tests.pth").write_text(_PTH_LINE, encoding="utf-8")
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
        _run([*pip, *COMPAT_REQUIREMENTS])
        _run([*pip, "--no-deps", "--ignore-requires-python", str(QUBIC_SRC)])
        _run([python, "-c", f"import {', '.join(IMPORT_CHECK)}"])
        try:
            building.rename(target)
        except OSError:  # another session finished the same environment first
            if not (target / "bin" / "python").exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


@contextlib.contextmanager
def _building(target: Path) -> Iterator[None]:
    """Hold the build lock of ``target`` (an exclusive ``flock``, released if the holder dies)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CompatUnavailable(Exception):
    """The compat packages cannot be installed here; the message says why."""


def compat_environment() -> Path:
    """The interpreter of the compat environment, built first when this set of inputs has none yet.

    Sets ``COMPAT_TEST_SITE_DIRS`` in this process's environment, so every process started from it
    (a stack's node among them) finds this test venv's coda-bridge.
    """
    os.environ[SITE_DIRS_VARIABLE] = os.pathsep.join(_test_site_dirs())
    if not (QUBIC_SRC / "pyproject.toml").is_file():
        raise CompatUnavailable(
            f"coda-qubic cannot be installed: no snapshot at {QUBIC_SRC} (set CODA_QUBIC_SRC)"
        )
    target = CACHE_DIR / f"compat-{_cache_key()}"
    python = target / "bin" / "python"
    if python.exists():
        return python
    try:
        with _building(target):
            if not python.exists():  # not built by whoever held the lock before
                _build(target)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise CompatUnavailable(f"the compat packages cannot be installed: {exc}") from exc
    return python
