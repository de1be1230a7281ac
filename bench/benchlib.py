"""Shared pieces of the benchmark scripts: machine facts, tables, RESULTS.md, /proc readings, stacks.

Every script in bench/ runs a real node (``LocalStack``: two private Redis
servers, the local cloud simulator, the bridge and dramatiq workers as
processes) and measures it from outside, with the simulator's own clocks
(XADD time and webhook arrival time) or from ``/proc``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from coda_bridge.devtools.devcloud.admin_client import DevCloudClient
from coda_bridge.devtools.localredis import find_redis_server
from coda_bridge.devtools.stack import LocalStack, descendants

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: What ``--mode procfile`` runs: the repo Procfile's own command lines (``coda-bridge bridge``, ...).
PROCFILE = REPO_ROOT / "Procfile"
RESULTS_PATH = BENCH_DIR / "RESULTS.md"
#: Clock ticks per second, for /proc/<pid>/stat utime and stime.
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where the coda-node comparison venv lives (gitignored).
CODA_NODE_VENV = BENCH_DIR / ".venv-coda-node"
CODA_NODE_VERSION = "0.1.1"


# -- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return math.nan


def redis_version() -> str:
    out = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


def machine_summary() -> str:
    """One line: cores, memory, CPU model, OS, Python, Redis."""
    return (
        f"{os.cpu_count()} cores ({_cpu_model()}), {_mem_total_gib():.1f} GiB memory, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"Redis {redis_version()}"
    )


# -- tables and RESULTS.md ------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def command_line() -> str:
    """The command that ran this script, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO_ROOT))
    except ValueError:
        shown = str(script)
    prefix = [f"PYTHONPATH={os.environ['PYTHONPATH']}"] if os.environ.get("PYTHONPATH") else []
    return shlex.join([*prefix, "python", shown, *sys.argv[1:]])


def code_version() -> str:
    """The commit the library code was measured at, and whether coda_bridge/ or actors/ had edits."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "coda_bridge", "actors")
    return f"{sha}{' + uncommitted edits of the library' if dirty else ''}"


def append_results(
    title: str, tables: Sequence[str], notes: Sequence[str] = (), *, write: bool = True
) -> str:
    """Print a section and (unless ``write`` is false) append it to bench/RESULTS.md."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"## {title}",
        "",
        f"- date: {now}",
        f"- machine: {machine_summary()}",
        f"- code: git {code_version()}",
        f"- command: `{command_line()}`",
        "",
    ]
    for table in tables:
        parts += [table, ""]
    parts += [f"{note}" for note in notes]
    section = "\n".join(parts).rstrip() + "\n"
    print()
    print(section)
    if write:
        if not RESULTS_PATH.exists():
            RESULTS_PATH.write_text(
                "# Benchmark results\n\nAppended by the scripts in bench/ (see README.md).\n"
            )
        with RESULTS_PATH.open("a", encoding="utf-8") as handle:
            handle.write("\n" + section)
    return section


# -- numbers ------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the simulator's ``/stats`` uses the same rule)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "count": float(len(ordered)),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else math.nan,
    }


def ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


# -- /proc ----------------------------------------------------------------------------------------


def _kib_field(path: str, key: str) -> int:
    """The KiB value of ``key`` in a /proc file (0 when the process is gone or the key absent)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of one process in clock ticks ((0, 0) when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


def family(pid: int) -> list[int]:
    """A process and every descendant."""
    return [pid, *descendants(pid)]


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(own RSS, RSS of the process and all its descendants) in MiB."""
    own = rss_kib(pid)
    total = sum(rss_kib(p) for p in family(pid))
    return own / 1024, total / 1024


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# -- stacks ---------------------------------------------------------------------------------------

#: The no-op executor, named (a node with no executor refuses to start).
NOOP_ENV = {"CODA_EXECUTOR_FACTORY": "noop"}


def python_path(*extra: Path) -> str:
    return os.pathsep.join(filter(None, [*(str(p) for p in extra), os.environ.get("PYTHONPATH")]))


def start_stack(env: Mapping[str, str] | None = None, *, web: bool = False, **kwargs: Any) -> LocalStack:
    """A started stack whose node runs the no-op executor unless ``env`` names another."""
    stack = LocalStack(env={**NOOP_ENV, **(env or {})}, web=web, **kwargs)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_idle_workers(seconds: float = 1.0) -> None:
    """Give freshly started workers time to import, connect and reach their idle wait."""
    time.sleep(seconds)


def wait_delivered(
    cloud: DevCloudClient, qpu_id: str, count: int, timeout_sec: float, *, poll_sec: float = 0.5
) -> dict[str, Any]:
    """Poll the simulator's stats until ``count`` jobs of ``qpu_id`` got a result; the last stats."""
    deadline = time.monotonic() + timeout_sec
    while True:
        stats = cloud.stats(qpu_id)
        if stats["delivered"] >= count:
            return stats
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stats['delivered']} of {count} results after {timeout_sec:g} s")
        time.sleep(poll_sec)


