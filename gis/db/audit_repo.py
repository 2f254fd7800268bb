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
    stmt = sa.select(AuditEntry).order_by(AuditEntry.id.desc())
    if action:
        stmt = stmt.where(AuditEntry.action.startswith(action))
    if object_type:
        stmt = stmt.where(AuditEntry.object_type == object_type)
    if object_id:
        stmt = stmt.where(AuditEntry.object_id == object_id)
    if since:
        stmt = stmt.where(AuditEntry.at >= since)
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "object_type": r.object_type,
            "object_id": r.object_id,
            "detail": r.detail,
        }
        for r in rows
    ]
