"""Open311 GeoReport v2 at /open311/v2, over real HTTP on both stores.

The district is the 2×2 one of tests/test_api.py. Writes are form-encoded POSTs as
the spec shows them; the read side is also exercised through `georeport`, a GeoReport
v2 client from PyPI, in both formats. XML is parsed with xml.etree, so element names
and counts are checked, not strings.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from georeport import GeoReport

from api import open311_xml
from api.routers.open311 import STATUS_NOTES
from api.settings import DEFAULT_OPEN311_KEY, Settings
from gis import cases as workflow
from gis.cases import Actor
from gis.db import cases_repo, repo
from tests.server import serve
from tests.test_api import G1, seed_district

KEY = "resident-app-key"
BASE = "/open311/v2"
DISPATCHER = Actor("dispatcher", "d1")
# A point inside grid 001 (north-west) and one inside 004 (south-east).
NW = {"lat": "41.807", "long": "123.405"}
SE = {"lat": "41.802", "long": "123.415"}
PERSONAL = {
    "first_name": "三",
    "last_name": "张",
    "email": "zhang.san@example.cn",
    "phone": "13800138000",
}


def subclasses() -> list[tuple[str, str]]:
    """(subclass code, class name) for every subclass of the default tree."""
    tree = repo.default_category_tree()
    return [(s["code"], c["name"]) for c in tree["classes"] for s in c["subclasses"]]


@pytest.fixture
def settings(store_url, tmp_path, monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    # Two keys, comma-separated, as an operator would set them.
    return Settings(database_url=store_url, data_dir=tmp_path, open311_api_keys=f"other, {KEY}")


@pytest.fixture
def server(settings, store_url) -> Iterator[str]:
    """The base URL of a real server on the seeded district."""
    seed_district(store_url)
    with serve(settings) as base:
        yield base


@pytest.fixture
def o311(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server + BASE, timeout=30) as client:
        yield client


def xml_of(response: httpx.Response) -> ET.Element:
    assert response.headers["content-type"].startswith("application/xml"), response.text
    assert response.text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(response.content)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The spec's error list, JSON or XML by the response; returns the description."""
    assert response.status_code == status, response.text
    if response.headers["content-type"].startswith("application/xml"):
        root = xml_of(response)
        assert root.tag == "errors" and [e.tag for e in root] == ["error"]
        assert root.findtext("error/code") == str(status)
        description = root.findtext("error/description") or ""
    else:
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert isinstance(body, list) and len(body) == 1 and set(body[0]) == {"code", "description"}
        assert body[0]["code"] == status
        description = body[0]["description"]
    for word in words:
        assert word in description, description
    return description


def post(client: httpx.Client, fmt: str = "json", **fields: str) -> httpx.Response:
    """A form-encoded POST requests, as the spec shows it."""
    return client.post(f"requests.{fmt}", data=fields)


# ------------------------------------------------------ discovery, services


def test_discovery_in_json_and_xml(o311, server):
    body = o311.get("discovery.json").json()
    (endpoint,) = body["endpoints"]
    assert endpoint["url"] == server + BASE
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert set(endpoint["formats"]) == {"text/xml", "application/json"}
    assert endpoint["type"] == "test"  # not a production server
    root = xml_of(o311.get("discovery.xml"))
    assert root.tag == "discovery"
    assert [e.tag for e in root] == ["changeset", "contact", "key_service", "endpoints"]
    assert [e.tag for e in root.find("endpoints")] == ["endpoint"]
    formats = root.find("endpoints/endpoint/formats")
    assert [f.text for f in formats.iter("format")] == endpoint["formats"]


def test_services_are_the_subclasses_in_json_and_xml(o311):
    expected = subclasses()
    response = o311.get("services.json")
    assert response.headers["content-type"] == "application/json"
    services = response.json()
    assert [(s["service_code"], s["group"]) for s in services] == expected
    first = services[0]
    assert first["service_name"] == "暴露垃圾" and first["metadata"] is False
    assert first["type"] == "realtime" and "Exposed rubbish" in first["keywords"]
    root = xml_of(o311.get("services.xml"))
    assert root.tag == "services" and len(root) == len(expected)
    assert {e.tag for e in root} == {"service"}
    assert [e.tag for e in root[0]] == list(first)
    assert [(e.findtext("service_code"), e.findtext("group")) for e in root] == expected
    assert root[0].findtext("metadata") == "false"


