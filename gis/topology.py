"""Topology checks for a grid layer: valid polygons, inside the community, no gaps, no overlaps.

Pure: shapely arrays in, a list of problems out (empty means valid). Areas are measured
in metres in an equirectangular plane centred on the layer, and a gap or overlap counts
only above `tolerance_m2`: polygons derived on a 1 cm precision grid and converted from
degrees differ from the community's edge by float noise, never by a square metre.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import shapely

from gis.routing import metres_per_degree

TOLERANCE_M2 = 1.0
PIECE_GAP_M = 0.01


def to_local_m(geoms, lon0: float, lat0: float) -> np.ndarray:
    """Degrees to metres east/north of (lon0, lat0), WGS84 metres per degree there."""
    m_lon, m_lat = metres_per_degree(lat0)
    return shapely.transform(
        np.asarray(geoms),
        lambda xy: np.column_stack([(xy[:, 0] - lon0) * m_lon, (xy[:, 1] - lat0) * m_lat]),
    )


def to_degrees(geoms, lon0: float, lat0: float) -> np.ndarray:
    m_lon, m_lat = metres_per_degree(lat0)
    return shapely.transform(
        np.asarray(geoms),
        lambda xy: np.column_stack([xy[:, 0] / m_lon + lon0, xy[:, 1] / m_lat + lat0]),
    )


def polygons_to_degrees(geoms, lon0: float, lat0: float) -> np.ndarray:
    """Metric polygons back to degrees, repaired where rounding made them invalid.

    A ring that nearly touches itself in metres can cross itself by 1e-15° after the
    conversion; make_valid moves nothing measurable and keeps only the polygon parts.
    """
    out = to_degrees(geoms, lon0, lat0)
    bad = ~shapely.is_valid(out)
    for i in np.flatnonzero(bad):
        parts = shapely.get_parts(shapely.get_parts(shapely.make_valid(out[i])))
        out[i] = shapely.union_all(parts[shapely.get_type_id(parts) == 3])
    return out


def check_grid_layer(
    grid_codes,
    grid_parents,
    grid_geoms,
    community_codes,
    community_geoms,
    *,
    degrees: bool = True,
    tolerance_m2: float = TOLERANCE_M2,
    one_piece: bool | Collection[str] = False,
) -> list[dict]:
    """Problems with a grid layer against its communities, one dict per problem.

    Each grid must be a valid (Multi)Polygon, name a known community and lie inside it;
    the grids of a community must cover it (no gaps) without overlapping each other.
    `one_piece` (True, or the codes it applies to) also asks each grid to be one
    polygon (contiguous). Problems name the grid (overlaps: both grids; gaps: the
    grids bordering the gap) and the community.
    """
    grid_codes = list(grid_codes)
    grid_parents = list(grid_parents)
    grids = np.asarray(grid_geoms, dtype=object)
    comms = dict(zip(community_codes, np.asarray(community_geoms, dtype=object), strict=True))
    problems: list[dict] = []
    if degrees and len(grids):
        lon0, lat0 = shapely.centroid(shapely.union_all(shapely.envelope(grids))).coords[0]
        grids = to_local_m(grids, lon0, lat0)
        comms = dict(zip(comms, to_local_m(list(comms.values()), lon0, lat0), strict=True))
    by_community: dict[str, list[int]] = {}
    for i, (code, parent, geom) in enumerate(zip(grid_codes, grid_parents, grids, strict=True)):
        if geom is None or shapely.is_empty(geom):
            problems.append({"grid": code, "problem": "empty", "message": f"grid {code} is empty"})
            continue
        if shapely.get_type_id(geom) not in (3, 6):
            problems.append(
                {"grid": code, "problem": "type", "message": f"grid {code} is not a polygon"}
            )
            continue
        if not shapely.is_valid(geom):
            reason = shapely.is_valid_reason(geom)
            problems.append(
                {"grid": code, "problem": "invalid", "message": f"grid {code}: {reason}"}
            )
            continue
        wants_one = one_piece is True or (one_piece is not False and code in one_piece)
        n_parts = shapely.get_num_geometries(geom)
        if wants_one and n_parts > 1:
            # Pieces less than a centimetre apart count as one: converting derived
            # polygons to degrees can split a grid pinched at one vertex in two.
            n_parts = shapely.get_num_geometries(shapely.buffer(geom, PIECE_GAP_M / 2))
        if wants_one and n_parts > 1:
            problems.append(
                {
                    "grid": code,
                    "community": parent,
                    "problem": "parts",
                    "message": f"grid {code} is in {n_parts} pieces, not one contiguous polygon",
                }
            )
        if parent not in comms:
            problems.append(
                {
                    "grid": code,
                    "problem": "parent",
                    "message": f"grid {code} names unknown community {parent}",
                }
            )
            continue
        by_community.setdefault(parent, []).append(i)
    for community, members in sorted(by_community.items()):
        problems.extend(
            _check_community(community, comms[community], members, grid_codes, grids, tolerance_m2)
        )
    return problems


def _check_community(community, comm_geom, members, grid_codes, grids, tolerance_m2) -> list[dict]:
    problems = []
    parts = grids[members]
    codes = [grid_codes[i] for i in members]
    for code, geom in zip(codes, parts, strict=True):
        outside = shapely.area(shapely.difference(geom, comm_geom))
        if outside > tolerance_m2:
            problems.append(
                {
                    "grid": code,
                    "community": community,
                    "problem": "outside",
                    "message": f"grid {code}: {outside:,.1f} m² outside community {community}",
                }
            )
    union = shapely.union_all(parts)
    gap_geom = shapely.difference(comm_geom, union)
    gap = shapely.area(gap_geom)
    if gap > tolerance_m2:
        # Name the grids around the gap: those within a metre of it.
        near = [c for c, g in zip(codes, parts, strict=True) if shapely.distance(g, gap_geom) < 1]
        around = f" (beside grid {', '.join(near)})" if near else ""
        problems.append(
            {
                "community": community,
                "grids": near,
                "problem": "gap",
                "message": f"community {community}: {gap:,.1f} m² covered by no grid{around}",
            }
        )
    tree = shapely.STRtree(parts)
    left, right = tree.query(parts, predicate="intersects")
    for a, b in zip(left, right, strict=True):
        if a >= b:
            continue
        overlap = shapely.area(shapely.intersection(parts[a], parts[b]))
        if overlap > tolerance_m2:
            problems.append(
                {
                    "grid": codes[a],
                    "grids": [codes[a], codes[b]],
                    "community": community,
                    "problem": "overlap",
                    "message": f"grids {codes[a]} and {codes[b]} overlap by {overlap:,.1f} m² "
                    f"(community {community})",
                }
            )
    return problems


def check_household_band(grid_codes, households, low: int, high: int) -> list[dict]:
    """A problem for each grid whose households fall outside [low, high]."""
    problems = []
    for code, hh in zip(grid_codes, households, strict=True):
        if not low <= hh <= high:
            side = "below" if hh < low else "above"
            problems.append(
                {
                    "grid": code,
                    "problem": "band",
                    "households": int(hh),
                    "message": f"grid {code} has {int(hh):,} households, {side} the band "
                    f"{low}–{high}",
                }
            )
    return problems


def polsby_popper(geoms) -> np.ndarray:
    """4πA/P²: 1 for a disc, about 0.785 for a square, near 0 for a sliver."""
    area = shapely.area(np.asarray(geoms))
    perimeter = shapely.length(np.asarray(geoms))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(perimeter > 0, 4 * math.pi * area / perimeter**2, 0.0)


def count_parts_and_holes(geoms) -> tuple[np.ndarray, np.ndarray]:
    """Polygon parts and interior rings of each geometry (contiguity at a glance)."""
    geoms = np.asarray(geoms)
    parts, index = shapely.get_parts(geoms, return_index=True)
    n_parts = np.bincount(index, minlength=len(geoms))
    holes = np.bincount(index, weights=shapely.get_num_interior_rings(parts), minlength=len(geoms))
    return n_parts, holes.astype(int)
