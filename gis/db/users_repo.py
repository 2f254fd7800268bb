"""Users and API keys: create, list, disable, and check a password or a key.

Passwords are stored as argon2id hashes (argon2-cffi); API keys only as their
SHA-256, with a short prefix kept for people to tell keys apart. Every change is
audited in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.orm import Session

from gis.cases import AREA_ROLES, ROLES, SCOPED_ROLES, Actor
from gis.db import audit_repo
from gis.db.models import ApiKey, Area, User, Worker
from gis.errors import Conflict, InvalidInput, NotFound

#: Roles a person or a system may hold ("system" is the scheduler's own).
ACCOUNT_ROLES = tuple(r for r in ROLES if r not in ("system", "anonymous"))
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PASSWORD_MIN = 8
KEY_PREFIX = "wgk_"

_hasher = PasswordHasher()
# Verifying against this when the user does not exist costs the same time as a real
# check, so a login's timing does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash("wangge-no-such-user")


@dataclass(frozen=True)
class Principal:
    """A user or API key as looked up: enough to build an `Actor`."""

    kind: str  # 'user' or 'apikey'
    name: str
    role: str
    scope: str | None
    active: bool

    def actor(self, grid_codes: tuple[str, ...] = ()) -> Actor:
        return Actor(role=self.role, name=self.name, grid_codes=grid_codes, scope=self.scope)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _check_role_scope(session: Session, role: str, scope: str | None) -> str | None:
    """The scope a role needs, checked against the store; errors name the field."""
    if role not in ACCOUNT_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ACCOUNT_ROLES)}", field="role")
    scope = (scope or "").strip() or None
    if role not in SCOPED_ROLES:
        if scope is not None:
            raise InvalidInput(f"a {role} has no scope", field="scope")
        return None
    if scope is None:
        what = {
            "worker": "a worker code",
            "department": "a department name",
        }.get(role, "an area code (district, street or community)")
        raise InvalidInput(f"a {role} needs a scope: {what}", field="scope")
    if role in AREA_ROLES:
        level = session.scalar(sa.select(Area.level).where(Area.code == scope).limit(1))
        if level is None:
            raise InvalidInput(f"no area {scope!r} is stored", field="scope")
        allowed = ("district", "street") if role == "planner" else ("community", "street")
        if level not in allowed:
            raise InvalidInput(
                f"a {role}'s scope must be a {' or '.join(allowed)} (got a {level})",
                field="scope",
            )
    elif role == "worker":
        if session.scalar(sa.select(Worker.id).where(Worker.code == scope)) is None:
            raise InvalidInput(f"no worker {scope!r} is stored", field="scope")
    return scope


def add_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    *,
    scope: str | None = None,
    display_name: str | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Create a user with an argon2 password hash; Conflict if the name is taken."""
    if not USERNAME_RE.match(username or ""):
        raise InvalidInput("username must be 1-64 letters, digits or . _ @ -", field="username")
    if len(password or "") < PASSWORD_MIN:
        raise InvalidInput(f"password must be at least {PASSWORD_MIN} characters", field="password")
    scope = _check_role_scope(session, role, scope)
    if session.scalar(sa.select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} exists", username=username)
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        scope=scope,
        display_name=display_name,
        active=True,
        created_at=datetime.now(UTC),
    )
    session.add(user)
    session.flush()
    audit_repo.record(session, actor, "user.add", "user", username, {"role": role, "scope": scope})
    return user_to_dict(user)


def user_to_dict(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "scope": user.scope,
        "display_name": user.display_name,
        "active": user.active,
        "created_at": _iso(user.created_at),
        "disabled_at": _iso(user.disabled_at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def list_users(session: Session) -> list[dict[str, Any]]:
    return [user_to_dict(u) for u in session.scalars(sa.select(User).order_by(User.username))]


def disable_user(session: Session, username: str, *, actor: Actor | None = None) -> dict:
    """Switch a user off: their tokens stop working (see `api.auth`)."""
    user = session.scalars(sa.select(User).where(User.username == username)).first()
    if user is None:
        raise NotFound(f"no user {username!r}", username=username)
    if user.active:
        user.active = False
        user.disabled_at = datetime.now(UTC)
        audit_repo.record(session, actor, "user.disable", "user", username)
        session.flush()
    return user_to_dict(user)


def authenticate(session: Session, username: str, password: str) -> Principal | None:
    """The active user with this password, or None (same answer for every failure)."""
    user = session.scalars(sa.select(User).where(User.username == username)).first()
    stored = user.password_hash if user is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return Principal("user", user.username, user.role, user.scope, user.active)


def find_user(session: Session, username: str) -> Principal | None:
    user = session.scalars(sa.select(User).where(User.username == username)).first()
    if user is None:
        return None
    return Principal("user", user.username, user.role, user.scope, user.active)


# ------------------------------------------------------------------ API keys


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def add_api_key(
    session: Session,
    name: str,
    role: str,
    *,
    scope: str | None = None,
    actor: Actor | None = None,
) -> tuple[dict[str, Any], str]:
    """Create a key for a system; returns (its record, the key). The key itself is shown
    this once and never stored."""
    if not USERNAME_RE.match(name or ""):
        raise InvalidInput("name must be 1-64 letters, digits or . _ @ -", field="name")
    scope = _check_role_scope(session, role, scope)
    if session.scalar(sa.select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"API key {name!r} exists", name=name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        key_sha256=key_digest(key),
        prefix=key[:12],
        role=role,
        scope=scope,
        active=True,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    audit_repo.record(session, actor, "apikey.add", "apikey", name, {"role": role, "scope": scope})
    return api_key_to_dict(row), key


def api_key_to_dict(row: ApiKey) -> dict[str, Any]:
    return {
        "name": row.name,
        "prefix": row.prefix,
        "role": row.role,
        "scope": row.scope,
        "active": row.active,
        "created_at": _iso(row.created_at),
        "last_used_at": _iso(row.last_used_at),
    }


def list_api_keys(session: Session) -> list[dict[str, Any]]:
    return [api_key_to_dict(k) for k in session.scalars(sa.select(ApiKey).order_by(ApiKey.name))]


def disable_api_key(session: Session, name: str, *, actor: Actor | None = None) -> dict:
    row = session.scalars(sa.select(ApiKey).where(ApiKey.name == name)).first()
    if row is None:
        raise NotFound(f"no API key {name!r}", name=name)
    if row.active:
        row.active = False
        audit_repo.record(session, actor, "apikey.disable", "apikey", name)
        session.flush()
    return api_key_to_dict(row)


#: last_used_at is written at most this often per key (a write per request would not do).
KEY_USE_RESOLUTION = timedelta(minutes=1)


def mark_api_key_used(session: Session, key: str, *, now: datetime | None = None) -> bool:
    """Record that `key` was used now, unless it was within the last minute already.
    True when a row was written."""
    now = now or datetime.now(UTC)
    done = session.execute(
        sa.update(ApiKey)
        .where(
            ApiKey.key_sha256 == key_digest(key),
            sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - KEY_USE_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def find_api_key(session: Session, key: str) -> Principal | None:
    """The key's principal (active or not) by its SHA-256, or None."""
    row = session.scalars(sa.select(ApiKey).where(ApiKey.key_sha256 == key_digest(key))).first()
    if row is None:
        return None
    return Principal("apikey", f"key:{row.name}", row.role, row.scope, row.active)
