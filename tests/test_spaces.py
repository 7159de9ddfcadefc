"""The slot union-find: unions recorded as arrays and resolved in bulk give the classes a
per-pair union-find gives, each rooted at its smallest slot."""

from __future__ import annotations

import numpy as np
import pytest

from onnxoto.groups import IndexMap
from onnxoto.spaces import SlotForest, components


def _reference_roots(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A plain union-find, one pair at a time, rooted at the smallest slot."""
    parent = list(range(size))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(x) for x in range(size)])


@pytest.mark.parametrize("seed", range(6))
def test_components_match_a_pairwise_union_find(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 300))
    pairs = int(rng.integers(0, 2 * size))
    a, b = rng.integers(0, size, pairs), rng.integers(0, size, pairs)
    expected = _reference_roots(size, a, b)
    assert (components(np.arange(size), a, b) == expected).all()


def test_a_long_chain_resolves_to_its_first_slot():
    """A residual chain joins stems one after another: the deepest tree the hooking builds."""
    size = 10_000
    slots = np.arange(size)
    roots = components(slots, slots[1:][::-1], slots[:-1][::-1])
    assert (roots == 0).all()


def test_forest_resolves_lazily_and_keeps_growing():
    forest = SlotForest()
    first, second = forest.new(4), forest.new(4)
    forest.union(first[:2], second[:2])
    assert forest.find(5) == 1 and forest.find(6) == 6
    third = forest.new(3)  # slots born after a resolve
    forest.union(third, second[1:])
    assert forest.roots().tolist() == [0, 1, 2, 3, 0, 1, 6, 7, 1, 6, 7]
    forest.union(np.array([3]), np.array([10]))
    assert forest.find(7) == 3 and forest.find(10) == 3
    with pytest.raises(ValueError):
        forest.roots()[0] = 5  # shared with callers, so read-only


def test_union_of_unequal_lengths_is_refused():
    forest = SlotForest()
    slots = forest.new(3)
    with pytest.raises(ValueError, match="3 slots with 2"):
        forest.union(slots, slots[:2])


@pytest.mark.parametrize("index_map", [
    IndexMap(), IndexMap(offset=5), IndexMap(block=4), IndexMap(offset=2, block=3, stride=7),
    IndexMap(block=4, stride=3, step=1), IndexMap(step=3), IndexMap(offset=1, step=0),
    IndexMap(offset=3, block=2, step=2),
])
def test_span_selects_what_indices_lists(index_map):
    size = 6
    axis = np.zeros(200, dtype=bool)
    axis[index_map.span(size)] = True
    expected = np.zeros(200, dtype=bool)
    expected[index_map.indices(np.arange(size))] = True
    assert (axis == expected).all()
