"""Who is calling: a signed token, an API key, or nobody (anonymous).

Tokens are JWTs (HS256, `settings.secret_key`) naming the user and an expiry; the
user's role, scope and `active` flag are read from the store when a token is
checked, not trusted from the token, so a disabled user's token stops working and a
changed scope applies at once. To spare one query per request, each process keeps
what it looked up for `settings.auth_cache_s` seconds (default 5 s; disabling
through this process clears the entry at once, other processes notice within that
time). API keys (`X-API-Key`) are looked up by their SHA-256 the same way.

The X-Wangge-Role / X-Wangge-User headers are honoured only with the development
setting `dev_role_headers`, which production refuses.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException

from api.settings import Settings
from gis.cases import ROLES, Actor
from gis.db import users_repo
from gis.db.users_repo import Principal

log = logging.getLogger("wangge.auth")

ALGORITHM = "HS256"
ANONYMOUS = Actor("anonymous", "")
#: Roles the development headers may claim (the scheduler's "system" is not one).
HEADER_ROLES = tuple(r for r in ROLES if r != "system")


def unauthorized(message: str) -> HTTPException:
    """401 in the common error shape, with the challenge RFC 6750 asks for."""
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def issue_token(settings: Settings, username: str, *, now: datetime | None = None) -> dict:
    """A signed token for `username`, valid `settings.token_expiry_s` seconds."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=settings.token_expiry_s)
    claims = {"sub": username, "iat": now, "exp": expires, "typ": "access"}
    token = jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": int(settings.token_expiry_s),
        "expires_at": expires.isoformat(),
    }


def token_subject(settings: Settings, token: str) -> str:
    """The username a token names, or 401 if it is forged, malformed or expired."""
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("the token has expired; log in again") from None
    except jwt.InvalidTokenError:
        raise unauthorized("the token is not valid") from None
    if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
        raise unauthorized("the token is not valid")
    return claims["sub"]


class PrincipalCache:
    """Looked-up users and keys, kept for a few seconds per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, key: tuple[str, str], ttl_s: float) -> Any:
        if ttl_s <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
        if item is None or time.monotonic() - item[0] > ttl_s:
            return None
        return item[1]

    def put(self, key: tuple[str, str], value: Any) -> None:
        with self._lock:
            if len(self._items) > 10_000:  # a flood of bad keys must not grow it forever
                self._items.clear()
            self._items[key] = (time.monotonic(), value)

    def forget(self, kind: str, name: str) -> None:
        with self._lock:
            for key in [k for k, (_, v) in self._items.items() if _names(k, v, kind, name)]:
                del self._items[key]


def _names(key: tuple[str, str], value: Any, kind: str, name: str) -> bool:
    if key[0] != kind:
        return False
    if kind == "user":
        return key[1] == name
    return value is not None and value[0].name == f"key:{name}"


def _worker_grids(session: Session, principal: Principal) -> tuple[str, ...]:
    if principal.role != "worker" or not principal.scope:
        return ()
    from gis.db.cases_repo import worker_grid_codes

    return worker_grid_codes(session, principal.scope)


def _lookup(
    sessions: sessionmaker[Session], cache: PrincipalCache, settings: Settings, kind: str, key: str
) -> tuple[Principal, tuple[str, ...]] | None:
    """(principal, worker grids) for a username or an API key, through the cache."""
    cache_key = (kind, key if kind == "user" else users_repo.key_digest(key))
    hit = cache.get(cache_key, settings.auth_cache_s)
    if hit is not None:
        return hit
    with sessions() as session:
        if kind == "user":
            principal = users_repo.find_user(session, key)
        else:
            principal = users_repo.find_api_key(session, key)
        found = None if principal is None else (principal, _worker_grids(session, principal))
    if found is not None:
        cache.put(cache_key, found)
        if kind == "apikey" and found[0].active:
            note_key_use(sessions, key)  # on a cache miss: at most every auth_cache_s
    return found


def note_key_use(sessions: sessionmaker[Session], key: str) -> None:
    """Keep an API key's last_used_at (to the minute), in a transaction of its own."""
    try:
        with sessions() as session, session.begin():
            users_repo.mark_api_key_used(session, key)
    except sa.exc.SQLAlchemyError as exc:  # bookkeeping: never the reason a request fails
        log.warning("could not note the use of an API key: %s", exc)


def resolve_actor(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    cache: PrincipalCache,
    authorization: str | None,
    api_key: str | None,
    role_header: str | None,
    user_header: str | None,
) -> Actor:
    """The caller from the request's credentials (blocking: run it in a thread).

    A bearer token or an API key that does not check out is a 401, never a quiet
    downgrade to anonymous, so a client notices its expired token.
    """
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'")
        username = token_subject(settings, token.strip())
        found = _lookup(sessions, cache, settings, "user", username)
        if found is None or not found[0].active:
            raise unauthorized("the token's user is unknown or disabled")
        return found[0].actor(found[1])
    if api_key:
        found = _lookup(sessions, cache, settings, "apikey", api_key.strip())
        if found is None or not found[0].active:
            raise unauthorized("the API key is unknown or disabled")
        return found[0].actor(found[1])
    if settings.dev_role_headers:
        return _header_actor(settings, sessions, role_header, user_header)
    return ANONYMOUS


def _header_actor(
    settings: Settings,
    sessions: sessionmaker[Session],
    role_header: str | None,
    user_header: str | None,
) -> Actor:
    """The development stand-in: the role and name the headers claim."""
    from api.errors import invalid_parameter

    role = (role_header or settings.dev_default_role).strip().lower()
    if role not in HEADER_ROLES:
        raise invalid_parameter(
            "X-Wangge-Role",
            f"must be one of {', '.join(HEADER_ROLES)}",
            location="header",
            value=role_header,
        )
    name = (user_header or "").strip()
    if role == "worker" and name:
        from gis.db.cases_repo import worker_grid_codes

        with sessions() as session:
            grids = worker_grid_codes(session, name)
        return Actor(role=role, name=name, grid_codes=grids, scope=name)
    return Actor(role=role, name=name)
