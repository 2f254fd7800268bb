#!/bin/sh
# Re-fetch the JavaScript and CSS the maps load, with their licence files, into
# maps/static/. Versions are the ones folium 0.20 asks for, so its templates and the
# libraries agree. Sources: the npm registry (npm pack) and, for Leaflet.heat, the build
# folium itself ships (npm's leaflet.heat@0.2.0 predates fixes folium relies on; its
# licence file is taken from the npm package).
set -eu
LEAFLET=1.9.3
MARKERCLUSTER=1.1.0
HEAT=0.2.0

here=$(cd "$(dirname "$0")" && pwd)
static="$here/static"
python=${PYTHON:-"$here/../.venv/bin/python"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "leaflet@$LEAFLET" "leaflet.markercluster@$MARKERCLUSTER" \
    "leaflet.heat@$HEAT" >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}" && tar -xzf "$f" -C "${f%.tgz}"; done

rm -rf "$static/leaflet" "$static/markercluster" "$static/heat"
mkdir -p "$static/leaflet/images" "$static/markercluster" "$static/heat"

src="leaflet-$LEAFLET/package"
cp "$src/dist/leaflet.js" "$src/dist/leaflet.css" "$src/LICENSE" "$static/leaflet/"
cp "$src/dist/images/"*.png "$static/leaflet/images/"

src="leaflet.markercluster-$MARKERCLUSTER/package"
cp "$src/dist/leaflet.markercluster.js" "$src/dist/MarkerCluster.css" \
    "$src/dist/MarkerCluster.Default.css" "$src/MIT-LICENCE.txt" "$static/markercluster/"

src="leaflet.heat-$HEAT/package"
cp "$src/LICENSE" "$static/heat/"
folium_templates=$("$python" -c 'import folium, pathlib; print(pathlib.Path(folium.__file__).parent / "templates")')
cp "$folium_templates/leaflet_heat.min.js" "$static/heat/"

cat > "$static/VERSIONS" <<END
leaflet $LEAFLET (npm) BSD-2-Clause
leaflet.markercluster $MARKERCLUSTER (npm) MIT
leaflet.heat $HEAT licence (npm) BSD-2-Clause; leaflet_heat.min.js from folium $("$python" -c 'import folium; print(folium.__version__)') (PyPI)
END
echo "vendored into $static:"
find "$static" -type f | sort | sed "s|$static/|  |"
