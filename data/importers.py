"""Importers: read a layer from a file, check every feature, write it all or nothing.

Formats: GeoJSON (.geojson/.json), GeoPackage (.gpkg), zipped Shapefile (.zip
holding one .shp) and CSV with lon/lat columns (or a `wkt` column). Files are
read with pyogrio (CSV with pandas, so each bad cell can be named by row).

Coordinates are converted to EPSG:4326 on the way in. The system comes from the
caller (`crs`: wgs84, cgcs2000, gcj02, bd09 or EPSG:nnnn) or, failing that, from
the file's own declaration (GeoPackage, .prj, GeoJSON `crs` member); CSV and
GeoJSON without one are WGS84. GCJ-02 and BD-09 have no declaration of their
own, so `crs` may override a declared geographic system; it may not contradict a
declared projected one.

Every problem in a file is collected before anything is decided, so one refusal
(`ImportRejected`) lists all bad features, numbered from 1 in file order (CSV:
data rows). Repairable polygons (self-intersections, self-touching rings,
clockwise exteriors) are fixed and listed in the report instead.

Hostile files are refused before they cost much (`ImportLimits`): a zip whose
members would expand past `max_uncompressed_bytes` (or expand more than
`max_zip_ratio` times) or whose member names climb out of the archive
(`../`, absolute paths); more than `max_features` features; a feature with more
than `max_vertices` vertices. Text encodings: GeoJSON must be UTF-8 (RFC 7946);
a CSV is UTF-8 (with or without BOM) or else GB18030/GBK, as Excel on Chinese
Windows writes it, decoded strictly; UTF-16/32 and binary content are refused.
Numbers are bounded by the columns that store them, and text is stored as given
(it only ever reaches the database as a bound parameter).
"""

from __future__ import annotations

import codecs
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import shapely
from sqlalchemy.orm import Session, sessionmaker

from gis.crs import InputCRS, geometries_to_storage, parse_crs
from gis.db import repo
from gis.db.models import LEVELS, Area, Building, Case, Station
from gis.domain import CASE_SOURCES, LEVEL_NAMES, STATION_KINDS
from gis.errors import Conflict, CRSMismatch, ImportRejected, InvalidInput
from gis.hours import parse_opening_hours

LAYERS = ("areas", "buildings", "stations", "cases", "roads")  # roads: see data/roads.py

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
LON_NAMES = ("lon", "lng", "longitude", "x")
LAT_NAMES = ("lat", "latitude", "y")

# Columns each layer understands; the required ones must exist as columns.
FIELDS = {
    "areas": ("code", "name", "level", "parent_code"),
    "buildings": (
        "code",
        "name",
        "address",
        "households",
        "population",
        "floors",
        "grid_code",
        "community_code",
    ),
    "stations": (
        "code",
        "name",
        "kind",
        "address",
        "services",
        "opening_hours",
        "capacity",
        "phone",
    ),
    "cases": ("code", "category_code", "description", "source", "reported_at", "status"),
}
REQUIRED = {
    "areas": ("code", "name", "level"),
    "buildings": ("code", "households"),
    "stations": ("code", "name", "kind"),
    "cases": ("category_code",),
}
GEOMETRY_TYPES = {
    "areas": ("Polygon", "MultiPolygon"),
    "buildings": ("Polygon", "MultiPolygon", "Point"),
    "stations": ("Point",),
    "cases": ("Point",),
}
MODELS = {"areas": Area, "buildings": Building, "stations": Station, "cases": Case}

LEVEL_ALIASES = {**{lvl: lvl for lvl in LEVELS}, **{zh: en for en, zh in LEVEL_NAMES.items()}}
KIND_ALIASES = {**{k: k for k in STATION_KINDS}, **{zh: en for en, zh in STATION_KINDS.items()}}
# A grid code in the default scheme: 6 district + 3 street + 3 community + 3 sequence digits.
GRID_CODE_DIGITS = 15
# Below this a polygon is a sliver of rounding error (about 1 cm² at 40°N).
MIN_AREA_DEG2 = 1e-14
# How many feature problems the one-line message spells out; `problems` has them all.
MESSAGE_PROBLEMS = 10
# Largest value of the whole-number columns (PostgreSQL integer).
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class ImportLimits:
    """What one file may hold; past a limit the file is refused, naming the limit."""

    #: Features in one file (a city's buildings are tens of thousands).
    max_features: int = 1_000_000
    #: Vertices in one feature (a grid boundary has hundreds, a traced street a few
    #: thousand); more makes every spatial query on it slow.
    max_vertices: int = 100_000
    #: Bytes a zip's members may expand to, in total.
    max_uncompressed_bytes: int = 1024**3
    #: How many times a zip member may expand (real Shapefiles stay under ~20x).
    max_zip_ratio: float = 200.0


LIMITS = ImportLimits()


@dataclass
class ImportReport:
    """What an import wrote, what it repaired and what it would like you to know."""

    layer: str
    path: str
    features: int
    inserted: int
    updated: int
    repaired: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    generation: str | None = None
    activated: bool = False
    copied_levels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ problems


