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
from folium.elements import JSCSSMixin
from folium.plugins import HeatMap, MarkerCluster
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

    `title` and `entries` [(label, colour), ...] stay readable on the object for tests; an
    entry (label, colour, key) also shows the count a fetched layer reports under `key`.
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
            f'<div><i style="background:{entry[1]};border-radius:{radius}"></i>'
            f"{html.escape(entry[0])}{_count_span(entry)}</div>"
            for entry in self.entries
        )
        extra = "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes)
        self.inner_html = f"<b>{html.escape(title)}</b>{rows}{extra}"


def _count_span(entry: Sequence[str]) -> str:
    """A legend entry (text, colour, count_key) gets a span the page fills with a count."""
    if len(entry) < 3:
        return ""
    return f': <span data-count-for="{html.escape(entry[2])}">…</span>'


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


# ------------------------------------------------- layers fetched by the page

# One small loader shared by every fetched layer. `wanggePending` counts fetches still
# under way (the browser tests wait for it to reach 0); a failed fetch is reported on
# the console and in the page, never silently dropped.
LOADER_JS = """<script>
window.wanggePending = 0;
function wanggeLoad(url, onData) {
  window.wanggePending += 1;
  return fetch(url, {credentials: 'same-origin', headers: {Accept: 'application/geo+json'}})
    .then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.json();
    })
    .then(onData)
    .catch(function (e) {
      console.error('wangge: could not load ' + url + ': ' + e.message);
      var box = document.createElement('div');
      box.className = 'wangge-load-error';
      box.textContent = url + ': ' + e.message;
      document.body.appendChild(box);
    })
    .finally(function () { window.wanggePending -= 1; });
}
function wanggeTooltip(props, fields, aliases) {
  var rows = [];
  fields.forEach(function (k, i) {
    if (props[k] !== null && props[k] !== undefined) {
      rows.push('<b>' + aliases[i] + '</b>: ' + props[k]);
    }
  });
  return rows.join('<br>');
}
function wanggeCount(key, n) {
  document.querySelectorAll('[data-count-for="' + key + '"]').forEach(function (el) {
    el.textContent = String(n);
  });
}
</script>
<style>.wangge-load-error {position: absolute; bottom: 4px; left: 4px; z-index: 1000;
  background: #fee; color: #900; padding: 4px 8px; font: 12px sans-serif;}</style>"""


def add_loader(element) -> None:
    """Put the fetch helper in the page head once (keyed, so adding twice is harmless)."""
    element.get_root().header.add_child(folium.Element(LOADER_JS), name="wangge_loader")


class RemoteGeoJson(folium.map.Layer):
    """A GeoJSON layer the page fetches from `url` (same origin) instead of inlining it.

    Polygons get `style`; points become circle markers with `marker` options; the
    tooltip lists `fields` under `aliases` (values arrive HTML-escaped from the server).
    `lazy=True` fetches only when the layer is first switched on in the layer control,
    for layers most viewers never open. `count_key` names legend spans that show the
    number of features once they have arrived.
    """

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.featureGroup();
        (function (group) {
            var loaded = false;
            function load() {
                if (loaded) { return; }
                loaded = true;
                wanggeLoad({{ this.url|tojson }}, function (data) {
                    var fields = {{ this.fields|tojson }}, aliases = {{ this.aliases|tojson }};
                    L.geoJSON(data, {
                        style: function () { return {{ this.style|tojson }}; },
                        pointToLayer: function (f, latlng) {
                            return L.circleMarker(latlng, {{ this.marker|tojson }});
                        },
                        onEachFeature: function (f, layer) {
                            var text = wanggeTooltip(f.properties || {}, fields, aliases);
                            if (text) { layer.bindTooltip(text, {sticky: true}); }
                        }
                    }).addTo(group);
                    {% if this.count_key %}
                    wanggeCount({{ this.count_key|tojson }}, (data.features || []).length);
                    {% endif %}
                });
            }
            {% if this.lazy %}group.on('add', load);{% else %}load();{% endif %}
        })({{ this.get_name() }});
        {% endmacro %}
        """
    )

    def __init__(
        self,
        url: str,
        name: str,
        *,
        style: dict | None = None,
        marker: dict | None = None,
        fields: Sequence[str] = (),
        aliases: Sequence[str] = (),
        show: bool = True,
        lazy: bool = False,
        count_key: str | None = None,
    ):
        super().__init__(name=name, overlay=True, control=True, show=show)
        self._name = "RemoteGeoJson"
        self.url, self.lazy, self.count_key = url, lazy, count_key
        self.style = style or {}
        self.marker = marker or {"radius": 4}
        self.fields = list(fields)
        self.aliases = [html.escape(a) for a in (aliases or fields)]

    def render(self, **kwargs):
        add_loader(self)  # as folium adds a plugin's scripts: in the head, while rendering
        super().render(**kwargs)


class EmptyCluster(JSCSSMixin, folium.map.Layer):
    """A marker cluster layer that starts empty; `RemoteCases` fills it."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.markerClusterGroup({chunkedLoading: true});
        {% endmacro %}
        """
    )
    default_js = MarkerCluster.default_js
    default_css = MarkerCluster.default_css

    def __init__(self, name: str, key: str):
        super().__init__(name=name, overlay=True, control=True, show=True)
        self._name = "EmptyCluster"
        self.key = key


class EmptyHeat(JSCSSMixin, folium.map.Layer):
    """A heat layer that starts empty; `RemoteCases` fills it."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        var {{ this.get_name() }} = L.heatLayer([], {{ this.options|tojson }});
        {% endmacro %}
        """
    )
    default_js = HeatMap.default_js

    def __init__(self, name: str, **options):
        super().__init__(name=name, overlay=True, control=True, show=True)
        self._name = "EmptyHeat"
        self.options = options


class RemoteCases(MacroElement):
    """Fetches case points (GeoJSON with `class`, `colour`, `tooltip`) into a heat layer
    and one cluster layer per category class, so a large case map stays a small page."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        wanggeLoad({{ this.url|tojson }}, function (data) {
            var clusters = {
                {% for c in this.clusters %}{{ c.key|tojson }}: {{ c.get_name() }},{% endfor %}
            };
            var heat = [], byClass = {};
            (data.features || []).forEach(function (f) {
                var c = f.geometry.coordinates, p = f.properties;
                heat.push([c[1], c[0]]);
                var m = L.circleMarker([c[1], c[0]], {radius: 6, color: '#ffffff', weight: 1,
                    fillColor: p.colour, fillOpacity: 0.95});
                m.bindTooltip(p.tooltip);
                (byClass[p['class']] = byClass[p['class']] || []).push(m);
            });
            Object.keys(byClass).forEach(function (k) {
                if (clusters[k]) { clusters[k].addLayers(byClass[k]); }
            });
            {{ this.heat.get_name() }}.setLatLngs(heat);
            wanggeCount('cases', heat.length);
        });
        {% endmacro %}
        """
    )

    def __init__(self, url: str, heat: EmptyHeat, clusters: Sequence[EmptyCluster]):
        super().__init__()
        self._name = "RemoteCases"
        self.url, self.heat, self.clusters = url, heat, list(clusters)

    def render(self, **kwargs):
        add_loader(self)
        super().render(**kwargs)


class PlainPopup(MacroElement):
    """A popup of ready-made (escaped) HTML. folium's Popup builds its content with
    jQuery, which wangge does not load."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.bindPopup({{ this.html|tojson }});
        {% endmacro %}
        """
    )

    def __init__(self, html_text: str):
        super().__init__()
        self._name = "PlainPopup"
        self.html = html_text
