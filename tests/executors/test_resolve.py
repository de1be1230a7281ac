"""Executor resolution, in the order of PROTOCOL.md 4.4, with throw-away modules and packages."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coda_bridge.errors import ExecutorError
from coda_bridge.executors import NoopExecutor, StateVectorExecutor, resolve_executor
from coda_bridge.executors.resolve import discover_backends, load_executor

LOGGER = "coda_bridge.executors.resolve"

EXECUTOR_SOURCE = """
class Exec:
    def __init__(self, origin="default", settings=None):
        self.origin = origin
        self.settings = settings

    def run(self, ir, shots):
        counts = {"0" * len(ir.measurements): shots}
        return {"counts": counts, "execution_time_ms": 0.0, "shots_completed": shots}
"""

Writer = Callable[[str, str], Path]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """Write throw-away modules into a directory on ``sys.path``; forget them afterwards."""
    root = tmp_path / "mods"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no ./site/device.yaml unless a test writes one
    written: list[str] = []

    def write(relative: str, source: str) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(relative.split("/", maxsplit=1)[0].removesuffix(".py"))
        return path

    # Only the throw-away directory and the standard library are searched: installed
    # packages of the machine running the tests must not change what discovery finds.
    stdlib = [p for p in sys.path if "site-packages" not in p and p not in ("", str(Path.cwd()))]
    monkeypatch.setattr(sys, "path", [str(root), *stdlib])
    import importlib

    importlib.invalidate_caches()
    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in written:
            del sys.modules[name]


def settings(**values: Any) -> SimpleNamespace:
    base: dict[str, Any] = {"executor_factory": None, "device_config": None}
    base.update(values)
    return SimpleNamespace(**base)


def refresh() -> None:
    import importlib

    importlib.invalidate_caches()


# --------------------------------------------------------------------------- 1. the setting


def test_setting_factory_taking_settings(modules: Writer) -> None:
    modules("mod_a.py", EXECUTOR_SOURCE + "\ndef make(settings):\n    return Exec('make', settings)\n")
    refresh()
    config = settings(executor_factory="mod_a:make")
    executor, origin = resolve_executor(config)
    assert origin == "setting executor_factory=mod_a:make"
    assert executor.origin == "make"  # type: ignore[attr-defined]
    assert executor.settings is config  # type: ignore[attr-defined]


def test_setting_factory_taking_nothing(modules: Writer) -> None:
    modules("mod_b.py", EXECUTOR_SOURCE + "\ndef make():\n    return Exec('bare')\n")
    refresh()
    executor, _ = resolve_executor(settings(executor_factory="mod_b:make"))
    assert executor.origin == "bare"  # type: ignore[attr-defined]


def test_setting_names_an_executor_object(modules: Writer) -> None:
    modules("mod_c.py", EXECUTOR_SOURCE + "\nEXECUTOR = Exec('object')\n")
    refresh()
    executor, _ = resolve_executor(settings(executor_factory="mod_c:EXECUTOR"))
    assert executor.origin == "object"  # type: ignore[attr-defined]


def test_setting_names_a_class(modules: Writer) -> None:
    modules(
        "mod_d.py",
        EXECUTOR_SOURCE
        + "\nclass Knobs(Exec):\n    def __init__(self, origin='knobs'):\n        super().__init__(origin)\n",
    )
    refresh()
    config = settings(executor_factory="mod_d:Exec")
    executor, _ = resolve_executor(config)
    assert executor.origin == "default"  # type: ignore[attr-defined]
    assert executor.settings is config  # type: ignore[attr-defined]  # passed by keyword
    executor, _ = resolve_executor(settings(executor_factory="mod_d:Knobs"))
    assert executor.origin == "knobs"  # type: ignore[attr-defined]  # a class's optional knob is left alone


def test_setting_with_dotted_attribute_and_async_factory(modules: Writer) -> None:
    modules(
        "mod_e.py",
        EXECUTOR_SOURCE + "\nclass Factories:\n    @staticmethod\n"
        "    async def make(settings):\n        return Exec('async')\n",
    )
    refresh()
    executor, _ = resolve_executor(settings(executor_factory="mod_e:Factories.make"))
    assert executor.origin == "async"  # type: ignore[attr-defined]


def test_setting_names_the_builtin_simulator() -> None:
    config = settings(
        executor_factory="coda_bridge.executors.simulator:create_executor",
        simulator_seed=5,
        simulator_max_qubits=7,
    )
    executor, origin = resolve_executor(config)
    assert isinstance(executor, StateVectorExecutor)
    assert (executor.seed, executor.max_qubits) == (5, 7)
    assert origin.startswith("setting executor_factory=coda_bridge.executors.simulator")


def test_mapping_settings_and_in_code_factory() -> None:
    executor, _ = resolve_executor({"executor_factory": NoopExecutor})
    assert isinstance(executor, NoopExecutor)
    assert isinstance(load_executor(NoopExecutor()), NoopExecutor)


@pytest.mark.parametrize(
    ("spec", "source", "fragment"),
    [
        ("nomodule_xyz:x", None, "executor factory nomodule_xyz:x: cannot import nomodule_xyz"),
        ("mod_f", EXECUTOR_SOURCE, "executor factory 'mod_f' must look like 'module:attribute'"),
        (":make", None, "must look like 'module:attribute'"),
        ("mod_f:", EXECUTOR_SOURCE, "must look like 'module:attribute'"),
        (
            "mod_f:missing",
            EXECUTOR_SOURCE,
            "executor factory mod_f:missing: mod_f has no attribute 'missing'",
        ),
        ("mod_f:Exec.nope", EXECUTOR_SOURCE, "has no attribute 'Exec.nope'"),
        (
            "mod_f:boom",
            "def boom():\n    raise RuntimeError('no device')\n",
            "mod_f:boom raised RuntimeError: no device",
        ),
        ("mod_f:number", "number = 5\n", "mod_f:number is neither an executor with run() nor a factory"),
        ("mod_f:make", "def make():\n    return 5\n", "mod_f:make returned int, which has no run() method"),
        ("mod_f:make", "def make(a, b):\n    pass\n", "mod_f:make needs arguments ['a', 'b']"),
        ("mod_f:make", "def make(*, key):\n    pass\n", "mod_f:make needs arguments ['key']"),
        (
            "mod_f:x",
            "raise ImportError('missing driver')\n",
            "cannot import mod_f (ImportError: missing driver)",
        ),
        ("mod_f:x", "def broken(:\n", "cannot import mod_f (SyntaxError"),
    ],
)
def test_bad_factory_paths(modules: Writer, spec: str, source: str | None, fragment: str) -> None:
    if source is not None:
        modules("mod_f.py", source)
        refresh()
    with pytest.raises(ExecutorError) as info:
        resolve_executor(settings(executor_factory=spec))
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_setting_wins_over_device_config(modules: Writer, tmp_path: Path) -> None:
    modules(
        "mod_g.py",
        EXECUTOR_SOURCE + "\ndef one():\n    return Exec('one')\n\ndef two():\n    return Exec('two')\n",
    )
    refresh()
    device = tmp_path / "device.yaml"
    device.write_text("executor_factory: mod_g:two\n")
    executor, _ = resolve_executor(settings(executor_factory="mod_g:one", device_config=str(device)))
    assert executor.origin == "one"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- 2. the device YAML


def test_device_config_setting(modules: Writer, tmp_path: Path) -> None:
    modules("mod_h.py", EXECUTOR_SOURCE + "\ndef make(settings):\n    return Exec('yaml')\n")
    refresh()
    device = tmp_path / "device.yaml"
    device.write_text("name: lab-1\nexecutor_factory: mod_h:make\nqubits: 5\n")
    executor, origin = resolve_executor(settings(device_config=str(device)))
    assert executor.origin == "yaml"  # type: ignore[attr-defined]
    assert origin == f"device config {device} executor_factory=mod_h:make"


def test_default_site_device_yaml(modules: Writer) -> None:
    modules("mod_i.py", EXECUTOR_SOURCE + "\ndef make():\n    return Exec('site')\n")
    refresh()
    Path("site").mkdir()
    Path("site/device.yaml").write_text("executor_factory: mod_i:make\n")
    executor, origin = resolve_executor(settings(device_config=""))
    assert executor.origin == "site"  # type: ignore[attr-defined]
    assert origin == "device config site/device.yaml executor_factory=mod_i:make"


@pytest.mark.parametrize("content", ["", "name: lab\n", "executor_factory:\n", "executor_factory: ''\n"])
def test_device_yaml_without_factory_falls_through(modules: Writer, tmp_path: Path, content: str) -> None:
    # given a device file that names no factory, and nothing else configured
    device = tmp_path / "device.yaml"
    device.write_text(content)
    # when the executor is resolved, then nothing is found and the node is refused one
    with pytest.raises(ExecutorError, match="no executor is configured"):
        resolve_executor(settings(device_config=str(device)))


def test_device_yaml_may_name_the_noop_executor(modules: Writer, tmp_path: Path) -> None:
    device = tmp_path / "device.yaml"
    device.write_text("executor_factory: noop\n")
    executor, origin = resolve_executor(settings(device_config=str(device)))
    assert isinstance(executor, NoopExecutor)
    assert origin.endswith("executor_factory=noop")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("executor_factory: [a\n", "is not valid YAML"),
        ("- a\n- b\n", "must be a mapping at the top level, got list"),
        ("executor_factory: 5\n", "executor_factory must be a 'module:attribute' string, got int"),
        ("executor_factory: nomodule_zz:make\n", "cannot import nomodule_zz"),
    ],
)
def test_bad_device_yaml(modules: Writer, tmp_path: Path, content: str, fragment: str) -> None:
    device = tmp_path / "device.yaml"
    device.write_text(content)
    with pytest.raises(ExecutorError) as info:
        resolve_executor(settings(device_config=str(device)))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_configured_device_yaml_missing(modules: Writer, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="is not a readable file"):
        resolve_executor(settings(device_config=str(tmp_path / "absent.yaml")))


# --------------------------------------------------------------------------- 3. discovery

BACKEND_FACTORY = (
    EXECUTOR_SOURCE + "\ndef create_executor(settings):\n    return Exec('discovered', settings)\n"
)


def test_discovery_finds_the_one_backend(modules: Writer) -> None:
    modules("lab_backend/__init__.py", "")
    modules("lab_backend/executor_factory.py", BACKEND_FACTORY)
    modules("plain_pkg/__init__.py", "")
    modules("single_module.py", "")
    refresh()
    config = settings()
    executor, origin = resolve_executor(config)
    assert executor.origin == "discovered"  # type: ignore[attr-defined]
    assert executor.settings is config  # type: ignore[attr-defined]
    assert origin == "discovered package lab_backend (lab_backend.executor_factory:create_executor)"


def test_discovery_accepts_a_subpackage_executor_factory(modules: Writer) -> None:
    modules("lab_backend2/__init__.py", "")
    modules("lab_backend2/executor_factory/__init__.py", BACKEND_FACTORY)
    refresh()
    assert discover_backends() == ["lab_backend2"]


def test_discovery_does_not_import_packages(modules: Writer) -> None:
    modules("heavy_one/__init__.py", "raise RuntimeError('imported heavy_one')\n")
    modules("heavy_one/executor_factory.py", BACKEND_FACTORY)
    modules("heavy_two/__init__.py", "raise RuntimeError('imported heavy_two')\n")
    refresh()
    assert discover_backends() == ["heavy_one"]
    assert "heavy_one" not in sys.modules
    assert "heavy_two" not in sys.modules


def test_several_backends_are_refused_naming_them(modules: Writer) -> None:
    # given two installed packages that both provide an executor factory
    for name in ("backend_a", "backend_b"):
        modules(f"{name}/__init__.py", "")
        modules(f"{name}/executor_factory.py", BACKEND_FACTORY)
    refresh()
    # when the executor is resolved, then it is refused naming both and how to choose
    with pytest.raises(ExecutorError) as refused:
        resolve_executor(settings())
    assert "backend_a, backend_b" in str(refused.value)
    assert "set CODA_EXECUTOR_FACTORY=" in str(refused.value)
    assert "backend_a" not in sys.modules


def test_no_executor_anywhere_is_refused_saying_how_to_set_one(
    modules: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    # given no setting, no device file and no backend package
    # when the executor is resolved
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(ExecutorError) as refused:
        resolve_executor(settings())
    # then it is one line saying how to set one, never a silent all-zeros executor
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("no executor is configured: no executor_factory setting")
    assert "set CODA_EXECUTOR_FACTORY=module:create_executor" in message
    assert "CODA_EXECUTOR_FACTORY=noop" in message
    assert "no-op" not in caplog.text


def test_backend_module_without_create_executor_is_refused(modules: Writer) -> None:
    modules("half_backend/__init__.py", "")
    modules("half_backend/executor_factory.py", "def something_else():\n    pass\n")
    refresh()
    with pytest.raises(ExecutorError, match=r"half_backend.executor_factory has no attribute"):
        resolve_executor(settings())


def test_broken_backend_is_an_error(modules: Writer) -> None:
    modules("bad_backend/__init__.py", "")
    modules(
        "bad_backend/executor_factory.py", "def create_executor():\n    raise OSError('no such device')\n"
    )
    refresh()
    with pytest.raises(ExecutorError, match=r"bad_backend.executor_factory:create_executor raised OSError"):
        resolve_executor(settings())


def test_device_config_wins_over_discovery(modules: Writer, tmp_path: Path) -> None:
    modules("lab_backend3/__init__.py", "")
    modules("lab_backend3/executor_factory.py", BACKEND_FACTORY)
    modules("mod_j.py", EXECUTOR_SOURCE + "\ndef make():\n    return Exec('yaml')\n")
    refresh()
    device = tmp_path / "device.yaml"
    device.write_text("executor_factory: mod_j:make\n")
    executor, _ = resolve_executor(settings(device_config=str(device)))
    assert executor.origin == "yaml"  # type: ignore[attr-defined]


# ------------------------------------------------------------------- 4. the no-op executor, by name only


def test_no_settings_at_all_is_refused(modules: Writer) -> None:
    with pytest.raises(ExecutorError, match="no executor is configured"):
        resolve_executor(None)


@pytest.mark.parametrize("spec", ["noop", " noop "])
def test_noop_runs_when_named(modules: Writer, spec: str) -> None:
    executor, origin = resolve_executor(settings(executor_factory=spec))
    assert isinstance(executor, NoopExecutor)
    assert origin.startswith("setting executor_factory=") and "noop" in origin


class _Got:
    """An executor recording what its factory was called with."""

    def __init__(self, got: Any) -> None:
        self.got = got

    def run(self, ir: Any, shots: int) -> None:
        return None


SETTINGS = SimpleNamespace(executor_factory=None)


def _named_default(settings: Any = None) -> _Got:
    return _Got(settings)


def _other_default(cfg: Any = None) -> _Got:
    return _Got(cfg)


def _keyword_only(*, settings: Any) -> _Got:
    return _Got(settings)


def _positional_only(settings: Any = None, /) -> _Got:
    return _Got(settings)


def _varargs(*args: Any) -> _Got:
    return _Got(args[0] if args else None)


def _nothing() -> _Got:
    return _Got("nothing")


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (_named_default, SETTINGS),
        (_other_default, SETTINGS),
        (_keyword_only, SETTINGS),
        (_positional_only, SETTINGS),
        (_varargs, SETTINGS),
        (_nothing, "nothing"),
        (_Got, SETTINGS),  # a class with a required parameter
        (lambda: _Got("lambda"), "lambda"),
    ],
)
def test_factory_calling_conventions(factory: Any, expected: Any) -> None:
    executor = load_executor(factory, SETTINGS)
    assert isinstance(executor, _Got)
    assert executor.got is expected or executor.got == expected


# --------------------------------------------------------------------------- files others can change


@pytest.mark.skipif(sys.platform != "linux" or __import__("os").geteuid() != 0, reason="chown needs root")
def test_a_package_another_user_owns_is_refused_before_any_of_it_runs(
    modules: Writer, tmp_path: Path
) -> None:
    import os

    # given a discoverable backend package on the import path that belongs to another user
    ran = tmp_path / "ran"
    init = modules("strangerpkg/__init__.py", f"open({str(ran)!r}, 'w').close()\n")
    factory = modules("strangerpkg/executor_factory.py", EXECUTOR_SOURCE + "\ncreate_executor = Exec\n")
    for path in (init, factory, init.parent):
        os.chown(path, 65534, 65534)
    refresh()

    # when the executor is resolved (discovered, or named)
    with pytest.raises(ExecutorError, match=r"refusing to import strangerpkg\.executor_factory: .*uid 65534"):
        resolve_executor(settings())
    with pytest.raises(ExecutorError, match=r"refusing to import strangerpkg: .*uid 65534"):
        load_executor("strangerpkg:Exec")

    # then none of its code ran
    assert not ran.exists()
    assert "strangerpkg" not in sys.modules


def test_a_device_config_anyone_can_write_is_refused(modules: Writer, tmp_path: Path) -> None:
    # given a device YAML that every user may change, naming a real executor
    modules("labexec.py", EXECUTOR_SOURCE)
    device = tmp_path / "device.yaml"
    device.write_text("executor_factory: labexec:Exec\n")
    device.chmod(0o666)

    # when the executor is resolved, then the file is refused, saying why
    with pytest.raises(ExecutorError, match=f"refusing device config {device}: file {device} has mode 0666"):
        resolve_executor(settings(device_config=str(device)))
