"""Log in: a username and password for a signed, expiring token; and who am I."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import issue_token, unauthorized
from api.deps import ActorDep, SettingsDep
from api.errors import invalid_parameter
from api.schemas import error_responses
from gis.db import users_repo
from gis.db.users_repo import Principal

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds the token is valid")
    expires_at: str


async def _credentials(request: Request) -> LoginIn:
    """username and password from a form (OAuth2 password flow) or a JSON body."""
    content_type = request.headers.get("content-type", "")
    raw = await request.body()
    if "json" in content_type:
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            raise invalid_parameter("body", "must be JSON", location="body") from None
        if not isinstance(data, dict):
            raise invalid_parameter("body", "must be a JSON object", location="body")
    else:
        try:
            data = {k: v[0] for k, v in parse_qs(raw.decode("utf-8")).items()}
        except UnicodeDecodeError:
            raise invalid_parameter("body", "must be UTF-8 form data", location="body") from None
    for name in ("username", "password"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise invalid_parameter(name, "is required", location="body")
        if len(value) > (64 if name == "username" else 1024):
            raise invalid_parameter(name, "is too long", location="body")
    return LoginIn(username=data["username"], password=data["password"])


async def verify_credentials(request: Request) -> Principal:
    """The active user named by the body's `username` and `password`: 400 when one is
    missing, 401 for a wrong password, an unknown or a disabled user alike. The token
    route and the browser login form (api/routers/login.py) both log in through here."""
    creds = await _credentials(request)

    def check():
        with request.app.state.sessions() as session, session.begin():
            return users_repo.authenticate(session, creds.username, creds.password)

    principal = await run_in_threadpool(check)
    if principal is None:
        raise unauthorized("wrong username or password, or the user is disabled")
    return principal


@router.post(
    "/token",
    summary="Log in: a bearer token for a username and password",
    response_model=TokenOut,
    responses=error_responses(400, 401),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "username": {"type": "string"},
                            "password": {"type": "string"},
                        },
                        "required": ["username", "password"],
                    }
                },
                "application/json": {"schema": LoginIn.model_json_schema()},
            },
            "required": True,
        }
    },
)
async def login(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Send `username` and `password` as a form (the OAuth2 password flow) or as JSON;
    the answer's `access_token` goes in `Authorization: Bearer <token>` and expires
    after `expires_in` seconds. A wrong password, an unknown or a disabled user all
    answer the same 401."""
    principal = await verify_credentials(request)
    return issue_token(settings, principal.name)


@router.get("/me", summary="Who the credentials sent make you")
def who_am_i(actor: ActorDep) -> dict[str, Any]:
    return {
        "role": actor.role,
        "name": actor.name,
        "scope": actor.scope,
        "grid_codes": list(actor.grid_codes),
    }
