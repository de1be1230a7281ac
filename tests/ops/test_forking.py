"""Parts forked from a preloading supervisor: their command line, environment, group, output and restarts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from coda_bridge.devtools.stack import wait_until
from coda_bridge.ops.output_relay import MAX_LINE_BYTES
from coda_bridge.ops.proctree import alive, process_tree

#: Real processes (a supervisor and what it forks): the end-to-end tier.
pytestmark = pytest.mark.e2e

#: The entry point of the forked parts: it reports what it sees, then runs until SIGTERM.
PART = """
import json, os, signal, sys, time

import preloaded_marker

def main():
    name, mode, report = sys.argv[1:4]
    seen = {
        "argv": sys.argv,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "env_part": os.environ.get("PART_ONLY"),
        "env_driver": os.environ.get("DRIVER_ONLY"),
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "sigint_python": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "preloaded_imports": preloaded_marker.IMPORTS,
        "cmdline": open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip(),
    }
    if mode == "flood":  # before the report: the test stops the part once it has reported
        sys.stdout.write("x" * 300000)
        print(" and then a line")
    with open(report, "a") as handle:
        handle.write(json.dumps(seen) + "\\n")
    print(f"hello from {name}")
    if mode == "loud":  # a line of 2,000 characters after another, counting them in a file
        for count in range(1, 100_000):
            print("y" * 2000)
            if count % 100 == 0:
                with open(report + ".lines", "w") as handle:
                    handle.write(str(count))
    if mode == "config":
        raise SystemExit(78)
    if mode == "crash":
        raise RuntimeError("the part broke")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.05)

if __name__ == "__main__":
    main()
"""

#: Counts its own imports: 1 in every part means the supervisor's import was inherited.
MARKER = """
import os
IMPORTS = int(os.environ.get("MARKER_IMPORTS", "0")) + 1
os.environ["MARKER_IMPORTS"] = str(IMPORTS)
"""

DRIVER = """
import json, os, sys
from coda_bridge.ops.forking import preload
from coda_bridge.ops.group import ProcessGroup
from coda_bridge.ops.process_list import ProcessSpec
config = json.load(open(sys.argv[1]))
preload(["preloaded_marker", "forkpart"])
group = ProcessGroup(drain_timeout_sec=10, backoff_start_sec=0.2, fork=config["fork"])
for name, argv, entry, env in config["procs"]:
    shared = {k: v for k, v in os.environ.items() if k != "DRIVER_ONLY"}
    group.add(ProcessSpec(name, tuple(argv), entry), {**shared, **env})
