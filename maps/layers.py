"""Building blocks the renderers share: display geometry, GeoJSON, colours, legends.

Pure functions and folium elements; no I/O.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from branca.element import MacroElement
from jinja2 import Template

from maps.basemap import BACKGROUND, Basemap, shift_gdf
from maps.i18n import label

COORD_DECIMALS = 6  # ~0.1 m: finer than any screen pixel at street zoom
DETAIL_ZOOM = 17  # simplify so that nothing moves by more than half a pixel at this zoom

# Diverging bins around 100 % of the community mean (blue under, red over; ColorBrewer RdBu).
SHARE_EDGES = (70, 85, 95, 105, 115, 130)
SHARE_COLOURS = ("#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b")
NO_DATA_COLOUR = "#bdbdbd"

# One colour per station kind (ColorBrewer Dark2 plus one), in gis.domain.STATION_KINDS order.
STATION_COLOURS = {
    "neighbourhood": "#1b9e77",
    "new_employment": "#d95f02",
    "convenience": "#7570b3",
    "shared": "#e7298a",
    "party_service": "#c0392b",
    "mediation": "#a6761d",
    "health": "#1f78b4",
}
OTHER_STATION_COLOUR = "#666666"

# 5/10/15-minute life circles of GB 50180-2018, drawn as radii when no isochrones exist.
LIFE_CIRCLE_RADIUS_M = {5: 300, 10: 500, 15: 1000}


def tolerance_deg(zoom: int, lat: float) -> float:
    """Half a screen pixel at `zoom`, in degrees, safe for both axes at latitude `lat`."""
    deg_per_px = 360.0 / (256 * 2**zoom)
    return 0.5 * deg_per_px * math.cos(math.radians(lat))


def display_gdf(
    gdf: gpd.GeoDataFrame | None,
    basemap: Basemap,
    *,
    zoom: int = DETAIL_ZOOM,
    coverage: bool = False,
) -> gpd.GeoDataFrame | None:
    """Geometry ready to draw: simplified for `zoom`, shifted to the basemap, rounded.

    `coverage=True` is for layers that tile the plane (grids, communities, streets):
    shapely's coverage simplification keeps shared edges shared, so no slivers open
    between neighbours. Simplifying before the GCJ-02 shift converts fewer vertices.
    """
    if gdf is None or len(gdf) == 0:
        return gdf
    out = gdf.copy()
    geoms = out.geometry.values
    lat = float(np.nanmean(shapely.bounds(geoms)[:, [1, 3]]))
    tol = tolerance_deg(zoom, lat)
    is_area = shapely.get_type_id(geoms) >= 3
    if is_area.any():
        area = np.asarray(geoms[is_area], dtype=object)
        if coverage:
            area = shapely.coverage_simplify(area, tol, simplify_boundary=True)
        else:
            area = shapely.simplify(area, tol, preserve_topology=True)
        new = np.asarray(geoms, dtype=object).copy()
        new[is_area] = area
        out.geometry = gpd.GeoSeries(new, index=out.index, crs=out.crs)
    out = shift_gdf(out, basemap)
    out.geometry = shapely.transform(out.geometry.values, round_xy)
    return out


def round_xy(xy: np.ndarray) -> np.ndarray:
    return np.round(xy, COORD_DECIMALS)


def _plain(value):
    """A JSON-safe, HTML-escaped property value (tooltips insert values as HTML)."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 2)
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.strftime("%Y-%m-%d %H:%M")
    if value is pd.NaT or value is pd.NA:
        return None
    return html.escape(str(value))


def to_feature_collection(
    gdf: gpd.GeoDataFrame, columns: Sequence[str], id_column: str | None = "code"
) -> dict:
    """A GeoJSON FeatureCollection with the given properties (ids from `id_column`)."""
    geoms = shapely.to_geojson(gdf.geometry.values)
    cols = [c for c in columns if c in gdf.columns]
    records = gdf[cols].to_dict("records") if cols else [{}] * len(gdf)
    features = []
    for i, (props, geom) in enumerate(zip(records, geoms, strict=True)):
        feature = {
            "type": "Feature",
            "id": str(gdf[id_column].iat[i]) if id_column in gdf.columns else str(i),
            "properties": {k: _plain(v) for k, v in props.items()},
            "geometry": json.loads(geom),
        }
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def share_colour(share_pct: float | None) -> str:
    if share_pct is None or not np.isfinite(share_pct):
        return NO_DATA_COLOUR
    return SHARE_COLOURS[int(np.searchsorted(SHARE_EDGES, share_pct, side="right"))]


