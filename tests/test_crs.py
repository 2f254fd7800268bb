"""Coordinate conversion: GCJ-02, BD-09 and EPSG input against independent references.

The GCJ-02 and BD-09 references below are the published obfuscation formulas,
written out here independently of prcoords so the two implementations check
each other. Distances are measured on the WGS84 ellipsoid with pyproj.Geod.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely

from data.importers import read_layer
from gis.crs import (
    bd09_to_wgs84,
    from_storage_xy,
    gcj02_to_wgs84,
    parse_crs,
    point_to_storage,
    to_storage_xy,
    wgs84_to_bd09,
    wgs84_to_gcj02,
)
from gis.errors import InvalidInput
from tests.conftest import SHARED_DATA

GEOD = pyproj.Geod(ellps="WGS84")
# Beijing railway station, as the pair is usually quoted (5 decimals, so ~1 m of rounding).
STATION_WGS84 = (116.42079, 39.90105)
STATION_GCJ02 = (116.42703, 39.90245)


def metres(a, b) -> np.ndarray:
    """Geodesic distance between two (n, 2) lon/lat arrays."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.asarray(GEOD.inv(a[:, 0], a[:, 1], b[:, 0], b[:, 1])[2])


def reference_wgs_to_gcj(lon: float, lat: float) -> tuple[float, float]:
    """GCJ-02 forward transform as published (Krasovsky ellipsoid constants)."""
    a, ee = 6378245.0, 0.00669342162296594323
    x, y = lon - 105.0, lat - 35.0

    def waves(t: float, big: float, small: float) -> float:
        return (big * math.sin(t / 12.0 * math.pi) + small * math.sin(t / 30.0 * math.pi)) * 2 / 3

    def common(u: float, v: float) -> float:
        first = (20.0 * math.sin(6.0 * u * math.pi) + 20.0 * math.sin(2.0 * u * math.pi)) * 2 / 3
        second = (20.0 * math.sin(v * math.pi) + 40.0 * math.sin(v / 3.0 * math.pi)) * 2 / 3
        return first + second

    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += common(x, y) + waves(y, 160.0, 320.0)
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += common(x, x) + waves(x, 150.0, 300.0)
    rad = math.radians(lat)
    magic = 1 - ee * math.sin(rad) ** 2
    dlat = dlat * 180.0 / ((a * (1 - ee)) / (magic * math.sqrt(magic)) * math.pi)
    dlon = dlon * 180.0 / (a / math.sqrt(magic) * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def reference_gcj_to_bd(lon: float, lat: float) -> tuple[float, float]:
    """BD-09 forward transform from GCJ-02 as published."""
    x_pi = math.pi * 3000.0 / 180.0
    z = math.hypot(lon, lat) + 0.00002 * math.sin(lat * x_pi)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * x_pi)
    return z * math.cos(theta) + 0.0065, z * math.sin(theta) + 0.006


def random_points_in_china(n: int, seed: int = 2024) -> np.ndarray:
    """Points over eastern and central China, where the obfuscation applies."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(98.0, 134.0, n), rng.uniform(21.0, 53.0, n)])


# --------------------------------------------------------------------- GCJ-02


def test_gcj02_of_a_known_place_converts_back_to_its_wgs84_position():
    truth = np.array([STATION_WGS84])
    gcj = np.array([reference_wgs_to_gcj(*STATION_WGS84)])
    assert metres(gcj, [STATION_GCJ02])[0] < 1.0  # the quoted pair, up to its rounding
    assert metres(gcj02_to_wgs84(gcj), truth)[0] < 0.5
    assert metres(gcj02_to_wgs84(np.array([STATION_GCJ02])), truth)[0] < 1.0
    # and the raw offset this all exists to remove is hundreds of metres
    assert 400 < metres(gcj, truth)[0] < 700


def test_gcj02_forward_agrees_with_the_reference_formula():
    pts = random_points_in_china(200)
    ref = np.array([reference_wgs_to_gcj(lon, lat) for lon, lat in pts])
    assert metres(wgs84_to_gcj02(pts), ref).max() < 0.01


def test_gcj02_round_trips_within_a_centimetre():
    pts = random_points_in_china(500)
    back = gcj02_to_wgs84(wgs84_to_gcj02(pts))
    assert metres(back, pts).max() < 0.01
    # the inverse of an independent forward transform lands on the truth too
    ref = np.array([reference_wgs_to_gcj(lon, lat) for lon, lat in pts[:100]])
    assert metres(gcj02_to_wgs84(ref), pts[:100]).max() < 0.01


# ---------------------------------------------------------------------- BD-09


def test_bd09_of_a_known_place_converts_back_to_its_wgs84_position():
    truth = np.array([STATION_WGS84])
    bd = np.array([reference_gcj_to_bd(*reference_wgs_to_gcj(*STATION_WGS84))])
    assert metres(bd09_to_wgs84(bd), truth)[0] < 0.5
    assert 800 < metres(bd, truth)[0] < 1500  # BD-09 moves the point further still


def test_bd09_round_trips_and_agrees_with_the_reference_formula():
    pts = random_points_in_china(300, seed=7)
    ref = np.array([reference_gcj_to_bd(*reference_wgs_to_gcj(lon, lat)) for lon, lat in pts])
    assert metres(wgs84_to_bd09(pts), ref).max() < 0.01
    assert metres(bd09_to_wgs84(wgs84_to_bd09(pts)), pts).max() < 0.01
    assert metres(bd09_to_wgs84(ref), pts).max() < 0.01


def test_named_systems_convert_through_the_storage_helpers():
    lon, lat = reference_wgs_to_gcj(123.43, 41.80)
    x, y = point_to_storage(lon, lat, parse_crs("gcj02"))
    assert metres([x, y], [123.43, 41.80])[0] < 0.01
    out = from_storage_xy(np.array([[123.43, 41.80]]), parse_crs("amap"))
    assert metres(out, [lon, lat])[0] < 0.01
    # CGCS2000 is stored as it is: the datums agree to centimetres here
    same = to_storage_xy(np.array([[123.43, 41.80]]), parse_crs("EPSG:4490"))
    assert np.array_equal(same, [[123.43, 41.80]])


# ----------------------------------------------------------------- EPSG input


def test_utm_input_on_the_central_meridian_lands_on_it():
    """On UTM 51N's central meridian (123°E) easting is 500 km, northing 0.9996 × meridian arc."""
    arc = GEOD.inv(123.0, 0.0, 123.0, 41.8)[2]
    lon, lat = point_to_storage(500_000.0, 0.9996 * arc, parse_crs("EPSG:32651"))
    assert metres([lon, lat], [123.0, 41.8])[0] < 0.01


