"""The access-control matrix: every route of the app x every role x an object in and
out of the caller's scope, over real HTTP with real logins, on both stores.

The routes come from the app itself (`app.routes`), so a route without a rule in
api/access.py, or without an example request here, fails `test_every_route_has_a_rule`.

The district (codes partly outside the 15-digit scheme, so scope must follow the
parent chain, not a code prefix):

    district 110105
    ├── street 110105001 ── community 110105001001 ── grids ...001 (W1), ...002
    └── street S-EAST    ── community C-EAST-1    ── grid G-EAST-1 (W2)

Case A: category 0101 (城市管理局) in grid ...001, filed by resident r1.
Case B: category 0205 (交通警察大队) in grid G-EAST-1, filed anonymously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import geopandas as gpd
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.routing import iter_route_contexts
from shapely import box

from api import access
from api.app import create_app
from api.settings import Settings
from gis.db import cases_repo, repo, users_repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import Building, CaredResident
from tests.server import serve

pytestmark = pytest.mark.real_auth

D, S1, S2 = "110105", "110105001", "S-EAST"
C1, C2 = "110105001001", "C-EAST-1"
G11, G12, G21 = f"{C1}001", f"{C1}002", "G-EAST-1"
PHONE_A, PHONE_B = "13900000001", "13900000002"
CARED_NAME, CARED_PHONE = "关爱对象张三", "13800000009"
PASSWORD = "correct horse battery"
OPEN311_KEY = "wangge-dev-open311"
SECRET = "a-test-secret-of-at-least-32-bytes!"

#: Who calls: username -> (role, scope). Anonymous sends no credentials.
PRINCIPALS = {
    "anonymous": ("anonymous", None),
    "r1": ("resident", None),
    "w1": ("worker", "W1"),
    "disp_c1": ("dispatcher", C1),
    "dept": ("department", "城市管理局"),
    "plan_s1": ("planner", S1),
    "plan_d": ("planner", D),
    "admin": ("admin", None),
}
#: Which of the two cases (and their grids, communities, plans) each caller reaches.
REACH = {
    "anonymous": set(),
    "r1": {"A"},
    "w1": {"A"},
    "disp_c1": {"A"},
    "dept": {"A"},
    "plan_s1": {"A"},
    "plan_d": {"A", "B"},
    "admin": {"A", "B"},
}
#: Area reach (grids, communities) differs from case reach for residents and departments.
AREA_REACH = {
    "anonymous": set(),
    "r1": set(),
    "w1": {"A"},
    "disp_c1": {"A"},
    "dept": set(),
    "plan_s1": {"A"},
    "plan_d": {"A", "B"},
    "admin": {"A", "B"},
}
DISTRICT_WIDE = {"plan_d", "admin"}


def _areas() -> gpd.GeoDataFrame:
    rows = [
        (D, "district", None, (116.40, 39.90, 116.44, 39.92)),
        (S1, "street", D, (116.40, 39.90, 116.42, 39.92)),
        (S2, "street", D, (116.42, 39.90, 116.44, 39.92)),
        (C1, "community", S1, (116.40, 39.90, 116.42, 39.92)),
        (C2, "community", S2, (116.42, 39.90, 116.44, 39.92)),
        (G11, "grid", C1, (116.40, 39.90, 116.41, 39.92)),
        (G12, "grid", C1, (116.41, 39.90, 116.42, 39.92)),
        (G21, "grid", C2, (116.42, 39.90, 116.44, 39.92)),
    ]
    return gpd.GeoDataFrame(
        [
            {"code": c, "name": c, "level": lv, "parent_code": p, "geometry": box(*b)}
            for c, lv, p, b in rows
        ],
        crs=4326,
    )


@dataclass
class World:
    base: str
    tokens: dict[str, str]
    cases: dict[str, str]  # "A"/"B" -> case code
    plans: dict[str, int]  # "A"/"B" -> plan id
    sessions: object = field(repr=False)


def seed_world(store_url: str) -> tuple[dict[str, str], dict[str, int]]:
    engine = make_engine(store_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s, s.begin():
            repo.seed_categories(s)
            gen = repo.create_generation(s, "initial")
            repo.write_areas(s, _areas(), gen)
            repo.activate_generation(s, gen)
            repo.write_workers(
                s,
                pd.DataFrame(
                    [
                        {"code": "W1", "name": "张一", "phone": "13700000001", "grid_codes": G11},
                        {"code": "W2", "name": "王二", "phone": "13700000002", "grid_codes": G21},
                    ]
                ),
            )
            repo.write_buildings(
                s,
                gpd.GeoDataFrame(
                    [
                        {"code": "B11", "households": 40, "geometry": box(116.401, 39.901, 116.402, 39.902)},  # noqa: E501
                        {"code": "B21", "households": 50, "geometry": box(116.431, 39.901, 116.432, 39.902)},  # noqa: E501
                    ],
                    crs=4326,
                ),
            )  # fmt: skip
            b11 = s.scalar(sa.select(Building.id).where(Building.code == "B11"))
            s.add(
                CaredResident(
                    building_id=b11, care_group="elderly_alone", name=CARED_NAME, phone=CARED_PHONE
                )
            )
            for username, (role, scope) in PRINCIPALS.items():
                if role != "anonymous":
                    users_repo.add_user(s, username, PASSWORD, role, scope=scope)
            a = cases_repo.create_case(
                s, category_code="0101", lon=116.405, lat=39.91, description="A",
                source="resident", reporter_phone=PHONE_A, reporter_user="r1",
            )  # fmt: skip
            b = cases_repo.create_case(
                s, category_code="0205", lon=116.43, lat=39.91, description="B",
                source="resident", reporter_phone=PHONE_B,
            )  # fmt: skip
            plans = sa.table(
                "plans", *(sa.column(c) for c in (
                    "id", "name", "kind", "status", "base_generation_id", "parameters",
                    "metrics_before", "metrics_after", "communities", "created_at",
                ))
            )  # fmt: skip
            moves = sa.table(
                "plan_assignments",
                *(
                    sa.column(c)
                    for c in ("plan_id", "building_code", "community_code", "grid_code")
                ),
            )
            now = datetime.now(UTC)
            for pid, (community, building, grid) in enumerate(
                [(C1, "B11", G11), (C2, "B21", G21)], start=1
            ):
                s.execute(
                    sa.insert(plans).values(
                        id=pid, name=f"p{pid}", kind="balance", status="proposed",
                        base_generation_id=gen.id, parameters=sa.literal("{}", sa.JSON),
                        metrics_before=sa.literal("{}", sa.JSON),
                        metrics_after=sa.literal("{}", sa.JSON),
                        communities=sa.literal("[]", sa.JSON), created_at=now,
                    )
                )  # fmt: skip
                s.execute(
                    sa.insert(moves).values(
                        plan_id=pid, building_code=building, community_code=community,
                        grid_code=grid,
                    )
                )  # fmt: skip
            if repo._is_postgis(s):
                s.execute(sa.text("SELECT setval('plans_id_seq', 10)"))
        return {"A": a["code"], "B": b["code"]}, {"A": 1, "B": 2}
    finally:
        engine.dispose()


def login(base: str, username: str) -> str:
    r = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.fixture
def world(store_url, tmp_path):
    cases, plans = seed_world(store_url)
    settings = Settings(
        database_url=store_url,
        data_dir=tmp_path,
        dev_role_headers=False,
        secret_key=SECRET,
        login_rate_per_min=0,  # the matrix logs in far more often than a person (test_protect)
    )
    engine = make_engine(store_url)
    with serve(settings) as base:
        tokens = {u: login(base, u) for u, (role, _) in PRINCIPALS.items() if role != "anonymous"}
        yield World(base, tokens, cases, plans, make_sessionmaker(engine))
    engine.dispose()


# ------------------------------------------------------------ the examples

CASE_BODY = {"category": "0101", "lon": 116.405, "lat": 39.911, "description": "matrix"}


@dataclass(frozen=True)
class Example:
    """A request for a route; `obj` names the object whose scope it tests (A or B)."""

    method: str
    url: str
    obj: str | None = None
    json: dict | None = None
    data: dict | None = None
    files: dict | None = None
    reach: str = "case"  # 'case' or 'area': which reach table applies to obj
    expect: tuple[int, ...] | None = None  # statuses a permitted caller may get
    only_outside: bool = False  # sent only by callers who do not reach obj (writes)


def examples(w: World) -> dict[tuple[str, str], list[Example]]:
    A, B = w.cases["A"], w.cases["B"]
    api = "/api/v1"
    o = "/open311/v2"
    ok = (200,)
    return {
        ("GET", "/"): [Example("GET", "/")],
        ("GET", "/healthz"): [Example("GET", "/healthz")],
        ("GET", "/readyz"): [Example("GET", "/readyz")],
        ("GET", "/openapi.json"): [Example("GET", "/openapi.json")],
        ("GET", "/docs"): [Example("GET", "/docs")],
        ("GET", "/docs/oauth2-redirect"): [Example("GET", "/docs/oauth2-redirect")],
        ("GET", api): [Example("GET", api)],
        ("POST", f"{api}/auth/token"): [
            Example("POST", f"{api}/auth/token", json={"username": "r1", "password": PASSWORD})
        ],
        ("GET", f"{api}/auth/me"): [Example("GET", f"{api}/auth/me", expect=ok)],
        ("GET", "/login"): [Example("GET", "/login?next=/maps/coverage", expect=ok)],
        ("POST", "/login"): [
            Example("POST", "/login", data={"username": "r1", "password": PASSWORD}, expect=(303,))
        ],
        ("POST", "/logout"): [Example("POST", "/logout", expect=(303,))],
        ("GET", f"{api}/users"): [Example("GET", f"{api}/users", expect=ok)],
        ("POST", f"{api}/users"): [
            Example(
                "POST",
                f"{api}/users",
                json={"username": "x", "password": "short", "role": "resident"},
                expect=(400,),
            )  # noqa: E501
        ],
        ("POST", f"{api}/users/{{username}}/disable"): [
            Example("POST", f"{api}/users/nobody/disable", expect=(404,))
        ],
        ("GET", f"{api}/apikeys"): [Example("GET", f"{api}/apikeys", expect=ok)],
        ("POST", f"{api}/apikeys"): [
            Example("POST", f"{api}/apikeys", json={"name": "k", "role": "mayor"}, expect=(400,))
        ],
        ("POST", f"{api}/apikeys/{{name}}/disable"): [
            Example("POST", f"{api}/apikeys/nothing/disable", expect=(404,))
        ],
        ("GET", f"{api}/audit"): [Example("GET", f"{api}/audit", expect=ok)],
        ("GET", f"{api}/generations"): [Example("GET", f"{api}/generations", expect=ok)],
        ("GET", f"{api}/generations/{{name_or_id}}"): [
            Example("GET", f"{api}/generations/initial", expect=ok)
        ],
        # The active generation spans the whole district: only district-wide callers.
        ("POST", f"{api}/generations/{{name_or_id}}/activate"): [
            Example("POST", f"{api}/generations/initial/activate", obj="B", reach="area", expect=ok)  # noqa: E501
        ],
        ("GET", f"{api}/areas"): [Example("GET", f"{api}/areas", expect=ok)],
        ("GET", f"{api}/areas/{{code}}"): [Example("GET", f"{api}/areas/{G11}", expect=ok)],
        ("GET", f"{api}/stations"): [Example("GET", f"{api}/stations", expect=ok)],
        ("GET", f"{api}/stations/nearest"): [
            Example("GET", f"{api}/stations/nearest?lon=116.405&lat=39.91")
        ],
        ("GET", f"{api}/categories"): [Example("GET", f"{api}/categories", expect=ok)],
        ("GET", f"{api}/locate"): [
            Example("GET", f"{api}/locate?lon=116.405&lat=39.91", expect=ok)
        ],  # noqa: E501
        ("GET", f"{api}/buildings"): [Example("GET", f"{api}/buildings", expect=ok)],
        ("GET", f"{api}/workers"): [Example("GET", f"{api}/workers", expect=ok)],
        ("POST", f"{api}/imports/{{layer}}"): [
            Example(
                "POST", f"{api}/imports/nothing", files={"file": ("a.csv", b"x\n")}, expect=(404,)
            )  # noqa: E501
        ],
        ("GET", f"{api}/coverage"): [Example("GET", f"{api}/coverage?kind=nothing")],
        ("POST", f"{api}/stations/siting"): [Example("POST", f"{api}/stations/siting", json={})],
        ("POST", f"{api}/cases"): [Example("POST", f"{api}/cases", json=CASE_BODY, expect=(201,))],
        ("GET", f"{api}/cases"): [Example("GET", f"{api}/cases", expect=ok)],
        ("GET", f"{api}/cases/stats"): [Example("GET", f"{api}/cases/stats", expect=ok)],
        ("GET", f"{api}/cases/{{ref}}"): [
            Example("GET", f"{api}/cases/{A}", obj="A", expect=ok),
            Example("GET", f"{api}/cases/{B}", obj="B", expect=ok),
        ],
        # 'close' does not apply to a reported case: 409 once the caller reaches it.
        ("POST", f"{api}/cases/{{ref}}/{{action}}"): [
            Example("POST", f"{api}/cases/{A}/close", obj="A", expect=(409,)),
            Example("POST", f"{api}/cases/{B}/close", obj="B", expect=(409,)),
        ],
        ("GET", f"{api}/workload"): [
            Example("GET", f"{api}/workload?parent={C1}", obj="A", reach="area"),
            Example("GET", f"{api}/workload?parent={C2}", obj="B", reach="area"),
        ],
        ("POST", f"{api}/plans"): [
            Example(
                "POST",
                f"{api}/plans",
                obj="A",
                reach="area",
                json={"parent": C1, "low": 9, "high": 5},
            ),  # noqa: E501
            Example(
                "POST",
                f"{api}/plans",
                obj="B",
                reach="area",
                json={"parent": C2, "low": 9, "high": 5},
            ),  # noqa: E501
        ],
        ("GET", f"{api}/plans"): [Example("GET", f"{api}/plans", expect=ok)],
        ("POST", f"{api}/plans/upload"): [
            Example("POST", f"{api}/plans/upload", obj="B", reach="area", json={})
        ],
        ("POST", f"{api}/plans/upload/file"): [
            Example("POST", f"{api}/plans/upload/file", obj="B", reach="area")
        ],
        **{
            ("GET", f"{api}/plans/{{plan_id}}{tail}"): [
                Example("GET", f"{api}/plans/{w.plans['A']}{tail}", obj="A", reach="area"),
                Example("GET", f"{api}/plans/{w.plans['B']}{tail}", obj="B", reach="area"),
            ]
            for tail in ("", "/grids", "/compare", "/handover")
        },
        # Applying plan B is refused to those who do not reach it; those who do are
        # sent to a plan that does not exist, so the matrix changes nothing.
        ("POST", f"{api}/plans/{{plan_id}}/apply"): [
            Example(
                "POST",
                f"{api}/plans/{w.plans['B']}/apply",
                obj="B",
                reach="area",
                only_outside=True,
            ),  # noqa: E501
            Example("POST", f"{api}/plans/999/apply", expect=(404,)),
        ],
        ("GET", f"{o}/discovery.{{fmt}}"): [Example("GET", f"{o}/discovery.json", expect=ok)],
        ("GET", f"{o}/services.{{fmt}}"): [Example("GET", f"{o}/services.json", expect=ok)],
        ("GET", f"{o}/services/{{service_code}}.{{fmt}}"): [
            Example("GET", f"{o}/services/0101.json", expect=ok)
        ],
        ("POST", f"{o}/requests.{{fmt}}"): [
            Example(
                "POST",
                f"{o}/requests.json",
                data={
                    "api_key": OPEN311_KEY,
                    "service_code": "0101",
                    "lat": "39.91",
                    "long": "116.405",
                    "phone": "13911111111",
                },  # noqa: E501
                expect=(201,),
            )
        ],
        ("GET", f"{o}/requests.{{fmt}}"): [Example("GET", f"{o}/requests.json", expect=ok)],
        ("GET", f"{o}/requests/{{service_request_id}}.{{fmt}}"): [
            Example("GET", f"{o}/requests/{B}.json", expect=ok)
        ],
        ("GET", f"{o}/tokens/{{token}}.{{fmt}}"): [Example("GET", f"{o}/tokens/{B}.json")],
        **{
            (m, f"{o}/{{rest}}"): [Example(m, f"{o}/nothing-here.json")]
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
        },
        ("GET", "/maps/coverage"): [Example("GET", "/maps/coverage", obj="B", reach="area")],
        ("GET", "/maps/grids/{code}"): [
            Example("GET", f"/maps/grids/{G11}", obj="A", reach="area", expect=ok),
            Example("GET", f"/maps/grids/{G21}", obj="B", reach="area", expect=ok),
        ],
        ("GET", "/maps/nearest"): [Example("GET", "/maps/nearest?lon=116.405&lat=39.91")],
        ("GET", "/maps/cases"): [Example("GET", "/maps/cases", obj="B", reach="area")],
        ("GET", "/maps/static/{path}"): [Example("GET", "/maps/static/none.js")],
    }


#: Open311 is a public feed by the standard: case codes appear there for everyone
#: (never contact details); so do intake's possible duplicates, which a reporter may
#: follow instead of filing again.
PUBLIC_FEEDS = ("/open311/v2/requests", "/open311/v2/tokens")


def app_routes() -> list[tuple[str, str]]:
    app = create_app(Settings(dev_role_headers=False))
    out = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method, access._plain_template(route.path_format or route.path)))
    return sorted(out)


def test_every_route_has_a_rule_and_an_example():
    routes = app_routes()
    assert len(routes) > 50
    missing_rule = [r for r in routes if access.rule_for(*r) is None]
    assert not missing_rule, f"routes without a rule in api/access.py: {missing_rule}"
    dummy = World("", {}, {"A": "a", "B": "b"}, {"A": 1, "B": 2}, None)
    missing_example = [r for r in routes if r not in examples(dummy)]
    assert not missing_example, f"routes without an example in the matrix: {missing_example}"
    assert all(r.check in (None, *access.CHECKS) for r in access.RULES.values())


def _expected(example: Example, rule: access.Rule, who: str) -> tuple[int, ...] | str:
    role = PRINCIPALS[who][0]
    if role not in rule.roles:
        return (401,) if role == "anonymous" else (403,)
    reach = (AREA_REACH if example.reach == "area" else REACH)[who]
    if rule.check == "district" and who not in DISTRICT_WIDE:
        return (403,)
    if example.obj is not None and example.obj not in reach:
        # Scope checked in the repository: a case out of reach does not exist.
        return (404,) if rule.check == "repo" and example.reach == "case" else (403,)
    if example.expect is not None:
        return example.expect
    return "permitted"


def test_access_matrix(world: World):
    w = world
    table = examples(w)
    failures: list[str] = []
    n = 0
    for method, template in app_routes():
        rule = access.rule_for(method, template)
        for example in table[(method, template)]:
            for who in PRINCIPALS:
                reach = (AREA_REACH if example.reach == "area" else REACH)[who]
                if example.only_outside and example.obj in reach:
                    continue
                headers = {"Authorization": f"Bearer {w.tokens[who]}"} if who in w.tokens else {}
                r = httpx.request(
                    example.method,
                    w.base + example.url,
                    headers=headers,
                    json=example.json,
                    data=example.data,
                    files=example.files,
                    timeout=60,
                )
                n += 1
                want = _expected(example, rule, who)
                got = r.status_code
                where = f"{example.method} {example.url} as {who}: {got}"
                if want == "permitted":
                    if got in (401, 403) or got >= 500:
                        failures.append(f"{where}, expected to be let through ({r.text[:120]})")
                elif got not in want:
                    failures.append(f"{where}, expected {want} ({r.text[:120]})")
                # A 404 may echo the reference the caller sent; that tells them nothing.
                echo = example.url if got == 404 else ""
                failures += _leaks(w, who, example.method, example.url, r.text, echo)
    assert n > 400
    assert not failures, f"{len(failures)} of {n} checks failed:\n" + "\n".join(failures[:40])


def _leaks(w: World, who: str, method: str, url: str, body: str, echo: str = "") -> list[str]:
    out = []
    role = PRINCIPALS[who][0]
    if CARED_NAME in body or CARED_PHONE in body:
        out.append(f"{url} as {who}: a cared-for resident is in the answer")
    if role in ("anonymous", "resident") and (PHONE_A in body or PHONE_B in body):
        out.append(f"{url} as {who}: a reporter's phone is in the answer")
    # Open311's feed and intake's possible duplicates show case codes to anyone.
    public_feed = url.startswith(PUBLIC_FEEDS) or (method, url) == ("POST", "/api/v1/cases")
    for obj in ("A", "B"):
        shown = w.cases[obj] in body and w.cases[obj] not in echo
        if obj not in REACH[who] and not public_feed and shown:
            out.append(f"{url} as {who}: case {obj} ({w.cases[obj]}) is out of scope but shown")
        phone = PHONE_A if obj == "A" else PHONE_B
        if obj not in REACH[who] and phone in body:
            out.append(f"{url} as {who}: case {obj}'s reporter phone is out of scope but shown")
    return out


def test_lists_hold_only_the_callers_scope(world: World):
    """Lists and counts, per role: the worker's list holds only their grids, and so on."""
    w = world

    def get(who, path):
        r = httpx.get(
            w.base + path, headers={"Authorization": f"Bearer {w.tokens[who]}"}, timeout=30
        )
        assert r.status_code == 200, (who, path, r.text)
        return r.json()

    for who in ("r1", "w1", "disp_c1", "dept", "plan_s1", "plan_d", "admin"):
        codes = {c["code"] for c in get(who, "/api/v1/cases")["cases"]}
        assert codes == {w.cases[o] for o in REACH[who]}, who
        if who != "r1":  # counts are for staff
            stats = get(who, "/api/v1/cases/stats?level=grid")["areas"]
            assert sum(a["total"] for a in stats) == len(REACH[who]), who
    assert "reporter_phone" not in get("r1", "/api/v1/cases")["cases"][0]
    assert get("w1", "/api/v1/cases")["cases"][0]["reporter_phone"] == PHONE_A
    for who, grids in (("w1", {G11}), ("disp_c1", {G11, G12}), ("plan_d", {G11, G12, G21})):
        features = get(who, "/api/v1/buildings")["features"]

        assert {f["properties"]["grid_code"] for f in features} <= grids, who
        assert {f["properties"]["grid_code"] for f in features} & grids, who
    assert [x["code"] for x in get("w1", "/api/v1/workers")["workers"]] == ["W1"]
    assert [x["code"] for x in get("disp_c1", "/api/v1/workers")["workers"]] == ["W1"]
    assert [x["code"] for x in get("admin", "/api/v1/workers")["workers"]] == ["W1", "W2"]
    # Plans: a street planner lists the plans inside their street, no others.
    for who, ids in (("plan_s1", ["A"]), ("plan_d", ["A", "B"]), ("admin", ["A", "B"])):
        assert [p["id"] for p in get(who, "/api/v1/plans")] == [w.plans[o] for o in ids], who
    # A resident's own report, filed while logged in, is theirs to read.
    mine = httpx.post(
        f"{w.base}/api/v1/cases",
        json=CASE_BODY | {"contact": {"phone": "13922222222"}},
        headers={"Authorization": f"Bearer {w.tokens['r1']}"},
    ).json()
    assert "reporter_phone" not in mine
    assert mine["code"] in {c["code"] for c in get("r1", "/api/v1/cases")["cases"]}
    anonymous = httpx.post(f"{w.base}/api/v1/cases", json=CASE_BODY)
    assert anonymous.status_code == 201 and "reporter_phone" not in anonymous.json()
    assert httpx.get(f"{w.base}/api/v1/cases/{anonymous.json()['code']}").status_code == 401


