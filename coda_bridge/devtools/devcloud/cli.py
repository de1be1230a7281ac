"""The ``devcloud`` click group: run the simulator, or drive a running one.

Without a sub-command it serves (``python -m coda_bridge.devtools.devcloud --port
8765``); the sub-commands call a running simulator's admin API at ``--url``
(``CODA_DEVCLOUD_URL``).  The main CLI mounts this group as
``coda-bridge devcloud``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from .admin_client import DevCloudClient
from .app_factory import DEFAULT_API_PREFIX
from .cloud_records import OFFLINE_AFTER_SEC
from .server import DEFAULT_HOST, DEFAULT_PORT, REQUIRED_HEADERS_VARIABLE, serve
from .transport import DevCloudError

__all__ = ["devcloud"]

#: Where the sub-commands find the simulator unless ``--url`` says otherwise.
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
#: The cloud Redis the simulator uses unless ``--redis-url`` says otherwise.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

F = TypeVar("F", bound=Callable[..., Any])


def _header_map(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str]:
    """``--required-headers`` as a mapping of header names to values."""
    if not value:
        return {}
    try:
        headers = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg})") from None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise click.BadParameter("expected a JSON object of header names to text values")
    return headers


def _serve_options(func: F) -> F:
    options = [
        click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on."),
        click.option(
            "--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port to listen on (0: any)."
        ),
        click.option(
            "--redis-url",
            envvar="CODA_DEVCLOUD_REDIS_URL",
            default=DEFAULT_REDIS_URL,
            show_default=True,
            help="The cloud's Redis: job streams, status hashes, cancel keys; handed out in bundles.",
        ),
        click.option(
            "--state-file", type=click.Path(dir_okay=False), help="Keep QPUs, tokens and jobs here."
        ),
        click.option("--public-url", help="Base URL to hand out instead of the one each request uses."),
        click.option("--api-prefix", default=DEFAULT_API_PREFIX, show_default=True, help="Node API prefix."),
        click.option(
            "--accept-unknown-jobs",
            is_flag=True,
            help="Record results for jobs not submitted here (else 404).",
        ),
        click.option(
            "--access-log/--no-access-log", default=True, show_default=True, help="Log each request."
        ),
        click.option(
            "--required-headers",
            envvar=REQUIRED_HEADERS_VARIABLE,
            callback=_header_map,
            help=(
                "JSON object of headers every node API request must carry, else 401, as a staging cloud "
                f"behind deployment protection (better in {REQUIRED_HEADERS_VARIABLE}: argv is public)."
            ),
        ),
        click.option(
            "--no-date",
            is_flag=True,
            help="Answer with no usable Date header (a cloud whose clock a node cannot learn).",
        ),
        click.option(
            "--offline-after-sec",
            type=click.FloatRange(min=0, min_open=True),
            default=OFFLINE_AFTER_SEC,
            show_default=True,
            help="A QPU shows offline this long after its last accepted heartbeat.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _serve(
    *,
    host: str,
    port: int,
    redis_url: str,
    state_file: str | None,
    public_url: str | None,
    api_prefix: str,
    accept_unknown_jobs: bool,
    access_log: bool,
    required_headers: dict[str, str],
    no_date: bool,
    offline_after_sec: float,
) -> None:
    serve(
        host,
        port,
        redis_url=redis_url or None,
        state_file=state_file,
        public_base_url=public_url,
        api_prefix=api_prefix,
        accept_unknown_jobs=accept_unknown_jobs,
        access_log=access_log,
        required_headers=required_headers,
        no_date=no_date,
        offline_after_sec=offline_after_sec,
    )


@click.group(invoke_without_command=True)
@_serve_options
@click.pass_context
def devcloud(ctx: click.Context, **serve_args: Any) -> None:
    """Local stand-in for the Coda cloud: serve it (no sub-command), or drive a running one."""
    if ctx.invoked_subcommand is None:
        _serve(**serve_args)


@devcloud.command("serve")
@_serve_options
def serve_command(**serve_args: Any) -> None:
    """Serve the simulator until Ctrl-C or SIGTERM."""
    _serve(**serve_args)


def _client_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--url`` and turns the simulator's refusals into clean CLI errors."""

    @click.option(
        "--url",
        envvar="CODA_DEVCLOUD_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The running simulator.",
    )
    @functools.wraps(func)
    def wrapper(url: str, **kwargs: Any) -> Any:
        try:
            return func(DevCloudClient(url), **kwargs)
        except DevCloudError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@devcloud.command("create-qpu")
