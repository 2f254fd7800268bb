"""Storage of the walking network, and the indexed lookups the online station queries use.

Tables (migration 0003): `road_networks` (one row: version, CRS, counts), `road_nodes`
(id, point) and `road_edges` (from/to node ids, length in metres, name, kind, line).

Online walking queries keep the whole graph in memory per process, loaded once from the
store and cached under the network's version (a new import changes it), then snap the
point and run a bounded Dijkstra in scipy. Per-request SQL routing (pgRouting) is not
available on SpatiaLite, and a bounded search on an in-memory CSR graph of a city (10^4
nodes) takes about a millisecond, far less than a round trip that routes in the database.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyproj
import shapely
import sqlalchemy as sa
from geoalchemy2 import Geometry
from sqlalchemy.orm import Session

from gis.db.models import Area, Generation, Station
from gis.db.repo import STATION_COLUMNS, _spatial_candidates
from gis.network import RoadGraph

SRID = 4326
WRITE_BATCH = 5000
_GEOD = pyproj.Geod(ellps="WGS84")
# Metres per degree of latitude is at least this on the WGS84 ellipsoid (at the equator).
_M_PER_DEG_LAT_MIN = 110_574.0
_M_PER_DEG_LON_EQ = 111_320.0

_meta = sa.MetaData()
road_networks = sa.Table(
    "road_networks",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.String(40)),
    sa.Column("crs", sa.Text),
    sa.Column("source", sa.String(300)),
    sa.Column("nodes", sa.Integer),
    sa.Column("edges", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
road_nodes = sa.Table(
    "road_nodes",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("geom", Geometry("POINT", srid=SRID, spatial_index=False)),
)
road_edges = sa.Table(
    "road_edges",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("from_node", sa.Integer),
    sa.Column("to_node", sa.Integer),
    sa.Column("length_m", sa.Float),
    sa.Column("name", sa.String(100)),
    sa.Column("kind", sa.String(40)),
    sa.Column("geom", Geometry("LINESTRING", srid=SRID, spatial_index=False)),
)


def _from_wkt(param: str) -> sa.ColumnElement:
    return sa.func.ST_GeomFromText(sa.bindparam(param), SRID)


def _text_or_none(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


# ---------------------------------------------------------------- the network


def write_road_network(session: Session, graph: RoadGraph, source: str | None = None) -> dict:
    """Replace the stored network with `graph`; returns counts and the new version."""
    session.execute(sa.delete(road_edges))
    session.execute(sa.delete(road_nodes))
    session.execute(sa.delete(road_networks))
    node_wkt = shapely.to_wkt(shapely.points(graph.node_lonlat), rounding_precision=-1)
    for start in range(0, graph.n_nodes, WRITE_BATCH):
        stop = min(start + WRITE_BATCH, graph.n_nodes)
        session.execute(
            road_nodes.insert().values(geom=_from_wkt("wkt")),
            [{"id": i, "wkt": node_wkt[i]} for i in range(start, stop)],
        )
    edges = graph.edges_gdf()
    edge_wkt = shapely.to_wkt(edges.geometry.values, rounding_precision=-1)
    names = edges["name"].to_numpy(dtype=object)
    kinds = edges["kind"].to_numpy(dtype=object)
    for start in range(0, graph.n_edges, WRITE_BATCH):
        stop = min(start + WRITE_BATCH, graph.n_edges)
        session.execute(
            road_edges.insert().values(geom=_from_wkt("wkt")),
            [
                {
                    "id": i,
                    "from_node": int(graph.edge_nodes[i, 0]),
                    "to_node": int(graph.edge_nodes[i, 1]),
                    "length_m": float(graph.edge_length_m[i]),
                    "name": (_text_or_none(names[i]) or "")[:100] or None,
                    "kind": (_text_or_none(kinds[i]) or "")[:40] or None,
                    "wkt": edge_wkt[i],
                }
                for i in range(start, stop)
            ],
        )
    version = uuid.uuid4().hex
    session.execute(
        road_networks.insert().values(
            version=version,
            crs=graph.crs,
            source=(source or "")[:300] or None,
            nodes=graph.n_nodes,
            edges=graph.n_edges,
            created_at=datetime.now(UTC),
        )
    )
    graph.version = version
    return {"nodes": graph.n_nodes, "edges": graph.n_edges, "version": version}


def road_network_info(session: Session) -> dict | None:
    """The stored network's version, CRS, source and counts; None when none is stored."""
    row = session.execute(
        sa.select(
            road_networks.c.version,
            road_networks.c.crs,
            road_networks.c.source,
            road_networks.c.nodes,
            road_networks.c.edges,
        ).limit(1)
    ).first()
    return dict(row._mapping) if row else None


