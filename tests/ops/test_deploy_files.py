"""Every file under deploy/ parses, and says what it must; the Procfile matches the processes of `start`."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from coda_bridge.ops.process_list import node_processes
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


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_tells_systemd_when_it_is_ready_and_has_a_watchdog(path: Path) -> None:
    service = _unit(path)["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) >= 30
    # the worker's READY=1 and pings come from dramatiq's worker processes, not its master
    assert (service.get("NotifyAccess") == "all") == (path.name == "coda-bridge-worker@.service")


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
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]  # beside an emptyDir /tmp
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
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
        if argv[1:4] == ["-P", "-m", "coda_bridge"]:
            assert command == ["coda-bridge", *argv[4:]]
        else:
            assert argv[1:4] == ["-P", "-m", "dramatiq"]
            assert command == ["dramatiq", *argv[4:]]


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


# -- issue 16: deploy files that pass a review --

#: The node processes that sign JWTs: reconnects (bridge), result webhooks (results), heartbeats (control).
SIGNING = {"coda-bridge-bridge", "coda-bridge-results", "coda-bridge-control"}
#: Deployments that scale, so a disruption budget keeps a drain from taking them all at once.
SCALABLE = {"coda-bridge-jobs", "coda-bridge-results", "coda-bridge-control", "coda-bridge-web"}
#: `systemd-analyze security` exposure a unit may have at most (0 safest, 10 unsafe).
MAX_EXPOSURE = 5.0


def _pods() -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for name, d in _deployments().items()}


@pytest.mark.parametrize("name", sorted(_deployments()), ids=str)
def test_every_pod_is_confined_and_sized_with_probes_and_a_pinned_image(name: str) -> None:
    pod = _pods()[name]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name
        for probe in ("livenessProbe", "readinessProbe"):
            assert "timeoutSeconds" in container[probe], (name, probe)
            assert {"exec", "httpGet"} & set(container[probe]), (name, probe)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}  # none added: no VPN inside a pod
        image, _, tag = container["image"].rpartition(":")
        assert image and tag and tag != "latest", container["image"]


def test_only_the_pods_that_sign_hold_the_signing_key() -> None:
    holders = set()
    for name, pod in _pods().items():
        refs = [
            r["secretRef"]["name"]
            for c in pod["containers"]
            for r in c.get("envFrom", [])
            if "secretRef" in r
        ]
        if "coda-bridge-signing-key" in refs:
            holders.add(name)
    docs = _documents()
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}

    assert holders == SIGNING
    assert "coda-bridge-jobs" not in holders  # an executor host needs the broker, the cloud Redis, the QPU id
    assert set(secrets["coda-bridge-signing-key"]["stringData"]) == {"CODA_JWT_PRIVATE_KEY"}
    assert "CODA_JWT_PRIVATE_KEY" not in secrets["coda-bridge-credentials"]["stringData"]
    configs = [d for d in docs if d["kind"] == "ConfigMap"]
    assert not any(key in c["data"] for c in configs for key in ("CODA_JWT_PRIVATE_KEY", "CODA_NODE_TOKEN"))


def test_worker_and_bridge_pods_probe_with_the_healthcheck_the_image_ships() -> None:
    pods = _pods()
    containerfile = (DEPLOY / "Containerfile").read_text()

    for name in ("coda-bridge-bridge", "coda-bridge-jobs", "coda-bridge-results", "coda-bridge-control"):
        (container,) = pods[name]["containers"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["python", "/opt/coda-bridge/healthcheck.py"]
    assert "COPY deploy/healthcheck.py ./healthcheck.py" in containerfile
    assert re.search(r"^WORKDIR /opt/coda-bridge$", containerfile, re.M)


def test_each_scalable_process_has_a_disruption_budget_selecting_its_pods() -> None:
    budgets = [d for d in _documents() if d["kind"] == "PodDisruptionBudget"]
    deployments = _deployments()

    covered = set()
    for budget in budgets:
        wanted = budget["spec"]["selector"]["matchLabels"]
        assert budget["spec"]["maxUnavailable"] == 1
        for name, deployment in deployments.items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            if wanted.items() <= labels.items():
                covered.add(name)
    assert covered == SCALABLE


def test_the_service_monitor_scrapes_the_web_service_and_the_rule_object_matches_the_rules_file() -> None:
    monitoring = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "monitoring.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in monitoring}
    service = next(
        d for d in _documents() if d["kind"] == "Service" and d["metadata"]["name"] == "coda-bridge-web"
    )

    monitor = kinds["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "coda-bridge-rules.yaml").read_text())
    assert kinds["PrometheusRule"]["spec"] == rules


def test_the_kustomization_applies_every_manifest_but_the_examples_and_pins_the_images() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    optional = {"kustomization.yaml", "secret.example.yaml", "monitoring.yaml"}

    assert set(kustomization["resources"]) == {p.name for p in MANIFESTS} - optional
    pinned = {image["name"]: image["newTag"] for image in kustomization["images"]}
    used = {c["image"].rpartition(":")[0] for pod in _pods().values() for c in pod["containers"]}
    assert set(pinned) == used
    assert "latest" not in pinned.values()


@pytest.mark.skipif(not shutil.which("kubectl"), reason="needs kubectl (kustomize build)")
def test_kustomize_builds_the_manifests() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert kinds.count("Deployment") == 6 and kinds.count("PodDisruptionBudget") == 4


def _kubernetes_validate() -> str | None:
    found = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    return found if Path(found).exists() else None


@pytest.mark.skipif(
    _kubernetes_validate() is None, reason="needs kubernetes-validate (pip install kubernetes-validate)"
)
def test_kubernetes_validate_strict_accepts_every_manifest() -> None:
    files = [str(p) for p in MANIFESTS if p.name != "kustomization.yaml"]
    done = subprocess.run(
        [str(_kubernetes_validate()), "--strict", *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ERROR" not in output
    # the two Prometheus Operator kinds have no built-in schema: they are the only ones not validated
    unchecked = {
        line.split(" kind ")[1].split()[0] for line in output.splitlines() if "Couldn't find schema" in line
    }
    assert unchecked == {"ServiceMonitor", "PrometheusRule"}, output


# -- systemd sandboxing --


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_is_sandboxed(path: Path) -> None:
    service = _unit(path)["Service"]

    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert "@system-service" in _values(_unit(path), "Service", "SystemCallFilter")
    if path.name == "coda-bridge-bridge.service":  # OpenVPN: the tun interface, its routes, netlink
        assert service["CapabilityBoundingSet"] == service["AmbientCapabilities"] == "CAP_NET_ADMIN"
        assert service["DeviceAllow"] == "/dev/net/tun rw"
        assert service["DevicePolicy"] == "closed"
    else:
        assert service["CapabilityBoundingSet"] == service["AmbientCapabilities"] == ""
        assert service["PrivateDevices"] == "yes"


def test_the_no_vpn_drop_in_takes_the_bridges_vpn_grants_away() -> None:
    drop_in = _unit(DEPLOY / "systemd" / "coda-bridge-bridge-no-vpn.conf")["Service"]

    assert drop_in["CapabilityBoundingSet"] == drop_in["AmbientCapabilities"] == drop_in["DeviceAllow"] == ""
    assert drop_in["PrivateDevices"] == "yes"
    assert "AF_NETLINK" not in drop_in["RestrictAddressFamilies"]


def _exposure(unit: Path, cwd: Path) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def _offline_security() -> bool:
    if not shutil.which("systemd-analyze"):
        return False
    done = subprocess.run(
        ["systemd-analyze", "security", "--help"], capture_output=True, text=True, check=False
    )
    return "--offline" in done.stdout


@pytest.mark.skipif(not _offline_security(), reason="needs systemd-analyze security --offline (systemd 250+)")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_rates_each_unit_5_or_safer(path: Path, tmp_path: Path) -> None:
    exposure = _exposure(path, tmp_path)

    assert exposure <= MAX_EXPOSURE, f"{path.name}: exposure {exposure}"


@pytest.mark.skipif(not _offline_security(), reason="needs systemd-analyze security --offline (systemd 250+)")
def test_the_no_vpn_drop_in_makes_the_bridge_as_tight_as_the_workers(tmp_path: Path) -> None:
    bridge = DEPLOY / "systemd" / "coda-bridge-bridge.service"
    merged = tmp_path / "coda-bridge-bridge.service"  # a drop-in's lines apply after the unit's
    merged.write_text(
        bridge.read_text() + "\n" + (DEPLOY / "systemd" / "coda-bridge-bridge-no-vpn.conf").read_text()
    )

    without_vpn = _exposure(merged, tmp_path)

    assert without_vpn < _exposure(bridge, tmp_path)
    assert without_vpn <= _exposure(DEPLOY / "systemd" / "coda-bridge-web.service", tmp_path)


# -- Prometheus rules --

NO_PROMTOOL = "needs promtool (Debian: apt-get install prometheus)"


@pytest.mark.skipif(not shutil.which("promtool"), reason=NO_PROMTOOL)
def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus" / "coda-bridge-rules.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout + done.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason=NO_PROMTOOL)
def test_each_alert_fires_for_a_node_in_trouble_and_not_for_a_healthy_one() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", "coda-bridge-rules.test.yaml"],
        capture_output=True, text=True, timeout=120, check=False, cwd=DEPLOY / "prometheus",
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    tested = yaml.safe_load((DEPLOY / "prometheus" / "coda-bridge-rules.test.yaml").read_text())
    alerts = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "coda-bridge-rules.yaml").read_text())
    assert alerts == {rule["alert"] for group in rules["groups"] for rule in group["rules"]}


# -- the container image --


def test_the_image_is_reproducible_and_checks_its_own_health() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)

    assert base and re.search(r"@sha256:[0-9a-f]{64}$", base.group(1)), (
        "the base image is not pinned by digest"
    )
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(
        r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"/opt/coda-bridge/healthcheck.py\"\]", text, re.M
    )
    assert "COPY config/settings.toml ./config/settings.toml" in text  # never config/.secrets.toml
    assert re.search(r"pip install [^\n]*--constraint constraints.txt \.", text)


def test_the_constraints_pin_every_runtime_requirement() -> None:
    # the runtime requirements: pyproject.toml's [project] dependencies (issue 16: one place for pip and uv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        re.split(r"[\[<>=!~ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for line in project["dependencies"]
    }
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version

    assert wanted <= set(pins), f"not pinned: {wanted - set(pins)}"
    assert all(re.fullmatch(r"\d[\w.+]*", version) for version in pins.values()), pins


_FAKE_MAIN = """
import subprocess, sys
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
worker = subprocess.Popen(sleeper) if sys.argv[1] == "worker" else None
done = subprocess.run([sys.executable, sys.argv[2]], capture_output=True, text=True)
print(done.returncode, done.stdout.strip() or done.stderr.strip())
if worker:
    worker.kill()
