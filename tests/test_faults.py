"""Database faults: PostGIS stops under a running server with intake traffic, then
comes back.

The test starts its own PostGIS (never the session-wide one other tests use), loads
the four-grid district, serves the app with uvicorn on loopback and keeps three
clients filing cases, each with its own Idempotency-Key and retrying that key on
503 as a well-behaved client does. While the database is down every answer must be
a fast 503 with the common message (never a 500); once it is back the service must
recover by itself; afterwards every case answered 201 is stored exactly once, and
no case lacks its history (nothing half-written).

SpatiaLite has no server to lose: its faults (a locked file) answer 503 through the
same handler, which tests/test_protect.py does not need a fault for.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import sqlalchemy as sa

from api.settings import Settings
from gis.db import repo
from gis.db.engine import make_engine, make_sessionmaker, migrate
from tests.pgserver import PostGISServer, remove, start_postgis
from tests.server import serve
from tests.test_cases import FOUR_GRIDS, load_generation

CASE = {"category": "0101", "lon": 123.405, "lat": 41.808, "description": "fault test"}
#: How fast a request must fail while the database is down (the brief asks ~3 s).
FAIL_FAST_S = 3.5
OUTAGE_S = 3.0
RECOVERY_LIMIT_S = 20.0
LEASE_S = 3.0


@pytest.fixture
def own_postgis() -> Iterator[PostGISServer]:
    server = start_postgis()
    try:
        yield server
    finally:
        remove(server)


@pytest.fixture
def store_url(own_postgis) -> str:
    url = own_postgis.url
    engine = make_engine(url)
    migrate(engine)
    with make_sessionmaker(engine)() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, "initial", FOUR_GRIDS)
    engine.dispose()
    return url


@pytest.fixture
def settings(store_url, tmp_path, monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    # A short lease: a claim orphaned by the outage is taken over soon after it.
    return Settings(
        database_url=store_url,
        data_dir=tmp_path,
        rate_limit_per_min=0,
        db_timeout_s=2,
        idempotency_lease_s=LEASE_S,
    )


@dataclass
class Client:
    """One reporter: files cases one after another, retrying each key until 201.

    `stop` ends the run after the current key; `abort` gives up on it too."""

    base: str
    stop: threading.Event
    abort: threading.Event
    statuses: Counter = field(default_factory=Counter)
    started: list[str] = field(default_factory=list)  # every key tried
    created: dict[str, str] = field(default_factory=dict)  # key -> case code
    lost: list[str] = field(default_factory=list)  # keys answered "answer lost"
    slowest_error_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as http:
            while not self.stop.is_set():
                key = str(uuid.uuid4())
                self.started.append(key)
                while not self.abort.is_set():
                    began = time.monotonic()
                    try:
                        r = http.post("/api/v1/cases", json=CASE, headers={"Idempotency-Key": key})
                    except httpx.HTTPError as exc:  # the server itself must stay up
                        self.errors.append(repr(exc))
                        break
                    self.statuses[r.status_code] += 1
                    if r.status_code == 201:
                        self.created[key] = r.json()["code"]
                        break
                    if r.status_code == 409 and r.json()["error"] == "IdempotencyAnswerLost":
                        self.lost.append(key)
                        break
                    self.slowest_error_s = max(self.slowest_error_s, time.monotonic() - began)
                    if r.status_code == 503 and (
                        r.json().get("error") != "DatabaseUnavailable"
                        or "Retry-After" not in r.headers
                    ):
                        self.errors.append(f"503 without the common answer: {r.text}")
                    if r.status_code not in (409, 503):
                        self.errors.append(f"unexpected {r.status_code}: {r.text[:300]}")
                    time.sleep(0.1)  # a real client would honour Retry-After


def _wait_for(check, limit_s: float) -> float:
    """Seconds until `check()` is true (fails past `limit_s`)."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        if check():
            return time.monotonic() - began
        time.sleep(0.1)
    pytest.fail(f"not true within {limit_s} s")


