"""The basemap named by `WANGGE_TILES`, and shifting geometries to the basemap's datum.

- `none` (default): no tile layer, a plain background; nothing is requested.
- an XYZ URL template (OpenStreetMap style or an intranet tile server): drawn as is.
- `gcj02:<template>`: a GCJ-02 basemap (Amap style). Stored geometries are WGS84, so
  every geometry is shifted to GCJ-02 before drawing, or it would sit 300–600 m off.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely

from gis.crs import InputCRS, geometries_from_storage, wgs84_to_gcj02

BACKGROUND = "#eef0f2"  # plain background shown when there are no tiles


@dataclass(frozen=True)
class Basemap:
    """A tile template (None: no tiles) and the datum its tiles are drawn in."""

    template: str | None = None
    datum: str = "wgs84"  # or "gcj02"
    attribution: str = "basemap"

    @property
    def shifts(self) -> bool:
        return self.datum == "gcj02"


NO_BASEMAP = Basemap()


def parse_basemap(setting: str | None) -> Basemap:
    """Read a `WANGGE_TILES` value: none, an XYZ template, or gcj02:<template>."""
    text = (setting or "none").strip()
    if text.lower() in ("", "none"):
        return NO_BASEMAP
    datum = "wgs84"
    if text.lower().startswith("gcj02:"):
        datum, text = "gcj02", text[len("gcj02:") :]
    if "{z}" not in text or "{x}" not in text or "{y}" not in text:
        raise ValueError(
            f"tiles {setting!r}: an XYZ template needs {{z}}, {{x}} and {{y}} "
            "(or use 'none' or 'gcj02:<template>')"
        )
    return Basemap(template=text, datum=datum)


def shift_gdf(gdf: gpd.GeoDataFrame, basemap: Basemap) -> gpd.GeoDataFrame:
    """A copy of `gdf` (EPSG:4326) in the basemap's datum; the same frame if no shift."""
    if not basemap.shifts or gdf is None or len(gdf) == 0:
        return gdf
    out = gdf.copy()
    out.geometry = geometries_from_storage(gdf.geometry.values, InputCRS("gcj02"))
    for col in out.columns:
        # Extra geometry columns (a station's walking route) move with the main one.
        if col != out.geometry.name and isinstance(out[col].dtype, gpd.array.GeometryDtype):
            out[col] = geometries_from_storage(np.asarray(out[col].values), InputCRS("gcj02"))
    return out


def shift_point(lon: float, lat: float, basemap: Basemap) -> tuple[float, float]:
    if not basemap.shifts:
        return lon, lat
    x, y = wgs84_to_gcj02(np.array([[lon, lat]]))[0]
    return float(x), float(y)


def shift_geoms(geoms, basemap: Basemap):
    """Shift a sequence of shapely geometries (None entries stay None)."""
    if not basemap.shifts:
        return geoms
    arr = np.asarray(geoms, dtype=object)
    return shapely.transform(arr, wgs84_to_gcj02)
