"""A small OpenQASM 3 subset compiled to the Native Gate IR of one target.

Enough for hand-written test circuits and demos: registers, the standard
gates, measurement, comments. Gates outside the target's native set are
decomposed into it (exactly, up to a global phase) by the gate table in
:mod:`coda_bridge.circuits.lowering`; every produced circuit validates for the target.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import IRError
from .ir import MAX_QUBITS, TARGETS, Circuit, Metadata
from .lowering import GATES, Lowering, id_without_duration

__all__ = ["QASM_OPTIMIZATION_LEVEL", "qasm_to_ir"]

#: Level recorded in the metadata: the conversion does not optimise.
QASM_OPTIMIZATION_LEVEL = 0
#: Longest statement excerpt quoted in an error message.
QUOTE_MAX_CHARS = 60

PI = math.pi
_NAME = r"[A-Za-z_][A-Za-z_0-9]*"
_INDEX = r"\d{1,9}"
_OPERAND = rf"{_NAME}(?:\s*\[\s*{_INDEX}\s*\])?"
_OPERAND_RE = re.compile(rf"({_NAME})(?:\s*\[\s*({_INDEX})\s*\])?")
_HEADER_RE = re.compile(r"OPENQASM\s+(\S+)")
_INCLUDE_RE = re.compile(r'include\s+"[^"]*"')
_QUBIT_DECL_RE = re.compile(rf"qubit(?:\s*\[\s*({_INDEX})\s*\])?\s+({_NAME})")
_BIT_DECL_RE = re.compile(rf"bit(?:\s*\[\s*({_INDEX})\s*\])?\s+({_NAME})")
_QREG_RE = re.compile(rf"qreg\s+({_NAME})\s*\[\s*({_INDEX})\s*\]")
_CREG_RE = re.compile(rf"creg\s+({_NAME})\s*\[\s*({_INDEX})\s*\]")
_MEASURE_ARROW_RE = re.compile(rf"measure\s+({_OPERAND})\s*->\s*({_OPERAND})")
_MEASURE_ASSIGN_RE = re.compile(rf"({_OPERAND})\s*=\s*measure\s+({_OPERAND})")
_MEASURE_BARE_RE = re.compile(rf"measure\s+({_OPERAND})")
_GATE_RE = re.compile(rf"({_NAME})\s*(?:\((.*)\))?\s*((?:{_OPERAND})(?:\s*,\s*{_OPERAND})*)")
_COMMENT_RE = re.compile(r'"[^"\n]*"|//[^\n]*|/\*.*?\*/|/\*', re.DOTALL)
_UNSUPPORTED = frozenset(
    {"reset", "if", "else", "for", "while", "gate", "def", "let", "const", "input", "output", "box", "delay"}
    | {"opaque", "defcal", "cal", "defcalgrammar", "return", "end", "gphase", "extern", "switch"}
)
#: Classical positions from here up belong to measurements without a named bit, in statement order.
_UNNAMED_BIT_BASE = 1 << 30
_CONSTANTS = {"pi": PI, "π": PI, "tau": 2 * PI, "τ": 2 * PI}


# --------------------------------------------------------------------------- source handling


@dataclass(frozen=True, slots=True)
class _Statement:
    """One ``;``-terminated statement, whitespace collapsed, with the line it starts on."""

    line: int
    text: str


def _fail(line: int, message: str) -> IRError:
    """The error for a problem on ``line`` of the source."""
    return IRError(f"line {line}: {message}")


def _quote(text: str) -> str:
    """``repr`` of a source excerpt, cut short."""
    return repr(text if len(text) <= QUOTE_MAX_CHARS else text[: QUOTE_MAX_CHARS - 3] + "...")


def _strip_comments(text: str) -> str:
    """``text`` without comments; block comments keep their newlines so line numbers hold."""

    def replace(match: re.Match[str]) -> str:
        chunk = match.group(0)
        if chunk.startswith('"'):
            return chunk
        if chunk == "/*":
            raise _fail(text.count("\n", 0, match.start()) + 1, "unterminated /* comment")
        return "\n" * chunk.count("\n")

    return _COMMENT_RE.sub(replace, text)


def _statements(text: str) -> Iterator[_Statement]:
    """The statements of comment-free source, each with its starting line."""
    line = 1
    start_line = 0
    parts: list[str] = []
    for char in text:
        if char == ";":
            yield _Statement(start_line or line, " ".join("".join(parts).split()))
            parts, start_line = [], 0
            continue
        if not start_line and not char.isspace():
            start_line = line
        if char == "\n":
            line += 1
        parts.append(char)
    if start_line:
        raise _fail(start_line, f"statement {_quote(' '.join(''.join(parts).split()))} does not end with ';'")


# --------------------------------------------------------------------------- angle expressions

_TOKEN_RE = re.compile(r"\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|[A-Za-z_πτ][A-Za-z_0-9]*|\S")


class _AngleParser:
    """Recursive descent over ``+ - * /``, unary signs, parentheses, numbers and ``pi``; no eval."""

    def __init__(self, expression: str, line: int) -> None:
        self.expression = expression
        self.line = line
        self.tokens = _TOKEN_RE.findall(expression)
        self.position = 0

    def error(self, why: str) -> IRError:
        return _fail(self.line, f"bad angle expression {_quote(self.expression)}: {why}")

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end")
        self.position += 1
        return token

    def parse(self) -> float:
        if not self.tokens:
            raise self.error("empty")
        value = self.sum()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        if not math.isfinite(value):
            raise self.error("not finite")
        return value

    def sum(self) -> float:
        value = self.product()
        while self.peek() in ("+", "-"):
            value = value + self.product() if self.take() == "+" else value - self.product()
        return value

    def product(self) -> float:
        value = self.unary()
        while self.peek() in ("*", "/"):
            operator = self.take()
            operand = self.unary()
            if operator == "*":
                value *= operand
            elif operand == 0:
                raise self.error("division by zero")
            else:
                value /= operand
        return value

    def unary(self) -> float:
        if self.peek() in ("+", "-"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.atom()

    def atom(self) -> float:
        token = self.take()
        if token == "(":
            value = self.sum()
            if self.take() != ")":
                raise self.error("missing ')'")
            return value
        if token in _CONSTANTS:
            return _CONSTANTS[token]
        if token[0].isdigit() or token[0] == ".":
            try:
                return float(token)
            except ValueError:
                raise self.error(f"bad number {token!r}") from None
        raise self.error(f"unexpected {token!r}")


def _parse_angles(raw: str | None, line: int) -> list[float]:
    """The comma-separated angle expressions inside a gate's parentheses."""
    if raw is None or not raw.strip():
        return []
    return [_AngleParser(part, line).parse() for part in raw.split(",")]


