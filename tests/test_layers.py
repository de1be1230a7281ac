"""No import runs back up the layers: an AST check of every module of the package and of ``actors``.

A module may import from its own layer and the layers below it.  The
development tooling (``devtools/``, ``devtools/devcloud/``) is imported only by the CLI
(and the tests, which are not checked here).  ``TYPE_CHECKING`` imports count
too: a type from above is a dependency from above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "coda_bridge"

#: Layers from the bottom: a module's layer is that of its first name below the package that is listed.
LAYERS: list[frozenset[str]] = [
    # the core: errors, settings, logging, helpers every role uses; and three leaf modules that import
    # nothing of the package but errors, in the folder of their role until the rename step of issue
    # 20.4/8 moves files: the process-tree helper, the origin and window parsers the settings use
    frozenset(
        {
            "version", "errors", "settings", "urls", "logs", "backoff", "replies", "failpoints", "trust",
            "sdnotify", "lean_imports", "ops.proctree", "cloud.origins", "control.windows",
        }
    ),
    # the node's parts, each for one concern (device: reading an executor's status)
    frozenset(
        {"queueing", "state", "metrics", "cloud", "identity", "vpn", "executors", "circuits", "device"}
    ),
    # a job's way and the node's control, and what one process builds of them
    frozenset({"pipeline", "control", "components"}),
    # the probes app (and the collectors /metrics serves, which read the pause too) and the dramatiq actors
    frozenset({"web", "metrics.collectors", "actors"}),
    # processes: start, its parts, stop, status, doctor
    frozenset({"ops"}),
    # the command line, and the package's facade (the public API, re-exported lazily)
    frozenset({"cli", "__init__", "__main__"}),
]  # fmt: skip
#: Development tooling: only the CLI may import it.
DEV = frozenset({"devtools"})
DEV_IMPORTERS = frozenset({"cli", "devtools"})


def _unit(module: str) -> str:
    """``coda_bridge.ops.proctree`` -> the most specific name :data:`LAYERS` or :data:`DEV` lists."""
    parts = module.split(".")
    if parts[0] == "actors":
        return "actors"
    inner = parts[1:] if parts[0] == PACKAGE else parts
    if not inner:
        return "__init__"
    dotted = ".".join(inner[:2])
    listed = set().union(*LAYERS)
    return dotted if dotted in listed else inner[0]


def layer(module: str) -> int | None:
    unit = _unit(module)
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if parts[0] != PACKAGE or len(parts) > 2 else [PACKAGE, "__init__"]
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    elif package[-1] == "__init__":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from . import x` imports a submodule x, or a name of the package (its __init__)
            names = [target]
            if not node.module:
                names = [_submodule_or_package(target, alias.name) for alias in node.names]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name.split(".")[0] in (PACKAGE, "actors")]


def _submodule_or_package(package: str, name: str) -> str:
    folder = REPO.joinpath(*package.split("."))
    is_module = (folder / name).is_dir() or (folder / f"{name}.py").is_file()
    return f"{package}.{name}" if is_module else package


def _sources() -> list[Path]:
    return sorted([*(REPO / PACKAGE).rglob("*.py"), *(REPO / "actors").rglob("*.py")])


def violations() -> list[str]:
    found = []
    for path in _sources():
        module = _module_name(path)
        unit = _unit(module)
        if unit in DEV:
            continue  # the tooling builds whole nodes: it may import anything
        own = layer(module)
        for line, imported in _imports(path, module):
            where = f"{path.relative_to(REPO)}:{line} imports {imported}"
            if _unit(imported) in DEV:
                if unit not in DEV_IMPORTERS:
                    found.append(f"{where} (development tooling, for the CLI and tests only)")
                continue
            theirs = layer(imported)
            if own is None or theirs is None:
                found.append(f"{where} (a module no layer lists: add it to LAYERS)")
            elif theirs > own:
                found.append(f"{where} (layer {theirs} from layer {own})")
    return found


def test_no_import_runs_back_up_the_layers() -> None:
    assert violations() == []


def test_a_name_of_the_package_is_an_import_of_its_facade() -> None:
    # `from .. import __version__` in queueing/ imports the package's __init__ (the top layer)
    assert _submodule_or_package("coda_bridge", "__version__") == "coda_bridge"
    assert layer("coda_bridge") == len(LAYERS) - 1
    assert _submodule_or_package("coda_bridge", "queueing") == "coda_bridge.queueing"


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("coda_bridge.errors", 0),
        ("coda_bridge.ops.proctree", 0),
        ("coda_bridge.state.registry", 1),
        ("coda_bridge.pipeline.execute", 2),
        ("coda_bridge.web.probes_app", 3),
        ("actors.shared", 3),
        ("coda_bridge.ops.runners", 4),
        ("coda_bridge.cli.main", 5),
    ],
)
def test_each_module_has_its_layer(module: str, expected: int) -> None:
    assert layer(module) == expected


def test_the_check_sees_an_import_from_above(tmp_path: Path) -> None:
    # given a module of the core that imports from ops / when its imports are read / then one is from above
    source = tmp_path / "core.py"
    source.write_text("from .ops.exits import EX_CONFIG\nimport coda_bridge.cli.main\n")
    imported = [name for _, name in _imports(source, "coda_bridge.core")]
    assert imported == ["coda_bridge.ops.exits", "coda_bridge.cli.main"]
    assert all(layer(name) is not None and layer(name) > 0 for name in imported)  # type: ignore[operator]