class _Problems:
    """Collects file-level (feature None) and per-feature problems for one file."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.items: list[dict[str, Any]] = []

    def add(self, feature: int | None, fld: str | None, problem: str) -> None:
        self.items.append({"feature": feature, "field": fld, "problem": problem})

    def features(self) -> set[int]:
        return {p["feature"] for p in self.items if p["feature"] is not None}

    def reject(self, *extra: str) -> ImportRejected:
        for problem in extra:
            self.add(None, None, problem)
        # File-level problems first, then features in file order (sort is stable).
        self.items.sort(key=lambda p: -1 if p["feature"] is None else p["feature"])
        parts = [p["problem"] for p in self.items if p["feature"] is None]
        per_feature = [p for p in self.items if p["feature"] is not None]
        if per_feature:
            bad = len(self.features())
            parts.append(f"{bad} bad feature{'s' if bad != 1 else ''}")
            listed = per_feature[:MESSAGE_PROBLEMS]
            parts += [f"feature {p['feature']}: {p['problem']}" for p in listed]
            if len(per_feature) > MESSAGE_PROBLEMS:
                parts.append(f"and {len(per_feature) - MESSAGE_PROBLEMS} more problems")
        return ImportRejected(
            f"{self.name}: " + "; ".join(parts), path=self.path, problems=self.items
        )

    def raise_if_any(self) -> None:
        if self.items:
            raise self.reject()


def _refuse(name: str, path: str, problem: str) -> ImportRejected:
    """A refusal of the whole file for one reason (unreadable, empty, no coordinates)."""
    problems = _Problems(name, path)
    problems.add(None, None, problem)
    return problems.reject()


# ------------------------------------------------------------------- reading


@dataclass
class _Raw:
    """A file as read: attributes, geometries (may be None) and the declared CRS."""

    frame: pd.DataFrame
    geoms: np.ndarray
    declared: pyproj.CRS | None
    fmt: str
    # Geometry problems found while reading (CSV cells), by feature number.
    geometry_problems: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _read(path: Path, layer: str, name: str, shown: str, limits: ImportLimits = LIMITS) -> _Raw:
    """Read any supported format; every failure becomes an ImportRejected naming the file."""
    if not path.exists():
        raise _refuse(name, shown, "no such file")
    if path.stat().st_size == 0:
        raise _refuse(name, shown, "the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, name, shown)
    if suffix in (".geojson", ".json"):
        _check_utf8_json(path, name, shown)
        return _read_ogr(str(path), None, "GeoJSON", name, shown)
    if suffix == ".gpkg":
        return _read_gpkg(path, layer, name, shown)
    if suffix == ".zip":
        return _read_zip(path, layer, name, shown, limits)
    if suffix == ".shp":
        return _read_ogr(str(path), None, "Shapefile", name, shown)
    raise _refuse(
        name,
        shown,
        f"unsupported file type {suffix or '(none)'}: use .geojson, .json, .gpkg, "
        ".zip (a zipped Shapefile) or .csv",
    )


def _read_ogr(source: str, ogr_layer: str | None, fmt: str, name: str, shown: str) -> _Raw:
    try:
        with warnings.catch_warnings():
            # pyogrio warns about mixed-type JSON columns; we check every value anyway.
            warnings.simplefilter("ignore")
            gdf = pyogrio.read_dataframe(
                source, layer=ogr_layer, force_2d=True, datetime_as_string=True
            )
    except Exception as exc:  # pyogrio raises several classes; all mean "cannot read"
        detail = str(exc).replace(source, name)
        raise _refuse(name, shown, f"cannot be read as {fmt}: {detail}") from exc
    geoms = np.asarray(gdf.geometry.values, dtype=object) if "geometry" in gdf else None
    frame = pd.DataFrame(gdf.drop(columns="geometry", errors="ignore"))
    if geoms is None:
        geoms = np.full(len(frame), None, dtype=object)
    return _Raw(frame, geoms, gdf.crs if isinstance(gdf, gpd.GeoDataFrame) else None, fmt)


def _read_gpkg(path: Path, layer: str, name: str, shown: str) -> _Raw:
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:
        raise _refuse(name, shown, f"cannot be read as GeoPackage: {exc}") from exc
    if not layers:
        raise _refuse(name, shown, "the GeoPackage has no layers")
    wanted = [n for n in layers if n.lower() in (layer, layer.removesuffix("s"))]
    chosen = wanted[0] if wanted else layers[0]
    raw = _read_ogr(str(path), chosen, "GeoPackage", name, shown)
    if len(layers) > 1:
        raw.warnings.append(f"read layer {chosen!r} of {len(layers)} in the GeoPackage")
    return raw


def _unsafe_member(member: str) -> bool:
    """A zip member name that would land outside the archive's folder if extracted."""
    parts = member.replace("\\", "/").split("/")
    return member.startswith(("/", "\\")) or ".." in parts or (len(member) > 1 and member[1] == ":")


