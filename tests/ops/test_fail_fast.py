"""Configurations a process cannot work with stop it at once: one line, exit 78 (issue 16, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from ops_support import node_env, run_cli

from coda_bridge.cli.main import cli
from coda_bridge.devtools.stack import LocalStack
from coda_bridge.ops.pidfile import pid_file_for
from coda_bridge.settings import load_settings

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
SHOW_FACTORY = "from coda_bridge import load_settings; print(load_settings().executor_factory)"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        "[default]\nport = 9000\n\n[lab-fridge-2]\nport = 9100\n\n[lab-fridge-3]\nport = 9200\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(
        CODA_STATE_DIR=str(tmp_path / "state"), CODA_SETTINGS_FILES=str(settings), CODA_VPN_REQUIRED="false"
    )
    env.update(extra)
    return env


def _left_running(state_dir: str) -> list[int]:
    """Processes still running with this test's state directory in their environment."""
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CODA_STATE_DIR") == state_dir:
                left.append(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return left


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--site", "lab-fridge-22", "--token", "t0k3n-secret"],
        ["start", "-d", "--site", "lab-fridge-22", "--token", "t0k3n-secret"],
        ["bridge"],
        ["worker", "jobs"],
        ["web"],
        ["status"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
@pytest.mark.e2e
def test_a_misspelt_site_stops_every_process_in_one_line_naming_the_known_sites(
    tmp_path: Path, args: list[str]
) -> None:
    # given a site name that config has no table for (CODA_ENV, or --site for start)
    env = _env(tmp_path, CODA_ENV="lab-fridge-22")
    # when a command starts
    done = subprocess.run(
        [sys.executable, "-m", "coda_bridge", *args], check=False, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    # then it exits 78 with one line naming the site and the known ones, and leaves nothing behind
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: site 'lab-fridge-22'")
    assert "known sites: lab-fridge-2, lab-fridge-3" in done.stderr
    assert "t0k3n-secret" not in done.stderr
    assert not pid_file_for(tmp_path / "state").exists()
    assert _left_running(env["CODA_STATE_DIR"]) == []


@pytest.mark.e2e
def test_a_bridge_without_a_token_or_credentials_exits_78_like_start(tmp_path: Path) -> None:
    # given no token and no identity; when the bridge and start run
    env = _env(tmp_path)
    for command in ("bridge", "start"):
        done = subprocess.run(
            [sys.executable, "-m", "coda_bridge", command], check=False, env=env, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        # then both exit 78 in one line naming the token variable
        assert (command, done.returncode) == (command, 78), done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [
            done.stderr.strip().splitlines()[-1]
        ]
        assert "CODA_NODE_TOKEN" in done.stderr
    assert _left_running(env["CODA_STATE_DIR"]) == []


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [(), ("--one-process",)], ids=["processes", "one-process"])
def test_a_dashboard_prefix_over_a_probe_stops_start_before_it_connects(
    cloud_stack: LocalStack, mode: tuple[str, ...]
) -> None:
    # given a fresh one-time token and a dashboard mounted over the status page
    env = node_env(
        cloud_stack,
        CODA_HOST="127.0.0.1",
        CODA_DASHBOARD_ENABLED="true",
        CODA_DASHBOARD_PREFIX="//status/",
        CODA_EXECUTOR_FACTORY="noop",
    )
    # when the node starts
    done = run_cli("start", *mode, env=env, timeout=120)
    # then it exits 78 in one line naming the prefix, no traceback, and nothing connected (the token
    # is not spent, no part of the node ran)
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: CODA_DASHBOARD_PREFIX='//status/' would hide"), done.stderr
    assert cloud_stack.cloud.connects(cloud_stack.qpu_id) == []
    assert _left_running(env["CODA_STATE_DIR"]) == []


def test_the_site_table_applies_whatever_the_working_directory(tmp_path: Path) -> None:
    # given no CODA_SETTINGS_FILES, a working directory without config/, and the checkout's example site
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODA_")}
    env.update(CODA_STATE_DIR=str(tmp_path / "state"), CODA_ENV="example-lab")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # when settings load there
    done = subprocess.run(
        [sys.executable, "-c", SHOW_FACTORY],
        check=False, env=env, capture_output=True, text=True, cwd=elsewhere, timeout=60,
    )  # fmt: skip
    # then the site table of the checkout's config/settings.toml applied
    assert done.stdout.strip() == "coda_bridge.executors.simulator:create_executor", done.stderr


def test_the_search_path_prefers_the_working_directory_then_etc(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given no CODA_SETTINGS_FILES, a system directory, and a working directory with its own config/
    import coda_bridge.settings.loader as settings_module

    clean_env.delenv("CODA_SETTINGS_FILES")
    system = tmp_path / "etc"
    system.mkdir()
    (system / "settings.toml").write_text("[default]\nport = 7001\n[site-a]\nport = 7002\n")
    clean_env.setattr(settings_module, "SYSTEM_CONFIG_DIR", system)
    here = tmp_path / "work"
    (here / "config").mkdir(parents=True)
    clean_env.chdir(tmp_path)
    # when settings load from a directory without config/, then the system file applies, its site too
    assert load_settings().port == 7001
    assert load_settings(site="site-a").port == 7002
    # and from a directory with config/settings.toml, that file applies instead
    (here / "config" / "settings.toml").write_text("[default]\nport = 7003\n")
    clean_env.chdir(here)
    assert load_settings().port == 7003


def test_doctor_prints_the_site_and_each_settings_layer_without_secrets(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given a site file, a variable, a key in the environment, and a broker URL with a password
    settings = tmp_path / "sites.toml"
    settings.write_text("[default]\nbatch_size = 4\n[lab1]\nport = 9100\n")
    clean_env.setenv("CODA_SETTINGS_FILES", str(settings))
    clean_env.setenv("CODA_ENV", "lab1")
    clean_env.setenv("CODA_NUM_QUBITS", "7")
    clean_env.setenv("CODA_JWT_PRIVATE_KEY", PEM)
    clean_env.setenv("CODA_BROKER_URL", "redis://user:hunter2@127.0.0.1:1/0")
    clean_env.setenv("CODA_WEBAPP_URL", "http://127.0.0.1:1")
    # when doctor runs
    result = CliRunner().invoke(cli, ["doctor"])
    out = result.output
    # then it names the site and file, and each setting's layer
    assert f"settings: loaded (site lab1, from {settings})" in out
    assert f"port = 9100  (site file {settings} [lab1])" in out
    assert f"batch_size = 4  (site file {settings} [default])" in out
    assert "num_qubits = 7  (environment (CODA_NUM_QUBITS))" in out
    assert "max_shots = 1000000  (default)" in out
    # and no secret: the key is hidden, the password left out of the URL
    assert "jwt_private_key = (set, hidden)  (environment (CODA_JWT_PRIVATE_KEY))" in out
    assert "MIIE" not in out and "hunter2" not in out


def test_each_setting_is_attributed_to_the_highest_layer_that_sets_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from coda_bridge.settings import setting_layers

    # given a value in each layer: site file, persisted state, environment and the command line
    sites = tmp_path / "sites.toml"
    sites.write_text("[default]\nport = 9000\nqpu_display_name = 'x'\n[lab1]\nport = 9100\n")
    clean_env.setenv("CODA_SETTINGS_FILES", str(sites))
    clean_env.setenv("CODA_NUM_QUBITS", "7")
    persisted = {"qpu_id": "q-1", "num_qubits": 3, "qpu_display_name": "persisted"}
    # when the layers are read for site lab1
    layers = setting_layers(site="lab1", persisted=persisted, overrides={"host": "127.0.0.1"})
    # then each setting names the layer that wins it
    assert layers["host"] == "command line"
    assert layers["num_qubits"] == "environment (CODA_NUM_QUBITS)"
    assert layers["port"] == f"site file {sites} [lab1]"
    assert layers["qpu_display_name"] == f"site file {sites} [default]"
    assert layers["qpu_id"] == "persisted state"
    assert layers["batch_size"] == "default"
