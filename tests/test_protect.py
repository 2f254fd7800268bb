"""Idempotent intake, rate limits, body and bbox limits, readiness: api/protect.py and
/readyz over real HTTP on a real uvicorn server, on both stores.

The district is the four-grid square of `tests/test_cases.py`.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from api.protect import (
    COMMITTED,
    IdempotencyKeyTaken,
    RateLimiter,
    _Claim,
    _current_claim,
    _Idempotency,
    bbox_too_large,
    hook_sessions,
)
from api.routers import cases as cases_router
from api.settings import Settings
from gis.db import repo, users_repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import Case, IdempotencyKey
from tests.server import serve
from tests.test_cases import FOUR_GRIDS, load_generation

OPEN311_KEY = "test-open311-key"
CASE = {"category": "0101", "lon": 123.405, "lat": 41.808, "description": "垃圾"}


@pytest.fixture
def sessions(store_url):
    engine = make_engine(store_url)
    with make_sessionmaker(engine)() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, "initial", FOUR_GRIDS)
    yield make_sessionmaker(engine)
    engine.dispose()


def _settings(store_url, tmp_path, monkeypatch, **overrides) -> Settings:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    return Settings(
        database_url=store_url, data_dir=tmp_path, open311_api_keys=OPEN311_KEY, **overrides
    )


@pytest.fixture
def api(sessions, store_url, tmp_path, monkeypatch) -> Iterator[httpx.Client]:
    settings = _settings(store_url, tmp_path, monkeypatch, rate_limit_per_min=0)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def count_cases(sessions) -> int:
    with sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Case))


def key_rows(sessions) -> list[IdempotencyKey]:
    with sessions() as s:
        return list(s.scalars(sa.select(IdempotencyKey)))


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


# ------------------------------------------------------------ idempotency


def test_a_retry_with_the_same_key_gets_the_same_answer_and_creates_nothing(api, sessions):
    key = str(uuid.uuid4())
    first = api.post("/api/v1/cases", json=CASE, headers=keyed(key))
    assert first.status_code == 201, first.text
    again = api.post("/api/v1/cases", json=CASE, headers=keyed(key))
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert count_cases(sessions) == 1
    # Without a key, the same body is a new report.
    assert api.post("/api/v1/cases", json=CASE).status_code == 201
    assert count_cases(sessions) == 2


def test_the_same_key_with_another_body_is_refused(api, sessions):
    key = "report-1"
    assert api.post("/api/v1/cases", json=CASE, headers=keyed(key)).status_code == 201
    other = api.post("/api/v1/cases", json={**CASE, "description": "另一件事"}, headers=keyed(key))
    assert other.status_code == 422
    assert other.json()["error"] == "IdempotencyKeyReused"
    assert "Idempotency-Key" in other.json()["message"]
    assert count_cases(sessions) == 1


def test_keys_belong_to_one_client(api, sessions):
    """The same key from two systems (two API keys) is two keys: two cases."""
    from gis.db import users_repo

    with sessions() as s, s.begin():
        _, key_a = users_repo.add_api_key(s, "hotline-a", "resident")
        _, key_b = users_repo.add_api_key(s, "hotline-b", "resident")
    key = "shared-key"
    a = api.post("/api/v1/cases", json=CASE, headers={**keyed(key), "X-API-Key": key_a})
    b = api.post("/api/v1/cases", json=CASE, headers={**keyed(key), "X-API-Key": key_b})
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json()["code"] != b.json()["code"]
    again = api.post("/api/v1/cases", json=CASE, headers={**keyed(key), "X-API-Key": key_a})
    assert again.content == a.content
    assert count_cases(sessions) == 2
    assert len({row.client for row in key_rows(sessions)}) == 2


def test_concurrent_duplicates_create_one_case(api, sessions):
    key = str(uuid.uuid4())
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=30) as client:
            barrier.wait()
            answers.append(client.post("/api/v1/cases", json=CASE, headers=keyed(key)))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {201, 409}, [r.text for r in answers]
    assert 201 in statuses
    assert len({r.content for r in answers if r.status_code == 201}) == 1
    for r in answers:
        if r.status_code == 409:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "IdempotencyKeyInUse"
    assert count_cases(sessions) == 1


def _put_key(sessions, key: str, *, status, age: timedelta, body=b"x", sha="0" * 64) -> None:
    with sessions() as s, s.begin():
        s.add(
            IdempotencyKey(
                client="addr:127.0.0.1",
                key=key,
                method="POST",
                path="/api/v1/cases",
                request_sha256=sha,
                status_code=status,
                content_type="application/json",
                body=body,
                created_at=datetime.now(UTC) - age,
            )
        )


def _digest_of_case_post(api, sessions) -> str:
    """The request hash the server computes for CASE, read back from a stored key."""
    api.post("/api/v1/cases", json=CASE, headers=keyed("probe"))
    with sessions() as s:
        return s.scalar(
            sa.select(IdempotencyKey.request_sha256).where(IdempotencyKey.key == "probe")
        )


def test_a_key_still_running_answers_409_until_its_lease_ends(api, sessions):
    sha = _digest_of_case_post(api, sessions)
    _put_key(sessions, "running", status=None, age=timedelta(seconds=1), sha=sha)
    busy = api.post("/api/v1/cases", json=CASE, headers=keyed("running"))
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert count_cases(sessions) == 1  # the probe's
    # A claim older than the lease (60 s) is a request that died before committing:
    # nothing was written under it, so a retry runs.
    _put_key(sessions, "abandoned", status=None, age=timedelta(minutes=5), sha=sha)
    taken = api.post("/api/v1/cases", json=CASE, headers=keyed("abandoned"))
    assert taken.status_code == 201
    assert count_cases(sessions) == 2


def test_a_committed_key_without_an_answer_never_runs_again(api, sessions):
    sha = _digest_of_case_post(api, sessions)
    _put_key(sessions, "lost", status=COMMITTED, age=timedelta(minutes=5), sha=sha)
    lost = api.post("/api/v1/cases", json=CASE, headers=keyed("lost"))
    assert lost.status_code == 409
    assert lost.json()["error"] == "IdempotencyAnswerLost"
    # Committed a moment ago: the first request is storing its answer; come back soon.
    _put_key(sessions, "finishing", status=COMMITTED, age=timedelta(seconds=1), sha=sha)
    finishing = api.post("/api/v1/cases", json=CASE, headers=keyed("finishing"))
    assert finishing.status_code == 409
    assert finishing.json()["error"] == "IdempotencyKeyInUse"
    assert finishing.headers["retry-after"] == "1"
    assert count_cases(sessions) == 1


def test_keys_expire(api, sessions):
    sha = _digest_of_case_post(api, sessions)
    _put_key(sessions, "old", status=201, age=timedelta(hours=25), sha=sha, body=b'{"old":1}')
    fresh = api.post("/api/v1/cases", json=CASE, headers=keyed("old"))
    assert fresh.status_code == 201 and "code" in fresh.json()
    assert count_cases(sessions) == 2


def test_an_answer_that_wrote_nothing_frees_the_key(api, sessions):
    bad = {**CASE, "category": "9999"}
    first = api.post("/api/v1/cases", json=bad, headers=keyed("k-bad"))
    assert 400 <= first.status_code < 500
    assert key_rows(sessions) == []
    # The client fixes the body and retries with the same key: it runs.
    fixed = api.post("/api/v1/cases", json=CASE, headers=keyed("k-bad"))
    assert fixed.status_code == 201
    assert count_cases(sessions) == 1


def test_a_malformed_key_is_refused(api, sessions):
    for key in (b"", b"x" * 201, "两个字".encode()):
        r = api.post("/api/v1/cases", json=CASE, headers={"Idempotency-Key": key})
        assert r.status_code == 400, key
        assert "Idempotency-Key" in r.json()["message"]
    assert count_cases(sessions) == 0


def test_open311_posts_are_idempotent_in_json_and_xml(api, sessions):
    form = {
        "api_key": OPEN311_KEY,
        "service_code": "0101",
        "lat": "41.808",
        "long": "123.405",
        "description": "垃圾",
    }
    for fmt in ("json", "xml"):
        url = f"/open311/v2/requests.{fmt}"
        first = api.post(url, data=form, headers=keyed(f"o311-{fmt}"))
        assert first.status_code == 201, first.text
        again = api.post(url, data=form, headers=keyed(f"o311-{fmt}"))
        assert (again.status_code, again.content) == (201, first.content)
    assert count_cases(sessions) == 2
    clash = api.post(
        "/open311/v2/requests.json", data={**form, "lat": "41.807"}, headers=keyed("o311-json")
    )
    assert clash.status_code == 422
    assert clash.json()[0]["code"] == 422  # GeoReport's error list
    assert count_cases(sessions) == 2


def test_a_request_whose_lease_was_taken_over_cannot_commit(sessions):
    """The crash guarantee, without a crash: request 1 holds the key past its lease,
    request 2 takes it over; request 1's transaction then refuses to commit."""
    hook_sessions(sessions)
    keys = _Idempotency(ttl_s=3600, lease_s=0.001)
    first = keys.claim(sessions, "addr:x", "k", "POST", "/api/v1/cases", "a" * 64)
    assert first.kind == "claimed"
    second = keys.claim(sessions, "addr:x", "k", "POST", "/api/v1/cases", "a" * 64)
    assert second.kind == "claimed" and second.token != first.token

    def file_case(token: bytes) -> None:
        # The intake route's own session handling: on PostGIS an unkeyed intake runs
        # without BEGIN/COMMIT, which a keyed one must not (its mark would commit apart).
        reset = _current_claim.set(_Claim("addr:x", "k", token))
        try:
            cases_router.file_case(
                sessions, category_code="0101", lon=123.405, lat=41.808, description="x",
                source="resident",
            )  # fmt: skip
        finally:
            _current_claim.reset(reset)

    with pytest.raises(IdempotencyKeyTaken):
        file_case(first.token)
    assert count_cases(sessions) == 0
    file_case(second.token)
    assert count_cases(sessions) == 1
    [row] = key_rows(sessions)
    assert row.status_code == COMMITTED  # committed with the case, answer still to come


