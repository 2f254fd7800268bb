"""Point lookup: which district, street, community and grid cover a point."""

from __future__ import annotations

import math
from typing import Annotated

import pyproj
from fastapi import APIRouter, Query

from api.deps import SessionDep
from api.errors import invalid_parameter
from api.schemas import AreaRef, LocateOut, error_responses
from gis.crs import NAMED_CRS, InputCRS, parse_crs, point_to_storage
from gis.db import repo
from gis.errors import NotFound

router = APIRouter(prefix="/locate", tags=["locate"])

DECIMALS = 7  # about a centimetre, as in the GeoJSON answers


def _is_geographic(crs: InputCRS) -> bool:
    return crs.epsg is None or pyproj.CRS.from_epsg(crs.epsg).is_geographic


def check_lon_lat(lon: float, lat: float, *, bounded: bool = True) -> None:
    """Refuse non-finite coordinates and, for degrees, those off the globe.

    The bounds are checked here rather than in `Query(ge=, le=)` because a
    projected EPSG code legitimately takes metres in the same parameters.
    """
    for name, value, top in (("lon", lon, 180), ("lat", lat, 90)):
        if not math.isfinite(value):
            raise invalid_parameter(name, "must be a finite number", value=str(value))
        if bounded and value > top:
            raise invalid_parameter(name, f"must be ≤ {top}", value=value)
        if bounded and value < -top:
            raise invalid_parameter(name, f"must be ≥ {-top}", value=value)


@router.get(
    "",
    summary="Which grid covers a point",
    response_model=LocateOut,
    responses=error_responses(400, 404),
)
def locate_point(
    session: SessionDep,
    lon: Annotated[
        float,
        Query(
            description="longitude, -180..180 (easting in metres for a projected EPSG code)",
            examples=[123.405],
        ),
    ],
    lat: Annotated[
        float,
        Query(
            description="latitude, -90..90 (northing in metres for a projected EPSG code)",
            examples=[41.805],
        ),
    ],
    crs: Annotated[
        str,
        Query(
            description=f"coordinate system of lon/lat: {', '.join(NAMED_CRS)} or EPSG:<code> "
            "(GCJ-02 is what Amap and Tencent maps show, BD-09 what Baidu shows)"
        ),
    ] = "wgs84",
    generation: Annotated[
        str | None, Query(description="generation name or id; default: the active one")
    ] = None,
) -> LocateOut:
    """The district → street → community → grid chain covering the point.

    The point is converted to EPSG:4326 first and the converted `lon`/`lat` are
    echoed. Grids cover their boundary, so a point on an edge or vertex shared by
    several grids is covered by all of them; it **belongs to the one with the
    lowest code**, the same rule bulk assignment follows, and `on_boundary_of`
    lists every grid sharing the point.

    A point outside every grid answers 404 with the nearest grid and its distance
    in metres (`nearest_grid`).
    """
    input_crs = parse_crs(crs)
    check_lon_lat(lon, lat, bounded=_is_geographic(input_crs))
    x, y = point_to_storage(lon, lat, input_crs)
    # A projected point can land anywhere once converted; say so in the input's terms.
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        raise invalid_parameter(
            "lon", f"the point does not convert to a place on Earth from {input_crs}", value=lon
        )
    gen = repo.get_generation(session, generation)
    located = repo.locate(session, x, y, gen)
    x, y = round(x, DECIMALS), round(y, DECIMALS)
    if located.grid_code is None:
        nearest = located.nearest_grid
        where = (
            f"nearest grid {nearest['code']} is {nearest['distance_m']:g} m away"
            if nearest
            else "the generation has no grid nearby"
        )
        raise NotFound(
            f"point ({x}, {y}) is outside every grid of generation {gen.name}; {where}",
            lon=x,
            lat=y,
            generation=gen.name,
            nearest_grid=nearest,
        )
    chain = [AreaRef(**area) for area in located.chain]
    return LocateOut(
        generation=located.generation,
        crs=str(input_crs),
        input={"lon": lon, "lat": lat},
        lon=x,
        lat=y,
        grid=chain[-1],
        chain=chain,
        on_boundary_of=located.on_boundary_of,
    )
