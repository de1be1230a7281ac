"""Commands to check and try a node: ``doctor``, ``submit``, ``demo``, and the ``devcloud`` group."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import CodaError, ConfigError
from ..logs import mask
from .options import (
    DEFAULT_DEVCLOUD_URL,
    check_http_url,
    check_redis_urls,
    node_settings,
    plain_settings,
    site_option,
)

__all__ = ["demo", "devcloud_group", "doctor", "submit"]


@click.command()
@site_option
def doctor(site: str | None) -> None:
    """Check settings, credentials, endpoints, executor, both Redis and the VPN (exit 1 on a problem).

    \b
    Example:
      coda-bridge doctor
    """
    from ..ops.doctor import run_checks, setting_lines  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    settings = _refuse_malformed_redis_urls(site)
    checks = run_checks(site=site)
    for check in checks:
        click.echo(mask(check.line()))
    if settings is not None:
        click.echo("settings (value, and the layer it came from):")
        for line in setting_lines(settings, site=site):
            click.echo(f"     {mask(line)}")
    failed = sum(1 for check in checks if not check.ok)
    click.echo(f"{len(checks) - failed} ok, {failed} to fix")
    if failed:
        sys.exit(1)


def _refuse_malformed_redis_urls(site: str | None) -> Any:
    """A Redis URL redis-py cannot parse stops ``doctor`` with its setting named (its PING would raise).

    Settings that do not load at all are left to ``run_checks``, which reports them as a check.
    Returns the settings that loaded (None when none did).
    """
    for load in (node_settings, plain_settings):
        try:
            settings = load(site)
        except ConfigError:
            continue
        check_redis_urls(settings)
        return settings
    return None


@click.command()
@click.argument("circuit", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--devcloud-url",
    envvar="CODA_DEVCLOUD_URL",
    default=DEFAULT_DEVCLOUD_URL,
    show_default=True,
    help="The local cloud simulator.",
)
@click.option("--qpu", "qpu_id", envvar="CODA_QPU_ID", help="QPU id (default: the simulator's only QPU).")
@click.option("--shots", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--target",
    type=click.Choice(["cz", "iswap", "pcz", "cnot"]),
    help="Gate set to convert OpenQASM to (default: the QPU's).",
)
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds --wait waits.")
def submit(  # noqa: PLR0917  (one parameter per click option)
    circuit: Path,
    devcloud_url: str,
    qpu_id: str | None,
    shots: int,
    target: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send a circuit (IR JSON, or OpenQASM 3) to a QPU through the local cloud simulator.

    \b
    Examples:
      coda-bridge submit bell.qasm --qpu my-qpu --shots 500 --wait
      coda-bridge submit circuit.json --devcloud-url http://127.0.0.1:8765
    """
    from ..devtools.devcloud.admin_client import DevCloudClient  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    from ..devtools.submit import format_result, submit_circuit  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    check_http_url(devcloud_url, "--devcloud-url (or CODA_DEVCLOUD_URL)")
    client = DevCloudClient(devcloud_url)
    job_id, _ = submit_circuit(client, circuit, qpu_id=qpu_id, shots=shots, target=target)
    click.echo(job_id)
    if wait:
        result = _wait_showing_progress(client, job_id, timeout)
        click.echo(format_result(result))
        if result.get("status") != "completed":
            sys.exit(1)


#: How often ``submit --wait`` looks at the job, in seconds.
SUBMIT_POLL_SEC = 0.2


def _wait_showing_progress(client: Any, job_id: str, timeout_sec: float) -> dict[str, Any]:
    """The job's result; each state it passes through (queued, executing...) is shown on stderr."""
    deadline = time.monotonic() + timeout_sec
    shown = None
    while True:
        job = client.job(job_id)
        state = (job.get("status") or {}).get("state") or "waiting for the node"
        if state != shown:
            click.echo(f"{job_id}: {state}", err=True)
            shown = state
        if job.get("result") is not None:
            result: dict[str, Any] = job["result"]
            return result
        if time.monotonic() >= deadline:
            raise CodaError(
                f"no result for job {job_id} after {timeout_sec:g} s (last state: {state}); "
                "is a node running for this QPU?"
            )
        time.sleep(SUBMIT_POLL_SEC)


@click.command()
@click.option("--shots", type=click.IntRange(100), default=1000, show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep logs and state here (default: a temporary directory, removed afterwards).",
)
def demo(shots: int, workdir: Path | None) -> None:
    """Run a whole local node, submit sample circuits and check every result (needs nothing set up).

    \b
    Example:
      coda-bridge demo
    """
    from ..devtools.demo import run_demo  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem

    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CodaError(f"--workdir {workdir} cannot be created: {exc.strerror or exc}") from None
    if not run_demo(shots=shots, workdir=workdir):
        sys.exit(1)


def devcloud_group() -> click.Group | None:
    try:
        from ..devtools.devcloud.cli import devcloud  # noqa: PLC0415 - CLI start-up: each command loads its own subsystem
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return None
    group = copy.copy(devcloud)
    group.epilog = (
        "\b\nExamples:\n"
        "  coda-bridge devcloud --port 8765 --redis-url redis://127.0.0.1:6379/0\n"
        "  coda-bridge devcloud create-qpu my-qpu --num-qubits 5\n"
        "  coda-bridge devcloud mint-token my-qpu"
    )
    return group