def _check_zip(infos: list[zipfile.ZipInfo], name: str, shown: str, limits: ImportLimits) -> None:
    """Refuse a zip bomb or a zip with path-climbing names before GDAL opens it.

    The sizes are the archive's own declarations; GDAL reads no further than a
    member's declared size, so a lying header cannot make it expand more.
    """
    unsafe = [i.filename for i in infos if _unsafe_member(i.filename)]
    if unsafe:
        raise _refuse(
            name,
            shown,
            f"the zip has member names that point outside it ({', '.join(unsafe[:3])}); "
            "refusing the archive",
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_uncompressed_bytes:
        raise _refuse(
            name,
            shown,
            f"the zip expands to {total:,} bytes, over the limit of "
            f"{limits.max_uncompressed_bytes:,} (a zip bomb?)",
        )
    for info in infos:
        packed = max(info.compress_size, 1)
        if info.file_size > 1024 * 1024 and info.file_size / packed > limits.max_zip_ratio:
            raise _refuse(
                name,
                shown,
                f"zip member {info.filename} expands {info.file_size / packed:,.0f} times "
                f"(over {limits.max_zip_ratio:g}; a zip bomb?)",
            )


def _read_zip(path: Path, layer: str, name: str, shown: str, limits: ImportLimits) -> _Raw:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refuse(name, shown, "the file is not a zip archive") from exc
    _check_zip(infos, name, shown, limits)
    members = [i.filename for i in infos]
    shps = [
        m
        for m in members
        if m.lower().endswith(".shp")
        and not m.startswith("__MACOSX/")
        and not Path(m).name.startswith(".")
    ]
    if len(shps) > 1:
        # Several layers in one archive: take the one named like the wangge layer.
        named = [m for m in shps if Path(m).stem.lower() in (layer, layer.removesuffix("s"))]
        if len(named) != 1:
            raise _refuse(
                name,
                shown,
                f"the zip holds {len(shps)} Shapefiles ({', '.join(shps[:5])}); "
                "put one layer in each zip or name it after the layer",
            )
        shps = named
    if not shps:
        raise _refuse(name, shown, "the zip holds no .shp file (a zipped Shapefile is expected)")
    return _read_ogr(f"/vsizip/{path.resolve()}/{shps[0]}", None, "Shapefile", name, shown)


_UTF16_32_BOMS = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)
# Control characters that never occur in a text file (tab, CR, LF and form feed do).
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13))


def _looks_binary(sample: bytes) -> bool:
    return any(b in sample for b in _BINARY_BYTES)


def _looks_utf16(sample: bytes) -> bool:
    """UTF-16 without a BOM: ASCII text then has a NUL in every other byte."""
    half = len(sample) // 2
    return half > 0 and max(sample[0::2].count(0), sample[1::2].count(0)) > 0.4 * half


def _check_utf8_json(path: Path, name: str, shown: str) -> None:
    """GeoJSON is UTF-8 by definition (RFC 7946); anything else is refused up front
    rather than read into mojibake. Decoded in pieces: the file may be large."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        head = f.read(4)
        if head.startswith(_UTF16_32_BOMS) or _looks_utf16(f.read(4096)):
            raise _refuse(name, shown, "the file is UTF-16 or UTF-32 text; GeoJSON must be UTF-8")
        f.seek(0)
        offset = 0
        while chunk := f.read(1024 * 1024):
            if offset == 0 and _looks_binary(chunk[:4096]):
                raise _refuse(name, shown, "the file is binary, not GeoJSON text")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _refuse(
                    name,
                    shown,
                    f"the file is not UTF-8 (bad byte at offset {offset + exc.start}); "
                    "GeoJSON must be UTF-8: re-save it as UTF-8",
                ) from exc
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _refuse(name, shown, "the file ends inside a UTF-8 character") from exc


def _decode_csv(data: bytes, name: str, shown: str) -> tuple[str, str | None]:
    """The CSV's text and, when it was not UTF-8, a note of the encoding used.

    UTF-8 (BOM or not) first; then GB18030, the superset of GBK that Excel on
    Chinese Windows writes, decoded strictly so that text in some third encoding
    is refused rather than stored garbled. UTF-16/32 and binary data are refused.
    """
    if data.startswith(_UTF16_32_BOMS) or _looks_utf16(data[:4096]):
        raise _refuse(
            name, shown, "the file is UTF-16 or UTF-32 text; save the CSV as UTF-8 (CSV UTF-8)"
        )
    if _looks_binary(data[:65536]):
        raise _refuse(name, shown, "the file is binary, not CSV text")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise _refuse(
            name,
            shown,
            f"the file is neither UTF-8 nor GB18030/GBK text (bad byte at offset {exc.start}); "
            "save it as CSV UTF-8",
        ) from exc
    return text, "read as GB18030 (GBK): the file is not UTF-8"


def _read_csv(path: Path, name: str, shown: str) -> _Raw:
    text, encoding_note = _decode_csv(path.read_bytes(), name, shown)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,  # codes keep their leading zeros; numbers are checked per cell
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _refuse(name, shown, f"cannot be read as CSV: {exc}") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    geoms = np.full(len(frame), None, dtype=object)
    problems: dict[int, str] = {}
    if "wkt" in frame.columns:
        for i, text_value in enumerate(frame["wkt"]):
            if not isinstance(text_value, str) or not text_value.strip():
                continue  # reported later as "no geometry"
            try:
                geoms[i] = shapely.force_2d(shapely.from_wkt(text_value))
            except shapely.errors.GEOSException as exc:
                problems[i + 1] = f"wkt cannot be read: {exc}"
        frame = frame.drop(columns="wkt")
    else:
        lon = next((c for c in LON_NAMES if c in frame.columns), None)
        lat = next((c for c in LAT_NAMES if c in frame.columns), None)
        if lon is None or lat is None:
            raise _refuse(
                name,
                shown,
                "no coordinate columns: a CSV needs lon (lng, longitude, x) and lat "
                f"(latitude, y) or a wkt column; found {', '.join(frame.columns) or 'none'}",
            )
        for i, (x, y) in enumerate(zip(frame[lon], frame[lat], strict=True)):
            xs, ys = _text(x), _text(y)
            if xs is None or ys is None:
                problems[i + 1] = f"missing {lon if xs is None else lat}"
                continue
            if not _is_number(xs) or not _is_number(ys):
                bad, value = (lon, xs) if not _is_number(xs) else (lat, ys)
                problems[i + 1] = f"{bad} {value!r} is not a number"
                continue
            geoms[i] = shapely.Point(float(xs), float(ys))
        frame = frame.drop(columns=[lon, lat])
    raw = _Raw(frame, geoms, None, "CSV", problems)
    if encoding_note:
        raw.warnings.append(encoding_note)
    return raw


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------ values in cells

# note(field, problem): records a problem of the feature being checked.
Note = Callable[[str, str], None]


def _text(value: Any) -> str | None:
    """A cell as stripped text (None when empty); whole floats lose their '.0'."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    text = str(value).strip()
    return text or None


