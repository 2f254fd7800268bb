"""GeoDataFrames to GeoJSON (RFC 7946) with OGC API - Features style paging.

A collection answer carries `numberMatched` (before paging), `numberReturned` and
`links` (self, and next/prev when there are more pages) that repeat the request's
query string with only `offset` changed, so a client can walk the pages blindly.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from fastapi.responses import JSONResponse
from shapely.geometry import mapping
from starlette.datastructures import URL

GEOJSON_MEDIA_TYPE = "application/geo+json"
#: 7 decimals of a degree is about 1 cm: finer digits are noise and bytes.
COORDINATE_DECIMALS = 7


class GeoJSONResponse(JSONResponse):
    media_type = GEOJSON_MEDIA_TYPE


def _round_coords(xy: np.ndarray) -> np.ndarray:
    return np.round(xy, COORDINATE_DECIMALS)


def _plain(value: Any) -> Any:
    """A property value JSON can carry: numpy scalars unboxed, NaN/NA as null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def features(gdf: gpd.GeoDataFrame, *, id_column: str = "code") -> list[dict[str, Any]]:
    """One GeoJSON Feature per row; `id` is the row's code, every column a property."""
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)  # RFC 7946 coordinates are WGS84 lon/lat
    geoms = shapely.transform(np.asarray(gdf.geometry.to_numpy(), dtype=object), _round_coords)
    props = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    # convert_dtypes turns an integer column holding some nulls back into integers,
    # so `floors` prints as 6, not 6.0.
    records = props.convert_dtypes().to_dict("records")
    out = []
    for record, geom in zip(records, geoms, strict=True):
        properties = {key: _plain(value) for key, value in record.items()}
        out.append(
            {
                "type": "Feature",
                "id": properties.get(id_column),
                "geometry": mapping(geom) if geom is not None else None,
                "properties": properties,
            }
        )
    return out


def feature(gdf: gpd.GeoDataFrame, *, id_column: str = "code") -> dict[str, Any]:
    """The single row of `gdf` as a Feature."""
    return features(gdf.iloc[:1], id_column=id_column)[0]


def paging_links(
    url: URL,
    *,
    offset: int,
    limit: int,
    number_matched: int,
    media_type: str = GEOJSON_MEDIA_TYPE,
) -> list[dict[str, str]]:
    """self/next/prev links: the same query string with another offset."""
    links = [{"href": str(url), "rel": "self", "type": media_type, "title": "this page"}]
    if offset + limit < number_matched:
        href = url.include_query_params(offset=offset + limit, limit=limit)
        links.append({"href": str(href), "rel": "next", "type": media_type, "title": "next page"})
    if offset > 0:
        href = url.include_query_params(offset=max(offset - limit, 0), limit=limit)
        links.append(
            {"href": str(href), "rel": "prev", "type": media_type, "title": "previous page"}
        )
    return links


def feature_collection(
    gdf: gpd.GeoDataFrame,
    *,
    url: URL,
    number_matched: int,
    limit: int,
    offset: int,
    id_column: str = "code",
) -> dict[str, Any]:
    """A page of features as a FeatureCollection with paging counts and links."""
    items = features(gdf, id_column=id_column)
    return {
        "type": "FeatureCollection",
        "numberMatched": int(number_matched),
        "numberReturned": len(items),
        "links": paging_links(url, offset=offset, limit=limit, number_matched=number_matched),
        "features": items,
    }
