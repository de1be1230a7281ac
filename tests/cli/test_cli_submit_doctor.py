"""`submit` (IR JSON or OpenQASM 3) against a running cloud simulator, and `doctor` on a provisioned node."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from coda_bridge.cli.main import cli
from coda_bridge.devtools.devcloud import DevCloudProcess, start_devcloud_process
from coda_bridge.devtools.localredis import free_port
from coda_bridge.devtools.submit import format_result, histogram_lines
from coda_bridge.identity.connect import connect_node, load_node_settings
from coda_bridge.identity.credentials import StatePaths

BELL_QASM = """OPENQASM 3;
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""


@pytest.fixture
def devcloud(redis_url: str, tmp_path: Path) -> Iterator[DevCloudProcess]:
    process = start_devcloud_process(redis_url=redis_url, log_path=tmp_path / "devcloud.log")
    try:
        process.client().create_qpu("qpu-a", native_gate_set="cz", num_qubits=3, redis_url=redis_url)
        yield process
    finally:
        process.stop()


def _submit(devcloud: DevCloudProcess, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["submit", *args, "--devcloud-url", devcloud.base_url])
    if result.exception and not isinstance(result.exception, SystemExit):
        return 1, f"error: {result.exception}"
    return result.exit_code, result.output


@pytest.mark.e2e
def test_submit_converts_openqasm_for_the_qpu_target(devcloud: DevCloudProcess, tmp_path: Path) -> None:
    source = tmp_path / "bell.qasm"
    source.write_text(BELL_QASM)
    code, output = _submit(devcloud, str(source), "--shots", "300")
    assert code == 0, output
    fields = devcloud.client().job(output.strip())["fields"]
    ir = json.loads(fields["ir_json"])
    assert ir["target"] == "cz"
    assert ir["num_qubits"] == 2
    assert {g["gate"] for g in ir["gates"]} <= {"rx", "ry", "rz", "cz"}
    assert fields["shots"] == "300"


@pytest.mark.e2e
def test_submit_sends_an_ir_json_file_as_is(devcloud: DevCloudProcess, tmp_path: Path) -> None:
    circuit = {
        "version": "1.0",
        "target": "cz",
        "num_qubits": 1,
        "gates": [{"gate": "rx", "qubits": [0], "params": [0.5]}],
        "measurements": [0],
        "metadata": {"source_hash": "h", "compiled_at": "2026-01-01T00:00:00Z"},
    }
    source = tmp_path / "circuit.json"
    source.write_text(json.dumps(circuit))
    code, output = _submit(devcloud, str(source), "--qpu", "qpu-a")
    assert code == 0, output
    sent = json.loads(devcloud.client().job(output.strip())["fields"]["ir_json"])
    assert sent["gates"] == [{"gate": "rx", "qubits": [0], "params": [0.5]}]


@pytest.mark.e2e
def test_a_qasm_mistake_names_its_line(devcloud: DevCloudProcess, tmp_path: Path) -> None:
    source = tmp_path / "broken.qasm"
    source.write_text(BELL_QASM.replace("cx q[0], q[1];", "frob q[0];"))
    code, output = _submit(devcloud, str(source))
    assert code == 1
    assert "line 5" in output
    assert "frob" in output
    assert devcloud.client().jobs() == []


@pytest.mark.e2e
def test_submit_needs_a_qpu_when_the_simulator_has_several(devcloud: DevCloudProcess, tmp_path: Path) -> None:
    devcloud.client().create_qpu("qpu-b")
    source = tmp_path / "bell.qasm"
    source.write_text(BELL_QASM)
    code, output = _submit(devcloud, str(source))
    assert code == 1
    assert "pass --qpu" in output


@pytest.mark.e2e
def test_submit_wait_gives_up_when_no_node_runs(devcloud: DevCloudProcess, tmp_path: Path) -> None:
    source = tmp_path / "bell.qasm"
    source.write_text(BELL_QASM)
    code, output = _submit(devcloud, str(source), "--wait", "--timeout", "0.3")
    assert code == 1
    assert "is a node running" in output


def test_results_print_as_histograms() -> None:
    lines = histogram_lines({"00": 750, "11": 250}, width=8)
    assert lines == ["00  ████████  750 (75.0%)", "11  ███       250 (25.0%)"]
    text = format_result({"job_id": "j", "status": "failed", "error": "Gate 'x' not legal"})
    assert text == "job j: failed: Gate 'x' not legal"


@pytest.mark.e2e
def test_doctor_is_all_ok_on_a_provisioned_node_and_names_a_bad_file_mode(
    devcloud: DevCloudProcess, redis_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setenv("CODA_BROKER_URL", redis_url)
    clean_env.setenv("CODA_VPN_REQUIRED", "false")
    clean_env.setenv("CODA_EXECUTOR_FACTORY", "coda_bridge.executors.simulator:create_executor")
    connect_node(load_node_settings(), token=devcloud.client().mint_token("qpu-a"))

    healthy = CliRunner().invoke(cli, ["doctor"])
    assert healthy.exit_code == 0, healthy.output
    assert "FIX" not in healthy.output
    checks = (
        "identity",
        "connect endpoint",
        "heartbeat endpoint",
        "clock",
        "executor",
        "broker",
        "cloud redis",
        "vpn",
    )
    for name in checks:
        assert f"ok   {name}: " in healthy.output
    assert "QPU qpu-a" in healthy.output

    config = StatePaths(Path(os.environ["CODA_STATE_DIR"])).config
    config.chmod(0o644)
    broken = CliRunner().invoke(cli, ["doctor"])
    assert broken.exit_code == 1
    assert f"FIX: credentials: {config} has mode 0644" in broken.output
    assert "chmod 600" in broken.output


@pytest.mark.e2e
def test_doctor_names_a_host_clock_10_minutes_ahead_of_the_clouds(
    devcloud: DevCloudProcess, clean_env: pytest.MonkeyPatch
) -> None:
    # given: this host's clock, as the node reads it, 10 minutes ahead of the cloud's
    from coda_bridge.cloud import clock

    clean_env.setenv("CODA_WEBAPP_URL", devcloud.base_url)
    clean_env.setattr(clock, "clock_skew_sec", lambda: 600.0)

    # when: doctor runs
    result = CliRunner().invoke(cli, ["doctor"])

    # then: one warning line with the offset and the fix, measured from the cloud's Date header (whole
    # seconds, so a request that takes long on a busy machine can read 599 or 601)
    (line,) = [x for x in result.output.splitlines() if " clock: " in x]
    found = re.match(r"warn clock: (\d+) s ahead of the cloud's", line)
    assert found and abs(int(found.group(1)) - 600) <= 1, line
    assert "timedatectl set-ntp true" in line


def test_doctor_on_an_unconfigured_machine_says_what_to_fix(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CODA_WEBAPP_URL", f"http://127.0.0.1:{free_port()}")
    clean_env.setenv("CODA_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    # every line is a check, except the settings section (a header, then indented lines; issue 16)
    header = lines.index("settings (value, and the layer it came from):")
    assert all(line.startswith(("ok   ", "FIX: ")) for line in lines[:header])
    assert all(line.startswith("     ") for line in lines[header + 1 : -1])
    assert any(line.startswith("FIX: identity: no node identity") for line in lines)
    assert any(line.startswith("FIX: broker: ") and "CODA_BROKER_URL" in line for line in lines)
    assert any(line.startswith("FIX: webapp: ") and "unreachable" in line for line in lines)
    assert any(line.startswith("FIX: executor: ") for line in lines)
    assert lines[-1].endswith("to fix")