def test_cgcs2000_gauss_kruger_input_converts_to_lonlat():
    """EPSG:4549 (3-degree zone, CM 120E, scale 1): x = 500 km on the meridian, y = the arc."""
    arc = pyproj.Geod(ellps="GRS80").inv(120.0, 0.0, 120.0, 40.0)[2]
    lon, lat = point_to_storage(500_000.0, arc, parse_crs("epsg:4549"))
    assert metres([lon, lat], [120.0, 40.0])[0] < 0.01
    # and a point off the meridian survives the round trip
    crs = parse_crs("4549")
    xy = from_storage_xy(np.array([[121.2, 39.5]]), crs)
    assert xy[0, 0] > 500_000 and metres(to_storage_xy(xy, crs), [121.2, 39.5])[0] < 0.001


# ------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "name", "epsg"),
    [
        (None, "wgs84", None),
        ("WGS84", "wgs84", None),
        ("epsg:4326", "wgs84", None),
        ("CGCS2000", "cgcs2000", None),
        ("4490", "cgcs2000", None),
        ("GCJ-02", "gcj02", None),
        ("amap", "gcj02", None),
        ("bd09", "bd09", None),
        ("baidu", "bd09", None),
        ("EPSG:4549", "epsg", 4549),
        (32651, "epsg", 32651),
    ],
)
def test_parse_crs_reads_names_and_codes(text, name, epsg):
    crs = parse_crs(text)
    assert (crs.name, crs.epsg) == (name, epsg)


@pytest.mark.parametrize(
    ("text", "message"),
    [("mercator", "unknown coordinate system"), ("EPSG:999999", "unknown EPSG code 999999")],
)
def test_parse_crs_refuses_what_it_does_not_know(text, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_crs(text)
    assert caught.value.detail["field"] == "crs"


# ------------------------------------------------------------ real-world data


def heping_file(src: Path, folder: Path) -> Path:
    """和平区 (210102) from a shared file, with the columns an areas import needs.

    Only the properties change; geometry and the file's `crs` member stay as published.
    """
    doc = json.loads(src.read_text("utf-8"))
    doc["features"] = [
        {**f, "properties": {"code": "210102", "name": "和平区", "level": "district"}}
        for f in doc["features"]
        if f["properties"]["adcode"] == "210102"
    ]
    out = folder / src.name
    out.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    return out


def test_gcj02_district_outline_matches_the_official_one_after_conversion(tmp_path):
    gcj_file = heping_file(SHARED_DATA / "shenyang_districts_gcj02.geojson", tmp_path)
    (tmp_path / "official").mkdir()
    official_file = heping_file(
        SHARED_DATA / "shenyang_districts_cgcs2000.geojson", tmp_path / "official"
    )
    official, _ = read_layer(official_file, "areas")  # declares EPSG:4490: stored as is
    converted, _ = read_layer(gcj_file, "areas", crs="gcj02")
    raw, _ = read_layer(gcj_file, "areas")  # declares CRS84, taken at its word

    utm = pyproj.Transformer.from_crs(4326, 32651, always_xy=True)

    def in_metres(frame):
        return shapely.transform(
            frame.geometry.values[0], lambda xy: np.column_stack(utm.transform(*xy.T))
        )

    truth = in_metres(official)

    def iou(geom) -> float:
        return shapely.area(shapely.intersection(geom, truth)) / shapely.area(
            shapely.union(geom, truth)
        )

    def centroid_offset(frame) -> float:
        a = shapely.centroid(frame.geometry.values[0])
        b = shapely.centroid(official.geometry.values[0])
        return metres([a.x, a.y], [b.x, b.y])[0]

    iou_converted, iou_raw = iou(in_metres(converted)), iou(in_metres(raw))
    assert iou_converted >= 0.9  # measured 0.917, as the data's README says
    assert iou_raw < 0.8 and iou_converted - iou_raw > 0.1  # raw: 0.745
    # Measured: 655 m raw, 125 m converted. The rest is not a shift left over by the
    # conversion (that would cost IoU) but the official file's simplified outline.
    assert centroid_offset(raw) > 500
    assert centroid_offset(converted) < 150
