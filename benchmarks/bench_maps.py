"""Render time and HTML size of the coverage map of the city-size demo.

Generates the demo district (`data.demo.generate_district`), loads it into a temporary
SpatiaLite store, then times the steps of `/maps/coverage` as served: the queries, the
renderer and the HTML (isochrones and uncovered buildings are fetched by the page, so
they are timed and sized apart). The target is under 5 MB of HTML for the city (about
3,000 grids).
Also prints the raw GeoJSON size of the grids before simplification and rounding, the
baseline the display preparation is measured against.

    .venv/bin/python benchmarks/bench_maps.py [--size city] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.routers.maps import (  # noqa: E402
    build_cases_map,
    coverage_extras,
    coverage_frames,
    kind_isochrones,
    uncovered_buildings,
)
from api.settings import Settings  # noqa: E402
from data.demo import generate_district  # noqa: E402
from data.loader import load_district  # noqa: E402
from gis.db.engine import make_engine, make_sessionmaker, migrate  # noqa: E402
from maps.assets import render_html  # noqa: E402
from maps.basemap import NO_BASEMAP, parse_basemap  # noqa: E402
from maps.render import (  # noqa: E402
    buildings_feature_collection,
    isochrones_feature_collection,
    render_coverage,
)

TARGET_MB = 5.0


def _best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="city")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    district = generate_district(args.size)
    print(f"generated the {args.size} demo in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
        migrate(engine)
        sessions = make_sessionmaker(engine)
        counts = load_district(sessions, district)
        print(f"loaded into SpatiaLite in {counts['seconds']:.1f} s")
        with sessions() as session:
            t_query, frames = _best(lambda: coverage_frames(session), args.repeat)
            grids = frames["grids_gdf"]
            raw_mb = len(grids.to_json()) / 1e6
            print(
                f"grids {len(grids):,}, communities {len(frames['communities_gdf']):,}, "
                f"streets {len(frames['streets_gdf']):,}, stations {len(frames['stations_gdf']):,}"
            )
            settings = Settings()
            extras = coverage_extras(session, settings, inline=False)
            frames = {**frames, **extras}  # the served page: large layers fetched
            t_unc, unc = _best(
                lambda: uncovered_buildings(session, settings, None, 10), args.repeat
            )
            unc_mb = len(json.dumps(buildings_feature_collection(unc))) / 1e6
            t_iso_first, iso = _best(
                lambda: kind_isochrones(session, settings, "neighbourhood", 10), 1
            )
            t_iso_cached, _ = _best(
                lambda: kind_isochrones(session, settings, "neighbourhood", 10), 1
            )
            t_iso_fc, iso_fc = _best(lambda: isochrones_feature_collection(iso), 1)
            iso_mb = len(json.dumps(iso_fc)) / 1e6
            rows = []
            for name, basemap in (
                ("no basemap", NO_BASEMAP),
                ("gcj02 basemap", parse_basemap("gcj02:http://tiles.local/{z}/{x}/{y}.png")),
            ):
                t_render, fmap = _best(
                    lambda b=basemap: render_coverage(**frames, basemap=b), args.repeat
                )
                t_html, html = _best(lambda m=fmap: render_html(m), 1)
                size_mb = len(html.encode("utf-8")) / 1e6
                rows.append((name, t_query, t_render, t_html, size_mb))
            t_cases, cases_map = _best(
                lambda: build_cases_map(
                    session, None, None, None, "zh", NO_BASEMAP, data_url="cases?layer=cases"
                ),
                1,
            )
            cases_mb = len(render_html(cases_map).encode("utf-8")) / 1e6
        engine.dispose()

    print(f"\ncoverage map, {args.size} demo (best of {args.repeat}):")
    print(f"{'basemap':15} {'queries s':>10} {'render s':>9} {'html s':>7} {'HTML MB':>8}")
    for name, t_q, t_r, t_h, mb in rows:
        print(f"{name:15} {t_q:10.2f} {t_r:9.2f} {t_h:7.2f} {mb:8.2f}")
    print(
        f"baseline: grids as raw GeoJSON (no simplification, full precision) {raw_mb:.2f} MB; "
        f"coverage HTML / raw grids = {rows[0][4] / raw_mb:.2f}"
    )
    verdict = "OK" if rows[0][4] < TARGET_MB else "OVER"
    print(f"target < {TARGET_MB} MB: {verdict}")
    print(
        f"layers the page fetches: uncovered buildings {len(unc):,} in {t_unc:.2f} s, "
        f"{unc_mb:.2f} MB; isochrones of {iso['station_code'].nunique():,} neighbourhood "
        f"stations {t_iso_first:.2f} s (then {t_iso_cached:.3f} s cached) + dissolve and "
        f"display {t_iso_fc:.2f} s, {iso_mb:.2f} MB (sizes before gzip)"
    )
    print(f"cases map (last 30 days, points fetched): built in {t_cases:.2f} s, {cases_mb:.2f} MB")
    print(json.dumps({"size": args.size, "coverage_html_mb": round(rows[0][4], 2)}))


if __name__ == "__main__":
    main()
