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
    if serve_:
        _serve(settings, host, port, workers=1)


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    base = f"http://{host}:{port}"
    console.print(f"wangge is serving {_describe_store(settings)}")
    console.print(f"  API docs:  {base}/docs")
    console.print(f"  areas:     {base}/api/v1/areas?level=grid&limit=10")
    console.print(f"  locate:    {base}/api/v1/locate?lon=123.43&lat=41.80")
    console.print(f"  stations:  {base}/api/v1/stations")
    if workers > 1:
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers)
    else:
        from api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the API on whatever store is configured (WANGGE_DATABASE_URL or SpatiaLite)."""
    settings = _settings()
    _sessions(settings)  # migrate once before workers start
    _serve(settings, host, port, workers)


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


if __name__ == "__main__":
    app()
