"""Hostile files through both doors, `wangge import` and POST /api/v1/imports/{layer},
on both stores: each is refused with an error naming the file (a CLI failure, an
HTTP 4xx) and nothing is written; SQL in text fields is stored as plain text.

The files are written here by hand, byte by byte where the bytes are the point.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from api.cli import app as cli_app
from api.settings import Settings
from gis.db import repo
from gis.db.engine import make_engine, make_sessionmaker
from tests.server import serve
from tests.test_cases import FOUR_GRIDS, load_generation

ADMIN = {"X-Wangge-Role": "admin", "X-Wangge-User": "root"}
TABLES = ("generations", "areas", "buildings", "stations", "cases", "case_events")


def _feature_collection(features: list[dict]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _station(code: str, lon: float, lat: float, **props) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"code": code, "name": f"驿站{code}", "kind": "neighbourhood", **props},
    }


def _ring_polygon(n_vertices: int) -> bytes:
    """One grid whose boundary is a circle of `n_vertices` points (GeoJSON text)."""
    t = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    x, y = 123.405 + 0.004 * np.cos(t), 41.8075 + 0.002 * np.sin(t)
    coords = ",".join(f"[{a:.9f},{b:.9f}]" for a, b in zip(x, y, strict=True))
    coords += f",[{x[0]:.9f},{y[0]:.9f}]"
    props = {"code": "210102001001009", "name": "网格009", "level": "grid",
             "parent_code": "210102001001"}  # fmt: skip
    return (
        '{"type":"FeatureCollection","features":[{"type":"Feature","properties":'
        + json.dumps(props)
        + ',"geometry":{"type":"Polygon","coordinates":[['
        + coords
        + "]]}}]}"
    ).encode()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _zip_bomb(member: str, n_bytes: int) -> bytes:
    """A zip of one member of `n_bytes` zeros: about a thousandth of that on disk."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(member, "w") as out:
            block = bytes(1024 * 1024)
            for _ in range(n_bytes // len(block)):
                out.write(block)
    return buffer.getvalue()


def _lying_zip() -> bytes:
    """A tiny zip whose directory claims its member expands to 4 GB."""
    data = bytearray(_zip({"stations.shp": b"\0" * 100, "stations.dbf": b"\0" * 10}))
    at = data.find(b"PK\x01\x02")
    struct.pack_into("<L", data, at + 24, 0xFFFFFFF0)  # uncompressed size, central directory
    return bytes(data)


@dataclass(frozen=True)
class Hostile:
    name: str  # the file's name, which every refusal must mention
    layer: str
    words: str  # a phrase the refusal must contain (lower case)
    data: bytes


def hostile_files() -> list[Hostile]:
    utf8_csv = "code,name,kind,lon,lat\nS1,幸福驿站,neighbourhood,123.405,41.808\n"
    rng = np.random.default_rng(7)
    junk = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    return [
        Hostile("broken.geojson", "stations", "cannot be read as geojson",
                b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geom'),
        Hostile("not-a-collection.geojson", "stations", "has no geometry",
                b'{"type": "Feature", "geometry": 42}'),
        Hostile("million-vertices.geojson", "areas", "1,000,000 vertices",
                _ring_polygon(999_999)),
        Hostile("utf16.csv", "stations", "utf-16", utf8_csv.encode("utf-16")),
        Hostile("utf16-no-bom.csv", "stations", "utf-16", utf8_csv.encode("utf-16-le")),
        Hostile("utf16.geojson", "stations", "utf-16",
                _feature_collection([_station("S1", 123.405, 41.808)]).decode().encode("utf-16")),
        Hostile("gbk.geojson", "stations", "not utf-8",
                json.dumps({"type": "FeatureCollection", "features": [
                    _station("S1", 123.405, 41.808)]}, ensure_ascii=False).encode("gbk")),
        Hostile("latin1.csv", "stations", "neither utf-8 nor gb18030",
                "code,name,kind,lon,lat\nS1,Café ÿ,neighbourhood,123.405,41.808\n".encode(
                    "latin-1")),
        Hostile("junk.csv", "stations", "binary", junk),
        Hostile("junk.geojson", "stations", "binary", junk),
        Hostile("junk.gpkg", "stations", "cannot be read as geopackage", junk),
        Hostile("junk.zip", "stations", "not a zip", junk),
        Hostile("bomb.zip", "stations", "zip bomb", _zip_bomb("stations.shp", 64 * 1024 * 1024)),
        Hostile("lying.zip", "stations", "over the limit", _lying_zip()),
        Hostile("climb.zip", "stations", "outside it",
                _zip({"../../../tmp/stations.shp": b"x", "../../../tmp/stations.dbf": b"x"})),
        Hostile("absolute.zip", "stations", "outside it", _zip({"/etc/stations.shp": b"x"})),
        Hostile("huge.geojson", "stations", "not longitude/latitude",
                _feature_collection([_station("S1", 1e308, 1e308)])),
        Hostile("nan.geojson", "stations", "",
                b'{"type":"FeatureCollection","features":[{"type":"Feature","properties":'
                b'{"code":"S1","name":"n","kind":"neighbourhood"},'
                b'"geometry":{"type":"Point","coordinates":[NaN,NaN]}}]}'),
        Hostile("nan.csv", "stations", "not longitude/latitude",
                b"code,name,kind,lon,lat\nS1,a,neighbourhood,nan,nan\n"
                b"S2,b,neighbourhood,inf,41.8\nS3,c,neighbourhood,1e400,41.8\n"),
        Hostile("households.csv", "buildings", "too large",
                b"code,households,lon,lat\nB1,1e30,123.405,41.808\n"),
        Hostile("long-name.geojson", "stations", "longer than 100 characters",
                _feature_collection([_station("S1", 123.405, 41.808, name="名" * 5000)])),
    ]  # fmt: skip


HOSTILE = hostile_files()
SQL_TEXT = "'); DROP TABLE stations; -- 驿站\" OR 1=1; SELECT pg_sleep(10);"


@pytest.fixture
def district(store_url) -> Iterator[str]:
    engine = make_engine(store_url)
    with make_sessionmaker(engine)() as s, s.begin():
        repo.seed_categories(s)
        load_generation(s, "initial", FOUR_GRIDS)
    engine.dispose()
    yield store_url


def _counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = {t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in TABLES}
    engine.dispose()
    return out


@pytest.fixture
def env(district, tmp_path, monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANGGE_DATABASE_URL", district)
    monkeypatch.setenv("WANGGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")  # rich must not wrap the file names
    return Settings(
        database_url=district, data_dir=tmp_path, dev_role_headers=True, rate_limit_per_min=0
    )


def _write(folder: Path, item: Hostile) -> Path:
    path = folder / item.name
    path.write_bytes(item.data)
    return path


def test_hostile_files_are_refused_by_the_cli(env, district, tmp_path):
    before = _counts(district)
    runner = CliRunner()
    for item in HOSTILE:
        path = _write(tmp_path, item)
        result = runner.invoke(cli_app, ["import", item.layer, str(path)])
        said = " ".join(result.output.split()).lower()
        assert result.exit_code != 0, (item.name, result.output)
        assert item.name in said, (item.name, result.output)
        assert item.words in said, (item.name, result.output)
        assert "traceback" not in said
        assert _counts(district) == before, item.name


def test_hostile_files_are_refused_over_http(env, district, capsys):
    before = _counts(district)
    figures = []
    with serve(env) as base, httpx.Client(base_url=base, timeout=120, headers=ADMIN) as http:
        for item in HOSTILE:
            began = time.monotonic()
            r = http.post(f"/api/v1/imports/{item.layer}", files={"file": (item.name, item.data)})
            figures.append(
                f"  {item.name:26} {len(item.data):>11,} B  {r.status_code}  "
                f"{time.monotonic() - began:5.2f} s  {r.json()['message'][:90]}"
            )
            assert 400 <= r.status_code < 500, (item.name, r.status_code, r.text[:500])
            message = r.json()["message"]
            assert item.name in message, (item.name, message)
            assert item.words in message.lower(), (item.name, message)
            assert _counts(district) == before, item.name
        # The server is still well after all of it.
        assert http.get("/readyz").status_code == 200
    with capsys.disabled():
        print(f"\nhostile files over HTTP ({district.split(':')[0]}):", *figures, sep="\n")


def _sql_stations() -> bytes:
    return _feature_collection(
        [
            _station("S1", 123.405, 41.808, name=SQL_TEXT[:100], address=SQL_TEXT),
            _station("S2'; --", 123.415, 41.808, services="a;' OR '1'='1"),
        ]
    )


def _stored_stations(url: str) -> dict[str, tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT code, name, address FROM stations")).all()
    engine.dispose()
    return {code: (name, address) for code, name, address in rows}


def test_sql_in_text_fields_is_stored_verbatim_cli(env, district, tmp_path):
    path = tmp_path / "sql.geojson"
    path.write_bytes(_sql_stations())
    result = CliRunner().invoke(cli_app, ["import", "stations", str(path)])
    assert result.exit_code == 0, result.output
    stored = _stored_stations(district)
    assert stored["S1"] == (SQL_TEXT[:100], SQL_TEXT)
    assert "S2'; --" in stored
    assert _counts(district)["stations"] == 2  # and the table is still there


def test_sql_in_text_fields_is_stored_verbatim_http(env, district):
    with serve(env) as base, httpx.Client(base_url=base, timeout=60, headers=ADMIN) as http:
        r = http.post("/api/v1/imports/stations", files={"file": ("sql.geojson", _sql_stations())})
        assert r.status_code == 201, r.text
        assert r.json()["inserted"] == 2
    stored = _stored_stations(district)
    assert stored["S1"] == (SQL_TEXT[:100], SQL_TEXT)
    assert set(stored) == {"S1", "S2'; --"}


def test_a_gbk_csv_without_declaration_is_read_as_gb18030_not_garbled(env, district, tmp_path):
    """The one 'wrong encoding' that is accepted, by rule: Excel on Chinese Windows
    writes CSV in GB18030/GBK with no declaration. It is decoded strictly (a file in
    a third encoding is refused, see latin1.csv) and the report says so."""
    path = tmp_path / "gbk.csv"
    path.write_bytes("code,name,kind,lon,lat\nS1,幸福驿站,近邻驿站,123.405,41.808\n".encode("gbk"))
    result = CliRunner().invoke(cli_app, ["import", "stations", str(path)])
    assert result.exit_code == 0, result.output
    assert "gb18030" in result.output.lower()
    assert _stored_stations(district)["S1"][0] == "幸福驿站"
