"""Case SQL: intake with online routing, queries, workflow steps, escalation and re-routing.

The rules live in `gis.cases` (pure); this module loads a case, asks the rules what a
step may do, and records it with an event. Callers own the transaction
(`with session.begin():`), so intake and each step are all or nothing.

Routing online and in bulk follow one rule set (see `gis.routing`): covered by one
grid → ``inside``; by several (a shared edge or vertex) → the lowest code,
``edge_rule``; by none but within `near_outside_m` → the nearest grid,
``near_outside``; farther → no grid, ``unrouted`` (a dispatcher's queue; never dropped).
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import shapely
import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from gis import cases as rules
from gis.cases import Actor
from gis.db import audit_repo, repo
from gis.db.models import (
    Area,
    AuditEntry,
    Base,
    Case,
    CaseEvent,
    Category,
    Generation,
    Worker,
    WorkerGrid,
)
from gis.domain import CASE_SOURCES
from gis.errors import InvalidInput, NotFound

EARTH_RADIUS_M = 6_371_008.8
# Statuses whose worker follows the grid when a re-route moves the case: nobody has
# taken it in hand yet.
_UNCLAIMED = ("reported", "returned")

#: Who filed a case, for cases filed by a logged-in user (migration 0006): residents
#: read only their own reports. Kept apart from `cases` so the public row holds no
#: identity, and anonymous reports have no row here.
case_reporters = sa.Table(
    "case_reporters",
    Base.metadata,
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, index=True),
)


def case_scope(actor: Actor | None) -> sa.ColumnElement | None:
    """A WHERE clause on `cases` keeping what `actor` may see (None: everything).

    Area roles see cases routed anywhere under their area; workers their grids and the
    cases assigned to them; departments the cases of their categories; residents the
    cases they filed; anonymous callers none (the public Open311 feed is separate).
    """
    if actor is None:
        return None
    kind = rules.scope_kind(actor)
    if kind == "all":
        return None
    if kind == "area":
        under = repo.codes_under(actor.scope)
        return sa.or_(
            Case.grid_code.in_(under), Case.community_code.in_(under), Case.street_code.in_(under)
        )
    if kind == "grids":
        mine = Case.worker_id.in_(
            sa.select(Worker.id).where(Worker.code == (actor.worker_code or ""))
        )
        grids = list(actor.grid_codes)
        return sa.or_(Case.grid_code.in_(grids), mine) if grids else mine
    if kind == "categories":
        return Case.category_code.in_(
            sa.select(Category.code).where(Category.department == actor.scope)
        )
    if kind == "own":
        return Case.id.in_(
            sa.select(case_reporters.c.case_id).where(case_reporters.c.username == actor.name)
        )
    return sa.false()


def _check_reach(session: Session, case: Case, actor: Actor | None, ref) -> None:
    """NotFound, worded as for a missing case, when the case is outside the actor's reach:
    a caller learns nothing about cases they may not see."""
    reach = case_scope(actor)
    if reach is None:
        return
    if session.scalar(sa.select(Case.id).where(Case.id == case.id, reach)) is None:
        raise NotFound(f"no case {ref!r}", case=str(ref))


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetimes in and out: SpatiaLite hands back naive (UTC) wall clocks."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    return _utc(now) if now is not None else datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat() if value else None


# ------------------------------------------------------------------- routing


def area_chain(session: Session, generation_id: int, grid_code: str) -> dict[str, str | None]:
    """level -> code for the grid and every area above it in one generation."""
    chain: dict[str, str | None] = {"grid": None, "community": None, "street": None}
    code: str | None = grid_code
    while code:
        row = session.execute(
            sa.select(Area.level, Area.parent_code).where(
                Area.generation_id == generation_id, Area.code == code
            )
        ).first()
        if row is None:
            break
        chain[row.level] = code
        code = row.parent_code
    return chain


def route_point(
    session: Session,
    lon: float,
    lat: float,
    generation: Generation,
    near_outside_m: float = rules.NEAR_OUTSIDE_M,
) -> tuple[str | None, str]:
    """(grid code, flag) for one point by the rules in the module doc, via indexed SQL."""
    located = repo.locate(session, lon, lat, generation)
    if located.grid_code is not None:
        return located.grid_code, "edge_rule" if located.on_boundary_of else "inside"
    nearest = located.nearest_grid
    if nearest is not None and nearest["distance_m"] <= near_outside_m:
        return nearest["code"], "near_outside"
    return None, "unrouted"


def grid_worker(session: Session, grid_code: str | None) -> Worker | None:
    """The active worker owning a grid (lowest code if several share it)."""
    if grid_code is None:
        return None
    return session.scalars(
        sa.select(Worker)
        .join(WorkerGrid, WorkerGrid.worker_id == Worker.id)
        .where(WorkerGrid.grid_code == grid_code, Worker.active.is_(True))
        .order_by(Worker.code)
        .limit(1)
    ).first()


def worker_grid_codes(session: Session, worker_code: str) -> tuple[str, ...]:
    """The grids an active worker owns (empty if there is no such worker)."""
    return tuple(
        session.scalars(
            sa.select(WorkerGrid.grid_code)
            .join(Worker, Worker.id == WorkerGrid.worker_id)
            .where(Worker.code == worker_code, Worker.active.is_(True))
            .order_by(WorkerGrid.grid_code)
        )
    )


def case_chain(session: Session, case: dict[str, Any]) -> list[dict[str, str]]:
    """District → street → community → grid (code, name) a case was routed to."""
    if not case.get("grid_code") or case.get("generation_id") is None:
        return []
    chain = []
    code: str | None = case["grid_code"]
    while code:
        row = session.execute(
            sa.select(Area.level, Area.code, Area.name, Area.parent_code).where(
                Area.generation_id == case["generation_id"], Area.code == code
            )
        ).first()
        if row is None:
            break
        chain.append({"level": row.level, "code": row.code, "name": row.name})
        code = row.parent_code
    return chain[::-1]


# -------------------------------------------------------------------- intake


def _check_fields(lon, lat, description, source) -> None:
    """The intake checks that need no database; errors name the field."""
    for name, value, top in (("lon", lon, 180), ("lat", lat, 90)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{name} must be a number", field=name)
        if not math.isfinite(value) or not -top <= value <= top:
            raise InvalidInput(f"{name} must be a number from {-top} to {top}", field=name)
    if description is not None and len(description) > rules.DESCRIPTION_MAX:
        raise InvalidInput(
            f"description must be at most {rules.DESCRIPTION_MAX} characters "
            f"(got {len(description)})",
            field="description",
        )
    if source not in CASE_SOURCES:
        raise InvalidInput(
            f"source must be one of {', '.join(CASE_SOURCES)} (got {source!r})", field="source"
        )


def _unknown_category(category_code) -> InvalidInput:
    return InvalidInput(
        f"unknown category {category_code!r}: use a subclass code from /api/v1/categories",
        field="category",
    )


# Areas above a grid that the intake statement joins in one go (community, street,
# district); a deeper chain is finished by walking, as `area_chain` does.
_CHAIN_JOINS = 3
_intake_statements: dict[str, sa.Select] = {}


def _intake_statement(dialect: str) -> sa.Select:
    """One statement for everything intake reads, built once per dialect.

    For the point `:pt` (WKT) and the category `:category` it answers one row: the
    category, the active generation, the lowest grid code covering the point with the
    number of grids covering it (more than one: a shared edge or vertex), that grid's
    chain of areas and the grid's active worker (lowest worker code). The grid comes
    from the spatial index (GiST `&&` in PostGIS, SpatialIndex in SpatiaLite) and
    `ST_Covers`, as in `repo.locate`.
    """
    stmt = _intake_statements.get(dialect)
    if stmt is not None:
        return stmt
    areas, gens = Area.__table__, Generation.__table__
    cats, workers, owners = Category.__table__, Worker.__table__, WorkerGrid.__table__
    pt = sa.func.ST_GeomFromText(sa.bindparam("pt", type_=sa.String), repo.SRID)
    active = sa.select(gens.c.id, gens.c.name).where(gens.c.status == "active").order_by(gens.c.id)
    active_id = active.with_only_columns(gens.c.id).limit(1).scalar_subquery()
    if dialect == "postgresql":
        candidates = areas.c.geom.op("&&")(pt)
    else:
        frame = sa.func.ST_GeomFromText(sa.bindparam("frame", type_=sa.String), repo.SRID)
        candidates = areas.c.id.in_(
            sa.select(sa.column("rowid"))
            .select_from(sa.table("SpatialIndex"))
            .where(
                sa.column("f_table_name") == areas.name,
                sa.column("f_geometry_column") == "geom",
                sa.column("search_frame") == frame,
            )
        )
    hit = (
        sa.select(sa.func.min(areas.c.code).label("code"), sa.func.count().label("n"))
        .where(
            areas.c.generation_id == active_id,
            areas.c.level == "grid",
            candidates,
            sa.func.ST_Covers(areas.c.geom, pt),
        )
        .subquery("hit")
    )
    gen = active.limit(1).subquery("gen")
    one = sa.select(sa.literal(1).label("one")).subquery("one")
    owner_w = workers.alias("ow")
    owner_id = (
        sa.select(owners.c.worker_id)
        .join(owner_w, owner_w.c.id == owners.c.worker_id)
        .where(owners.c.grid_code == hit.c.code, owner_w.c.active.is_(True))
        .order_by(owner_w.c.code)
        .limit(1)
        .scalar_subquery()
    )
    w = workers.alias("w")
    cat = cats.alias("cat")
    joined = (
        one.outerjoin(cat, cat.c.code == sa.bindparam("category", type_=sa.String))
        .outerjoin(gen, sa.true())
        .outerjoin(hit, sa.true())
    )
    chain = [areas.alias("a0")]
    joined = joined.outerjoin(
        chain[0], sa.and_(chain[0].c.generation_id == gen.c.id, chain[0].c.code == hit.c.code)
    )
    for i in range(1, _CHAIN_JOINS + 1):
        a = areas.alias(f"a{i}")
        joined = joined.outerjoin(
            a, sa.and_(a.c.generation_id == gen.c.id, a.c.code == chain[-1].c.parent_code)
        )
        chain.append(a)
    joined = joined.outerjoin(w, w.c.id == owner_id)
    columns = [
        cat.c.code.label("cat_code"),
        cat.c.level.label("cat_level"),
        cat.c.name.label("cat_name"),
        cat.c.department.label("cat_department"),
        cat.c.deadline_h.label("cat_deadline_h"),
        gen.c.id.label("gen_id"),
        gen.c.name.label("gen_name"),
        hit.c.code.label("grid"),
        hit.c.n.label("covering"),
        w.c.id.label("worker_id"),
        w.c.code.label("worker_code"),
        w.c.name.label("worker_name"),
    ]
    for i, a in enumerate(chain):
        columns += [
            a.c.level.label(f"a{i}_level"),
            a.c.code.label(f"a{i}_code"),
            a.c.name.label(f"a{i}_name"),
            a.c.parent_code.label(f"a{i}_parent"),
        ]
    if dialect == "postgresql":
        # The possible duplicates ride along as arrays: one round trip fewer.
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        dups = _duplicates_statement(dialect, exclude=False).cte("dups")
        for name, column in zip(_DUPLICATE_FIELDS, dups.c, strict=True):
            agg = sa.func.array_agg(aggregate_order_by(column, dups.c.id))
            columns.append(sa.select(agg).scalar_subquery().label(f"dup_{name}"))
    stmt = sa.select(*columns).select_from(joined)
    _intake_statements[dialect] = stmt
    return stmt


def _chain_of(session: Session, generation_id: int, row) -> list[dict[str, str]]:
    """The grid's chain, grid first, from the intake row; walked on if deeper."""
    chain: list[dict[str, str]] = []
    parent = None
    for i in range(_CHAIN_JOINS + 1):
        code = row._mapping[f"a{i}_code"]
        if code is None:
            return chain
        chain.append({"level": row._mapping[f"a{i}_level"], "code": code,
                      "name": row._mapping[f"a{i}_name"]})  # fmt: skip
        parent = row._mapping[f"a{i}_parent"]
        if parent is None:
            return chain
    return chain + _walk_chain(session, generation_id, parent)


