"""Every file under deploy/ parses, and says what it must; the Procfile matches the processes of `start`."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from coda_bridge.ops.processes import node_processes
from coda_bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


class _MultiValues(dict):  # type: ignore[type-arg]
    """Keeps every value of a key that a unit file repeats (After=, Environment=, ...)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_MultiValues)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _values(unit: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return unit.get(section, key, fallback="").splitlines()


def test_there_are_units_for_the_bridge_a_worker_template_and_the_web_app() -> None:
    assert {p.name for p in UNITS} == {
        "coda-bridge-bridge.service",
        "coda-bridge-worker@.service",
        "coda-bridge-web.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_restarts_on_failure_and_stops_with_one_sigterm(path: Path) -> None:
    unit = _unit(path)
    service = unit["Service"]
    assert service["ExecStart"].startswith("/opt/coda-bridge/bin/coda-bridge ")
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > Settings().shutdown_drain_timeout_sec
    assert service["User"] == "coda-bridge"
    assert service["StateDirectory"] == "coda-bridge"
    assert "/etc/coda-bridge/env" in _values(unit, "Service", "EnvironmentFile")
    after = " ".join(_values(unit, "Unit", "After")).split()
    assert "network-online.target" in after
    assert "redis.service" in after
    assert "KillMode=mixed" in path.read_text()  # with a comment saying why
    assert "twice" in path.read_text()
    assert unit["Install"]["WantedBy"]


def test_the_worker_template_runs_the_instance_queue_and_executors_stop_before_delivery() -> None:
    unit = _unit(DEPLOY / "systemd" / "coda-bridge-worker@.service")
    assert unit["Service"]["ExecStart"].endswith("coda-bridge worker %i")
    after = " ".join(_values(unit, "Unit", "After")).split()
    assert "coda-bridge-worker@results.service" in after


def test_only_the_bridge_reads_the_node_token() -> None:
    for path in UNITS:
        files = _values(_unit(path), "Service", "EnvironmentFile")
        assert ("-/etc/coda-bridge/token.env" in files) == (path.name == "coda-bridge-bridge.service")


def test_the_target_pulls_in_every_process() -> None:
    target = _unit(DEPLOY / "systemd" / "coda-bridge.target")
    wants = " ".join(_values(target, "Unit", "Wants")).split()
    assert {"coda-bridge-bridge.service", "coda-bridge-web.service"} <= set(wants)
    assert {f"coda-bridge-worker@{q}.service" for q in ("jobs", "results", "control")} <= set(wants)


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        with path.open() as handle:
            docs.extend(d for d in yaml.safe_load_all(handle) if d)
    return docs


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _documents() if d["kind"] == "Deployment"}


def test_every_manifest_loads_and_each_process_type_has_a_deployment() -> None:
    docs = _documents()
    assert all("kind" in d and "apiVersion" in d for d in docs)
    names = set(_deployments())
    assert {f"coda-bridge-{n}" for n in ("bridge", "jobs", "results", "control", "web")} <= names


def test_node_containers_run_as_non_root_with_credentials_from_a_secret() -> None:
    for name, deployment in _deployments().items():
        if name == "coda-bridge-broker":
            continue
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] > Settings().shutdown_drain_timeout_sec
        (container,) = pod["containers"]
        refs = [r["secretRef"]["name"] for r in container["envFrom"] if "secretRef" in r]
        assert "coda-bridge-credentials" in refs
        assert ("coda-bridge-token" in refs) == (name == "coda-bridge-bridge")


def test_workers_run_their_queue_and_web_has_the_probes() -> None:
    deployments = _deployments()
    for queue in ("jobs", "results", "control"):
        container = deployments[f"coda-bridge-{queue}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["worker", queue]
        assert deployments[f"coda-bridge-{queue}"]["spec"]["replicas"] >= 1
    web = deployments["coda-bridge-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert all("timeoutSeconds" in web[probe] for probe in ("livenessProbe", "readinessProbe"))
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_the_bridge_keeps_its_state_on_a_claimed_volume() -> None:
    docs = _documents()
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    bridge = _deployments()["coda-bridge-bridge"]
    assert bridge["spec"]["replicas"] == 1
    assert bridge["spec"]["strategy"]["type"] == "Recreate"
    pod = bridge["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    mount = pod["containers"][0]["volumeMounts"][0]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert mount["mountPath"] == config["data"]["CODA_STATE_DIR"]


def test_the_container_image_runs_as_a_non_root_user() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert text.startswith("#") and "\nFROM " in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["coda-bridge"\]', text, re.M)


def _procfile() -> dict[str, list[str]]:
    lines = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            lines[name] = shlex.split(command)
    return lines


def test_the_procfile_runs_the_same_processes_as_start() -> None:
    procfile = _procfile()
    assert list(procfile) == ["redis", "bridge", "jobs", "results", "control", "web"]
    assert procfile["redis"][0] == "redis-server"
    for spec in node_processes(Settings(), web=True):
        argv = list(spec.argv)
        command = procfile[spec.name]
        if argv[1:3] == ["-m", "coda_bridge"]:
            assert command == ["coda-bridge", *argv[3:]]
        else:
            assert argv[1:3] == ["-m", "dramatiq"]
            assert command == ["dramatiq", *argv[3:]]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_accepts_the_units_without_an_ordering_cycle(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "coda-bridge"  # the units name /opt/coda-bridge/bin
    for path in sorted((DEPLOY / "systemd").iterdir()):
        if path.suffix in (".service", ".target"):
            text = path.read_text().replace("/opt/coda-bridge/bin/coda-bridge", str(executable))
            (tmp_path / path.name).write_text(text)
    names = ["coda-bridge.target", "coda-bridge-bridge.service", "coda-bridge-web.service"]
    for queue in ("jobs", "results", "control"):
        (tmp_path / f"coda-bridge-worker@{queue}.service").symlink_to(
            tmp_path / "coda-bridge-worker@.service"
        )
        names.append(f"coda-bridge-worker@{queue}.service")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [line for line in done.stderr.splitlines() if "is dropped" not in line]
    assert done.returncode == 0, done.stderr
    assert problems == [], done.stderr
