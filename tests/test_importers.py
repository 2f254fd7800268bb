"""Importers on both stores: every format in, every kind of bad file refused whole.

The fixtures are a tiny district (one street, one community, two grids near
123.41°E 41.80°N) with a few buildings, stations and cases. GeoPackages and
zipped Shapefiles are written from them here with pyogrio; the Shapefiles in
CGCS2000 3-degree Gauss-Kruger metres (EPSG:4550) with a .prj, as survey offices
deliver them, so reading them exercises a declared projected CRS.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import sqlalchemy as sa

from data.importers import import_file, read_layer
from gis.crs import wgs84_to_gcj02
from gis.db import repo
from gis.db.models import Area, Case
from gis.errors import Conflict, CRSMismatch, ImportRejected

FIXTURES = Path(__file__).parent / "fixtures"
FORMATS = ("geojson", "gpkg", "zip", "csv")
GRID_1, GRID_2 = "210199001001001", "210199001001002"
COMMUNITY = "210199001001"
SHAPEFILE_EPSG = 4550  # CGCS2000 / 3-degree Gauss-Kruger CM 123E


def fixture_as(stem: str, fmt: str, folder: Path) -> tuple[Path, gpd.GeoDataFrame]:
    """A fixture in the given format, and the features it should store (EPSG:4326)."""
    # Times stay text, as written; geopandas would parse them and read naive ones as UTC.
    source = pyogrio.read_dataframe(FIXTURES / f"{stem}.geojson", datetime_as_string=True)
    if fmt in ("geojson", "csv"):
        return FIXTURES / f"{stem}.{fmt}", source
    frame = source.copy()
    if "services" in frame:  # list columns do not fit GeoPackage or dBase fields
        frame["services"] = [v if isinstance(v, str) else ";".join(v) for v in frame["services"]]
    if fmt == "gpkg":
        path = folder / f"{stem}.gpkg"
        pyogrio.write_dataframe(frame, path, layer=stem)
        return path, source
    # A Shapefile holds one geometry type: points become small squares.
    points = frame.geom_type == "Point"
    if points.any() and not points.all():
        frame.loc[points, "geometry"] = [
            shapely.box(p.x, p.y, p.x + 0.0002, p.y + 0.0002) for p in frame.geometry[points]
        ]
    expected = frame.copy()
    shp_dir = folder / "shp"
    shp_dir.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        # dBase names stop at 10 characters (opening_hours -> opening_ho): that is the point.
        warnings.filterwarnings("ignore", "Normalized/laundered field name")
        pyogrio.write_dataframe(frame.to_crs(SHAPEFILE_EPSG), shp_dir / f"{stem}.shp")
    path = folder / f"{stem}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for part in shp_dir.glob(f"{stem}.*"):
            archive.write(part, f"{stem}/{part.name}")
    return path, expected


def geojson(*features: tuple[dict, dict | None]) -> str:
    """A FeatureCollection from (properties, geometry) pairs."""
    return json.dumps(
        {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": p, "geometry": g} for p, g in features],
        },
        ensure_ascii=False,
    )


def point(lon: float = 123.405, lat: float = 41.805) -> dict:
    return {"type": "Point", "coordinates": [lon, lat]}


def square(x0: float, y0: float, size: float = 0.01) -> dict:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def counts(store) -> dict[str, int]:
    with store.session() as s:
        return repo.count_rows(s)


def import_district(store):
    """The fixture district, imported and switched on."""
    return import_file(store.sessions, "areas", FIXTURES / "areas.geojson")


def stored_cases(store) -> dict[str, dict]:
    with store.session() as s:
        rows = s.execute(
            sa.select(Case.code, Case.category_code, Case.source, Case.grid_code, Case.reported_at)
        ).all()
    return {r.code: r._asdict() for r in rows}


def as_utc(dt: datetime) -> datetime:
    """SpatiaLite hands back the stored UTC time without its zone; PostGIS with it."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def assert_same_geometries(stored: gpd.GeoDataFrame, expected: gpd.GeoDataFrame) -> None:
    """Stored shapes match what was written to within a centimetre (ring order aside)."""
    stored = stored.set_index("code").loc[list(expected["code"])]
    gaps = shapely.hausdorff_distance(stored.geometry.values, expected.geometry.values)
    assert np.all(gaps < 1e-7), gaps