# ------------------------------------------------------------- rate limits


def test_rate_limiter_buckets_refill_per_client():
    now = [0.0]
    limiter = RateLimiter(per_min=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0  # another client has its own bucket
    now[0] = 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert RateLimiter(per_min=0, burst=1).take("a") == 0.0  # 0: off


def test_public_writes_over_the_rate_answer_429(sessions, store_url, tmp_path, monkeypatch):
    settings = _settings(store_url, tmp_path, monkeypatch, rate_limit_per_min=6, rate_limit_burst=3)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as api:
        statuses = [api.post("/api/v1/cases", json=CASE).status_code for _ in range(3)]
        assert statuses == [201, 201, 201]
        refused = api.post("/api/v1/cases", json=CASE)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 10
        assert "too many requests" in refused.json()["message"]
        o311 = api.post("/open311/v2/requests.xml", data={"api_key": OPEN311_KEY})
        assert o311.status_code == 429 and b"<errors>" in o311.content
        # Reads are not limited.
        assert api.get("/api/v1/cases").status_code == 200
    assert count_cases(sessions) == 3


def test_password_guessing_is_limited_per_address(sessions, store_url, tmp_path, monkeypatch):
    """Wrong passwords, right ones and other credentials all count against the address:
    a guesser cannot buy fresh buckets with made-up Authorization headers."""
    settings = _settings(store_url, tmp_path, monkeypatch, login_rate_per_min=6, login_rate_burst=3)
    with sessions() as s, s.begin():
        users_repo.add_user(s, "alice", "right password!", "admin")
    guess = {"username": "alice", "password": "wrong"}
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as api:
        statuses = [
            api.post("/api/v1/auth/token", data=guess).status_code,
            api.post("/login", data=guess).status_code,
            api.post(
                "/api/v1/auth/token", data=guess, headers={"Authorization": "Bearer made-up"}
            ).status_code,
        ]
        assert statuses == [401, 401, 401]
        for path in ("/api/v1/auth/token", "/login"):
            refused = api.post(path, data={"username": "alice", "password": "right password!"})
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 10
            assert "too many login attempts" in refused.json()["message"]
        # Everything else goes on as before.
        assert api.post("/api/v1/cases", json=CASE).status_code == 201
        assert api.get("/login").status_code == 200


# ------------------------------------------------------------- body limits


def test_bodies_over_the_limit_answer_413_declared_or_streamed(
    sessions, store_url, tmp_path, monkeypatch
):
    settings = _settings(
        store_url, tmp_path, monkeypatch, body_max_bytes=4096, upload_max_bytes=64 * 1024
    )
    big = {**CASE, "description": "x" * 5000}
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as api:
        declared = api.post("/api/v1/cases", json=big)
        assert declared.status_code == 413
        assert "larger than 4096 bytes" in declared.json()["message"]

        def chunks(n_chunks: int, size: int):
            for _ in range(n_chunks):
                yield b"x" * size

        streamed = api.post(
            "/api/v1/cases",
            content=chunks(4, 2048),
            headers={"Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        # An upload streamed in chunks (no Content-Length) is cut off at the limit.
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.geojson"\r\nContent-Type: application/geo+json\r\n\r\n'
        ).encode()

        def upload():
            yield head
            for _ in range(40):
                yield b" " * 4096

        up = api.post(
            "/api/v1/imports/stations",
            content=upload(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert up.status_code == 413, up.text
        assert "upload is larger than 65536 bytes" in up.json()["message"]
        # Open311 answers in its own shape.
        o311 = api.post(
            "/open311/v2/requests.json",
            content=b"description=" + b"x" * 5000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert o311.status_code == 413 and o311.json()[0]["code"] == 413
    assert count_cases(sessions) == 0


# -------------------------------------------------------------------- bbox


def test_bbox_size_check():
    assert bbox_too_large(b"bbox=123.4,41.8,123.5,41.9", 0.5) is None
    assert "0.5° wide" in bbox_too_large(b"limit=5&bbox=120,40,121,40.1", 0.5)
    # Malformed or out of range: the route refuses it itself, with its own message.
    for bad in (b"bbox=nonsense", b"bbox=200,0,201,1", b"bbox=1,1,0,0", b"bbox=nan,0,1,1"):
        assert bbox_too_large(bad, 0.5) is None


def test_a_bbox_larger_than_allowed_answers_400(api):
    for path in ("/api/v1/cases", "/api/v1/areas", "/api/v1/buildings", "/api/v1/stations"):
        wide = api.get(path, params={"bbox": "120,40,121,40.1"})
        assert wide.status_code == 400, path
        assert wide.json()["message"].startswith("query parameter bbox: must be at most 0.5°")
        assert wide.json()["problems"][0]["parameter"] == "bbox"
        assert api.get(path, params={"bbox": "123.40,41.80,123.42,41.81"}).status_code == 200


# --------------------------------------------------------------- readiness


def test_readyz_needs_an_active_generation(store_url, tmp_path, monkeypatch):
    settings = _settings(store_url, tmp_path, monkeypatch)
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as api:
        empty = api.get("/readyz")
        assert empty.status_code == 503
        assert "no active boundary generation" in empty.json()["reason"]
        assert api.get("/healthz").status_code == 200
        engine = make_engine(store_url)
        with make_sessionmaker(engine)() as s, s.begin():
            load_generation(s, "initial", FOUR_GRIDS)
        engine.dispose()
        ready = api.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "generation": "initial", "reason": None}
