"""The case API over real HTTP on a real uvicorn server, on both stores.

The district is the four-grid square of `tests/test_cases.py` (W1 owns 001, W2 002,
W3 003; 004 has no worker).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from api.settings import Settings
from gis.db import cases_repo, repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import Case, CaseEvent
from tests.server import serve
from tests.test_cases import COMMUNITY, FOUR_GRIDS, G1, G2, STREET, load_generation

DISPATCHER = {"X-Wangge-Role": "dispatcher", "X-Wangge-User": "d1"}
W1 = {"X-Wangge-Role": "worker", "X-Wangge-User": "W1"}
W2 = {"X-Wangge-Role": "worker", "X-Wangge-User": "W2"}
RESIDENT = {"X-Wangge-Role": "resident", "X-Wangge-User": "r1"}


@pytest.fixture
def sessions(store_url):
    engine = make_engine(store_url)
    with make_sessionmaker(engine)() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, "initial", FOUR_GRIDS)
        repo.write_workers(
            s,
            pd.DataFrame(
                [
                    {"code": "W1", "name": "张一", "grid_codes": G1},
                    {"code": "W2", "name": "王二", "grid_codes": G2},
                ]
            ),
        )
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def api(sessions, store_url, tmp_path, monkeypatch) -> Iterator[httpx.Client]:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    settings = Settings(database_url=store_url, data_dir=tmp_path, page_size_max=50)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def report(api, lon=123.405, lat=41.808, **extra) -> httpx.Response:
    body = {"category": "0101", "lon": lon, "lat": lat, "description": "垃圾", **extra}
    return api.post("/api/v1/cases", json=body, headers=extra.pop("headers", RESIDENT))


def rows(sessions) -> tuple[int, int]:
    with sessions() as s:
        return (
            s.scalar(sa.select(sa.func.count()).select_from(Case)),
            s.scalar(sa.select(sa.func.count()).select_from(CaseEvent)),
        )


def test_intake_routes_and_lists_possible_duplicates(api):
    first = report(api, contact={"name": "刘", "phone": "13900000000"})
    assert first.status_code == 201, first.text
    case = first.json()
    assert (case["grid_code"], case["worker_code"], case["route_flag"]) == (G1, "W1", "inside")
    assert [a["code"] for a in case["chain"]] == ["210102", STREET, COMMUNITY, G1]
    assert case["deadline_at"] and case["possible_duplicates"] == []
    assert "reporter_phone" not in case  # a resident's answer carries no contact details
    second = report(api, lon=123.4052).json()
    assert [d["code"] for d in second["possible_duplicates"]] == [case["code"]]
    other = report(api, lon=123.4052, category="0102").json()
    assert other["possible_duplicates"] == []
    # Staff see the contact; the public does not.
    staff = api.get(f"/api/v1/cases/{case['id']}", headers=DISPATCHER).json()
    assert staff["reporter_phone"] == "13900000000"
    public = api.get(f"/api/v1/cases/{case['code']}", headers=RESIDENT).json()
    assert not {"reporter_name", "reporter_phone", "reporter_email"} & set(public)
    assert public["history"][0]["action"] == "report"
    assert public["allowed_actions"] == ["dispatch", "escalate", "duplicate", "reject"]
    listed = api.get("/api/v1/cases", headers=RESIDENT).json()
    assert listed["cases"] and not any("reporter_phone" in c for c in listed["cases"])


def test_intake_converts_gcj02_points(api):
    import numpy as np

    from gis.crs import wgs84_to_gcj02

    lon, lat = wgs84_to_gcj02(np.array([[123.415, 41.808]]))[0]
    case = report(api, lon=float(lon), lat=float(lat), crs="gcj02").json()
    assert case["grid_code"] == G2
    assert abs(case["lon"] - 123.415) < 1e-5 and abs(case["lat"] - 41.808) < 1e-5


BAD_BODIES = [
    ("category", {"category": "9999", "lon": 123.405, "lat": 41.808}),
    ("lat", {"category": "0101", "lon": 123.405, "lat": 91}),
    ("lon", {"category": "0101", "lon": "east", "lat": 41.808}),
    ("lon", {"category": "0101", "lat": 41.808}),  # no point at all
    ("lat", {"category": "0101", "lon": 123.405}),
    (
        "description",
        {"category": "0101", "lon": 123.405, "lat": 41.808, "description": "x" * 4001},
    ),  # fmt: skip
    ("source", {"category": "0101", "lon": 123.405, "lat": 41.808, "source": "pigeon"}),
    ("crs", {"category": "0101", "lon": 123.405, "lat": 41.808, "crs": "mars"}),
]


def test_bad_intake_answers_4xx_naming_the_field_and_writes_nothing(api, sessions):
    for field, body in BAD_BODIES:
        response = api.post("/api/v1/cases", json=body)
        assert 400 <= response.status_code < 500, (field, response.text)
        error = response.json()
        # The field is named in the message, or in `field` where another module words it.
        assert field in error["message"] or error.get("field") == field, (field, error)
    malformed = api.post(
        "/api/v1/cases",
        content=b'{"category": "0101", "lon": 123.4',
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 400 and "body" in malformed.json()["message"]
    not_object = api.post("/api/v1/cases", json=[1, 2])
    assert not_object.status_code == 400
    assert rows(sessions) == (0, 0)


def test_workflow_over_http_roles_409_and_history(api):
    case = report(api).json()
    url = f"/api/v1/cases/{case['id']}"
    forbidden = api.post(f"{url}/dispatch", headers=RESIDENT)
    assert forbidden.status_code == 403 and "dispatch" in forbidden.json()["message"]
    illegal = api.post(f"{url}/evaluate", json={"rating": 5}, headers=RESIDENT)
    assert illegal.status_code == 409
    assert illegal.json()["allowed"] == ["dispatch", "escalate", "duplicate", "reject"]
    unknown = api.post(f"{url}/teleport", headers=DISPATCHER)
    assert unknown.status_code == 409 and "unknown action" in unknown.json()["message"]
    assert api.post(f"{url}/dispatch", headers=DISPATCHER).json()["status"] == "dispatched"
    assert api.post(f"{url}/accept", headers=W2).status_code == 404  # outside W2's grids
    accepted = api.post(f"{url}/accept", headers=W1)
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    assert "reporter_phone" in accepted.json()  # staff answer
    api.post(f"{url}/start", headers=W1)
    api.post(f"{url}/resolve", json={"note": "已清运"}, headers=W1)
    bad_rating = api.post(f"{url}/evaluate", json={"rating": 9}, headers=RESIDENT)
    assert bad_rating.status_code == 400 and "rating" in bad_rating.json()["message"]
    rated = api.post(f"{url}/evaluate", json={"rating": 4}, headers=RESIDENT)
    assert rated.json()["rating"] == 4
    closed = api.post(f"{url}/close", headers=DISPATCHER).json()
    assert closed["status"] == "closed" and closed["allowed_actions"] == []
    history = api.get(url).json()["history"]
    assert [(h["action"], h["actor"]) for h in history] == [
        ("report", "resident:r1"),
        ("dispatch", "dispatcher:d1"),
        ("accept", "worker:W1"),
        ("start", "worker:W1"),
        ("resolve", "worker:W1"),
        ("evaluate", "resident:r1"),
        ("close", "dispatcher:d1"),
    ]
    assert history[4]["note"] == "已清运"
    reject = api.post(
        f"/api/v1/cases/{report(api).json()['id']}/reject", json={}, headers=DISPATCHER
    )
    assert reject.status_code == 400 and "reason" in reject.json()["message"]
    assert api.post("/api/v1/cases/999999/dispatch", headers=DISPATCHER).status_code == 404
    bad_role = api.post(f"{url}/close", headers={"X-Wangge-Role": "mayor"})
    assert bad_role.status_code == 400 and "X-Wangge-Role" in bad_role.json()["message"]


def test_list_filters_paging_geojson_overdue_and_stats(api, sessions):
    long_ago = datetime.now(UTC) - timedelta(days=3)
    with sessions() as s, s.begin():
        old = cases_repo.create_case(
            s, category_code="0101", lon=123.415, lat=41.808, description=None,
            source="hotline", now=long_ago,
        )  # fmt: skip
    fresh = [report(api, lon=123.401 + 0.001 * k).json() for k in range(3)]
    report(api, lon=124.0, lat=42.0)  # unrouted
    everything = api.get("/api/v1/cases", params={"limit": 2}).json()
    assert everything["numberMatched"] == 5 and everything["numberReturned"] == 2
    assert any(link["rel"] == "next" for link in everything["links"])

    def codes(**params):
        return {c["code"] for c in api.get("/api/v1/cases", params=params).json()["cases"]}

    assert codes(grid=G1) == {c["code"] for c in fresh}
    assert codes(community=COMMUNITY, street=STREET) == {old["code"]} | {c["code"] for c in fresh}
    assert codes(overdue="true") == {old["code"]}
    assert old["code"] not in codes(overdue="false")
    assert codes(since=(long_ago + timedelta(days=1)).isoformat()) == codes() - {old["code"]}
    assert codes(until=(long_ago + timedelta(days=1)).isoformat()) == {old["code"]}
    assert codes(bbox="123.41,41.805,123.42,41.81") == {old["code"]}
    assert codes(status="dispatched") == set()
    assert len(codes(status="reported,dispatched")) == 5
    assert codes(category="0102") == set()
    assert len(codes(route_flag="unrouted")) == 1
    bad = api.get("/api/v1/cases", params={"status": "lost"})
    assert bad.status_code == 400 and "status" in bad.json()["message"]
    geo = api.get("/api/v1/cases", params={"format": "geojson", "grid": G2})
    assert geo.headers["content-type"].startswith("application/geo+json")
    feature = geo.json()["features"][0]
    assert feature["geometry"] == {"type": "Point", "coordinates": [123.415, 41.808]}
    assert feature["id"] == old["code"]
    stats = api.get("/api/v1/cases/stats", params={"level": "grid", "parent": COMMUNITY}).json()
    assert [(a["code"], a["total"]) for a in stats["areas"]] == [(G1, 3), (G2, 1)]
    assert stats["areas"][0]["by_status"] == {"reported": 3}
    assert api.get("/api/v1/cases/stats", params={"level": "planet"}).status_code == 400
    # The OpenAPI document lists the routes.
    paths = json.loads(api.get("/openapi.json").text)["paths"]
    assert {"/api/v1/cases", "/api/v1/cases/{ref}/{action}"} <= set(paths)