def _walk_chain(session: Session, generation_id: int, code: str | None) -> list[dict[str, str]]:
    """The areas from `code` upward, one query per level (the rare and the slow path)."""
    chain = []
    while code:
        row = session.execute(
            sa.select(Area.level, Area.code, Area.name, Area.parent_code).where(
                Area.generation_id == generation_id, Area.code == code
            )
        ).first()
        if row is None:
            break
        chain.append({"level": row.level, "code": row.code, "name": row.name})
        code = row.parent_code
    return chain


_ROUTE_NOTES = {
    "inside": "routed to grid {}",
    "edge_rule": "on a shared boundary: routed to the lowest-coded grid {}",
    "near_outside": "outside every grid: routed to the nearest grid {}",
    "unrouted": "outside every grid and too far from any: waiting for a dispatcher",
}

_CASE_INSERT_PG = sa.text(
    """
    WITH n AS (SELECT nextval(pg_get_serial_sequence('cases', 'id')) AS id),
    c AS (
        INSERT INTO cases (
            id, code, category_code, description, source, reporter_name, reporter_phone,
            reporter_email, photo_url, status, grid_code, community_code, street_code,
            generation_id, route_flag, worker_id, escalation_level, reported_at,
            deadline_at, updated_at, geom
        ) VALUES (
            (SELECT id FROM n),
            (SELECT :code_prefix || CASE WHEN id < 1000000 THEN lpad(CAST(id AS text), 6, '0')
                                         ELSE CAST(id AS text) END FROM n),
            :category_code, :description, :source, :reporter_name, :reporter_phone,
            :reporter_email, :photo_url, :status, :grid_code, :community_code, :street_code,
            :generation_id, :route_flag, :worker_id, 0, :reported_at,
            :deadline_at, :updated_at, ST_GeomFromText(:wkt, 4326)
        )
        RETURNING id, code
    ),
    a AS (
        INSERT INTO audit_log (at, actor, role, action, object_type, object_id, detail)
        SELECT :reported_at, :audit_actor, :audit_role, 'case.report', 'case', code,
               CAST(:audit_detail AS json)
        FROM c
        RETURNING id
    ),
    r AS (
        INSERT INTO case_reporters (case_id, username)
        SELECT id, CAST(:reporter_user AS text) FROM c
        WHERE CAST(:reporter_user AS text) IS NOT NULL
        RETURNING case_id
    )
    INSERT INTO case_events (case_id, at, actor, action, from_status, to_status, note)
    VALUES ((SELECT id FROM c), :reported_at, :actor, 'report', NULL, 'reported', :note)
    RETURNING case_id
    """
)


