"""Build the city-size demo district and load it into both stores.

Prints how long generation and each import take and how large each store ends
up. PostGIS is a throwaway server started here (the tests' helper), unless
--postgis-url names one.

    .venv/bin/python benchmarks/bench_demo.py [--size city] [--skip-postgis]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.demo import generate_district  # noqa: E402
from data.loader import load_district  # noqa: E402
from gis.db.engine import make_engine, make_sessionmaker, migrate  # noqa: E402


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def load_into(url: str) -> dict[str, float]:
    engine = make_engine(url)
    started = time.perf_counter()
    migrate(engine)
    migrate_s = time.perf_counter() - started
    counts = load_district(make_sessionmaker(engine), district)
    counts["migrate_s"] = migrate_s
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            counts["bytes"] = conn.exec_driver_sql(
                "SELECT pg_database_size(current_database())"
            ).scalar()
    engine.dispose()
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="city")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--skip-postgis", action="store_true")
    parser.add_argument("--postgis-url", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    district = generate_district(args.size, seed=args.seed)
    gen_s = time.perf_counter() - started
    n_grids = int((district.areas["level"] == "grid").sum())
    print(f"demo size {args.size!r}, seed {args.seed}")
    print(
        f"  generated {n_grids:,} grids, {len(district.buildings):,} buildings, "
        f"{len(district.stations):,} stations, {len(district.workers):,} workers, "
        f"{len(district.cases):,} cases in {gen_s:.1f} s"
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wangge.sqlite"
        counts = load_into(f"sqlite:///{path}")
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        rows.append(("SpatiaLite", counts["seconds"], size))

    if not args.skip_postgis:
        server = None
        url = args.postgis_url
        if url is None:
            from tests.pgserver import remove, start_postgis

            server = start_postgis()
            admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql("CREATE DATABASE bench")
            admin.dispose()
            url = sa.engine.make_url(server.url).set(database="bench").render_as_string(False)
        try:
            counts = load_into(url)
            rows.append(("PostGIS", counts["seconds"], counts["bytes"]))
        finally:
            if server is not None:
                remove(server)

    print(f"{'store':<12}{'import':>12}{'size':>14}{'buildings/s':>14}")
    for name, seconds, size in rows:
        rate = len(district.buildings) / seconds if seconds else float("nan")
        print(f"{name:<12}{seconds:>10.1f} s{_mib(size):>14}{rate:>14,.0f}")
    print(f"generation: {gen_s:.1f} s")