def test_service_definition_in_json_and_xml(o311):
    assert o311.get("services/0301.json").json() == {"service_code": "0301", "attributes": []}
    root = xml_of(o311.get("services/0301.xml"))
    assert root.tag == "service_definition"
    assert [e.tag for e in root] == ["service_code", "attributes"]
    assert root.findtext("service_code") == "0301" and len(root.find("attributes")) == 0
    assert_error(o311.get("services/9999.json"), 404, "9999")
    assert_error(o311.get("services/9999.xml"), 404, "9999")


def test_unknown_formats_paths_and_methods_answer_in_the_spec_shape(o311):
    assert_error(o311.get("services.yaml"), 404, ".yaml")
    assert_error(o311.get("requests/C1.html"), 404, ".html")
    assert_error(o311.get("services"), 404, ".json or .xml")
    assert_error(o311.get("no-such-thing.xml"), 404, "no-such-thing")
    assert_error(o311.put("requests.json"), 405, "PUT")
    # The v1 API keeps its own error body.
    assert "error" in httpx.get(str(o311.base_url).replace(BASE, "/api/v1/nothing")).json()


# ------------------------------------------------------------------ POST


def test_form_post_creates_a_case_that_reads_back_without_personal_data(o311, store):
    created = post(
        o311,
        api_key=KEY,
        service_code="0101",
        description="路边 <垃圾> & 杂物",
        media_url="https://img.example.cn/1.jpg",
        device_id="phone-1",
        **NW,
        **PERSONAL,
    )
    assert created.status_code == 201, created.text
    (answer,) = created.json()
    assert set(answer) == {"service_request_id", "service_notice", "account_id"}
    code, notice = answer["service_request_id"], answer["service_notice"]
    assert answer["account_id"] is None and "24" in notice and "城市管理局" in notice

    # Stored as a resident's case, routed to its grid, with the contact kept for staff.
    with store.session() as s:
        case = cases_repo.get_case(s, code)
        history = cases_repo.case_history(s, code)
    assert (case["source"], case["grid_code"], case["status"]) == ("resident", G1, "reported")
    assert case["reporter_phone"] == PERSONAL["phone"] and case["reporter_name"] == "三 张"
    assert history[0]["actor"] == "resident:open311 phone-1"

    response = o311.get(f"requests/{code}.json")
    (request,) = response.json()
    assert request["service_request_id"] == code and request["status"] == "open"
    assert request["service_code"] == "0101" and request["service_name"] == "暴露垃圾"
    assert (request["lat"], request["long"]) == (41.807, 123.405)
    assert request["description"] == "路边 <垃圾> & 杂物"
    assert request["agency_responsible"] == "城市管理局"
    assert request["address"] == "太原街街道 南京社区 第一网格"
    assert request["media_url"] == "https://img.example.cn/1.jpg"
    assert request["zipcode"] is None and "reported" in request["status_notes"]
    requested = datetime.fromisoformat(request["requested_datetime"])
    expected = datetime.fromisoformat(request["expected_datetime"])
    assert expected - requested == timedelta(hours=24)
    assert abs(datetime.now(UTC) - requested) < timedelta(minutes=5)

    root = xml_of(o311.get(f"requests/{code}.xml"))
    assert root.tag == "service_requests" and [e.tag for e in root] == ["request"]
    assert [e.tag for e in root[0]] == list(request)
    assert root.findtext("request/description") == "路边 <垃圾> & 杂物"  # escaped, read back
    assert root.findtext("request/long") == "123.405"

    token = o311.get(f"tokens/{code}.json").json()
    assert token == [{"service_request_id": code, "token": code}]
    assert xml_of(o311.get(f"tokens/{code}.xml")).findtext("request/service_request_id") == code

    # Privacy: no reader of the GET side ever sees who reported it.
    for path in (
        f"requests/{code}.json",
        f"requests/{code}.xml",
        "requests.json",
        "requests.xml",
        f"requests.json?service_request_id={code}",
    ):
        text = o311.get(path).text
        for value in PERSONAL.values():
            assert value not in text, (path, value)
        for field in ("first_name", "last_name", "email", "phone", "reporter"):
            assert field not in text, (path, field)
    assert_error(o311.get("requests/C19990101-999999.json"), 404, "C19990101-999999")
    assert_error(o311.get("tokens/nope.xml"), 404, "nope")


def test_post_in_xml_answers_xml(o311):
    root = xml_of(post(o311, "xml", api_key=KEY, service_code="0502", **SE))
    assert root.tag == "service_requests"
    assert [e.tag for e in root[0]] == ["service_request_id", "service_notice", "account_id"]
    assert root.findtext("request/account_id") == ""  # present and empty: null
    code = root.findtext("request/service_request_id")
    assert o311.get(f"requests/{code}.json").json()[0]["service_code"] == "0502"


