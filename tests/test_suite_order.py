"""The suite's order for pytest-xdist: the longest units of work first, a file sharing fixtures kept whole."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parent


def conftest() -> ModuleType:
    """The suite's ``conftest.py``, loaded under a name of its own (pytest holds the original)."""
    spec = importlib.util.spec_from_file_location("suite_order_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Item:
    """What the ordering reads of a collected test: its file, its id and its marks."""

    path: Path
    name: str
    marks: tuple[str, ...] = ()

    @property
    def nodeid(self) -> str:
        return f"{self.path.relative_to(TESTS.parent)}::{self.name}"

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.marks else None


def test_fault_then_e2e_and_shared_files_then_the_rest_a_shared_file_kept_whole_in_its_order() -> None:
    # given a collection in file order: a unit test, a file sharing a module's fixture (tests/control's
    # conftest declares one) with a unit test and a fault test, then an e2e test and a fault test
    alone = TESTS / "suite_order_example" / "test_alone.py"
    shared_file = TESTS / "control" / "test_shared.py"
    unit = Item(alone, "test_unit")
    shared = [Item(shared_file, "test_first"), Item(shared_file, "test_second", ("e2e", "fault"))]
    e2e = Item(alone, "test_e2e", ("e2e",))
    fault = Item(alone, "test_fault", ("e2e", "fault"))
    items: list[Any] = [unit, *shared, e2e, fault]

    # when the suite orders it
    conftest().pytest_collection_modifyitems(items)

    # then the units with a fault test come first (the shared file whole, in its own order),
    # then the e2e test, then the rest
    assert items == [*shared, fault, e2e, unit]
    # and the order is stable: ordering it again changes nothing
    again = list(items)
    conftest().pytest_collection_modifyitems(again)
    assert again == items
