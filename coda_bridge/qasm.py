"""A small OpenQASM 3 subset compiled to the Native Gate IR of one target.

Enough for hand-written test circuits and demos: registers, the standard
gates, measurement, comments. Gates outside the target's native set are
decomposed into it (exactly, up to a global phase); every produced circuit
validates for the target.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .errors import IRError
from .ir import LEGAL_GATES, MAX_QUBITS, TARGETS, Circuit, Gate, Metadata

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


# --------------------------------------------------------------------------- target lowering


@dataclass(slots=True)
class _Lowering:
    """Emits native gates of one target; the decompositions are exact up to a global phase."""

    target: str
    gates: list[Gate] = field(default_factory=list)

    def native(self, name: str, qubits: tuple[int, ...], params: tuple[float, ...] = ()) -> None:
        """Append one gate as is; the target's legality is checked when the circuit is built."""
        self.gates.append(Gate(gate=name, qubits=qubits, params=tuple(float(p) for p in params)))

    # single qubit: rx, ry, rz are legal on every target
    def rx(self, q: int, theta: float) -> None:
        self.native("rx", (q,), (theta,))

    def ry(self, q: int, theta: float) -> None:
        self.native("ry", (q,), (theta,))

    def rz(self, q: int, theta: float) -> None:
        self.native("rz", (q,), (theta,))

    def h(self, q: int) -> None:
        """H = RY(pi/2) . Z."""
        self.rz(q, PI)
        self.ry(q, PI / 2)

    def u(self, q: int, theta: float, phi: float, lam: float) -> None:
        """U(theta, phi, lambda) = RZ(phi) . RY(theta) . RZ(lambda)."""
        self.rz(q, lam)
        self.ry(q, theta)
        self.rz(q, phi)

    # two qubit
    def cz(self, a: int, b: int) -> None:
        """Controlled-Z (symmetric in its qubits)."""
        if self.target == "cz":
            self.native("cz", (a, b))
        elif self.target == "pcz":
            self.native("cp", (a, b), (PI,))
        else:  # CZ = (I x RY(-pi/2)) . CNOT . (I x RY(pi/2))
            self.ry(b, PI / 2)
            self.cnot(a, b)
            self.ry(b, -PI / 2)

    def cnot(self, control: int, target: int) -> None:
        """Controlled-X on ``target``."""
        if self.target == "cnot":
            self.native("cnot", (control, target))
        elif self.target == "iswap":
            # two iSWAPs (Schuch and Siewert, PRA 67, 032301)
            self.rz(target, PI / 2)
            self.native("iswap", (control, target))
            self.rx(control, -PI / 2)
            self.native("iswap", (control, target))
            self.rz(control, PI / 2)
            self.rz(target, PI / 2)
            self.rx(target, -PI / 2)
        else:  # CNOT = (I x RY(pi/2)) . CZ . (I x RY(-pi/2))
            self.ry(target, -PI / 2)
            self.cz(control, target)
            self.ry(target, PI / 2)

    def cp(self, a: int, b: int, lam: float) -> None:
        """Controlled phase diag(1, 1, 1, e^{i lam}): two CNOTs around RZ(-lam/2), then RZ(lam/2) on both."""
        if self.target == "pcz":
            self.native("cp", (a, b), (lam,))
            return
        self.cnot(a, b)
        self.rz(b, -lam / 2)
        self.cnot(a, b)
        self.rz(a, lam / 2)
        self.rz(b, lam / 2)

    def iswap(self, a: int, b: int) -> None:
        """iSWAP = (S x S), H on ``a``, CNOT(a, b), CNOT(b, a), H on ``b``, in time order."""
        if self.target == "iswap":
            self.native("iswap", (a, b))
            return
        self.rz(a, PI / 2)
        self.rz(b, PI / 2)
        self.h(a)
        self.cnot(a, b)
        self.cnot(b, a)
        self.h(b)

    def swap(self, a: int, b: int) -> None:
        """SWAP as three alternating CNOTs."""
        self.cnot(a, b)
        self.cnot(b, a)
        self.cnot(a, b)