def test_post_needs_a_valid_api_key(o311, store):
    body = {"service_code": "0101", **NW}
    assert_error(post(o311, **body), 403, "api_key")
    assert_error(post(o311, "xml", **body), 403, "api_key")
    assert_error(post(o311, api_key="wrong", **body), 403, "invalid api_key")
    assert_error(post(o311, "xml", api_key=DEFAULT_OPEN311_KEY, **body), 403, "api_key")
    assert post(o311, api_key="other", **body).status_code == 201  # every listed key works
    with store.session() as s:
        assert repo.count_rows(s)["cases"] == 1


def test_post_bad_fields_answer_400_naming_the_field(o311, store):
    good = {"api_key": KEY, "service_code": "0101", **NW}
    cases = [
        ({"service_code": ""}, "service_code"),
        ({"service_code": "9999"}, "service_code"),
        ({"service_code": "01"}, "service_code"),  # a class is not a service
        ({"lat": "91"}, "lat"),
        ({"lat": "-90.5"}, "lat"),
        ({"long": "181"}, "long"),
        ({"long": "east"}, "long"),
        ({"lat": "nan"}, "lat"),
        ({"lat": ""}, "lat"),
        ({"description": "长" * 4001}, "description"),
        ({"media_url": "file:///etc/passwd"}, "media_url"),
    ]
    for change, field in cases:
        assert_error(post(o311, **{**good, **change}), 400, field)
    no_point = {k: v for k, v in good.items() if k not in ("lat", "long")}
    description = assert_error(
        post(o311, "xml", **no_point, address_string="和平区太原街1号"), 400, "lat", "long"
    )
    assert "address_string" in description
    # A JSON body is not what the spec sends.
    assert_error(o311.post("requests.json", json=good), 400, "form-encoded")
    with store.session() as s:
        assert repo.count_rows(s)["cases"] == 0  # nothing was written


# ------------------------------------------------------------- GET requests


def _seed_cases(store) -> dict[str, str]:
    """Cases at known times and states, written through the case layer; name -> code."""
    now = datetime.now(UTC)
    with store.session() as s, s.begin():

        def new(code, lon, lat, days_ago):
            return cases_repo.create_case(
                s,
                category_code=code,
                lon=lon,
                lat=lat,
                description=f"{code} {days_ago}d",
                source="hotline",
                reporter_phone="13900000000",
                now=now - timedelta(days=days_ago),
            )["code"]

        out = {
            "old": new("0101", 123.405, 41.807, 120),  # outside the default 90 days
            "open": new("0101", 123.405, 41.807, 10),
            "light": new("0302", 123.415, 41.807, 5),
            "rejected": new("0302", 123.405, 41.802, 3),
            "duplicate": new("0101", 123.4051, 41.8071, 2),
            "resolved": new("0205", 123.405, 41.807, 1),
        }
        cases_repo.transition(s, out["rejected"], "reject", DISPATCHER, reason="不属于本辖区")
        cases_repo.transition(
            s, out["duplicate"], "duplicate", DISPATCHER, duplicate_of=out["open"]
        )
        for action in ("dispatch", "accept", "resolve"):
            cases_repo.transition(s, out["resolved"], action, DISPATCHER)
    return out


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["service_request_id"] for r in response.json()]


