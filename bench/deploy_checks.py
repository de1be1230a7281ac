"""The review figures of deploy/: `systemd-analyze security` per unit, `kubernetes-validate --strict` per
manifest object, and promtool over the alert rules.

    python bench/deploy_checks.py            # print, and append a section to RESULTS.md
    python bench/deploy_checks.py --no-write

systemd-analyze runs with ``--offline=true`` (no systemd needed as PID 1):
it rates each unit file's sandboxing, 0 (safest) to 10.  The bridge is
rated twice: as shipped (CAP_NET_ADMIN and /dev/net/tun for OpenVPN) and
with ``coda-bridge-bridge-no-vpn.conf`` applied.  kubernetes-validate
checks every object against the Kubernetes schemas, rejecting unknown
fields (``--strict``); the kustomize build is checked too when kubectl is
installed.  A tool that is missing is reported as such, not guessed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import REPO_ROOT, append_results, markdown_table

DEPLOY = REPO_ROOT / "deploy"
#: What the issue asks of the worker units (and what the tests enforce for every unit).
MAX_EXPOSURE = 5.0
#: One tool run may take this long.
TOOL_TIMEOUT_SEC = 300


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SEC, check=False, cwd=cwd
    )


def exposure(unit: Path, cwd: Path) -> tuple[float | None, str]:
    done = _run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)], cwd)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout + done.stderr)
    return (float(found.group(1)), found.group(2)) if found else (None, (done.stderr or done.stdout).strip())


def systemd_rows() -> tuple[list[list[str]], list[str]]:
    if not shutil.which("systemd-analyze"):
        return [], ["systemd-analyze is not installed: no unit figures."]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        bridge = DEPLOY / "systemd" / "coda-bridge-bridge.service"
        no_vpn = work / "coda-bridge-bridge.service"
        no_vpn.write_text(
            bridge.read_text() + "\n" + (DEPLOY / "systemd" / "coda-bridge-bridge-no-vpn.conf").read_text()
        )
        units = [
            (
                "coda-bridge-worker@.service (jobs, results, control)",
                DEPLOY / "systemd" / "coda-bridge-worker@.service",
            ),
            ("coda-bridge-web.service", DEPLOY / "systemd" / "coda-bridge-web.service"),
            ("coda-bridge-bridge.service (VPN: CAP_NET_ADMIN, /dev/net/tun)", bridge),
            ("coda-bridge-bridge.service + no-vpn.conf", no_vpn),
        ]
        for label, path in units:
            value, verdict = exposure(path, work)
            met = "yes" if value is not None and value <= MAX_EXPOSURE else "no"
            rows.append([label, f"{value:.1f}" if value is not None else "-", verdict, met])
    return rows, []


def _validator() -> str | None:
    found = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    return found if Path(found).exists() else None


def _shown(path: str) -> str:
    name = Path(path).name
    return "kustomize build" if name.startswith("kustomize-build-") else name


def kubernetes_rows() -> tuple[list[list[str]], list[str]]:
    validator = _validator()
    if validator is None:
        return [], [
            "kubernetes-validate is not installed (pip install kubernetes-validate): no manifest figures."
        ]
    notes = []
    files = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    done = _run([validator, "--strict", *files])
    output = done.stdout + done.stderr
    if shutil.which("kubectl"):
        built = _run(["kubectl", "kustomize", str(DEPLOY / "k8s")])
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kustomize-build-") as handle:
            handle.write(built.stdout)
            handle.flush()
            output += _run([validator, "--strict", handle.name]).stdout
        notes.append(
            "kustomize build: the output of `kubectl kustomize deploy/k8s`, validated as it is applied."
        )
    else:
        notes.append("kubectl is not installed: the kustomize build was not validated.")
    rows = []
    for line in output.splitlines():
        passed = re.match(r"INFO (\S+) passed for resource (\S+) against version (\S+)", line)
        missing = re.match(r"WARN (\S+) Couldn't find schema for kind (\S+)", line)
        failed = re.match(r"ERROR (\S+) (.*)", line)
        if passed:
            rows.append([_shown(passed.group(1)), passed.group(2), f"passed ({passed.group(3)}, strict)"])
        elif missing and missing.group(2) != "Kustomization":
            rows.append(
                [_shown(missing.group(1)), missing.group(2), "no schema (custom resource): not checked"]
            )
        elif failed:
            rows.append([_shown(failed.group(1)), "-", f"FAILED: {failed.group(2)}"])
    notes.append(f"kubernetes-validate exit status: {done.returncode}.")
    return rows, notes


def promtool_rows() -> list[list[str]]:
    if not shutil.which("promtool"):
        return [["promtool", "not installed", "-"]]
    rules = DEPLOY / "prometheus"
    check = _run(["promtool", "check", "rules", "coda-bridge-rules.yaml"], rules)
    test = _run(["promtool", "test", "rules", "coda-bridge-rules.test.yaml"], rules)
    last = (check.stdout + check.stderr).strip().splitlines()[-1:]
    return [
        ["promtool check rules coda-bridge-rules.yaml", (last or ["-"])[0].strip(), str(check.returncode)],
        ["promtool test rules coda-bridge-rules.test.yaml", "SUCCESS" if not test.returncode else "FAILED",
         str(test.returncode)],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    unit_rows, unit_notes = systemd_rows()
    k8s_rows, k8s_notes = kubernetes_rows()
    tables = []
    if unit_rows:
        tables.append(
            markdown_table(
                ["unit", "exposure (0 safest, 10 unsafe)", "rating", f"<= {MAX_EXPOSURE:g}"], unit_rows
            )
        )
    if k8s_rows:
        tables.append(markdown_table(["file", "object", "kubernetes-validate --strict"], k8s_rows))
    tables.append(markdown_table(["check", "result", "exit"], promtool_rows()))
    append_results("Deploy files: systemd sandboxing, manifest validation, alert rules", tables,
                   [*unit_notes, *k8s_notes], write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
