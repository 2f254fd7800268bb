"""Bulk routing of points to grids (gis.routing): hand-drawn cases, then brute force.

The reference for every check is brute force with GEOS: for each point, the set of
grids that `shapely.covers` it (lowest code wins), else the grids within `near_m`
metres by `shapely.distance` in the documented metre plane (lowest code on ties).
"""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gis.assign import assign_points
from gis.errors import InvalidGeometry, InvalidInput
from gis.routing import FLAGS, GridIndex, Routed, metres_per_degree, route_points

LON0, LAT0 = 123.4, 41.8
SIDE = 0.001  # degrees: about 83 m east-west and 111 m north-south here

# ---------------------------------------------------------------------------------------
# Hand-drawn cases


@pytest.fixture
def two_by_two() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four grids of SIDE degrees, codes deliberately out of index order::

        y2 +---------+---------+
           | #2 "C"  | #3 "A"  |
        y1 +---------+---------+
           | #0 "D"  | #1 "B"  |
        y0 +---------+---------+
           x0        x1        x2

    Corner coordinates are computed once and shared, so neighbours share vertices
    bit for bit. Returns polygons, codes, xs and ys (the corner coordinates).
    """
    xs = LON0 + SIDE * np.arange(3)
    ys = LAT0 + SIDE * np.arange(3)
    polygons = np.array(
        [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(2) for i in range(2)]
    )
    codes = np.array(["D", "B", "C", "A"], dtype=object)
    return polygons, codes, xs, ys


def test_two_by_two_by_hand(two_by_two):
    polygons, codes, xs, ys = two_by_two
    mid_x0, mid_y0 = (xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2
    cases = [
        # (lon, lat, expected index, flag)
        (mid_x0, mid_y0, 0, "inside"),  # middle of D
        ((xs[1] + xs[2]) / 2, (ys[1] + ys[2]) / 2, 3, "inside"),  # middle of A
        (xs[1], mid_y0, 1, "edge_rule"),  # edge D|B: B < D
        (mid_x0, ys[1], 2, "edge_rule"),  # edge D/C: C < D
        (xs[1], ys[1], 3, "edge_rule"),  # the 4-way vertex: A is lowest
        (xs[0], mid_y0, 0, "inside"),  # outer edge of D only: covered, one grid
        (xs[0], ys[0], 0, "inside"),  # outer corner of D only
        (xs[2], ys[1], 3, "edge_rule"),  # outer vertex shared by B and A: A
        (xs[0] - 0.0001, mid_y0, 0, "near_outside"),  # ~8.3 m west of D
        (xs[0] - 0.0001, ys[1], 2, "near_outside"),  # as near to D as to C: C
        (xs[0] - 0.01, mid_y0, -1, "unrouted"),  # ~830 m away
    ]
    xy = np.array([(x, y) for x, y, _, _ in cases])
    routed = GridIndex.build(polygons, codes).route(xy)
    assert routed.index.dtype == np.int64 and routed.flag.dtype == object
    assert routed.distance_m.dtype == np.float64
    assert routed.index.tolist() == [c[2] for c in cases]
    assert routed.flag.tolist() == [c[3] for c in cases]
    assert routed.distance_m[:8].tolist() == [0.0] * 8
    assert np.isnan(routed.distance_m[-1])


def test_two_by_two_distances_are_metres(two_by_two):
    polygons, codes, xs, ys = two_by_two
    mid_y0 = (ys[0] + ys[1]) / 2
    west = np.array([[xs[0] - 0.0001, mid_y0], [xs[0] - 0.0005, mid_y0]])
    south = np.array([[(xs[0] + xs[1]) / 2, ys[0] - 0.0003]])
    routed = GridIndex.build(polygons, codes).route(np.vstack([west, south]), near_m=50.0)
    # By hand: 0.0001 deg of longitude at 41.8°N is 111,320 m * cos(41.8°) / 10,000 = 8.30 m
    # on a sphere; 0.0003 deg of latitude is about 33.4 m.
    assert routed.distance_m[0] == pytest.approx(8.30, rel=0.005)
    assert routed.flag.tolist() == ["near_outside", "near_outside", "near_outside"]
    assert routed.distance_m[1] == pytest.approx(5 * routed.distance_m[0], rel=1e-9)
    assert routed.distance_m[2] == pytest.approx(33.4, rel=0.005)
    # And against the geodesic on the WGS84 ellipsoid, well inside the 0.5% promised.
    geod = pyproj.Geod(ellps="WGS84")
    _, _, west_m = geod.inv(west[0, 0], mid_y0, xs[0], mid_y0)
    _, _, south_m = geod.inv(south[0, 0], south[0, 1], south[0, 0], ys[0])
    assert routed.distance_m[0] == pytest.approx(west_m, rel=0.001)
    assert routed.distance_m[2] == pytest.approx(south_m, rel=0.001)


def test_near_m_threshold(two_by_two):
    polygons, codes, xs, ys = two_by_two
    xy = np.array([[xs[0] - 0.0005, (ys[0] + ys[1]) / 2]])  # ~41.5 m west of D
    index = GridIndex.build(polygons, codes)
    assert index.route(xy, near_m=50.0).flag.tolist() == ["near_outside"]
    far = index.route(xy, near_m=40.0)
    assert far.flag.tolist() == ["unrouted"] and far.index.tolist() == [-1]
    assert index.route(xy, near_m=0.0).flag.tolist() == ["unrouted"]


def test_hole_and_multipolygon():
    """A ring-shaped grid "B" whose hole is grid "A", and a two-part grid "C"::

    +-----------+   +---+
    |  B        |   | C |
    |   +---+   |   +---+
    |   | A |   |
    |   +---+   |   +---+
    |           |   | C |
    +-----------+   +---+
    """
    s = SIDE
    hole = shapely.box(LON0 + s, LAT0 + s, LON0 + 2 * s, LAT0 + 2 * s)
    ring = shapely.box(LON0, LAT0, LON0 + 3 * s, LAT0 + 3 * s).difference(hole)
    parts = shapely.MultiPolygon(
        [
            shapely.box(LON0 + 4 * s, LAT0, LON0 + 5 * s, LAT0 + s),
            shapely.box(LON0 + 4 * s, LAT0 + 2 * s, LON0 + 5 * s, LAT0 + 3 * s),
        ]
    )
    polygons = np.array([ring, hole, parts])
    codes = np.array(["B", "A", "C"], dtype=object)
    xy = np.array(
        [
            [LON0 + 1.5 * s, LAT0 + 1.5 * s],  # in the hole: A
            [LON0 + 0.5 * s, LAT0 + 1.5 * s],  # in the ring: B
            [LON0 + s, LAT0 + 1.5 * s],  # on the hole's edge: A < B
            [LON0 + s, LAT0 + s],  # on the hole's corner: A
            [LON0 + 4.5 * s, LAT0 + 2.5 * s],  # upper part of C
            [LON0 + 4.5 * s, LAT0 + 1.5 * s],  # between C's parts, ~55 m from each
            [LON0 + 3.5 * s, LAT0 + 0.5 * s],  # between B and C: ~41.5 m from both, B < C
        ]
    )
    routed = GridIndex.build(polygons, codes).route(xy, near_m=60.0)
    assert routed.index.tolist() == [1, 0, 1, 1, 2, 2, 0]
    assert routed.flag.tolist() == [
        "inside",
        "inside",
        "edge_rule",
        "edge_rule",
        "inside",
        "near_outside",
        "near_outside",
    ]
    check_against_brute_force(xy, polygons, codes, near_m=60.0, routed=routed)


def test_overlapping_grids_still_exact():
    """Out of contract for a tessellation, but answered exactly: the overlap is covered by
    both grids, so the lowest code takes it."""
    a = shapely.box(LON0, LAT0, LON0 + 2 * SIDE, LAT0 + SIDE)
    b = shapely.box(LON0 + SIDE, LAT0, LON0 + 3 * SIDE, LAT0 + SIDE)
    polygons = np.array([a, b])
    codes = np.array(["2", "1"], dtype=object)
    rng = np.random.default_rng(7)
    xy = np.column_stack(
        [rng.uniform(LON0 - SIDE, LON0 + 4 * SIDE, 3000), rng.uniform(LAT0, LAT0 + SIDE, 3000)]
    )
    routed = check_against_brute_force(xy, polygons, codes)
    in_overlap = (xy[:, 0] > LON0 + SIDE) & (xy[:, 0] < LON0 + 2 * SIDE)
    assert set(routed.flag[in_overlap]) == {"edge_rule"}
    assert set(routed.index[in_overlap]) == {1}


def test_empty_nan_and_convenience(two_by_two):
    polygons, codes, xs, ys = two_by_two
    index = GridIndex.build(polygons, codes)
    empty = index.route(np.empty((0, 2)))
    assert isinstance(empty, Routed) and len(empty) == 0
    routed = index.route(np.array([[np.nan, ys[0]], [np.inf, np.nan], [xs[0], ys[0]]]))
    assert routed.flag.tolist() == ["unrouted", "unrouted", "inside"]
    assert np.isnan(routed.distance_m[:2]).all()
    xy = np.array([[xs[1], ys[1]], [xs[0] - 0.0001, ys[0]]])
    a, b = route_points(xy, polygons, codes), index.route(xy)
    assert a.index.tolist() == b.index.tolist() and a.flag.tolist() == b.flag.tolist()
    assert set(FLAGS) == {"inside", "edge_rule", "near_outside", "unrouted"}


def test_bad_input_raises(two_by_two):
    polygons, codes, _, _ = two_by_two
    with pytest.raises(InvalidInput):
        GridIndex.build(polygons, codes[:3])
    with pytest.raises(InvalidInput):
        GridIndex.build(polygons[:0], codes[:0])
    with pytest.raises(InvalidGeometry):
        GridIndex.build(np.array([shapely.Point(0, 0)]), np.array(["A"]))
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    with pytest.raises(InvalidGeometry):
        GridIndex.build(np.array([bowtie]), np.array(["A"]))
    GridIndex.build(np.array([bowtie]), np.array(["A"]), validate=False)  # caller's risk
    index = GridIndex.build(polygons, codes)
    with pytest.raises(InvalidInput):
        index.route(np.zeros((3, 3)))
    with pytest.raises(InvalidInput):
        index.route(np.zeros((1, 2)), near_m=-1.0)
    with pytest.raises(InvalidInput):
        GridIndex.build(polygons, codes, cell_deg=0.0)


def test_metres_per_degree_matches_geodesic():
    geod = pyproj.Geod(ellps="WGS84")
    kx, ky = metres_per_degree(LAT0)
    _, _, east_m = geod.inv(LON0, LAT0, LON0 + 0.001, LAT0)
    _, _, north_m = geod.inv(LON0, LAT0 - 0.0005, LON0, LAT0 + 0.0005)
    assert kx * 0.001 == pytest.approx(east_m, rel=1e-6)
    assert ky * 0.001 == pytest.approx(north_m, rel=1e-6)


# ---------------------------------------------------------------------------------------
# Brute force and random tessellations


def check_against_brute_force(
    xy: np.ndarray,
    polygons: np.ndarray,
    codes: np.ndarray,
    *,
    near_m: float = 50.0,
    cell_deg: float | None = None,
    routed: Routed | None = None,
) -> Routed:
    """Route with GridIndex and compare every point with brute force and assign_points."""
    index = GridIndex.build(polygons, codes, cell_deg=cell_deg)
    if routed is None:
        routed = index.route(xy, near_m=near_m)
    pts = shapely.points(xy)
    rank = np.argsort(np.argsort(codes.astype(str), kind="stable"), kind="stable")
    covers = shapely.covers(polygons[None, :], pts[:, None])  # points x grids
    n_cover = covers.sum(axis=1)
    lowest = np.where(covers, rank[None, :], len(rank)).argmin(axis=1)

    # The documented metre plane: equirectangular about the grids' bbox centre.
    xmin, ymin, xmax, ymax = shapely.total_bounds(polygons)
    shift = np.array([(xmin + xmax) / 2, (ymin + ymax) / 2])
    scale = np.array(metres_per_degree((ymin + ymax) / 2))
    assert index.metric_origin == pytest.approx(tuple(shift), abs=0)
    polygons_m = shapely.transform(polygons, lambda c: (c - shift) * scale)
    points_m = shapely.points((xy - shift) * scale)
    dist = shapely.distance(polygons_m[None, :], points_m[:, None])
    nearest_m = dist.min(axis=1)
    tied = dist == nearest_m[:, None]
    nearest = np.where(tied, rank[None, :], len(rank)).argmin(axis=1)

    covered = n_cover > 0
    near = ~covered & (nearest_m <= near_m)
    expected_index = np.where(covered, lowest, np.where(near, nearest, -1))
    expected_flag = np.select(
        [n_cover == 1, n_cover > 1, near], ["inside", "edge_rule", "near_outside"], "unrouted"
    )
    bad = np.flatnonzero(
        (routed.index != expected_index) | (routed.flag != expected_flag.astype(object))
    )
    assert len(bad) == 0, (
        f"{len(bad)} points differ, first {xy[bad[0]].tolist()}: got "
        f"{routed.index[bad[0]]}/{routed.flag[bad[0]]}, want "
        f"{expected_index[bad[0]]}/{expected_flag[bad[0]]} (covered by {n_cover[bad[0]]})"
    )
    assert (routed.distance_m[covered] == 0).all()
    np.testing.assert_allclose(routed.distance_m[near], nearest_m[near], rtol=1e-9)
    assert np.isnan(routed.distance_m[~covered & ~near]).all()

    assigned = assign_points(pts, polygons, codes)
    assert (codes[routed.index[covered]] == assigned[covered]).all()
    assert (assigned[~covered] == None).all()  # noqa: E711
    return routed


def make_quad_mesh(rng: np.random.Generator, nx: int, ny: int, extra: int) -> np.ndarray:
    """nx * ny jittered quads whose shared edges carry 0..extra shared extra vertices."""
    step = SIDE
    cx = LON0 + step * np.arange(nx + 1)[:, None] + np.zeros((1, ny + 1))
    cy = LAT0 + step * np.arange(ny + 1)[None, :] + np.zeros((nx + 1, 1))
    cx[1:-1, :] += rng.uniform(-0.25, 0.25, (nx - 1, ny + 1)) * step
    cy[:, 1:-1] += rng.uniform(-0.25, 0.25, (nx + 1, ny - 1)) * step

    def edge(a, b):
        t = np.sort(rng.uniform(0.1, 0.9, rng.integers(0, extra + 1)))
        # Sideways, tapering to nothing at the corners, so quads stay valid.
        bend = rng.uniform(-0.1, 0.1, len(t)) * np.sin(np.pi * t)
        push = bend[:, None] * np.array([a[1] - b[1], b[0] - a[0]])
        return a + t[:, None] * (b - a) + push

    corner = np.stack([cx, cy], axis=-1)
    horizontal = {
        (i, j): edge(corner[i, j], corner[i + 1, j]) for i in range(nx) for j in range(ny + 1)
    }
    vertical = {
        (i, j): edge(corner[i, j], corner[i, j + 1]) for i in range(nx + 1) for j in range(ny)
    }
    polygons = []
    for j in range(ny):
        for i in range(nx):
            ring = np.concatenate(
                [
                    corner[i, j][None],
                    horizontal[i, j],
                    corner[i + 1, j][None],
                    vertical[i + 1, j],
                    corner[i + 1, j + 1][None],
                    horizontal[i, j + 1][::-1],
                    corner[i, j + 1][None],
                    vertical[i, j][::-1],
                ]
            )
            polygons.append(shapely.Polygon(ring))
    return np.array(polygons)


def make_voronoi(rng: np.random.Generator, n_seeds: int) -> np.ndarray:
    """Voronoi cells of random seeds, clipped to a box of about 10 x 8 grids."""
    box = shapely.box(LON0, LAT0, LON0 + 10 * SIDE, LAT0 + 8 * SIDE)
    seeds = np.column_stack(
        [rng.uniform(LON0, LON0 + 10 * SIDE, n_seeds), rng.uniform(LAT0, LAT0 + 8 * SIDE, n_seeds)]
    )
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=box))
    return shapely.intersection(cells, box)


def make_aligned_mesh(nx: int, ny: int, step_cells: float, cell_deg: float) -> np.ndarray:
    """A plain rectangular mesh in exact binary fractions, its lines on raster lines or
    centre lines (step_cells of 1.5 puts every other vertex on a cell's centre line)."""
    x0, y0 = 123.375, 41.8125  # exact in binary, like cell_deg = 2**-k
    xs = x0 + step_cells * cell_deg * np.arange(nx + 1)
    ys = y0 + step_cells * cell_deg * np.arange(ny + 1)
    return np.array(
        [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(ny) for i in range(nx)]
    )


def make_points(rng: np.random.Generator, polygons: np.ndarray, n_random: int) -> np.ndarray:
    """Random points plus the hard ones: vertices, edge midpoints, points along edges,
    points on and near the raster's lines and cell centres, and points just outside."""
    xmin, ymin, xmax, ymax = shapely.total_bounds(polygons)
    w, h = xmax - xmin, ymax - ymin
    parts = [
        np.column_stack(
            [
                rng.uniform(xmin - 0.05 * w, xmax + 0.05 * w, n_random),
                rng.uniform(ymin - 0.05 * h, ymax + 0.05 * h, n_random),
            ]
        )
    ]
    coords = shapely.get_coordinates(polygons)
    parts.append(coords[rng.integers(0, len(coords), 150)])
    start = rng.integers(0, len(coords) - 1, 150)
    parts.append((coords[start] + coords[start + 1]) / 2)
    t = rng.uniform(0, 1, (150, 1))
    parts.append(coords[start] + t * (coords[start + 1] - coords[start]))
    index = GridIndex.build(polygons, np.arange(len(polygons)).astype(str).astype(object))
    (x0, y0), cell = index.origin_xy, index.cell_deg
    rows, cols = index.shape
    k = rng.integers(0, max(rows, cols), (150, 2))
    parts.append(np.column_stack([x0 + k[:, 0] * cell, y0 + k[:, 1] * cell]))  # cell corners
    if len(index.crossed_x):  # a crossed cell's centre is the reference point itself
        pick = rng.integers(0, len(index.crossed_x), 150)
        parts.append(np.column_stack([index.crossed_x[pick], index.crossed_y[pick]]))
    # Just beyond a vertex as seen from its cell's centre: the path centre -> point runs
    # through the vertex (exactly so when the coordinates are short binary fractions).
    v = coords[rng.integers(0, len(coords), 150)]
    col = np.floor((v[:, 0] - x0) / cell)
    row = np.floor((v[:, 1] - y0) / cell)
    centre = np.column_stack([x0 + (col + 0.5) * cell, y0 + (row + 0.5) * cell])
    parts.append(v + (v - centre) / 8)
    parts.append(np.column_stack([np.full(50, xmin - 0.0002), rng.uniform(ymin, ymax, 50)]))
    parts.append(np.column_stack([rng.uniform(xmin, xmax, 50), np.full(50, ymax + 0.0004)]))
    return np.concatenate(parts)


def shuffled_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([f"2101020010{c:05d}" for c in rng.permutation(n)], dtype=object)


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CELLS = st.sampled_from([None, 2e-4, 1.1e-4, 4.7e-4, 1e-3, 3e-5])


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    nx=st.integers(1, 7),
    ny=st.integers(1, 7),
    extra=st.integers(0, 4),
    cell_deg=CELLS,
)
def test_quad_mesh_matches_brute_force(seed, nx, ny, extra, cell_deg):
    rng = np.random.default_rng(seed)
    polygons = make_quad_mesh(rng, nx, ny, extra)
    assert shapely.is_valid(polygons).all()
    codes = shuffled_codes(rng, len(polygons))
    xy = make_points(rng, polygons, 400)
    check_against_brute_force(xy, polygons, codes, cell_deg=cell_deg)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n_seeds=st.integers(2, 60), cell_deg=CELLS)
