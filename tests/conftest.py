"""Fixtures that start real things and clean up after themselves."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.devtools.devcloud import DevCloudClient, DevCloudProcess, start_devcloud_process
from coda_bridge.devtools.localredis import LocalRedis

TESTS = Path(__file__).resolve().parent
# Helpers and the test executor live beside the tests, importable by name.
sys.path.insert(0, str(TESTS / "support"))

#: A fixture declared with one of these scopes serves many tests of a module (a node, a key pair).
_SHARED_SCOPE = re.compile(r"""scope=["'](?:module|class|package)["']""")


@functools.cache
def _shares_fixtures(path: Path) -> bool:
    """Whether the test file, or a ``conftest.py`` above it in ``tests/``, declares a shared-scope fixture."""
    sources = [
        path,
        *(folder / "conftest.py" for folder in path.parents if TESTS in (folder, *folder.parents)),
    ]
    return any(source.is_file() and _SHARED_SCOPE.search(source.read_text()) for source in sources)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's ``--dist loadgroup`` (the Makefile's): a file whose tests may share a module's
    fixture is one unit of work, so one worker starts its node once; every other test goes alone to
    whichever worker is free.  (The ``xdist_group`` mark is not used: pytest-xdist 3.8 cannot apply
    it on pytest 9, whose nodes keep their id elsewhere.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    # Units go out in collection order, which puts the longest first (``pytest_collection_modifyitems``),
    # not re-sorted by their number of tests.
    config.option.loadscopereorder = False

    class SharedFixtureScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _shares_fixtures(config.rootpath / path) else super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


def _cost_rank(unit: tuple[bool, list[pytest.Item]]) -> int:
    """0 for a unit with a fault test, 1 for an end-to-end test or a file sharing fixtures, 2 for the rest."""
    shared, items = unit
    if any(item.get_closest_marker("fault") for item in items):
        return 0
    return 1 if shared or any(item.get_closest_marker("e2e") for item in items) else 2


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: fault tests, then end-to-end tests and files sharing fixtures, then the rest.

    pytest-xdist hands units of work out in this order, so a minute-long test is not the last one
    started (a long tail on one worker while the others idle).  A file sharing fixtures stays one
    block in its own order (its module's node is started once); the sort is stable, so the same
    collection always gives the same order, as pytest-xdist requires of its workers.
    """
    units: dict[str, tuple[bool, list[pytest.Item]]] = {}
    for item in items:
        shared = _shares_fixtures(item.path)
        units.setdefault(str(item.path) if shared else item.nodeid, (shared, []))[1].append(item)
    items[:] = [item for _, unit in sorted(units.values(), key=_cost_rank) for item in unit]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One real redis-server for the whole session; tests use separate key names or flush it."""
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    """A clean database on the shared server."""
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    client.close()


@pytest.fixture
def clean_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> pytest.MonkeyPatch:
    """No CODA_ variable from the outside world, a private state dir, and no site files."""
    import os

    for name in list(os.environ):
        if name.startswith("CODA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CODA_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("CODA_SETTINGS_FILES", str(tmp_path_factory.mktemp("cfg") / "settings.toml"))
    return monkeypatch


@pytest.fixture(scope="session")
def devcloud_process(redis_server: LocalRedis) -> Iterator[DevCloudProcess]:
    """One simulator process for the session, on a free port, always stopped at the end."""
    proc = start_devcloud_process(redis_url=redis_server.url)
    try:
        yield proc
    finally:
        proc.stop()
        assert not proc.alive()


@pytest.fixture
def devcloud(devcloud_process: DevCloudProcess) -> Iterator[DevCloudClient]:
    """An admin client of the session's simulator, with no fault left over from another test."""
    client = devcloud_process.client()
    client.clear_faults()
    yield client
    client.clear_faults()
    client.close()


#: multiprocessing's helpers (the simulator's fork server, and its resource tracker): each ends when
#: the process that started it does, so they are not left running.
_MULTIPROCESSING_HELPERS = (
    b"from multiprocessing.forkserver import main",
    b"from multiprocessing.resource_tracker import main",
)


def _ends_with_us(proc: Path) -> bool:
    """Whether ``/proc/<pid>`` is a multiprocessing helper of this test process."""
    import os

    command = (proc / "cmdline").read_bytes()
    parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parent == os.getpid() and any(helper in command for helper in _MULTIPROCESSING_HELPERS)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Every process the suite starts carries a session mark; any still alive at the end fails the run."""
    import os
    import uuid

    from coda_bridge.ops.proctree import alive, kill_tree

    mark = f"PYTEST_CODA_SESSION={uuid.uuid4().hex}".encode()
    os.environ["PYTEST_CODA_SESSION"] = mark.decode().split("=", 1)[1]
    yield

    def marked() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if mark in (entry / "environ").read_bytes().split(b"\0") and not _ends_with_us(entry):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return [pid for pid in found if alive(pid)]

    leftovers = marked()
    if leftovers:
        kill_tree(leftovers)
        pytest.fail(f"{len(leftovers)} process(es) outlived the test suite (killed now): {leftovers}")
