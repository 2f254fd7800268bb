"""Balancing plans: parameters, building→grid assignment, metrics and derived grid polygons.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

A plan is data (DESIGN.md §3): its rows say which grid each building of the
communities it touches goes to, and `plan_grids` caches the polygons derived from
that assignment, so comparing, listing handovers and applying never re-solve.
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry, alembic_helpers  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        # 'balance' (solver) or 'upload' (a planner's redrawn grid layer).
        sa.Column("kind", sa.String(10), nullable=False),
        # 'proposed' until applied; 'applied' once its generation is switched on.
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("base_generation_id", sa.Integer, sa.ForeignKey("generations.id")),
        sa.Column("applied_generation_id", sa.Integer, sa.ForeignKey("generations.id")),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("metrics_before", sa.JSON, nullable=False),
        sa.Column("metrics_after", sa.JSON, nullable=False),
        # Per community: solver status, gap, time, changes (split/merge), reasons.
        sa.Column("communities", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(100)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "plan_assignments",
        sa.Column("plan_id", sa.Integer, sa.ForeignKey("plans.id"), primary_key=True),
        sa.Column("building_code", sa.String(40), primary_key=True),
        sa.Column("community_code", sa.String(20), nullable=False),
        sa.Column("from_grid_code", sa.String(20)),
        sa.Column("grid_code", sa.String(20), nullable=False),
        sa.Column("households", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_plan_assignments_grid", "plan_assignments", ["plan_id", "grid_code"])
    op.create_geospatial_table(
        "plan_grids",
        sa.Column("plan_id", sa.Integer, sa.ForeignKey("plans.id"), primary_key=True),
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("community_code", sa.String(20), nullable=False),
        sa.Column(
            "geom",
            Geometry(geometry_type="MULTIPOLYGON", srid=4326, spatial_index=False),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_geospatial_table("plan_grids")
    op.drop_index("ix_plan_assignments_grid", table_name="plan_assignments")
    op.drop_table("plan_assignments")
    op.drop_table("plans")