group.loop()
sys.exit(group.returncode)
"""


class Driver:
    """A supervisor process running a group of forked parts; each part appends what it saw to a report."""

    def __init__(
        self, tmp_path: Path, parts: dict[str, str], *, fork: bool = True, unread: bool = False
    ) -> None:
        (tmp_path / "forkpart.py").write_text(textwrap.dedent(PART))
        (tmp_path / "preloaded_marker.py").write_text(textwrap.dedent(MARKER))
        (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
        self.report = tmp_path / "report.jsonl"
        procs = [
            [
                name,
                [sys.executable, "-m", "forkpart", name, mode, str(self.report)],
                "forkpart:main",
                {"PART_ONLY": name},
            ]
            for name, mode in parts.items()
        ]
        (tmp_path / "config.json").write_text(json.dumps({"fork": fork, "procs": procs}))
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "DRIVER_ONLY": "1", "NO_COLOR": "1"}
        env.pop("MARKER_IMPORTS", None)
        self.output = tmp_path / "supervisor.out"  # a file: a pipe nobody reads would block the supervisor
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
                stdout=subprocess.PIPE if unread else out,  # a pipe nobody reads: a paused terminal
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )

    def seen(self) -> list[dict[str, Any]]:
        if not self.report.exists():
            return []
        return [json.loads(line) for line in self.report.read_text().splitlines()]

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> str:
        self.process.wait(timeout=30)
        return self.output.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            for pid in reversed(process_tree(self.process.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()


def test_a_forked_part_runs_its_command_line_in_its_own_group_and_environment(tmp_path: Path) -> None:
    # Given a supervisor that preloaded a module, with two parts forked from it
    driver = Driver(tmp_path, {"alpha": "run", "beta": "run"})
    try:
        wait_until(lambda: len(driver.seen()) == 2, 20, "both parts to report")
        seen = {s["argv"][1]: s for s in driver.seen()}
        # When the supervisor is stopped
        out = driver.stop()
    finally:
        driver.kill()

    # Then each part ran as `python -m forkpart NAME ...` would, forked, not started anew
    for name, part in seen.items():
        assert part["argv"] == [str(tmp_path / "forkpart.py"), name, "run", str(driver.report)]
        assert part["ppid"] == driver.process.pid, "a child of the supervisor"
        assert part["pgid"] == part["pid"], "a process group of its own"
        assert part["env_part"] == name and part["env_driver"] is None, "its own environment only"
        assert part["sigterm_default"], "the supervisor's signal handlers are not inherited"
        assert part["sigint_python"], "Ctrl-C raises KeyboardInterrupt, as in any Python"
        assert len([fd for fd in part["fds"] if fd > 2]) <= 1, f"only listdir's own: {part['fds']}"
        assert part["preloaded_imports"] == 1, "the supervisor's import was inherited, not repeated"
        assert part["cmdline"] == f"{sys.executable} -m forkpart {name} run {driver.report}"
    # And their output came through the supervisor with its prefix, and the drain ended cleanly
    assert re.search(r"^\S+ alpha\s+\| hello from alpha$", out, re.MULTILINE), out
    assert re.search(r"^\S+ beta\s+\| hello from beta$", out, re.MULTILINE), out
    assert driver.process.returncode == 0, out


def test_a_forked_part_killed_with_sigkill_is_forked_again(tmp_path: Path) -> None:
    # Given a running forked part
    driver = Driver(tmp_path, {"alpha": "run"})
    try:
        wait_until(lambda: len(driver.seen()) == 1, 20, "the part to report")
        first = driver.seen()[0]["pid"]
        # When it is killed outright
        os.kill(first, signal.SIGKILL)
        # Then the supervisor forks it again (from the same preloaded state)
        wait_until(lambda: len(driver.seen()) == 2, 20, "the part to be forked again")
        second = driver.seen()[1]
        out = driver.stop()
    finally:
        driver.kill()
    assert second["pid"] != first and second["ppid"] == driver.process.pid
    assert second["preloaded_imports"] == 1
    assert "exited with signal SIGKILL" in out
    assert not alive(first) and not alive(second["pid"])


def test_parts_do_not_outlive_a_supervisor_killed_with_sigkill(tmp_path: Path) -> None:
    # Given two forked parts (each would keep consuming jobs if it were orphaned)
    driver = Driver(tmp_path, {"alpha": "run", "beta": "run"})
    parts: list[int] = []
    try:
        wait_until(lambda: len(driver.seen()) == 2, 20, "both parts to report")
        parts = [s["pid"] for s in driver.seen()]
        # When the supervisor is killed outright (it cannot signal anyone)
        driver.process.kill()
        driver.process.wait()
        # Then the kernel ends its parts too
        wait_until(lambda: not any(alive(pid) for pid in parts), 10, "the parts to die with it")
    finally:
        driver.kill()
        for pid in parts:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_line_longer_than_the_limit_is_passed_on_in_pieces(tmp_path: Path) -> None:
    # Given a part that writes 300,000 characters without a newline, then ends the line
    driver = Driver(tmp_path, {"alpha": "flood"})
    try:
        wait_until(lambda: len(driver.seen()) == 1, 20, "the part to report")
        out = driver.stop()
    finally:
        driver.kill()
    # Then it all came through, in pieces no longer than the limit, with the prefix on each
    pieces = [line.split("| ", 1)[1] for line in out.splitlines() if "alpha" in line and "| x" in line]
    assert "".join(pieces).count("x") == 300000
    assert max(len(piece) for piece in pieces) <= MAX_LINE_BYTES
    assert len(pieces) >= 300000 // MAX_LINE_BYTES


def test_a_reader_that_stopped_reading_does_not_stop_the_supervisor(tmp_path: Path) -> None:
    # Given a supervisor whose output nobody reads (a terminal paused with Ctrl-S), and a loud part
    driver = Driver(tmp_path, {"alpha": "loud"}, unread=True)
    lines = Path(f"{driver.report}.lines")
    try:
        # far more than the pipe and the supervisor's buffer hold
        wait_until(lambda: lines.exists() and int(lines.read_text() or 0) >= 3000, 60, "6 MB of output")
        # When it is told to stop, while still nobody reads
        driver.process.send_signal(signal.SIGTERM)
        # Then it drains and exits all the same
        driver.process.wait(timeout=30)
    finally:
        driver.kill()
        assert driver.process.stdout is not None
        driver.process.stdout.close()
    assert driver.process.returncode == 0


def test_a_forked_part_that_exits_78_stops_the_group_with_78(tmp_path: Path) -> None:
    driver = Driver(tmp_path, {"alpha": "config", "beta": "run"})
    try:
        out = driver.wait()
    finally:
        driver.kill()
    assert driver.process.returncode == 78, out
    assert "alpha exited with a configuration error (code 78); not restarting it." in out
    # and beta, told to stop maybe before it even ran a line, stopped on that SIGTERM, not by force
    assert "beta stopped (rc=0)" in out and "killing every process now" not in out


def test_a_forked_part_that_raises_shows_its_traceback_and_is_restarted(tmp_path: Path) -> None:
    driver = Driver(tmp_path, {"alpha": "crash"})
    try:
        wait_until(lambda: len(driver.seen()) >= 2, 20, "the part to be started again")
        out = driver.stop()
    finally:
        driver.kill()
    assert "RuntimeError: the part broke" in out
    assert "alpha (pid" in out and "exited with code 1" in out


def test_without_forking_the_same_parts_run_their_command_lines(tmp_path: Path) -> None:
    # Given a group told not to fork: each part is an exec of its command line
    driver = Driver(tmp_path, {"alpha": "run"}, fork=False)
    try:
        wait_until(lambda: len(driver.seen()) == 1, 20, "the part to report")
        out = driver.stop()
    finally:
        driver.kill()
    part = driver.seen()[0]
    assert part["argv"] == [str(tmp_path / "forkpart.py"), "alpha", "run", str(driver.report)]
    assert part["preloaded_imports"] == 2, "a fresh interpreter imports the module again"
    assert part["env_driver"] is None and part["env_part"] == "alpha"
    assert driver.process.returncode == 0, out


def test_a_process_with_a_second_thread_does_not_fork() -> None:
    # Given a fresh interpreter, which may fork, that then starts a second thread
    check = textwrap.dedent(
        """
        import threading
        from coda_bridge.ops.forking import can_fork
        alone = can_fork()
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        print(alone, can_fork())
        stop.set()
        thread.join()
        """
    )
    # Then forking is refused while the thread runs (a lock it held would stay held in the child)
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "False"]
