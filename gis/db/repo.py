"""Repositories: the only code that runs SQL. They return GeoDataFrames and plain dicts.

Where PostGIS and SpatiaLite differ (how a spatial index is used), the
difference is hidden here: PostGIS uses `&&` against a GiST index, SpatiaLite a
sub-query on its R*Tree through the `SpatialIndex` virtual table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gis.assign import assign_points
from gis.db.models import (
    LEVELS,
    Area,
    Building,
    Case,
    Category,
    Generation,
    Station,
    Worker,
    WorkerGrid,
)
from gis.errors import Conflict, InvalidInput, NotFound
from gis.routing import metres_per_degree

SRID = 4326
CHILD_LEVEL = dict(zip(LEVELS[:-1], LEVELS[1:], strict=True))
PARENT_LEVEL = {child: parent for parent, child in CHILD_LEVEL.items()}
WRITE_BATCH = 5000


def now_utc() -> datetime:
    return datetime.now(UTC)


def _is_postgis(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _geom_from_wkt(wkt) -> sa.ColumnElement:
    # ST_GeomFromText is spelled the same on both stores.
    return sa.func.ST_GeomFromText(wkt, SRID)


def _wkt(geoms: Sequence) -> list[str]:
    return list(shapely.to_wkt(np.asarray(geoms), rounding_precision=-1, output_dimension=2))


def _box_wkt(bbox) -> str:
    """The box as a polygon; a flat box (points on one line) gets a hair of height or
    width, since PostGIS finds nothing inside a polygon of zero area."""
    minx, miny, maxx, maxy = bbox
    eps = 1e-9
    if maxx - minx < eps:
        minx, maxx = minx - eps, maxx + eps
    if maxy - miny < eps:
        miny, maxy = miny - eps, maxy + eps
    return shapely.box(minx, miny, maxx, maxy).wkt


def _spatial_candidates(session: Session, column, bbox: tuple[float, float, float, float]):
    """A WHERE clause keeping rows whose indexed geometry's box meets `bbox`."""
    frame = _geom_from_wkt(_box_wkt(bbox))
    if _is_postgis(session):
        return column.op("&&")(frame)
    table = column.table
    rowids = (
        sa.select(sa.column("rowid"))
        .select_from(sa.table("SpatialIndex"))
        .where(
            sa.column("f_table_name") == table.name,
            sa.column("f_geometry_column") == column.name,
            sa.column("search_frame") == frame,
        )
    )
    return table.c.id.in_(rowids)


def _bbox_filter(session: Session, column, bbox):
    frame = _geom_from_wkt(_box_wkt(bbox))
    return sa.and_(_spatial_candidates(session, column, bbox), sa.func.ST_Intersects(column, frame))


def _frame(rows: Sequence[Any], columns: list[str], crs=SRID) -> gpd.GeoDataFrame:
    """Rows whose last field is WKB into a GeoDataFrame."""
    data = pd.DataFrame([tuple(r[:-1]) for r in rows], columns=columns)
    geoms = shapely.from_wkb([bytes(r[-1]) for r in rows]) if rows else []
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)


# ---------------------------------------------------------------- generations


def active_generation(session: Session) -> Generation | None:
    return session.scalars(sa.select(Generation).where(Generation.status == "active")).first()


def require_active_generation(session: Session) -> Generation:
    gen = active_generation(session)
    if gen is None:
        raise NotFound("no active boundary generation: import areas first (wangge import areas)")
    return gen


def get_generation(session: Session, ref: int | str | None) -> Generation:
    """A generation by id or name; None means the active one."""
    if ref is None or ref == "active":
        return require_active_generation(session)
    if isinstance(ref, int) or str(ref).isdigit():
        gen = session.get(Generation, int(ref))
    else:
        gen = session.scalars(sa.select(Generation).where(Generation.name == ref)).first()
    if gen is None:
        raise NotFound(f"no boundary generation {ref!r}", generation=str(ref))
    return gen


def list_generations(session: Session) -> list[Generation]:
    return list(session.scalars(sa.select(Generation).order_by(Generation.id)))


