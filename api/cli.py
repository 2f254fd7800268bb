"""The `wangge` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from api.settings import Settings
from gis.cases import Actor
from gis.errors import ImportRejected, WanggeError

app = typer.Typer(
    name="wangge",
    help="wangge (网格): grids, buildings, stations and cases for urban grid governance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _sessions(settings: Settings):
    from gis.db.engine import make_engine, make_sessionmaker, migrate

    engine = make_engine(settings.store_url)
    migrate(engine)
    return make_sessionmaker(engine)


def _fail(exc: WanggeError) -> None:
    if isinstance(exc, ImportRejected):
        err.print(f"[red]import refused:[/red] {exc.path}: nothing was written")
        for p in exc.problems[:50]:
            where = f"feature {p['feature']}" if p.get("feature") else "file"
            field = f" [{p['field']}]" if p.get("field") else ""
            err.print(f"  {exc.path}: {where}{field}: {p['problem']}")
        if len(exc.problems) > 50:
            err.print(f"  … and {len(exc.problems) - 50} more")
    else:
        err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(1)


def _describe_store(settings: Settings) -> str:
    if settings.database_url:
        from sqlalchemy.engine import make_url

        return f"PostGIS {make_url(settings.database_url).render_as_string(hide_password=True)}"
    return f"SpatiaLite {settings.spatialite_path}"


@app.command()
def demo(
    size: Annotated[str, typer.Option(help="tiny, small or city")] = "small",
    seed: Annotated[int, typer.Option(help="random seed of the generator")] = 20261122,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
    serve_: Annotated[bool, typer.Option("--serve/--no-serve", help="serve after building")] = True,
) -> None:
    """Build the demo district into the store if it is empty, then serve the API."""
    from data.demo import SIZES, generate_district
    from data.loader import load_district
    from gis.db import repo

    if size not in SIZES:
        err.print(f"[red]error:[/red] unknown size {size!r}; use one of {', '.join(SIZES)}")
        raise typer.Exit(2)
    settings = _settings()
    sessions = _sessions(settings)
    console.print(f"store: {_describe_store(settings)}")
    with sessions() as s:
        has_data = repo.active_generation(s) is not None
    if has_data:
        console.print("the store already holds an active generation: serving it as it is")
    else:
        started = time.perf_counter()
        district = generate_district(size, seed=seed)
        console.print(
            f"generated the {size} demo district in {time.perf_counter() - started:.1f} s"
        )
        try:
            counts = load_district(sessions, district)
        except WanggeError as exc:
            _fail(exc)
        console.print(
            "loaded "
            + ", ".join(f"{v:g} {k}" for k, v in counts.items() if k != "seconds")
            + f" in {counts['seconds']:.1f} s"
        )
        if settings.environment != "production":
            _add_demo_logins(settings, sessions, district)
    _show_demo_logins(settings)
    if serve_:
        _serve(settings, host, port, workers=1)


DEMO_LOGINS_FILE = "demo-logins.txt"


def _add_demo_logins(settings: Settings, sessions, district) -> None:
    """One login per staff role over the demo district, with random passwords kept in
    the data directory (mode 0600): the staff maps and lists need someone to log in."""
    import secrets

    from gis.db import users_repo

    areas, workers = district.areas, district.workers
    grid_workers = workers[workers["grid_codes"].astype(str).str.len() > 0]
    logins = [
        ("demo-admin", "admin", None),
        ("demo-planner", "planner", areas.loc[areas["level"] == "district", "code"].iloc[0]),
        ("demo-dispatcher", "dispatcher", areas.loc[areas["level"] == "street", "code"].iloc[0]),
        ("demo-worker", "worker", grid_workers["code"].iloc[0]),
    ]
    lines = []
    with sessions() as session, session.begin():
        for username, role, scope in logins:
            password = secrets.token_urlsafe(12)
            users_repo.add_user(
                session, username, password, role, scope=scope, actor=Actor("system", "demo")
            )
            lines.append(f"{username:<16} {password:<18} {role:<11} {scope or '(everything)'}")
    path = settings.data_dir / DEMO_LOGINS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(
        "username         password           role        scope\n" + "\n".join(lines) + "\n"
    )


def _show_demo_logins(settings: Settings) -> None:
    path = settings.data_dir / DEMO_LOGINS_FILE
    if path.exists():
        console.print(f"demo logins (kept in {path}; log in at /login or POST /api/v1/auth/token):")
        console.print(path.read_text().rstrip(), markup=False, highlight=False)


def _serve(settings: Settings, host: str, port: int, workers: int, access_log: bool = True) -> None:
    import uvicorn

    from api.serving import (
        event_loop,
        http_protocol,
        kernel_balances_reuse_port,
        serve_workers,
    )

    base = f"http://{host}:{port}"
    console.print(f"wangge is serving {_describe_store(settings)}")
    console.print(f"  API docs:  {base}/docs")
    console.print(f"  areas:     {base}/api/v1/areas?level=grid&limit=10")
    console.print(f"  locate:    {base}/api/v1/locate?lon=123.43&lat=41.80")
    console.print(f"  stations:  {base}/api/v1/stations")
    server = {
        "host": host,
        "port": port,
        "http": http_protocol(),
        "loop": event_loop(),
        "access_log": access_log,
    }
    options = {"app": "api.serving:create_served_app", "factory": True, **server}
    if workers > 1 and kernel_balances_reuse_port():
        # One SO_REUSEPORT socket per worker, so the kernel spreads connections over
        # them (api/serving.py says why uvicorn's shared socket does not).
        code = serve_workers(options, host, port, workers)
        if code:
            raise typer.Exit(code)
    elif workers > 1:  # elsewhere uvicorn's own supervisor, on one shared socket
        uvicorn.run(**options, workers=workers)
    else:
        from api.app import create_app

        uvicorn.run(create_app(settings, freeze_gc=True), **server)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="log every request (costs CPU per request; off for production-like runs)",
        ),
    ] = False,
) -> None:
    """Serve the API on whatever store is configured (WANGGE_DATABASE_URL or SpatiaLite)."""
    settings = _settings()
    _sessions(settings)  # migrate once before workers start
    _serve(settings, host, port, workers, access_log=access_log)


@app.command("import")
def import_(
    layer: Annotated[str, typer.Argument(help="areas, buildings, stations or cases")],
    file: Annotated[Path, typer.Argument(help="GeoJSON, GeoPackage, zipped Shapefile or CSV")],
    crs: Annotated[
        str | None,
        typer.Option(help="coordinates of the file: wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>"),
    ] = None,
    generation: Annotated[
        str | None, typer.Option(help="areas: the staged generation to write into (created if new)")
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate", help="areas: switch the generation on after importing")
    ] = False,
) -> None:
    """Import a layer from a file, all or nothing: a bad feature refuses the whole file."""
    from data.importers import LAYERS, import_file

    if layer not in LAYERS:
        err.print(f"[red]error:[/red] unknown layer {layer!r}; use one of {', '.join(LAYERS)}")
        raise typer.Exit(2)
    if not file.exists():
        err.print(f"[red]error:[/red] {file}: no such file")
        raise typer.Exit(2)
    sessions = _sessions(_settings())
    try:
        report = import_file(
            sessions, layer, file, crs=crs, generation=generation, activate=activate or None
        )
    except WanggeError as exc:
        _fail(exc)
    out = report.to_dict()
    console.print(
        f"{file}: {out['features']} features, {out['inserted']} inserted, {out['updated']} updated"
        + (f", generation {out['generation']}" if out.get("generation") else "")
        + (" (active)" if out.get("activated") else "")
    )
    for r in out["repaired"]:
        console.print(f"  repaired feature {r['feature']}: {r['problem']}")
    for w in out["warnings"]:
        console.print(f"  warning: {w}")


@app.command()
def generations() -> None:
    """List boundary generations and which one is active."""
    from gis.db import repo

    sessions = _sessions(_settings())
    table = Table("id", "name", "status", "created", "activated")
    with sessions() as s:
        for g in repo.list_generations(s):
            table.add_row(
                str(g.id),
                g.name,
                g.status,
                f"{g.created_at:%Y-%m-%d %H:%M}",
                f"{g.activated_at:%Y-%m-%d %H:%M}" if g.activated_at else "",
            )
    console.print(table)


@app.command()
def activate(name: Annotated[str, typer.Argument(help="generation name or id")]) -> None:
    """Switch a staged boundary generation on (the active one is retired)."""
    from gis.db import repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            gen = repo.activate_generation(s, repo.get_generation(s, name))
            console.print(f"generation {gen.name} is active")
    except WanggeError as exc:
        _fail(exc)


@app.command()
def locate(
    lon: Annotated[float, typer.Argument(help="longitude")],
    lat: Annotated[float, typer.Argument(help="latitude")],
    crs: Annotated[str, typer.Option(help="wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>")] = "wgs84",
) -> None:
    """Print the district/street/community/grid chain covering a point, as JSON."""
    from gis.crs import parse_crs, point_to_storage
    from gis.db import repo

    sessions = _sessions(_settings())
    try:
        x, y = point_to_storage(lon, lat, parse_crs(crs))
        with sessions() as s:
            found = repo.locate(s, x, y)
    except WanggeError as exc:
        _fail(exc)
    json.dump(
        {
            "lon": x,
            "lat": y,
            "generation": found.generation,
            "chain": found.chain,
            "on_boundary_of": found.on_boundary_of,
            "nearest_grid": found.nearest_grid,
        },
        sys.stdout,
        ensure_ascii=False,
        indent=2,
    )
    print()
    if not found.chain:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Show the configured store and how many rows each table holds."""
    from gis.db import repo

    settings = _settings()
    sessions = _sessions(settings)
    console.print(f"store: {_describe_store(settings)}")
    with sessions() as s:
        gen = repo.active_generation(s)
        console.print(f"active generation: {gen.name if gen else '(none)'}")
        for table, n in repo.count_rows(s).items():
            console.print(f"  {table:12} {n:>10,}")


