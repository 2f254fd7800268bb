"""Write a generated district (data.demo) into a store in one transaction."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from gis.db import repo

if TYPE_CHECKING:
    from data.demo import DemoDistrict

# Where the demo's case history stands: the generator's year ends here.
HISTORY_END = pd.Timestamp("2026-10-31T23:59:59", tz="UTC")


def add_case_history(cases, deadline_h: dict[str, float], seed: int = 7) -> pd.DataFrame:
    """Give generated cases a plausible state: old ones closed, recent ones in the loop.

    About 8% of closed cases were resolved after their deadline, as real
    dashboards show; the last fortnight is still open in various states.
    """
    rng = np.random.default_rng(seed)
    out = cases.copy()
    reported = pd.to_datetime(out["reported_at"], utc=True)
    hours = out["category_code"].map(deadline_h).astype(float).to_numpy()
    age_h = (HISTORY_END - reported).dt.total_seconds().to_numpy() / 3600
    late = rng.random(len(out)) < 0.08
    spent = np.where(
        late, hours * rng.uniform(1.05, 2.5, len(out)), hours * rng.uniform(0.1, 0.95, len(out))
    )
    done = spent + 24 < age_h
    # object dtype: a fixed-width string array would cut "in_progress" to "in_progr"
    status = np.where(done, "closed", "reported").astype(object)
    recent = ~done
    status[recent] = rng.choice(
        ["reported", "dispatched", "accepted", "in_progress", "resolved"],
        size=int(recent.sum()),
        p=[0.15, 0.2, 0.2, 0.3, 0.15],
    )
    resolved_at = reported + pd.to_timedelta(spent, unit="h")
    out["status"] = status
    out["resolved_at"] = resolved_at.where(np.isin(status, ["closed", "resolved"]), pd.NaT)
    out["closed_at"] = (resolved_at + pd.Timedelta(hours=24)).where(status == "closed", pd.NaT)
    out["rating"] = np.where(status == "closed", rng.choice([3, 4, 5, 5, 5], len(out)), None)
    return out


def load_district(
    sessions: sessionmaker[Session], district: DemoDistrict, *, generation_name: str = "demo"
) -> dict[str, float]:
    """Write every layer of a generated district and switch its generation on."""
    counts: dict[str, float] = {}
    started = time.perf_counter()
    with sessions() as session, session.begin():
        repo.seed_categories(session)
        deadlines = {c.code: c.deadline_h for c in repo.categories(session) if c.deadline_h}
        gen = repo.create_generation(session, generation_name, note="synthetic demo district")
        counts["areas"] = repo.write_areas(session, district.areas, gen)
        repo.activate_generation(session, gen)
        counts["buildings"] = repo.write_buildings(session, district.buildings)["inserted"]
        counts["stations"] = repo.write_stations(session, district.stations)["inserted"]
        counts["workers"] = repo.write_workers(session, district.workers)["inserted"]
        cases = add_case_history(district.cases, deadlines)
        counts["cases"] = repo.write_cases(session, cases)["inserted"]
        if getattr(district, "roads", None) is not None and len(district.roads):
            from data.roads import write_demo_roads

            counts["road_edges"] = write_demo_roads(session, district.roads)
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts
