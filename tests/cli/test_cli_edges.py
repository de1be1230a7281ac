"""Errors at the edges of the CLI: a broker that is down, a malformed URL, a state directory that is a file.

Each one is one line on stderr, no traceback, and the documented exit code:
1 for an error, 78 (EX_CONFIG) for a setting that cannot work. Secrets in
URLs never reach the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coda_bridge.cli.main import main
from coda_bridge.cli.options import safe_url
from coda_bridge.devtools.localredis import free_port
from coda_bridge.ops.exits import EX_CONFIG
from coda_bridge.ops.pidfile import pid_file_for

PASSWORD = "s3cr3t-pw"
MALFORMED = {
    "no scheme": "localhost:6379",
    "bad port": f"redis://:{PASSWORD}@localhost:notaport/0",
    "http scheme": "http://localhost:6379/0",
    "sentinel without service": f"redis+sentinel://:{PASSWORD}@s1:26379,s2:26379",
    "sentinel bad port": f"redis+sentinel://:{PASSWORD}@s1:26379,s2:port/coda-broker/0",
}


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def node_env(clean_env: pytest.MonkeyPatch, private_key_pem: str) -> pytest.MonkeyPatch:
    """A provisioned node (identity from the environment) whose cloud and probes port lead nowhere."""
    clean_env.setenv("CODA_JWT_PRIVATE_KEY", private_key_pem)
    clean_env.setenv("CODA_JWT_KEY_ID", "kid-1")
    clean_env.setenv("CODA_QPU_ID", "qpu-edge")
    clean_env.setenv("CODA_VPN_REQUIRED", "false")
    clean_env.setenv("CODA_WEBAPP_URL", f"http://127.0.0.1:{free_port()}")
    clean_env.setenv("CODA_PORT", str(free_port()))
    return clean_env


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main()`` in this process: its exit code, stdout and stderr (an uncaught exception fails the test)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed program in a child process (for commands that exec or supervise)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "coda-bridge"), *args],
        check=False,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(err: str, *, contains: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    assert err.startswith("error: "), err
    assert contains in err, err
    assert PASSWORD not in err


# -- the broker is down --


@pytest.mark.parametrize("args", [["replay", "--list"], ["replay"], ["replay", "j-1", "j-2"]])
def test_replay_with_the_broker_down_names_the_broker(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    node_env.setenv("CODA_BROKER_URL", url)
    code, out, err = run_main(capsys, *args)
    assert code == 1
    assert out == ""
    assert_one_line(err, contains=f"the broker at {safe_url(url)} does not answer")
    assert "CODA_BROKER_URL" in err


@pytest.mark.parametrize("args", [["replay", "--list"], ["pause", "--for", "1m"]])
def test_a_broker_whose_sentinels_do_not_answer_is_named_in_one_line(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/coda-broker/0"
    node_env.setenv("CODA_BROKER_URL", url)
    code, out, err = run_main(capsys, *args)
    assert code == 1
    assert out == ""
    assert_one_line(err, contains=f"the broker at {safe_url(url)} does not answer")


@pytest.mark.e2e
def test_replay_of_a_job_that_is_not_dead_lettered_fails_with_one_line(
    node_env: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Given a broker that holds no dead letter
    node_env.setenv("CODA_BROKER_URL", redis_url)
    # When a job is named for replay, in a child process as an operator runs it
    done = run_cli("replay", "j-not-there")
    # Then it exits 1 with one line naming the job, and re-queues nothing
    assert done.returncode == 1
    assert done.stdout == ""
    assert_one_line(done.stderr, contains="no dead-lettered message for job(s) j-not-there")
    assert "replay --list" in done.stderr


def test_status_with_the_broker_down_still_says_stopped(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node_env.setenv("CODA_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = run_main(capsys, "status")
    assert code == 3
    assert err == ""
    assert "qpu:         qpu-edge\n" in out  # no "(None)" for an unset display name
    assert "queues:      broker unreachable: " in out


# -- a malformed broker URL --


@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("args", [["doctor"], ["replay", "--list"]])
def test_a_malformed_broker_url_is_a_config_error_naming_the_setting(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], url: str
) -> None:
    node_env.setenv("CODA_BROKER_URL", url)
    code, out, err = run_main(capsys, *args)
    assert code == EX_CONFIG
    assert out == ""
    assert_one_line(err, contains=f"CODA_BROKER_URL={safe_url(url)!r} is not a valid Redis URL: ")


@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
def test_status_names_a_malformed_broker_url_on_its_queues_line(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    node_env.setenv("CODA_BROKER_URL", url)
    code, out, err = run_main(capsys, "status")
    assert code == 3  # status keeps its meaning: the node is stopped
    assert err == ""
    assert f"queues:      unknown (CODA_BROKER_URL={safe_url(url)!r} is not a valid Redis URL: " in out
    assert PASSWORD not in out


def test_a_malformed_persisted_cloud_redis_url_is_named_too(
    node_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node_env.setenv("CODA_REDIS_URL", "cloud-redis:6379")
    code, _, err = run_main(capsys, "doctor")
    assert code == EX_CONFIG
    assert_one_line(err, contains="CODA_REDIS_URL='cloud-redis:6379' is not a valid Redis URL")


@pytest.mark.parametrize(
    "args", [["start"], ["start", "--daemon"], ["bridge"], ["worker", "jobs"], ["web"]], ids=" ".join
)
@pytest.mark.e2e
def test_processes_refuse_a_malformed_broker_url_before_starting(
    node_env: pytest.MonkeyPatch, args: list[str]
) -> None:
    url = MALFORMED["bad port"]
    node_env.setenv("CODA_BROKER_URL", url)
    pid_file = pid_file_for(Path(os.environ["CODA_STATE_DIR"]))
    try:
        done = run_cli(*args)
    finally:
        if pid_file.exists():  # it started after all: stop it rather than leave a node running
            run_cli("stop")
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    assert done.stdout == ""
    assert_one_line(done.stderr, contains=f"CODA_BROKER_URL={safe_url(url)!r} is not a valid Redis URL")


@pytest.mark.parametrize(("raw", "shown"), [("0", "0"), ("-1", "-1"), ("abc", "'abc'")])
@pytest.mark.e2e
def test_a_bad_result_process_count_is_refused_before_a_worker_starts(
    node_env: pytest.MonkeyPatch, raw: str, shown: str
) -> None:
    # Given a delivery process count that cannot work (and a broker nothing listens on)
    node_env.setenv("CODA_RESULT_PROCESSES", raw)
    node_env.setenv("CODA_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    # When the results worker is started, then it is refused with one line naming the variable, exit 78
    done = run_cli("worker", "results")
    assert done.returncode == EX_CONFIG, done.stdout + done.stderr
    assert done.stdout == ""
    assert_one_line(done.stderr, contains=f"CODA_RESULT_PROCESSES={shown} is not valid")


# -- the state directory is unusable --


def test_stop_and_reset_with_a_state_dir_that_is_a_file(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("")
    clean_env.setenv("CODA_STATE_DIR", str(not_a_dir))
    # the pid file is in the runtime directory: no node of this state directory runs
    code, out, err = run_main(capsys, "stop")
    assert (code, out, err) == (0, "coda-bridge is not running\n", "")
    code, _, err = run_main(capsys, "reset", "--yes")
    assert code == 1
    assert_one_line(err, contains=f"cannot reset {not_a_dir}: it is not a directory")


@pytest.mark.e2e
def test_worker_with_a_state_dir_that_cannot_be_created(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    clean_env.setenv("CODA_STATE_DIR", str(tmp_path / "file" / "state"))
    done = run_cli("worker", "jobs")
    assert done.returncode == EX_CONFIG
    assert_one_line(done.stderr, contains="cannot be created: Not a directory")


def test_demo_with_a_workdir_that_cannot_be_created(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / "work"
    code, _, err = run_main(capsys, "demo", "--workdir", str(workdir))
    assert code == 1
    assert_one_line(err, contains=f"--workdir {workdir} cannot be created: Not a directory")


# -- the simulator's URL --


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:8765", "it must start with http:// or https://"),
        (f"http://admin:{PASSWORD}@127.0.0.1:99999", "Port out of range"),
        ("http:///x", "it names no host"),
    ],
)
def test_submit_refuses_a_malformed_devcloud_url(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str, problem: str
) -> None:
    circuit = tmp_path / "c.qasm"
    circuit.write_text("OPENQASM 3;\nqubit[1] q;\nbit[1] c;\nh q[0];\nc = measure q;\n")
    code, _, err = run_main(capsys, "submit", str(circuit), "--devcloud-url", url)
    assert code == EX_CONFIG
    assert_one_line(
        err, contains=f"--devcloud-url (or CODA_DEVCLOUD_URL) {safe_url(url)!r} is not a valid URL"
    )
    assert problem in err


# -- the last safety net in main() --


def test_main_turns_a_stray_redis_error_into_one_line(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(**kwargs: object) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    clean_env.setattr("coda_bridge.ops.doctor.run_checks", broken)
    code, _, err = run_main(capsys, "doctor")
    assert code == 1
    assert_one_line(err, contains="Redis error (ConnectionError): Error 111 connecting to 127.0.0.1:1.")
    with pytest.raises(redis.ConnectionError):
        main(["--debug", "doctor"])


def test_main_turns_a_stray_requests_error_into_one_line_without_the_query(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    request = requests.Request("GET", f"http://u:{PASSWORD}@127.0.0.1:1/api/x?token={PASSWORD}").prepare()

    def broken(**kwargs: object) -> None:
        raise requests.ConnectionError(
            f"Max retries exceeded with url: /api/x?token={PASSWORD}", request=request
        )

    clean_env.setattr("coda_bridge.ops.doctor.run_checks", broken)
    code, _, err = run_main(capsys, "doctor")
    assert code == 1
    assert_one_line(err, contains="HTTP request to http://127.0.0.1:1/api/x failed (ConnectionError)")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{PASSWORD}@h:1/0", "redis://h:1/0"),
        (f"redis://user:p@ss{PASSWORD}@h:1/0", "redis://h:1/0"),
        (f"unix://:{PASSWORD}@/run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        (f"redis://h:1/0?password={PASSWORD}&db=1", "redis://h:1/0?password=***&db=1"),
        (f"user:{PASSWORD}@h:1", "h:1"),
    ],
)
def test_safe_url_drops_passwords_even_from_malformed_urls(url: str, shown: str) -> None:
    assert safe_url(url) == shown
