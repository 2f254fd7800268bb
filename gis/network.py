"""Walking network: a routable graph built from street centre lines, and searches on it.

Building the graph: every vertex of every line is a node, and nodes are merged where their
coordinates agree after rounding to 0.01 m in a local metric CRS (an azimuthal equidistant
projection centred on the network), so lines that share a vertex are joined and lines that
merely cross (a bridge over a road) are not. Each consecutive vertex pair is an edge whose
weight is its length in metres; parallel duplicates keep the shortest.

Attaching points: a building, station or resident is attached at its foot on the nearest edge
(shapely STRtree), and a walk is the straight access leg to that foot plus the distance along
the edge to either end node. Snapping to the nearest node instead would add up to half a block
(75-125 m in the demo lattice) of error, and the foot costs one vectorised projection.

Searches are scipy.sparse.csgraph Dijkstra: bounded by `limit` for online queries, one
multi-source pass (`min_only=True`) from every station of a kind for coverage. Pure: arrays
and GeoDataFrames in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import scipy.sparse as sp
import shapely
from scipy.sparse.csgraph import dijkstra

from gis.crs import local_metric_crs
from gis.errors import InvalidGeometry, InvalidInput

#: Node coordinates are rounded to this many decimals of a metre before merging.
SNAP_DECIMALS = 2


@dataclass(eq=False)
class RoadGraph:
    """An undirected street graph in a local metric CRS (`crs`, a PROJ string).

    `edge_nodes[e] = (from, to)`; `edge_length_m[e]` is the walking length of edge e.
    Edges are straight segments between their two nodes.
    """

    crs: str
    node_xy_m: np.ndarray
    edge_nodes: np.ndarray
    edge_length_m: np.ndarray
    edge_name: np.ndarray | None = None
    edge_kind: np.ndarray | None = None
    version: str = ""

    @property
    def n_nodes(self) -> int:
        return len(self.node_xy_m)

    @property
    def n_edges(self) -> int:
        return len(self.edge_nodes)

    @cached_property
    def csr(self) -> sp.csr_matrix:
        """Symmetric adjacency with lengths; searched as a directed graph (no re-symmetrising)."""
        a, b = self.edge_nodes[:, 0], self.edge_nodes[:, 1]
        rows = np.concatenate([a, b])
        cols = np.concatenate([b, a])
        w = np.concatenate([self.edge_length_m, self.edge_length_m])
        return sp.csr_matrix((w, (rows, cols)), shape=(self.n_nodes, self.n_nodes))

    @cached_property
    def edge_geoms_m(self) -> np.ndarray:
        xy = self.node_xy_m[self.edge_nodes]
        return shapely.linestrings(xy)

    @cached_property
    def edge_tree(self) -> shapely.STRtree:
        return shapely.STRtree(self.edge_geoms_m)

    @cached_property
    def _to_metric(self) -> pyproj.Transformer:
        return pyproj.Transformer.from_crs(4326, pyproj.CRS.from_proj4(self.crs), always_xy=True)

    @cached_property
    def _to_lonlat(self) -> pyproj.Transformer:
        return pyproj.Transformer.from_crs(pyproj.CRS.from_proj4(self.crs), 4326, always_xy=True)

    def to_metric(self, lonlat: np.ndarray) -> np.ndarray:
        lonlat = np.asarray(lonlat, dtype=float).reshape(-1, 2)
        x, y = self._to_metric.transform(lonlat[:, 0], lonlat[:, 1])
        return np.column_stack([x, y])

    def to_lonlat(self, xy_m: np.ndarray) -> np.ndarray:
        xy_m = np.asarray(xy_m, dtype=float).reshape(-1, 2)
        lon, lat = self._to_lonlat.transform(xy_m[:, 0], xy_m[:, 1])
        return np.column_stack([lon, lat])

    @cached_property
    def node_lonlat(self) -> np.ndarray:
        return self.to_lonlat(self.node_xy_m)

    def edges_gdf(self) -> gpd.GeoDataFrame:
        """Edges in EPSG:4326 with from/to node ids and length (for storage and maps)."""
        coords = self.node_lonlat[self.edge_nodes]
        frame = pd.DataFrame(
            {
                "from_node": self.edge_nodes[:, 0],
                "to_node": self.edge_nodes[:, 1],
                "length_m": self.edge_length_m,
                "name": self.edge_name if self.edge_name is not None else None,
                "kind": self.edge_kind if self.edge_kind is not None else None,
            }
        )
        return gpd.GeoDataFrame(frame, geometry=shapely.linestrings(coords), crs=4326)


# ------------------------------------------------------------------- building


def build_road_graph(lines_gdf: gpd.GeoDataFrame) -> RoadGraph:
    """Build the routable graph from street lines (any CRS; converted via EPSG:4326).

    Raises InvalidGeometry when there are no line features to route on.
    """
    if lines_gdf.crs is None:
        raise InvalidInput("road lines have no CRS; declare one (EPSG:4326 for lon/lat)")
    gdf = lines_gdf if lines_gdf.crs.equals(4326) else lines_gdf.to_crs(4326)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    is_line = shapely.get_type_id(parts) == 1  # LineString
    parts, part_of = parts[is_line], part_of[is_line]
    parts = parts[~shapely.is_empty(parts)] if len(parts) else parts
    if len(parts) == 0:
        raise InvalidGeometry("no LineString or MultiLineString features to build a network from")
    lonlat, line_of = shapely.get_coordinates(parts, return_index=True)
    lon0, lat0 = (lonlat.min(axis=0) + lonlat.max(axis=0)) / 2
    crs = local_metric_crs(float(lon0), float(lat0)).srs
    to_m = pyproj.Transformer.from_crs(4326, pyproj.CRS.from_proj4(crs), always_xy=True)
    x, y = to_m.transform(lonlat[:, 0], lonlat[:, 1])
    xy = np.round(np.column_stack([x, y]), SNAP_DECIMALS)
    node_xy, vertex_node = np.unique(xy, axis=0, return_inverse=True)
    vertex_node = vertex_node.reshape(-1)
    same_line = line_of[1:] == line_of[:-1]
    a, b = vertex_node[:-1][same_line], vertex_node[1:][same_line]
    src_row = part_of[line_of[:-1][same_line]]
    keep = a != b
    a, b, src_row = a[keep], b[keep], src_row[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    length = np.hypot(*(node_xy[hi] - node_xy[lo]).T)
    # One edge per node pair: the shortest (they are equal for straight segments).
    order = np.lexsort((length, hi, lo))
    lo, hi, length, src_row = lo[order], hi[order], length[order], src_row[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, length, src_row = lo[first], hi[first], length[first], src_row[first]
    # Drop nodes no edge uses (isolated vertices of degenerate lines).
    used = np.unique(np.concatenate([lo, hi]))
    remap = np.full(len(node_xy), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))

    def column(name: str) -> np.ndarray | None:
        if name not in gdf.columns:
            return None
        return gdf[name].to_numpy(dtype=object)[src_row]

    return RoadGraph(
        crs=crs,
        node_xy_m=node_xy[used],
        edge_nodes=np.column_stack([remap[lo], remap[hi]]).astype(np.int64),
        edge_length_m=length.astype(float),
        edge_name=column("name"),
        edge_kind=column("kind"),
    )


# ------------------------------------------------------------------- snapping


@dataclass
class Snap:
    """Where points meet the network: the edge, the foot's distance from the edge's
    from-node, the straight access leg, and the foot itself (metric CRS)."""

    edge: np.ndarray
    along_m: np.ndarray
    access_m: np.ndarray
    foot_xy_m: np.ndarray
    xy_m: np.ndarray

    def __len__(self) -> int:
        return len(self.edge)

    def take(self, idx) -> Snap:
        return Snap(
            self.edge[idx],
            self.along_m[idx],
            self.access_m[idx],
            self.foot_xy_m[idx],
            self.xy_m[idx],
        )


def snap_points(graph: RoadGraph, xy_m: np.ndarray) -> Snap:
    """Attach points (metric CRS, shape (n, 2)) to their nearest edge, vectorised."""
    xy_m = np.asarray(xy_m, dtype=float).reshape(-1, 2)
    if graph.n_edges == 0:
        raise InvalidInput("the street network has no edges")
    if len(xy_m) == 0:
        empty = np.zeros(0)
        return Snap(empty.astype(np.int64), empty, empty, np.zeros((0, 2)), xy_m)
    pairs = graph.edge_tree.query_nearest(shapely.points(xy_m), all_matches=False)
    edge = np.empty(len(xy_m), dtype=np.int64)
    edge[pairs[0]] = pairs[1]
    a = graph.node_xy_m[graph.edge_nodes[edge, 0]]
    b = graph.node_xy_m[graph.edge_nodes[edge, 1]]
    ab = b - a
    t = np.einsum("ij,ij->i", xy_m - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    foot = a + ab * t[:, None]
    along = t * graph.edge_length_m[edge]
    access = np.hypot(*(xy_m - foot).T)
    return Snap(edge, along, access, foot, xy_m)


def _endpoint_offsets(graph: RoadGraph, snap: Snap) -> tuple[np.ndarray, np.ndarray]:
    """(nodes (n, 2), offsets (n, 2)): each point's two end nodes and the walk to each."""
    nodes = graph.edge_nodes[snap.edge]
    length = graph.edge_length_m[snap.edge]
    offsets = np.column_stack([snap.along_m, length - snap.along_m]) + snap.access_m[:, None]
    return nodes, offsets


