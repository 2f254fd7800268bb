"""Grid workload: a weighted score per building and per grid, and imbalance figures.

Pure: arrays and frames in, frames and dicts out. A grid's score is

    households·w_h + population·w_p + cared residents·w_c + case load·w_case
    + patrol length (km)·w_patrol

Case load is each case's category workload weight, halved every `half_life_days`
of age, so recent months count more. Everything but patrol length is a sum over
buildings (a case counts for the building nearest to it), so the balancer can move
it with the building; patrol length is estimated per grid from its area and its
building count (Beardwood–Halton–Hammersley: a tour through n points spread over
an area A is about 0.7124·√(n·A)) and is reported, not optimised.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

BHH_CONSTANT = 0.7124
HOUSEHOLD_BAND = (300, 500)


@dataclass(frozen=True)
class WorkloadWeights:
    """Weights of the workload score, in household-equivalents; configurable per district."""

    households: float = 1.0
    population: float = 0.0  # correlated with households; raise it where flats are crowded
    cared: float = 3.0  # a cared-for resident needs regular visits
    case: float = 2.0  # per weighted case of the last year
    patrol_km: float = 10.0
    half_life_days: float = 90.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> WorkloadWeights:
        data = data or {}
        return cls(**{k: float(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def decay_case_weights(
    category_weights: np.ndarray, age_days: np.ndarray, half_life_days: float
) -> np.ndarray:
    """Each case's workload weight halved per half-life of age (future dates count fully)."""
    age = np.clip(np.asarray(age_days, dtype=float), 0.0, None)
    return np.asarray(category_weights, dtype=float) * np.exp2(-age / half_life_days)


def attribute_cases_to_buildings(
    case_xy_m: np.ndarray, building_xy_m: np.ndarray, case_weights: np.ndarray
) -> np.ndarray:
    """Case load per building: each case counts for the building nearest to it (metres)."""
    load = np.zeros(len(building_xy_m))
    if len(case_xy_m) == 0 or len(building_xy_m) == 0:
        return load
    _dist, nearest = cKDTree(building_xy_m).query(case_xy_m)
    np.add.at(load, nearest, case_weights)
    return load


def score_buildings(
    households: np.ndarray,
    population: np.ndarray,
    cared: np.ndarray,
    case_load: np.ndarray,
    weights: WorkloadWeights,
) -> np.ndarray:
    """The part of the workload score that moves with a building."""
    return (
        weights.households * np.asarray(households, dtype=float)
        + weights.population * np.asarray(population, dtype=float)
        + weights.cared * np.asarray(cared, dtype=float)
        + weights.case * np.asarray(case_load, dtype=float)
    )


def estimate_patrol_km(area_m2: np.ndarray, n_buildings: np.ndarray) -> np.ndarray:
    """Length of a patrol past every building of a grid, in km (BHH estimate)."""
    return BHH_CONSTANT * np.sqrt(np.asarray(n_buildings) * np.asarray(area_m2)) / 1000.0


def measure_workload(
    buildings: pd.DataFrame,
    grid_area_m2: pd.Series,
    grid_community: pd.Series,
    weights: WorkloadWeights = WorkloadWeights(),
    band: tuple[int, int] = HOUSEHOLD_BAND,
) -> pd.DataFrame:
    """Per grid: components, score, share of its community's mean, deviation, in band.

    `buildings` needs grid_code, households, population, cared, case_load;
    `grid_area_m2` and `grid_community` are indexed by grid code.
    """
    grouped = buildings.groupby("grid_code")[["households", "population", "cared", "case_load"]]
    out = grouped.sum().reindex(grid_area_m2.index, fill_value=0)
    out["buildings"] = buildings.groupby("grid_code").size().reindex(out.index, fill_value=0)
    out["area_m2"] = grid_area_m2
    out["patrol_km"] = estimate_patrol_km(out["area_m2"], out["buildings"])
    out["community_code"] = grid_community.reindex(out.index)
    out["score"] = (
        score_buildings(
            out["households"], out["population"], out["cared"], out["case_load"], weights
        )
        + weights.patrol_km * out["patrol_km"]
    )
    mean = out.groupby("community_code")["score"].transform("mean")
    out["share_of_mean"] = np.where(mean > 0, out["score"] / mean, np.nan)
    out["deviation"] = out["share_of_mean"] - 1.0
    low, high = band
    out["in_band"] = (out["households"] >= low) & (out["households"] <= high)
    out.index.name = "grid_code"
    return out


