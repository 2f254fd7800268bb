"""Boundary generations: list them, look one up, switch a staged one on."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import ActorDep, SessionDep
from api.schemas import GenerationOut, error_responses
from gis.db import repo

router = APIRouter(prefix="/generations", tags=["generations"])


def _out(generation) -> GenerationOut:
    """The generation with aware UTC times (SpatiaLite hands back naive UTC clocks)."""
    out = GenerationOut.model_validate(generation)
    aware = {
        name: value.replace(tzinfo=UTC)
        for name in ("created_at", "activated_at")
        if (value := getattr(out, name)) is not None and value.tzinfo is None
    }
    return out.model_copy(update=aware)


NameOrId = Annotated[
    str, Path(description="the generation's name or numeric id", examples=["initial"])
]


@router.get("", summary="List boundary generations", response_model=list[GenerationOut])
def list_generations(session: SessionDep) -> list[GenerationOut]:
    """Every generation, oldest first, with its status: exactly one is `active`;
    redraws wait as `staged`; replaced ones are `retired`."""
    return [_out(g) for g in repo.list_generations(session)]


@router.get(
    "/{name_or_id}",
    summary="One boundary generation",
    response_model=GenerationOut,
    responses=error_responses(404),
)
def read_generation(name_or_id: NameOrId, session: SessionDep) -> GenerationOut:
    """A generation by name or id; `active` names the active one."""
    return _out(repo.get_generation(session, name_or_id))


@router.post(
    "/{name_or_id}/activate",
    summary="Switch a generation on",
    response_model=GenerationOut,
    responses=error_responses(404, 409),
)
def activate_generation(
    name_or_id: NameOrId, session: SessionDep, actor: ActorDep
) -> GenerationOut:
    """Make a staged (or retired) generation the active one and retire the one that was.

    Lookups and new cases use the active generation from then on; cases already
    filed keep the generation and grid they were routed under. A generation
    without grids cannot be switched on (409); a planner may switch on only a
    generation whose areas all lie within their scope (403).
    """
    generation = repo.activate_generation(session, repo.get_generation(session, name_or_id), actor)
    session.commit()
    return _out(generation)
