"""Units are connected components of the positions index maps link: the vectorized component
search agrees with networkx on random graphs."""
import networkx as nx
import numpy as np
from hypothesis import given, settings, strategies as st

from graphprune.analysis.units import components


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 60), st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)),
                                    max_size=80))
def test_components_match_networkx(n, edges):
    edges = [(a % n, b % n) for a, b in edges]
    r = np.array([a for a, _ in edges], dtype=np.int64)
    c = np.array([b for _, b in edges], dtype=np.int64)
    labels = components(n, r, c)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    for comp in nx.connected_components(g):
        comp = sorted(comp)
        assert set(labels[comp].tolist()) == {comp[0]}  # one label: the smallest position


def test_long_chain():
    n = 5000
    r, c = np.arange(n - 1)[::-1], np.arange(1, n)[::-1]
    assert (components(n, r, c) == 0).all()
