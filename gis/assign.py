"""Point-in-polygon assignment with one deterministic rule for edges.

A point covered by several polygons (on a shared edge or vertex) belongs to the
one with the lowest code. The same rule is used by the SQL lookup in
`gis.db.repo.locate`, so online and bulk answers agree.
"""

from __future__ import annotations

import numpy as np
import shapely


def assign_points(points: np.ndarray, polygons: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """For each point, the code of the lowest-coded polygon covering it (None if none).

    Parameters
    ----------
    points, polygons : arrays of shapely geometries in the same CRS.
    codes : array of str, one per polygon.
    """
    points = np.asarray(points)
    out = np.full(len(points), None, dtype=object)
    if len(points) == 0 or len(polygons) == 0:
        return out
    codes = np.asarray(codes, dtype=object)
    tree = shapely.STRtree(polygons)
    point_idx, poly_idx = tree.query(points, predicate="covered_by")
    if len(point_idx) == 0:
        return out
    # Sort pairs by (point, code) and keep the first per point: lowest code wins.
    order = np.lexsort((codes[poly_idx].astype(str), point_idx))
    point_idx, poly_idx = point_idx[order], poly_idx[order]
    first = np.ones(len(point_idx), dtype=bool)
    first[1:] = point_idx[1:] != point_idx[:-1]
    out[point_idx[first]] = codes[poly_idx[first]]
    return out
