"""The JavaScript and CSS the maps load, served by wangge itself instead of a CDN.

folium names each asset it needs in `default_js` / `default_css` with a CDN URL. Before a
map is rendered, `localise_assets` walks the map and rewrites every such URL to a file in
`maps/static/` (vendored by `maps/vendor.sh`), so no request leaves the machine; a URL it
does not know raises instead of slipping through. The jQuery, Bootstrap and Font Awesome
folium loads by default are dropped: wangge's maps draw no Bootstrap or Awesome icons.

Where the files come from:
- served maps use an absolute URL path, `/maps/static/...` (`STATIC_URL`);
- `write_map_file` copies the files next to the HTML file (`<name>_files/`) and points the
  page at them by a relative path, so the file opens offline from disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import folium

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/maps/static"

#: folium asset name -> file under maps/static (None: not loaded at all).
ASSETS: dict[str, str | None] = {
    "leaflet": "leaflet/leaflet.js",
    "leaflet_css": "leaflet/leaflet.css",
    "markerclusterjs": "markercluster/leaflet.markercluster.js",
    "markerclustercss": "markercluster/MarkerCluster.css",
    "markerclusterdefaultcss": "markercluster/MarkerCluster.Default.css",
    "leaflet-heat.js": "heat/leaflet_heat.min.js",
    "jquery": None,
    "bootstrap": None,
    "bootstrap_css": None,
    "glyphicons_css": None,
    "awesome_markers": None,
    "awesome_markers_css": None,
    "awesome_markers_font_css": None,
    "awesome_rotate_css": None,
}


class UnknownAsset(ValueError):
    """A folium element asks for a CDN asset wangge does not vendor."""


def _localise(pairs: list[tuple[str, str]], base_url: str) -> list[tuple[str, str]]:
    out = []
    for name, url in pairs:
        if name not in ASSETS:
            raise UnknownAsset(
                f"folium asset {name!r} ({url}) is not vendored in maps/static; "
                "add it to maps/vendor.sh and maps.assets.ASSETS"
            )
        path = ASSETS[name]
        if path is not None:
            out.append((name, f"{base_url.rstrip('/')}/{path}"))
    return out


def localise_assets(fmap: folium.Map, base_url: str = STATIC_URL) -> folium.Map:
    """Point every JS/CSS asset of the map and its children at wangge's own copies.

    Instance attributes shadow folium's class-level CDN lists, so other maps in the
    process are untouched.
    """
    stack = [fmap]
    while stack:
        element = stack.pop()
        for attr in ("default_js", "default_css"):
            pairs = getattr(element, attr, None)
            if pairs:
                setattr(element, attr, _localise(list(pairs), base_url))
        stack.extend(element._children.values())
    return fmap


def render_html(fmap: folium.Map, base_url: str = STATIC_URL) -> str:
    """The map as a standalone HTML page loading its assets from `base_url`."""
    return localise_assets(fmap, base_url).get_root().render()


def write_map_file(fmap: folium.Map, path: Path) -> Path:
    """Write the map to `path` with its assets copied into `<stem>_files/` beside it.

    Copying (rather than inlining) keeps Leaflet's CSS images working from disk.
    """
    path = Path(path)
    assets_dir = path.parent / f"{path.stem}_files"
    if assets_dir.exists():
        shutil.rmtree(assets_dir)
    shutil.copytree(STATIC_DIR, assets_dir, ignore=shutil.ignore_patterns("VERSIONS"))
    path.write_text(render_html(fmap, base_url=assets_dir.name), encoding="utf-8")
    return path