#: Emits one QASM gate application: (lowering, flat qubit indices, evaluated params).
_Emit = Callable[[_Lowering, list[int], list[float]], None]


def _single(rotation: str, angle: float) -> _Emit:
    """A fixed rotation, for named gates like ``x`` and ``s``."""

    def emit(out: _Lowering, qubits: list[int], _params: list[float]) -> None:
        out.native(rotation, (qubits[0],), (angle,))

    return emit


def _native_or(name: str, fallback: _Emit) -> _Emit:
    """The native gate when the target has it, else ``fallback``."""

    def emit(out: _Lowering, qubits: list[int], params: list[float]) -> None:
        if name in LEGAL_GATES[out.target]:
            out.native(name, tuple(qubits), tuple(params))
        else:
            fallback(out, qubits, params)

    return emit


#: QASM gate name -> (qubits, params, emitter).
_GATES: dict[str, tuple[int, int, _Emit]] = {
    # native gates of any target
    "rx": (1, 1, lambda o, q, p: o.rx(q[0], p[0])),
    "ry": (1, 1, lambda o, q, p: o.ry(q[0], p[0])),
    "rz": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "id": (1, 1, lambda o, q, p: o.native("id", (q[0],), (p[0],))),
    "x90": (1, 0, _native_or("x90", _single("rx", PI / 2))),
    "y_minus_90": (1, 0, _native_or("y_minus_90", _single("ry", -PI / 2))),
    "virtual_z": (1, 1, _native_or("virtual_z", lambda o, q, p: o.rz(q[0], p[0]))),
    "cz": (2, 0, lambda o, q, p: o.cz(q[0], q[1])),
    "cnot": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "cp": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "iswap": (2, 0, lambda o, q, p: o.iswap(q[0], q[1])),
    # standard gates
    "i": (1, 0, lambda o, q, p: o.native("id", (q[0],), (0.0,))),
    "x": (1, 0, _single("rx", PI)),
    "y": (1, 0, _single("ry", PI)),
    "z": (1, 0, _single("rz", PI)),
    "h": (1, 0, lambda o, q, p: o.h(q[0])),
    "s": (1, 0, _single("rz", PI / 2)),
    "sdg": (1, 0, _single("rz", -PI / 2)),
    "t": (1, 0, _single("rz", PI / 4)),
    "tdg": (1, 0, _single("rz", -PI / 4)),
    "sx": (1, 0, _single("rx", PI / 2)),
    "sxdg": (1, 0, _single("rx", -PI / 2)),
    "p": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "phase": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "u1": (1, 1, lambda o, q, p: o.rz(q[0], p[0])),
    "u2": (1, 2, lambda o, q, p: o.u(q[0], PI / 2, p[0], p[1])),
    "u3": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "u": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "U": (1, 3, lambda o, q, p: o.u(q[0], p[0], p[1], p[2])),
    "cx": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "CX": (2, 0, lambda o, q, p: o.cnot(q[0], q[1])),
    "cphase": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "cu1": (2, 1, lambda o, q, p: o.cp(q[0], q[1], p[0])),
    "swap": (2, 0, lambda o, q, p: o.swap(q[0], q[1])),
}


def _id_without_duration(out: _Lowering, qubits: list[int], params: list[float]) -> None:
    """``id q;`` of stdgates.inc has no duration; the native ``id`` gets 0."""
    out.native("id", (qubits[0],), (params[0] if params else 0.0,))


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
    lowering: _Lowering = field(init=False)

    def __post_init__(self) -> None:
        self.lowering = _Lowering(self.target)

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
        spec = _GATES.get(name)
        if spec is None:
            raise _fail(line, f"unknown gate {name!r}")
        n_qubits, n_params, emit = spec
        params = _parse_angles(raw_params, line)
        if name == "id" and not params:
            emit = _id_without_duration
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