def _whole(value: Any, fld: str, note: Note) -> int | None:
    """A non-negative whole number, or None after noting why not."""
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        note(fld, f"{fld} {text!r} is not a whole number")
        return None
    if not number.is_integer():
        note(fld, f"{fld} {text!r} is not a whole number")
        return None
    if number < 0:
        note(fld, f"{fld} {int(number)} is negative")
        return None
    if number > INT_MAX:
        note(fld, f"{fld} {text} is too large (at most {INT_MAX})")
        return None
    return int(number)


def _services(value: Any) -> list[str]:
    """A list, a JSON list or a ';'-separated string of services as a clean list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    out: list[str] = []
    for item in items:
        text = _text(item) or ""
        out += [s.strip() for s in text.replace("；", ";").split(";") if s.strip()]
    return out


def _reported_at(value: Any) -> datetime:
    """An ISO 8601 time; one without a zone is Asia/Shanghai local time. Raises ValueError."""
    if isinstance(value, pd.Timestamp | datetime):
        dt = pd.Timestamp(value).to_pydatetime()
    else:
        dt = datetime.fromisoformat(str(value).strip())
    return dt.replace(tzinfo=LOCAL_TZ) if dt.tzinfo is None else dt


# ---------------------------------------------------------------- geometries


def _declared_is_wgs84(crs: pyproj.CRS) -> bool:
    return any(crs.equals(other, ignore_axis_order=True) for other in ("OGC:CRS84", 4326, 4490))


def _crs_label(crs: pyproj.CRS) -> str:
    epsg = crs.to_epsg()
    return f"{crs.name} (EPSG:{epsg})" if epsg else crs.name


def _source_crs(
    raw: _Raw, crs: str | None, name: str, shown: str
) -> tuple[InputCRS | pyproj.CRS, list[str]]:
    """The system the file's coordinates are in: the caller's, else the file's, else WGS84."""
    notes: list[str] = []
    declared = raw.declared
    if crs is None or crs == "":
        if declared is None or _declared_is_wgs84(declared):
            return InputCRS("wgs84"), notes
        return declared, notes
    given = parse_crs(crs)
    if declared is None:
        return given, notes
    given_crs = pyproj.CRS.from_epsg(given.epsg) if given.epsg else None
    if declared.is_projected or (given_crs is not None and given_crs.is_projected):
        if given_crs is None or not given_crs.equals(declared, ignore_axis_order=True):
            raise CRSMismatch(
                f"{name}: the file declares {_crs_label(declared)} but crs {given} was given; "
                "leave out crs to use the file's own system, or fix the file",
                path=shown,
                declared=_crs_label(declared),
                given=str(given),
            )
        return given, notes
    # Both geographic: GCJ-02 and BD-09 files can only claim WGS84, so the caller wins.
    if not _declared_is_wgs84(declared):
        notes.append(f"the file declares {_crs_label(declared)}; read it as {given} as asked")
    return given, notes


def _is_geographic(source: InputCRS | pyproj.CRS) -> bool:
    if isinstance(source, InputCRS):
        return source.epsg is None or pyproj.CRS.from_epsg(source.epsg).is_geographic
    return source.is_geographic