def load_road_graph(session: Session) -> RoadGraph | None:
    """The stored network as a RoadGraph (None when no network is stored)."""
    info = road_network_info(session)
    if info is None:
        return None
    nodes = session.execute(
        sa.select(
            road_nodes.c.id, sa.func.ST_X(road_nodes.c.geom), sa.func.ST_Y(road_nodes.c.geom)
        ).order_by(road_nodes.c.id)
    ).all()
    edges = session.execute(
        sa.select(
            road_edges.c.from_node,
            road_edges.c.to_node,
            road_edges.c.length_m,
            road_edges.c.name,
            road_edges.c.kind,
        ).order_by(road_edges.c.id)
    ).all()
    node_arr = np.array([(r[1], r[2]) for r in nodes], dtype=float).reshape(-1, 2)
    edge_frame = pd.DataFrame(edges, columns=["from_node", "to_node", "length_m", "name", "kind"])
    graph = RoadGraph(
        crs=info["crs"],
        node_xy_m=np.zeros((len(node_arr), 2)),
        edge_nodes=edge_frame[["from_node", "to_node"]].to_numpy(dtype=np.int64).reshape(-1, 2),
        edge_length_m=edge_frame["length_m"].to_numpy(dtype=float),
        edge_name=edge_frame["name"].to_numpy(dtype=object),
        edge_kind=edge_frame["kind"].to_numpy(dtype=object),
        version=info["version"],
    )
    graph.node_xy_m = graph.to_metric(node_arr)
    return graph


_cache: dict[str, RoadGraph | None] = {}
_cache_lock = threading.Lock()


_checked: dict[str, tuple[float, str | None]] = {}  # url -> (monotonic time, version)


def _url(session: Session) -> str:
    return session.get_bind().url.render_as_string(hide_password=True)


def cached_road_graph(session: Session, *, max_age_s: float = 0.0) -> RoadGraph | None:
    """The stored network, loaded once per process and store and reloaded when its version
    changes. The version is read from the store on every call, or at most every
    `max_age_s` seconds (online queries pass a couple of seconds: a new import is then
    picked up that much later, and a request saves a round trip)."""
    url = _url(session)
    seen = _checked.get(url)
    now = time.monotonic()
    if seen is not None and now - seen[0] < max_age_s:
        version = seen[1]
    else:
        info = road_network_info(session)
        version = None if info is None else info["version"]
        _checked[url] = (now, version)
    if version is None:
        return None
    key = f"{url}#{version}"
    graph = _cache.get(key)
    if graph is not None:
        return graph
    with _cache_lock:
        graph = _cache.get(key)
        if graph is None:
            graph = load_road_graph(session)
            if graph is not None:
                # Build the search structures now, once, not inside a request.
                _ = graph.csr, graph.edge_tree
            for old in [k for k in _cache if k.startswith(f"{url}#")]:
                del _cache[old]
            _cache[key] = graph
    return graph


# ------------------------------------------------------------ station lookups


@dataclass
class Candidates:
    """Stations nearest a point by straight line, sorted by distance, with `bound_m`: no
    station left out is closer than this (inf when every station within reach is here).
    Plain rows and arrays: this sits on the online path, where pandas costs milliseconds."""

    rows: list[dict]  # STATION_COLUMNS
    lonlat: np.ndarray  # (n, 2)
    straight_m: np.ndarray
    bound_m: float