def test_database_outage_answers_503_fast_and_recovers_with_nothing_lost(
    own_postgis, store_url, settings, capsys
):
    with serve(settings) as base, httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/readyz").json()["status"] == "ready"
        stop, abort = threading.Event(), threading.Event()
        clients = [Client(base, stop, abort) for _ in range(3)]
        threads = [threading.Thread(target=c.run) for c in clients]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            own_postgis.stop("fast")
            stopped_at = time.monotonic()

            # While it is down: fast, clear 503s from the API and the readiness probe.
            began = time.monotonic()
            down = http.post("/api/v1/cases", json=CASE)
            post_s = time.monotonic() - began
            assert down.status_code == 503, down.text
            assert "database" in down.json()["message"]
            assert post_s < FAIL_FAST_S
            began = time.monotonic()
            ready = http.get("/readyz")
            ready_s = time.monotonic() - began
            assert ready.status_code == 503 and ready_s < FAIL_FAST_S
            assert "database" in ready.json()["reason"]
            assert http.get("/healthz").status_code == 200  # the process is alive
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))

            restart_at = time.monotonic()
            own_postgis.start()  # pg_ctl -w: returns once PostgreSQL accepts connections
            started_at = time.monotonic()
            recovery_s = _wait_for(lambda: http.get("/readyz").status_code == 200, RECOVERY_LIMIT_S)
            assert http.post("/api/v1/cases", json=CASE).status_code == 201
            time.sleep(1.0)  # traffic after recovery
        finally:
            stop.set()  # each client finishes the key it holds (a lease at most)
            for t in threads:
                t.join(timeout=LEASE_S + 15)
            abort.set()
            for t in threads:
                t.join(timeout=15)
        outage_s = started_at - stopped_at

    statuses = sum((c.statuses for c in clients), Counter())
    errors = [e for c in clients for e in c.errors]
    assert not errors, errors
    assert set(statuses) <= {201, 409, 503}, statuses
    assert statuses[503] > 0 and statuses[201] > 0
    assert max(c.slowest_error_s for c in clients) < FAIL_FAST_S

    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        codes = Counter(conn.scalars(sa.text("SELECT code FROM cases")))
        no_history = conn.scalar(
            sa.text(
                "SELECT count(*) FROM cases c WHERE NOT EXISTS "
                "(SELECT 1 FROM case_events e WHERE e.case_id = c.id AND e.action = 'report')"
            )
        )
        pending_keys = conn.scalar(
            sa.text("SELECT count(*) FROM idempotency_keys WHERE status_code IS NULL")
        )
    engine.dispose()
    created = [code for c in clients for code in c.created.values()]
    lost = [key for c in clients for key in c.lost]
    # Every key a client tried ended in one case: answered 201, or (crash window) lost.
    assert all(k in c.created or k in c.lost for c in clients for k in c.started)
    assert all(codes[code] == 1 for code in created)  # every 201 stored exactly once
    # The clients' cases plus the two posted by hand (one 503, one 201): nothing else.
    assert sum(codes.values()) == len(created) + len(lost) + 1
    assert no_history == 0
    assert pending_keys == 0
    with capsys.disabled():
        print(
            f"\nfault figures: outage {outage_s:.1f} s; {statuses[503]} answers 503, "
            f"{statuses[201]} 201, {statuses[409]} 409; a request during the outage "
            f"answered in {post_s:.2f} s (readyz {ready_s:.2f} s, slowest error "
            f"{max(c.slowest_error_s for c in clients):.2f} s); ready again "
            f"{recovery_s:.2f} s after PostGIS accepted connections "
            f"({started_at - restart_at:.1f} s for pg_ctl start); "
            f"{len(created)} cases answered 201, each stored once, "
            f"{len(lost)} answers lost, 0 half-written"
        )
