"""Coordinate systems: parse what users call them and convert to EPSG:4326.

Everything is stored in EPSG:4326. CGCS2000 (EPSG:4490) differs from WGS84 by
centimetres here and is taken as equal. GCJ-02 (Amap, Tencent) and BD-09
(Baidu) are obfuscations without an EPSG code, so pyproj cannot do them; they go
through `prcoords` with its iterative ("bored") inverse tightened to ~1e-10°
(about a centimetre), not the one-step approximation that is off by a metre.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import prcoords
import pyproj
import shapely

from gis.errors import InvalidInput

# prcoords reads this module global on every inverse call; the shipped 1e-5°
# (~1 m) stops after a single step. 1e-10° is reached in 2-3 steps.
prcoords.PRC_EPS = 1e-10

STORAGE_SRID = 4326

_ALIASES = {
    "wgs84": "wgs84",
    "epsg:4326": "wgs84",
    "4326": "wgs84",
    "cgcs2000": "cgcs2000",
    "epsg:4490": "cgcs2000",
    "4490": "cgcs2000",
    "gcj02": "gcj02",
    "gcj-02": "gcj02",
    "amap": "gcj02",
    "bd09": "bd09",
    "bd-09": "bd09",
    "baidu": "bd09",
}

NAMED_CRS = ("wgs84", "cgcs2000", "gcj02", "bd09")


@dataclass(frozen=True)
class InputCRS:
    """A coordinate system an input may declare: one of NAMED_CRS or an EPSG code."""

    name: str
    epsg: int | None = None

    @property
    def is_storage(self) -> bool:
        return self.name in ("wgs84", "cgcs2000")

    def __str__(self) -> str:
        return self.name if self.epsg is None else f"EPSG:{self.epsg}"


def parse_crs(value: str | int | None) -> InputCRS:
    """Read a user's CRS name (wgs84, cgcs2000, gcj02, bd09, EPSG:nnnn, nnnn)."""
    if value is None or value == "":
        return InputCRS("wgs84")
    text = str(value).strip().lower()
    if text in _ALIASES:
        return InputCRS(_ALIASES[text])
    code = text.removeprefix("epsg:")
    if code.isdigit():
        try:
            pyproj.CRS.from_epsg(int(code))
        except pyproj.exceptions.CRSError as exc:
            raise InvalidInput(f"unknown EPSG code {code}", field="crs") from exc
        return InputCRS("epsg", int(code))
    raise InvalidInput(
        f"unknown coordinate system {value!r}; use one of {', '.join(NAMED_CRS)} or EPSG:<code>",
        field="crs",
    )


def _pointwise(fn: Callable, xy: np.ndarray) -> np.ndarray:
    """Apply a prcoords (lat, lon) function to an (n, 2) lon/lat array.

    prcoords works one point at a time; shared vertices are converted once.
    """
    if len(xy) == 0:
        return xy
    uniq, inverse = np.unique(xy, axis=0, return_inverse=True)
    out = np.empty_like(uniq)
    for i, (lon, lat) in enumerate(uniq):
        lat2, lon2 = fn((lat, lon), False)
        out[i] = (lon2, lat2)
    return out[inverse.reshape(-1)]


def gcj02_to_wgs84(xy: np.ndarray) -> np.ndarray:
    return _pointwise(prcoords.gcj_wgs_bored, np.asarray(xy, dtype=float))


def wgs84_to_gcj02(xy: np.ndarray) -> np.ndarray:
    return _pointwise(prcoords.wgs_gcj, np.asarray(xy, dtype=float))


def bd09_to_wgs84(xy: np.ndarray) -> np.ndarray:
    return _pointwise(prcoords.bd_wgs_bored, np.asarray(xy, dtype=float))


def wgs84_to_bd09(xy: np.ndarray) -> np.ndarray:
    return _pointwise(prcoords.wgs_bd, np.asarray(xy, dtype=float))


def to_storage_xy(xy: np.ndarray, crs: InputCRS) -> np.ndarray:
    """Convert an (n, 2) coordinate array from `crs` to EPSG:4326 lon/lat."""
    xy = np.asarray(xy, dtype=float)
    if crs.is_storage:
        return xy
    if crs.name == "gcj02":
        return gcj02_to_wgs84(xy)
    if crs.name == "bd09":
        return bd09_to_wgs84(xy)
    transformer = pyproj.Transformer.from_crs(crs.epsg, STORAGE_SRID, always_xy=True)
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def from_storage_xy(xy: np.ndarray, crs: InputCRS) -> np.ndarray:
    """Convert EPSG:4326 lon/lat to `crs` (for drawing on a GCJ-02 basemap, say)."""
    xy = np.asarray(xy, dtype=float)
    if crs.is_storage:
        return xy
    if crs.name == "gcj02":
        return wgs84_to_gcj02(xy)
    if crs.name == "bd09":
        return wgs84_to_bd09(xy)
    transformer = pyproj.Transformer.from_crs(STORAGE_SRID, crs.epsg, always_xy=True)
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def geometries_to_storage(geoms: np.ndarray, crs: InputCRS) -> np.ndarray:
    """Convert an array of shapely geometries from `crs` to EPSG:4326."""
    if crs.is_storage:
        return geoms
    return shapely.transform(geoms, lambda xy: to_storage_xy(xy, crs))


def geometries_from_storage(geoms: np.ndarray, crs: InputCRS) -> np.ndarray:
    if crs.is_storage:
        return geoms
    return shapely.transform(geoms, lambda xy: from_storage_xy(xy, crs))


def point_to_storage(lon: float, lat: float, crs: InputCRS) -> tuple[float, float]:
    x, y = to_storage_xy(np.array([[lon, lat]]), crs)[0]
    return float(x), float(y)


def local_metric_crs(lon: float, lat: float) -> pyproj.CRS:
    """An azimuthal equidistant CRS centred on a point: distances from it are true metres."""
    return pyproj.CRS.from_proj4(
        f"+proj=aeqd +lat_0={lat} +lon_0={lon} +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    )


def utm_crs_for(lon: float, lat: float) -> pyproj.CRS:
    """The UTM zone holding a point, for lengths and areas across a district."""
    zone = int((lon + 180) // 6) + 1
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