def _insert_case(
    session: Session,
    values: dict[str, Any],
    actor: str,
    note: str,
    audit: dict[str, Any],
    reporter_user: str | None,
) -> int:
    """Write the case, its 'report' event, its audit row and (for a logged-in reporter)
    the reporter link; the case's id (its code follows from it).

    PostGIS: one statement (the id from the sequence, then every row). SpatiaLite:
    insert, set the code from the new id, insert the rest.
    """
    reported_at = values["reported_at"]
    code_prefix = f"C{reported_at:%Y%m%d}-"
    if repo._is_postgis(session):
        return session.execute(
            _CASE_INSERT_PG,
            {
                **values,
                "code_prefix": code_prefix,
                "actor": actor,
                "note": note,
                "audit_actor": audit["actor"],
                "audit_role": audit["role"],
                "audit_detail": json.dumps(audit["detail"]),
                "reporter_user": reporter_user,
            },
        ).scalar_one()
    cases, events = Case.__table__, CaseEvent.__table__
    row = dict(values)
    wkt = row.pop("wkt")
    # A placeholder until the id is known; the public code is derived from the id.
    row.update(code=f"new-{uuid.uuid4().hex}", escalation_level=0,
               geom=repo._geom_from_wkt(wkt))  # fmt: skip
    case_id = session.execute(sa.insert(cases).values(row)).inserted_primary_key[0]
    session.execute(
        sa.update(cases).where(cases.c.id == case_id).values(code=f"{code_prefix}{case_id:06d}")
    )
    session.execute(
        sa.insert(events).values(
            case_id=case_id,
            at=reported_at,
            actor=actor,
            action="report",
            from_status=None,
            to_status="reported",
            note=note,
        )  # fmt: skip
    )
    session.execute(
        sa.insert(AuditEntry.__table__).values(
            at=reported_at,
            actor=audit["actor"],
            role=audit["role"],
            action="case.report",
            object_type="case",
            object_id=f"{code_prefix}{case_id:06d}",
            detail=audit["detail"],
        )
    )
    if reporter_user is not None:
        session.execute(sa.insert(case_reporters).values(case_id=case_id, username=reporter_user))
    return case_id


