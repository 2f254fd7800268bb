"""The case workflow as data: states, actions, who may take them, deadlines, duplicates.

Pure rules, no SQL: `gis.db.cases_repo` asks these functions what a step is allowed
to do and records the result. The closed loop of the seeds ("群众报单—网格员承单—
部门接单—限时办结反馈") is

    reported → dispatched → accepted → in_progress → resolved → evaluated → closed

with side steps: returned (the worker sends a case back for re-dispatch), escalated
(grid → community → street → the category's department, one level per step),
duplicate (of another case) and rejected (with a reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gis.errors import Conflict, Forbidden, InvalidInput

STATUSES = (
    "reported",
    "dispatched",
    "accepted",
    "in_progress",
    "resolved",
    "evaluated",
    "closed",
    "returned",
    "escalated",
    "duplicate",
    "rejected",
)
#: Statuses in which somebody still has to act on the problem: these can be overdue,
#: attract duplicates and are re-routed after a redraw.
OPEN_STATUSES = ("reported", "dispatched", "accepted", "in_progress", "returned", "escalated")
#: Statuses where the problem needs no more work (resolved waits only for a rating).
CLOSED_STATUSES = ("resolved", "evaluated", "closed", "duplicate", "rejected")

ROLES = (
    "anonymous",
    "resident",
    "worker",
    "dispatcher",
    "department",
    "planner",
    "admin",
    "system",
)
#: Roles whose scope is an area code (a district, street or community).
AREA_ROLES = ("planner", "dispatcher")
#: Roles that need a scope to mean anything: an area, a worker code, a department name.
SCOPED_ROLES = ("planner", "dispatcher", "worker", "department")

#: Escalation levels: 0 is the grid the case was routed to; each step goes one up.
ESCALATION_LEVELS = ("grid", "community", "street", "department")
TOP_LEVEL = len(ESCALATION_LEVELS) - 1


@dataclass(frozen=True)
class Step:
    """An action: the statuses it starts from, the status it leads to, who may take it."""

    sources: tuple[str, ...]
    target: str
    roles: tuple[str, ...]
    # The assigned worker (or one whose grids include the case's grid) may also take it.
    assigned_worker: bool = False


_EARLY = ("reported", "dispatched", "returned", "escalated")

#: action -> Step. Admin may do anything a person may do; "system" is the cron job.
ACTIONS: dict[str, Step] = {
    "dispatch": Step(("reported", "returned", "escalated"), "dispatched", ("dispatcher", "admin")),
    "accept": Step(("dispatched",), "accepted", ("dispatcher", "admin"), assigned_worker=True),
    "start": Step(("accepted",), "in_progress", ("dispatcher", "admin"), assigned_worker=True),
    "resolve": Step(
        ("accepted", "in_progress", "escalated"),
        "resolved",
        ("dispatcher", "department", "admin"),
        assigned_worker=True,
    ),
    "evaluate": Step(("resolved",), "evaluated", ("resident", "admin")),
    "close": Step(("resolved", "evaluated"), "closed", ("dispatcher", "admin", "system")),
    "return": Step(("dispatched", "accepted"), "returned", ("dispatcher", "admin"), True),
    "escalate": Step(
        ("reported", "dispatched", "accepted", "in_progress", "returned", "escalated"),
        "escalated",
        ("dispatcher", "admin", "system"),
        assigned_worker=True,
    ),
    "duplicate": Step(_EARLY, "duplicate", ("dispatcher", "admin")),
    "reject": Step(_EARLY, "rejected", ("dispatcher", "admin")),
}


class IllegalTransition(Conflict):
    """The action does not apply to the case's current status; `allowed` lists what does."""


@dataclass(frozen=True)
class Actor:
    """Who acts: a role, a name (a worker's code for workers), for workers their grids,
    and a scope: the area code a planner or dispatcher is limited to (a district,
    street or community; None for admins and the district-wide), or a department's
    name for the department role."""

    role: str
    name: str
    grid_codes: tuple = ()
    scope: str | None = None

    @property
    def label(self) -> str:
        return f"{self.role}:{self.name}" if self.name else self.role

    @property
    def worker_code(self) -> str | None:
        """The worker code a worker acts as: the scope, or the name (development headers)."""
        if self.role != "worker":
            return None
        return self.scope or self.name or None


