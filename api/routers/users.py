"""Users and API keys, for admins: add, list, disable (each change audited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ActorDep, SessionDep
from api.schemas import error_responses
from gis.db import users_repo

router = APIRouter(tags=["users"])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=users_repo.PASSWORD_MIN, max_length=1024)
    role: str = Field(description=f"one of {', '.join(users_repo.ACCOUNT_ROLES)}")
    scope: str | None = Field(
        None,
        max_length=100,
        description="planner: district or street code; dispatcher: community or street "
        "code; worker: worker code; department: department name",
    )
    display_name: str | None = Field(None, max_length=100)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: str = Field(description=f"one of {', '.join(users_repo.ACCOUNT_ROLES)}")
    scope: str | None = Field(None, max_length=100)


def _forget(request: Request, kind: str, name: str) -> None:
    cache = getattr(request.app.state, "principal_cache", None)
    if cache is not None:
        cache.forget(kind, name)


@router.get("/users", summary="List users")
def list_users(session: SessionDep) -> list[dict[str, Any]]:
    return users_repo.list_users(session)


@router.post("/users", summary="Add a user", status_code=201, responses=error_responses(400, 409))
def add_user(body: UserIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    with session.begin():
        return users_repo.add_user(
            session,
            body.username,
            body.password,
            body.role,
            scope=body.scope,
            display_name=body.display_name,
            actor=actor,
        )


@router.post("/users/{username}/disable", summary="Disable a user", responses=error_responses(404))
def disable_user(
    username: str, request: Request, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """The user can no longer log in, and their tokens stop working."""
    with session.begin():
        out = users_repo.disable_user(session, username, actor=actor)
    _forget(request, "user", username)
    return out


@router.get("/apikeys", summary="List API keys (never the keys themselves)")
def list_api_keys(session: SessionDep) -> list[dict[str, Any]]:
    return users_repo.list_api_keys(session)


@router.post(
    "/apikeys", summary="Add an API key", status_code=201, responses=error_responses(400, 409)
)
def add_api_key(body: ApiKeyIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """The answer's `key` is shown this once; only its SHA-256 is stored."""
    with session.begin():
        record, key = users_repo.add_api_key(
            session, body.name, body.role, scope=body.scope, actor=actor
        )
    return {**record, "key": key}


@router.post(
    "/apikeys/{name}/disable", summary="Disable an API key", responses=error_responses(404)
)
def disable_api_key(
    name: str, request: Request, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    with session.begin():
        out = users_repo.disable_api_key(session, name, actor=actor)
    _forget(request, "apikey", name)
    return out