# --------------------------------------------------------------------------- the program


@dataclass(slots=True)
class _Register:
    """A declared register: its flat indices are ``start`` to ``start + size - 1``."""

    name: str
    start: int
    size: int


@dataclass(slots=True)
class _Program:
    """What the statements declared and did, in order."""

    target: str
    qubits: dict[str, _Register] = field(default_factory=dict)
    bits: dict[str, _Register] = field(default_factory=dict)
    num_qubits: int = 0
    num_bits: int = 0
    #: classical position -> measured qubit; unnamed destinations sort after every declared bit
    measured: dict[int, int] = field(default_factory=dict)
    implicit: int = 0
    lowering: Lowering = field(init=False)

    def __post_init__(self) -> None:
        self.lowering = Lowering(self.target)

    def declare(self, line: int, kind: str, name: str, size_text: str | None) -> None:
        """Add a qubit or bit register after the ones declared before it."""
        size = 1 if size_text is None else int(size_text)
        if size < 1:
            raise _fail(line, f"register {name!r} must have at least one {kind}")
        if name in self.qubits or name in self.bits:
            raise _fail(line, f"register {name!r} is declared twice")
        if kind == "qubit":
            if self.num_qubits + size > MAX_QUBITS:
                raise _fail(
                    line, f"{self.num_qubits + size} qubits declared; the IR allows at most {MAX_QUBITS}"
                )
            self.qubits[name] = _Register(name, self.num_qubits, size)
            self.num_qubits += size
        else:
            self.bits[name] = _Register(name, self.num_bits, size)
            self.num_bits += size

    def resolve(self, line: int, operand: str, registers: dict[str, _Register], kind: str) -> list[int]:
        """Flat indices named by ``name`` or ``name[i]``."""
        match = _OPERAND_RE.fullmatch(operand.strip())
        if match is None:
            raise _fail(line, f"bad {kind} operand {_quote(operand)}")
        name, index = match.group(1), match.group(2)
        register = registers.get(name)
        if register is None:
            raise _fail(line, f"unknown {kind} register {name!r}")
        if index is None:
            return list(range(register.start, register.start + register.size))
        if int(index) >= register.size:
            raise _fail(line, f"{name}[{index}] is outside {kind} register {name!r} of size {register.size}")
        return [register.start + int(index)]

    def measure(self, line: int, qubit_operand: str, bit_operand: str | None) -> None:
        """Record which qubit lands in which classical position (a later write to a bit wins)."""
        qubits = self.resolve(line, qubit_operand, self.qubits, "qubit")
        if bit_operand is None:
            for qubit in qubits:
                self.measured[_UNNAMED_BIT_BASE + self.implicit] = qubit
                self.implicit += 1
            return
        bits = self.resolve(line, bit_operand, self.bits, "bit")
        if len(bits) != len(qubits):
            raise _fail(line, f"measure of {len(qubits)} qubit(s) into {len(bits)} bit(s)")
        for bit, qubit in zip(bits, qubits, strict=True):
            self.measured[bit] = qubit

    def apply(self, line: int, name: str, raw_params: str | None, raw_operands: str) -> None:
        """Lower one gate application, broadcast over whole-register operands."""
        spec = GATES.get(name)
        if spec is None:
            raise _fail(line, f"unknown gate {name!r}")
        n_qubits, n_params, emit = spec
        params = _parse_angles(raw_params, line)
        if name == "id" and not params:
            emit = id_without_duration
        elif len(params) != n_params:
            raise _fail(line, f"gate {name!r} takes {n_params} parameter(s), got {len(params)}")
        operands = [self.resolve(line, o, self.qubits, "qubit") for o in raw_operands.split(",")]
        if len(operands) != n_qubits:
            raise _fail(line, f"gate {name!r} acts on {n_qubits} qubit(s), got {len(operands)}")
        width = {len(o) for o in operands if len(o) > 1}
        if len(width) > 1:
            raise _fail(line, f"gate {name!r} applied to registers of different sizes")
        for k in range(width.pop() if width else 1):
            qubits = [o[k] if len(o) > 1 else o[0] for o in operands]
            if len(set(qubits)) != len(qubits):
                raise _fail(line, f"gate {name!r} names qubit {self.qubit_name(qubits[0])} twice")
            emit(self.lowering, qubits, params)

    def qubit_name(self, index: int) -> str:
        """``q[i]`` for a flat qubit index, for messages."""
        for register in self.qubits.values():
            if register.start <= index < register.start + register.size:
                return f"{register.name}[{index - register.start}]"
        return str(index)


