"""Import a walking network: street centre lines from GeoJSON, GeoPackage, (zipped)
Shapefile, or an OpenStreetMap `.osm.pbf` extract (read with pyosmium).

Lines are checked like every other layer (a bad feature refuses the whole file, with all
problems listed), converted to EPSG:4326, built into a routable graph (`gis.network`)
and stored in place of the previous network.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.sparse.csgraph import connected_components
from sqlalchemy.orm import sessionmaker

from data.importers import (
    ImportReport,
    _is_geographic,
    _lonlat_outliers,
    _Problems,
    _read,
    _refuse,
    _source_crs,
    _to_storage,
)
from gis.db import network_repo
from gis.network import RoadGraph, build_road_graph

LINE_TYPES = ("LineString", "MultiLineString")
# OSM highway values a pedestrian may use; motorways and their ramps are left out.
OSM_WALKABLE = {
    "trunk", "trunk_link", "primary", "primary_link", "secondary", "secondary_link",
    "tertiary", "tertiary_link", "unclassified", "residential", "living_street", "service",
    "pedestrian", "footway", "path", "steps", "track", "cycleway", "road", "corridor",
}  # fmt: skip


def _read_pbf(path: Path, name: str, shown: str) -> gpd.GeoDataFrame:
    """Walkable OSM ways as lines (foot=no dropped); node locations resolved in memory."""
    try:
        import osmium
    except ImportError as exc:  # pragma: no cover - osmium is a dependency
        raise _refuse(name, shown, "reading .osm.pbf needs pyosmium (pip install osmium)") from exc
    rows = []
    try:
        # Nodes must pass through the processor for the location cache to fill.
        processor = osmium.FileProcessor(str(path), osmium.osm.NODE | osmium.osm.WAY)
        for way in processor.with_locations():
            if not way.is_way():
                continue
            tags = way.tags
            if tags.get("highway") not in OSM_WALKABLE or tags.get("foot") == "no":
                continue
            coords = [(n.lon, n.lat) for n in way.nodes if n.location.valid()]
            if len(coords) < 2:
                continue
            rows.append(
                {
                    "code": f"w{way.id}",
                    "name": tags.get("name"),
                    "kind": tags.get("highway"),
                    "geometry": shapely.LineString(coords),
                }
            )
    except RuntimeError as exc:
        raise _refuse(name, shown, f"cannot be read as OSM PBF: {exc}") from exc
    if not rows:
        raise _refuse(name, shown, "the OSM extract has no walkable highway ways")
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)


def read_roads(
    path: Path, crs: str | None = None, *, source_name: str | None = None
) -> tuple[gpd.GeoDataFrame, list[str]]:
    """Street lines in EPSG:4326 and warnings; raises ImportRejected naming the file."""
    path = Path(path)
    name = source_name or path.name
    shown = source_name or str(path)
    if path.name.lower().endswith(".pbf"):
        if not path.exists():
            raise _refuse(name, shown, "no such file")
        return _read_pbf(path, name, shown), []
    raw = _read(path, "roads", name, shown)
    if len(raw.frame) == 0:
        raise _refuse(name, shown, "the file has no features (expected road lines)")
    source, notes = _source_crs(raw, crs, name, shown)
    problems = _Problems(name, shown)
    geoms = raw.geoms.copy()
    usable = np.zeros(len(geoms), dtype=bool)
    for i, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            problems.add(i + 1, "geometry", "has no geometry")
        elif geom.geom_type not in LINE_TYPES:
            problems.add(i + 1, "geometry", f"geometry is {geom.geom_type}, roads need lines")
        else:
            usable[i] = True
    idx = np.flatnonzero(usable)
    if len(idx) and _is_geographic(source):
        for i in idx[_lonlat_outliers(geoms[idx])]:
            problems.add(int(i) + 1, "geometry", "coordinates are not longitude/latitude")
            usable[i] = False
    idx = np.flatnonzero(usable)
    if len(idx):
        geoms[idx] = _to_storage(geoms[idx], source)
        for i in idx[_lonlat_outliers(geoms[idx])]:
            problems.add(int(i) + 1, "geometry", "coordinates are not longitude/latitude")
    problems.raise_if_any()
    frame = pd.DataFrame(raw.frame).rename(columns=str.lower)
    keep = {c: frame[c].to_numpy(dtype=object) for c in ("code", "name", "kind") if c in frame}
    gdf = gpd.GeoDataFrame(keep, geometry=gpd.GeoSeries(list(geoms), crs=4326), crs=4326)
    return gdf, raw.warnings + notes


def describe_graph(graph: RoadGraph) -> str:
    parts, _ = connected_components(graph.csr, directed=False)
    km = graph.edge_length_m.sum() / 1000
    return (
        f"street network: {graph.n_nodes} nodes, {graph.n_edges} edges, {km:,.1f} km, "
        f"{parts} connected part{'s' if parts != 1 else ''}"
    )


def import_roads(
    sessions: sessionmaker,
    path: Path,
    *,
    crs: str | None = None,
    source_name: str | None = None,
) -> ImportReport:
    """Read, build and store a walking network, replacing the stored one."""
    lines, warns = read_roads(path, crs, source_name=source_name)
    graph = build_road_graph(lines)
    with sessions() as session, session.begin():
        network_repo.write_road_network(session, graph, source=source_name or Path(path).name)
    return ImportReport(
        layer="roads",
        path=source_name or str(path),
        features=len(lines),
        inserted=graph.n_edges,
        updated=0,
        warnings=[*warns, describe_graph(graph)],
    )


def write_demo_roads(session, roads_gdf: gpd.GeoDataFrame) -> int:
    """Build and store the demo generator's street lattice; returns the edge count."""
    graph = build_road_graph(roads_gdf)
    network_repo.write_road_network(session, graph, source="demo district")
    return graph.n_edges