@click.argument("qpu_id")
@click.option("--name", help="Display name (default: the id).")
@click.option(
    "--gate-set", type=click.Choice(["cz", "iswap", "pcz", "cnot"]), default="cz", show_default=True
)
@click.option("--num-qubits", type=int, default=5, show_default=True)
@click.option("--mode", type=click.Choice(["https", "vpn"]), default="https", show_default=True)
@click.option("--ovpn", type=click.File("r"), help="OpenVPN client profile to hand out (vpn mode).")
@click.option("--bundle-redis-url", help="Redis URL to hand this QPU instead of the simulator's.")
@click.option("--replace", is_flag=True, help="Reset an existing QPU of that id.")
@_client_command
def create_qpu(
    client: DevCloudClient,
    *,
    qpu_id: str,
    name: str | None,
    gate_set: str,
    num_qubits: int,
    mode: str,
    ovpn: IO[str] | None,
    bundle_redis_url: str | None,
    replace: bool,
) -> None:
    """Register a QPU."""
    view = client.create_qpu(
        qpu_id,
        display_name=name,
        native_gate_set=gate_set,
        num_qubits=num_qubits,
        connection_mode=mode,
        client_profile_ovpn=ovpn.read() if ovpn else None,
        redis_url=bundle_redis_url,
        replace=replace,
    )
    _echo_json(view)


@devcloud.command("mint-token")
@click.argument("qpu_id")
@click.option("--expires-in", type=float, help="Seconds until the token expires (default: never).")
@_client_command
def mint_token(client: DevCloudClient, qpu_id: str, expires_in: float | None) -> None:
    """Print a one-time node token for a QPU (for `coda-bridge bridge --token`)."""
    click.echo(client.mint_token(qpu_id, expires_in_sec=expires_in))


@devcloud.command("revoke-token")
@click.argument("token")
@_client_command
def revoke_token(client: DevCloudClient, token: str) -> None:
    """Revoke a node token."""
    _echo_json(client.revoke_token(token))


@devcloud.command("submit")
@click.argument("qpu_id")
@click.option("--ir", "ir_file", type=click.File("r"), help="IR JSON file ('-' for stdin).")
@click.option("--ir-json", help="Raw ir_json text, sent as is (not validated unless --validate).")
@click.option(
    "--qasm", "qasm_file", type=click.File("r"), help="OpenQASM file, compiled for the QPU's gate set."
)
@click.option("--shots", default="1000", show_default=True, help="Shots (sent raw when not an integer).")
@click.option("--count", type=int, default=1, show_default=True, help="Submit this many copies (bulk).")
@click.option("--job-id", help="Job id (single submit only).")
@click.option("--validate/--no-validate", default=None, help="Check the circuit before the XADD.")
@click.option("--expect-noop", is_flag=True, help="Expect the no-op executor's all-zero counts.")
@_client_command
def submit(
    client: DevCloudClient,
    *,
    qpu_id: str,
    ir_file: IO[str] | None,
    ir_json: str | None,
    qasm_file: IO[str] | None,
    shots: str,
    count: int,
    job_id: str | None,
    validate: bool | None,
    expect_noop: bool,
) -> None:
    """XADD a job (or --count jobs) to the QPU's stream; prints the job ids."""
    ir = json.loads(ir_file.read()) if ir_file else None
    qasm = qasm_file.read() if qasm_file else None
    shot_value: int | str = int(shots) if shots.strip().lstrip("-").isdigit() else shots
    expect = "noop" if expect_noop else None
    if count > 1:
        if job_id:
            raise click.UsageError("--job-id needs --count 1")
        ids = client.submit_bulk(
            qpu_id, count, ir, shot_value, ir_json=ir_json, qasm=qasm, validate=validate, expect=expect
        )
    else:
        ids = [
            client.submit(
                qpu_id,
                ir,
                shot_value,
                ir_json=ir_json,
                qasm=qasm,
                job_id=job_id,
                validate=validate,
                expect=expect,
            )
        ]
    for one in ids:
        click.echo(one)


