"""Find the executor to run jobs with, in the order of PROTOCOL.md 4.4.

1. the ``executor_factory`` setting (``module:attribute``);
2. the top-level ``executor_factory`` key of the device YAML;
3. the one importable top-level package with ``<package>.executor_factory:create_executor``.

With none of them the node refuses to run (:class:`~coda_bridge.errors.ExecutorError`, exit 78):
unlike the first runtime, it never falls back to the no-op executor, whose all-zero counts a
real QPU would report as results.  The no-op executor runs only when named: ``executor_factory = "noop"``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import logging
import pkgutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ExecutorError
from ..settings import DEFAULT_DEVICE_CONFIG as SETTINGS_DEVICE_CONFIG
from ..trust import UntrustedFile, check_trusted, untrusted
from .base import resolve_awaitable
from .noop import NoopExecutor

__all__ = [
    "DEFAULT_DEVICE_CONFIG",
    "NOOP_SPEC",
    "DISCOVERY_ATTRIBUTE",
    "DISCOVERY_MODULE",
    "discover_backends",
    "executor_spec",
    "load_executor",
    "resolve_executor",
]

logger = logging.getLogger(__name__)

#: Device YAML read when the ``device_config`` setting is empty, relative to the working directory
#: (settings built by :func:`~coda_bridge.settings.load_settings` already carry it).
DEFAULT_DEVICE_CONFIG = Path(SETTINGS_DEVICE_CONFIG)
#: Submodule a backend package provides to be discovered.
DISCOVERY_MODULE = "executor_factory"
#: Factory attribute of that submodule.
DISCOVERY_ATTRIBUTE = "create_executor"
#: The ``executor_factory`` value that names the no-op executor (it is never picked otherwise).
NOOP_SPEC = "noop"
#: What to do when no executor is configured, at the end of the refusal.
HOW_TO_SET = (
    "set CODA_EXECUTOR_FACTORY=module:create_executor (or CODA_EXECUTOR_FACTORY=noop for the "
    "all-zeros test executor)"
)
#: Longest excerpt of a foreign error text quoted in a message.
QUOTE_MAX_CHARS = 200

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _setting(settings: Any, name: str) -> Any:
    """One setting from a settings object or a plain mapping; missing is ``None``."""
    if isinstance(settings, Mapping):
        return settings.get(name)
    return getattr(settings, name, None)


def _brief(exc: BaseException) -> str:
    """``Type: message`` on one line, cut short."""
    text = " ".join(str(exc).split())
    if len(text) > QUOTE_MAX_CHARS:
        text = text[: QUOTE_MAX_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_executor(settings: Any) -> tuple[object, str]:
    """The executor to use and a human description of where it came from.

    :class:`~coda_bridge.errors.ExecutorError` when none is configured or discovered.
    """
    spec, origin = executor_spec(settings)
    return load_executor(spec, settings), origin


def executor_spec(settings: Any) -> tuple[Any, str]:
    """Which executor the settings name and where that came from, without importing it.

    ``start`` asks before starting any process: with nothing configured or discovered it is
    an :class:`~coda_bridge.errors.ExecutorError` saying how to set one.
    """
    spec = _setting(settings, "executor_factory")
    if spec:
        return spec, f"setting executor_factory={spec}"

    config_path = _device_config_path(settings)
    if config_path is not None:
        spec = _device_config_factory(config_path)
        if spec:
            return spec, f"device config {config_path} executor_factory={spec}"

    backends = discover_backends()
    if len(backends) == 1:
        spec = f"{backends[0]}.{DISCOVERY_MODULE}:{DISCOVERY_ATTRIBUTE}"
        return spec, f"discovered package {backends[0]} ({spec})"
    if backends:
        found = f"several packages provide {DISCOVERY_MODULE}.{DISCOVERY_ATTRIBUTE} ({', '.join(backends)})"
    else:
        found = (
            f"no executor_factory setting, device config entry or package with "
            f"{DISCOVERY_MODULE}.{DISCOVERY_ATTRIBUTE}"
        )
    raise ExecutorError(f"no executor is configured: {found}; {HOW_TO_SET}")


# --------------------------------------------------------------------------- device config


def _device_config_path(settings: Any) -> Path | None:
    """The device YAML to read: the setting, else ``./site/device.yaml`` when it exists."""
    configured = _setting(settings, "device_config")
    if configured:
        path = Path(str(configured)).expanduser()
        if not path.is_file():
            raise ExecutorError(f"device config {path} (setting device_config) is not a readable file")
        return path
    return DEFAULT_DEVICE_CONFIG if DEFAULT_DEVICE_CONFIG.is_file() else None


def _device_config_factory(path: Path) -> str | None:
    """The top-level ``executor_factory`` of the device YAML, if it names one (never another user's file)."""
    try:
        check_trusted(path, "device config")
    except UntrustedFile as exc:
        raise ExecutorError(str(exc)) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ExecutorError(f"device config {path} cannot be read: {_brief(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ExecutorError(f"device config {path} is not valid YAML: {_brief(exc)}") from exc
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ExecutorError(
            f"device config {path} must be a mapping at the top level, got {type(data).__name__}"
        )
    spec = data.get("executor_factory")
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        raise ExecutorError(
            f"device config {path}: executor_factory must be a 'module:attribute' string, "
            f"got {type(spec).__name__}"
        )
    return spec.strip()


# --------------------------------------------------------------------------- discovery


def discover_backends() -> list[str]:
    """Importable top-level packages with an ``executor_factory`` submodule, sorted.

    Nothing is imported: each package's own directories are searched for the submodule.
    """
    found = []
    for info in pkgutil.iter_modules():
        if not info.ispkg:
            continue
        try:
            spec = info.module_finder.find_spec(info.name)  # type: ignore[call-arg]
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                continue
            sub = importlib.machinery.PathFinder.find_spec(f"{info.name}.{DISCOVERY_MODULE}", list(locations))
        except Exception as exc:  # an odd finder must not stop discovery
            logger.debug("skipping %s during executor discovery: %s", info.name, _brief(exc))
            continue
        if sub is not None:
            found.append(info.name)
    return sorted(found)


# --------------------------------------------------------------------------- loading


def _import(module_name: str, spec: str) -> Any:
    """Import ``module_name`` for ``spec``; any failure is an :class:`ExecutorError` naming it."""
    reason = _untrusted_module(module_name)
    if reason is not None:
        raise ExecutorError(f"executor factory {spec}: refusing to import {module_name}: {reason}")
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise ExecutorError(f"executor factory {spec}: cannot import {module_name} ({_brief(exc)})") from exc


def _untrusted_module(module_name: str) -> str | None:
    """Why a file of ``module_name`` or of a package above it, not imported yet, may not be trusted.

    Found as the import would find them, without running any of them.
    """
    parts = module_name.split(".")
    search: list[str] | None = None
    for index in range(len(parts)):
        name = ".".join(parts[: index + 1])
        module = sys.modules.get(name)
        if module is not None:  # imported already: nothing of it runs again
            locations = getattr(module, "__path__", None)
            if locations is None:
                return None  # not a package: the import says what is wrong
            search = list(locations)
            continue
        try:
            found = importlib.machinery.PathFinder.find_spec(name, search)
        except (ImportError, ValueError):
            return None  # the import says what is wrong
        if found is None:
            return None
        if found.has_location and found.origin:
            reason = untrusted(Path(found.origin))
            if reason is not None:
                return reason
        if found.submodule_search_locations is None:
            return None
        search = list(found.submodule_search_locations)
    return None


def load_executor(spec: Any, settings: Any = None) -> object:
    """The executor named by ``spec`` (``module:attribute``), instantiated when it is a factory.

    ``spec`` may also be the executor or the factory itself, for settings built in code;
    :data:`NOOP_SPEC` names the no-op executor.
    """
    if not isinstance(spec, str):
        return _instantiate(spec, _show_target(spec), settings)
    spec = spec.strip()
    if spec == NOOP_SPEC:
        return NoopExecutor()
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ExecutorError(f"executor factory {spec!r} must look like 'module:attribute'")
    target: Any = _import(module_name, spec)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ExecutorError(
                f"executor factory {spec}: {module_name} has no attribute {attribute!r}"
            ) from None
    return _instantiate(target, spec, settings)


def _show_target(target: object) -> str:
    """A short name for an in-code factory or executor, for messages."""
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}:{name}"


def _is_executor(target: object) -> bool:
    """An executor object (not a class) with a callable ``run``."""
    return not isinstance(target, type) and callable(getattr(target, "run", None))


def _instantiate(target: Any, spec: str, settings: Any) -> object:
    """``target`` itself when it is an executor, else what the factory returns."""
    if _is_executor(target):
        return target
    if not callable(target):
        raise ExecutorError(f"executor factory {spec} is neither an executor with run() nor a factory")
    args, kwargs = _factory_arguments(target, spec, settings)
    try:
        made = resolve_awaitable(target(*args, **kwargs))
    except Exception as exc:
        raise ExecutorError(f"executor factory {spec} raised {_brief(exc)}") from exc
    if not _is_executor(made):
        raise ExecutorError(
            f"executor factory {spec} returned {type(made).__name__}, which has no run() method"
        )
    return made


def _factory_arguments(factory: Any, spec: str, settings: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """How to call ``factory``: with the settings, or with nothing.

    A required positional parameter takes the settings, as does one named ``settings``
    (by keyword); a function's lone optional parameter does too. A class's other
    optional parameters are its own knobs and are left alone.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C types have no signature
        return (), {}
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is p.empty]
    kw_required = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 1 or [p for p in kw_required if p.name != "settings"]:
        names = [p.name for p in required + kw_required]
        raise ExecutorError(
            f"executor factory {spec} needs arguments {names}; a factory takes the settings or nothing"
        )
    if required:
        return (settings,), {}
    named = signature.parameters.get("settings")
    if named is not None and named.kind is not inspect.Parameter.VAR_KEYWORD:
        if named.kind is inspect.Parameter.POSITIONAL_ONLY:
            return ((settings,), {}) if positional[0] is named else ((), {})
        return (), {"settings": settings}
    if isinstance(factory, type):
        return (), {}
    if positional or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return (settings,), {}
    return (), {}