def _same_edge_pairs(source: Snap, target: Snap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source i, target j, metres) for points on the same edge: the walk along it directly."""
    empty = np.zeros(0, dtype=np.int64)
    if len(source) == 0 or len(target) == 0:
        return empty, empty, np.zeros(0)
    # Sort the sources by edge and find each target's run of equal edges (a sort-merge
    # join in numpy: pandas' merge costs milliseconds on the online path).
    order = np.argsort(source.edge, kind="stable")
    edges = source.edge[order]
    lo = np.searchsorted(edges, target.edge, side="left")
    hi = np.searchsorted(edges, target.edge, side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return empty, empty, np.zeros(0)
    j = np.repeat(np.arange(len(target)), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    i = order[np.repeat(lo, counts) + within]
    d = np.abs(source.along_m[i] - target.along_m[j]) + source.access_m[i] + target.access_m[j]
    return i, j, d


# ------------------------------------------------------------------- searches


@dataclass
class PointSearch:
    """Distances from one snapped point to every node within a bound, with the way back."""

    graph: RoadGraph
    origin: Snap  # one point
    node_dist_m: np.ndarray  # inf beyond the bound
    via: np.ndarray  # per node: 0 left via the edge's from-node, 1 via its to-node
    predecessors: np.ndarray  # (2, n)

    def distances_to(self, target: Snap) -> np.ndarray:
        """Walking metres from the origin to each target point (inf beyond the bound)."""
        nodes, offsets = _endpoint_offsets(self.graph, target)
        d = np.min(self.node_dist_m[nodes] + offsets, axis=1)
        _, j, direct = _same_edge_pairs(self.origin, target)
        np.minimum.at(d, j, direct)
        return d

    def path_to(self, target: Snap, j: int) -> np.ndarray:
        """The walk to target j as metric coordinates: origin, foot, nodes…, foot, target."""
        o = self.origin
        start = [o.xy_m[0], o.foot_xy_m[0]]
        end = [target.foot_xy_m[j], target.xy_m[j]]
        if target.edge[j] == o.edge[0]:
            direct = abs(o.along_m[0] - target.along_m[j]) + o.access_m[0] + target.access_m[j]
            nodes, offsets = _endpoint_offsets(self.graph, target.take([j]))
            via_nodes = np.min(self.node_dist_m[nodes[0]] + offsets[0])
            if direct <= via_nodes:
                return np.array(start + end)
        nodes, offsets = _endpoint_offsets(self.graph, target.take([j]))
        k = int(np.argmin(self.node_dist_m[nodes[0]] + offsets[0]))
        node = int(nodes[0, k])
        row = self.predecessors[self.via[node]]
        chain = [node]
        while row[chain[-1]] >= 0:
            chain.append(int(row[chain[-1]]))
        chain.reverse()
        return np.array(start + [self.graph.node_xy_m[n] for n in chain] + end)


def search_from_point(graph: RoadGraph, origin: Snap, limit_m: float = np.inf) -> PointSearch:
    """Bounded Dijkstra from one snapped point (both ends of its edge, offsets added after)."""
    nodes, offsets = _endpoint_offsets(graph, origin)
    nodes, offsets = nodes[0], offsets[0]
    bound = max(float(limit_m) - float(origin.access_m[0]), 0.0)
    dist, pred = dijkstra(
        graph.csr, directed=True, indices=nodes, return_predecessors=True, limit=bound
    )
    total = dist + offsets[:, None]
    via = np.argmin(total, axis=0)
    node_dist = total[via, np.arange(graph.n_nodes)]
    node_dist[node_dist > limit_m] = np.inf
    return PointSearch(graph, origin, node_dist, via, pred)


def _with_sources(graph: RoadGraph, sources: Snap) -> tuple[sp.csr_matrix, np.ndarray]:
    """The graph plus one virtual node per source with one-way edges to its edge's ends."""
    n, s = graph.n_nodes, len(sources)
    nodes, offsets = _endpoint_offsets(graph, sources)
    virtual = n + np.arange(s)
    base = graph.csr.tocoo()
    rows = np.concatenate([base.row, virtual, virtual])
    cols = np.concatenate([base.col, nodes[:, 0], nodes[:, 1]])
    w = np.concatenate([base.data, offsets[:, 0], offsets[:, 1]])
    return sp.csr_matrix((w, (rows, cols)), shape=(n + s, n + s)), virtual


