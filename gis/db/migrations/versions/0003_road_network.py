"""The walking network: road_networks (one row per stored network), road_nodes, road_edges.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Both geometry tables get a spatial index the same way 0001 makes them (GiST in PostGIS,
an R*Tree in SpatiaLite), through the geoalchemy2 Alembic helpers.
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry, alembic_helpers  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _geom(kind: str) -> Geometry:
    return Geometry(geometry_type=kind, srid=4326, spatial_index=False)


def _spatial_index(table: str, column: str = "geom") -> None:
    op.create_geospatial_index(
        f"idx_{table}_{column}", table, [column], unique=False, postgresql_using="gist"
    )


def upgrade() -> None:
    op.create_table(
        "road_networks",
        sa.Column("id", sa.Integer, primary_key=True),
        # Changes on every import; processes cache the in-memory graph under it.
        sa.Column("version", sa.String(40), nullable=False, unique=True),
        # The local metric CRS (PROJ string) the node coordinates were merged in.
        sa.Column("crs", sa.Text, nullable=False),
        sa.Column("source", sa.String(300)),
        sa.Column("nodes", sa.Integer, nullable=False),
        sa.Column("edges", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_geospatial_table(
        "road_nodes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("geom", _geom("POINT"), nullable=False),
    )
    _spatial_index("road_nodes")
    op.create_geospatial_table(
        "road_edges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("from_node", sa.Integer, nullable=False),
        sa.Column("to_node", sa.Integer, nullable=False),
        sa.Column("length_m", sa.Float, nullable=False),
        sa.Column("name", sa.String(100)),
        sa.Column("kind", sa.String(40)),
        sa.Column("geom", _geom("LINESTRING"), nullable=False),
        sa.CheckConstraint("length_m > 0", name="ck_road_edge_length"),
    )
    _spatial_index("road_edges")


def downgrade() -> None:
    op.drop_geospatial_table("road_edges")
    op.drop_geospatial_table("road_nodes")
    op.drop_table("road_networks")
