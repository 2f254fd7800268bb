"""The initial schema: generations, areas, buildings, stations, workers, categories, cases.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry, alembic_helpers  # noqa: F401

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _geom(kind: str) -> Geometry:
    return Geometry(geometry_type=kind, srid=4326, spatial_index=False)


def _spatial_index(table: str, column: str = "geom") -> None:
    op.create_geospatial_index(
        f"idx_{table}_{column}", table, [column], unique=False, postgresql_using="gist"
    )


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("activated_at", TZ),
        sa.CheckConstraint(
            "status IN ('staged', 'active', 'retired')", name="ck_generation_status"
        ),
    )
    # At most one active generation, enforced by the store itself.
    op.create_index(
        "uq_generations_one_active",
        "generations",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )

    op.create_geospatial_table(
        "areas",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id"), nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("code", sa.String(20), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("parent_code", sa.String(20)),
        sa.Column("geom", _geom("MULTIPOLYGON"), nullable=False),
        sa.UniqueConstraint("generation_id", "code", name="uq_areas_generation_code"),
        sa.CheckConstraint(
            "level IN ('district', 'street', 'community', 'grid')", name="ck_area_level"
        ),
    )
    op.create_index("ix_areas_generation_level", "areas", ["generation_id", "level"])
    op.create_index("ix_areas_parent", "areas", ["generation_id", "parent_code"])
    _spatial_index("areas")

    op.create_geospatial_table(
        "buildings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(40), nullable=False, unique=True),
        sa.Column("name", sa.String(100)),
        sa.Column("address", sa.String(200)),
        sa.Column("households", sa.Integer, nullable=False, server_default="0"),
        sa.Column("population", sa.Integer, nullable=False, server_default="0"),
        sa.Column("floors", sa.Integer),
        sa.Column("grid_code", sa.String(20)),
        sa.Column("community_code", sa.String(20)),
        sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("geom", _geom("GEOMETRY"), nullable=False),
        sa.Column("point", _geom("POINT"), nullable=False),
        sa.CheckConstraint("households >= 0 AND population >= 0", name="ck_building_counts"),
    )
    op.create_index("ix_buildings_grid_code", "buildings", ["grid_code"])
    op.create_index("ix_buildings_community_code", "buildings", ["community_code"])
    _spatial_index("buildings", "point")

    op.create_table(
        "cared_residents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("building_id", sa.Integer, sa.ForeignKey("buildings.id"), nullable=False),
        sa.Column("care_group", sa.String(30), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(30)),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_cared_residents_building_id", "cared_residents", ["building_id"])

    op.create_geospatial_table(
        "stations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(40), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("address", sa.String(200)),
        sa.Column("services", sa.JSON),
        sa.Column("opening_hours", sa.String(200)),
        sa.Column("capacity", sa.Integer),
        sa.Column("phone", sa.String(30)),
        sa.Column("geom", _geom("POINT"), nullable=False),
    )
    op.create_index("ix_stations_kind", "stations", ["kind"])
    _spatial_index("stations")

    op.create_table(
        "workers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(40), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(30)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "worker_grids",
        sa.Column("worker_id", sa.Integer, sa.ForeignKey("workers.id"), primary_key=True),
        sa.Column("grid_code", sa.String(20), primary_key=True),
    )
    op.create_index("ix_worker_grids_grid_code", "worker_grids", ["grid_code"])

    op.create_table(
        "categories",
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("parent_code", sa.String(20)),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("name_en", sa.String(100)),
        sa.Column("deadline_h", sa.Float),
        sa.Column("workload_weight", sa.Float),
        sa.Column("department", sa.String(100)),
    )

    op.create_geospatial_table(
        "cases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(40), nullable=False, unique=True),
        sa.Column("category_code", sa.String(20), sa.ForeignKey("categories.code"), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("reporter_name", sa.String(100)),
        sa.Column("reporter_phone", sa.String(30)),
        sa.Column("photo_url", sa.String(500)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("grid_code", sa.String(20)),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id")),
        sa.Column("route_flag", sa.String(20)),
        sa.Column("worker_id", sa.Integer, sa.ForeignKey("workers.id")),
        sa.Column("escalation_level", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duplicate_of_id", sa.Integer, sa.ForeignKey("cases.id")),
        sa.Column("rating", sa.Integer),
        sa.Column("reported_at", TZ, nullable=False),
        sa.Column("deadline_at", TZ),
        sa.Column("resolved_at", TZ),
        sa.Column("closed_at", TZ),
        sa.Column("updated_at", TZ),
        sa.Column("geom", _geom("POINT"), nullable=False),
    )
    op.create_index("ix_cases_category_code", "cases", ["category_code"])
    op.create_index("ix_cases_status", "cases", ["status"])
    op.create_index("ix_cases_grid_code", "cases", ["grid_code"])
    op.create_index("ix_cases_reported_at", "cases", ["reported_at"])
    _spatial_index("cases")

    op.create_table(
        "case_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(100)),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("from_status", sa.String(20)),
        sa.Column("to_status", sa.String(20)),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_case_events_case_id", "case_events", ["case_id"])


def downgrade() -> None:
    op.drop_table("case_events")
    op.drop_geospatial_table("cases")
    for table in ("worker_grids", "workers", "cared_residents", "categories"):
        op.drop_table(table)
    for table in ("stations", "buildings", "areas"):
        op.drop_geospatial_table(table)
    op.drop_table("generations")
