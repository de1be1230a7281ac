"""One owner per layout: broker keys in state/broker_keys.py, messages in queueing/messages.py, XACK in
status.py.

Read from the source (AST), so a key spelled by hand anywhere else, or a
message built around the owner, fails here before it drifts from the owner.
Docstrings may name a key; code may not.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coda_bridge", "actors")
KEYS_OWNER = Path("coda_bridge/state/broker_keys.py")
MESSAGES_OWNER = Path("coda_bridge/queueing/messages.py")
ACK_OWNER = Path("coda_bridge/pipeline/status.py")

#: The node's namespace as a key: ``coda-bridge:`` then the end of a literal (an f-string goes on), a
#: glob, or a segment and another ``:`` (``coda-bridge:refused``, a job field, and text are not keys).
NODE_KEY = re.compile(r"coda-bridge:($|\*|[^\s:]+:)")
#: dramatiq's key layout: its suffixes and sorted sets, and the node's wake-up lists beside them.
DRAMATIQ_KEY = re.compile(r"\.(msgs|XQ|DQ|wake)\b|__heartbeats__|__acks__|dramatiq:")
XACK = re.compile(r"\bxack\b", re.IGNORECASE)
#: An actor's own message builders (``Actor.send`` is left out: sockets and pipes have one too).
ACTOR_BUILDERS = {"message", "message_with_options", "send_with_options"}


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal (or literal part of an f-string) that is code, not a docstring."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _namespace_fstrings(tree: ast.AST) -> Iterator[int]:
    """f-strings that put a ``namespace`` (the broker's) before a ``:``: a dramatiq key spelled by hand."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr):
            continue
        for value, after in zip(node.values, node.values[1:], strict=False):
            if (
                isinstance(value, ast.FormattedValue)
                and "namespace" in ast.unparse(value.value)
                and isinstance(after, ast.Constant)
                and str(after.value).startswith(":")
            ):
                yield node.lineno


def _findings(pattern: re.Pattern[str], owner: Path) -> list[str]:
    found = []
    for path in _modules():
        relative = path.relative_to(ROOT)
        if relative == owner:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{relative}:{line}: {text!r}" for line, text in _literals(tree) if pattern.search(text)]
        if owner == KEYS_OWNER:
            found += [
                f"{relative}:{line}: f-string on the broker namespace" for line in _namespace_fstrings(tree)
            ]
    return found


@pytest.mark.parametrize(
    ("pattern", "what"), [(NODE_KEY, "the node's key namespace"), (DRAMATIQ_KEY, "dramatiq's key names")]
)
def test_broker_keys_are_spelled_only_in_the_keys_module(pattern: re.Pattern[str], what: str) -> None:
    # Given every module of the package and the actors
    # Then only state/broker_keys.py spells a key of the node's namespace or of dramatiq's layout
    assert _findings(pattern, KEYS_OWNER) == [], f"{what} spelled outside {KEYS_OWNER}"


def test_the_checks_find_a_layout_spelled_by_hand() -> None:
    # Given code spelling keys and messages by hand, as the modules did before they had owners
    code = """
import dramatiq
from dramatiq import Message
prefix = f"coda-bridge:{qpu_id}:node"
lease = "coda-bridge:q:job:j"
dead = f"{broker.namespace}:{queue}.XQ"
depth = client.llen(f"{self.broker.namespace}:{JOBS_QUEUE}")
beats = f"{namespace}:__heartbeats__"
one = dramatiq.Message(queue_name="jobs", actor_name="execute", args=(), kwargs={}, options={})
two = Message(queue_name="jobs", actor_name="execute", args=(), kwargs={}, options={})
execute.send_with_options(args=(fields, entry_id), delay=1000)
cloud.xack(stream, group, entry_id)
"""
    tree = ast.parse(code)
    texts = [text for _, text in _literals(tree)]

    # Then each check finds its own
    assert sorted(text for text in texts if NODE_KEY.search(text)) == ["coda-bridge:", "coda-bridge:q:job:j"]
    assert sorted(text for text in texts if DRAMATIQ_KEY.search(text)) == [".XQ", ":__heartbeats__"]
    assert len(list(_namespace_fstrings(tree))) == 3
    assert len(_built_messages(tree)) == 3  # dramatiq.Message, Message, send_with_options
    assert [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "xack"] == ["xack"]


def test_xack_is_sent_only_by_the_status_writer() -> None:
    found = []
    for path in _modules():
        relative = path.relative_to(ROOT)
        if relative == ACK_OWNER:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [
            f"{relative}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "xack"
        ]
        found += [f"{relative}:{line}: {text!r}" for line, text in _literals(tree) if XACK.search(text)]
    assert found == []


def _built_messages(tree: ast.AST) -> list[str]:
    """Calls building a dramatiq message: ``dramatiq.Message``, its ``Message``, an actor's builders."""
    from_dramatiq = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dramatiq")
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "Message" and "Message" in from_dramatiq:
            found.append(ast.unparse(func))
        elif (
            isinstance(func, ast.Attribute)
            and func.attr == "Message"
            and ast.unparse(func.value) == "dramatiq"
        ):
            found.append(ast.unparse(func))
        elif isinstance(func, ast.Attribute) and func.attr in ACTOR_BUILDERS:
            found.append(ast.unparse(func))
    return found


def test_messages_are_built_only_in_the_messages_module() -> None:
    # Given every module of the package and the actors
    found = []
    for path in _modules():
        relative = path.relative_to(ROOT)
        if relative != MESSAGES_OWNER:
            tree = ast.parse(path.read_text(), filename=str(path))
            found += [f"{relative}: {call}" for call in _built_messages(tree)]
    # Then none builds a message by hand
    assert found == []