def _to_storage(geoms: np.ndarray, source: InputCRS | pyproj.CRS) -> np.ndarray:
    if isinstance(source, InputCRS):
        return geometries_to_storage(geoms, source)
    transformer = pyproj.Transformer.from_crs(source, 4326, always_xy=True)
    return shapely.transform(
        geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


def _lonlat_outliers(geoms: np.ndarray) -> np.ndarray:
    """Which geometries have a coordinate outside lon/lat range (or not finite)."""
    bounds = shapely.bounds(geoms)
    with np.errstate(invalid="ignore"):
        return (
            ~np.isfinite(bounds).all(axis=1)
            | (bounds[:, 0] < -180)
            | (bounds[:, 2] > 180)
            | (bounds[:, 1] < -90)
            | (bounds[:, 3] > 90)
        )


def _describe_invalid(reason: str) -> str:
    """GEOS's 'Self-intersection[123.4 41.8]' as 'self-intersection at (123.4, 41.8)'."""
    what, _, where = reason.partition("[")
    what = what.strip()
    what = what[:1].lower() + what[1:]
    coords = where.rstrip("]").split()
    if len(coords) >= 2:
        return f"{what} at ({float(coords[0]):.6f}, {float(coords[1]):.6f})"
    return what


def _polygonal_part(geom) -> shapely.Geometry | None:
    """The polygons in what make_valid returned (it may add lines and points)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys = [p for p in shapely.get_parts(shapely.get_parts(geom)) if p.geom_type == "Polygon"]
    polys = [p for p in polys if not p.is_empty]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _repair_polygon(geom, report_winding: bool) -> tuple[Any, str | None, str | None]:
    """(geometry, what was repaired or None, unrepairable problem or None)."""
    note = None
    if not shapely.is_valid(geom):
        reason = _describe_invalid(shapely.is_valid_reason(geom))
        fixed = _polygonal_part(shapely.make_valid(geom))
        if fixed is None:
            return None, None, f"invalid polygon ({reason}): make_valid leaves nothing polygonal"
        note = f"{reason} repaired with make_valid"
        geom = fixed
    if shapely.area(geom) < MIN_AREA_DEG2:
        return None, None, "polygon has no area (its points lie on a line)"
    oriented = shapely.orient_polygons(geom)
    # Winding is worth reporting only on its own: make_valid's output has no set winding.
    if (
        report_winding
        and note is None
        and not np.array_equal(shapely.get_coordinates(oriented), shapely.get_coordinates(geom))
    ):
        note = "ring orientation fixed (exterior counter-clockwise, holes clockwise)"
    return oriented, note, None


def _check_geometries(
    raw: _Raw,
    layer: str,
    source: InputCRS | pyproj.CRS,
    problems: _Problems,
    repaired: list[dict],
    warns: list[str],
) -> np.ndarray:
    """Type, range, conversion and repair; returns EPSG:4326 geometries (None where bad)."""
    allowed = GEOMETRY_TYPES[layer]
    geoms = raw.geoms.copy()
    usable = np.zeros(len(geoms), dtype=bool)
    for i, geom in enumerate(geoms):
        n = i + 1
        if n in raw.geometry_problems:
            problems.add(n, "geometry", raw.geometry_problems[n])
        elif geom is None:
            problems.add(n, "geometry", "has no geometry")
        elif geom.is_empty:
            problems.add(n, "geometry", f"geometry is an empty {geom.geom_type}")
        elif geom.geom_type not in allowed:
            need = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if allowed[:-1] else allowed)
            problems.add(n, "geometry", f"geometry is {geom.geom_type}, {layer} need {need}")
        else:
            usable[i] = True

    def flag_outliers(candidates: np.ndarray, when: str) -> int:
        idx = np.flatnonzero(candidates)
        bad = idx[_lonlat_outliers(geoms[idx])] if len(idx) else idx
        for i in bad:
            x, y = shapely.get_coordinates(geoms[i])[0]
            problems.add(
                int(i) + 1,
                "geometry",
                f"coordinates ({x:.10g}, {y:.10g}){when} are not longitude/latitude",
            )
        usable[bad] = False
        return len(bad)

    outliers = 0
    if _is_geographic(source):
        outliers += flag_outliers(usable, "")
    idx = np.flatnonzero(usable)
    if len(idx):
        geoms[idx] = _to_storage(geoms[idx], source)
        outliers += flag_outliers(usable, f" after conversion from {_source_label(source)}")
    if outliers:
        problems.add(
            None,
            "geometry",
            "coordinates are not longitude/latitude: the file looks projected (metres?); "
            "pass crs (--crs) naming its system, e.g. EPSG:4550 (CGCS2000 3-degree Gauss-Kruger "
            "CM 123E) or EPSG:32651 (UTM zone 51N)",
        )
    if len(idx) and not _is_geographic(source):
        _warn_outside_area_of_use(geoms[usable], source, warns)
    report_winding = raw.fmt != "Shapefile"  # Shapefile rings are clockwise by definition
    for i in np.flatnonzero(usable):
        if geoms[i].geom_type == "Point":
            continue
        fixed, note, problem = _repair_polygon(geoms[i], report_winding)
        if problem:
            problems.add(int(i) + 1, "geometry", problem)
            usable[i] = False
            continue
        geoms[i] = fixed
        if note:
            repaired.append({"feature": int(i) + 1, "problem": note})
    geoms[~usable] = None
    return geoms


def _warn_outside_area_of_use(
    geoms: np.ndarray, source: InputCRS | pyproj.CRS, warns: list[str]
) -> None:
    """A projected system read with the wrong --crs still gives valid lon/lat, only far
    away (degrees taken as metres land near the equator): say so when features fall
    outside where the system is defined."""
    crs = pyproj.CRS.from_epsg(source.epsg) if isinstance(source, InputCRS) else source
    area = crs.area_of_use
    if area is None:
        return
    # A degree of slack: zone edges overlap in practice.
    frame = shapely.box(area.west - 1, area.south - 1, area.east + 1, area.north + 1)
    outside = int((~shapely.intersects(geoms, frame)).sum())
    if outside:
        warns.append(
            f"{outside} feature(s) lie outside the area where {_source_label(source)} is used "
            f"({area.name}); check the crs"
        )


def _source_label(source: InputCRS | pyproj.CRS) -> str:
    return str(source) if isinstance(source, InputCRS) else _crs_label(source)


# ------------------------------------------------------------------ attributes


def _normalise_columns(frame: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Lower-case column names; undo Shapefile's 10-character truncation of ours."""
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    renames = {
        f[:10]: f for f in FIELDS[layer] if len(f) > 10 and f not in frame and f[:10] in frame
    }
    return frame.rename(columns=renames)


def _max_lengths(layer: str) -> dict[str, int]:
    table = MODELS[layer].__table__
    return {
        c.name: c.type.length
        for c in table.columns
        if c.name in FIELDS[layer] and getattr(c.type, "length", None)
    }


def _check_attributes(
    frame: pd.DataFrame, layer: str, stem: str, problems: _Problems, warns: list[str]
) -> pd.DataFrame:
    """Per-layer field checks; returns the clean columns the repository writes."""
    for col in REQUIRED[layer]:
        if col not in frame:
            problems.add(
                None,
                col,
                f"missing column {col} (needed: {', '.join(REQUIRED[layer])}; "
                f"found: {', '.join(map(str, frame.columns)) or 'none'})",
            )
    records = frame.to_dict("records")
    limits = _max_lengths(layer)
    check = {
        "areas": _check_area,
        "buildings": _check_building,
        "stations": _check_station,
        "cases": _check_case,
    }[layer]
    rows = []
    first_seen: dict[str, int] = {}
    for n, rec in enumerate(records, start=1):

        def note(fld: str, problem: str, n: int = n) -> None:
            problems.add(n, fld, problem)

        row = check(rec, n, stem, note, warns)
        for col, limit in limits.items():
            value = row.get(col)
            if isinstance(value, str) and len(value) > limit:
                note(col, f"{col} is longer than {limit} characters")
        code = row.get("code")
        if code is not None:
            if code in first_seen:
                note("code", f"duplicate code {code} (also feature {first_seen[code]})")
            else:
                first_seen[code] = n
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(FIELDS[layer]), dtype=object)
    out.index = pd.RangeIndex(1, len(rows) + 1, name="feature")
    return out