def share_legend_entries(lang: str) -> list[tuple[str, str]]:
    """(label, colour) rows of the share legend, low to high, then 'no data'."""
    edges = SHARE_EDGES
    labels = [f"< {edges[0]}%"]
    labels += [f"{lo}–{hi}%" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f"≥ {edges[-1]}%")
    return [*zip(labels, SHARE_COLOURS, strict=True), (label("no_data", lang), NO_DATA_COLOUR)]


def new_map(bounds: Sequence[float] | None, basemap: Basemap) -> folium.Map:
    """An empty map fitted to `bounds` (minx, miny, maxx, maxy) with the configured basemap."""
    # maxZoom is set explicitly: without a tile layer Leaflet has none, and marker
    # clustering refuses to start on a map without one.
    fmap = folium.Map(tiles=None, control_scale=True, zoom_start=13)
    fmap.options.update(maxZoom=19, minZoom=3)
    if basemap.template:
        folium.TileLayer(
            tiles=basemap.template, attr=basemap.attribution, name="basemap", control=False
        ).add_to(fmap)
    else:
        # No tiles: a plain background, so the page requests nothing from outside.
        fmap.get_root().header.add_child(
            folium.Element(f"<style>.leaflet-container{{background:{BACKGROUND};}}</style>")
        )
    if bounds is not None and np.all(np.isfinite(bounds)):
        minx, miny, maxx, maxy = (float(v) for v in bounds)
        fmap.fit_bounds([[miny, minx], [maxy, maxx]])
    return fmap


class Legend(MacroElement):
    """A legend box drawn as a Leaflet control (so it stacks with the others).

    `title` and `entries` [(label, colour), ...] stay readable on the object for tests.
    """

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function() {
            var box = L.control({position: {{ this.position|tojson }}});
            box.onAdd = function() {
                var div = L.DomUtil.create('div', 'wangge-legend');
                div.setAttribute('data-legend', {{ this.key|tojson }});
                div.innerHTML = {{ this.inner_html|tojson }};
                L.DomEvent.disableClickPropagation(div);
                return div;
            };
            box.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}
        """
    )

    def __init__(
        self,
        key: str,
        title: str,
        entries: Sequence[tuple[str, str]],
        *,
        shape: str = "box",
        notes: Sequence[str] = (),
        position: str = "bottomright",
    ):
        super().__init__()
        self._name = "Legend"
        self.key, self.title, self.entries = key, title, list(entries)
        self.position = position
        radius = "50%" if shape == "dot" else "2px"
        rows = "".join(
            f'<div><i style="background:{colour};border-radius:{radius}"></i>'
            f"{html.escape(text)}</div>"
            for text, colour in self.entries
        )
        extra = "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes)
        self.inner_html = f"<b>{html.escape(title)}</b>{rows}{extra}"


class Title(MacroElement):
    """The map's title as a Leaflet control at the top left."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function() {
            var box = L.control({position: 'topleft'});
            box.onAdd = function() {
                var div = L.DomUtil.create('div', 'wangge-title');
                div.textContent = {{ this.text|tojson }};
                return div;
            };
            box.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}
        """
    )

    def __init__(self, text: str):
        super().__init__()
        self._name = "Title"
        self.text = text


# The empty icon stops the browser asking for /favicon.ico (a 404 on every map).
STYLE = """<link rel="icon" href="data:,">
<style>
.wangge-legend, .wangge-title {background: rgba(255,255,255,0.92); padding: 6px 9px;
  border-radius: 4px; box-shadow: 0 1px 4px rgba(0,0,0,0.3);
  font: 12px/1.5 "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; max-width: 280px;}
.wangge-title {font-size: 15px; font-weight: bold;}
.wangge-legend i {display: inline-block; width: 14px; height: 14px; margin-right: 6px;
  vertical-align: -2px; border: 1px solid #777;}
.wangge-legend .note {color: #555; font-size: 11px;}
.leaflet-container {font-family: "Noto Sans CJK SC", "Microsoft YaHei", sans-serif;}
</style>"""


def add_chrome(fmap: folium.Map, title: str, legends: Sequence[Legend]) -> None:
    """Title, legends, layer control and the small stylesheet they need."""
    fmap.get_root().header.add_child(folium.Element(STYLE))
    fmap.get_root().title = title
    Title(title).add_to(fmap)
    for legend in legends:
        legend.add_to(fmap)
    folium.LayerControl(collapsed=False).add_to(fmap)


def total_bounds(*gdfs: gpd.GeoDataFrame | None) -> np.ndarray | None:
    boxes = [g.total_bounds for g in gdfs if g is not None and len(g)]
    if not boxes:
        return None
    b = np.vstack(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])