# ---------------------------------------------------------------------- scope
# A caller's reach is filtered here, in SQL, so every front door gets the same rule.
# "Inside an area" follows the parent_code chain (imported codes need not share a
# prefix with their parents), across generations: codes are stable identities.


def codes_under(area_code: str, generation_id: int | None = None) -> sa.Select:
    """SELECT of the area code itself and every code below it (recursive CTE).

    UNION (not UNION ALL) drops the repeats one code has across generations, which
    also stops the recursion on a cycle in bad data.
    """
    top = sa.select(sa.literal(area_code, sa.String).label("code")).cte(
        "scope_codes", recursive=True
    )
    child = sa.select(Area.code).join(top, Area.parent_code == top.c.code)
    if generation_id is not None:
        child = child.where(Area.generation_id == generation_id)
    tree = top.union(child)
    return sa.select(tree.c.code)


def area_within(session: Session, code: str | None, scope_code: str) -> bool:
    """Whether area `code` is `scope_code` or lies below it (in any generation)."""
    if not code:
        return False
    return (
        session.scalar(
            sa.select(sa.literal(1)).where(sa.literal(code, sa.String).in_(codes_under(scope_code)))
        )
        is not None
    )


def actor_reaches_area(session: Session, actor, code: str | None) -> bool:
    """Whether an actor may see data filed under area `code` (a grid or any level)."""
    from gis.cases import scope_kind

    kind = scope_kind(actor)
    if kind == "all":
        return True
    if kind == "area":
        return area_within(session, code, actor.scope)
    if kind == "grids":
        return code is not None and code in actor.grid_codes
    return False


def _scope_filter(actor, *code_columns) -> sa.ColumnElement | None:
    """A WHERE clause keeping rows whose area columns lie in the actor's reach (None: all).

    Roles with no area reach (department, resident, anonymous) match nothing here;
    their own reach (categories, own reports) is handled where it applies.
    """
    from gis.cases import scope_kind

    kind = scope_kind(actor)
    if kind == "all":
        return None
    if kind == "area":
        under = codes_under(actor.scope)
        return sa.or_(*(c.in_(under) for c in code_columns))
    if kind == "grids":
        grids = list(actor.grid_codes)
        return code_columns[0].in_(grids) if grids else sa.false()
    return sa.false()


def check_generation_scope(session: Session, generation: Generation, actor) -> None:
    """Forbidden unless every area of `generation` lies within the actor's area scope."""
    from gis.cases import scope_kind
    from gis.errors import Forbidden

    kind = scope_kind(actor)
    if kind == "all":
        return
    if kind == "area":
        outside = session.scalar(
            sa.select(sa.func.count())
            .select_from(Area)
            .where(
                Area.generation_id == generation.id,
                Area.code.not_in(codes_under(actor.scope, generation.id)),
            )
        )
        if not outside:
            return
        raise Forbidden(
            f"generation {generation.name!r} has {outside} area(s) outside your scope "
            f"{actor.scope!r}",
            scope=actor.scope,
        )
    raise Forbidden(f"a {actor.role} may not switch boundary generations", role=actor.role)


def create_generation(
    session: Session, name: str | None = None, note: str | None = None
) -> Generation:
    """Stage a new, empty generation."""
    name = name or f"gen-{now_utc():%Y%m%d-%H%M%S-%f}"
    if session.scalars(sa.select(Generation.id).where(Generation.name == name)).first():
        raise Conflict(f"a boundary generation named {name!r} already exists", generation=name)
    gen = Generation(name=name, status="staged", note=note, created_at=now_utc())
    session.add(gen)
    session.flush()
    return gen


