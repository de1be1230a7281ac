"""Which files the node trusts to decide what it runs: its own or root's, writable by no one else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coda_bridge.trust import SAFE_PATH_ENV, UntrustedFile, check_trusted, python_argv, untrusted

NOBODY = 65534


def _file(tmp_path: Path, mode: int = 0o644) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text("[default]\n")
    path.chmod(mode)
    tmp_path.chmod(0o755)
    return path


def test_a_file_of_ours_writable_only_by_us_is_trusted(tmp_path: Path) -> None:
    assert untrusted(_file(tmp_path)) is None


@pytest.mark.parametrize("mode", [0o666, 0o646])
def test_a_file_anyone_can_write_is_refused_naming_its_mode(tmp_path: Path, mode: int) -> None:
    path = _file(tmp_path, mode)
    with pytest.raises(
        UntrustedFile, match=f"refusing settings file {path}: file {path} has mode {mode:04o}"
    ):
        check_trusted(path, "settings file")


def test_a_file_in_a_folder_anyone_can_write_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path)
    tmp_path.chmod(0o777)
    assert untrusted(path) == f"folder {tmp_path} has mode 0777: other users can change it"


def test_a_sticky_shared_folder_leaves_only_the_file_to_judge(tmp_path: Path) -> None:
    path = _file(tmp_path)
    tmp_path.chmod(0o1777)
    assert untrusted(path) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path)
    os.chown(path, NOBODY, NOBODY)
    assert untrusted(path) == f"file {path} belongs to uid {NOBODY}, not to this user (uid 0) or root"


def test_python_argv_keeps_the_working_directory_off_the_import_path(tmp_path: Path) -> None:
    # given a working directory with a module that shadows a standard one
    (tmp_path / "shadowed_probe.py").write_text("raise SystemExit('imported from the working directory')\n")
    code = "import importlib.util, sys; print(importlib.util.find_spec('shadowed_probe') is None)"
    # when the node's interpreter command runs there
    env = {**os.environ, **SAFE_PATH_ENV}
    argv = python_argv(sys.executable, "-c", code)
    ran = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    # then the module there is not importable
    assert ran.stdout.strip() == "True"