def test_every_write_is_audited(world: World):
    w = world
    admin = {"Authorization": f"Bearer {w.tokens['admin']}"}
    dispatcher = {"Authorization": f"Bearer {w.tokens['disp_c1']}"}
    filed = httpx.post(f"{w.base}/api/v1/cases", json=CASE_BODY, headers=dispatcher).json()
    step = httpx.post(f"{w.base}/api/v1/cases/{filed['code']}/dispatch", headers=dispatcher)
    assert step.status_code == 200, step.text
    added = httpx.post(
        f"{w.base}/api/v1/users",
        json={"username": "newbie", "password": PASSWORD, "role": "resident"},
        headers=admin,
    )
    assert added.status_code == 201
    log = httpx.get(f"{w.base}/api/v1/audit", params={"object_id": filed["code"]}, headers=admin)
    entries = log.json()["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("case.dispatch", "dispatcher:disp_c1"),
        ("case.report", "dispatcher:disp_c1"),
    ]
    assert entries[0]["detail"]["from"] == "reported" and entries[0]["detail"]["to"] == "dispatched"
    users = httpx.get(f"{w.base}/api/v1/audit?action=user.", headers=admin).json()
    assert ("user.add", "newbie", "admin:admin") in {
        (e["action"], e["object_id"], e["actor"]) for e in users["entries"]
    }
    paged = httpx.get(f"{w.base}/api/v1/audit?limit=1", headers=admin).json()
    assert paged["numberReturned"] == 1 and paged["numberMatched"] > 3
    # A refused step writes nothing, audit row included (one transaction).
    before = paged["numberMatched"]
    refused = httpx.post(f"{w.base}/api/v1/cases/{filed['code']}/close", headers=dispatcher)
    assert refused.status_code == 409
    after = httpx.get(f"{w.base}/api/v1/audit?limit=1", headers=admin).json()["numberMatched"]
    assert after == before