def _run(program: _Program, statement: _Statement) -> None:
    """Apply one statement to ``program``."""
    line, text = statement.line, statement.text
    if not text:
        return
    keyword = text.split(" ", 1)[0].split("(", 1)[0].split("[", 1)[0]
    if "{" in text or "}" in text or "@" in text or keyword in _UNSUPPORTED:
        raise _fail(line, f"unsupported statement {_quote(text)}")
    if match := _HEADER_RE.fullmatch(text):
        if match.group(1) not in ("2", "2.0", "3", "3.0"):
            raise _fail(line, f"unsupported OpenQASM version {match.group(1)!r}")
        return
    if _INCLUDE_RE.fullmatch(text) or keyword == "barrier":
        return
    if match := _QUBIT_DECL_RE.fullmatch(text):
        program.declare(line, "qubit", match.group(2), match.group(1))
    elif match := _QREG_RE.fullmatch(text):
        program.declare(line, "qubit", match.group(1), match.group(2))
    elif match := _BIT_DECL_RE.fullmatch(text):
        program.declare(line, "bit", match.group(2), match.group(1))
    elif match := _CREG_RE.fullmatch(text):
        program.declare(line, "bit", match.group(1), match.group(2))
    elif match := _MEASURE_ARROW_RE.fullmatch(text):
        program.measure(line, match.group(1), match.group(2))
    elif match := _MEASURE_ASSIGN_RE.fullmatch(text):
        program.measure(line, match.group(2), match.group(1))
    elif match := _MEASURE_BARE_RE.fullmatch(text):
        program.measure(line, match.group(1), None)
    elif match := _GATE_RE.fullmatch(text):
        program.apply(line, match.group(1), match.group(2), match.group(3))
    elif keyword in ("qubit", "bit", "qreg", "creg", "measure"):
        raise _fail(line, f"malformed {keyword} statement {_quote(text)}")
    else:
        raise _fail(line, f"cannot parse statement {_quote(text)}")


def qasm_to_ir(text: str, target: str, *, source_hash: str | None = None) -> Circuit:
    """Compile OpenQASM ``text`` into a circuit of native gates for ``target``.

    ``measurements`` follow the classical bit order; ``source_hash`` defaults to the
    SHA-256 of ``text``. Any error is an :class:`IRError` naming the line.
    """
    if target not in TARGETS:
        raise IRError(f"Unknown target {target!r:.80}; expected one of {', '.join(TARGETS)}")
    program = _Program(target)
    for statement in _statements(_strip_comments(text)):
        _run(program, statement)
    if program.num_qubits == 0:
        raise IRError("line 1: no qubits declared")
    return Circuit(
        target=target,
        num_qubits=program.num_qubits,
        gates=tuple(program.lowering.gates),
        measurements=tuple(qubit for _, qubit in sorted(program.measured.items())),
        metadata=Metadata(
            source_hash=source_hash or hashlib.sha256(text.encode("utf-8")).hexdigest(),
            compiled_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            optimization_level=QASM_OPTIMIZATION_LEVEL,
        ),
    )
