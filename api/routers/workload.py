"""Grid workload: components, score, share of the community mean and imbalance figures."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import SessionDep
from api.errors import invalid_parameter
from gis.db import plans_repo
from gis.workload import WorkloadWeights

router = APIRouter(prefix="/workload", tags=["workload"])


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


@router.get("", summary="Workload per grid and imbalance per community")
def read_workload(
    session: SessionDep,
    level: Annotated[str, Query(description="only 'grid' for now")] = "grid",
    parent: Annotated[
        str | None, Query(description="a district, street or community code to limit to")
    ] = None,
    low: Annotated[int, Query(ge=0, description="household band, lower end")] = 300,
    high: Annotated[int, Query(ge=1, description="household band, upper end")] = 500,
    half_life_days: Annotated[float, Query(gt=0, description="case-load half-life")] = 90.0,
) -> dict[str, Any]:
    """Each grid's households, population, cared-for residents, decayed case load, patrol
    length estimate, score and share of its community's mean score, plus per community
    the max deviation, range, coefficient of variation and grids outside the band."""
    if level != "grid":
        raise invalid_parameter("level", "only 'grid' is supported", value=level)
    if low >= high:
        raise invalid_parameter("high", "must be above low", value=high)
    weights = WorkloadWeights(half_life_days=half_life_days)
    per_grid, per_community = plans_repo.grid_workload(
        session, parent=parent, weights=weights, band=(low, high)
    )
    grids = [
        {"grid_code": code, **{k: _clean(v) for k, v in row.items()}}
        for code, row in per_grid.round(4).iterrows()
    ]
    communities = [
        {k: _clean(v) for k, v in row.items()} for row in per_community.to_dict("records")
    ]
    return {
        "weights": weights.to_dict(),
        "band": [low, high],
        "grids": grids,
        "communities": communities,
    }
