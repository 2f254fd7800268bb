"""The workload model and the imbalance figures, on small hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from gis.topology import (
    check_grid_layer,
    check_household_band,
    count_parts_and_holes,
    polsby_popper,
)
from gis.workload import (
    WorkloadWeights,
    attribute_cases_to_buildings,
    decay_case_weights,
    estimate_patrol_km,
    measure_workload,
    plan_staffing,
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
    assert kinds == {(None, "gap"), ("a", "overlap"), ("c", "invalid"), ("d", "parent")}
    (overlap,) = [p for p in bad if p["problem"] == "overlap"]
    assert overlap["grids"] == ["a", "b"] and "2,000.0 m²" in overlap["message"]
    (gap,) = [p for p in bad if p["problem"] == "gap"]
    assert gap["grids"] == ["b"]  # the strip x 190..200 lies beside b only


def test_pieces_and_band_are_named_by_grid():
    """a is two squares apart (not contiguous); b two squares meeting along an edge."""
    community = shapely.box(0, 0, 400, 100)
    a = shapely.union_all([shapely.box(0, 0, 100, 100), shapely.box(200, 0, 300, 100)])
    b = shapely.union_all([shapely.box(100, 0, 200, 100), shapely.box(300, 0, 400, 100)])
    b = shapely.MultiPolygon(list(shapely.get_parts(b)))
    problems = check_grid_layer(
        ["a", "b"], ["C", "C"], [a, b], ["C"], [community], degrees=False, one_piece=True
    )
    assert {(p["grid"], p["problem"]) for p in problems} == {("a", "parts"), ("b", "parts")}
    # Pieces a millimetre apart (float noise of a conversion) count as one.
    joined = shapely.MultiPolygon(
        [shapely.box(100, 0, 200, 100), shapely.box(200.001, 0, 300, 100)]
    )
    assert (
        check_grid_layer(
            ["j"],
            ["C"],
            [joined],
            ["C"],
            [shapely.box(100, 0, 300, 100)],
            degrees=False,
            one_piece=True,
        )
        == []
    )
    assert check_grid_layer(["a"], ["C"], [a], ["C"], [a], degrees=False, one_piece={"x"}) == []
    band = check_household_band(["g1", "g2", "g3"], [299, 300, 501], 300, 500)
    assert [(p["grid"], p["households"]) for p in band] == [("g1", 299), ("g3", 501)]
    assert "below the band 300–500" in band[0]["message"]


def test_staffing_on_split():
    """g1 (worker w1, 600 households) splits: g3 takes 250 of them. g3 touches g1 and g2;
    w2 holds g2 (300) and also g9 elsewhere (200), so w1 (350 after) is the lighter."""
    changes, after = plan_staffing(
        ["g1", "g2"],
        ["g1", "g2", "g3"],
        {"g1": ["w1"], "g2": ["w2"], "g9": ["w2"]},
        {("g1", "g1"): 350, ("g1", "g3"): 250, ("g2", "g2"): 300},
        {"g3": {"g1", "g2"}, "g1": {"g3"}, "g2": {"g3"}},
        {"g1": 350, "g2": 300, "g3": 250, "g9": 200},
    )
    assert changes == [
        {
            "grid": "g3",
            "change": "new",
            "households": 250.0,
            "workers": [],
            "needs_worker": True,
            "proposed_worker": "w1",
            "proposed_worker_load": 350.0,
        }
    ]
    assert after == {"g1": ["w1"], "g2": ["w2"], "g3": []}


def test_staffing_on_merge_and_redraw():
    """g2 merges into g1 (g1 keeps w1, w2 is released). In a redraw g4 and g5 are
    retired for new n1 and n2: w4 follows g4's buildings to n1, and n2, taking g5's
    (whose worker left) with nobody beside it staffed but n1, is proposed to w4."""
    changes, after = plan_staffing(
        ["g1", "g2"],
        ["g1"],
        {"g1": ["w1"], "g2": ["w2"]},
        {("g1", "g1"): 300, ("g2", "g1"): 200},
        {"g1": set()},
        {"g1": 500},
    )
    assert changes == [
        {
            "grid": "g2",
            "change": "retired",
            "successor": "g1",
            "workers": ["w2"],
            "workers_go_to": None,
            "workers_released": ["w2"],
        }
    ]
    assert after == {"g1": ["w1"], "g2": []}
    changes, after = plan_staffing(
        ["g4", "g5"],
        ["n1", "n2"],
        {"g4": ["w4"]},
        {("g4", "n1"): 300, ("g4", "n2"): 100, ("g5", "n2"): 250},
        {"n1": {"n2"}, "n2": {"n1"}},
        {"n1": 300, "n2": 350},
    )
    by_grid = {c["grid"]: c for c in changes}
    assert by_grid["g4"]["workers_go_to"] == "n1"
    assert by_grid["g5"]["successor"] == "n2" and by_grid["g5"]["workers_released"] == []
    assert by_grid["n2"]["needs_worker"] and by_grid["n2"]["proposed_worker"] == "w4"
    assert after["n1"] == ["w4"] and after["n2"] == []
