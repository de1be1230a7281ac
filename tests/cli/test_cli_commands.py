"""Every command has help with an example; errors are one line; reset, stop-vpn and logs on an idle node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from coda_bridge.cli.main import cli
from coda_bridge.identity.credentials import StatePaths, ensure_state_dir, write_private

COMMANDS = sorted(cli.list_commands(click.Context(cli)))


def test_every_command_of_the_issue_is_there() -> None:
    wanted = {"start", "stop", "status", "logs", "doctor", "stop-vpn", "reset", "replay", "bridge", "web"}
    wanted |= {"devcloud", "submit", "demo"}
    assert wanted <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output
    assert f"coda-bridge {name}" in result.output


@pytest.mark.e2e
def test_the_group_help_lists_the_commands_and_both_names_work() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("start", "doctor", "demo"))
    bin_dir = Path(sys.executable).parent
    for program in ("coda-bridge", "coda"):
        done = subprocess.run(
            [str(bin_dir / program), "--help"], check=False, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0
        assert "Examples:" in done.stdout


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coda_bridge", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(CODA_STATE_DIR=str(state), CODA_SETTINGS_FILES=str(state.parent / "none.toml"))
    return env


@pytest.mark.e2e
def test_errors_are_one_line_without_a_traceback_unless_debug(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    done = _run("logs", env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: no log file at ")
    debug = _run("--debug", "logs", env=env)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


@pytest.mark.e2e
def test_a_bad_setting_is_named_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    env["CODA_PORT"] = "not-a-port"
    done = _run("start", "--token", "t0k3n-secret", env=env)
    assert done.returncode == 78  # EX_CONFIG (issue 16)
    assert done.stderr.count("\n") == 1
    assert "CODA_PORT" in done.stderr
    assert "t0k3n-secret" not in done.stderr


@pytest.mark.e2e
def test_status_of_a_node_that_never_ran(tmp_path: Path) -> None:
    done = _run("status", env=_env(tmp_path / "state"))
    assert done.returncode == 3
    assert "coda-bridge: stopped" in done.stdout
    assert "not provisioned yet" in done.stdout
    # no log file is named that does not exist
    assert "log file:    none (the node has not been started with --daemon here)" in done.stdout
    assert "coda-bridge.log" not in done.stdout


def test_reset_removes_every_persisted_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: tmp_path)  # never the real /tmp
    state = Path(os.environ["CODA_STATE_DIR"])
    paths = ensure_state_dir(state)
    for path in (paths.config, paths.private_key, paths.token_marker, paths.daemon_log):
        write_private(path, "x\n")
    refused = CliRunner().invoke(cli, ["reset"], input="n\n")
    assert refused.exit_code == 1  # a declined confirmation, as click's own abort: not 130 (Ctrl-C)
    assert "Aborted: nothing changed." in refused.output
    assert paths.config.exists()
    result = CliRunner().invoke(cli, ["reset", "--yes"])
    assert result.exit_code == 0, result.output
    assert "4 file(s) removed" in result.output
    assert not any(path.exists() for path in StatePaths(state).all_files())


def test_stop_vpn_without_a_tunnel_is_quiet(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["stop-vpn"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output


def test_worker_refuses_an_unknown_queue(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["worker", "bridge"])
    assert result.exit_code == 2
    assert "expected one of jobs, results, control" in result.output


def test_logs_show_the_last_lines(clean_env: pytest.MonkeyPatch) -> None:
    paths = ensure_state_dir(Path(os.environ["CODA_STATE_DIR"]))
    write_private(paths.daemon_log, "".join(f"line {i}\n" for i in range(100)))
    result = CliRunner().invoke(cli, ["logs", "-n", "5"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"line {i}" for i in range(95, 100)]
    assert len(CliRunner().invoke(cli, ["logs"]).output.splitlines()) == 50


def test_the_devcloud_group_is_mounted_with_its_subcommands() -> None:
    # looked up as click does (the group is loaded on first use), whatever ran before in this process
    group = cli.get_command(click.Context(cli), "devcloud")
    assert isinstance(group, click.Group)
    assert {"create-qpu", "mint-token", "submit", "results"} <= set(group.commands)
