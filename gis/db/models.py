"""GeoAlchemy2 models: one schema for PostGIS and SpatiaLite.

Codes are the stable identity of areas across boundary generations (a grid
keeps its 15-digit code when its polygon is redrawn), so buildings, workers and
cases refer to grids by code and to the generation they were routed under.
The tables themselves are created by the Alembic migrations beside this file.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from geoalchemy2 import Geometry
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SRID = 4326

LEVELS = ("district", "street", "community", "grid")
GENERATION_STATUSES = ("staged", "active", "retired")
CASE_SOURCES = ("resident", "worker", "hotline")
WORKER_ROLES = ("grid_worker", "community_staff", "street_staff", "district_staff")
CARE_GROUPS = (
    "elderly_alone",  # 独居老人
    "bereaved_parents",  # 失独家庭
    "low_income",  # 低保户
    "disabled",  # 残疾人
    "reemployment",  # 再就业人员
    "veteran",  # 退役军人
    "community_correction",  # 社区矫正人员
)


def _geom(kind: str) -> Geometry:
    # spatial_index=False: the migrations create the indexes explicitly, the same way on
    # both stores, instead of relying on create_all events.
    return Geometry(geometry_type=kind, srid=SRID, spatial_index=False)


class Base(DeclarativeBase):
    pass


class Generation(Base):
    """A complete snapshot of the area hierarchy; exactly one is active."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    status: Mapped[str] = mapped_column(sa.String(10), default="staged")
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class Area(Base):
    """District, street, community or grid within one generation."""

    __tablename__ = "areas"
    __table_args__ = (sa.UniqueConstraint("generation_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    generation_id: Mapped[int] = mapped_column(sa.ForeignKey("generations.id"), index=True)
    level: Mapped[str] = mapped_column(sa.String(10))
    code: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(100))
    parent_code: Mapped[str | None] = mapped_column(sa.String(20))
    geom = mapped_column(_geom("MULTIPOLYGON"), nullable=False)


class Building(Base):
    __tablename__ = "buildings"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    name: Mapped[str | None] = mapped_column(sa.String(100))
    address: Mapped[str | None] = mapped_column(sa.String(200))
    households: Mapped[int] = mapped_column(default=0)
    population: Mapped[int] = mapped_column(default=0)
    floors: Mapped[int | None] = mapped_column()
    grid_code: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    community_code: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    locked: Mapped[bool] = mapped_column(default=False)
    geom = mapped_column(_geom("GEOMETRY"), nullable=False)
    # A point inside the footprint: what grid assignment and nearest queries use.
    point = mapped_column(_geom("POINT"), nullable=False)


class CaredResident(Base):
    """A resident in one of the seven care groups; never public."""

    __tablename__ = "cared_residents"

    id: Mapped[int] = mapped_column(primary_key=True)
    building_id: Mapped[int] = mapped_column(sa.ForeignKey("buildings.id"), index=True)
    care_group: Mapped[str] = mapped_column(sa.String(30))
    name: Mapped[str] = mapped_column(sa.String(100))
    phone: Mapped[str | None] = mapped_column(sa.String(30))
    note: Mapped[str | None] = mapped_column(sa.Text)


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(20), index=True)
    address: Mapped[str | None] = mapped_column(sa.String(200))
    services: Mapped[list] = mapped_column(sa.JSON, default=list)
    opening_hours: Mapped[str | None] = mapped_column(sa.String(200))
    capacity: Mapped[int | None] = mapped_column()
    phone: Mapped[str | None] = mapped_column(sa.String(30))
    geom = mapped_column(_geom("POINT"), nullable=False)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    phone: Mapped[str | None] = mapped_column(sa.String(30))
    role: Mapped[str] = mapped_column(sa.String(20))
    active: Mapped[bool] = mapped_column(default=True)
    grids: Mapped[list[WorkerGrid]] = relationship(
        back_populates="worker", cascade="all, delete-orphan", order_by="WorkerGrid.grid_code"
    )