def test_get_requests_filters(o311, store):
    c = _seed_cases(store)
    recent = [c["resolved"], c["duplicate"], c["rejected"], c["light"], c["open"]]
    assert ids(o311.get("requests.json")) == recent  # last 90 days, newest first
    root = xml_of(o311.get("requests.xml"))
    assert root.tag == "service_requests" and len(root) == len(recent)
    assert [r.findtext("service_request_id") for r in root] == recent

    get = o311.get
    assert ids(get("requests.json", params={"service_code": "0302"})) == [c["rejected"], c["light"]]
    assert ids(get("requests.json", params={"service_code": "0302,0205"})) == [
        c["resolved"],
        c["rejected"],
        c["light"],
    ]
    assert ids(get("requests.json", params={"status": "open"})) == [c["light"], c["open"]]
    closed = [c["resolved"], c["duplicate"], c["rejected"]]
    assert ids(get("requests.json", params={"status": "closed"})) == closed
    assert ids(get("requests.json", params={"status": "open,closed"})) == recent
    assert ids(get("requests.json", params={"status": "closed", "service_code": "0101"})) == [
        c["duplicate"]
    ]

    now = datetime.now(UTC)
    w3 = lambda d: (now - timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    window = {"start_date": w3(6), "end_date": w3(1.5)}
    assert ids(get("requests.json", params=window)) == [c["duplicate"], c["rejected"], c["light"]]
    # An offset instead of Z, and only a start: 90 days on from it.
    start = (now - timedelta(days=130)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert ids(get("requests.json", params={"start_date": start})) == [c["old"]]
    assert ids(get("requests.json", params={"end_date": w3(100)})) == [c["old"]]

    # service_request_id overrides every other filter, even the 90-day window.
    wanted = f"{c['old']}, {c['light']},C19990101-999999"
    assert ids(get("requests.json", params={"service_request_id": wanted, "status": "closed"})) == [
        c["light"],
        c["old"],
    ]

    assert_error(get("requests.json", params={"status": "pending"}), 400, "status")
    assert_error(get("requests.xml", params={"start_date": "yesterday"}), 400, "start_date")
    assert_error(get("requests.json", params={"end_date": "2026-13-01"}), 400, "end_date")
    assert_error(
        get("requests.json", params={"start_date": w3(1), "end_date": w3(2)}), 400, "end_date"
    )
    assert_error(
        get("requests.json", params={"start_date": w3(120), "end_date": w3(1)}), 400, "90 days"
    )
    assert_error(get("requests.json", params={"service_code": "0101,9999"}), 400, "9999")
    many = ",".join(f"C{i}" for i in range(1001))
    assert_error(get("requests.json", params={"service_request_id": many}), 400, "1000")


def test_status_and_notes_of_closed_requests(o311, store):
    c = _seed_cases(store)
    got = {r["service_request_id"]: r for r in o311.get("requests.json").json()}
    rejected, duplicate, resolved = got[c["rejected"]], got[c["duplicate"]], got[c["resolved"]]
    assert rejected["status"] == "closed" and "不属于本辖区" in rejected["status_notes"]
    assert "internal status: rejected" in rejected["status_notes"]
    assert duplicate["status"] == "closed" and c["open"] in duplicate["status_notes"]
    assert resolved["status"] == "closed" and "resolved" in resolved["status_notes"]
    assert got[c["light"]]["status"] == "open"
    assert got[c["light"]]["address"] == "太原街街道 南京社区 第二网格"  # grid 002
    assert got[c["rejected"]]["address"].endswith("第三网格")  # grid 003
    # Hotline phone numbers stay internal too.
    assert "13900000000" not in o311.get("requests.xml").text


def test_every_internal_status_maps_to_open_or_closed():
    assert set(STATUS_NOTES) == set(workflow.STATUSES)
    assert set(workflow.OPEN_STATUSES) | set(workflow.CLOSED_STATUSES) == set(workflow.STATUSES)
    assert not set(workflow.OPEN_STATUSES) & set(workflow.CLOSED_STATUSES)


# ----------------------------------------------------- a real Open311 client


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_georeport_client_reads_services_and_requests(server, store, fmt):
    c = _seed_cases(store)
    client = GeoReport(server + BASE, api_key=KEY, output_format=fmt)
    services = client.get_service_list()
    assert [s["service_code"] for s in services] == [code for code, _ in subclasses()]
    definition = client.get_service_definition("0101")
    assert definition["service_code"] == "0101"
    requests = client.get_service_requests(status="closed")
    assert [r["service_request_id"] for r in requests] == [
        c["resolved"],
        c["duplicate"],
        c["rejected"],
    ]
    one = client.get_service_request(c["light"])
    assert one["service_code"] == "0302" and one["status"] == "open"
    assert float(one["lat"]) == 41.807 and float(one["long"]) == 123.415
    by_code = client.get_service_requests(service_code="0205")
    # xmltodict gives a lone <request> as a dict, not a list of one.
    by_code = [by_code] if isinstance(by_code, dict) else by_code
    assert [r["service_request_id"] for r in by_code] == [c["resolved"]]


# ------------------------------------------------------------------ pure


def test_xml_renderer_escapes_and_drops_what_xml_cannot_carry():
    body = open311_xml.render(
        "service_requests",
        [{"description": 'a < b & "c"\x01\x0b end', "lat": 1.5, "flag": True, "zipcode": None}],
        "request",
    )
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<service_requests>')
    root = ET.fromstring(body)
    assert root.findtext("request/description") == 'a < b & "c" end'
    assert root.findtext("request/lat") == "1.5" and root.findtext("request/flag") == "true"
    assert root.find("request/zipcode").text is None


def test_production_needs_its_own_open311_key(tmp_path):
    with pytest.raises(ValueError, match="OPEN311"):
        Settings(data_dir=tmp_path, environment="production", secret_key="s")
    ok = Settings(
        data_dir=tmp_path, environment="production", secret_key="s", open311_api_keys="k1,k2"
    )
    assert ok.open311_api_keys == "k1,k2"