# ---------------------------------------------------------------------- cases


@app.command()
def escalate(
    now: Annotated[
        str | None, typer.Option(help="act as if it were this ISO 8601 time (default: now)")
    ] = None,
) -> None:
    """Escalate every overdue open case one level (grid → community → street → department).

    Safe to run from cron: a case is escalated once per missed deadline and gets a fresh
    deadline for its new level, so running it twice in a row changes nothing the second
    time. All in one transaction.
    """
    from datetime import datetime

    from gis.db import cases_repo

    at = None
    if now:
        try:
            at = datetime.fromisoformat(now)
        except ValueError as exc:
            err.print(f"[red]error:[/red] --now {now!r} is not an ISO 8601 time")
            raise typer.Exit(2) from exc
    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            moved = cases_repo.escalate_overdue(s, now=at)
    except WanggeError as exc:
        _fail(exc)
    for m in moved:
        console.print(
            f"{m['code']}: overdue since {m['overdue_since']}, escalated to {m['level']}"
            + (f" {m['escalated_to']}" if m["escalated_to"] else "")
            + f", new deadline {m['deadline_at']}"
        )
    console.print(f"escalated {len(moved)} overdue case(s)")


@app.command()
def reroute(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only show which cases would move where")
    ] = False,
) -> None:
    """Re-route the stored open cases to the active generation's grids.

    Prints how many cases move from which grid to which; without --dry-run, writes
    exactly that plan in one transaction (and each moved case gets a history event).
    """
    from gis.db import cases_repo

    settings = _settings()
    sessions = _sessions(settings)
    try:
        with sessions() as s, s.begin():
            plan = cases_repo.reroute(s, dry_run=dry_run, near_outside_m=settings.near_outside_m)
    except WanggeError as exc:
        _fail(exc)
    table = Table("from grid", "to grid", "cases")
    for move in plan["moves"]:
        table.add_row(move["from"] or "(unrouted)", move["to"] or "(unrouted)", str(move["count"]))
    console.print(
        f"generation {plan['generation']}: {plan['open_cases']} open case(s), "
        f"{plan['moved']} {'would move' if dry_run else 'moved'}"
    )
    if plan["moves"]:
        console.print(table)
    if dry_run:
        console.print("dry run: nothing was written")