def job_views(
    cloud: DevCloudClient, qpu_id: str, job_ids: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    views = cloud.jobs(qpu_id)
    if job_ids is None:
        return views
    wanted = set(job_ids)
    return [v for v in views if v["job_id"] in wanted]


def throughput(views: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(jobs/s, seconds) from the first XADD to the last first-delivery of ``views``."""
    first = min(float(v["submitted_at"]) for v in views)
    last = max(float(v["first_delivery_at"]) for v in views if v["first_delivery_at"] is not None)
    seconds = last - first
    return len(views) / seconds, seconds


def noop_circuit(n: int = 2, tag: str = "bench") -> dict[str, Any]:
    """A small valid ``cz`` circuit (the no-op executor ignores it)."""
    return {
        "version": "1.0",
        "target": "cz",
        "num_qubits": n,
        "gates": [
            {"gate": "ry", "qubits": [0], "params": [1.5707963]},
            {"gate": "cz", "qubits": [0, 1], "params": []},
        ],
        "measurements": list(range(n)),
        "metadata": {"source_hash": f"ok:{tag}", "compiled_at": "2026-01-01T00:00:00Z"},
    }


# -- the first runtime, coda-node, as a peer -----------------------------------------------------------


def ensure_coda_node_venv() -> Path:
    """The ``coda-node`` command of a private venv with coda-node==0.1.1, created on first use."""
    exe = CODA_NODE_VENV / "bin" / "coda-node"
    if exe.exists():
        return exe
    print(f"creating {CODA_NODE_VENV} with coda-node=={CODA_NODE_VERSION} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(CODA_NODE_VENV)], check=True)
    pip = CODA_NODE_VENV / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", f"coda-node=={CODA_NODE_VERSION}"],
        check=True,
    )
    return exe


class CodaNodeProcess:
    """``coda-node start --token ...`` against a stack's simulator, with its state in a private TMPDIR."""

    def __init__(
        self, stack: LocalStack, qpu_id: str, *, port: int, env: Mapping[str, str] | None = None
    ) -> None:
        self.exe = ensure_coda_node_venv()
        self.stack = stack
        self.qpu_id = qpu_id
        self.port = port
        self.home = stack.workdir / f"coda-node-{qpu_id}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = stack.workdir / f"coda-node-{qpu_id}.log"
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.stack.devcloud is not None
        token = self.stack.cloud.mint_token(self.qpu_id)
        drop = ("CODA_", "VIRTUAL_ENV", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            {
                # the first runtime keeps coda.config and its key under the temp dir
                "TMPDIR": str(self.home),
                "CODA_WEBAPP_URL": self.stack.devcloud.base_url,
                "CODA_VPN_REQUIRED": "false",
                "SETUPTOOLS_USE_DISTUTILS": "stdlib",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        argv = [str(self.exe), "start", "--token", token, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.stack.cloud.heartbeats(self.qpu_id, accepted=True):
            if self.process.poll() is not None:
                raise RuntimeError(f"coda-node exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"coda-node sent no heartbeat within 30 s; see {self.log_path}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                for pid in family(self.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                self.process.wait()
        self.process = None


#: What a dramatiq worker process logs once it consumes.
WORKER_READY_LINE = "Worker process is ready for action"


def ready_lines(stack: LocalStack, name: str) -> int:
    path = stack.workdir / f"{name}.log"
    return path.read_text(errors="replace").count(WORKER_READY_LINE) if path.exists() else 0


def start_worker(stack: LocalStack, name: str, timeout_sec: float = 30.0, **kwargs: Any) -> None:
    """Start (or restart) a dramatiq worker process of the stack and wait until it consumes."""
    before = ready_lines(stack, name)
    stack.start_process(name, **kwargs)
    deadline = time.monotonic() + timeout_sec
    while ready_lines(stack, name) <= before:
        if not stack.children[name].alive():
            raise RuntimeError(f"{name} exited at start:\n{stack.log_tail(name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after {timeout_sec:g} s")
        time.sleep(0.05)


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between their users) in KiB; 0 when unknown."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def role(pid: int, root: int) -> str:
    """What one process of a ``coda-bridge start`` tree is, from its command line."""
    line = cmdline(pid)
    parent_line = cmdline(parent_pid(pid))
    if pid == root:
        return "start (supervisor)"
    if "coda_bridge.ops.runners" in line:
        part = line.split("coda_bridge.ops.runners", 1)[1].split()
        queue = line.split("--queues", 1)[1].split()[0] if "--queues" in line else None
        return queue or (part[0] if part else "runner")
    if line.endswith("-m coda_bridge bridge") or " -m coda_bridge bridge " in line:
        return "bridge"
    if "dramatiq" in line and "--queues" in line:
        queue = line.split("--queues", 1)[1].split()[0]
        under_master = "-m dramatiq" in parent_line
        kind = "worker process" if under_master else "master"
        return f"{queue} ({kind})"
    if "gunicorn" in line:
        under_master = "gunicorn" in parent_line
        return "web (gunicorn worker)" if under_master else "web (gunicorn master)"
    return line[:60] or f"pid {pid}"


class StartedNode:
    """``coda-bridge start`` run as a user would, against a stack started with ``processes=False``."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = stack.workdir / "start.log"
        self.ready_url = f"http://127.0.0.1:{stack.web_port}/ready"

    def start(self, *, token: bool, timeout_sec: float = 90.0) -> float:
        """Start the node; seconds from the ``coda-bridge start`` command to the first ``/ready`` 200."""
        import requests

        argv = ["coda-bridge", "start"]
        if token:
            argv += ["--token", self.stack.cloud.mint_token(self.stack.qpu_id)]
        exe = Path(sys.executable).with_name("coda-bridge")
        argv[0] = str(exe) if exe.exists() else "coda-bridge"
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.stack.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        session = requests.Session()
        while True:
            try:
                if session.get(self.ready_url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"coda-bridge start exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() - started > timeout_sec:
                raise TimeoutError(f"/ready not 200 after {timeout_sec:g} s; see {self.log_path}")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def roles(self) -> dict[int, str]:
        return {pid: role(pid, self.pid) for pid in family(self.pid)}

    def pid_of(self, wanted: str) -> int:
        return next(pid for pid, name in self.roles().items() if name == wanted)

    def stop(self, timeout_sec: float = 60.0) -> float:
        """SIGTERM (drain) and wait; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(timeout_sec)
        except subprocess.TimeoutExpired:
            for pid in family(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.process.wait()
        self.process = None
        return time.monotonic() - started