"""


def _can_unshare() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare (a PID namespace with its own /proc)")
@pytest.mark.parametrize(
    ("program", "mode", "expected"),
    [
        ("dramatiq", "worker", "0 dramatiq master 1 with 1 worker process(es)"),
        ("dramatiq", "alone", "1 unhealthy: the dramatiq master has no live worker process"),
        ("coda-bridge", "alone", "0 process 1 runs"),
    ],
    ids=["worker with its process", "worker process gone", "bridge"],
)
def test_the_healthcheck_judges_the_process_that_is_pid_1(
    tmp_path: Path, program: str, mode: str, expected: str
) -> None:
    main = tmp_path / program  # PID 1 runs as `python .../<program> ...`, as in the image
    main.write_text(_FAKE_MAIN)

    namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    done = subprocess.run(
        [*namespace, sys.executable, str(main), mode, str(DEPLOY / "healthcheck.py")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.stdout.strip() == expected, done.stdout + done.stderr


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare (a PID namespace with its own /proc)")
def test_the_healthcheck_knows_a_dramatiq_master_run_with_the_safe_path_flag(tmp_path: Path) -> None:
    # given PID 1 running `python -P -m dramatiq ...`, as `coda-bridge worker` execs it, with its worker
    (tmp_path / "dramatiq.py").write_text(_FAKE_MAIN)
    namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # when the healthcheck judges it
    done = subprocess.run(
        [*namespace, sys.executable, "-P", "-m", "dramatiq", "worker", str(DEPLOY / "healthcheck.py")],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    # then it is the dramatiq master with its worker process
    assert done.stdout.strip() == "0 dramatiq master 1 with 1 worker process(es)", done.stdout + done.stderr
