"""Cases in the stores: online routing = bulk routing, the workflow, duplicates, escalation,
re-routing. Every database test runs on SpatiaLite and on PostGIS.

The district, drawn in lon/lat (grid codes are community 210102001001 + the digits):

          123.40      123.41      123.42
    41.81  +-----------+-----------+
           |    001    |    002    |      workers: W1 owns 001, W2 owns 002,
           |           |           |               W3 owns 003; 004 has none
    41.805 +-----------*-----------+      * (123.41, 41.805): vertex of all four
           |    003    |    004    |
           |           |           |
    41.80  +-----------+-----------+

The community is the whole square, in street 210102001, in district 210102.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import box

from gis import cases as rules
from gis.assign import assign_points
from gis.cases import Actor, IllegalTransition
from gis.db import cases_repo, repo
from gis.db.models import Case, CaseEvent
from gis.errors import Forbidden, InvalidInput, NotFound
from gis.routing import route_points

DISTRICT, STREET, COMMUNITY = "210102", "210102001", "210102001001"
G1, G2, G3, G4 = (f"{COMMUNITY}{i:03d}" for i in range(1, 5))
WEST, MID, EAST = 123.40, 123.41, 123.42
SOUTH, MIDDLE, NORTH = 41.80, 41.805, 41.81
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CATEGORY = "0101"  # 暴露垃圾, 24 h, 城市管理局
OTHER_CATEGORY = "0102"
DEG_LAT_M = 111_195.0  # metres per degree of latitude, near enough for test offsets

ADMIN = Actor("admin", "root")
DISPATCHER = Actor("dispatcher", "d1")
RESIDENT = Actor("resident", "r1")  # files every case of file_case
STRANGER = Actor("resident", "r2")  # filed none of them


def hierarchy(grids, *, community_box=(WEST, SOUTH, EAST, NORTH)) -> gpd.GeoDataFrame:
    rows = [
        {"code": DISTRICT, "name": "和平区", "level": "district", "parent_code": None,
         "geometry": box(123.30, 41.70, 123.50, 41.90)},
        {"code": STREET, "name": "太原街街道", "level": "street", "parent_code": DISTRICT,
         "geometry": box(123.38, 41.78, 123.44, 41.83)},
        {"code": COMMUNITY, "name": "南京社区", "level": "community", "parent_code": STREET,
         "geometry": box(*community_box)},
    ]  # fmt: skip
    for code, bounds in grids:
        rows.append(
            {"code": code, "name": f"网格{code[-3:]}", "level": "grid",
             "parent_code": COMMUNITY, "geometry": box(*bounds)}
        )  # fmt: skip
    return gpd.GeoDataFrame(rows, crs=4326)


FOUR_GRIDS = [
    (G1, (WEST, MIDDLE, MID, NORTH)),
    (G2, (MID, MIDDLE, EAST, NORTH)),
    (G3, (WEST, SOUTH, MID, MIDDLE)),
    (G4, (MID, SOUTH, EAST, MIDDLE)),
]


def load_generation(session, name, grids, activate=True):
    gen = repo.create_generation(session, name)
    repo.write_areas(session, hierarchy(grids), gen)
    if activate:
        repo.activate_generation(session, gen)
    return gen


@pytest.fixture
def district(store):
    """The four-grid district, its workers and the category tree, in a fresh store."""
    with store.session() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, "initial", FOUR_GRIDS)
        repo.write_workers(
            s,
            pd.DataFrame(
                [
                    {"code": "W1", "name": "张一", "grid_codes": G1},
                    {"code": "W2", "name": "王二", "grid_codes": G2},
                    {"code": "W3", "name": "李三", "grid_codes": G3},
                    {"code": "W9", "name": "赵九", "grid_codes": ""},
                ]
            ),
        )
    return store


def file_case(store, lon=123.405, lat=41.807, *, category=CATEGORY, now=T0, **kw) -> dict:
    with store.session() as s, s.begin():
        return cases_repo.create_case(
            s,
            category_code=category,
            lon=lon,
            lat=lat,
            description=kw.pop("description", "垃圾"),
            source=kw.pop("source", "resident"),
            reporter_user=kw.pop("reporter_user", RESIDENT.name),
            now=now,
            **kw,
        )


def step(store, ref, action, actor=ADMIN, **kw) -> dict:
    with store.session() as s, s.begin():
        return cases_repo.transition(s, ref, action, actor, now=kw.pop("now", T0), **kw)


def force(store, case_id, **values) -> None:
    """Put a case straight into a state (status, level) to test one step from there."""
    with store.session() as s, s.begin():
        s.execute(sa.update(Case).where(Case.id == case_id).values(**values))


def count(store, model) -> int:
    with store.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model))


# ------------------------------------------------------------------- routing

# (name, lon, lat, expected grid, expected flag)
ROUTING_POINTS = [
    ("interior 001", 123.405, 41.808, G1, "inside"),
    ("interior 004", 123.415, 41.802, G4, "inside"),
    ("edge 001|002", MID, 41.808, G1, "edge_rule"),
    ("edge 002|004", 123.415, MIDDLE, G2, "edge_rule"),
    ("edge 003|004", MID, 41.802, G3, "edge_rule"),
    ("vertex of all four", MID, MIDDLE, G1, "edge_rule"),
    ("outer edge of 004 only", EAST, 41.802, G4, "inside"),
    ("outer corner of 004", EAST, SOUTH, G4, "inside"),
    ("20 m south of 003", 123.405, SOUTH - 20 / DEG_LAT_M, G3, "near_outside"),
    ("40 m north of 002", 123.415, NORTH + 40 / DEG_LAT_M, G2, "near_outside"),
    ("200 m south", 123.405, SOUTH - 200 / DEG_LAT_M, None, "unrouted"),
    ("far away", 124.0, 42.0, None, "unrouted"),
]


def test_online_routing_equals_bulk_on_edges_vertices_and_outside(district):
    """create_case (indexed SQL) and gis.routing / gis.assign give the same grid and flag."""
    xy = np.array([(p[1], p[2]) for p in ROUTING_POINTS])
    grids = hierarchy(FOUR_GRIDS).query("level == 'grid'")
    bulk = route_points(xy, grids.geometry.values, grids["code"].to_numpy(), near_m=50.0)
    covered = assign_points(
        gpd.points_from_xy(xy[:, 0], xy[:, 1]), grids.geometry.values, grids["code"].to_numpy()
    )
    codes = grids["code"].to_numpy()
    for k, (name, lon, lat, grid, flag) in enumerate(ROUTING_POINTS):
        online = file_case(district, lon, lat)
        bulk_code = codes[bulk.index[k]] if bulk.index[k] >= 0 else None
        assert (online["grid_code"], online["route_flag"]) == (grid, flag), name
        assert (bulk_code, bulk.flag[k]) == (grid, flag), name
        if flag in ("inside", "edge_rule"):
            assert covered[k] == grid, name
        else:
            assert covered[k] is None, name


def test_intake_sets_chain_worker_deadline_and_report_event(district):
    case = file_case(district, 123.405, 41.808, reporter_name="刘", reporter_phone="139")
    assert case["code"].startswith("C20261102-")
    assert (case["grid_code"], case["community_code"], case["street_code"]) == (
        G1,
        COMMUNITY,
        STREET,
    )
    assert (case["worker_code"], case["worker_name"]) == ("W1", "张一")
    assert case["deadline_at"] == (T0 + timedelta(hours=24)).isoformat()
    assert case["status"] == "reported" and case["category_name"] == "暴露垃圾"
    assert (case["lon"], case["lat"]) == (123.405, 41.808)
    assert case["reporter_phone"] == "139"
    assert case["possible_duplicates"] == []
    with district.session() as s:
        history = cases_repo.case_history(s, case["id"])
        again = cases_repo.get_case(s, case["code"])
    assert [(h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("report", None, "reported")
    ]
    assert again["id"] == case["id"]


def test_unrouted_case_waits_for_a_dispatcher(district):
    case = file_case(district, 124.0, 42.0)
    assert (case["grid_code"], case["worker_code"], case["route_flag"]) == (
        None,
        None,
        "unrouted",
    )
    file_case(district)  # routed: not in the queue
    with district.session() as s:
        queue, total = cases_repo.list_cases(s, status="reported", route_flag="unrouted")
    assert total == 1 and queue[0]["route_flag"] == "unrouted"
    with pytest.raises(InvalidInput) as err:
        step(district, case["id"], "dispatch", DISPATCHER)
    assert err.value.detail["field"] == "worker_code"
    done = step(district, case["id"], "dispatch", DISPATCHER, worker_code="W9")
    assert (done["status"], done["worker_code"]) == ("dispatched", "W9")


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("category", {"category": "9999"}),
        ("category", {"category": "01"}),  # a class, not a subclass
        ("lat", {"lat": 91.0}),
        ("lon", {"lon": "123.4"}),
        ("lon", {"lon": float("nan")}),
        ("description", {"description": "x" * 4001}),
        ("source", {"source": "pigeon"}),
    ],
)
def test_bad_intake_names_the_field_and_writes_nothing(district, field, kwargs):
    with pytest.raises(InvalidInput) as err:
        file_case(district, **kwargs)
    assert err.value.detail["field"] == field
    assert count(district, Case) == 0 and count(district, CaseEvent) == 0


def test_case_lookup_by_unknown_ref_is_not_found(district):
    with district.session() as s, pytest.raises(NotFound):
        cases_repo.get_case(s, 12345)


# ------------------------------------------------------------------ workflow


def _params(action: str, other_id: int) -> dict:
    """The parameters each action needs to succeed when it is legal."""
    return {
        "dispatch": {"worker_code": "W1"},
        "evaluate": {"rating": 4},
        "duplicate": {"duplicate_of": other_id},
        "reject": {"reason": "不属于网格事项"},
    }.get(action, {})


@pytest.mark.parametrize("action", list(rules.ACTIONS))
def test_every_status_action_pair_is_legal_or_409(district, action):
    """For one action, try it from every status: legal pairs move, illegal ones list the
    allowed actions; the event history grows only on legal ones."""
    other = file_case(district, 123.405, 41.802)
    for status in rules.STATUSES:
        case = file_case(district)
        force(district, case["id"], status=status)
        allowed = rules.allowed_actions(status)
        events_before = count(district, CaseEvent)
        if action in allowed:
            after = step(district, case["id"], action, **_params(action, other["id"]))
            assert after["status"] == rules.ACTIONS[action].target, (status, action)
            with district.session() as s:
                last = cases_repo.case_history(s, case["id"])[-1]
            assert (last["action"], last["from_status"], last["to_status"]) == (
                action,
                status,
                after["status"],
            )
            assert last["actor"] == "admin:root"
        else:
            with pytest.raises(IllegalTransition) as err:
                step(district, case["id"], action, **_params(action, other["id"]))
            assert err.value.detail["allowed"] == allowed, (status, action)
            assert count(district, CaseEvent) == events_before
            with district.session() as s:
                assert cases_repo.get_case(s, case["id"])["status"] == status


def test_closed_loop_happy_path(district):
    case = file_case(district, 123.405, 41.808)
    w1 = Actor("worker", "W1", (G1,))
    step(district, case["id"], "dispatch", DISPATCHER)
    step(district, case["id"], "accept", w1)
    step(district, case["id"], "start", w1)
    done = step(district, case["id"], "resolve", w1, note="已清运", now=T0 + timedelta(hours=3))
    assert done["resolved_at"] == (T0 + timedelta(hours=3)).isoformat()
    rated = step(district, case["id"], "evaluate", RESIDENT, rating=5)
    closed = step(district, case["id"], "close", DISPATCHER)
    assert (rated["rating"], closed["status"]) == (5, "closed")
    with district.session() as s:
        history = cases_repo.case_history(s, case["id"])
    assert [h["to_status"] for h in history] == [
        "reported",
        "dispatched",
        "accepted",
        "in_progress",
        "resolved",
        "evaluated",
        "closed",
    ]
    assert history[1]["note"] == "to worker W1"


# (action, status the case is in, actor, outcome): True when the step is taken,
# Forbidden when the actor sees the case but may not take that step, NotFound when
# the case is outside the actor's reach (worded as for a missing case).
ROLE_CASES = [
    ("dispatch", "reported", Actor("worker", "W1", (G1,)), Forbidden),
    ("dispatch", "reported", RESIDENT, Forbidden),
    ("dispatch", "reported", DISPATCHER, True),
    ("accept", "dispatched", Actor("worker", "W1"), True),  # assigned to W1
    ("accept", "dispatched", Actor("worker", "W2", (G2,)), NotFound),
    ("accept", "dispatched", Actor("worker", "W7", (G1,)), True),  # by grid
    ("accept", "dispatched", RESIDENT, Forbidden),
    ("resolve", "in_progress", Actor("worker", "W2"), NotFound),
    ("resolve", "in_progress", Actor("planner", "p"), Forbidden),
    ("resolve", "escalated", Actor("department", "城市管理局"), True),
    ("resolve", "escalated", Actor("department", "x", scope="城市管理局"), True),
    ("resolve", "escalated", Actor("department", "y", scope="公安局"), NotFound),
    ("evaluate", "resolved", RESIDENT, True),
    ("evaluate", "resolved", STRANGER, NotFound),
    ("evaluate", "resolved", Actor("resident", ""), NotFound),
    ("evaluate", "resolved", Actor("worker", "W1"), Forbidden),
    ("escalate", "accepted", Actor("worker", "W1"), True),
    ("escalate", "accepted", RESIDENT, Forbidden),
    ("return", "dispatched", Actor("worker", "W1"), True),
    ("reject", "reported", Actor("worker", "W1"), Forbidden),
    ("close", "evaluated", Actor("system", "cron"), True),
    ("close", "evaluated", Actor("dispatcher", "d2", scope=COMMUNITY), True),
    ("close", "evaluated", Actor("dispatcher", "d3", scope="210102001002"), NotFound),
]


@pytest.mark.parametrize(("action", "status", "actor", "outcome"), ROLE_CASES)
def test_roles(district, action, status, actor, outcome):
    case = file_case(district, 123.405, 41.808)  # grid 001, worker W1
    force(district, case["id"], status=status)
    kw = _params(action, case["id"])
    if outcome is True:
        assert step(district, case["id"], action, actor, **kw)["status"] != status
        return
    with pytest.raises(outcome) as err:
        step(district, case["id"], action, actor, **kw)
    if outcome is Forbidden:
        assert action in err.value.message
    else:
        assert err.value.message == f"no case {case['id']!r}"
    with district.session() as s:
        assert cases_repo.get_case(s, case["id"])["status"] == status  # nothing changed


def test_a_scoped_dispatcher_dispatches_only_to_workers_in_their_area(district):
    case = file_case(district, 123.405, 41.808)
    other_street = Actor("dispatcher", "d9", scope="210102002")
    with pytest.raises(NotFound):  # the case is not theirs to see either
        step(district, case["id"], "dispatch", other_street, worker_code="W1")
    with district.session() as s, s.begin():
        repo.write_workers(
            s, pd.DataFrame([{"code": "X1", "name": "外街", "grid_codes": "210102002001001"}])
        )
    mine = Actor("dispatcher", "d1", scope=COMMUNITY)
    with pytest.raises(InvalidInput) as err:
        step(district, case["id"], "dispatch", mine, worker_code="X1")
    assert err.value.detail["field"] == "worker_code"
    assert err.value.message == "no active worker 'X1'"
    done = step(district, case["id"], "dispatch", mine, worker_code="W2")
    assert (done["status"], done["worker_code"]) == ("dispatched", "W2")


def test_step_parameters_are_checked(district):
    case = file_case(district)
    other = file_case(district, 123.415, 41.808)
    with pytest.raises(InvalidInput) as err:
        step(district, case["id"], "reject")
    assert err.value.detail["field"] == "reason"
    with pytest.raises(InvalidInput) as err:
        step(district, case["id"], "duplicate", duplicate_of=case["id"])
    assert err.value.detail["field"] == "duplicate_of"
    with pytest.raises(InvalidInput) as err:
        step(district, case["id"], "dispatch", worker_code="nobody")
    assert err.value.detail["field"] == "worker_code"
    dup = step(district, case["id"], "duplicate", duplicate_of=other["code"])
    assert (dup["status"], dup["duplicate_of"]) == ("duplicate", other["code"])
    force(district, other["id"], status="resolved")
    for bad in (0, 6, "5", None):
        with pytest.raises(InvalidInput) as err:
            step(district, other["id"], "evaluate", RESIDENT, rating=bad)
        assert err.value.detail["field"] == "rating"


# ---------------------------------------------------------------- duplicates


def test_possible_duplicates_radius_window_category_and_open(district):
    north_50m = 41.807 + 50 / DEG_LAT_M
    near = file_case(district, 123.405, north_50m, now=T0 - timedelta(days=1))
    file_case(district, 123.405, 41.807 + 150 / DEG_LAT_M, now=T0)  # too far
    file_case(district, 123.405, 41.807, now=T0 - timedelta(days=8))  # too old
    file_case(district, 123.405, 41.807, category=OTHER_CATEGORY, now=T0)  # other category
    closed = file_case(district, 123.4051, 41.807, now=T0)
    force(district, closed["id"], status="closed")
    later = file_case(district, 123.4052, 41.807, now=T0 + timedelta(minutes=5))
    new = file_case(district, 123.405, 41.807, now=T0 + timedelta(minutes=10))
    found = [(d["code"], round(d["distance_m"])) for d in new["possible_duplicates"]]
    assert found == [(later["code"], 17), (near["code"], 50)]
    # A narrower radius setting drops the farther one.
    with district.session() as s:
        narrow = cases_repo.find_duplicates(
            s, category_code=CATEGORY, lon=123.405, lat=41.807, now=T0, radius_m=30
        )
    assert narrow == []


# ---------------------------------------------------------------- escalation


def test_overdue_escalation_is_idempotent_and_climbs_one_level_per_deadline(district):
    late = file_case(district, 123.405, 41.808)  # 24 h deadline
    on_time = file_case(district, 123.405, 41.808, now=T0 + timedelta(hours=20))
    done = file_case(district, 123.405, 41.808)
    force(district, done["id"], status="resolved")
    first_run = T0 + timedelta(hours=25)
    with district.session() as s:
        overdue, total = cases_repo.list_cases(s, overdue=True, now=first_run)
    assert [c["code"] for c in overdue] == [late["code"]] and total == 1
    with district.session() as s, s.begin():
        moved = cases_repo.escalate_overdue(s, now=first_run)
    assert [(m["code"], m["level"], m["escalated_to"]) for m in moved] == [
        (late["code"], "community", COMMUNITY)
    ]
    with district.session() as s, s.begin():
        assert cases_repo.escalate_overdue(s, now=first_run) == []
    with district.session() as s:
        after = cases_repo.get_case(s, late["id"])
        assert cases_repo.list_cases(s, overdue=True, now=first_run)[1] == 0
    assert after["status"] == "escalated" and after["escalation_level"] == 1
    assert after["deadline_at"] == (first_run + timedelta(hours=24)).isoformat()
    # Each later deadline missed moves it one more level, up to the department.
    run = first_run
    for level, holder in (("street", STREET), ("department", "城市管理局")):
        run += timedelta(hours=25)
        with district.session() as s, s.begin():
            moved = cases_repo.escalate_overdue(s, now=run)
            again = cases_repo.escalate_overdue(s, now=run)
        assert (moved[0]["level"], moved[0]["escalated_to"]) == (level, holder)
        assert again == [] or [m["code"] for m in again] == [on_time["code"]]
    with district.session() as s, s.begin():
        assert late["code"] not in [
            m["code"] for m in cases_repo.escalate_overdue(s, now=run + timedelta(days=9))
        ]
        history = cases_repo.case_history(s, late["id"])
    assert [h["action"] for h in history] == ["report", "escalate", "escalate", "escalate"]
    assert {h["actor"] for h in history[1:]} == {"system:wangge escalate"}


# ------------------------------------------------------------------- reroute


REDRAW = [  # the same community split west | east at 123.412
    (G1, (WEST, SOUTH, 123.412, NORTH)),
    (G2, (123.412, SOUTH, EAST, NORTH)),
]


def test_reroute_preview_equals_what_is_written(district):
    points = [
        (123.405, 41.808),  # 001 → 001
        (123.411, 41.808),  # 002 → 001 (west of 123.412)
        (123.411, 41.802),  # 004 → 001
        (123.415, 41.802),  # 004 → 002
        (123.415, 41.808),  # 002 → 002
        (123.405, 41.802),  # 003 → 001
        (123.406, 41.802),  # 003 → 001, but resolved: not re-routed
    ]
    made = [file_case(district, lon, lat) for lon, lat in points]
    force(district, made[-1]["id"], status="resolved")
    with district.session() as s, s.begin():
        load_generation(s, "redraw", REDRAW)
    with district.session() as s, s.begin():
        preview = cases_repo.reroute(s, dry_run=True)
    with district.session() as s:
        assert [c["grid_code"] for c in cases_repo.list_cases(s, limit=None)[0]][::-1] == [
            G1, G2, G4, G4, G2, G3, G3,
        ]  # fmt: skip
    with district.session() as s, s.begin():
        written = cases_repo.reroute(s, dry_run=False)
    assert {k: v for k, v in preview.items() if k != "dry_run"} == {
        k: v for k, v in written.items() if k != "dry_run"
    }
    assert preview["moves"] == [
        {"from": G2, "to": G1, "count": 1},
        {"from": G3, "to": G1, "count": 1},
        {"from": G4, "to": G1, "count": 1},
        {"from": G4, "to": G2, "count": 1},
    ]
    assert preview["open_cases"] == 6 and preview["moved"] == 4
    with district.session() as s:
        stored = {c["id"]: c for c in cases_repo.list_cases(s, limit=None)[0]}
        gen = repo.active_generation(s)
    assert [stored[c["id"]]["grid_code"] for c in made] == [G1, G1, G1, G2, G2, G1, G3]
    assert stored[made[2]["id"]]["worker_code"] == "W1"  # unclaimed: follows the grid
    assert {stored[c["id"]]["generation_id"] for c in made[:-1]} == {gen.id}
    with district.session() as s, s.begin():
        assert cases_repo.reroute(s, dry_run=True)["moved"] == 0
        history = cases_repo.case_history(s, made[2]["id"])
    assert history[-1]["action"] == "reroute" and G4 in history[-1]["note"]


# ------------------------------------------------------------------- stats


def test_stats_count_by_status_and_category(district):
    file_case(district, 123.405, 41.808)
    file_case(district, 123.405, 41.808, category=OTHER_CATEGORY)
    c = file_case(district, 123.415, 41.808)
    force(district, c["id"], status="closed")
    file_case(district, 124.0, 42.0)
    with district.session() as s:
        grid = cases_repo.case_stats(s, level="grid", parent=COMMUNITY)
        community = cases_repo.case_stats(s, level="community")
    assert grid == [
        {"code": G1, "total": 2, "by_status": {"reported": 2},
         "by_category": {CATEGORY: 1, OTHER_CATEGORY: 1}},
        {"code": G2, "total": 1, "by_status": {"closed": 1}, "by_category": {CATEGORY: 1}},
    ]  # fmt: skip
    assert [(e["code"], e["total"]) for e in community] == [(COMMUNITY, 3), (None, 1)]


# ------------------------------------------------------------ property test


@st.composite
def tessellations(draw):
    """A random rectangular tessellation (uneven columns and rows) with shuffled codes,
    and points: random ones, some snapped to edges and vertices."""
    nx = draw(st.integers(1, 4))
    ny = draw(st.integers(1, 4))
    xs = sorted(draw(st.lists(st.integers(1, 99), min_size=nx - 1, max_size=nx - 1,
                              unique=True)))  # fmt: skip
    ys = sorted(draw(st.lists(st.integers(1, 99), min_size=ny - 1, max_size=ny - 1,
                              unique=True)))  # fmt: skip
    xs, ys = [0, *xs, 100], [0, *ys, 100]
    order = draw(st.permutations(range(nx * ny)))
    unit = 0.0002  # 100 units = 0.02°
    grids = []
    for k, (i, j) in enumerate(itertools.product(range(nx), range(ny))):
        bounds = (WEST + xs[i] * unit, SOUTH + ys[j] * unit,
                  WEST + xs[i + 1] * unit, SOUTH + ys[j + 1] * unit)  # fmt: skip
        grids.append((f"{COMMUNITY}{order[k] + 1:03d}", bounds))
    snap = st.sampled_from(xs), st.sampled_from(ys)
    free = st.integers(0, 1000).map(lambda v: v / 10)
    coords = st.tuples(st.one_of(snap[0], free), st.one_of(snap[1], free))
    pts = draw(st.lists(coords, min_size=1, max_size=8))
    points = [(WEST + x * unit, SOUTH + y * unit) for x, y in pts]
    return grids, points


_generation_names = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=tessellations())
def test_property_online_and_bulk_agree_and_each_covered_point_gets_one_grid(store, layout):
    grids, points = layout
    with store.session() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, f"prop-{next(_generation_names)}", grids)
    frame = hierarchy(grids).query("level == 'grid'")
    codes = frame["code"].to_numpy()
    xy = np.array(points)
    bulk = route_points(xy, frame.geometry.values, codes, near_m=50.0)
    covered = assign_points(gpd.points_from_xy(xy[:, 0], xy[:, 1]), frame.geometry.values, codes)
    for k, (lon, lat) in enumerate(points):
        online = file_case(store, lon, lat)
        # Every point is inside the community square, so each gets exactly one grid,
        # the lowest-coded of those covering it.
        owners = sorted(
            code
            for code, (x0, y0, x1, y1) in grids
            if x0 - 1e-12 <= lon <= x1 + 1e-12 and y0 - 1e-12 <= lat <= y1 + 1e-12
        )
        assert owners, (lon, lat)
        assert online["grid_code"] == codes[bulk.index[k]] == covered[k] == owners[0]
        assert online["route_flag"] == bulk.flag[k]


# ---------------------------------------------------------------------- CLI


def test_cli_assign_routes_a_points_file_without_a_database(tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    grids_path = tmp_path / "grids.geojson"
    hierarchy(FOUR_GRIDS).to_file(grids_path, driver="GeoJSON")
    points = pd.DataFrame(
        [{"id": f"p{k}", "lon": p[1], "lat": p[2], "note": p[0]} for k, p in enumerate(
            ROUTING_POINTS)]
    )  # fmt: skip
    points_path, out = tmp_path / "points.csv", tmp_path / "out" / "routed.csv"
    points.to_csv(points_path, index=False)
    result = CliRunner().invoke(
        app, ["assign", "--grids", str(grids_path), "--cases", str(points_path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    routed = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(routed.columns) == ["id", "lon", "lat", "note", "grid_code", "flag", "distance_m"]
    assert routed["note"].tolist() == [p[0] for p in ROUTING_POINTS]
    assert list(zip(routed["grid_code"], routed["flag"], strict=True)) == [
        (p[3] or "", p[4]) for p in ROUTING_POINTS
    ]
    assert "4 edge_rule" in result.output


def test_cli_escalate_and_reroute(district, monkeypatch):
    from typer.testing import CliRunner

    from api.cli import app

    monkeypatch.setenv("WANGGE_DATABASE_URL", district.url)
    late = file_case(district, 123.411, 41.802, now=datetime.now(UTC) - timedelta(days=2))
    runner = CliRunner()
    first = runner.invoke(app, ["escalate"])
    second = runner.invoke(app, ["escalate"])
    assert first.exit_code == second.exit_code == 0, first.output
    assert late["code"] in first.output and "escalated 1 overdue case(s)" in first.output
    assert "escalated 0 overdue case(s)" in second.output
    with district.session() as s, s.begin():
        load_generation(s, "redraw", REDRAW)
    preview = runner.invoke(app, ["reroute", "--dry-run"])
    assert preview.exit_code == 0, preview.output
    assert "1 would move" in preview.output and "nothing was written" in preview.output
    with district.session() as s:
        assert cases_repo.get_case(s, late["id"])["grid_code"] == G4
    done = runner.invoke(app, ["reroute"])
    assert done.exit_code == 0 and "1 moved" in done.output
    with district.session() as s:
        assert cases_repo.get_case(s, late["id"])["grid_code"] == G1


@pytest.mark.parametrize("action", list(rules.ACTIONS))
@pytest.mark.parametrize("status", rules.STATUSES)
def test_pure_rules_every_pair(status, action):
    """The table in gis.cases, pair by pair, as an admin (who may do any step)."""
    step_ = rules.ACTIONS[action]
    kw = {"worker_code": "W1", "grid_code": G1}
    if status in step_.sources:
        assert rules.check_transition(action, status, 0, ADMIN, **kw) == step_.target
    else:
        with pytest.raises(IllegalTransition) as err:
            rules.check_transition(action, status, 0, ADMIN, **kw)
        assert err.value.detail["allowed"] == rules.allowed_actions(status)
    if action == "escalate" and status in step_.sources:
        with pytest.raises(IllegalTransition):
            rules.check_transition(action, status, rules.TOP_LEVEL, ADMIN, **kw)
