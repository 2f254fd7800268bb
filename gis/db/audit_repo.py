"""The audit log: every write leaves one row saying who did what to which object.

Callers record inside the transaction of the write itself, so a write and its
audit row commit or roll back together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gis.cases import Actor
from gis.db.models import AuditEntry


def record(
    session: Session,
    actor: Actor | None,
    action: str,
    object_type: str | None = None,
    object_id: str | int | None = None,
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Add an audit row for `action` (e.g. 'case.dispatch', 'import.areas', 'plan.apply')."""
    session.add(
        AuditEntry(
            at=at or datetime.now(UTC),
            actor=(actor.label if actor else "system"),
            role=(actor.role if actor else "system"),
            action=action,
            object_type=object_type,
            object_id=None if object_id is None else str(object_id),
            detail=detail,
        )
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _where(
    *,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    actor: str | None = None,
    role: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list:
    where = []
    if action:
        where.append(AuditEntry.action.startswith(action, autoescape=True))
    if object_type:
        where.append(AuditEntry.object_type == object_type)
    if object_id:
        where.append(AuditEntry.object_id == object_id)
    if actor:
        where.append(AuditEntry.actor == actor)
    if role:
        where.append(AuditEntry.role == role)
    if since:
        where.append(AuditEntry.at >= _utc(since))
    if until:
        where.append(AuditEntry.at < _utc(until))
    return where


def _to_dict(r: AuditEntry) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": _utc(r.at).isoformat(),
        "actor": r.actor,
        "role": r.role,
        "action": r.action,
        "object_type": r.object_type,
        "object_id": r.object_id,
        "detail": r.detail,
    }


def entries(
    session: Session,
    *,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Audit rows, newest first, optionally narrowed by action, object and time."""
    rows, _total = entries_page(
        session,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since=since,
        limit=limit,
        offset=offset,
    )
    return rows


def entries_page(
    session: Session, *, limit: int = 100, offset: int = 0, **filters: Any
) -> tuple[list[dict[str, Any]], int]:
    """Audit rows newest first and the number matching before paging. Filters: `action`
    (a prefix), `object_type`, `object_id`, `actor`, `role`, `since` (inclusive) and
    `until` (exclusive)."""
    where = _where(**filters)
    total = session.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(*where))
    stmt = sa.select(AuditEntry).where(*where).order_by(AuditEntry.id.desc())
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return [_to_dict(r) for r in rows], total