def _required_text(rec: dict, fld: str, note: Note) -> str | None:
    value = _text(rec.get(fld))
    if value is None and fld in rec:
        note(fld, f"missing {fld}")
    return value


def _check_area(rec: dict, n: int, stem: str, note: Note, warns: list[str]) -> dict:
    code = _required_text(rec, "code", note)
    name = _required_text(rec, "name", note)
    level_text = _required_text(rec, "level", note)
    level = None
    if level_text is not None:
        level = LEVEL_ALIASES.get(level_text.lower(), LEVEL_ALIASES.get(level_text))
        if level is None:
            note(
                "level",
                f"level {level_text!r} is not one of {', '.join(LEVELS)} "
                f"({', '.join(LEVEL_NAMES.values())})",
            )
    parent = _text(rec.get("parent_code"))
    if level is not None and level != "district" and parent is None:
        note("parent_code", f"missing parent_code (a {level} needs one)")
    if level == "grid" and code and parent:
        if not (len(code) == GRID_CODE_DIGITS and code.isdigit() and code.startswith(parent)):
            warns.append(
                f"feature {n}: grid code {code} does not follow the {GRID_CODE_DIGITS}-digit "
                f"scheme (parent code {parent} + sequence)"
            )
    return {"code": code, "name": name, "level": level, "parent_code": parent}


def _check_building(rec: dict, n: int, stem: str, note: Note, warns: list[str]) -> dict:
    row = {f: _text(rec.get(f)) for f in ("code", "name", "address", "grid_code", "community_code")}
    if row["code"] is None and "code" in rec:
        note("code", "missing code")
    if "households" in rec:
        row["households"] = _whole(rec.get("households"), "households", note)
        if _text(rec.get("households")) is None:
            note("households", "missing households")
    for fld in ("population", "floors"):
        row[fld] = _whole(rec.get(fld), fld, note)
    return row


def _check_station(rec: dict, n: int, stem: str, note: Note, warns: list[str]) -> dict:
    row = {
        "code": _required_text(rec, "code", note),
        "name": _required_text(rec, "name", note),
        "address": _text(rec.get("address")),
        "phone": _text(rec.get("phone")),
        "capacity": _whole(rec.get("capacity"), "capacity", note),
        "services": _services(rec.get("services")),
        "kind": None,
        "opening_hours": None,
    }
    kind = _required_text(rec, "kind", note)
    if kind is not None:
        row["kind"] = KIND_ALIASES.get(kind, KIND_ALIASES.get(kind.lower()))
        if row["kind"] is None:
            note(
                "kind",
                f"kind {kind!r} is not a station kind (one of {', '.join(STATION_KINDS)} "
                f"or {', '.join(STATION_KINDS.values())})",
            )
    hours = _text(rec.get("opening_hours"))
    if hours is not None:
        try:
            parse_opening_hours(hours)
            row["opening_hours"] = hours
        except InvalidInput as exc:
            note("opening_hours", exc.message)
    return row


def _check_case(rec: dict, n: int, stem: str, note: Note, warns: list[str]) -> dict:
    code = _text(rec.get("code")) or f"IMP-{stem[:24]}-{n}"
    source = (_text(rec.get("source")) or "hotline").lower()
    if source not in CASE_SOURCES:
        note("source", f"source {source!r} is not one of {', '.join(CASE_SOURCES)}")
    reported_text = rec.get("reported_at")
    reported = datetime.now(UTC)
    if _text(reported_text) is not None:
        try:
            reported = _reported_at(reported_text)
        except ValueError:
            note("reported_at", f"reported_at {_text(reported_text)!r} is not an ISO 8601 time")
    return {
        "code": code,
        "category_code": _required_text(rec, "category_code", note),
        "description": _text(rec.get("description")),
        "source": source,
        "reported_at": reported,
        "status": (_text(rec.get("status")) or "reported").lower(),
    }


