"""The workload model and the imbalance figures, on small hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from gis.topology import check_grid_layer, count_parts_and_holes, polsby_popper
from gis.workload import (
    WorkloadWeights,
    attribute_cases_to_buildings,
    decay_case_weights,
    estimate_patrol_km,
    measure_workload,
    summarise_communities,
    summarise_imbalance,
)


def test_recent_cases_count_more():
    weights = decay_case_weights(np.array([2.0, 2.0, 2.0, 1.0]), np.array([0, 90, 180, -5]), 90)
    assert weights.tolist() == [2.0, 1.0, 0.5, 1.0]


def test_cases_count_for_the_nearest_building():
    """Buildings at x = 0 and 100 m; cases at 10, 40, 90 and 200 m."""
    buildings = np.array([[0.0, 0.0], [100.0, 0.0]])
    cases = np.array([[10.0, 0], [40.0, 0], [90.0, 0], [200.0, 0]])
    load = attribute_cases_to_buildings(cases, buildings, np.array([1.0, 2.0, 4.0, 8.0]))
    assert load.tolist() == [3.0, 12.0]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 1000)), min_size=1, max_size=20),
    st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 1000), st.floats(0, 5)), max_size=40),
)
def test_case_load_is_conserved(buildings, cases):
    b = np.array(buildings)
    c = np.array([(x, y) for x, y, _ in cases]).reshape(-1, 2)
    w = np.array([v for *_, v in cases])
    assert math.isclose(attribute_cases_to_buildings(c, b, w).sum(), w.sum(), abs_tol=1e-9)


def test_patrol_estimate_grows_with_area_and_buildings():
    km = estimate_patrol_km(np.array([250_000.0, 1_000_000.0]), np.array([50, 50]))
    assert km[1] == pytest.approx(2 * km[0])
    assert km[0] == pytest.approx(0.7124 * math.sqrt(50 * 250_000) / 1000)


def test_grid_scores_shares_and_band():
    """Community C has grids g1 (450 households, 2 weighted cases) and g2 (250 households);
    community D has g3 alone (520)."""
    buildings = pd.DataFrame(
        {
            "grid_code": ["g1", "g1", "g2", "g3"],
            "households": [300, 150, 250, 520],
            "population": [800, 400, 600, 1300],
            "cared": [1, 0, 2, 0],
            "case_load": [2.0, 0.0, 0.0, 0.0],
        }
    )
    area = pd.Series({"g1": 0.0, "g2": 0.0, "g3": 0.0})
    parent = pd.Series({"g1": "C", "g2": "C", "g3": "D"})
    weights = WorkloadWeights(households=1, population=0, cared=3, case=2, patrol_km=10)
    out = measure_workload(buildings, area, parent, weights)
    assert out.loc["g1", "score"] == 450 + 3 + 4
    assert out.loc["g2", "score"] == 250 + 6
    assert out.loc["g1", "share_of_mean"] == pytest.approx(457 / ((457 + 256) / 2))
    assert out["in_band"].tolist() == [True, False, False]
    summary = summarise_communities(out).set_index("community_code")
    assert summary.loc["C", "outside_band"] == 1
    assert summary.loc["D", "score_max_deviation"] == 0


def test_imbalance_figures():
    figures = summarise_imbalance([300, 400, 500])
    assert figures == {"max_deviation": 0.25, "range": 200.0, "cv": round(81.6497 / 400, 4)}
    assert summarise_imbalance([]) == {"max_deviation": 0.0, "range": 0.0, "cv": 0.0}


def test_shape_metrics():
    square = shapely.box(0, 0, 1, 1)
    ring = shapely.box(0, 0, 3, 3).difference(shapely.box(1, 1, 2, 2))
    pair = shapely.MultiPolygon([square, shapely.box(5, 5, 6, 6)])
    assert polsby_popper([square])[0] == pytest.approx(math.pi / 4)
    parts, holes = count_parts_and_holes([square, ring, pair])
    assert parts.tolist() == [1, 1, 2] and holes.tolist() == [0, 1, 0]


def test_topology_problems_are_named():
    """Community 0..2 × 0..1 (metres); grids a = left half, b = right half, drawn badly."""
    community = shapely.box(0, 0, 200, 100)
    ok = check_grid_layer(
        ["a", "b"],
        ["C", "C"],
        [shapely.box(0, 0, 100, 100), shapely.box(100, 0, 200, 100)],
        ["C"],
        [community],
        degrees=False,
    )
    assert ok == []
    bad = check_grid_layer(
        ["a", "b", "c", "d"],
        ["C", "C", "C", "X"],
        [
            shapely.box(0, 0, 120, 100),  # overlaps b by 20 m × 100 m
            shapely.box(100, 0, 190, 100),  # leaves a 10 m strip uncovered
            shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]),  # a bow-tie
            shapely.box(0, 0, 1, 1),  # names an unknown community
        ],
        ["C"],
        [community],
        degrees=False,
    )
    kinds = {(p.get("grid"), p["problem"]) for p in bad}
    assert kinds == {(None, "gap"), (None, "overlap"), ("c", "invalid"), ("d", "parent")}
