"""Queries the maps need that `repo` does not offer yet: per-grid tallies and case points.

Aggregates run in SQL (GROUP BY) so the coverage map of a city does not load every
building and case into Python. When `gis.db.cases_repo` lands, `cases_gdf` can defer
to its `list_cases`; the frame it returns is what `maps.render` expects either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import geopandas as gpd
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from gis.db.models import Building, Case, Category, Worker, WorkerGrid
from gis.db.repo import _frame

#: Case states still in the loop (gis.cases.OPEN_STATUSES).
OPEN_STATUSES = ("reported", "dispatched", "accepted", "in_progress", "returned", "escalated")


def grid_stats(session: Session, grid_codes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per grid code: households (sum over its buildings), open cases and worker names."""
    b = Building.__table__
    stmt = sa.select(b.c.grid_code, sa.func.sum(b.c.households)).group_by(b.c.grid_code)
    households = dict(session.execute(stmt).all())
    c = Case.__table__
    stmt = (
        sa.select(c.c.grid_code, sa.func.count())
        .where(c.c.status.in_(OPEN_STATUSES))
        .group_by(c.c.grid_code)
    )
    open_cases = dict(session.execute(stmt).all())
    stmt = (
        sa.select(WorkerGrid.grid_code, Worker.name)
        .join(Worker, Worker.id == WorkerGrid.worker_id)
        .where(Worker.active.is_(True))
        .order_by(WorkerGrid.grid_code, Worker.code)
    )
    workers: dict[str, list[str]] = {}
    for code, name in session.execute(stmt):
        workers.setdefault(code, []).append(name)
    codes = (
        list(grid_codes)
        if grid_codes is not None
        else sorted(set(households) | set(open_cases) | set(workers) - {None})
    )
    return pd.DataFrame(
        {
            "code": codes,
            "households": [int(households.get(g) or 0) for g in codes],
            "open_cases": [int(open_cases.get(g) or 0) for g in codes],
            "worker": ["、".join(workers.get(g, [])) for g in codes],
        }
    )


def cases_gdf(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    category_prefix: str | None = None,
    grid_codes: Sequence[str] | None = None,
    open_only: bool = False,
    limit: int | None = None,
) -> gpd.GeoDataFrame:
    """Case points (newest first) with code, category_code, status, grid_code, deadline_at."""
    c = Case.__table__
    where = []
    if since is not None:
        where.append(c.c.reported_at >= since)
    if until is not None:
        where.append(c.c.reported_at < until)
    if category_prefix:
        where.append(c.c.category_code.startswith(category_prefix))
    if grid_codes is not None:
        where.append(c.c.grid_code.in_(list(grid_codes)))
    if open_only:
        where.append(c.c.status.in_(OPEN_STATUSES))
    cols = ["code", "category_code", "status", "grid_code", "reported_at", "deadline_at"]
    stmt = (
        sa.select(*[c.c[k] for k in cols], sa.func.ST_AsBinary(c.c.geom))
        .where(*where)
        .order_by(c.c.reported_at.desc(), c.c.code)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    frame = _frame(session.execute(stmt).all(), cols)
    for col in ("reported_at", "deadline_at"):
        # SpatiaLite hands back naive datetimes; the store writes UTC.
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def latest_case_time(session: Session) -> datetime | None:
    return session.scalar(sa.select(sa.func.max(Case.reported_at)))


def category_names(session: Session, lang: str = "zh") -> dict[str, str]:
    """code -> display name of every class and subclass."""
    rows = session.execute(sa.select(Category.code, Category.name, Category.name_en)).all()
    return {code: (name_en or name) if lang == "en" else name for code, name, name_en in rows}
