"""The demo district written into both stores keeps its invariants."""

from __future__ import annotations

import numpy as np
import shapely
import sqlalchemy as sa

from data.demo import generate_district
from data.loader import load_district
from gis.cases import STATUSES
from gis.db import repo
from gis.db.models import Case


def test_tiny_demo_loads_and_every_building_locates_to_its_grid(store):
    district = generate_district("tiny", seed=5)
    counts = load_district(store.sessions, district)
    assert counts["buildings"] == len(district.buildings)
    assert counts["cases"] == len(district.cases)
    assert counts["areas"] == len(district.areas)

    with store.session() as s:
        gen = repo.active_generation(s)
        grids, n_grids = repo.areas_gdf(s, gen.id, level="grid")
        assert n_grids == int((district.areas["level"] == "grid").sum())
        stored, total = repo.buildings_gdf(s)
        assert total == len(district.buildings)
        # every stored building's point lies in exactly one grid, the one it names
        points = shapely.point_on_surface(stored.geometry.values)
        inside = shapely.contains(np.asarray(grids.geometry.values)[:, None], points[None, :])
        assert (inside.sum(axis=0) == 1).all()
        owner = grids["code"].to_numpy()[inside.argmax(axis=0)]
        assert (owner == stored["grid_code"].to_numpy()).all()
        # and the SQL lookup agrees for a sample
        rng = np.random.default_rng(0)
        for i in rng.choice(total, size=15, replace=False):
            p = points[i]
            assert repo.locate(s, p.x, p.y).grid_code == stored["grid_code"].iat[i]
        flags = dict(
            s.execute(sa.select(Case.route_flag, sa.func.count()).group_by(Case.route_flag)).all()
        )
        assert flags == {"inside": len(district.cases)}
        # every stored status is one the workflow knows, and the open ones are spread
        # over the states a dispatcher and a worker act on
        statuses = dict(
            s.execute(sa.select(Case.status, sa.func.count()).group_by(Case.status)).all()
        )
        assert set(statuses) <= set(STATUSES), statuses
        assert {"closed", "in_progress"} <= set(statuses)