def activate_generation(session: Session, generation: Generation, actor=None) -> Generation:
    """Switch `generation` on and retire the one that was active (audited).

    With an `actor`, every area of the generation must lie within their scope."""
    if actor is not None:
        check_generation_scope(session, generation, actor)
    if generation.status == "active":
        return generation
    count = session.scalar(
        sa.select(sa.func.count())
        .select_from(Area)
        .where(Area.generation_id == generation.id, Area.level == "grid")
    )
    if not count:
        raise Conflict(
            f"generation {generation.name!r} has no grids and cannot be switched on",
            generation=generation.name,
        )
    session.execute(
        sa.update(Generation).where(Generation.status == "active").values(status="retired")
    )
    session.flush()
    generation.status = "active"
    generation.activated_at = now_utc()
    from gis.db import audit_repo

    audit_repo.record(
        session,
        actor,
        "generation.activate",
        "generation",
        generation.name,
        {"id": generation.id, "grids": count},
    )
    session.flush()
    return generation


def copy_areas(session: Session, source: Generation, target: Generation, levels: Iterable[str]):
    """Copy the areas of some levels from one generation to another (a redraw keeps the rest)."""
    cols = [Area.level, Area.code, Area.name, Area.parent_code, Area.geom]
    src = sa.select(sa.literal(target.id), *cols).where(
        Area.generation_id == source.id, Area.level.in_(list(levels))
    )
    session.execute(
        sa.insert(Area).from_select(
            ["generation_id", "level", "code", "name", "parent_code", "geom"], src
        )
    )


# ---------------------------------------------------------------------- areas


def area_codes(session: Session, generation_id: int) -> dict[str, str]:
    """code -> level of every area in a generation."""
    rows = session.execute(
        sa.select(Area.code, Area.level).where(Area.generation_id == generation_id)
    )
    return dict(rows.all())


def write_areas(session: Session, areas_gdf: gpd.GeoDataFrame, generation: Generation) -> int:
    """Insert validated areas (code, name, level, parent_code, geometry) into a generation.

    Raises Conflict if a code is already in the generation. Parent checks are the
    importer's job (it names the feature); this only writes.
    """
    existing = area_codes(session, generation.id)
    clash = sorted(set(areas_gdf["code"]) & set(existing))
    if clash:
        raise Conflict(
            f"{len(clash)} area code(s) already exist in generation {generation.name!r}: "
            + ", ".join(clash[:5]),
            codes=clash[:20],
        )
    geoms = _to_multipolygons(areas_gdf.geometry.values)
    rows = [
        {
            "generation_id": generation.id,
            "level": lvl,
            "code": code,
            "name": name,
            "parent_code": parent if isinstance(parent, str) and parent else None,
            "wkt": wkt,
        }
        for lvl, code, name, parent, wkt in zip(
            areas_gdf["level"],
            areas_gdf["code"],
            areas_gdf["name"],
            areas_gdf["parent_code"],
            _wkt(geoms),
            strict=True,
        )
    ]
    _insert_with_geoms(session, Area.__table__, rows, {"geom": "wkt"})
    return len(rows)


def _stored_codes(session: Session, table: sa.Table, codes) -> dict[str, int]:
    """code -> id of the rows among `codes` that are already stored.

    Asked in chunks: SQLite caps the number of bound parameters per statement.
    """
    codes = list(dict.fromkeys(codes))
    found: dict[str, int] = {}
    for start in range(0, len(codes), 500):
        chunk = codes[start : start + 500]
        found.update(
            session.execute(
                sa.select(table.c.code, table.c.id).where(table.c.code.in_(chunk))
            ).all()
        )
    return found


def _to_multipolygons(geoms) -> np.ndarray:
    """Polygons and MultiPolygons as MultiPolygons (the areas column's type)."""
    parts, index = shapely.get_parts(np.asarray(geoms), return_index=True)
    return shapely.multipolygons(parts, indices=index)


def _insert_with_geoms(session: Session, table: sa.Table, rows: list[dict], geoms: dict[str, str]):
    """executemany INSERT where geometry columns come from WKT parameters."""
    if not rows:
        return
    values = {col: _geom_from_wkt(sa.bindparam(param)) for col, param in geoms.items()}
    plain = [k for k in rows[0] if k not in geoms.values()]
    values.update({k: sa.bindparam(k) for k in plain})
    stmt = sa.insert(table).values(values)
    for start in range(0, len(rows), WRITE_BATCH):
        session.execute(stmt, rows[start : start + WRITE_BATCH])


