"""Mixed traffic over HTTP on PostGIS: reads, case intake and workflow steps at once.

Issue 7's load test. Starts a throwaway PostGIS (tests/pgserver.py), loads a demo
district, creates one dispatcher per street (real users, real tokens: the server
runs with WANGGE_ENVIRONMENT=production and its own secret key), runs
`wangge serve --workers 2` on loopback with the per-client rate limit off (the
load generator is one client), and sends a seeded mix of requests at a fixed
rate, open loop, for a fixed time:

    80% reads     GET /api/v1/locate (public), GET /api/v1/stations/nearest
                  (public, mode=walk and mode=straight), GET /api/v1/cases?grid=
                  and GET /api/v1/cases/{id} (the street's dispatcher token)
    15% intake    POST /api/v1/cases (public, anonymous)
     5% steps     POST /api/v1/cases/{id}/{action} by the street's dispatcher, each
                  case once, legal for its status before the run: dispatch a
                  'reported' case to its grid's worker, accept a 'dispatched' one,
                  start an 'accepted' one, resolve one 'in_progress'. When the store
                  holds too few open cases (the demo closes all but the last days'),
                  cases are first filed through the API, untimed, and dispatched.

Prints, per request class and overall, the count, the rate sustained, latency
p50/p90/p99/max (from each request's due time, so a client that falls behind
counts against it), the statuses with 4xx and 5xx counted (target: no 5xx), and
checks that the cases stored grew by exactly the 201 answers to intake and that
the case events grew by exactly the 200 answers to steps.

The client is bench_intake's asyncio HTTP/1.1 keep-alive connection (cheaper per
request than httpx on cores shared with the server). `--database-url` reuses a
PostGIS store already loaded with a demo; its bench users are disabled at the end,
and the steps taken stay taken.

    .venv/bin/python benchmarks/bench_load.py [--rate 150] [--seconds 60] [--size city]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_intake import (  # noqa: E402
    _Connection,
    _count_cases,
    _free_port,
    load_fresh,
)
from data.demo import generate_district  # noqa: E402
from gis.cases import Actor  # noqa: E402
from gis.db import users_repo  # noqa: E402
from gis.db.engine import make_engine, make_sessionmaker  # noqa: E402
from tests.pgserver import remove, start_postgis  # noqa: E402

HOST = "127.0.0.1"
#: request class -> share of the traffic (reads 80%, intake 15%, steps 5%)
MIX = {
    "locate": 0.25,
    "nearest walk": 0.12,
    "nearest straight": 0.08,
    "cases by grid": 0.15,
    "case detail": 0.20,
    "intake": 0.15,
    "step": 0.05,
}
#: the step a dispatcher takes on a case, by the case's status before the run
STEP_FOR = {
    "reported": "dispatch",
    "dispatched": "accept",
    "accepted": "start",
    "in_progress": "resolve",
}
BENCH_ACTOR = Actor("admin", "bench_load")


def _http(method: str, path: str, params: dict | None = None, *, token=None, body=None) -> bytes:
    """One HTTP/1.1 request, encoded (the target is HOST; the port does not matter here)."""
    target = f"{path}?{urlencode(params)}" if params else path
    head = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _drive(
    requests: list[bytes], port: int, rate: float, connections: int = 64
) -> tuple[np.ndarray, np.ndarray, float]:
    """Send `requests` at `rate` per second, open loop; (latency s, status, elapsed s).

    Request i is due at start + i/rate and leaves then, on an idle keep-alive
    connection or a new one; its latency runs from its due time. Results are kept
    per request, so they can be split by class. No answer within 10 s: status 0.
    """
    idle: deque[_Connection] = deque(
        await asyncio.gather(*(_Connection.open(HOST, port) for _ in range(connections)))
    )
    latency = np.zeros(len(requests))
    status = np.zeros(len(requests), dtype=int)

    async def one(i: int, due: float) -> None:
        conn = idle.popleft() if idle else None
        try:
            if conn is None:
                conn = await _Connection.open(HOST, port)
            # `post` writes whatever request it is given and reads one answer
            status[i] = await asyncio.wait_for(conn.post(requests[i]), timeout=10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            status[i] = 0
            if conn is not None:
                conn.close()
                conn = None
        latency[i] = time.perf_counter() - due
        if conn is not None:
            idle.append(conn)

    loop = asyncio.get_running_loop()
    tasks = []
    start = time.perf_counter()
    for i in range(len(requests)):
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(loop.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while idle:
        idle.pop().close()
    return latency, status, elapsed


@dataclass
class Store:
    """What the traffic is drawn from, read from the store before the run."""

    url: str
    points: np.ndarray  # building points: where residents stand and report
    categories: list[str]
    station_kinds: list[str]
    grids: list[tuple[str, str]]  # (grid code, street code) of grids with cases
    case_refs: list[tuple[int, str]]  # (case id, street code): cases to look at
    steps: list[tuple[int, str, str, str]]  # (case id, street, status, grid's worker)
    passwords: dict[str, str] = field(default_factory=dict)  # street -> password
    users: dict[str, str] = field(default_factory=dict)  # street -> username


def _load_fresh(server, size: str) -> str:
    """A new database on `server` with the demo district of `size`, vacuumed; its URL."""
    url, counts = load_fresh(server, generate_district(size))
    print(f"loaded the {size} demo into PostGIS: {counts}")
    return url


def _read_store(url: str, rng: np.random.Generator) -> Store:
    engine = make_engine(url)
    with engine.connect() as conn:

        def rows(sql: str) -> list:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]

        points = np.array(rows("SELECT ST_X(point), ST_Y(point) FROM buildings ORDER BY id"))
        categories = [c for (c,) in rows(
            "SELECT code FROM categories WHERE level = 'subclass' ORDER BY code"
        )]  # fmt: skip
        kinds = [k for (k,) in rows("SELECT DISTINCT kind FROM stations ORDER BY kind")]
        grids = rows(
            "SELECT DISTINCT grid_code, street_code FROM cases"
            " WHERE grid_code IS NOT NULL AND street_code IS NOT NULL ORDER BY 1"
        )
        refs = rows("SELECT id, street_code FROM cases WHERE street_code IS NOT NULL ORDER BY id")
    engine.dispose()
    picked = rng.choice(len(refs), size=min(len(refs), 20_000), replace=False)
    return Store(url, points, categories, kinds, grids, [refs[i] for i in picked], [])


def _read_steps(store: Store, rng: np.random.Generator) -> None:
    """Open cases a street dispatcher may take one step on, in a seeded order."""
    statuses = ", ".join(f"'{s}'" for s in STEP_FOR)
    engine = make_engine(store.url)
    with engine.connect() as conn:
        steps = [tuple(r) for r in conn.exec_driver_sql(
            "SELECT DISTINCT ON (c.id) c.id, c.street_code, c.status, w.code FROM cases c"
            " JOIN worker_grids wg ON wg.grid_code = c.grid_code"
            " JOIN workers w ON w.id = wg.worker_id AND w.active"
            f" WHERE c.street_code IS NOT NULL AND c.status IN ({statuses})"
            " ORDER BY c.id, w.code"
        )]  # fmt: skip
    engine.dispose()
    store.steps = [steps[i] for i in rng.permutation(len(steps))]


def _add_dispatchers(store: Store) -> None:
    """One dispatcher per street with cases, scoped to the street (a real user)."""
    run = secrets.token_hex(3)
    engine = make_engine(store.url)
    with make_sessionmaker(engine)() as session, session.begin():
        for street in sorted({s for _, s in store.grids}):
            username, password = f"bench-{run}-{street}", secrets.token_urlsafe(16)
            users_repo.add_user(
                session, username, password, "dispatcher", scope=street, actor=BENCH_ACTOR
            )
            store.users[street], store.passwords[street] = username, password
    engine.dispose()


def _disable_dispatchers(store: Store) -> None:
    engine = make_engine(store.url)
    with make_sessionmaker(engine)() as session, session.begin():
        for username in store.users.values():
            users_repo.disable_user(session, username, actor=BENCH_ACTOR)
    engine.dispose()


@contextmanager
def _server(url: str, workers: int):
    """`wangge serve` in production mode on a free port, in its own process group."""
    port = _free_port()
    env = dict(
        os.environ,
        WANGGE_DATABASE_URL=url,
        WANGGE_ENVIRONMENT="production",
        WANGGE_SECRET_KEY=secrets.token_urlsafe(32),
        WANGGE_OPEN311_API_KEYS=secrets.token_urlsafe(16),
        WANGGE_RATE_LIMIT_PER_MIN="0",
        WANGGE_LOGIN_RATE_PER_MIN="0",  # it logs in one dispatcher per street at once
        WANGGE_DEV_ROLE_HEADERS="false",
    )
    command = [str(ROOT / ".venv/bin/wangge"), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{HOST}:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # still draining a backlog
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _log_in(port: int, store: Store) -> dict[str, str]:
    """street -> access token, through POST /api/v1/auth/token."""
    tokens = {}
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        for street, username in store.users.items():
            answer = client.post(
                "/api/v1/auth/token",
                data={"username": username, "password": store.passwords[street]},
            )
            answer.raise_for_status()
            tokens[street] = answer.json()["access_token"]
    return tokens


def _plan(
    store: Store, tokens: dict[str, str], kinds: np.ndarray, rng: np.random.Generator, steps
) -> list[bytes]:
    """The encoded requests, one per entry of `kinds` (indices into MIX)."""
    names = list(MIX)
    out = []
    for k in kinds:
        name = names[k]
        x, y = store.points[rng.integers(len(store.points))] + rng.normal(0, 5e-5, 2)
        where = {"lon": round(float(x), 6), "lat": round(float(y), 6)}
        if name == "locate":
            out.append(_http("GET", "/api/v1/locate", where))
        elif name.startswith("nearest"):
            query = {**where, "kind": str(rng.choice(store.station_kinds)), "k": 3}
            query["mode"] = name.split()[1]
            out.append(_http("GET", "/api/v1/stations/nearest", query))
        elif name == "cases by grid":
            grid, street = store.grids[rng.integers(len(store.grids))]
            query = {"grid": grid, "limit": 20}
            if rng.random() < 0.5:
                query["status"] = "reported,dispatched,accepted,in_progress"
            out.append(_http("GET", "/api/v1/cases", query, token=tokens[street]))
        elif name == "case detail":
            case_id, street = store.case_refs[rng.integers(len(store.case_refs))]
            out.append(_http("GET", f"/api/v1/cases/{case_id}", token=tokens[street]))
        elif name == "intake":
            body = {
                "category": str(rng.choice(store.categories)),
                **where,
                "description": "benchmark report",
                "source": "resident",
            }
            out.append(_http("POST", "/api/v1/cases", body=body))
        else:
            case_id, street, status, worker = next(steps)
            action = STEP_FOR[status]
            body = {"note": "benchmark step"}
            if action == "dispatch":
                body["worker_code"] = worker
            path = f"/api/v1/cases/{case_id}/{action}"
            out.append(_http("POST", path, body=body, token=tokens[street]))
    return out


def _count_events(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.exec_driver_sql(
            "SELECT count(*) FROM case_events WHERE actor LIKE 'dispatcher:bench-%%'"
        ).scalar()
    engine.dispose()
    return n


def _line(name: str, lat_s: np.ndarray, status: np.ndarray, elapsed: float) -> str:
    ms = lat_s * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    statuses = dict(sorted(Counter(status.tolist()).items()))
    n4, n5 = int(((status >= 400) & (status < 500)).sum()), int((status >= 500).sum())
    return (
        f"  {name:<17} {len(ms):>6} {len(ms) / elapsed:>7.1f}/s"
        f"  p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:7.1f}  max {ms.max():7.1f} ms"
        f"  4xx {n4}  5xx {n5}  no answer {int((status == 0).sum())}  {statuses}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="city", help="demo size: tiny, small or city")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--database-url", help="a PostGIS store already loaded with a demo (default: a new one)"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    n = int(args.rate * args.seconds)
    kinds = rng.choice(len(MIX), size=n, p=list(MIX.values()))
    server = None if args.database_url else start_postgis()
    store = None
    try:
        url = args.database_url or _load_fresh(server, args.size)
        store = _read_store(url, rng)
        _add_dispatchers(store)
        names = list(MIX)
        with _server(url, args.workers) as port:
            tokens = _log_in(port, store)
            # warm up both workers (pools, caches, the road graph), steps left out
            shares = np.array(list(MIX.values())[:-1])
            warm = rng.choice(len(MIX) - 1, size=300, p=shares / shares.sum())
            asyncio.run(_drive(_plan(store, tokens, warm, rng, iter(())), port, 100))
            _read_steps(store, rng)
            wanted = int((kinds == names.index("step")).sum())
            if wanted > len(store.steps):  # file the cases to dispatch, untimed
                # a few more: a point near the district's edge may file a case unrouted
                more = np.full(wanted - len(store.steps) + 20, names.index("intake"))
                filed = asyncio.run(_drive(_plan(store, tokens, more, rng, iter(())), port, 100))
                print(f"filed {len(more)} cases to dispatch: {dict(Counter(filed[1].tolist()))}")
                _read_steps(store, rng)
            if wanted > len(store.steps):
                raise SystemExit(f"{wanted} steps wanted, {len(store.steps)} cases to take them")
            requests = _plan(store, tokens, kinds, rng, iter(store.steps))
            actions = Counter(STEP_FOR[status] for _, _, status, _ in store.steps[:wanted])
            cases_before, events_before = _count_cases(url), _count_events(url)
            latency, status, elapsed = asyncio.run(_drive(requests, port, args.rate))
            cases_stored = _count_cases(url) - cases_before
            events_stored = _count_events(url) - events_before

        print(
            f"mixed load, {args.workers} uvicorn workers, PostGIS"
            f" ({'a reused store' if args.database_url else f'{args.size} demo'}), open loop"
            f" (asyncio HTTP/1.1 keep-alive; latency from each request's due time)"
        )
        print(
            f"  offered {args.rate:.0f} req/s for {args.seconds:.0f} s: {n} requests,"
            f" {len(store.users)} street dispatchers logged in with tokens"
        )
        print(f"  steps: {dict(sorted(actions.items()))}")
        for k, name in enumerate(names):
            mask = kinds == k
            if mask.any():
                print(_line(name, latency[mask], status[mask], elapsed))
        print(_line("all", latency, status, elapsed))
        n5 = int((status >= 500).sum())
        print(f"  5xx answers: {n5} (target 0); no answer in 10 s: {int((status == 0).sum())}")
        created = int((status[kinds == names.index("intake")] == 201).sum())
        print(f"  cases stored {cases_stored} = 201 answers {created}: {cases_stored == created}")
        taken = int((status[kinds == names.index("step")] == 200).sum())
        print(
            f"  step events stored {events_stored} = 200 answers {taken}: {events_stored == taken}"
        )
    finally:
        if store is not None and store.users and args.database_url:
            _disable_dispatchers(store)
        if server is not None:
            remove(server)


if __name__ == "__main__":
    main()