def summarise_imbalance(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Max deviation from the mean (as a share), range and coefficient of variation."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or v.mean() == 0:
        return {"max_deviation": 0.0, "range": 0.0, "cv": 0.0}
    mean = v.mean()
    return {
        "max_deviation": round(float(np.abs(v / mean - 1).max()), 4),
        "range": round(float(v.max() - v.min()), 2),
        "cv": round(float(v.std() / mean), 4),
    }


def summarise_communities(grid_workload: pd.DataFrame) -> pd.DataFrame:
    """Per community: grid count, households, imbalance of score and households, out of band."""
    rows = []
    for code, part in grid_workload.groupby("community_code"):
        score = summarise_imbalance(part["score"])
        hh = summarise_imbalance(part["households"])
        rows.append(
            {
                "community_code": code,
                "grids": len(part),
                "households": int(part["households"].sum()),
                "score_mean": round(float(part["score"].mean()), 2),
                "score_max_deviation": score["max_deviation"],
                "score_range": score["range"],
                "score_cv": score["cv"],
                "households_cv": hh["cv"],
                "outside_band": int((~part["in_band"]).sum()),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ workers after a redraw


def plan_staffing(
    old_grids: Sequence[str],
    new_grids: Sequence[str],
    owners: Mapping[str, Sequence[str]],
    flows: Mapping[tuple[str, str], float],
    neighbours: Mapping[str, Collection[str]],
    grid_households: Mapping[str, float],
) -> tuple[list[dict], dict[str, list[str]]]:
    """What happens to grid workers when a redraw retires grids or adds new ones.

    The rules, applied per community (split and merge are the two common cases):

    - A grid whose code survives keeps its workers.
    - A retired grid (merged away, or dropped from an uploaded layer) hands its
      buildings to a *successor*: the new-map grid that receives most of its
      households. If the successor has no worker, the retired grid's workers go with
      their buildings; otherwise they are *released* (they keep any other grids and
      are listed, so the community can give them new work).
    - A new grid (from a split, or a new code in an uploaded layer) that inherits no
      worker *needs a worker*. It is proposed to the worker of a touching grid with
      the lightest load (households over all the grids they hold after the redraw;
      ties by worker code); an apply leaves it unassigned unless told to take the
      proposal.

    `owners` maps grid code to worker codes before the redraw (any grids);
    `flows[(old, new)]` is households moving from an old grid to a new one, including
    those that stay (old == new); `neighbours` maps each new grid to the new grids it
    shares an edge with; `grid_households` is households per grid after the redraw.
    Returns the list of changes and the owners afterwards of every grid involved
    (a retired grid maps to no one).
    """
    old_set, new_set = set(old_grids), set(new_grids)
    after: dict[str, list[str]] = {g: list(owners.get(g, ())) for g in new_set}
    changes: list[dict] = []
    for grid in sorted(old_set - new_set):
        out = {n: h for (o, n), h in flows.items() if o == grid and n in new_set}
        successor = (
            min(out, key=lambda n: (-out[n], n)) if out else None
        )  # most households, then the lowest code
        workers = list(owners.get(grid, ()))
        inherits = bool(workers) and successor is not None and not after[successor]
        if inherits:
            after[successor] = workers
        changes.append(
            {
                "grid": grid,
                "change": "retired",
                "successor": successor,
                "workers": workers,
                "workers_go_to": successor if inherits else None,
                "workers_released": [] if inherits else workers,
            }
        )
        after[grid] = []
    held: dict[str, set[str]] = {}
    for grid, workers in owners.items():
        if grid in old_set - new_set:
            continue
        for w in workers:
            held.setdefault(w, set()).add(grid)
    for grid in new_set:
        for w in after.get(grid, ()):
            held.setdefault(w, set()).add(grid)
    load = {w: float(sum(grid_households.get(g, 0.0) for g in gs)) for w, gs in held.items()}
    for grid in sorted(new_set - old_set):
        workers = after[grid]
        item: dict = {
            "grid": grid,
            "change": "new",
            "households": float(grid_households.get(grid, 0.0)),
            "workers": workers,
            "needs_worker": not workers,
            "proposed_worker": None,
            "proposed_worker_load": None,
        }
        if not workers:
            nearby = {w for n in neighbours.get(grid, ()) for w in after.get(n, ())}
            if nearby:
                best = min(nearby, key=lambda w: (load.get(w, 0.0), w))
                item["proposed_worker"] = best
                item["proposed_worker_load"] = load.get(best, 0.0)
        changes.append(item)
    return changes, after