def areas_gdf(
    session: Session,
    generation_id: int,
    *,
    level: str | None = None,
    parent_code: str | None = None,
    codes: Sequence[str] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[gpd.GeoDataFrame, int]:
    """Areas of a generation as a GeoDataFrame, with the total before paging."""
    where = [Area.generation_id == generation_id]
    if level:
        where.append(Area.level == level)
    if parent_code:
        where.append(Area.parent_code == parent_code)
    if codes is not None:
        where.append(Area.code.in_(list(codes)))
    if bbox:
        where.append(_bbox_filter(session, Area.__table__.c.geom, bbox))
    total = session.scalar(sa.select(sa.func.count()).select_from(Area).where(*where))
    stmt = (
        sa.select(
            Area.code, Area.name, Area.level, Area.parent_code, sa.func.ST_AsBinary(Area.geom)
        )
        .where(*where)
        .order_by(Area.code)
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    return _frame(rows, ["code", "name", "level", "parent_code"]), total


@dataclass
class Located:
    """The chain of areas covering a point, or the nearest grid when none does."""

    generation: str
    chain: list[dict[str, str]] = field(default_factory=list)
    on_boundary_of: list[str] = field(default_factory=list)
    nearest_grid: dict[str, Any] | None = None

    @property
    def grid_code(self) -> str | None:
        return self.chain[-1]["code"] if self.chain else None


def locate(
    session: Session, lon: float, lat: float, generation: Generation | None = None
) -> Located:
    """The active district/street/community/grid chain covering a point.

    A point on a shared edge or vertex is covered by several grids; it belongs to
    the one with the lowest code (the rule `gis.assign.assign_points` follows).
    """
    generation = generation or require_active_generation(session)
    pt = _geom_from_wkt(f"POINT({lon!r} {lat!r})")
    grid_col = Area.__table__.c.geom
    eps = 1e-9
    rows = (
        session.execute(
            sa.select(Area.code)
            .where(
                Area.generation_id == generation.id,
                Area.level == "grid",
                _spatial_candidates(
                    session, grid_col, (lon - eps, lat - eps, lon + eps, lat + eps)
                ),
                sa.func.ST_Covers(Area.geom, pt),
            )
            .order_by(Area.code)
        )
        .scalars()
        .all()
    )
    result = Located(generation=generation.name)
    if not rows:
        result.nearest_grid = nearest_area(session, lon, lat, generation, level="grid")
        return result
    if len(rows) > 1:
        result.on_boundary_of = list(rows)
    chain = []
    code: str | None = rows[0]
    while code:
        area = session.execute(
            sa.select(Area.level, Area.code, Area.name, Area.parent_code).where(
                Area.generation_id == generation.id, Area.code == code
            )
        ).first()
        if area is None:
            break
        chain.append({"level": area.level, "code": area.code, "name": area.name})
        code = area.parent_code
    result.chain = list(reversed(chain))
    return result


def _level_geoms(
    session: Session, generation_id: int, level: str, box: tuple[float, float, float, float]
) -> tuple[list[str], list[str], np.ndarray]:
    """Codes, names and geometries of a generation's areas of one level meeting `box`.

    What `areas_gdf(..., bbox=box)` selects, without the count and the GeoDataFrame
    (which cost more than the query for the few areas an online lookup needs).
    """
    rows = session.execute(
        sa.select(Area.code, Area.name, sa.func.ST_AsBinary(Area.geom)).where(
            Area.generation_id == generation_id,
            Area.level == level,
            _bbox_filter(session, Area.__table__.c.geom, box),
        )
    ).all()
    geoms = shapely.from_wkb([bytes(r[2]) for r in rows]) if rows else np.empty(0, dtype=object)
    return [r[0] for r in rows], [r[1] for r in rows], geoms


def _nearest_of(
    lon: float, lat: float, codes: list[str], names: list[str], geoms: np.ndarray
) -> dict[str, Any]:
    """The nearest of some areas (lowest code on a tie) in the local plane at the point."""
    m_lon, m_lat = metres_per_degree(lat)

    def to_local(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([(xy[:, 0] - lon) * m_lon, (xy[:, 1] - lat) * m_lat])

    dist = shapely.distance(shapely.transform(geoms, to_local), shapely.Point(0, 0))
    i = int(np.lexsort((np.asarray(codes, dtype=str), dist))[0])
    return {"code": codes[i], "name": names[i], "distance_m": round(float(dist[i]), 2)}


def _box_around(lon: float, lat: float, metres: float) -> tuple[float, float, float, float]:
    """A box holding every point within `metres` of (lon, lat) in the local plane."""
    m_lon, m_lat = metres_per_degree(lat)
    half_lon, half_lat = metres / m_lon * 1.01 + 1e-7, metres / m_lat * 1.01 + 1e-7
    return (lon - half_lon, lat - half_lat, lon + half_lon, lat + half_lat)


def nearest_area(
    session: Session, lon: float, lat: float, generation: Generation, level: str = "grid"
) -> dict[str, Any] | None:
    """The area of a level nearest to a point, with its distance in metres.

    Candidates come from the spatial index in a growing box; distances are measured
    in an equirectangular plane centred on the point (WGS84 metres per degree there),
    which is within 0.1% of the geodesic at the few kilometres this is asked over and
    costs nothing to set up, unlike a pyproj projection per request. Both stores
    give the same answer.
    """
    radius_deg = 0.01
    for _ in range(12):
        box = (lon - radius_deg, lat - radius_deg, lon + radius_deg, lat + radius_deg)
        codes, names, geoms = _level_geoms(session, generation.id, level, box)
        if codes:
            break
        radius_deg *= 4
    else:
        return None
    # Anything nearer than the best candidate lies inside a box of that radius.
    best = _nearest_of(lon, lat, codes, names, geoms)
    box = _box_around(lon, lat, best["distance_m"] + 0.005)
    return _nearest_of(lon, lat, *_level_geoms(session, generation.id, level, box))


def nearest_area_within(
    session: Session,
    lon: float,
    lat: float,
    generation_id: int,
    metres: float,
    level: str = "grid",
) -> dict[str, Any] | None:
    """`nearest_area` when its distance is at most `metres`, else None, in one query.

    The same answer (the nearest by distance, then code; distance rounded to the cm as
    there), since every area that near meets the box searched.
    """
    codes, names, geoms = _level_geoms(session, generation_id, level, _box_around(lon, lat, metres))
    if not codes:
        return None
    best = _nearest_of(lon, lat, codes, names, geoms)
    return best if best["distance_m"] <= metres else None


# ------------------------------------------------------------------ buildings


def write_buildings(session: Session, buildings_gdf: gpd.GeoDataFrame) -> dict[str, int]:
    """Insert new buildings and update those whose code is already stored.

    Buildings without a grid_code are placed in the active generation's grid that
    covers a point inside their footprint (lowest code on shared edges).
    """
    gdf = buildings_gdf.copy()
    points = shapely.point_on_surface(gdf.geometry.values)
    gen = active_generation(session)
    if gen is not None and (gdf.get("grid_code") is None or gdf["grid_code"].isna().any()):
        grids, _ = areas_gdf(
            session, gen.id, level="grid", bbox=tuple(shapely.total_bounds(points))
        )
        assigned = assign_points(points, grids.geometry.values, grids["code"].to_numpy())
        parent = dict(zip(grids["code"], grids["parent_code"], strict=True))
        if "grid_code" not in gdf:
            gdf["grid_code"] = None
        missing = gdf["grid_code"].isna().to_numpy()
        gdf.loc[missing, "grid_code"] = assigned[missing]
        if "community_code" not in gdf:
            gdf["community_code"] = None
        missing_c = gdf["community_code"].isna().to_numpy()
        gdf.loc[missing_c, "community_code"] = [
            parent.get(c) for c in gdf.loc[missing_c, "grid_code"]
        ]
    existing = _stored_codes(session, Building.__table__, gdf["code"])
    cols = [
        "code",
        "name",
        "address",
        "households",
        "population",
        "floors",
        "grid_code",
        "community_code",
    ]
    rows = []
    for rec, wkt, pwkt in zip(
        gdf.reindex(columns=cols).itertuples(index=False),
        _wkt(gdf.geometry.values),
        _wkt(points),
        strict=True,
    ):
        row = {c: _plain(v) for c, v in zip(cols, rec, strict=True)}
        row["households"] = row["households"] or 0
        row["population"] = row["population"] or 0
        row["wkt"], row["pwkt"] = wkt, pwkt
        rows.append(row)
    new = [r for r in rows if r["code"] not in existing]
    old = [r for r in rows if r["code"] in existing]
    _insert_with_geoms(session, Building.__table__, new, {"geom": "wkt", "point": "pwkt"})
    if old:
        table = Building.__table__
        stmt = (
            sa.update(table)
            .where(table.c.code == sa.bindparam("b_code"))
            .values(
                {c: sa.bindparam(c) for c in cols if c != "code"}
                | {
                    "geom": _geom_from_wkt(sa.bindparam("wkt")),
                    "point": _geom_from_wkt(sa.bindparam("pwkt")),
                }
            )
        )
        for r in old:
            r["b_code"] = r.pop("code")
        session.execute(stmt, old)
    return {"inserted": len(new), "updated": len(old)}


def _plain(value):
    """numpy / pandas scalars to plain Python, NaN to None."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime(warn=False)
    return value


def buildings_gdf(
    session: Session,
    *,
    grid_code: str | None = None,
    community_code: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int | None = None,
    offset: int = 0,
    actor=None,
) -> tuple[gpd.GeoDataFrame, int]:
    """Buildings matching the filters; with an `actor`, only those within their reach."""
    table = Building.__table__
    where = []
    if actor is not None:
        reach = _scope_filter(actor, table.c.grid_code, table.c.community_code)
        if reach is not None:
            where.append(reach)
    if grid_code:
        where.append(table.c.grid_code == grid_code)
    if community_code:
        where.append(table.c.community_code == community_code)
    if bbox:
        where.append(_bbox_filter(session, table.c.point, bbox))
    cols = [
        "code",
        "name",
        "address",
        "households",
        "population",
        "floors",
        "grid_code",
        "community_code",
    ]
    total = session.scalar(sa.select(sa.func.count()).select_from(table).where(*where))
    stmt = (
        sa.select(*[table.c[c] for c in cols], sa.func.ST_AsBinary(table.c.geom))
        .where(*where)
        .order_by(table.c.code)
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return _frame(session.execute(stmt).all(), cols), total


# ------------------------------------------------------------------- stations


STATION_COLUMNS = [
    "code",
    "name",
    "kind",
    "address",
    "services",
    "opening_hours",
    "capacity",
    "phone",
]


def write_stations(session: Session, stations_gdf: gpd.GeoDataFrame) -> dict[str, int]:
    """Insert stations; a code already stored replaces that station."""
    ids = list(_stored_codes(session, Station.__table__, stations_gdf["code"]).values())
    for start in range(0, len(ids), 500):
        session.execute(sa.delete(Station).where(Station.id.in_(ids[start : start + 500])))
    removed = len(ids)
    rows = []
    for rec, wkt in zip(
        stations_gdf.reindex(columns=STATION_COLUMNS).itertuples(index=False),
        _wkt(stations_gdf.geometry.values),
        strict=True,
    ):
        row = {c: _plain(v) for c, v in zip(STATION_COLUMNS, rec, strict=True)}
        services = row["services"]
        if isinstance(services, str):
            services = [s.strip() for s in services.replace("；", ";").split(";") if s.strip()]
        row["services"] = services or []
        row["wkt"] = wkt
        rows.append(row)
    _insert_with_geoms(session, Station.__table__, rows, {"geom": "wkt"})
    return {"inserted": len(rows) - removed, "updated": removed}


def stations_gdf(
    session: Session,
    *,
    kind: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[gpd.GeoDataFrame, int]:
    table = Station.__table__
    where = []
    if kind:
        where.append(table.c.kind == kind)
    if bbox:
        where.append(_bbox_filter(session, table.c.geom, bbox))
    total = session.scalar(sa.select(sa.func.count()).select_from(table).where(*where))
    stmt = (
        sa.select(*[table.c[c] for c in STATION_COLUMNS], sa.func.ST_AsBinary(table.c.geom))
        .where(*where)
        .order_by(table.c.code)
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    frame = _frame(session.execute(stmt).all(), STATION_COLUMNS)
    if len(frame):
        frame["services"] = [
            s if isinstance(s, list) else json.loads(s or "[]") for s in frame["services"]
        ]
    return frame, total


# -------------------------------------------------------------------- workers


def write_workers(session: Session, workers_df: pd.DataFrame) -> dict[str, int]:
    """Insert or replace workers; `grid_codes` is a list or a ';'-separated string."""
    inserted = updated = 0
    ids = _stored_codes(session, Worker.__table__, workers_df["code"])
    id_list = list(ids.values())
    existing = {
        w.code: w
        for start in range(0, len(id_list), 500)
        for w in session.scalars(
            sa.select(Worker).where(Worker.id.in_(id_list[start : start + 500]))
        )
    }
    for rec in workers_df.to_dict("records"):
        grids = rec.get("grid_codes") or []
        if isinstance(grids, str):
            grids = [g.strip() for g in grids.split(";") if g.strip()]
        worker = existing.get(rec["code"])
        if worker is None:
            worker = Worker(code=rec["code"])
            session.add(worker)
            inserted += 1
        else:
            updated += 1
        worker.name = rec["name"]
        worker.phone = _plain(rec.get("phone"))
        worker.role = rec.get("role") or "grid_worker"
        worker.grids = [WorkerGrid(grid_code=g) for g in dict.fromkeys(grids)]
    session.flush()
    return {"inserted": inserted, "updated": updated}


def list_workers(
    session: Session,
    *,
    grid_code: str | None = None,
    role: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    actor=None,
) -> tuple[list[dict[str, Any]], int]:
    """Workers matching the filters; with an `actor`, a worker sees only themself and
    area roles the workers owning a grid in their area."""
    stmt = sa.select(Worker)
    if actor is not None:
        if actor.role == "worker":
            stmt = stmt.where(Worker.code == (actor.worker_code or ""))
        else:
            reach = _scope_filter(actor, WorkerGrid.grid_code)
            if reach is not None:
                stmt = stmt.where(Worker.id.in_(sa.select(WorkerGrid.worker_id).where(reach)))
    if grid_code:
        stmt = stmt.where(
            Worker.id.in_(sa.select(WorkerGrid.worker_id).where(WorkerGrid.grid_code == grid_code))
        )
    if role:
        stmt = stmt.where(Worker.role == role)
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))
    stmt = stmt.order_by(Worker.code).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    workers = [
        {
            "code": w.code,
            "name": w.name,
            "phone": w.phone,
            "role": w.role,
            "active": w.active,
            "grid_codes": [g.grid_code for g in w.grids],
        }
        for w in session.scalars(stmt)
    ]
    return workers, total


# ----------------------------------------------------------------- categories


def default_category_tree() -> dict[str, Any]:
    return json.loads(resources.files("data").joinpath("categories.json").read_text("utf-8"))


def seed_categories(session: Session, tree: dict[str, Any] | None = None) -> int:
    """Load the category tree if the store has none yet; returns how many were added."""
    if session.scalar(sa.select(sa.func.count()).select_from(Category)):
        return 0
    tree = tree or default_category_tree()
    rows = []
    for cls in tree["classes"]:
        rows.append(
            Category(
                code=cls["code"],
                parent_code=None,
                level="class",
                name=cls["name"],
                name_en=cls.get("name_en"),
            )
        )
        for sub in cls["subclasses"]:
            rows.append(
                Category(
                    code=sub["code"],
                    parent_code=cls["code"],
                    level="subclass",
                    name=sub["name"],
                    name_en=sub.get("name_en"),
                    deadline_h=sub["deadline_h"],
                    workload_weight=sub["workload_weight"],
                    department=sub.get("department"),
                )
            )
    session.add_all(rows)
    session.flush()
    return len(rows)


def categories(session: Session) -> list[Category]:
    return list(session.scalars(sa.select(Category).order_by(Category.code)))


# ---------------------------------------------------------------------- cases


CASE_COLUMNS = [
    "code",
    "category_code",
    "description",
    "source",
    "status",
    "grid_code",
    "community_code",
    "street_code",
    "route_flag",
    "reported_at",
    "deadline_at",
    "resolved_at",
    "closed_at",
    "rating",
]


def write_cases(session: Session, cases_gdf: gpd.GeoDataFrame) -> dict[str, int]:
    """Insert cases, routing each point to the active generation's grid.

    Rows may carry status and timestamps (history from a file or the demo);
    otherwise a case is 'reported' with the deadline its category sets.
    """
    gen = require_active_generation(session)
    known = {c.code: c for c in categories(session) if c.level == "subclass"}
    clash = sorted(_stored_codes(session, Case.__table__, cases_gdf["code"]))
    if clash:
        raise Conflict(
            f"{len(clash)} case code(s) already stored: " + ", ".join(clash[:5]), codes=clash[:20]
        )
    gdf = cases_gdf.copy()
    grids, _ = areas_gdf(session, gen.id, level="grid")
    gdf["grid_code"] = assign_points(
        gdf.geometry.values, grids.geometry.values, grids["code"].to_numpy()
    )
    gdf["route_flag"] = np.where(gdf["grid_code"].isna(), "unrouted", "inside")
    # The area chain, so cases filter by community and street (see cases_repo).
    parents = dict(
        session.execute(
            sa.select(Area.code, Area.parent_code).where(Area.generation_id == gen.id)
        ).all()
    )
    gdf["community_code"] = gdf["grid_code"].map(parents)
    gdf["street_code"] = gdf["community_code"].map(parents)
    reported = pd.to_datetime(gdf["reported_at"], utc=True)
    gdf["reported_at"] = reported
    if "status" not in gdf:
        gdf["status"] = "reported"
    deadline_h = gdf["category_code"].map(lambda c: known[c].deadline_h if c in known else None)
    gdf["deadline_at"] = reported + pd.to_timedelta(deadline_h.astype(float), unit="h")
    for col in ("resolved_at", "closed_at", "rating", "description"):
        if col not in gdf:
            gdf[col] = None
    owner = dict(session.execute(sa.select(WorkerGrid.grid_code, WorkerGrid.worker_id)).all())
    rows = []
    for rec, wkt in zip(
        gdf.reindex(columns=CASE_COLUMNS).itertuples(index=False),
        _wkt(gdf.geometry.values),
        strict=True,
    ):
        row = {c: _plain(v) for c, v in zip(CASE_COLUMNS, rec, strict=True)}
        row["generation_id"] = gen.id
        row["worker_id"] = owner.get(row["grid_code"])
        row["escalation_level"] = 0
        row["updated_at"] = row["closed_at"] or row["resolved_at"] or row["reported_at"]
        row["wkt"] = wkt
        rows.append(row)
    _insert_with_geoms(session, Case.__table__, rows, {"geom": "wkt"})
    return {"inserted": len(rows), "unrouted": int((gdf["route_flag"] == "unrouted").sum())}


def count_rows(session: Session) -> dict[str, int]:
    """How many rows each main table holds (for status pages and tests)."""
    out = {}
    for model in (Generation, Area, Building, Station, Worker, Category, Case):
        out[model.__tablename__] = session.scalar(sa.select(sa.func.count()).select_from(model))
    return out


def require_level(level: str) -> str:
    if level not in LEVELS:
        raise InvalidInput(
            f"unknown level {level!r}; use one of {', '.join(LEVELS)}", field="level"
        )
    return level