# ---------------------------------------------------------------- entry points


@dataclass
class _Checked:
    frame: gpd.GeoDataFrame
    repaired: list[dict]
    warnings: list[str]
    problems: _Problems


def _check_sizes(raw: _Raw, limits: ImportLimits, name: str, shown: str) -> None:
    """Too many features refuses the file; a feature with too many vertices is a
    problem of that feature (and is not checked further: repairing it would take long)."""
    if len(raw.frame) > limits.max_features:
        raise _refuse(
            name,
            shown,
            f"the file has {len(raw.frame):,} features, over the limit of "
            f"{limits.max_features:,}: split it",
        )
    present = np.array([g is not None for g in raw.geoms], dtype=bool)
    counts = np.zeros(len(raw.geoms), dtype=np.int64)
    if present.any():
        counts[present] = shapely.get_num_coordinates(raw.geoms[present])
    for i in np.flatnonzero(counts > limits.max_vertices):
        raw.geometry_problems[int(i) + 1] = (
            f"geometry has {counts[i]:,} vertices, over the limit of {limits.max_vertices:,} "
            "per feature: simplify it"
        )
        raw.geoms[i] = None


def _load(
    path: Path,
    layer: str,
    crs: str | None,
    source_name: str | None,
    limits: ImportLimits = LIMITS,
) -> _Checked:
    """Read and check a file; problems are collected, not raised (the stores add theirs)."""
    if layer not in LAYERS:
        raise InvalidInput(
            f"unknown layer {layer!r}; use one of {', '.join(LAYERS)}", field="layer"
        )
    path = Path(path)
    name = source_name or path.name
    shown = source_name or str(path)
    raw = _read(path, layer, name, shown, limits)
    if len(raw.frame) == 0:
        raise _refuse(name, shown, f"the file has no features (expected {layer})")
    _check_sizes(raw, limits, name, shown)
    source, notes = _source_crs(raw, crs, name, shown)
    problems = _Problems(name, shown)
    repaired: list[dict] = []
    warns = raw.warnings + notes
    geoms = _check_geometries(raw, layer, source, problems, repaired, warns)
    frame = _normalise_columns(raw.frame, layer)
    stem = Path(name).stem
    attrs = _check_attributes(frame, layer, stem, problems, warns)
    gdf = gpd.GeoDataFrame(attrs, geometry=gpd.GeoSeries(geoms, index=attrs.index), crs=4326)
    return _Checked(gdf, repaired, warns, problems)


def read_layer(
    path: Path,
    layer: str,
    crs: str | None = None,
    *,
    source_name: str | None = None,
    limits: ImportLimits = LIMITS,
) -> tuple[gpd.GeoDataFrame, list[dict]]:
    """Read + validate + convert to EPSG:4326; returns (frame, repaired). Raises ImportRejected.

    The frame's index is the feature number (1-based, file order). Checks that
    need a store (parent codes, categories) are left to `import_file`.
    """
    if layer == "roads":  # street lines (and .osm.pbf) are read by data/roads.py
        from data.roads import read_roads

        return read_roads(path, crs, source_name=source_name)[0], []
    checked = _load(path, layer, crs, source_name, limits)
    checked.problems.raise_if_any()
    return checked.frame, checked.repaired


def import_file(
    sessions: sessionmaker,
    layer: str,
    path: Path,
    *,
    crs: str | None = None,
    generation: str | None = None,
    activate: bool | None = None,
    source_name: str | None = None,
    limits: ImportLimits = LIMITS,
) -> ImportReport:
    """Read, validate and write a layer in one transaction: all features or none.

    Areas go into a boundary generation (see `_write_areas`); buildings and
    stations are upserted by code; cases are routed into the active generation.
    """
    path = Path(path)
    if layer == "roads":  # a walking network replaces the stored one (data/roads.py)
        from data.roads import import_roads

        return import_roads(sessions, path, crs=crs, source_name=source_name)
    checked = _load(path, layer, crs, source_name, limits)
    report = ImportReport(
        layer=layer,
        path=source_name or str(path),
        features=len(checked.frame),
        inserted=0,
        updated=0,
        repaired=checked.repaired,
        warnings=checked.warnings,
    )
    stem = Path(source_name or path.name).stem
    with sessions() as session, session.begin():
        if layer == "areas":
            _write_areas(session, checked, report, generation, activate, stem)
        elif layer == "buildings":
            checked.problems.raise_if_any()
            if repo.active_generation(session) is None:
                report.warnings.append(
                    "no active boundary generation: buildings were stored without grid codes"
                )
            counts = repo.write_buildings(session, checked.frame)
            report.inserted, report.updated = counts["inserted"], counts["updated"]
        elif layer == "stations":
            checked.problems.raise_if_any()
            counts = repo.write_stations(session, checked.frame)
            report.inserted, report.updated = counts["inserted"], counts["updated"]
        else:
            _write_cases(session, checked, report)
    return report


def _unique_generation_name(session: Session, stem: str) -> str:
    base = f"{stem[:70]}-{datetime.now(LOCAL_TZ):%Y%m%d-%H%M%S}"
    taken = {g.name for g in repo.list_generations(session)}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    return name