def test_voronoi_matches_brute_force(seed, n_seeds, cell_deg):
    rng = np.random.default_rng(seed)
    polygons = make_voronoi(rng, n_seeds)
    codes = shuffled_codes(rng, len(polygons))
    xy = make_points(rng, polygons, 400)
    check_against_brute_force(xy, polygons, codes, cell_deg=cell_deg, near_m=30.0)


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    nx=st.integers(1, 6),
    ny=st.integers(1, 6),
    step_cells=st.sampled_from([1.0, 1.5, 2.0, 0.5, 0.75, 3.25]),
    k=st.integers(9, 13),
)
def test_mesh_on_raster_lines_matches_brute_force(seed, nx, ny, step_cells, k):
    """Boundaries exactly on cell lines and row centre lines: the degenerate layout for
    the raster's marking and its scanline fill."""
    rng = np.random.default_rng(seed)
    cell_deg = 2.0**-k
    polygons = make_aligned_mesh(nx, ny, step_cells, cell_deg)
    codes = shuffled_codes(rng, len(polygons))
    xy = make_points(rng, polygons, 300)
    check_against_brute_force(xy, polygons, codes, cell_deg=cell_deg)


def test_city_block_agrees_with_assign_points():
    """A 30 x 30 mesh with 20,000 points: every covered point gets exactly one grid, the
    one gis.assign.assign_points picks, and interior points are flagged inside."""
    rng = np.random.default_rng(20261122)
    polygons = make_quad_mesh(rng, 30, 30, 6)
    codes = shuffled_codes(rng, len(polygons))
    xy = make_points(rng, polygons, 20_000)
    routed = check_against_brute_force(xy, polygons, codes)
    assert (routed.flag == "inside").sum() > 15_000
    assert (routed.flag == "edge_rule").sum() > 100