def nearest_source_distances(
    graph: RoadGraph, sources: Snap, targets: Snap, limit_m: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """For every target, the walk to its nearest source and that source's index (-1: none).

    One multi-source Dijkstra (`min_only=True`) from all sources at once, however many
    targets: the cost is one pass over the graph, not one search per target.
    """
    if len(sources) == 0:
        return np.full(len(targets), np.inf), np.full(len(targets), -1)
    aug, virtual = _with_sources(graph, sources)
    dist, _pred, origin = dijkstra(
        aug,
        directed=True,
        indices=virtual,
        min_only=True,
        return_predecessors=True,
        limit=limit_m,
    )
    n = graph.n_nodes
    node_dist, node_src = dist[:n], np.where(origin[:n] >= 0, origin[:n] - n, -1)
    nodes, offsets = _endpoint_offsets(graph, targets)
    cand = node_dist[nodes] + offsets
    k = np.argmin(cand, axis=1)
    rows = np.arange(len(targets))
    d = cand[rows, k]
    src = node_src[nodes[rows, k]]
    i, j, direct = _same_edge_pairs(sources, targets)
    if len(j):
        order = np.lexsort((direct, j))  # per target, the closest same-edge source first
        i, j, direct = i[order], j[order], direct[order]
        first = np.ones(len(j), dtype=bool)
        first[1:] = j[1:] != j[:-1]
        i, j, direct = i[first], j[first], direct[first]
        better = direct < d[j]
        d[j[better]] = direct[better]
        src[j[better]] = i[better]
    src = np.where(np.isfinite(d) & (d <= limit_m), src, -1)
    d = np.where(src >= 0, d, np.inf)
    return d, src


def pair_distances_within(
    graph: RoadGraph, sources: Snap, targets: Snap, limit_m: float, chunk: int | None = None
) -> sp.csr_matrix:
    """Sparse (sources x targets) walking metres for pairs within `limit_m`.

    Stored values are metres + 1e-9 so that a zero walk is not an absent entry. Sources are
    searched in chunks (two bounded Dijkstra rows each) to keep memory flat.
    """
    n_t = len(targets)
    t_nodes, t_off = _endpoint_offsets(graph, targets)
    if chunk is None:
        chunk = int(max(1, min(256, 2e7 // max(n_t, graph.n_nodes, 1))))
    rows, cols, vals = [], [], []
    for start in range(0, len(sources), chunk):
        part = sources.take(np.arange(start, min(start + chunk, len(sources))))
        s_nodes, s_off = _endpoint_offsets(graph, part)
        dist = dijkstra(graph.csr, directed=True, indices=s_nodes.reshape(-1), limit=limit_m)
        dist = dist.reshape(len(part), 2, graph.n_nodes) + s_off[:, :, None]
        node_dist = dist.min(axis=1)  # (c, n)
        d = np.minimum(
            node_dist[:, t_nodes[:, 0]] + t_off[:, 0], node_dist[:, t_nodes[:, 1]] + t_off[:, 1]
        )
        i, j, direct = _same_edge_pairs(part, targets)
        np.minimum.at(d, (i, j), direct)
        r, c = np.nonzero(d <= limit_m)
        rows.append(r + start)
        cols.append(c)
        vals.append(d[r, c] + 1e-9)
    if not rows:
        return sp.csr_matrix((len(sources), n_t))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(sources), n_t),
    )


# ------------------------------------------------------------------ isochrones


def reachable_lines(graph: RoadGraph, origin: Snap, limit_m: float) -> np.ndarray:
    """The street pieces reachable from one point within `limit_m` (metric LineStrings).

    Edges reached from both ends within the budget are whole; otherwise each reached end
    contributes the piece the remaining budget allows.
    """
    search = search_from_point(graph, origin, limit_m)
    d = search.node_dist_m
    a, b = graph.edge_nodes[:, 0], graph.edge_nodes[:, 1]
    length = graph.edge_length_m
    ra, rb = limit_m - d[a], limit_m - d[b]  # -inf where unreached
    xa, xb = graph.node_xy_m[a], graph.node_xy_m[b]
    unit = (xb - xa) / np.maximum(length, 1e-12)[:, None]
    whole = (ra >= 0) & (rb >= 0) & (ra + rb >= length)
    pieces = [graph.edge_geoms_m[whole]]
    from_a = (ra > 0) & ~whole
    pieces.append(
        shapely.linestrings(
            np.stack(
                [
                    xa[from_a],
                    xa[from_a] + unit[from_a] * np.minimum(ra[from_a], length[from_a])[:, None],
                ],
                axis=1,
            )
        )
    )
    from_b = (rb > 0) & ~whole
    pieces.append(
        shapely.linestrings(
            np.stack(
                [
                    xb[from_b],
                    xb[from_b] - unit[from_b] * np.minimum(rb[from_b], length[from_b])[:, None],
                ],
                axis=1,
            )
        )
    )
    # The origin's own edge, outwards from the foot.
    left = limit_m - float(origin.access_m[0])
    if left > 0:
        e = int(origin.edge[0])
        foot = origin.foot_xy_m[0]
        along = float(origin.along_m[0])
        u = unit[e]
        ends = [foot - u * min(left, along), foot + u * min(left, length[e] - along)]
        pieces.append(np.array([shapely.LineString([ends[0], ends[1]])], dtype=object))
        pieces.append(np.array([shapely.LineString([origin.xy_m[0], foot])], dtype=object))
    lines = np.concatenate(pieces)
    return lines[shapely.length(lines) > 0]


def isochrone_polygon(
    graph: RoadGraph, origin: Snap, limit_m: float, buffer_m: float = 40.0
) -> shapely.Geometry:
    """A walking isochrone (metric CRS): the reachable street pieces buffered by `buffer_m`.

    Chosen over a concave hull of reached nodes because a hull claims block interiors
    and the far side of rivers or railways that no street crosses; a buffer of what is
    actually walkable draws exactly the streets, widened to the building frontages.
    """
    lines = reachable_lines(graph, origin, limit_m)
    if len(lines) == 0:
        return shapely.Point(origin.xy_m[0]).buffer(buffer_m)
    return shapely.union_all(shapely.buffer(lines, buffer_m, quad_segs=4))