def scope_kind(actor: Actor) -> str:
    """How far an actor's reach goes, as one word the repositories filter by.

    'all' (admin, the scheduler, and area or department roles given no scope, as the
    development headers do), 'area' (everything under one area code), 'grids' (a
    worker's own grids), 'categories' (a department's categories), 'own' (a resident's
    own reports) or 'none' (anonymous callers hold no private data at all).
    """
    role = actor.role
    if role in ("admin", "system"):
        return "all"
    if role in AREA_ROLES:
        return "area" if actor.scope else "all"
    if role == "department":
        return "categories" if actor.scope else "all"
    if role == "worker":
        return "grids"
    if role == "resident":
        return "own" if actor.name else "none"
    return "none"


SYSTEM = Actor("system", "wangge escalate")


def allowed_actions(status: str, escalation_level: int = 0) -> list[str]:
    """Actions that apply to a case in `status` (escalate stops at the department)."""
    out = [name for name, step in ACTIONS.items() if status in step.sources]
    if escalation_level >= TOP_LEVEL and "escalate" in out:
        out.remove("escalate")
    return out


def check_transition(
    action: str,
    status: str,
    escalation_level: int,
    actor: Actor,
    *,
    worker_code: str | None,
    grid_code: str | None,
) -> str:
    """The status `action` leads to, or raise IllegalTransition / Forbidden.

    The status is checked before the role, so a 409 lists what could be done at all.
    """
    step = ACTIONS.get(action)
    allowed = allowed_actions(status, escalation_level)
    if step is None:
        raise IllegalTransition(
            f"unknown action {action!r}; use one of {', '.join(ACTIONS)}",
            action=action,
            status=status,
            allowed=allowed,
        )
    if action not in allowed:
        why = (
            "the case is already at the department, the top escalation level"
            if action == "escalate" and status in step.sources
            else f"a {status} case cannot be {action}d"
        )
        raise IllegalTransition(
            f"{why}; allowed: {', '.join(allowed) or 'none'}",
            action=action,
            status=status,
            allowed=allowed,
        )
    if actor.role in step.roles:
        return step.target
    if (
        step.assigned_worker
        and actor.role == "worker"
        and _is_assigned(actor, worker_code, grid_code)
    ):
        return step.target
    who = list(step.roles) + (["the assigned worker"] if step.assigned_worker else [])
    raise Forbidden(
        f"{actor.role} {actor.name!r} may not {action} this case; it is for "
        + ", ".join(r for r in who if r != "system"),
        action=action,
        role=actor.role,
    )


def _is_assigned(actor: Actor, worker_code: str | None, grid_code: str | None) -> bool:
    if worker_code is not None and actor.worker_code == worker_code:
        return True
    return grid_code is not None and grid_code in actor.grid_codes


def deadline_after(start: datetime, deadline_h: float | None) -> datetime | None:
    """When a case started at `start` is due (None: the category sets no limit)."""
    if deadline_h is None:
        return None
    return start + timedelta(hours=float(deadline_h))


def is_overdue(status: str, deadline_at: datetime | None, now: datetime) -> bool:
    """Past its deadline and still waiting for work."""
    return status in OPEN_STATUSES and deadline_at is not None and deadline_at < now


def needs_escalation(
    status: str,
    escalation_level: int,
    deadline_at: datetime | None,
    escalated_for: datetime | None,
    now: datetime,
) -> bool:
    """Whether the automatic escalation should move a case up one level now.

    Idempotent by construction: a case is escalated at most once per deadline
    (`escalated_for` records the deadline it was escalated for), and escalation
    gives it a fresh deadline for the next level.
    """
    if not is_overdue(status, deadline_at, now) or escalation_level >= TOP_LEVEL:
        return False
    return escalated_for is None or escalated_for != deadline_at


def escalation_target(
    level: int, community_code: str | None, street_code: str | None, department: str | None
) -> str | None:
    """Who a case at escalation `level` sits with: an area code or the department's name."""
    return {
        0: None,
        1: community_code,
        2: street_code,
        3: department,
    }.get(level)


def check_rating(rating) -> int:
    """A resident's rating: a whole number 1–5."""
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise InvalidInput("rating must be a whole number from 1 to 5", field="rating")
    return rating


# Duplicate rule defaults (Settings may override): open, same category, near, recent.
DUPLICATE_RADIUS_M = 100.0
DUPLICATE_WINDOW_DAYS = 7
DUPLICATES_SHOWN = 5
NEAR_OUTSIDE_M = 50.0
DESCRIPTION_MAX = 4000