# -------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt", FORMATS)
def test_imports_areas_from_each_format(store, tmp_path, fmt):
    if fmt == "csv":
        path, expected = FIXTURES / "areas.csv", gpd.read_file(FIXTURES / "areas.geojson")
    else:
        path, expected = fixture_as("areas", fmt, tmp_path)
    report = import_file(store.sessions, "areas", path)
    assert (report.features, report.inserted, report.updated) == (5, 5, 0)
    assert report.activated and report.generation.startswith("areas-")
    assert report.repaired == [] and report.warnings == []
    with store.session() as s:
        gen = repo.active_generation(s)
        areas, total = repo.areas_gdf(s, gen.id)
        assert total == 5
        assert dict(zip(areas["code"], areas["level"], strict=True))[GRID_2] == "grid"
        assert_same_geometries(areas, expected)
        located = repo.locate(s, 123.415, 41.805)
    assert [a["level"] for a in located.chain] == ["district", "street", "community", "grid"]
    assert located.grid_code == GRID_2


@pytest.mark.parametrize("fmt", FORMATS)
def test_imports_buildings_from_each_format(store, tmp_path, fmt):
    import_district(store)
    path, expected = fixture_as("buildings", fmt, tmp_path)
    report = import_file(store.sessions, "buildings", path)
    assert (report.features, report.inserted, report.updated) == (3, 3, 0)
    with store.session() as s:
        stored, total = repo.buildings_gdf(s)
    assert total == 3
    rows = stored.set_index("code")
    assert rows.loc["B001", "households"] == 120 and rows.loc["B001", "name"] == "1号楼"
    # placed into the active generation's grids by a point inside each footprint
    assert list(rows["grid_code"]) == [GRID_1, GRID_1, GRID_2]
    assert set(rows["community_code"]) == {COMMUNITY}
    if fmt != "csv":  # the CSV carries points only
        assert_same_geometries(stored, expected)

    again = import_file(store.sessions, "buildings", path)
    assert (again.inserted, again.updated) == (0, 3)
    assert counts(store)["buildings"] == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_imports_stations_from_each_format(store, tmp_path, fmt):
    path, expected = fixture_as("stations", fmt, tmp_path)
    report = import_file(store.sessions, "stations", path)
    assert (report.features, report.inserted, report.updated) == (2, 2, 0)
    with store.session() as s:
        stored, _ = repo.stations_gdf(s)
    rows = stored.set_index("code")
    # the Chinese kind name maps to its key; services arrive as a list either way
    assert list(rows["kind"]) == ["neighbourhood", "new_employment"]
    assert rows.loc["ST01", "services"] == ["休息", "饮水", "充电"]
    assert rows.loc["ST02", "services"] == ["休息", "饮水", "微波炉"]
    assert rows.loc["ST01", "opening_hours"] == "Mo-Fr 08:30-17:30; Sa 09:00-12:00"
    assert rows.loc["ST01", "capacity"] == 20 and rows.loc["ST01", "phone"] == "024-12345678"
    assert_same_geometries(stored, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_imports_cases_from_each_format(store, tmp_path, fmt):
    import_district(store)
    path, _ = fixture_as("cases", fmt, tmp_path)
    report = import_file(store.sessions, "cases", path)
    assert (report.features, report.inserted) == (3, 3)
    assert report.warnings == ["1 case(s) lie outside every grid and were stored unrouted"]
    cases = stored_cases(store)
    # The CSV has no code column: codes are made from the file name and feature number.
    generated = [f"IMP-cases-{n}" for n in (1, 2, 3)]
    first, second, third = generated if fmt == "csv" else ["C001", "C002", "C003"]
    assert cases[first]["grid_code"] == GRID_1 and cases[first]["source"] == "resident"
    assert cases[second]["grid_code"] == GRID_2 and cases[second]["category_code"] == "0302"
    assert cases[third]["grid_code"] is None  # east of the community: unrouted
    assert cases[third]["source"] == "hotline"  # the default
    # an offset is kept; a time without one is Shanghai local time
    assert as_utc(cases[first]["reported_at"]) == datetime(2024, 5, 1, 0, 30, tzinfo=UTC)
    assert as_utc(cases[second]["reported_at"]) == datetime(2024, 5, 1, 12, 15, tzinfo=UTC)
    assert counts(store)["categories"] == 65  # the default tree was seeded for the check


# ---------------------------------------------------------------- bad files

BAD_FILES = {
    "unrepairable_polygon": (
        "areas",
        "redraw.geojson",
        geojson(
            (
                {"code": GRID_1, "name": "a", "level": "grid", "parent_code": COMMUNITY},
                square(123.40, 41.80),
            ),
            (
                {"code": GRID_2, "name": "b", "level": "grid", "parent_code": COMMUNITY},
                {
                    "type": "Polygon",
                    "coordinates": [
                        [[123.41, 41.80], [123.41, 41.81], [123.41, 41.805], [123.41, 41.80]]
                    ],
                },
            ),
        ),
        2,
        "make_valid leaves nothing polygonal",
    ),
    "unknown_parent": (
        "areas",
        "grids.geojson",
        geojson(
            (
                {
                    "code": "210199009001001",
                    "name": "a",
                    "level": "grid",
                    "parent_code": "210199009001",
                },
                square(123.40, 41.80),
            ),
        ),
        1,
        "unknown parent code 210199009001",
    ),
    "missing_column": (
        "areas",
        "areas.csv",
        'code,name,parent_code,wkt\n210198,某区,,"POLYGON ((123 41, 124 41, 124 42, 123 41))"\n',
        None,
        "missing column level",
    ),
    "wrong_geometry_type": (
        "stations",
        "stations.geojson",
        geojson(
            ({"code": "S1", "name": "a", "kind": "health"}, point()),
            (
                {"code": "S2", "name": "b", "kind": "health"},
                {"type": "LineString", "coordinates": [[123.40, 41.80], [123.41, 41.81]]},
            ),
        ),
        2,
        "geometry is LineString, stations need Point",
    ),
    "non_numeric_households": (
        "buildings",
        "buildings.csv",
        "code,households,lon,lat\nB101,80,123.401,41.801\nB102,many,123.402,41.802\n",
        2,
        "households 'many' is not a whole number",
    ),
    "bad_kind": (
        "stations",
        "stations.csv",
        "code,name,kind,lon,lat\nS1,小卖部,shop,123.403,41.803\n",
        1,
        "kind 'shop' is not a station kind",
    ),
    "bad_opening_hours": (
        "stations",
        "stations.geojson",
        geojson(
            ({"code": "S1", "name": "a", "kind": "health", "opening_hours": "Mo-Fr 8-17"}, point())
        ),
        1,
        "opening hours 'Mo-Fr 8-17': at character 7 expected a time HH:MM",
    ),
    "bad_category": (
        "cases",
        "cases.geojson",
        geojson(
            ({"category_code": "0101"}, point()),
            ({"category_code": "01"}, point()),
            ({"category_code": "9999"}, point()),
        ),
        3,
        "unknown category 9999",
    ),
    "metres_without_crs": (
        "stations",
        "stations.csv",
        "code,name,kind,x,y\nS1,a,health,534127.4,4627951.6\n",
        1,
        "(534127.4, 4627951.6) are not longitude/latitude",
    ),
    "broken_json": (
        "buildings",
        "buildings.geojson",
        '{"type": "FeatureCollection", "features": [',
        None,
        "cannot be read as GeoJSON",
    ),
    "empty_file": ("buildings", "buildings.geojson", "", None, "the file is empty"),
    "no_features": (
        "stations",
        "stations.geojson",
        geojson(),
        None,
        "the file has no features",
    ),
    "zip_without_shp": ("areas", "areas.zip", None, None, "the zip holds no .shp file"),
    "missing_geometry": (
        "buildings",
        "buildings.geojson",
        geojson(({"code": "B9", "households": 3}, None)),
        1,
        "has no geometry",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_refuses_a_bad_file_and_writes_nothing(store, tmp_path, case):
    layer, filename, content, feature, problem = BAD_FILES[case]
    import_district(store)
    import_file(store.sessions, "buildings", FIXTURES / "buildings.geojson")
    import_file(store.sessions, "stations", FIXTURES / "stations.geojson")
    before = counts(store)
    path = tmp_path / filename
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("README.txt", "the shapefile was forgotten")
    else:
        path.write_text(content, "utf-8")

    with pytest.raises(ImportRejected) as caught:
        import_file(store.sessions, layer, path)
    err = caught.value
    assert err.message.startswith(f"{filename}: ")
    assert problem in err.message
    assert err.path == str(path)
    assert any(p["feature"] == feature and problem in p["problem"] for p in err.problems)
    if feature is not None:
        assert f"feature {feature}: " in err.message
    # nothing written, and the earlier good imports are intact
    assert counts(store) == before
    with store.session() as s:
        stored, _ = repo.buildings_gdf(s)
    assert list(stored["code"]) == ["B001", "B002", "B003"]


def test_every_problem_is_listed_in_one_line(store, tmp_path):
    good = {"name": "驿站", "kind": "health"}
    features = [({"code": f"S{i}", **good}, point()) for i in range(1, 8)]
    features[2] = (features[2][0], {"type": "LineString", "coordinates": [[123, 41], [124, 42]]})
    features[6] = ({"code": "S7", "kind": "health"}, point())
    path = tmp_path / "stations.geojson"
    path.write_text(geojson(*features), "utf-8")
    with pytest.raises(ImportRejected) as caught:
        import_file(store.sessions, "stations", path)
    assert caught.value.message == (
        "stations.geojson: 2 bad features; feature 3: geometry is LineString, stations need "
        "Point; feature 7: missing name"
    )
    assert [(p["feature"], p["field"]) for p in caught.value.problems] == [
        (3, "geometry"),
        (7, "name"),
    ]
    assert counts(store)["stations"] == 0


def test_source_name_is_what_messages_call_the_file(store, tmp_path):
    path = tmp_path / "upload-8f3a.csv"
    path.write_text("code,households,lon,lat\nB1,-4,123.401,41.801\n", "utf-8")
    with pytest.raises(ImportRejected) as caught:
        import_file(store.sessions, "buildings", path, source_name="楼栋.csv")
    assert caught.value.message == "楼栋.csv: 1 bad feature; feature 1: households -4 is negative"
    assert caught.value.path == "楼栋.csv"


def test_cases_need_an_active_generation(store):
    with pytest.raises(ImportRejected, match="no active boundary generation") as caught:
        import_file(store.sessions, "cases", FIXTURES / "cases.geojson")
    assert caught.value.message.startswith("cases.geojson: ")
    assert counts(store)["categories"] == 0  # not even the seeded tree is kept


def test_the_same_cases_twice_are_refused_by_feature(store):
    import_district(store)
    import_file(store.sessions, "cases", FIXTURES / "cases.csv")
    with pytest.raises(ImportRejected) as caught:
        import_file(store.sessions, "cases", FIXTURES / "cases.csv")
    problems = {p["feature"]: p["problem"] for p in caught.value.problems if p["feature"]}
    assert problems == {n: f"case code IMP-cases-{n} is already stored" for n in (1, 2, 3)}
    assert counts(store)["cases"] == 3


# ---------------------------------------------------------------- geometry


def test_bow_tie_is_repaired_and_reported(store, tmp_path):
    import_district(store)
    bow_tie = {
        "type": "Polygon",
        "coordinates": [
            [[123.40, 41.80], [123.41, 41.81], [123.41, 41.80], [123.40, 41.81], [123.40, 41.80]]
        ],
    }
    clockwise = {
        "type": "Polygon",
        "coordinates": [
            [[123.41, 41.80], [123.41, 41.81], [123.42, 41.81], [123.42, 41.80], [123.41, 41.80]]
        ],
    }
    path = tmp_path / "redraw.geojson"
    path.write_text(
        geojson(
            ({"code": GRID_1, "name": "a", "level": "grid", "parent_code": COMMUNITY}, bow_tie),
            ({"code": GRID_2, "name": "b", "level": "grid", "parent_code": COMMUNITY}, clockwise),
        ),
        "utf-8",
    )
    report = import_file(store.sessions, "areas", path)
    assert report.repaired == [
        {
            "feature": 1,
            "problem": "self-intersection at (123.405000, 41.805000) repaired with make_valid",
        },
        {
            "feature": 2,
            "problem": "ring orientation fixed (exterior counter-clockwise, holes clockwise)",
        },
    ]
    with store.session() as s:
        grids, _ = repo.areas_gdf(s, repo.get_generation(s, report.generation).id, level="grid")
    tie = grids.set_index("code").geometry[GRID_1]
    assert tie.is_valid and len(tie.geoms) == 2  # both triangles kept
    assert tie.area == pytest.approx(0.00005)
    assert all(shapely.is_ccw(p.exterior) for p in grids.geometry.values[1].geoms)


def test_polygon_rings_come_out_counter_clockwise(tmp_path):
    path, _ = fixture_as("areas", "zip", tmp_path)
    frame, repaired = read_layer(path, "areas")
    # Shapefile rings are clockwise by the format's rule: fixed silently, not reported.
    assert repaired == []
    assert all(shapely.is_ccw(shapely.get_exterior_ring(g)) for g in frame.geometry.values)


# --------------------------------------------------------------------- CRS


def test_gcj02_points_are_converted_to_wgs84(store, tmp_path):
    truth = np.array([[123.403, 41.803], [123.412, 41.806]])
    gcj = wgs84_to_gcj02(truth)
    path = tmp_path / "amap_stations.csv"
    path.write_text(
        "code,name,kind,lng,lat\n"
        + "".join(
            f"S{i},驿站{i},health,{float(x)!r},{float(y)!r}\n" for i, (x, y) in enumerate(gcj)
        ),
        "utf-8",
    )
    import_file(store.sessions, "stations", path, crs="gcj02")
    with store.session() as s:
        stored, _ = repo.stations_gdf(s)
    xy = shapely.get_coordinates(stored.geometry.values)
    assert np.abs(xy - truth).max() < 1e-7  # about a centimetre


def test_projected_csv_is_accepted_with_crs_and_refused_without(store, tmp_path):
    path = tmp_path / "stations_gk.csv"
    expected = gpd.GeoSeries([shapely.Point(123.403, 41.803)], crs=4326).to_crs(SHAPEFILE_EPSG)
    x, y = expected.iloc[0].x, expected.iloc[0].y
    path.write_text(f"code,name,kind,x,y\nS1,驿站,health,{x},{y}\n", "utf-8")
    with pytest.raises(ImportRejected, match="--crs"):
        import_file(store.sessions, "stations", path)
    import_file(store.sessions, "stations", path, crs=f"EPSG:{SHAPEFILE_EPSG}")
    with store.session() as s:
        stored, _ = repo.stations_gdf(s)
    assert np.abs(shapely.get_coordinates(stored.geometry.values) - [123.403, 41.803]).max() < 1e-7


def test_crs_contradicting_a_declared_projected_crs_is_refused(store, tmp_path):
    path, _ = fixture_as("stations", "zip", tmp_path)  # declares EPSG:4550
    with pytest.raises(CRSMismatch, match="declares .*EPSG:4550.* but crs EPSG:32651"):
        import_file(store.sessions, "stations", path, crs="EPSG:32651")
    with pytest.raises(CRSMismatch):
        import_file(store.sessions, "stations", path, crs="gcj02")
    assert import_file(store.sessions, "stations", path, crs="EPSG:4550").inserted == 2
    assert counts(store)["stations"] == 2


# ------------------------------------------------------------- generations


def test_grid_only_redraw_stages_a_generation_with_copied_upper_levels(store):
    first = import_district(store)
    redraw = import_file(store.sessions, "areas", FIXTURES / "grids_redraw.geojson")
    assert redraw.generation != first.generation and not redraw.activated
    assert redraw.copied_levels == ["district", "street", "community"]
    assert redraw.inserted == 3
    with store.session() as s:
        active = repo.active_generation(s)
        assert active.name == first.generation
        old = repo.area_codes(s, active.id)
        staged = repo.get_generation(s, redraw.generation)
        new = repo.area_codes(s, staged.id)
        assert staged.status == "staged"
        # the active generation is untouched: still two grids, same routing
        assert sorted(c for c, lvl in old.items() if lvl == "grid") == [GRID_1, GRID_2]
        assert repo.locate(s, 123.415, 41.805).grid_code == GRID_2
    assert sorted(new.items()) == sorted(
        {
            **{c: lvl for c, lvl in old.items() if lvl != "grid"},
            GRID_1: "grid",
            GRID_2: "grid",
            "210199001001003": "grid",
        }.items()
    )


def test_named_generations_stage_extend_and_switch_on(store, tmp_path):
    first = import_district(store)
    with pytest.raises(Conflict, match="stage a new generation instead of editing the active"):
        import_file(
            store.sessions,
            "areas",
            FIXTURES / "grids_redraw.geojson",
            generation=first.generation,
        )
    # a new name is staged, with the upper levels copied
    one = {
        "code": GRID_1,
        "name": "a",
        "level": "grid",
        "parent_code": COMMUNITY,
    }
    part = tmp_path / "part1.geojson"
    part.write_text(geojson((one, square(123.40, 41.80))), "utf-8")
    staged = import_file(store.sessions, "areas", part, generation="2025-redraw")
    assert (staged.generation, staged.activated, staged.inserted) == ("2025-redraw", False, 1)
    # adding to the staged generation: parents found there; a code already there is refused
    rest = tmp_path / "part2.geojson"
    two = {**one, "code": GRID_2, "name": "b"}
    rest.write_text(geojson((two, square(123.41, 41.80))), "utf-8")
    before = counts(store)
    with pytest.raises(ImportRejected, match="already exists in generation '2025-redraw'"):
        import_file(store.sessions, "areas", part, generation="2025-redraw")
    assert counts(store) == before
    done = import_file(store.sessions, "areas", rest, generation="2025-redraw", activate=True)
    assert done.activated and done.copied_levels == []
    with store.session() as s:
        statuses = {g.name: g.status for g in repo.list_generations(s)}
        assert statuses == {first.generation: "retired", "2025-redraw": "active"}
        assert s.scalar(sa.select(sa.func.count()).select_from(Area)) == 5 + 5


def test_first_import_without_grids_stays_staged(store, tmp_path):
    path = tmp_path / "district.geojson"
    path.write_text(
        geojson(({"code": "210199", "name": "示范区", "level": "区"}, square(123.4, 41.8, 0.04))),
        "utf-8",
    )
    report = import_file(store.sessions, "areas", path)
    assert not report.activated
    assert "has no grids yet" in report.warnings[0]
    with store.session() as s:
        assert repo.active_generation(s) is None
        assert repo.area_codes(s, repo.get_generation(s, report.generation).id) == {
            "210199": "district"
        }


def test_grid_codes_outside_the_scheme_are_a_warning(store, tmp_path):
    import_district(store)
    path = tmp_path / "grids.geojson"
    path.write_text(
        geojson(
            (
                {"code": "G-7", "name": "七", "level": "grid", "parent_code": COMMUNITY},
                square(123.40, 41.80),
            ),
        ),
        "utf-8",
    )
    report = import_file(store.sessions, "areas", path)
    assert any(
        w.startswith("feature 1: grid code G-7 does not follow the 15-digit")
        for w in report.warnings
    )


def test_degrees_read_as_metres_are_flagged(store, tmp_path):
    path = tmp_path / "stations.csv"
    path.write_text("code,name,kind,x,y\nS1,驿站,health,123.403,41.803\n", "utf-8")
    # The result is valid lon/lat (near 118.5°E on the equator), so it is not refused,
    # but it lies far outside the zone EPSG:4550 is defined for, and the report says so.
    report = import_file(store.sessions, "stations", path, crs="EPSG:4550")
    assert any("outside the area where EPSG:4550 is used" in w for w in report.warnings)


# ------------------------------------------------------------ reading details


def test_gb18030_csv_from_excel_is_read(tmp_path):
    path = tmp_path / "buildings.csv"
    path.write_bytes(
        "code,name,households,lon,lat\nB1,幸福小区1号楼,40,123.401,41.801\n".encode("gb18030")
    )
    frame, _ = read_layer(path, "buildings")
    assert frame["name"].iloc[0] == "幸福小区1号楼"


def test_geopackage_layer_named_like_the_wangge_layer_is_chosen(tmp_path):
    path = tmp_path / "district.gpkg"
    other = gpd.GeoDataFrame({"code": ["X"]}, geometry=[shapely.Point(0, 0)], crs=4326)
    pyogrio.write_dataframe(other, path, layer="notes")
    stations = gpd.read_file(FIXTURES / "stations.geojson").drop(columns="services")
    pyogrio.write_dataframe(stations, path, layer="stations", append=True)
    frame, _ = read_layer(path, "stations")
    assert list(frame["code"]) == ["ST01", "ST02"]