def intake_without_transaction(session: Session) -> None:
    """Let a fresh session that only files one case skip BEGIN and COMMIT (PostGIS).

    `create_case` only reads until its last statement, which writes the case and its
    'report' event together on PostGIS, so that statement is the whole transaction:
    no half-routed case can be left behind. Call before anything else in the session;
    SpatiaLite (and everything else) keeps the caller's transaction.
    """
    if repo._is_postgis(session):
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def create_case(
    session: Session,
    *,
    category_code: str,
    lon: float,
    lat: float,
    description: str | None,
    source: str,
    reporter_name: str | None = None,
    reporter_phone: str | None = None,
    reporter_email: str | None = None,
    photo_url: str | None = None,
    actor: Actor | None = None,
    reporter_user: str | None = None,
    now: datetime | None = None,
    near_outside_m: float = rules.NEAR_OUTSIDE_M,
    duplicate_radius_m: float = rules.DUPLICATE_RADIUS_M,
    duplicate_window_days: float = rules.DUPLICATE_WINDOW_DAYS,
    with_chain: bool = False,
) -> dict[str, Any]:
    """File a case at a point (EPSG:4326): route it, assign the worker, set the deadline.

    Returns the case dict (as `get_case` gives it) plus `possible_duplicates` (open
    cases of the same category nearby and recent) so a resident can follow one of
    those instead; with `with_chain`, also the grid's `chain` (as `case_chain`).
    `reporter_user` (a logged-in user's name) lets that user read the case later; the
    intake is audited in the same transaction.

    Online cost: one statement reads the category, the active generation, the grid
    covering the point with its chain of areas and its worker; one finds the possible
    duplicates; one (PostGIS) writes the case and its event. The answer is built from
    the values written, not read back. Points outside every grid take the slower
    nearest-grid path.
    """
    now = _now(now)
    _check_fields(lon, lat, description, source)
    if not category_code:
        raise _unknown_category(category_code)
    lon, lat = float(lon), float(lat)
    # Pending ORM changes first: the statements below are Core and do not autoflush.
    session.flush()
    dialect = session.get_bind().dialect.name
    params = {"pt": f"POINT({lon!r} {lat!r})", "category": str(category_code)}
    if dialect == "postgresql":
        params |= _duplicate_params(
            lon, lat, now, duplicate_radius_m, duplicate_window_days, dialect
        )
    else:
        eps = 1e-9
        params["frame"] = shapely.box(lon - eps, lat - eps, lon + eps, lat + eps).wkt
    row = session.execute(_intake_statement(dialect), params).one()
    if row.cat_code is None or row.cat_level != "subclass":
        raise _unknown_category(category_code)
    if row.gen_id is None:
        raise NotFound("no active boundary generation: import areas first (wangge import areas)")
    generation_id = row.gen_id
    worker = (row.worker_id, row.worker_code, row.worker_name)
    if row.grid is not None:
        grid_code = row.grid
        flag = "edge_rule" if row.covering > 1 else "inside"
        chain = _chain_of(session, generation_id, row)
    else:
        grid_code, flag = None, "unrouted"
        # Only a grid within near_outside_m matters (as in `route_point`): one query.
        nearest = repo.nearest_area_within(session, lon, lat, generation_id, near_outside_m)
        if nearest is not None:
            grid_code, flag = nearest["code"], "near_outside"
        chain = _walk_chain(session, generation_id, grid_code)
        owner = grid_worker(session, grid_code)
        worker = (owner.id, owner.code, owner.name) if owner else (None, None, None)
    levels: dict[str, str] = {}
    for area in chain:  # grid first: a higher area of the same level would win, as before
        levels[area["level"]] = area["code"]
    if dialect == "postgresql":
        found = row._mapping
        rows = list(zip(*(found[f"dup_{name}"] or () for name in _DUPLICATE_FIELDS), strict=True))
        duplicates = _nearest_duplicates(lon, lat, rows, duplicate_radius_m, rules.DUPLICATES_SHOWN)
    else:
        duplicates = find_duplicates(
            session,
            category_code=row.cat_code,
            lon=lon,
            lat=lat,
            now=now,
            radius_m=duplicate_radius_m,
            window_days=duplicate_window_days,
        )
    deadline = rules.deadline_after(now, row.cat_deadline_h)
    values = {
        "category_code": row.cat_code,
        "description": description,
        "source": source,
        "reporter_name": reporter_name,
        "reporter_phone": reporter_phone,
        "reporter_email": reporter_email,
        "photo_url": photo_url,
        "status": "reported",
        "grid_code": grid_code,
        "community_code": levels.get("community"),
        "street_code": levels.get("street"),
        "generation_id": generation_id,
        "route_flag": flag,
        "worker_id": worker[0],
        "reported_at": now,
        "deadline_at": deadline,
        "updated_at": now,
        "wkt": f"POINT({lon!r} {lat!r})",
    }
    note = _ROUTE_NOTES[flag].format(grid_code)
    audit = {
        "actor": actor.label if actor else source,
        "role": actor.role if actor else "system",
        "detail": {"category": row.cat_code, "grid": grid_code, "route_flag": flag},
    }
    event_actor = actor.label if actor is not None and actor.name else source
    case_id = _insert_case(session, values, event_actor, note, audit, reporter_user)
    out = {
        "id": case_id,
        "code": f"C{now:%Y%m%d}-{case_id:06d}",
        "category_code": row.cat_code,
        "category_name": row.cat_name,
        "department": row.cat_department,
        "description": description,
        "source": source,
        "status": "reported",
        "status_note": None,
        "grid_code": grid_code,
        "community_code": values["community_code"],
        "street_code": values["street_code"],
        "generation_id": generation_id,
        "route_flag": flag,
        "worker_code": worker[1],
        "worker_name": worker[2],
        "escalation_level": 0,
        "escalated_to": None,
        "deadline_at": _iso(deadline),
        "reported_at": _iso(now),
        "resolved_at": None,
        "closed_at": None,
        "updated_at": _iso(now),
        "rating": None,
        "duplicate_of": None,
        "lon": round(lon, 7),
        "lat": round(lat, 7),
        "photo_url": photo_url,
        "reporter_name": reporter_name,
        "reporter_phone": reporter_phone,
        "reporter_email": reporter_email,
        "possible_duplicates": duplicates,
    }
    if with_chain:
        out["chain"] = chain[::-1]
    return out


def _haversine_m(lon1, lat1, lon2, lat2):
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))


