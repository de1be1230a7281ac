"""Nothing from the working directory runs as the node: `coda-bridge start` run from a hostile folder.

Each test starts a real node (``coda-bridge start``, against the local
cloud) with a working directory holding code or settings another user
planted, and checks that none of it is imported or obeyed.  The node runs
as root here, as the attack needs; the planted files belong to ``nobody``
(uid 65534).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_support import circuit, node_env

from coda_bridge.devtools.stack import LocalStack, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="plants files owned by another user: needs root"),
]

#: The stranger who planted the files.
NOBODY = 65534
#: How long a node gets to connect and run a job.
RUN_SEC = 90


def _plant(path: Path, text: str, *, owner: int = NOBODY, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    os.chown(path, owner, owner)
    path.chmod(mode)


def _marker_module(marker: Path) -> str:
    """Module source that records it ran (as the node would) in ``marker``, and offers an executor."""
    return f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported as uid %d" % __import__("os").geteuid())

        class Executor:
            def run(self, ir, shots):
                counts = {{"0" * len(ir.measurements): shots}}
                return {{"counts": counts, "execution_time_ms": 1, "shots_completed": shots}}

        def create_executor():
            return Executor()
        """


@pytest.fixture
def hostile_cwd(tmp_path: Path) -> Path:
    """A world-writable folder owned by another user, the node's working directory."""
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    folder.chmod(0o777)
    tmp_path.chmod(0o755)
    return folder


@pytest.fixture
def started(cloud_stack: LocalStack) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Nodes started by a test; each is stopped (SIGTERM, then SIGKILL) at the end."""
    nodes: list[subprocess.Popen[bytes]] = []
    yield nodes
    for node in nodes:
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def _start(
    stack: LocalStack, cwd: Path, nodes: list[subprocess.Popen[bytes]], **env: str
) -> subprocess.Popen[bytes]:
    """``coda-bridge start`` (the console script, as an operator runs it) in ``cwd``, output to a log."""
    environment = node_env(stack, **env)
    environment.pop("CODA_EXECUTOR_FACTORY", None)
    log = (stack.workdir / "start.log").open("ab")
    node = subprocess.Popen(
        [str(Path(sys.executable).parent / "coda-bridge"), "start"],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    nodes.append(node)
    return node


def _log(stack: LocalStack) -> str:
    return (stack.workdir / "start.log").read_text(errors="replace")


def test_a_planted_package_and_actors_module_are_never_imported(
    cloud_stack: LocalStack, hostile_cwd: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    # given a world-writable working directory where a stranger planted a discoverable executor
    # package and an actors.py that would shadow the node's actors
    evil_ran = cloud_stack.workdir / "evilpkg-ran"
    shadow_ran = cloud_stack.workdir / "actors-shadowed"
    package = hostile_cwd / "evilpkg"
    package.mkdir()
    os.chown(package, NOBODY, NOBODY)
    _plant(package / "__init__.py", "")
    _plant(package / "executor_factory.py", _marker_module(evil_ran))
    _plant(hostile_cwd / "actors.py", _marker_module(shadow_ran))

    # when root starts a node there, with no executor configured, and a job comes
    node = _start(cloud_stack, hostile_cwd, started)
    job_id = cloud_stack.cloud.submit(cloud_stack.qpu_id, circuit(1), 10)
    wait_until(
        lambda: cloud_stack.cloud.result(job_id) is not None or node.poll() is not None,
        RUN_SEC,
        "the job's result or the node's exit",
    )

    # then neither planted module ran, in any process of the node
    log = _log(cloud_stack)
    assert not evil_ran.exists(), log
    assert not shadow_ran.exists(), log
    assert "evilpkg" not in log


@pytest.mark.parametrize("yaml_owner", [0, NOBODY], ids=["root-yaml", "foreign-yaml"])
def test_a_device_yaml_never_gets_a_module_from_the_working_directory_imported(
    cloud_stack: LocalStack, tmp_path: Path, started: list[subprocess.Popen[bytes]], yaml_owner: int
) -> None:
    # given a site folder whose device.yaml names a module that sits in the working directory
    cwd = tmp_path / "lab"
    evil_ran = cloud_stack.workdir / "evilmod-ran"
    _plant(cwd / "site" / "device.yaml", "executor_factory: evilmod:create_executor\n", owner=yaml_owner)
    _plant(cwd / "evilmod.py", _marker_module(evil_ran))

    # when root starts a node there
    node = _start(cloud_stack, cwd, started)
    wait_until(lambda: node.poll() is not None, RUN_SEC, "the node to refuse its executor")

    # then it stops on a configuration error, naming why, and the module never ran
    log = _log(cloud_stack)
    assert node.returncode == 78, log
    assert not evil_ran.exists(), log
    if yaml_owner == NOBODY:
        assert "refusing device config site/device.yaml" in log
    else:
        assert "cannot import evilmod" in log


@pytest.mark.parametrize(("owner", "mode"), [(0, 0o666), (NOBODY, 0o644)], ids=["world-writable", "foreign"])
def test_a_settings_file_others_can_change_is_refused_and_doctor_says_so(
    tmp_path: Path, owner: int, mode: int
) -> None:
    # given config/settings.toml in the working directory that another user can change
    cwd = tmp_path / "lab"
    settings = cwd / "config" / "settings.toml"
    _plant(settings, '[default]\nwebapp_url = "https://elsewhere.example"\n', owner=owner, mode=mode)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env["CODA_STATE_DIR"] = str(tmp_path / "state")
    cli = str(Path(sys.executable).parent / "coda-bridge")

    # when a node starts there, and doctor looks
    start = subprocess.run([cli, "start"], check=False, cwd=cwd, env=env, capture_output=True, text=True)
    doctor = subprocess.run([cli, "doctor"], check=False, cwd=cwd, env=env, capture_output=True, text=True)

    # then start refuses in one line with exit 78, and doctor names the file
    assert start.returncode == 78, start.stdout + start.stderr
    lines = start.stderr.strip().splitlines()
    assert len(lines) == 1, start.stderr
    assert f"refusing settings file {settings}" in lines[0]
    assert "Traceback" not in start.stderr
    assert doctor.returncode != 0
    assert f"FIX: settings: refusing settings file {settings}" in doctor.stdout, doctor.stdout
