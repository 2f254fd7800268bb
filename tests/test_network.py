"""The street graph: building it from lines, walking distances against a brute force,
storing it on both stores, and importing it from files (GeoJSON, bad files, .osm.pbf)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from data.importers import import_file, read_layer
from gis.db import network_repo
from gis.errors import ImportRejected
from gis.network import (
    build_road_graph,
    nearest_source_distances,
    pair_distances_within,
    search_from_point,
    snap_points,
)
from tests.walk_bruteforce import (
    BLOCKS,
    LADDER,
    brute_walk_m,
    lines_gdf,
    to_lonlat,
)

TOL_M = 0.05  # two metric frames and 0.01 m node rounding


def _snap(graph, xy_m):
    return snap_points(graph, graph.to_metric(to_lonlat(xy_m)))


def test_nodes_merge_at_shared_vertices_only():
    """BLOCKS has 7 vertices (A..G) and 7 segments. A bridge from (150,-50) to (150,450)
    crosses D-E and A-B without sharing a vertex, so it stays unconnected."""
    graph = build_road_graph(lines_gdf(BLOCKS))
    assert graph.n_nodes == 7 and graph.n_edges == 7
    assert sorted(np.round(graph.edge_length_m, 1)) == pytest.approx(
        sorted([300.0] * 4 + [400.0] * 2 + [float(np.hypot(50, 200))]), abs=0.1
    )
    bridge = build_road_graph(lines_gdf([*BLOCKS, [(150, -50), (150, 450)]]))
    assert bridge.n_nodes == 9 and bridge.n_edges == 8
    d = search_from_point(bridge, _snap(bridge, [(150, -50)])).distances_to(
        _snap(bridge, [(100, -1)])
    )
    assert np.isinf(d[0])


def test_vertices_within_rounding_merge_and_multilines_split():
    near = [[(0, 0), (100, 0)], [(100.003, 0.002), (100, 100)]]
    graph = build_road_graph(lines_gdf(near))
    assert graph.n_nodes == 3
    multi = gpd.GeoDataFrame(
        {"code": ["M"]},
        geometry=[shapely.MultiLineString([to_lonlat(line) for line in LADDER])],
        crs=4326,
    )
    assert build_road_graph(multi).n_edges == 3 + 3 + 4
    assert build_road_graph(lines_gdf(LADDER)).edge_length_m.sum() == pytest.approx(
        300 + 300 + 4 * 100, abs=TOL_M
    )


@pytest.mark.parametrize("network", [BLOCKS, LADDER], ids=["blocks", "ladder"])
def test_walking_distances_match_brute_force(network):
    rng = np.random.default_rng(5)
    lo, hi = np.min(np.vstack(network), axis=0) - 60, np.max(np.vstack(network), axis=0) + 60
    points = rng.uniform(lo, hi, (9, 2))
    stations = rng.uniform(lo, hi, (4, 2))
    graph = build_road_graph(lines_gdf(network))
    p_snap, s_snap = _snap(graph, points), _snap(graph, stations)
    expected = np.array([[brute_walk_m(network, p, s) for s in stations] for p in points])

    # One point at a time, unbounded (the online search).
    for i in range(len(points)):
        got = search_from_point(graph, p_snap.take([i])).distances_to(s_snap)
        np.testing.assert_allclose(got, expected[i], atol=TOL_M)
    # All pairs in chunks (siting).
    pairs = pair_distances_within(graph, s_snap, p_snap, limit_m=1e7, chunk=3).toarray()
    np.testing.assert_allclose(pairs.T, expected, atol=TOL_M)
    # Nearest station per point in one multi-source pass (coverage).
    d, src = nearest_source_distances(graph, s_snap, p_snap)
    np.testing.assert_allclose(d, expected.min(axis=1), atol=TOL_M)
    np.testing.assert_allclose(expected[np.arange(len(points)), src], d, atol=TOL_M)


def test_same_edge_walk_and_bounds():
    """Both points on the ladder's bottom street between M and N: the walk goes straight
    along it, and a bound below the walk leaves the station unreached."""
    graph = build_road_graph(lines_gdf(LADDER))
    a, b = _snap(graph, [(120, -10)]), _snap(graph, [(180, -5)])
    search = search_from_point(graph, a, limit_m=1000)
    assert search.distances_to(b)[0] == pytest.approx(10 + 60 + 5, abs=TOL_M)
    path = search.path_to(b, 0)
    assert len(path) == 4  # point, foot, foot, station: no detour through a node
    assert np.isinf(search_from_point(graph, a, limit_m=50).distances_to(_snap(graph, [(0, 100)])))
    assert np.isinf(nearest_source_distances(graph, b, a, limit_m=20)[0][0])


def test_path_follows_the_streets():
    graph = build_road_graph(lines_gdf(BLOCKS))
    start, end = _snap(graph, [(-10, 200)]), _snap(graph, [(610, 380)])
    search = search_from_point(graph, start)
    d = search.distances_to(end)[0]
    path = search.path_to(end, 0)
    assert shapely.LineString(path).length == pytest.approx(d, abs=TOL_M)
    assert d == pytest.approx(brute_walk_m(BLOCKS, (-10, 200), (610, 380)), abs=TOL_M)


# ----------------------------------------------------------------- the store


def test_store_round_trip_and_cache(store):
    graph = build_road_graph(lines_gdf(BLOCKS))
    with store.session() as s, s.begin():
        assert network_repo.cached_road_graph(s) is None
        written = network_repo.write_road_network(s, graph, source="blocks")
    with store.session() as s:
        loaded = network_repo.cached_road_graph(s)
        assert loaded.version == written["version"]
        assert network_repo.cached_road_graph(s) is loaded  # cached per version
    np.testing.assert_array_equal(loaded.edge_nodes, graph.edge_nodes)
    np.testing.assert_allclose(loaded.edge_length_m, graph.edge_length_m)
    np.testing.assert_allclose(loaded.node_xy_m, graph.node_xy_m, atol=1e-3)
    with store.session() as s, s.begin():
        network_repo.write_road_network(s, build_road_graph(lines_gdf(LADDER)))
    with store.session() as s:
        again = network_repo.cached_road_graph(s)
    assert again.version != loaded.version and again.n_edges == 10


def test_import_roads_geojson_and_refusals(store, tmp_path):
    good = tmp_path / "streets.geojson"
    lines_gdf(LADDER).to_file(good, driver="GeoJSON")
    report = import_file(store.sessions, "roads", good)
    assert report.layer == "roads" and report.features == 6 and report.inserted == 10
    assert any("1 connected part" in w for w in report.warnings)
    with store.session() as s:
        assert network_repo.road_network_info(s)["edges"] == 10

    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [', encoding="utf-8")
    with pytest.raises(ImportRejected) as exc:
        import_file(store.sessions, "roads", broken)
    assert "broken.geojson" in exc.value.message and exc.value.path.endswith("broken.geojson")

    mixed = tmp_path / "mixed.geojson"
    data = json.loads(good.read_text(encoding="utf-8"))
    data["features"][2]["geometry"] = {"type": "Point", "coordinates": [123.43, 41.80]}
    mixed.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ImportRejected) as exc:
        import_file(store.sessions, "roads", mixed)
    assert exc.value.problems[0]["feature"] == 3
    assert "roads need lines" in exc.value.problems[0]["problem"]
    with store.session() as s:  # nothing changed by the refusals
        assert network_repo.road_network_info(s)["edges"] == 10


def test_read_roads_from_osm_pbf(tmp_path):
    """A tiny extract written with pyosmium: a footway and a residential street sharing a
    node, plus a motorway that walking ignores."""
    osmium = pytest.importorskip("osmium")
    path = tmp_path / "tiny.osm.pbf"
    coords = to_lonlat([(0, 0), (100, 0), (100, 100), (0, 300), (300, 300)])
    with osmium.SimpleWriter(str(path)) as writer:
        for i, (lon, lat) in enumerate(coords, start=1):
            writer.add_node(osmium.osm.mutable.Node(id=i, location=(lon, lat), version=1))
        ways = [
            (10, [1, 2], {"highway": "footway"}),
            (11, [2, 3], {"highway": "residential", "name": "兴华路"}),
            (12, [4, 5], {"highway": "motorway"}),
        ]
        for wid, refs, tags in ways:
            writer.add_way(osmium.osm.mutable.Way(id=wid, nodes=refs, tags=tags, version=1))
    frame, _ = read_layer(path, "roads")
    assert sorted(frame["code"]) == ["w10", "w11"]
    graph = build_road_graph(frame)
    assert graph.n_nodes == 3 and graph.edge_length_m.sum() == pytest.approx(200, abs=TOL_M)

    bad = tmp_path / "bad.osm.pbf"
    bad.write_bytes(b"not a pbf at all")
    with pytest.raises(ImportRejected) as exc:
        read_layer(bad, "roads")
    assert "bad.osm.pbf" in exc.value.message
