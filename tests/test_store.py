"""The two stores: schema, generations, and the one-active rule."""

from __future__ import annotations

from importlib import resources

import geopandas as gpd
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from shapely import box

from gis.db import repo
from gis.db.engine import current_revision
from gis.db.models import Area, Generation
from gis.errors import Conflict


def _grid_layer(prefix: str = "210199001001", x0: float = 123.40, n: int = 2) -> gpd.GeoDataFrame:
    """A community split into n grids side by side (0.01° wide each)."""
    rows = [
        {
            "code": prefix,
            "name": "社区",
            "level": "community",
            "parent_code": None,
            "geometry": box(x0, 41.80, x0 + 0.01 * n, 41.81),
        },
    ]
    for i in range(n):
        rows.append(
            {
                "code": f"{prefix}{i + 1:03d}",
                "name": f"第{i + 1}网格",
                "level": "grid",
                "parent_code": prefix,
                "geometry": box(x0 + 0.01 * i, 41.80, x0 + 0.01 * (i + 1), 41.81),
            }
        )
    return gpd.GeoDataFrame(rows, crs=4326)


def test_migrations_reach_head(store):
    # The newest migration file, whichever that is: several issues add migrations.
    config = Config()
    config.set_main_option("script_location", str(resources.files("gis.db") / "migrations"))
    assert current_revision(store.engine) == ScriptDirectory.from_config(config).get_current_head()
    with store.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {
        "generations",
        "areas",
        "buildings",
        "stations",
        "workers",
        "worker_grids",
        "categories",
        "cases",
        "case_events",
        "cared_residents",
    } <= tables


def test_categories_seed_once(store):
    with store.session() as s, s.begin():
        added = repo.seed_categories(s)
    with store.session() as s, s.begin():
        again = repo.seed_categories(s)
        cats = repo.categories(s)
    assert added == len(cats) == 12 + 53
    assert again == 0
    sub = {c.code: c for c in cats}["0603"]
    assert (sub.level, sub.parent_code, sub.deadline_h) == ("subclass", "06", 2)


def test_staging_a_generation_leaves_the_active_one_untouched(store):
    with store.session() as s, s.begin():
        first = repo.create_generation(s, "first")
        repo.write_areas(s, _grid_layer(), first)
        repo.activate_generation(s, first)
    with store.session() as s, s.begin():
        staged = repo.create_generation(s, "redraw")
        repo.write_areas(s, _grid_layer(n=3), staged)
    with store.session() as s:
        active = repo.active_generation(s)
        assert active.name == "first"
        grids, total = repo.areas_gdf(s, active.id, level="grid")
        assert total == 2 and list(grids["code"]) == ["210199001001001", "210199001001002"]
        located = repo.locate(s, 123.415, 41.805)
        assert located.grid_code == "210199001001002" and located.generation == "first"
        outside = repo.locate(s, 123.425, 41.805)
        assert outside.grid_code is None and outside.nearest_grid["code"] == "210199001001002"
        statuses = dict(s.execute(sa.select(Generation.name, Generation.status)).all())
        assert statuses == {"first": "active", "redraw": "staged"}

    with store.session() as s, s.begin():
        repo.activate_generation(s, repo.get_generation(s, "redraw"))
    with store.session() as s:
        statuses = dict(s.execute(sa.select(Generation.name, Generation.status)).all())
        assert statuses == {"first": "retired", "redraw": "active"}
        # the third grid only exists in the new generation
        assert repo.locate(s, 123.425, 41.805).grid_code == "210199001001003"


def test_store_refuses_two_active_generations(store):
    with store.session() as s, s.begin():
        a = repo.create_generation(s, "a")
        repo.write_areas(s, _grid_layer(), a)
        repo.activate_generation(s, a)
    with pytest.raises(sa.exc.IntegrityError), store.session() as s, s.begin():
        b = repo.create_generation(s, "b")
        s.flush()
        b.status = "active"
        s.flush()
    with store.session() as s:
        assert [g.name for g in repo.list_generations(s)] == ["a"]


def test_empty_generation_cannot_be_switched_on(store):
    with store.session() as s, s.begin():
        gen = repo.create_generation(s, "empty")
        with pytest.raises(Conflict, match="no grids"):
            repo.activate_generation(s, gen)


def test_duplicate_area_code_in_generation_is_refused(store):
    with pytest.raises(Conflict, match="already exist"), store.session() as s, s.begin():
        gen = repo.create_generation(s, "g")
        repo.write_areas(s, _grid_layer(), gen)
        repo.write_areas(s, _grid_layer(), gen)
    with store.session() as s:
        # the failed transaction wrote nothing, not even the generation
        assert s.scalar(sa.select(sa.func.count()).select_from(Area)) == 0