def _straight_m(lon: float, lat: float, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    if len(lons) == 0:
        return np.zeros(0)
    _, _, d = _GEOD.inv(np.full(len(lons), lon), np.full(len(lons), lat), lons, lats)
    return np.asarray(d, dtype=float)


def _station_rows(session: Session, where, order_by=None, limit: int | None = None):
    table = Station.__table__
    stmt = sa.select(
        *[table.c[c] for c in STATION_COLUMNS],
        sa.func.ST_X(table.c.geom),
        sa.func.ST_Y(table.c.geom),
    ).where(*where)
    if order_by is not None:
        stmt = stmt.order_by(order_by)
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    lonlat = np.array([(r[-2], r[-1]) for r in rows], dtype=float).reshape(-1, 2)
    return [dict(zip(STATION_COLUMNS, r[:-2], strict=True)) for r in rows], lonlat


def nearest_station_candidates(
    session: Session, lon: float, lat: float, *, kind: str | None, n: int, radius_m: float
) -> Candidates:
    """At least `n` stations nearest (lon, lat) within `radius_m`, by straight line, if
    there are that many; from the spatial index (KNN `<->` on the GiST index in PostGIS,
    a growing box on SpatiaLite's R*Tree)."""
    table = Station.__table__
    where = [table.c.kind == kind] if kind else []
    cos_lat = np.cos(np.radians(min(abs(lat) + 0.5, 89.0)))
    m_per_deg_min = 0.995 * min(_M_PER_DEG_LAT_MIN, _M_PER_DEG_LON_EQ * cos_lat)
    if session.get_bind().dialect.name == "postgresql":
        point = sa.func.ST_GeomFromText(f"POINT({lon!r} {lat!r})", SRID)
        deg = table.c.geom.op("<->")(point)
        rows, lonlat = _station_rows(session, where, order_by=deg, limit=n)
        if len(rows) < n:
            bound = np.inf
        else:
            # KNN orders by planar degrees; convert the last one to a metric lower bound.
            last = np.hypot(lonlat[-1, 0] - lon, lonlat[-1, 1] - lat)
            bound = float(last * m_per_deg_min)
        straight = _straight_m(lon, lat, lonlat[:, 0], lonlat[:, 1])
    else:
        half_m = 400.0
        while True:
            dlat = half_m / _M_PER_DEG_LAT_MIN
            dlon = half_m / (_M_PER_DEG_LON_EQ * cos_lat)
            box = (lon - dlon, lat - dlat, lon + dlon, lat + dlat)
            rows, lonlat = _station_rows(
                session, [*where, _spatial_candidates(session, table.c.geom, box)]
            )
            straight = _straight_m(lon, lat, lonlat[:, 0], lonlat[:, 1])
            # Anything outside the box is at least this far; a box around the whole
            # radius leaves nothing out.
            complete = 0.99 * half_m >= radius_m
            bound = np.inf if complete else 0.99 * half_m
            if complete or (straight <= bound).sum() >= n:
                break
            half_m *= 2
    codes = np.array([r["code"] for r in rows], dtype=object)
    keep = np.flatnonzero(straight <= radius_m)
    order = keep[np.lexsort((codes[keep].astype(str), straight[keep]))] if len(keep) else keep
    if np.isfinite(bound) and bound >= radius_m:
        bound = np.inf
    return Candidates([rows[i] for i in order], lonlat[order], straight[order], bound)


_district_cache: dict[str, shapely.Geometry | None] = {}
_active_seen: dict[str, tuple[float, int | None]] = {}  # url -> (monotonic time, generation)


def district_outline(session: Session, *, max_age_s: float = 0.0) -> shapely.Geometry | None:
    """The union of the active generation's district polygons, cached per generation; which
    generation is active is read again after `max_age_s` seconds (0: every call)."""
    url = _url(session)
    seen = _active_seen.get(url)
    now = time.monotonic()
    if seen is not None and now - seen[0] < max_age_s:
        gen_id = seen[1]
    else:
        gen_id = session.execute(
            sa.select(Generation.id).where(Generation.status == "active")
        ).scalar()
        _active_seen[url] = (now, gen_id)
    if gen_id is None:
        return None
    key = f"{url}#{gen_id}"
    if key not in _district_cache:
        wkb = (
            session.execute(
                sa.select(sa.func.ST_AsBinary(Area.geom)).where(
                    Area.generation_id == gen_id, Area.level == "district"
                )
            )
            .scalars()
            .all()
        )
        geom = shapely.union_all(shapely.from_wkb([bytes(w) for w in wkb])) if wkb else None
        if geom is not None:
            shapely.prepare(geom)
        _district_cache[key] = geom
    return _district_cache[key]


def distance_to_district_m(
    session: Session, lon: float, lat: float, *, max_age_s: float = 0.0
) -> float | None:
    """Metres from a point to the active district (0 inside; None when none is stored)."""
    outline = district_outline(session, max_age_s=max_age_s)
    if outline is None:
        return None
    point = shapely.Point(lon, lat)
    if outline.covers(point):
        return 0.0
    near = shapely.get_coordinates(shapely.shortest_line(point, outline))[-1]
    return float(_straight_m(lon, lat, np.array([near[0]]), np.array([near[1]]))[0])