def _levels_to_copy(file_levels: Iterable[str]) -> list[str]:
    """Levels above the file's lowest one that the file does not carry itself."""
    present = set(file_levels)
    lowest = max((LEVELS.index(lvl) for lvl in present), default=0)
    return [lvl for lvl in LEVELS[:lowest] if lvl not in present]


def _write_areas(
    session: Session,
    checked: _Checked,
    report: ImportReport,
    generation: str | None,
    activate: bool | None,
    stem: str,
) -> None:
    """Areas into a generation.

    No name: the first import creates and activates a generation; later ones
    stage a new generation, copying the upper levels the file lacks from the
    active one. A name: an existing staged generation gets the areas added, an
    active (or retired) one is refused, a new name is created staged.
    """
    frame = checked.frame
    active = repo.active_generation(session)
    existing = None
    if generation:
        existing = next((g for g in repo.list_generations(session) if g.name == generation), None)
        if existing is not None and existing.status != "staged":
            which = "the active one" if existing.status == "active" else "a retired one"
            raise Conflict(
                f"generation {generation!r} is {existing.status}: stage a new generation "
                f"instead of editing {which}",
                generation=generation,
            )
    default_activate = active is None and not generation
    if existing is not None:
        target, copy_from = existing, None
    else:
        name = generation or _unique_generation_name(session, stem)
        target = repo.create_generation(session, name, note=f"imported from {report.path}")
        copy_from = active
    if copy_from is not None:
        levels = _levels_to_copy(lvl for lvl in frame["level"] if lvl)
        if levels:
            repo.copy_areas(session, copy_from, target, levels)
            report.copied_levels = levels
            report.warnings.append(
                f"copied {', '.join(levels)} from the active generation {copy_from.name!r}"
            )
    stored = repo.area_codes(session, target.id)
    _check_parents(frame, stored, target.name, checked.problems)
    checked.problems.raise_if_any()

    written = repo.write_areas(session, frame, target)
    report.inserted = written
    report.generation = target.name
    if copy_from is not None and "grid" in set(frame["level"]):
        _warn_uncopied_grids(session, copy_from, frame, report)
    wanted = default_activate if activate is None else activate
    if wanted:
        has_grids = "grid" in repo.area_codes(session, target.id).values()
        if not has_grids and activate is None:
            report.warnings.append(
                f"generation {target.name!r} has no grids yet, so it stays staged: import its "
                f"grids with generation {target.name!r} and activate it"
            )
        else:
            repo.activate_generation(session, target)  # refuses a generation without grids
            report.activated = True


def _check_parents(
    frame: gpd.GeoDataFrame, stored: dict[str, str], generation: str, problems: _Problems
) -> None:
    """Each parent must exist one level up, in the file or the target generation."""
    in_file = {c: lvl for c, lvl in zip(frame["code"], frame["level"], strict=True) if c}
    for n, code, level, parent in zip(
        frame.index, frame["code"], frame["level"], frame["parent_code"], strict=True
    ):
        if code and code in stored:
            problems.add(n, "code", f"code {code} already exists in generation {generation!r}")
        if not level or level == "district" or not parent:
            continue
        want = repo.PARENT_LEVEL[level]
        found = in_file.get(parent, stored.get(parent))
        if found is None:
            problems.add(n, "parent_code", f"unknown parent code {parent}")
        elif found != want:
            problems.add(
                n, "parent_code", f"parent {parent} is a {found}; a {level} needs a {want}"
            )


def _warn_uncopied_grids(session, active, frame, report: ImportReport) -> None:
    """Grids of the active generation outside the file's communities are not carried over."""
    grids, _total = repo.areas_gdf(session, active.id, level="grid")
    communities = set(frame.loc[frame["level"] == "grid", "parent_code"])
    left = int((~grids["parent_code"].isin(communities)).sum()) if len(grids) else 0
    if left:
        report.warnings.append(
            f"{left} grid(s) of the active generation lie in communities this file does not "
            f"redraw and are not in generation {report.generation!r}"
        )


def _write_cases(session: Session, checked: _Checked, report: ImportReport) -> None:
    problems = checked.problems
    if repo.active_generation(session) is None:
        raise problems.reject(
            "no active boundary generation to route cases into: import areas first "
            "(wangge import areas FILE)"
        )
    repo.seed_categories(session)
    cats = {c.code: c for c in repo.categories(session)}
    frame = checked.frame
    for n, code in zip(frame.index, frame["category_code"], strict=True):
        if code is None:
            continue
        cat = cats.get(code)
        if cat is None:
            problems.add(n, "category_code", f"unknown category {code}")
        elif cat.level != "subclass":
            subs = sorted(c for c, s in cats.items() if s.parent_code == code)
            problems.add(
                n,
                "category_code",
                f"category {code} is a class; use one of its subclasses ({', '.join(subs[:5])})",
            )
    problems.raise_if_any()
    try:
        counts = repo.write_cases(session, frame)
    except Conflict as exc:
        # Codes already stored (a file imported twice): name the features.
        clash = set(exc.detail.get("codes", []))
        for n, code in zip(frame.index, frame["code"], strict=True):
            if code in clash:
                problems.add(n, "code", f"case code {code} is already stored")
        raise problems.reject(exc.message) from exc
    report.inserted = counts["inserted"]
    if counts.get("unrouted"):
        report.warnings.append(
            f"{counts['unrouted']} case(s) lie outside every grid and were stored unrouted"
        )