def _read_points(path: Path, crs: str | None):
    """Rows of a points file as they are, plus their EPSG:4326 lon/lat (an (n, 2) array).

    CSV keeps every column untouched and needs lon/lat (or x/y) columns; any other
    importable file is read by GDAL.
    """
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    from gis.crs import parse_crs, to_storage_xy
    from gis.errors import InvalidInput

    if path.suffix.lower() in (".csv", ".txt"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        lower = {c.lower().strip(): c for c in frame.columns}
        names = (("lon", "lat"), ("longitude", "latitude"), ("lng", "lat"), ("x", "y"))
        pair = next(((lower[a], lower[b]) for a, b in names if a in lower and b in lower), None)
        if pair is None:
            raise InvalidInput(f"{path}: needs lon and lat columns", field="lon")
        xy = np.column_stack(
            [pd.to_numeric(frame[c], errors="coerce").to_numpy(float) for c in pair]
        )
        return frame, to_storage_xy(xy, parse_crs(crs or "wgs84"))
    gdf = gpd.read_file(path)
    if crs:
        gdf = gdf.set_crs(parse_crs(crs).epsg or 4326, allow_override=True)
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    points = shapely.point_on_surface(gdf.geometry.values)
    xy = np.column_stack([shapely.get_x(points), shapely.get_y(points)])
    frame = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    frame["lon"], frame["lat"] = xy[:, 0], xy[:, 1]
    return frame, xy


@app.command("assign")
def assign_cmd(
    grids: Annotated[
        Path, typer.Option(help="grid polygons: any file `wangge import areas` reads")
    ],
    cases: Annotated[Path, typer.Option(help="points: CSV with lon,lat or any importable file")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write")],
    crs: Annotated[
        str | None, typer.Option(help="coordinates of the points: wgs84, gcj02, bd09, EPSG:<code>")
    ] = None,
    near_m: Annotated[
        float, typer.Option(help="outside every grid but this close: the nearest grid")
    ] = 50.0,
) -> None:
    """Route a file of points to grids, without a database (bulk, vectorised).

    Writes each input row with grid_code, flag (inside, edge_rule — a shared edge or
    vertex, lowest code wins —, near_outside, unrouted) and distance_m (to the grid,
    for near_outside). The same rules as online intake.
    """
    import numpy as np

    from data.importers import read_layer
    from gis.routing import FLAGS, route_points

    for path in (grids, cases):
        if not path.exists():
            err.print(f"[red]error:[/red] {path}: no such file")
            raise typer.Exit(2)
    started = time.perf_counter()
    try:
        areas, _repaired = read_layer(grids, "areas")
        layer = areas[areas["level"] == "grid"] if (areas["level"] == "grid").any() else areas
        frame, xy = _read_points(cases, crs)
        routed = route_points(
            xy, layer.geometry.values, layer["code"].to_numpy(dtype=object), near_m=near_m
        )
    except WanggeError as exc:
        _fail(exc)
    codes = layer["code"].to_numpy(dtype=object)
    frame["grid_code"] = np.where(routed.index >= 0, codes[np.maximum(routed.index, 0)], "")
    frame["flag"] = routed.flag
    frame["distance_m"] = np.round(routed.distance_m, 2)
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(output, index=False)
    counts = {f: int((routed.flag == f).sum()) for f in FLAGS}
    console.print(
        f"routed {len(frame)} point(s) to {len(layer)} grid(s) in "
        f"{time.perf_counter() - started:.2f} s: "
        + ", ".join(f"{n} {f}" for f, n in counts.items())
        + f"; wrote {output}"
    )


# ------------------------------------------------------- stations: coverage and siting


@app.command()
def coverage(
    kind: Annotated[str, typer.Option(help="station kind (key or Chinese name)")],
    minutes: Annotated[str, typer.Option(help="life circles in walking minutes")] = "5,10,15",
    by: Annotated[str, typer.Option(help="community or grid")] = "community",
    out: Annotated[
        Path | None,
        typer.Option(help="write every building's walk to this GeoJSON file (uncovered flagged)"),
    ] = None,
) -> None:
    """Walking coverage of every building by one station kind, per community or grid."""
    from api.routers.coverage import parse_minutes, require_kind, run_coverage

    settings = _settings()
    sessions = _sessions(settings)
    try:
        kind_key = require_kind(kind)
        circles = parse_minutes(minutes)
        with sessions() as s:
            result = run_coverage(s, settings, kind_key, circles)
    except WanggeError as exc:
        _fail(exc)
    console.print(f"{kind_key}: walk measured by {result.method}")
    frame = result.by_community if by == "community" else result.by_grid
    key = "community_code" if by == "community" else "grid_code"
    table = Table(by, "households", *[f"≤{m} min" for m in circles])
    for row in frame.to_dict("records"):
        shares = [row[f"share_{m}min"] for m in circles]
        table.add_row(
            str(row[key]),
            f"{row['households']:,.0f}",
            *["-" if v is None or v != v else f"{v:.1%}" for v in shares],
        )
    console.print(table)
    totals = result.totals
    console.print(
        f"all: {totals['households']:,} households; "
        + ", ".join(f"≤{m} min {totals[f'share_{m}min'] or 0:.1%}" for m in circles)
        + f"; {len(result.uncovered):,} buildings beyond {max(circles)} min"
    )
    if out is not None:
        frame_out = result.buildings.copy()
        frame_out["uncovered"] = ~(frame_out["walk_min"] <= max(circles))
        frame_out.to_file(out, driver="GeoJSON")
        console.print(f"wrote {out}")


@app.command()
def site(
    kind: Annotated[str, typer.Option(help="station kind (key or Chinese name)")],
    p: Annotated[int, typer.Option(help="how many new sites")] = 3,
    radius_m: Annotated[float, typer.Option(help="walking radius a station serves")] = 800.0,
    objective: Annotated[str, typer.Option(help="coverage (maximal covering) or median")] = (
        "coverage"
    ),
    candidates: Annotated[
        str, typer.Option(help="grids, buildings, or a point file (GeoJSON/GPKG/CSV lon,lat)")
    ] = "grids",
    community: Annotated[
        list[str] | None, typer.Option(help="only this community (repeatable)")
    ] = None,
) -> None:
    """Choose sites for new stations of a kind, existing ones kept fixed."""
    from api.routers.coverage import SitingIn, run_siting, siting_body

    settings = _settings()
    sessions = _sessions(settings)
    points = None
    if candidates not in ("grids", "buildings"):
        _rows, xy = _read_points(Path(candidates), None)
        points = [(float(x), float(y)) for x, y in xy]
    try:
        body = SitingIn(
            kind=kind,
            p=p,
            radius_m=radius_m,
            objective=objective,
            candidates="grids" if points else candidates,
            candidate_points=points,
            community_codes=community or None,
        )
        with sessions() as s:
            result, cands, network = run_siting(s, settings, body)
    except WanggeError as exc:
        _fail(exc)
    except ValueError as exc:  # pydantic: p or objective out of range
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    json.dump(
        siting_body(result, cands, network, body, settings),
        sys.stdout,
        ensure_ascii=False,
        indent=2,
    )
    print()


@app.command()
def balance(
    parent: Annotated[
        str | None, typer.Option(help="district, street or community code (default: all)")
    ] = None,
    low: Annotated[int, typer.Option(help="household band, lower end")] = 300,
    high: Annotated[int, typer.Option(help="household band, upper end")] = 500,
    tolerance: Annotated[float, typer.Option(help="workload tolerance around the mean")] = 0.10,
    time_limit_s: Annotated[float, typer.Option(help="solver time limit per community")] = 20.0,
    processes: Annotated[int, typer.Option(help="communities solved in parallel")] = 2,
    no_resize: Annotated[bool, typer.Option(help="never split or merge grids")] = False,
    apply: Annotated[bool, typer.Option(help="switch the plan on right away")] = False,
) -> None:
    """Propose a rebalancing plan (and optionally apply it); prints each community's answer."""
    from gis.balance import BalanceParams
    from gis.db import plans_repo

    settings = _settings()
    sessions = _sessions(settings)
    params = BalanceParams(
        low=low,
        high=high,
        tolerance=tolerance,
        time_limit_s=time_limit_s,
        allow_resize=not no_resize,
    )
    started = time.perf_counter()
    try:
        with sessions() as s, s.begin():
            plan_id = plans_repo.propose_plan(
                s, actor=CLI_PLANNER, parent=parent, params=params, processes=processes
            )
        with sessions() as s:
            plan = plans_repo.get_plan(s, plan_id)
        if apply:
            with sessions() as s, s.begin():
                applied = plans_repo.apply_plan(s, plan_id, actor=CLI_PLANNER)
            console.print(f"applied as generation {applied['generation']}")
    except WanggeError as exc:
        _fail(exc)
    table = Table("community", "status", "gap", "s", "moved bldgs", "moved hh", "notes")
    counts: dict[str, int] = {}
    for c in plan["communities"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
        if c["status"] == "unchanged":
            continue
        table.add_row(
            c["community"],
            c["status"],
            "" if c["gap"] is None else f"{c['gap']:.4f}",
            f"{c['seconds']:.1f}",
            str(c["moved_buildings"]),
            str(c["moved_households"]),
            "; ".join(c["changes"] + c["reasons"]),
        )
    console.print(table)
    totals = plan["metrics_after"]["totals"]
    console.print(
        f"plan {plan_id}: {counts} communities; {totals['moved_buildings']} buildings and "
        f"{totals['moved_households']} households move; "
        f"{time.perf_counter() - started:.1f} s"
    )


# The command line acts for the person at the shell: a planner without a scope.
CLI_PLANNER = Actor("planner", "cli")

plan_app = typer.Typer(help="Rebalancing plans: list, show, handovers, upload a redraw, apply.")
app.add_typer(plan_app, name="plan")


@plan_app.command("list")
def plan_list() -> None:
    """List plans with their kind and status."""
    from gis.db import plans_repo

    sessions = _sessions(_settings())
    table = Table("id", "name", "kind", "status")
    with sessions() as s:
        for p in plans_repo.list_plans(s):
            table.add_row(str(p["id"]), p["name"], p["kind"], p["status"])
    console.print(table)


@plan_app.command("show")
def plan_show(plan_id: Annotated[int, typer.Argument(help="the plan's id")]) -> None:
    """Print one plan (parameters, per-community answers, metrics) as JSON."""
    from gis.db import plans_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s:
            console.print_json(json.dumps(plans_repo.get_plan(s, plan_id), ensure_ascii=False))
    except WanggeError as exc:
        _fail(exc)


@plan_app.command("handover")
def plan_handover(plan_id: Annotated[int, typer.Argument(help="the plan's id")]) -> None:
    """What changes hands between workers, and what happens to workers of new and
    retired grids."""
    from gis.db import plans_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s:
            doc = plans_repo.handover_lists(s, plan_id)
    except WanggeError as exc:
        _fail(exc)
    table = Table("from grid", "worker", "to grid", "worker", "bldgs", "hh", "open cases")
    for h in doc["handovers"]:
        table.add_row(
            h["from_grid"],
            (h["from_worker"] or {}).get("name", "-"),
            h["to_grid"],
            (h["to_worker"] or {}).get("name", "needs a worker"),
            str(len(h["buildings"])),
            str(h["households"]),
            str(len(h["open_cases"])),
        )
    console.print(table)
    for ch in doc["grid_changes"]:
        if ch["change"] == "retired":
            fate = (
                f"workers go to {ch['workers_go_to']}"
                if ch["workers_go_to"]
                else "workers released: "
                + (", ".join(w["name"] for w in ch["workers_released"]) or "none")
            )
            console.print(f"retired grid {ch['grid']} → {ch['successor']}: {fate}")
        elif ch["needs_worker"]:
            proposal = ch["proposed_worker"]
            console.print(
                f"new grid {ch['grid']} needs a worker; proposed: "
                + (f"{proposal['name']} ({proposal['code']})" if proposal else "none nearby")
            )
        else:
            console.print(f"new grid {ch['grid']}: {', '.join(w['name'] for w in ch['workers'])}")


@plan_app.command("upload")
def plan_upload(
    file: Annotated[Path, typer.Argument(help="grid layer edited in QGIS: GeoJSON or GeoPackage")],
    crs: Annotated[
        str | None, typer.Option(help="the file's coordinates if not as declared (gcj02, ...)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="plan and staged generation name")] = None,
    low: Annotated[int, typer.Option(help="household band, lower end")] = 300,
    high: Annotated[int, typer.Option(help="household band, upper end")] = 500,
    allow_out_of_band: Annotated[
        bool, typer.Option(help="stage it even if a grid is outside the band")
    ] = False,
) -> None:
    """Validate a redrawn grid layer and stage it as a generation and a plan."""
    from gis.balance import BalanceParams
    from gis.db import plans_repo

    sessions = _sessions(_settings())
    try:
        grids = plans_repo.read_grid_layer(file, crs)
        with sessions() as s, s.begin():
            plan_id = plans_repo.upload_plan(
                s,
                grids,
                actor=CLI_PLANNER,
                name=name,
                params=BalanceParams(low=low, high=high),
                allow_out_of_band=allow_out_of_band,
            )
        with sessions() as s:
            plan = plans_repo.get_plan(s, plan_id)
    except WanggeError as exc:
        for p in exc.detail.get("problems", [])[:50]:
            err.print(f"  {file}: {p['message']}")
        _fail(exc)
    totals = plan["metrics_after"]["totals"]
    console.print(
        f"plan {plan_id} staged as generation {plan['parameters']['generation']}: "
        f"{totals['moved_buildings']} buildings and {totals['moved_households']} households "
        f"change grid; see `wangge plan handover {plan_id}`, then `wangge plan apply {plan_id}`"
    )


@plan_app.command("apply")
def plan_apply(
    plan_id: Annotated[int, typer.Argument(help="the plan's id")],
    assign_new_grids: Annotated[
        bool, typer.Option(help="give each new grid needing a worker the proposed one")
    ] = False,
) -> None:
    """Switch a plan on: new generation, buildings, workers and open cases, all or nothing."""
    from gis.db import plans_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            result = plans_repo.apply_plan(
                s, plan_id, actor=CLI_PLANNER, assign_new_grids=assign_new_grids
            )
    except WanggeError as exc:
        for p in exc.detail.get("problems", [])[:50]:
            err.print(f"  plan {plan_id}: {p['message']}")
        _fail(exc)
    console.print(
        f"plan {plan_id} applied as generation {result['generation']}: "
        f"{result['buildings_moved']} buildings moved, {result['cases_rerouted']} open cases "
        f"re-routed"
    )
    for g in result["grids_needing_worker"]:
        console.print(f"  grid {g['grid']} needs a worker (proposed: {g['proposed_worker']})")
    for w in result["workers_released"]:
        console.print(f"  worker {w['worker']} released from retired grid {w['grid']}")


@app.command("map")
def map_(
    kind: Annotated[str, typer.Argument(help="coverage, grid, nearest or cases")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the HTML file to write")],
    code: Annotated[str | None, typer.Option(help="grid: the grid code")] = None,
    lon: Annotated[float | None, typer.Option(help="nearest: longitude")] = None,
    lat: Annotated[float | None, typer.Option(help="nearest: latitude")] = None,
    crs: Annotated[str, typer.Option(help="nearest: crs of lon/lat")] = "wgs84",
    since: Annotated[str | None, typer.Option(help="cases: ISO start (default 30 days)")] = None,
    until: Annotated[str | None, typer.Option(help="cases: ISO end (exclusive)")] = None,
    category: Annotated[str | None, typer.Option(help="cases: class or subclass code")] = None,
    lang: Annotated[str, typer.Option(help="zh or en")] = "zh",
) -> None:
    """Write a map to an HTML file; Leaflet is copied into <name>_files/ beside it (offline)."""
    from datetime import datetime

    from api.routers import maps as maps_router
    from maps import render
    from maps.assets import write_map_file
    from maps.basemap import parse_basemap

    kinds = ("coverage", "grid", "nearest", "cases")
    if kind not in kinds or lang not in ("zh", "en"):
        err.print(f"[red]error:[/red] use one of {', '.join(kinds)} and --lang zh or en")
        raise typer.Exit(2)
    settings = _settings()
    basemap = parse_basemap(settings.tiles)
    sessions = _sessions(settings)
    try:
        with sessions() as s:
            if kind == "coverage":
                frames = maps_router.coverage_frames(s)
                extras = maps_router.coverage_extras(s, settings)  # isochrones, uncovered
                fmap = render.render_coverage(**frames, **extras, lang=lang, basemap=basemap)
            elif kind == "grid":
                if not code:
                    err.print("[red]error:[/red] grid needs --code")
                    raise typer.Exit(2)
                # A file may travel: drawn for no one in particular, so no cared-for residents.
                fmap = maps_router.build_grid_map(s, code, None, lang, basemap)
            elif kind == "nearest":
                if lon is None or lat is None:
                    err.print("[red]error:[/red] nearest needs --lon and --lat")
                    raise typer.Exit(2)
                stations, point = maps_router.nearest_frame(s, settings, lon, lat, 5, crs)
                fmap = render.render_nearest(point, stations, lang=lang, basemap=basemap)
            else:
                start = datetime.fromisoformat(since) if since else None
                end = datetime.fromisoformat(until) if until else None
                fmap = maps_router.build_cases_map(s, start, end, category, lang, basemap)
    except WanggeError as exc:
        _fail(exc)
    path = write_map_file(fmap, output)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.stem}_files/")


# ------------------------------------------------------------ users, API keys

user_app = typer.Typer(help="People who log in: add, list, disable.", no_args_is_help=True)
app.add_typer(user_app, name="user")
apikey_app = typer.Typer(help="API keys for systems: add, list, disable.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
_CLI_ACTOR = Actor("admin", "cli")
_SCOPE_HELP = (
    "planner: a district or street code; dispatcher: a community or street code; "
    "worker: their worker code; department: its name (as in the category tree)"
)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="the login name")],
    role: Annotated[
        str, typer.Option(help="admin, planner, dispatcher, worker, department or resident")
    ],
    scope: Annotated[str | None, typer.Option(help=_SCOPE_HELP)] = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, help="asked for when not given")
    ] = "",
) -> None:
    """Add a user (the password is stored as an argon2 hash)."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            user = users_repo.add_user(
                s, username, password, role, scope=scope, display_name=name, actor=_CLI_ACTOR
            )
    except WanggeError as exc:
        _fail(exc)
    scope_text = f", {user['scope']}" if user["scope"] else ""
    console.print(f"added {user['username']} ({user['role']}{scope_text})")


@user_app.command("list")
def user_list() -> None:
    """List users with their role, scope and whether they are active."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    table = Table("username", "role", "scope", "active")
    with sessions() as s:
        for u in users_repo.list_users(s):
            active = "yes" if u["active"] else "no"
            table.add_row(u["username"], u["role"], u["scope"] or "", active)
    console.print(table)


@user_app.command("disable")
def user_disable(username: Annotated[str, typer.Argument(help="the login name")]) -> None:
    """Disable a user: no more logins, and their tokens stop working."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            users_repo.disable_user(s, username, actor=_CLI_ACTOR)
    except WanggeError as exc:
        _fail(exc)
    console.print(f"disabled {username}")


@apikey_app.command("add")
def apikey_add(
    name: Annotated[str, typer.Argument(help="which system holds the key, e.g. hotline")],
    role: Annotated[str, typer.Option(help="the role the key acts with")],
    scope: Annotated[str | None, typer.Option(help=_SCOPE_HELP)] = None,
) -> None:
    """Add an API key; it is printed this once (only its SHA-256 is stored)."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            _record, key = users_repo.add_api_key(s, name, role, scope=scope, actor=_CLI_ACTOR)
    except WanggeError as exc:
        _fail(exc)
    console.print(key, soft_wrap=True)


@apikey_app.command("list")
def apikey_list() -> None:
    """List API keys by name and prefix (never the keys)."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    table = Table("name", "prefix", "role", "scope", "active")
    with sessions() as s:
        for k in users_repo.list_api_keys(s):
            table.add_row(
                k["name"], k["prefix"], k["role"], k["scope"] or "", "yes" if k["active"] else "no"
            )
    console.print(table)


@apikey_app.command("disable")
def apikey_disable(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Disable an API key."""
    from gis.db import users_repo

    sessions = _sessions(_settings())
    try:
        with sessions() as s, s.begin():
            users_repo.disable_api_key(s, name, actor=_CLI_ACTOR)
    except WanggeError as exc:
        _fail(exc)
    console.print(f"disabled API key {name}")


if __name__ == "__main__":
    app()
