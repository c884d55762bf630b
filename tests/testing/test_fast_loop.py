"""The contributor's loop (``-m "not slow"``): each parametrised test keeps its first case for every family and every method."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import pytest_collection_modifyitems


class Item:
    """What the collection hook reads of a ``pytest.Item``: its id, parameters and markers."""

    def __init__(self, nodeid: str, slow: bool = False, **params) -> None:
        self.nodeid = nodeid
        self.callspec = SimpleNamespace(params=params) if params else None
        self.marks = ["slow"] if slow else []

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.name)


def fast(items: list[Item]) -> list[str]:
    pytest_collection_modifyitems(items)
    return [item.nodeid for item in items if "slow" not in item.marks]


def test_every_family_once_and_every_method_once_stay_in_the_fast_loop():
    items = [
        Item(f"t.py::test_a[{family}-{method}-{ratio}]", family=family, method=method, ratio=ratio)
        for family in ("qwen2_vl", "llava") for method in ("dash", "fastv") for ratio in (0.5, 0.9)
    ]
    assert fast(items) == ["t.py::test_a[qwen2_vl-dash-0.5]", "t.py::test_a[qwen2_vl-fastv-0.5]", "t.py::test_a[llava-dash-0.5]"]


def test_unparametrised_tests_stay_and_each_test_keeps_its_own_first_case():
    items = [Item("t.py::test_plain"), Item("t.py::test_b[1]", ratio=1), Item("t.py::test_b[2]", ratio=2),
             Item("t.py::test_c[1]", ratio=1)]
    assert fast(items) == ["t.py::test_plain", "t.py::test_b[1]", "t.py::test_c[1]"]


def test_a_case_marked_slow_by_hand_leaves_the_first_case_to_the_next():
    items = [Item("t.py::test_d[1]", slow=True, ratio=1), Item("t.py::test_d[2]", ratio=2), Item("t.py::test_d[3]", ratio=3)]
    assert fast(items) == ["t.py::test_d[2]"]