_duplicate_statements: dict[tuple[str, bool], sa.Select] = {}
_DUPLICATE_FIELDS = ("id", "code", "status", "reported_at", "grid_code", "x", "y")


def _duplicates_statement(dialect: str, exclude: bool) -> sa.Select:
    """Open cases of `:category` reported in [`:since`, `:until`] whose point's box
    meets the box `:x0 :y0 :x1 :y1`, from the spatial index; built once per dialect."""
    key = (dialect, exclude)
    stmt = _duplicate_statements.get(key)
    if stmt is not None:
        return stmt
    cases = Case.__table__
    if dialect == "postgresql":
        box = sa.func.ST_MakeEnvelope(
            sa.bindparam("x0"), sa.bindparam("y0"), sa.bindparam("x1"), sa.bindparam("y1"),
            repo.SRID,
        )  # fmt: skip
        # The cases in the box first, by the GiST index, and only then the category,
        # status and time filters: fenced, so the planner cannot AND in the index on
        # reported_at, whose row estimates go stale as new cases arrive (seen here:
        # 25,000 index entries read to find none, 1.2 ms instead of 0.05).
        fenced = (
            sa.select(
                *(cases.c[k] for k in ("id", "code", "status", "reported_at", "grid_code")),
                cases.c.category_code,
                cases.c.geom,
            )
            .where(cases.c.geom.op("&&")(box))
            .cte("cases_in_box")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        cases = fenced
        near = sa.true()
    else:
        frame = sa.func.ST_GeomFromText(sa.bindparam("frame", type_=sa.String), repo.SRID)
        near = cases.c.id.in_(
            sa.select(sa.column("rowid"))
            .select_from(sa.table("SpatialIndex"))
            .where(
                sa.column("f_table_name") == cases.name,
                sa.column("f_geometry_column") == "geom",
                sa.column("search_frame") == frame,
            )
        )
    stmt = sa.select(
        cases.c.id,
        cases.c.code,
        cases.c.status,
        cases.c.reported_at,
        cases.c.grid_code,
        sa.func.ST_X(cases.c.geom).label("x"),
        sa.func.ST_Y(cases.c.geom).label("y"),
    ).where(
        cases.c.category_code == sa.bindparam("category", type_=sa.String),
        cases.c.status.in_(rules.OPEN_STATUSES),
        cases.c.reported_at >= sa.bindparam("since", type_=cases.c.reported_at.type),
        cases.c.reported_at <= sa.bindparam("until", type_=cases.c.reported_at.type),
        near,
    )
    if exclude:
        stmt = stmt.where(cases.c.id != sa.bindparam("exclude_id", type_=sa.Integer))
    _duplicate_statements[key] = stmt
    return stmt


def find_duplicates(
    session: Session,
    *,
    category_code: str,
    lon: float,
    lat: float,
    now: datetime | None = None,
    radius_m: float = rules.DUPLICATE_RADIUS_M,
    window_days: float = rules.DUPLICATE_WINDOW_DAYS,
    limit: int = rules.DUPLICATES_SHOWN,
    exclude_id: int | None = None,
) -> list[dict[str, Any]]:
    """Open cases of one category within `radius_m` reported in the last `window_days`.

    One indexed statement: the spatial index narrows candidates to a box (GiST `&&`
    in PostGIS, SpatialIndex in SpatiaLite); the great-circle distance then decides,
    so both stores answer the same. Nearest first.
    """
    now = _now(now)
    dialect = session.get_bind().dialect.name
    params = _duplicate_params(lon, lat, now, radius_m, window_days, dialect)
    params["category"] = category_code
    if exclude_id is not None:
        params["exclude_id"] = exclude_id
    rows = session.execute(_duplicates_statement(dialect, exclude_id is not None), params).all()
    return _nearest_duplicates(lon, lat, rows, radius_m, limit)


def _duplicate_params(lon, lat, now, radius_m, window_days, dialect) -> dict[str, Any]:
    """The search box (the radius, widened) and time window of `_duplicates_statement`."""
    dlat = radius_m / 111_000.0 * 1.1
    dlon = dlat / max(math.cos(math.radians(lat)), 0.01)
    x0, y0, x1, y1 = lon - dlon, lat - dlat, lon + dlon, lat + dlat
    params: dict[str, Any] = {"since": now - timedelta(days=window_days), "until": now}
    if dialect == "postgresql":
        params |= {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
    else:
        params["frame"] = shapely.box(x0, y0, x1, y1).wkt
    return params


def _nearest_duplicates(lon, lat, rows, radius_m, limit) -> list[dict[str, Any]]:
    """Candidates (id, code, status, reported_at, grid_code, x, y) within `radius_m`
    by great-circle distance, nearest first."""
    if not rows:
        return []
    dist = _haversine_m(lon, lat, np.array([r[5] for r in rows]), np.array([r[6] for r in rows]))
    found = [
        {
            "id": r[0],
            "code": r[1],
            "status": r[2],
            "grid_code": r[4],
            "reported_at": _iso(r[3]),
            "distance_m": round(float(d), 1),
        }
        for r, d in zip(rows, dist, strict=True)
        if d <= radius_m
    ]
    found.sort(key=lambda f: (f["distance_m"], f["id"]))
    return found[:limit]


# ------------------------------------------------------------------- queries


_Duplicate = aliased(Case)


def _case_select() -> sa.Select:
    return (
        sa.select(
            Case,
            sa.func.ST_X(Case.geom).label("lon"),
            sa.func.ST_Y(Case.geom).label("lat"),
            Category.name.label("category_name"),
            Category.department.label("department"),
            Worker.code.label("worker_code"),
            Worker.name.label("worker_name"),
            _Duplicate.code.label("duplicate_code"),
        )
        .join(Category, Category.code == Case.category_code)
        .outerjoin(Worker, Worker.id == Case.worker_id)
        .outerjoin(_Duplicate, _Duplicate.id == Case.duplicate_of_id)
    )


def case_to_dict(row) -> dict[str, Any]:
    """One row of `_case_select` as the case dict every front door starts from."""
    case: Case = row.Case
    return {
        "id": case.id,
        "code": case.code,
        "category_code": case.category_code,
        "category_name": row.category_name,
        "department": row.department,
        "description": case.description,
        "source": case.source,
        "status": case.status,
        "status_note": case.status_note,
        "grid_code": case.grid_code,
        "community_code": case.community_code,
        "street_code": case.street_code,
        "generation_id": case.generation_id,
        "route_flag": case.route_flag,
        "worker_code": row.worker_code,
        "worker_name": row.worker_name,
        "escalation_level": case.escalation_level,
        "escalated_to": case.escalated_to,
        "deadline_at": _iso(case.deadline_at),
        "reported_at": _iso(case.reported_at),
        "resolved_at": _iso(case.resolved_at),
        "closed_at": _iso(case.closed_at),
        "updated_at": _iso(case.updated_at),
        "rating": case.rating,
        "duplicate_of": row.duplicate_code,
        "lon": round(float(row.lon), 7),
        "lat": round(float(row.lat), 7),
        "photo_url": case.photo_url,
        "reporter_name": case.reporter_name,
        "reporter_phone": case.reporter_phone,
        "reporter_email": case.reporter_email,
    }


def _find_case(session: Session, ref: int | str, *, lock: bool = False) -> Case:
    """A case by id or code. An all-digit string is tried as an id, then as a code."""
    stmt = sa.select(Case)
    if lock:
        # Serialise concurrent steps on one case (PostGIS; SQLite locks the whole file).
        stmt = stmt.with_for_update()
    case = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        case = session.scalars(stmt.where(Case.id == int(ref))).first()
    if case is None and not isinstance(ref, int):
        case = session.scalars(stmt.where(Case.code == str(ref))).first()
    if case is None:
        raise NotFound(f"no case {ref!r}", case=str(ref))
    return case


def get_case(session: Session, ref: int | str, actor: Actor | None = None) -> dict[str, Any]:
    """One case by id or code; NotFound if there is none or (given an `actor`) it is
    outside their reach."""
    case = _find_case(session, ref)
    _check_reach(session, case, actor, ref)
    row = session.execute(_case_select().where(Case.id == case.id)).one()
    return case_to_dict(row)


def _filters(
    session: Session,
    *,
    grid_code=None,
    community_code=None,
    street_code=None,
    status=None,
    statuses=None,
    category_code=None,
    since=None,
    until=None,
    bbox=None,
    overdue=None,
    codes=None,
    route_flag=None,
    now=None,
) -> list:
    where = []
    for column, value in (
        (Case.grid_code, grid_code),
        (Case.community_code, community_code),
        (Case.street_code, street_code),
        (Case.status, status),
        (Case.category_code, category_code),
        (Case.route_flag, route_flag),
    ):
        if value is not None:
            where.append(column == value)
    if statuses is not None:
        where.append(Case.status.in_(list(statuses)))
    if codes is not None:
        where.append(Case.code.in_(list(codes)))
    if since is not None:
        where.append(Case.reported_at >= _utc(since))
    if until is not None:
        where.append(Case.reported_at < _utc(until))
    if bbox is not None:
        where.append(repo._bbox_filter(session, Case.__table__.c.geom, bbox))
    if overdue is not None:
        late = sa.and_(
            Case.status.in_(rules.OPEN_STATUSES),
            Case.deadline_at.is_not(None),
            Case.deadline_at < _now(now),
        )
        where.append(late if overdue else sa.not_(late))
    return where


def list_cases(
    session: Session,
    *,
    grid_code: str | None = None,
    community_code: str | None = None,
    street_code: str | None = None,
    status: str | None = None,
    statuses=None,
    category_code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    overdue: bool | None = None,
    codes=None,
    route_flag: str | None = None,
    limit: int | None = 100,
    offset: int = 0,
    now: datetime | None = None,
    actor: Actor | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Cases matching every filter given, newest first, with the total before paging.

    `since` is inclusive and `until` exclusive, both on the time reported; `overdue`
    means past the deadline and still open (see `gis.cases.OPEN_STATUSES`);
    `route_flag='unrouted'` is the dispatcher's queue of cases outside every grid.
    With an `actor`, only the cases within their reach (see `case_scope`).
    """
    where = _filters(
        session,
        grid_code=grid_code,
        community_code=community_code,
        street_code=street_code,
        status=status,
        statuses=statuses,
        category_code=category_code,
        since=since,
        until=until,
        bbox=bbox,
        overdue=overdue,
        codes=codes,
        route_flag=route_flag,
        now=now,
    )
    reach = case_scope(actor)
    if reach is not None:
        where.append(reach)
    total = session.scalar(sa.select(sa.func.count()).select_from(Case).where(*where))
    stmt = (
        _case_select()
        .where(*where)
        .order_by(Case.reported_at.desc(), Case.id.desc())
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [case_to_dict(r) for r in session.execute(stmt)], total


def case_history(session: Session, case_id: int | str) -> list[dict[str, Any]]:
    """A case's events in the order they happened: who, when, from, to, note."""
    case = _find_case(session, case_id)
    events = session.scalars(
        sa.select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)
    )
    return [
        {
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "from_status": e.from_status,
            "to_status": e.to_status,
            "note": e.note,
        }
        for e in events
    ]


STAT_LEVELS = {
    # level -> (the case column counted by, the column its parent code filters)
    "grid": ("grid_code", "community_code"),
    "community": ("community_code", "street_code"),
    "street": ("street_code", None),
}


def case_stats(
    session: Session,
    *,
    level: str = "grid",
    parent: str | None = None,
    actor: Actor | None = None,
) -> list[dict[str, Any]]:
    """Per area of a level: case counts in total, by status and by category.

    `parent` keeps the areas under one community (level grid) or street (level
    community). Cases with no area at that level (unrouted) count under code None.
    """
    if level not in STAT_LEVELS:
        raise InvalidInput(
            f"level must be one of {', '.join(STAT_LEVELS)} (got {level!r})", field="level"
        )
    column_name, parent_name = STAT_LEVELS[level]
    column = Case.__table__.c[column_name]
    where = []
    if parent is not None:
        if parent_name is None:
            # Streets under a district by the area chain, not by code prefix.
            where.append(column.in_(repo.codes_under(parent)))
        else:
            where.append(Case.__table__.c[parent_name] == parent)
    reach = case_scope(actor)
    if reach is not None:
        where.append(reach)
    rows = session.execute(
        sa.select(column, Case.status, Case.category_code, sa.func.count())
        .where(*where)
        .group_by(column, Case.status, Case.category_code)
    ).all()
    out: dict[str | None, dict[str, Any]] = {}
    for code, status, category, n in rows:
        entry = out.setdefault(
            code, {"code": code, "total": 0, "by_status": Counter(), "by_category": Counter()}
        )
        entry["total"] += n
        entry["by_status"][status] += n
        entry["by_category"][category] += n
    result = sorted(out.values(), key=lambda e: (e["code"] is None, e["code"] or ""))
    for entry in result:
        entry["by_status"] = dict(sorted(entry["by_status"].items()))
        entry["by_category"] = dict(sorted(entry["by_category"].items()))
    return result


# ------------------------------------------------------------------ workflow


def transition(
    session: Session,
    ref: int | str,
    action: str,
    actor: Actor,
    *,
    note: str | None = None,
    worker_code: str | None = None,
    rating: int | None = None,
    duplicate_of: int | str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Take one workflow step on a case and record it as an event.

    Raises IllegalTransition (409, with the allowed actions) when the step does not
    apply to the case's status, Forbidden (403) when the actor's role may not take it,
    and InvalidInput naming the field when a step's parameter is missing or wrong.
    """
    case = _find_case(session, ref, lock=True)
    _check_reach(session, case, actor, ref)
    from_status = case.status
    _apply(
        session,
        case,
        action,
        actor,
        now=_now(now),
        note=note,
        worker_code=worker_code,
        rating=rating,
        duplicate_of=duplicate_of,
        reason=reason,
    )
    audit_repo.record(
        session,
        actor,
        f"case.{action}",
        "case",
        case.code,
        {"from": from_status, "to": case.status, "note": note, "reason": reason},
    )
    session.flush()
    return get_case(session, case.id)


def allowed_actions(session: Session, ref: int | str) -> list[str]:
    case = _find_case(session, ref)
    return rules.allowed_actions(case.status, case.escalation_level)


def _apply(
    session: Session,
    case: Case,
    action: str,
    actor: Actor,
    *,
    now: datetime,
    note: str | None = None,
    worker_code: str | None = None,
    rating: int | None = None,
    duplicate_of: int | str | None = None,
    reason: str | None = None,
) -> None:
    current = session.get(Worker, case.worker_id) if case.worker_id else None
    target = rules.check_transition(
        action,
        case.status,
        case.escalation_level,
        actor,
        worker_code=current.code if current else None,
        grid_code=case.grid_code,
    )
    details: list[str] = []
    if action == "dispatch":
        worker = current
        if worker_code is not None:
            query = sa.select(Worker).where(Worker.code == worker_code)
            if rules.scope_kind(actor) == "area":
                # A scoped dispatcher hands cases only to workers of grids in their area;
                # anyone else reads as missing, as out-of-scope things do everywhere.
                query = query.where(
                    Worker.id.in_(
                        sa.select(WorkerGrid.worker_id).where(
                            WorkerGrid.grid_code.in_(repo.codes_under(actor.scope))
                        )
                    )
                )
            worker = session.scalars(query).first()
            if worker is None or not worker.active:
                raise InvalidInput(f"no active worker {worker_code!r}", field="worker_code")
        if worker is None:
            raise InvalidInput(
                "worker_code is required: the case's grid has no worker", field="worker_code"
            )
        case.worker_id = worker.id
        details.append(f"to worker {worker.code}")
    elif action == "evaluate":
        case.rating = rules.check_rating(rating)
        details.append(f"rating {rating}")
    elif action == "duplicate":
        if duplicate_of is None:
            raise InvalidInput(
                "duplicate_of is required: the case this one repeats", field="duplicate_of"
            )
        try:
            original = _find_case(session, duplicate_of)
        except NotFound as exc:
            raise InvalidInput(f"no case {duplicate_of!r}", field="duplicate_of") from exc
        if original.id == case.id:
            raise InvalidInput("a case cannot duplicate itself", field="duplicate_of")
        case.duplicate_of_id = original.id
        case.closed_at = now
        details.append(f"duplicate of {original.code}")
    elif action == "reject":
        if not (reason and reason.strip()):
            raise InvalidInput("reason is required to reject a case", field="reason")
        case.closed_at = now
        details.append(f"reason: {reason.strip()}")
    elif action == "escalate":
        _escalate(session, case, now)
        level = rules.ESCALATION_LEVELS[case.escalation_level]
        details.append(f"to {level} {case.escalated_to}" if case.escalated_to else f"to {level}")
    elif action == "resolve":
        case.resolved_at = now
    elif action == "close":
        case.closed_at = now
    from_status = case.status
    case.status = target
    case.updated_at = now
    case.status_note = (reason or note or case.status_note) if action != "dispatch" else note
    text = "; ".join([*details, *([note] if note else [])]) or None
    session.add(
        CaseEvent(
            case_id=case.id,
            at=now,
            actor=actor.label,
            action=action,
            from_status=from_status,
            to_status=target,
            note=text,
        )
    )


def _escalate(session: Session, case: Case, now: datetime) -> None:
    """One level up, with a fresh deadline for that level (the category's hours again)."""
    category = session.get(Category, case.category_code)
    case.escalation_level += 1
    case.escalated_to = rules.escalation_target(
        case.escalation_level,
        case.community_code,
        case.street_code,
        category.department if category else None,
    )
    case.escalated_for = case.deadline_at
    case.deadline_at = rules.deadline_after(now, category.deadline_h if category else None)


def escalate_overdue(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Escalate every overdue open case one level (the cron job); returns what moved.

    Idempotent: a case is escalated once per deadline and gets a fresh one, so a
    second run at the same moment finds nothing to do.
    """
    now = _now(now)
    candidates = session.scalars(
        sa.select(Case)
        .where(
            Case.status.in_(rules.OPEN_STATUSES),
            Case.deadline_at.is_not(None),
            Case.deadline_at < now,
            Case.escalation_level < rules.TOP_LEVEL,
            sa.or_(Case.escalated_for.is_(None), Case.escalated_for != Case.deadline_at),
        )
        .order_by(Case.id)
        .with_for_update()
    ).all()
    moved = []
    for case in candidates:
        # The SQL filter and the pure rule must agree; the rule has the last word.
        if not rules.needs_escalation(
            case.status,
            case.escalation_level,
            _utc(case.deadline_at),
            _utc(case.escalated_for),
            now,
        ):
            continue
        overdue_since = _iso(case.deadline_at)
        _apply(session, case, "escalate", rules.SYSTEM, now=now, note="overdue")
        moved.append(
            {
                "code": case.code,
                "level": rules.ESCALATION_LEVELS[case.escalation_level],
                "escalated_to": case.escalated_to,
                "overdue_since": overdue_since,
                "deadline_at": _iso(case.deadline_at),
            }
        )
    if moved:
        audit_repo.record(
            session,
            rules.SYSTEM,
            "case.escalate_overdue",
            "case",
            None,
            {"cases": [m["code"] for m in moved]},
            at=now,
        )
    session.flush()
    return moved


# ------------------------------------------------------------------- reroute


def reroute(
    session: Session,
    *,
    dry_run: bool = True,
    near_outside_m: float = rules.NEAR_OUTSIDE_M,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Re-route the stored open cases to the active generation's grids, in bulk.

    Returns the moves as counts per (from grid, to grid). With `dry_run` nothing is
    written; otherwise the same plan, computed in the caller's transaction, is written
    there: grid, area chain, flag, generation, and (for cases nobody has taken yet)
    the new grid's worker, plus a 'reroute' event per moved case.
    """
    from gis.routing import route_points

    now = _now(now)
    generation = repo.require_active_generation(session)
    rows = session.execute(
        sa.select(
            Case.id,
            Case.grid_code,
            Case.status,
            sa.func.ST_X(Case.geom),
            sa.func.ST_Y(Case.geom),
        )
        .where(Case.status.in_(rules.OPEN_STATUSES))
        .order_by(Case.id)
        .with_for_update()
    ).all()
    grids, _ = repo.areas_gdf(session, generation.id, level="grid")
    summary: dict[str, Any] = {"generation": generation.name, "open_cases": len(rows)}
    if not rows:
        return summary | {"moved": 0, "moves": [], "flags": {}, "dry_run": dry_run}
    xy = np.array([(r[3], r[4]) for r in rows], dtype=float)
    codes = grids["code"].to_numpy(dtype=object)
    routed = route_points(xy, grids.geometry.values, codes, near_m=near_outside_m)
    new_codes = [codes[i] if i >= 0 else None for i in routed.index]
    moves = Counter(
        (r.grid_code, new) for r, new in zip(rows, new_codes, strict=True) if r.grid_code != new
    )
    summary |= {
        "moved": sum(moves.values()),
        "moves": [
            {"from": a, "to": b, "count": n}
            for (a, b), n in sorted(moves.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))
        ],
        "flags": dict(sorted(Counter(str(f) for f in routed.flag).items())),
        "dry_run": dry_run,
    }
    if dry_run:
        return summary
    parents = dict(zip(grids["code"], grids["parent_code"], strict=True))
    community_parent = dict(
        session.execute(
            sa.select(Area.code, Area.parent_code).where(
                Area.generation_id == generation.id, Area.level == "community"
            )
        ).all()
    )
    owners = {
        code: worker.id
        for code in {c for c in new_codes if c is not None}
        if (worker := grid_worker(session, code)) is not None
    }
    updates, events = [], []
    for r, new, flag in zip(rows, new_codes, routed.flag, strict=True):
        community = parents.get(new) if new else None
        update = {
            "c_id": r.id,
            "grid_code": new,
            "community_code": community,
            "street_code": community_parent.get(community) if community else None,
            "route_flag": str(flag),
            "generation_id": generation.id,
        }
        updates.append(update)
        if r.grid_code != new:
            events.append(
                {
                    "case_id": r.id,
                    "at": now,
                    "actor": rules.SYSTEM.role,
                    "action": "reroute",
                    "from_status": r.status,
                    "to_status": r.status,
                    "note": f"generation {generation.name}: grid {r.grid_code} → {new}",
                }
            )
    table = Case.__table__
    stmt = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("c_id"))
        .values({k: sa.bindparam(k) for k in updates[0] if k != "c_id"})
    )
    session.execute(stmt, updates)
    # Cases nobody has taken yet follow their new grid's worker.
    for r, new in zip(rows, new_codes, strict=True):
        if r.status in _UNCLAIMED and r.grid_code != new:
            session.execute(
                sa.update(table)
                .where(table.c.id == r.id)
                .values(worker_id=owners.get(new), updated_at=now)
            )
    if events:
        session.execute(sa.insert(CaseEvent.__table__), events)
    audit_repo.record(
        session,
        rules.SYSTEM,
        "case.reroute",
        "generation",
        generation.name,
        {"moved": summary["moved"], "moves": summary["moves"]},
        at=now,
    )
    session.flush()
    return summary
