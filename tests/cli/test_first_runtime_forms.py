"""coda-node 0.1.1's short options and `--reset`, in-process: parsing and what a typed token leaves in argv.

The same forms run a whole node in tests/ops/test_first_runtime_cli.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from coda_bridge.cli.main import cli
from coda_bridge.cli.options import without_token
from coda_bridge.identity.credentials import StatePaths, ensure_state_dir, write_private

FLAGS = frozenset({"d", "h"})


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        (["start", "-t", "tok"], ["start"]),
        (["start", "-ttok"], ["start"]),
        (["start", "-dt", "tok", "-p", "9"], ["start", "-d", "-p", "9"]),
        (["start", "-dttok"], ["start", "-d"]),
        (["start", "--token", "tok", "-H", "h"], ["start", "-H", "h"]),
        (["start", "--token=tok"], ["start"]),
        (["start", "-Hlocalhost", "-t", "tok"], ["start", "-Hlocalhost"]),
    ],
)
def test_a_typed_token_in_any_form_is_taken_out_of_the_arguments(args: list[str], kept: list[str]) -> None:
    # when the arguments of a start with a typed token are rewritten for the re-exec
    # then the token and its option are gone, every other option stays
    assert without_token(args, FLAGS) == kept


@pytest.mark.parametrize(
    "args", [["start"], ["start", "-d", "-Hlocalhost", "-p", "8080"], ["start", "--", "-t", "x"]]
)
def test_without_a_typed_token_nothing_is_rewritten(args: list[str]) -> None:
    assert without_token(args, FLAGS) is None


def test_start_and_bridge_take_coda_nodes_short_options() -> None:
    # given the commands coda-node 0.1.1's `start` line maps to
    for name in ("start", "bridge"):
        command = cli.commands[name]
        # then -t is the token (and start's -H and -p the probes' host and port)
        opts = {opt for param in command.params for opt in param.opts}
        assert "-t" in opts, name
    start_opts = {opt for param in cli.commands["start"].params for opt in param.opts}
    assert {"-H", "-p", "-d"} <= start_opts


def test_dash_dash_reset_deletes_without_a_prompt_and_reset_still_asks(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given persisted files, and no first-runtime files (the temporary directory is the test's)
    clean_env.setattr("coda_bridge.identity.connect.legacy_dir", lambda: tmp_path)
    paths = ensure_state_dir(Path(os.environ["CODA_STATE_DIR"]))
    write_private(paths.config, "x\n")

    # when `reset` is refused at its prompt, then `--reset` runs with no input at all
    refused = CliRunner().invoke(cli, ["reset"], input="n\n")
    assert refused.exit_code != 0 and paths.config.exists()
    result = CliRunner().invoke(cli, ["--reset"], input="")

    # then the second deleted everything without asking
    assert result.exit_code == 0, result.output
    assert "?" not in result.output
    assert "1 file(s) removed" in result.output
    assert not any(path.exists() for path in StatePaths(paths.root).all_files())


def test_without_a_command_or_reset_it_is_a_usage_error(clean_env: pytest.MonkeyPatch) -> None:
    assert CliRunner().invoke(cli, ["--debug"]).exit_code == 2
    assert "Missing command" in CliRunner().invoke(cli, ["--debug"]).output
