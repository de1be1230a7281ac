"""The package's layout: no file name used twice, and the development tooling fenced off from the runtime."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coda_bridge"
#: The development tooling: the local node, the throw-away Redis, the demo, submit, the cloud simulator.
DEVTOOLS = PACKAGE / "devtools"
DEVTOOLS_MODULE = "coda_bridge.devtools"
#: The only runtime module that may import the dev tooling: the CLI commands that run it (demo, submit,
#: devcloud), each importing it inside the command.
DEVTOOLS_RUNNERS = {PACKAGE / "cli" / "tools.py"}
#: File names every package has.
PACKAGE_FILES = {"__init__.py", "__main__.py"}


def runtime_files() -> list[Path]:
    """Every Python file the node's processes may load: the package and the dramatiq actors."""
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "actors").rglob("*.py")])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package a relative import in ``path`` starts from."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(source: str, package: str) -> set[str]:
    """The modules ``source`` (in ``package``) imports, relative imports resolved; ``from x import y``
    counts as ``x`` and ``x.y``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def imports_devtools(names: set[str]) -> bool:
    return any(name == DEVTOOLS_MODULE or name.startswith(DEVTOOLS_MODULE + ".") for name in names)


def test_no_two_runtime_modules_share_a_file_name() -> None:
    """Given the package and the actors, when their files are listed by name, then each name is used once."""
    places: dict[str, list[str]] = defaultdict(list)
    for path in runtime_files():
        if path.name not in PACKAGE_FILES:
            places[path.name].append(str(path.relative_to(ROOT)))

    twice = {name: paths for name, paths in places.items() if len(paths) > 1}

    assert not twice, f"file names used more than once: {twice}"


def test_the_runtime_never_imports_the_dev_tooling() -> None:
    """Given the dev tooling in its own subpackage, when every runtime module's imports are read, then
    only the CLI commands that run it import it."""
    assert (DEVTOOLS / "__init__.py").is_file(), "the dev tooling is one subpackage, coda_bridge/devtools"
    assert (DEVTOOLS / "devcloud" / "__init__.py").is_file(), "the cloud simulator is part of it"

    importers = {
        str(path.relative_to(ROOT))
        for path in runtime_files()
        if DEVTOOLS not in path.parents
        and path not in DEVTOOLS_RUNNERS
        and imports_devtools(imported_modules(path.read_text(), package_of(path)))
    }

    assert not importers, f"runtime modules importing {DEVTOOLS_MODULE}: {sorted(importers)}"


def test_the_import_check_sees_relative_and_absolute_imports() -> None:
    """Given imports of the dev tooling written four ways in a runtime module, when they are read, then
    each is found; an import of a runtime module is not."""
    sources = [
        "from ..devtools.stack import LocalStack\n",
        "from .. import devtools\n",
        "import coda_bridge.devtools.devcloud\n",
        "def run():\n    from coda_bridge.devtools import demo\n",
    ]

    found = [imports_devtools(imported_modules(source, "coda_bridge.ops")) for source in sources]

    assert found == [True] * len(sources)
    assert not imports_devtools(imported_modules("from ..ops import group\n", "coda_bridge.cli"))