class WorkerGrid(Base):
    __tablename__ = "worker_grids"

    worker_id: Mapped[int] = mapped_column(sa.ForeignKey("workers.id"), primary_key=True)
    grid_code: Mapped[str] = mapped_column(sa.String(20), primary_key=True, index=True)
    worker: Mapped[Worker] = relationship(back_populates="grids")


class Category(Base):
    """Two-level tree: class (level 'class') and subclass (level 'subclass')."""

    __tablename__ = "categories"

    code: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    parent_code: Mapped[str | None] = mapped_column(sa.String(20))
    level: Mapped[str] = mapped_column(sa.String(10))
    name: Mapped[str] = mapped_column(sa.String(100))
    name_en: Mapped[str | None] = mapped_column(sa.String(100))
    deadline_h: Mapped[float | None] = mapped_column(sa.Float)
    workload_weight: Mapped[float | None] = mapped_column(sa.Float)
    department: Mapped[str | None] = mapped_column(sa.String(100))


class Case(Base):
    """A reported problem (事件) and where it was routed."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)
    category_code: Mapped[str] = mapped_column(sa.ForeignKey("categories.code"), index=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.String(20))
    reporter_name: Mapped[str | None] = mapped_column(sa.String(100))
    reporter_phone: Mapped[str | None] = mapped_column(sa.String(30))
    reporter_email: Mapped[str | None] = mapped_column(sa.String(200))
    photo_url: Mapped[str | None] = mapped_column(sa.String(500))
    status: Mapped[str] = mapped_column(sa.String(20), index=True)
    grid_code: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    community_code: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    street_code: Mapped[str | None] = mapped_column(sa.String(20), index=True)
    generation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("generations.id"))
    route_flag: Mapped[str | None] = mapped_column(sa.String(20))
    worker_id: Mapped[int | None] = mapped_column(sa.ForeignKey("workers.id"))
    escalation_level: Mapped[int] = mapped_column(default=0)
    escalated_to: Mapped[str | None] = mapped_column(sa.String(100))
    escalated_for: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    status_note: Mapped[str | None] = mapped_column(sa.Text)
    duplicate_of_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cases.id"))
    rating: Mapped[int | None] = mapped_column()
    reported_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    deadline_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    geom = mapped_column(_geom("POINT"), nullable=False)


class CaseEvent(Base):
    """One step of a case's history: who moved it from which state to which."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(sa.String(100))
    action: Mapped[str] = mapped_column(sa.String(30))
    from_status: Mapped[str | None] = mapped_column(sa.String(20))
    to_status: Mapped[str | None] = mapped_column(sa.String(20))
    note: Mapped[str | None] = mapped_column(sa.Text)


class User(Base):
    """A person who logs in; `scope` narrows what their role reaches (see migration 0005)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(20))
    scope: Mapped[str | None] = mapped_column(sa.String(100))
    display_name: Mapped[str | None] = mapped_column(sa.String(100))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class ApiKey(Base):
    """A system's key (hotline, Open311 client); only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(12))
    role: Mapped[str] = mapped_column(sa.String(20))
    scope: Mapped[str | None] = mapped_column(sa.String(100))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class AuditEntry(Base):
    """One write: who did what to which object, and what changed."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(sa.String(100))
    role: Mapped[str] = mapped_column(sa.String(20))
    action: Mapped[str] = mapped_column(sa.String(40))
    object_type: Mapped[str | None] = mapped_column(sa.String(20))
    object_id: Mapped[str | None] = mapped_column(sa.String(100))
    detail: Mapped[dict | None] = mapped_column(sa.JSON)


class IdempotencyKey(Base):
    """The stored answer to a POST sent with an Idempotency-Key."""

    __tablename__ = "idempotency_keys"

    client: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    method: Mapped[str] = mapped_column(sa.String(10))
    path: Mapped[str] = mapped_column(sa.String(500))
    request_sha256: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int | None] = mapped_column()
    content_type: Mapped[str | None] = mapped_column(sa.String(100))
    body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