@devcloud.command("cancel")
@click.argument("job_id")
@_client_command
def cancel(client: DevCloudClient, job_id: str) -> None:
    """Set the cloud's cancel key for a job."""
    client.cancel(job_id)
    click.echo(f"cancel requested for {job_id}")


@devcloud.command("results")
@click.argument("job_id", required=False)
@click.option("--qpu-id", help="Only this QPU's jobs.")
@_client_command
def results(client: DevCloudClient, job_id: str | None, qpu_id: str | None) -> None:
    """Show every job's result, or one job in full (deliveries, Redis status)."""
    _echo_json(client.job(job_id) if job_id else client.results(qpu_id))


@devcloud.command("stats")
@click.option("--qpu-id", help="Only this QPU's jobs.")
@_client_command
def stats(client: DevCloudClient, qpu_id: str | None) -> None:
    """Job totals and XADD-to-webhook latency."""
    _echo_json(client.stats(qpu_id))


@devcloud.command("heartbeats")
@click.option("--qpu-id", help="Only this QPU's heartbeats.")
@_client_command
def heartbeats(client: DevCloudClient, qpu_id: str | None) -> None:
    """Show the heartbeats received."""
    _echo_json(client.heartbeats(qpu_id))


@devcloud.command("webhooks")
@click.option("--job-id", help="Only this job's deliveries.")
@click.option("--qpu-id", help="Only this QPU's deliveries.")
@_client_command
def webhooks(client: DevCloudClient, job_id: str | None, qpu_id: str | None) -> None:
    """Show the result webhooks received."""
    _echo_json(client.webhooks(job_id, qpu_id=qpu_id))


@devcloud.command("fault")
@click.argument("kind", type=click.Choice(["connect", "heartbeat", "webhook", "health", "all"]))
@click.argument("status", type=int)
@click.option("--seconds", type=float, help="Answer STATUS for this long.")
@click.option("--count", type=int, help="Answer STATUS for the next COUNT requests.")
@click.option("--job-id", help="Only webhooks of this job.")
@click.option("--delay", type=float, help="Also wait this many seconds before answering.")
@click.option("--lost-response", is_flag=True, help="Handle the request, then answer STATUS anyway.")
@_client_command
def fault(
    client: DevCloudClient,
    *,
    kind: str,
    status: int,
    seconds: float | None,
    count: int | None,
    job_id: str | None,
    delay: float | None,
    lost_response: bool,
) -> None:
    """Make KIND requests fail with STATUS for --seconds or --count requests."""
    view = client.set_fault(
        kind, status, seconds, job_id, count=count, delay_sec=delay, lost_response=lost_response
    )
    _echo_json(view)


@devcloud.command("clear-faults")
@_client_command
def clear_faults(client: DevCloudClient) -> None:
    """Remove every fault."""
    click.echo(f"cleared {client.clear_faults()} fault(s)")


@devcloud.command("reset")
@click.option("--redis", "with_redis", is_flag=True, help="Also delete the Redis keys the simulator wrote.")
@_client_command
def reset(client: DevCloudClient, with_redis: bool) -> None:
    """Forget all QPUs, tokens, jobs and recorded requests."""
    client.reset(redis=with_redis)
    click.echo("reset")
