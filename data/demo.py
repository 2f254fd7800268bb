"""Seeded synthetic demo district: areas, buildings, stations, workers, cases and roads.

The district is built on a jittered lattice of city blocks in a local metric CRS, so that
every boundary (district, street, community, grid) runs along lattice edges through shared
lattice nodes. Neighbouring polygons therefore share their vertices bit for bit and the
grids tile their community exactly, which is what the topology checks downstream expect.
Everything is drawn from one ``numpy.random.Generator`` seeded by the caller; no I/O other
than reading the category tree next to this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from gis.domain import STATION_KINDS

DISTRICT_CODE = "210199"
DISTRICT_NAME = "示范区"
CITY_NAME = "沈阳市"
CENTER_LON = 123.43
CENTER_LAT = 41.80
# A transverse Mercator centred on the district keeps scale error below 1e-5 over 20 km,
# so lattice sizes in metres are true metres.
LOCAL_CRS = (
    f"+proj=tmerc +lat_0={CENTER_LAT} +lon_0={CENTER_LON} +k=1 +x_0=0 +y_0=0 "
    "+ellps=WGS84 +units=m +no_defs"
)
LEVELS = ("district", "street", "community", "grid")
HOUSEHOLD_BAND = (300, 500)
HOUSEHOLDS_PER_GRID = 400
CASE_SOURCES = ("resident", "worker", "hotline")
WORKER_ROLES = ("grid_worker", "community_staff", "street_staff")
# The case year is 2025-11-01 00:00 to 2026-11-01 00:00 local time (China has no DST).
CASE_PERIOD_START = pd.Timestamp("2025-11-01 00:00", tz="Asia/Shanghai")
CASE_PERIOD_END = pd.Timestamp("2026-11-01 00:00", tz="Asia/Shanghai")
HEATING_MONTHS = (11, 12, 1, 2, 3)  # Shenyang's heating season runs 1 November to 31 March


@dataclass(frozen=True)
class DistrictSize:
    """Preset dimensions of a demo district: lattice cells, area counts and case volume."""

    rows: int
    cols: int
    n_streets: int
    n_communities: int
    n_cases: int
    n_hotspots: int
    corner_cut: float  # largest share of a side a corner staircase may remove


SIZES: dict[str, DistrictSize] = {
    "tiny": DistrictSize(
        rows=6, cols=6, n_streets=1, n_communities=2, n_cases=400, n_hotspots=2, corner_cut=0.2
    ),
    "small": DistrictSize(
        rows=14, cols=15, n_streets=3, n_communities=8, n_cases=4000, n_hotspots=6, corner_cut=0.25
    ),
    "city": DistrictSize(
        rows=101,
        cols=103,
        n_streets=12,
        n_communities=250,
        n_cases=300_000,
        n_hotspots=90,
        corner_cut=0.25,
    ),
}


@dataclass
class DemoDistrict:
    """The generated layers, each in EPSG:4326 (``workers`` is a plain table)."""

    areas: gpd.GeoDataFrame
    buildings: gpd.GeoDataFrame
    stations: gpd.GeoDataFrame
    workers: pd.DataFrame
    cases: gpd.GeoDataFrame
    roads: gpd.GeoDataFrame


# ---------------------------------------------------------------------------------------------
# word lists
# ---------------------------------------------------------------------------------------------
# Auspicious characters common in Shenyang street and road names; two distinct characters
# make a name stem ("长青街道", "兴华路").
_NAME_CHARS = list(
    "长青兴华和平安宁泰文光明建新胜利民丰富昌盛德福顺康永嘉乐云春惠景瑞祥秀翠"
    "北辰东陵南湖西塔松江龙山"
)
_COMMUNITY_SUFFIXES = list("园苑里湾庭城居府峰林泉桥台")
_SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于"
    "蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹"
    "薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴孔汤"
)
_GIVEN_CHARS = list(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂红玉华建国志海鑫宇欣婷晨浩博佳颖雪"
    "梅琳鹏飞辉丹萍慧斌宁凯亮健波春雷晶燕玲峰成文东林丰淑秀兰凤英"
)
_MOBILE_PREFIXES = [
    "130",
    "131",
    "132",
    "133",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "152",
    "153",
    "155",
    "156",
    "157",
    "158",
    "159",
    "180",
    "181",
    "182",
    "183",
    "185",
    "186",
    "187",
    "188",
    "189",
]
_CN_ORDINALS = "一二三四五六七八九十"

# ---------------------------------------------------------------------------------------------
# city blocks: cell types, building kinds
# ---------------------------------------------------------------------------------------------
# Cell types: 0 old walk-up compound, 1 bungalow quarter (平房区), 2 high-rise estate,
# 3 mixed commercial block. Each cell is cut into a rows x cols array of building slots.
_SLOT_ROWS = np.array([[4, 6], [5, 7], [2, 2], [3, 4]])
_SLOT_COLS = np.array([[2, 3], [5, 7], [2, 3], [3, 5]])
_SLOT_FILL_P = np.array([0.92, 0.75, 0.95, 0.8])
# Building kinds: walkup, small_res, ancillary, bungalow, tower, mixed_use, commercial.
_KIND_P = np.array(
    [
        [0.55, 0.15, 0.30, 0.00, 0.00, 0.00, 0.00],
        [0.00, 0.05, 0.10, 0.85, 0.00, 0.00, 0.00],
        [0.00, 0.00, 0.20, 0.00, 0.65, 0.00, 0.15],
        [0.00, 0.00, 0.10, 0.00, 0.00, 0.35, 0.55],
    ]
)
_MAIN_RESIDENTIAL_KIND = np.array([0, 3, 4, 5])  # forced into a cell that drew no housing
_FLOORS = np.array([[5, 7], [2, 3], [1, 2], [1, 2], [11, 30], [4, 7], [1, 4]])
_LENGTH_M = np.array([[0, 0], [10, 16], [6, 18], [8, 14], [22, 34], [20, 40], [15, 50]])
_DEPTH_M = np.array([[10.5, 13], [8, 12], [5, 9], [6, 10], [16, 24], [12, 18], [12, 35]])
_KIND_NAME_SUFFIX = np.array(["号楼", "号楼", "号配套房", "号院", "号楼", "号楼", "号商业楼"])
_SETBACK_M = 8.0  # from the road centre line to the inner edge of a block
_SLOT_MARGIN_M = 2.5  # clear space between a footprint and its slot edge
_STATION_INSET_M = 1.5  # stations sit in the block corner, inside the slot margin

# ---------------------------------------------------------------------------------------------
# stations
# ---------------------------------------------------------------------------------------------
_STATION_SERVICES = {
    "neighbourhood": ["饮水", "充电", "休息", "微波炉", "图书", "雨具", "应急药箱", "打气筒"],
    "new_employment": ["饮水", "充电", "休息", "微波炉", "卫生间", "手机加油站", "应急药箱"],
    "convenience": ["饮水", "雨具", "打气筒", "维修工具", "老花镜", "应急药箱", "快递代收"],
    "shared": ["共享图书", "共享工具", "会议室", "自习室", "无线网络", "饮水"],
    "party_service": ["政务代办", "党员活动", "法律咨询", "就业咨询", "老年食堂", "图书", "休息"],
    "mediation": ["矛盾调解", "法律咨询", "议事协商", "心理疏导"],
    "health": ["血压测量", "血糖检测", "健康咨询", "家庭医生签约", "应急药箱"],
}
_STATION_HOURS = {
    "neighbourhood": [
        "Mo-Fr 08:30-17:30; Sa 09:00-12:00",
        "Mo-Su 08:00-20:00",
        "Mo-Sa 08:30-18:00",
    ],
    "new_employment": [
        "Mo-Su 18:00-02:00",
        "24/7",
        "Mo-Su 07:00-23:00",
        "Mo-Fr 10:00-22:00; Sa-Su 09:00-23:30",
    ],
    "convenience": ["Mo-Su 07:00-21:00", "Mo-Su 06:30-20:30", "24/7"],
    "shared": ["Mo-Fr 09:00-21:00; Sa-Su 09:00-18:00", "Mo-Su 08:00-22:00"],
    "party_service": [
        "Mo-Fr 08:30-17:30",
        "Mo-Fr 08:30-17:30; Sa 09:00-12:00",
        "Mo-Fr 08:00-17:00; Sa-Su 09:00-11:30",
    ],
    "mediation": [
        "Mo-Fr 09:00-17:00",
        "Tu 14:00-17:00; Th 14:00-17:00",
        "Mo-We 09:00-16:00; Fr 09:00-12:00",
    ],
    "health": ["Mo-Fr 08:00-16:30; Sa 08:00-11:30", "Mo-Sa 07:30-11:00", "Mo-Fr 08:00-17:00"],
}
_STATION_CAPACITY = {
    "neighbourhood": (10, 40),
    "new_employment": (8, 30),
    "convenience": (5, 20),
    "shared": (10, 60),
    "party_service": (50, 200),
    "mediation": (10, 30),
    "health": (5, 20),
}

# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
_SOURCE_P = np.array([0.38, 0.42, 0.20])  # resident, worker, hotline
# Relative weight of each weekday (Mo..Su) and each local hour, per source: workers patrol
# office hours on weekdays; residents report more in the evening and at weekends.
_WEEKDAY_W = np.array(
    [
        [0.95, 0.95, 0.95, 0.95, 1.00, 1.20, 1.20],
        [1.00, 1.00, 1.00, 1.00, 1.00, 0.35, 0.30],
        [1.00, 1.00, 1.00, 1.00, 1.00, 0.85, 0.85],
    ]
)
_HOUR_W = np.array(
    [
        [
            0.15,
            0.08,
            0.05,
            0.04,
            0.05,
            0.10,
            0.30,
            0.70,
            1.00,
            1.20,
            1.10,
            0.90,
            0.70,
            0.80,
            0.90,
            0.90,
            0.90,
            0.90,
            1.00,
            1.20,
            1.20,
            1.00,
            0.60,
            0.30,
        ],
        [
            0.00,
            0.00,
            0.00,
            0.00,
            0.00,
            0.00,
            0.00,
            0.30,
            1.00,
            1.40,
            1.30,
            0.90,
            0.40,
            0.80,
            1.20,
            1.20,
            1.00,
            0.60,
            0.20,
            0.05,
            0.00,
            0.00,
            0.00,
            0.00,
        ],
        [
            0.30,
            0.20,
            0.15,
            0.10,
            0.10,
            0.15,
            0.30,
            0.60,
            1.00,
            1.10,
            1.10,
            1.00,
            0.80,
            0.90,
            1.00,
            1.00,
            1.00,
            0.90,
            0.90,
            1.00,
            1.00,
            0.90,
            0.70,
            0.50,
        ],
    ]
)
# Hand-set skew on top of a seeded log-normal base: a few subclasses dominate real case
# lists (parking, rubbish, corridor clutter), a few are rare (dangerous buildings, begging).
_SUBCLASS_SKEW = {
    "0101": 3.0,
    "0201": 2.5,
    "0204": 2.0,
    "0205": 3.0,
    "0501": 2.5,
    "0702": 2.0,
    "0901": 2.0,
    "0601": 2.0,
    "0703": 0.15,
    "0903": 0.2,
    "1203": 0.2,
    "1102": 0.3,
    "0803": 0.6,
    "1001": 0.5,
}
# Anchors: 0 market hotspot, 1 residential (compound hotspot or housing), 2 public space.
_ANCHOR_CLASS_SKEW = [
    {"01": 2.0, "02": 3.0, "09": 1.5, "11": 1.3},
    {"05": 2.5, "06": 1.5, "07": 2.0, "10": 1.5, "11": 1.5, "12": 1.5},
    {"01": 1.5, "03": 2.5, "04": 2.5, "02": 1.2},
]
_SOURCE_CLASS_SKEW = [
    {"05": 1.3, "09": 1.3, "11": 1.2},
    {"01": 1.8, "02": 1.8, "03": 1.8, "04": 1.8, "10": 0.6, "11": 0.6},
    {"06": 2.5, "09": 2.0, "11": 1.5, "02": 0.7},
]
_HEATING_MONTH_SKEW = {11: 6.0, 12: 4.0, 1: 4.0, 2: 3.0, 3: 2.0}
_SUMMER_SUBCLASS_SKEW = {"0402": 3.0, "0902": 1.8, "0901": 1.4, "0602": 1.5}
_DESCRIPTION_TEMPLATES = [
    [
        "居民反映{place}{name}，希望尽快处理",
        "{place}{name}，影响居民生活",
        "有居民报告{place}{name}",
    ],
    ["巡查发现{place}{name}", "网格员上报：{place}{name}，已拍照取证", "{place}{name}，需协调处理"],
    ["12345转办：市民反映{place}{name}", "热线工单：{place}{name}，请核实处置"],
]


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def generate_district(size: str = "small", seed: int = 20261122) -> DemoDistrict:
    """Generate a whole synthetic district for ``size`` (a key of SIZES), reproducibly per seed.

    Same size and seed give identical frames; nothing is read except the category tree.
    """
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {sorted(SIZES)}")
    preset = SIZES[size]
    rng = np.random.default_rng(seed)

    lattice = build_lattice(preset, rng)
    blocks = plan_buildings(lattice, rng)
    partition = partition_district(lattice, blocks, preset, rng)
    blocks = sort_buildings(blocks, partition)
    households = assign_households(blocks, partition, rng)
    names = draw_names(lattice, preset, rng)

    areas_gdf = build_areas_gdf(partition, names)
    buildings_gdf = build_buildings_gdf(lattice, blocks, partition, names, households, rng)
    roads_gdf = build_roads_gdf(lattice, partition, names)
    stations_gdf = build_stations_gdf(lattice, blocks, partition, names, rng)
    workers_df = build_workers_df(partition, buildings_gdf, rng)
    cases_gdf = build_cases_gdf(lattice, blocks, buildings_gdf, partition, names, preset, rng)
    return DemoDistrict(
        areas=areas_gdf,
        buildings=buildings_gdf,
        stations=stations_gdf,
        workers=workers_df,
        cases=cases_gdf,
        roads=roads_gdf,
    )


def load_categories() -> pd.DataFrame:
    """Return the subclasses of data/categories.json as a frame (code, name, class_code)."""
    return _read_categories().copy()


@lru_cache(maxsize=1)
def _read_categories() -> pd.DataFrame:
    tree = json.loads((Path(__file__).resolve().parent / "categories.json").read_text("utf-8"))
    rows = [
        {"code": sub["code"], "name": sub["name"], "class_code": cls["code"]}
        for cls in tree["classes"]
        for sub in cls["subclasses"]
    ]
    return pd.DataFrame(rows)


def order_row_major(geoms_4326: np.ndarray) -> np.ndarray:
    """Return the indices that order polygons west→east, north→south (DB11/T 2157-2023).

    Centroids are grouped into rows from the north: a centroid joins the current row while it
    lies less than half the median polygon height below the row's first centroid; rows are
    then read west to east.
    """
    geoms = np.asarray(geoms_4326, dtype=object)
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.int64)
    to_local = _transformer(inverse=True)
    local = shapely.transform(geoms, lambda xy: np.column_stack(to_local.transform(*xy.T)))
    xy = shapely.get_coordinates(shapely.centroid(local))
    bounds = shapely.bounds(local)
    row_tol_m = 0.5 * float(np.median(bounds[:, 3] - bounds[:, 1]))
    by_north = np.argsort(-xy[:, 1], kind="stable")
    row_of = np.empty(len(geoms), dtype=np.int64)
    row, row_top_m = 0, xy[by_north[0], 1]
    for i in by_north:
        if row_top_m - xy[i, 1] > row_tol_m:
            row, row_top_m = row + 1, xy[i, 1]
        row_of[i] = row
    return np.lexsort((xy[:, 0], row_of))


# ---------------------------------------------------------------------------------------------
# lattice
# ---------------------------------------------------------------------------------------------
@dataclass
class Lattice:
    """Jittered block lattice: node coordinates in the lattice frame (u east, v north, metres),
    the same nodes in EPSG:4326, the active (inside-district) cells and their row extents."""

    rows: int
    cols: int
    u_edges_m: np.ndarray  # unjittered column lines, west to east
    v_edges_m: np.ndarray  # unjittered row lines, north to south (decreasing)
    node_u_m: np.ndarray  # (rows + 1, cols + 1)
    node_v_m: np.ndarray
    node_lonlat: np.ndarray  # (rows + 1) * (cols + 1) x 2, row-major node ids
    rotation_rad: float
    active: np.ndarray  # (rows, cols) bool
    lo_col: np.ndarray  # first active column per row
    hi_col: np.ndarray  # last active column per row

    def node_id(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return i * (self.cols + 1) + j

    def to_lonlat(self, u_m: np.ndarray, v_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rotate lattice-frame metres into the local CRS and project them to lon/lat."""
        cos, sin = np.cos(self.rotation_rad), np.sin(self.rotation_rad)
        x_m = u_m * cos - v_m * sin
        y_m = u_m * sin + v_m * cos
        return _transformer().transform(x_m, y_m)

    def cell_inner_boxes(self) -> np.ndarray:
        """Per cell (rows, cols, 4) the axis-aligned box (u0, v0, u1, v1) inside its jittered
        quadrilateral, set back from the roads; anything inside it lies inside the cell."""
        u, v = self.node_u_m, self.node_v_m
        u0 = np.maximum(u[:-1, :-1], u[1:, :-1]) + _SETBACK_M
        u1 = np.minimum(u[:-1, 1:], u[1:, 1:]) - _SETBACK_M
        v1 = np.minimum(v[:-1, :-1], v[:-1, 1:]) - _SETBACK_M
        v0 = np.maximum(v[1:, :-1], v[1:, 1:]) + _SETBACK_M
        return np.stack([u0, v0, u1, v1], axis=-1)


@lru_cache(maxsize=2)
def _transformer(inverse: bool = False) -> Transformer:
    if inverse:
        return Transformer.from_crs("EPSG:4326", LOCAL_CRS, always_xy=True)
    return Transformer.from_crs(LOCAL_CRS, "EPSG:4326", always_xy=True)


def build_lattice(preset: DistrictSize, rng: np.random.Generator) -> Lattice:
    """Lay out blocks of 150–250 m, jitter every node once and cut staircase corners off the
    rectangle so the outline is not a box while every row and column stays one interval."""
    rows, cols = preset.rows, preset.cols
    widths_m = rng.uniform(150.0, 250.0, cols)
    heights_m = rng.uniform(150.0, 250.0, rows)
    u_edges = np.concatenate([[0.0], np.cumsum(widths_m)])
    v_edges = -np.concatenate([[0.0], np.cumsum(heights_m)])
    u_edges -= u_edges[-1] / 2
    v_edges -= v_edges[-1] / 2
    # 18 m of jitter on >=150 m blocks keeps every cell convex with room for an inner box.
    jitter_m = 18.0
    node_u = u_edges[None, :] + rng.uniform(-jitter_m, jitter_m, (rows + 1, cols + 1))
    node_v = v_edges[:, None] + rng.uniform(-jitter_m, jitter_m, (rows + 1, cols + 1))
    rotation_rad = np.deg2rad(rng.uniform(-8.0, 8.0))

    lo_col, hi_col = _carve_corners(rows, cols, preset.corner_cut, rng)
    col_idx = np.arange(cols)[None, :]
    active = (col_idx >= lo_col[:, None]) & (col_idx <= hi_col[:, None])

    lattice = Lattice(
        rows,
        cols,
        u_edges,
        v_edges,
        node_u,
        node_v,
        np.empty((0, 2)),
        float(rotation_rad),
        active,
        lo_col,
        hi_col,
    )
    lon, lat = lattice.to_lonlat(node_u.ravel(), node_v.ravel())
    lattice.node_lonlat = np.column_stack([lon, lat])
    return lattice


def _carve_corners(
    rows: int, cols: int, cut: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw per-row active column ranges with a monotone staircase cut at each corner.

    The first active column is a max of a non-increasing and a non-decreasing profile (a
    valley), the last one a peak, so the active set is row- and column-convex and connected.
    """
    max_depth = max(1, int(round(cut * rows)))
    max_width = max(1, int(round(cut * cols)))

    def staircase() -> np.ndarray:
        profile = np.zeros(rows, dtype=np.int64)
        depth = int(rng.integers(0, max_depth + 1))
        if depth:
            widest = int(rng.integers(1, max_width + 1))
            profile[:depth] = np.sort(rng.integers(1, widest + 1, depth))[::-1]
        return profile

    nw, sw, ne, se = staircase(), staircase(), staircase(), staircase()
    lo_col = np.maximum(nw, sw[::-1])
    hi_col = cols - 1 - np.maximum(ne, se[::-1])
    return lo_col, hi_col


# ---------------------------------------------------------------------------------------------
# buildings laid out per block (before partition: the partition balances their households)
# ---------------------------------------------------------------------------------------------
@dataclass
class Blocks:
    """Cells and the buildings planned in them, as flat arrays (one entry per building)."""

    cell_type: np.ndarray  # (rows, cols) int, -1 outside
    inner_box_m: np.ndarray  # (rows, cols, 4)
    cell_r: np.ndarray
    cell_c: np.ndarray
    slot_i: np.ndarray
    slot_j: np.ndarray
    kind: np.ndarray
    floors: np.ndarray
    capacity: np.ndarray  # households the building was drawn for
    center_u_m: np.ndarray
    center_v_m: np.ndarray
    corners_u_m: np.ndarray  # (n, 4) counter-clockwise
    corners_v_m: np.ndarray
    cell_capacity: np.ndarray  # (rows, cols) households per cell

    def take(self, order: np.ndarray) -> Blocks:
        """Return the same blocks with the per-building arrays permuted by ``order``."""
        per_building = {
            name: getattr(self, name)[order]
            for name in (
                "cell_r",
                "cell_c",
                "slot_i",
                "slot_j",
                "kind",
                "floors",
                "capacity",
                "center_u_m",
                "center_v_m",
                "corners_u_m",
                "corners_v_m",
            )
        }
        return Blocks(
            cell_type=self.cell_type,
            inner_box_m=self.inner_box_m,
            cell_capacity=self.cell_capacity,
            **per_building,
        )


def sort_buildings(blocks: Blocks, partition: Partition) -> Blocks:
    """Order buildings by community, then block row, block column and slot, which numbers
    them roughly north-west to south-east inside each community."""
    comm = partition.grid_community[partition.grid_of_cell[blocks.cell_r, blocks.cell_c]]
    return blocks.take(
        np.lexsort((blocks.slot_j, blocks.slot_i, blocks.cell_c, blocks.cell_r, comm))
    )


def plan_buildings(lattice: Lattice, rng: np.random.Generator) -> Blocks:
    """Give every block a type from smooth random fields, cut it into building slots and draw
    a footprint, floor count and household capacity for each occupied slot (vectorised)."""
    rows, cols = lattice.rows, lattice.cols
    cell_type = _draw_cell_types(lattice, rng)
    inner = lattice.cell_inner_boxes()

    act_r, act_c = np.nonzero(lattice.active)
    ctype = cell_type[act_r, act_c]
    n_slot_rows = rng.integers(_SLOT_ROWS[ctype, 0], _SLOT_ROWS[ctype, 1] + 1)
    n_slot_cols = rng.integers(_SLOT_COLS[ctype, 0], _SLOT_COLS[ctype, 1] + 1)
    n_slots = n_slot_rows * n_slot_cols
    slot_cell = np.repeat(np.arange(len(act_r)), n_slots)
    first_slot = np.concatenate([[0], np.cumsum(n_slots)[:-1]])
    slot_k = np.arange(len(slot_cell)) - first_slot[slot_cell]
    slot_i = slot_k // n_slot_cols[slot_cell]
    slot_j = slot_k % n_slot_cols[slot_cell]
    s_type = ctype[slot_cell]

    occupied = rng.random(len(slot_cell)) < _SLOT_FILL_P[s_type]
    cum_p = np.cumsum(_KIND_P, axis=1)[s_type]
    kind = (rng.random(len(slot_cell))[:, None] > cum_p).sum(axis=1)
    kind = np.minimum(kind, _KIND_P.shape[1] - 1)
    # Every block houses somebody, so every grid has households to balance.
    residential = occupied & np.isin(kind, [0, 1, 3, 4, 5])
    has_housing = np.bincount(slot_cell, weights=residential, minlength=len(act_r)) > 0
    fix = first_slot[~has_housing]
    occupied[fix] = True
    kind[fix] = _MAIN_RESIDENTIAL_KIND[ctype[~has_housing]]

    keep = np.nonzero(occupied)[0]
    b_cell, kind = slot_cell[keep], kind[keep]
    slot_i, slot_j = slot_i[keep], slot_j[keep]
    n = len(keep)

    floors = _FLOORS[kind, 0] + np.floor(
        rng.random(n) * (_FLOORS[kind, 1] - _FLOORS[kind, 0] + 1)
    ).astype(np.int64)
    # Most ancillary sheds and bungalows are single storey.
    low = np.isin(kind, [2, 3]) & (rng.random(n) < 0.85)
    floors[low] = 1
    entrances = rng.integers(1, 4, n)
    units_draw = rng.random(n)
    capacity = np.select(
        [kind == 0, kind == 1, kind == 3, kind == 4, kind == 5],
        [
            floors * entrances * 2,
            floors * (1 + (units_draw < 0.5)),
            1 + np.floor(units_draw * 3).astype(np.int64),
            floors * 4,
            (floors - 1) * 2,
        ],
        0,
    ).astype(np.int64)

    length_m = np.where(
        kind == 0,
        15.5 * entrances + rng.uniform(-1.0, 2.0, n),
        rng.uniform(_LENGTH_M[kind, 0], _LENGTH_M[kind, 1]),
    )
    depth_m = rng.uniform(_DEPTH_M[kind, 0], _DEPTH_M[kind, 1])
    angle = np.where(rng.random(n) < 0.3, np.deg2rad(rng.uniform(-10.0, 10.0, n)), 0.0)

    # Slot box inside the block's inner box; footprints shrink to fit rotated, with a margin.
    box = inner[act_r[b_cell], act_c[b_cell]]
    slot_w = (box[:, 2] - box[:, 0]) / n_slot_cols[b_cell]
    slot_h = (box[:, 3] - box[:, 1]) / n_slot_rows[b_cell]
    slot_cu = box[:, 0] + (slot_j + 0.5) * slot_w
    slot_cv = box[:, 3] - (slot_i + 0.5) * slot_h
    half_a, half_b = length_m / 2, depth_m / 2
    cos, sin = np.abs(np.cos(angle)), np.abs(np.sin(angle))
    room_u = slot_w / 2 - _SLOT_MARGIN_M
    room_v = slot_h / 2 - _SLOT_MARGIN_M
    scale = np.minimum(
        1.0,
        np.minimum(room_u / (half_a * cos + half_b * sin), room_v / (half_a * sin + half_b * cos)),
    )
    half_a, half_b = half_a * scale, half_b * scale
    slack_u = room_u - (half_a * cos + half_b * sin)
    slack_v = room_v - (half_a * sin + half_b * cos)
    center_u = slot_cu + rng.uniform(-0.8, 0.8, n) * slack_u
    center_v = slot_cv + rng.uniform(-0.8, 0.8, n) * slack_v

    local_a = np.array([-1.0, 1.0, 1.0, -1.0])[None, :] * half_a[:, None]
    local_b = np.array([-1.0, -1.0, 1.0, 1.0])[None, :] * half_b[:, None]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    corners_u = center_u[:, None] + local_a * ca - local_b * sa
    corners_v = center_v[:, None] + local_a * sa + local_b * ca

    cell_capacity = np.zeros((rows, cols), dtype=np.int64)
    np.add.at(cell_capacity, (act_r[b_cell], act_c[b_cell]), capacity)
    return Blocks(
        cell_type,
        inner,
        act_r[b_cell],
        act_c[b_cell],
        slot_i,
        slot_j,
        kind,
        floors,
        capacity,
        center_u,
        center_v,
        corners_u,
        corners_v,
        cell_capacity,
    )


def _draw_cell_types(lattice: Lattice, rng: np.random.Generator) -> np.ndarray:
    """Type blocks from two blurred noise fields: a dense core with towers and old compounds,
    bungalow quarters at the low end, and commercial corridors from a second field."""
    urban = _blur(rng.standard_normal((lattice.rows, lattice.cols)), passes=4)
    trade = _blur(rng.standard_normal((lattice.rows, lattice.cols)), passes=3)
    act = lattice.active
    u_hi, u_lo = np.quantile(urban[act], [0.9, 0.3])
    t_hi = np.quantile(trade[act], 0.8)
    cell_type = np.zeros(act.shape, dtype=np.int64)
    cell_type[urban < u_lo] = 1
    cell_type[trade > t_hi] = 3
    cell_type[urban > u_hi] = 2
    cell_type[~act] = -1
    return cell_type


def _blur(field: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        padded = np.pad(field, 1, mode="edge")
        field = (
            padded[1:-1, 1:-1] * 2
            + padded[:-2, 1:-1]
            + padded[2:, 1:-1]
            + padded[1:-1, :-2]
            + padded[1:-1, 2:]
        ) / 6
    return field


# ---------------------------------------------------------------------------------------------
# partition: district -> streets -> communities -> grids, guillotine cuts along cell lines
# ---------------------------------------------------------------------------------------------
Box = tuple[int, int, int, int]  # r0, r1, c0, c1 (half-open); a region is box ∩ active


@dataclass
class Partition:
    """Area hierarchy as cell label maps plus polygons, parents and codes in code order."""

    street_of_cell: np.ndarray  # (rows, cols) int, -1 outside
    community_of_cell: np.ndarray
    grid_of_cell: np.ndarray
    district_geom: shapely.Polygon
    street_geoms: np.ndarray
    community_geoms: np.ndarray
    grid_geoms: np.ndarray
    street_codes: list[str]
    community_codes: list[str]
    grid_codes: list[str]
    community_street: np.ndarray  # parent index per community
    grid_community: np.ndarray  # parent index per grid
    grid_seq: np.ndarray  # 1-based sequence within its community


class _Splitter:
    """Recursive binary (guillotine) splits of a cell box balancing household capacity."""

    def __init__(self, lattice: Lattice, cell_capacity: np.ndarray, rng: np.random.Generator):
        self.lattice = lattice
        self.rng = rng
        self.cap_sum = _prefix_sum(cell_capacity * lattice.active)
        self.count_sum = _prefix_sum(lattice.active.astype(np.int64))

    def total(self, prefix: np.ndarray, box: Box) -> int:
        r0, r1, c0, c1 = box
        return int(prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0])

    def tighten(self, box: Box) -> Box | None:
        """Shrink a box to its active cells; None when empty or not orthogonally connected."""
        r0, r1, c0, c1 = box
        lo = np.maximum(self.lattice.lo_col[r0:r1], c0)
        hi = np.minimum(self.lattice.hi_col[r0:r1], c1 - 1)
        filled = np.nonzero(lo <= hi)[0]
        if len(filled) == 0 or filled[-1] - filled[0] + 1 != len(filled):
            return None
        lo, hi = lo[filled], hi[filled]
        # Row intervals of a row- and column-convex set must overlap from row to row.
        if np.any(np.maximum(lo[1:], lo[:-1]) > np.minimum(hi[1:], hi[:-1])):
            return None
        return (r0 + int(filled[0]), r0 + int(filled[-1]) + 1, int(lo.min()), int(hi.max()) + 1)

    def split(self, box: Box, k: int) -> list[Box]:
        """Cut ``box`` into at most ``k`` leaves of near-equal capacity, preferring compact
        pieces; a little noise in the score varies the layout from seed to seed."""
        if k <= 1:
            return [box]
        r0, r1, c0, c1 = box
        cap_total = self.total(self.cap_sum, box)
        per_leaf = cap_total / k
        cuts = [((r0, t, c0, c1), (t, r1, c0, c1)) for t in range(r0 + 1, r1)]
        cuts += [((r0, r1, c0, t), (r0, r1, t, c1)) for t in range(c0 + 1, c1)]
        best, best_score = None, np.inf
        for part_a, part_b in cuts:
            a, b = self.tighten(part_a), self.tighten(part_b)
            if a is None or b is None:
                continue
            cap_a, cap_b = self.total(self.cap_sum, a), self.total(self.cap_sum, b)
            n_a, n_b = self.total(self.count_sum, a), self.total(self.count_sum, b)
            shape = 0.08 * (_aspect(a) + _aspect(b) - 2)
            for k_a in range(max(1, k - n_b), min(k - 1, n_a) + 1):
                k_b = k - k_a
                score = abs(cap_a / k_a - cap_b / k_b) / per_leaf + shape
                score += 0.03 * self.rng.random()
                if score < best_score:
                    best, best_score = (a, b, k_a, k_b), score
        if best is None:
            return [box]
        a, b, k_a, k_b = best
        return self.split(a, k_a) + self.split(b, k_b)


def _prefix_sum(grid: np.ndarray) -> np.ndarray:
    out = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=np.int64)
    out[1:, 1:] = np.cumsum(np.cumsum(grid, axis=0), axis=1)
    return out


def _aspect(box: Box) -> float:
    h, w = box[1] - box[0], box[3] - box[2]
    return max(h, w) / min(h, w)


def trace_region_ring(lattice: Lattice, box: Box) -> np.ndarray:
    """Return the closed counter-clockwise ring of lattice node ids around ``box ∩ active``.

    Every boundary cell edge is kept, so the ring passes through each node where a
    neighbour's corner touches: neighbours then share vertices exactly.
    """
    r0, r1, c0, c1 = box
    mask = lattice.active[r0:r1, c0:c1]
    pad = np.pad(mask, 1)
    inner = pad[1:-1, 1:-1]
    rr, cc = np.mgrid[r0:r1, c0:c1]
    nid = lattice.node_id
    starts, ends = [], []
    # (edge present, start node, end node) for the south, east, north and west cell edges,
    # each walked so the region lies on the left (counter-clockwise with v to the north).
    for present, start, end in (
        (inner & ~pad[2:, 1:-1], nid(rr + 1, cc), nid(rr + 1, cc + 1)),
        (inner & ~pad[1:-1, 2:], nid(rr + 1, cc + 1), nid(rr, cc + 1)),
        (inner & ~pad[:-2, 1:-1], nid(rr, cc + 1), nid(rr, cc)),
        (inner & ~pad[1:-1, :-2], nid(rr, cc), nid(rr + 1, cc)),
    ):
        starts.append(start[present])
        ends.append(end[present])
    start_ids = np.concatenate(starts).tolist()
    next_node = dict(zip(start_ids, np.concatenate(ends).tolist(), strict=True))
    if len(next_node) != len(start_ids):
        raise ValueError(f"region {box} touches itself at a corner")
    first = min(start_ids)
    ring = [first]
    node = next_node[first]
    while node != first:
        ring.append(node)
        node = next_node[node]
    if len(ring) != len(start_ids):
        raise ValueError(f"region {box} is not one simple ring")
    ring.append(first)
    return np.asarray(ring, dtype=np.int64)


def _polygons_for_boxes(lattice: Lattice, boxes: list[Box]) -> np.ndarray:
    rings = [trace_region_ring(lattice, box) for box in boxes]
    coords = lattice.node_lonlat[np.concatenate(rings)]
    indices = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    return shapely.polygons(shapely.linearrings(coords, indices=indices))


def partition_district(
    lattice: Lattice, blocks: Blocks, preset: DistrictSize, rng: np.random.Generator
) -> Partition:
    """Split the district into streets, communities and grids by household capacity and code
    every level in row-major order within its parent."""
    splitter = _Splitter(lattice, blocks.cell_capacity, rng)
    district_box = splitter.tighten((0, lattice.rows, 0, lattice.cols))
    district_geom = _polygons_for_boxes(lattice, [district_box])[0]
    cap_total = splitter.total(splitter.cap_sum, district_box)

    street_boxes = splitter.split(district_box, preset.n_streets)
    street_geoms = _polygons_for_boxes(lattice, street_boxes)
    order = order_row_major(street_geoms)
    street_boxes = [street_boxes[i] for i in order]
    street_geoms = street_geoms[order]
    street_codes = [f"{DISTRICT_CODE}{i + 1:03d}" for i in range(len(street_boxes))]

    comm_boxes, comm_geoms, comm_street, comm_codes = [], [], [], []
    for s, box in enumerate(street_boxes):
        share = splitter.total(splitter.cap_sum, box) / cap_total
        k = max(1, int(round(preset.n_communities * share)))
        boxes = splitter.split(box, k)
        geoms = _polygons_for_boxes(lattice, boxes)
        for seq, i in enumerate(order_row_major(geoms)):
            comm_boxes.append(boxes[i])
            comm_geoms.append(geoms[i])
            comm_street.append(s)
            comm_codes.append(f"{street_codes[s]}{seq + 1:03d}")

    grid_boxes, grid_geoms, grid_comm, grid_codes, grid_seq = [], [], [], [], []
    for c, box in enumerate(comm_boxes):
        n_cells = splitter.total(splitter.count_sum, box)
        k = int(
            np.clip(round(splitter.total(splitter.cap_sum, box) / HOUSEHOLDS_PER_GRID), 1, n_cells)
        )
        boxes = splitter.split(box, k)
        geoms = _polygons_for_boxes(lattice, boxes)
        for seq, i in enumerate(order_row_major(geoms)):
            grid_boxes.append(boxes[i])
            grid_geoms.append(geoms[i])
            grid_comm.append(c)
            grid_codes.append(f"{comm_codes[c]}{seq + 1:03d}")
            grid_seq.append(seq + 1)

    def label(boxes: list[Box]) -> np.ndarray:
        labels = np.full(lattice.active.shape, -1, dtype=np.int64)
        for idx, (r0, r1, c0, c1) in enumerate(boxes):
            window = labels[r0:r1, c0:c1]
            window[lattice.active[r0:r1, c0:c1]] = idx
        return labels

    return Partition(
        street_of_cell=label(street_boxes),
        community_of_cell=label(comm_boxes),
        grid_of_cell=label(grid_boxes),
        district_geom=district_geom,
        street_geoms=np.asarray(street_geoms),
        community_geoms=_as_geom_array(comm_geoms),
        grid_geoms=_as_geom_array(grid_geoms),
        street_codes=street_codes,
        community_codes=comm_codes,
        grid_codes=grid_codes,
        community_street=np.asarray(comm_street),
        grid_community=np.asarray(grid_comm),
        grid_seq=np.asarray(grid_seq),
    )


def _as_geom_array(geoms: list) -> np.ndarray:
    out = np.empty(len(geoms), dtype=object)
    out[:] = geoms
    return out


# ---------------------------------------------------------------------------------------------
# households: hold most grids in the band, a few over and under on purpose
# ---------------------------------------------------------------------------------------------
def assign_households(blocks: Blocks, partition: Partition, rng: np.random.Generator) -> np.ndarray:
    """Rescale each building's drawn capacity so that its grid totals a target: inside the
    household band for most grids, above it for ~5% (the fullest) and below for ~6%."""
    low, high = HOUSEHOLD_BAND
    grid = partition.grid_of_cell[blocks.cell_r, blocks.cell_c]
    n_grids = len(partition.grid_codes)
    cap_grid = np.bincount(grid, weights=blocks.capacity, minlength=n_grids)

    target = np.clip(cap_grid * rng.uniform(0.95, 1.05, n_grids), low + 12, high - 12)
    by_cap = np.argsort(cap_grid, kind="stable")
    n_over = max(1, int(round(0.05 * n_grids)))
    n_under = int(0.06 * n_grids)  # rounded down: a tiny district keeps its band share
    over = by_cap[n_grids - n_over :]
    under = by_cap[:n_under]
    target[over] = np.clip(
        np.maximum(cap_grid[over], rng.uniform(515, 640, len(over))), high + 10, 720
    )
    target[under] = np.clip(
        np.minimum(cap_grid[under], rng.uniform(190, 285, len(under))), 150, low - 10
    )
    target = np.round(target).astype(np.int64)

    # Largest-remainder rounding hits each grid's target exactly.
    scaled = blocks.capacity * (target / cap_grid)[grid]
    households = np.floor(scaled).astype(np.int64)
    remainder = target - np.bincount(grid, weights=households, minlength=n_grids).astype(np.int64)
    frac = np.where(blocks.capacity > 0, scaled - households, -1.0)
    order = np.lexsort((-frac, grid))
    group_start = np.searchsorted(grid[order], np.arange(n_grids))
    rank = np.empty(len(grid), dtype=np.int64)
    rank[order] = np.arange(len(grid)) - group_start[grid[order]]
    households += (rank < remainder[grid]) & (blocks.capacity > 0)
    return households


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
@dataclass
class Names:
    """Chinese names: streets, communities, east-west roads (路) and north-south roads (街)."""

    street: list[str]
    community: list[str]
    row_road: list[str]  # one per lattice row line, north to south
    col_road: list[str]  # one per lattice column line, west to east


def draw_names(lattice: Lattice, preset: DistrictSize, rng: np.random.Generator) -> Names:
    """Draw unique two-character stems for streets and roads and char+suffix community names
    (unique district-wide, hence within every parent)."""
    n_chars = len(_NAME_CHARS)
    n_stems = preset.n_streets + lattice.rows + lattice.cols + 2
    picks = rng.choice(n_chars * (n_chars - 1), size=n_stems, replace=False)
    first, second = picks // (n_chars - 1), picks % (n_chars - 1)
    second = second + (second >= first)  # two distinct characters
    stems = [_NAME_CHARS[a] + _NAME_CHARS[b] for a, b in zip(first, second, strict=True)]
    n_streets = preset.n_streets
    row_road = [s + "路" for s in stems[n_streets : n_streets + lattice.rows + 1]]
    col_road = [s + "街" for s in stems[n_streets + lattice.rows + 1 :]]
    # Communities: more than the preset may ask for, since splits can round up.
    n_comm = 2 * preset.n_communities + 8
    n_suffix = len(_COMMUNITY_SUFFIXES)
    picks = rng.choice(n_chars * n_suffix, size=min(n_comm, n_chars * n_suffix), replace=False)
    community = [
        _NAME_CHARS[p // n_suffix] + _COMMUNITY_SUFFIXES[p % n_suffix] + "社区" for p in picks
    ]
    return Names(
        street=[s + "街道" for s in stems[:n_streets]],
        community=community,
        row_road=row_road,
        col_road=col_road,
    )


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------
def build_areas_gdf(partition: Partition, names: Names) -> gpd.GeoDataFrame:
    """Assemble the four area levels into one frame with codes, names and parent codes."""
    n_s, n_c = len(partition.street_codes), len(partition.community_codes)
    comm_parent = [partition.street_codes[s] for s in partition.community_street]
    grid_parent = [partition.community_codes[c] for c in partition.grid_community]
    frame = pd.DataFrame(
        {
            "code": [
                DISTRICT_CODE,
                *partition.street_codes,
                *partition.community_codes,
                *partition.grid_codes,
            ],
            "name": [
                DISTRICT_NAME,
                *names.street[:n_s],
                *names.community[:n_c],
                *[f"第{seq}网格" for seq in partition.grid_seq],
            ],
            "level": ["district"]
            + ["street"] * n_s
            + ["community"] * n_c
            + ["grid"] * len(partition.grid_codes),
            "parent_code": [None] + [DISTRICT_CODE] * n_s + comm_parent + grid_parent,
        }
    )
    geometry = np.concatenate(
        [
            [partition.district_geom],
            partition.street_geoms,
            partition.community_geoms,
            partition.grid_geoms,
        ]
    )
    return gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")


def build_buildings_gdf(
    lattice: Lattice,
    blocks: Blocks,
    partition: Partition,
    names: Names,
    households: np.ndarray,
    rng: np.random.Generator,
) -> gpd.GeoDataFrame:
    """Turn planned footprints into building rows, numbered within their community and
    addressed on the nearest east-west road (odd numbers south of it, even north)."""
    grid = partition.grid_of_cell[blocks.cell_r, blocks.cell_c]
    comm = partition.grid_community[grid]
    n = len(grid)
    seq = np.arange(n) - np.searchsorted(comm, comm) + 1

    # Buildings in the upper half of a block face the road on its north side.
    r, c = blocks.cell_r, blocks.cell_c
    box = blocks.inner_box_m[r, c]
    upper = blocks.center_v_m > (box[:, 1] + box[:, 3]) / 2
    road_line = np.where(upper, r, r + 1)
    side = upper.astype(np.int64)  # 1: south of the road (odd), 0: north of it (even)
    by_road = np.lexsort((blocks.center_u_m, side, road_line))
    key = road_line[by_road] * 2 + side[by_road]
    rank = np.empty(n, dtype=np.int64)
    rank[by_road] = np.arange(n) - np.searchsorted(key, key)
    number = 2 * rank + np.where(side == 1, 1, 2)

    kind = blocks.kind
    street_of = partition.community_street[comm]
    comm_names = np.asarray(names.community, dtype=object)[comm]
    street_names = np.asarray(names.street, dtype=object)[street_of]
    road_names = np.asarray(names.row_road, dtype=object)[road_line]
    name = [
        f"{cn}{s}{suf}" for cn, s, suf in zip(comm_names, seq, _KIND_NAME_SUFFIX[kind], strict=True)
    ]
    address = [
        f"{CITY_NAME}{DISTRICT_NAME}{sn}{rn}{num}号"
        for sn, rn, num in zip(street_names, road_names, number, strict=True)
    ]
    comm_codes = np.asarray(partition.community_codes, dtype=object)[comm]
    code = [f"{cc}{s:04d}" for cc, s in zip(comm_codes, seq, strict=True)]

    population = np.round(households * rng.uniform(2.1, 3.0, n)).astype(np.int64)
    lon, lat = lattice.to_lonlat(blocks.corners_u_m.ravel(), blocks.corners_v_m.ravel())
    ring = np.stack([lon.reshape(n, 4), lat.reshape(n, 4)], axis=-1)
    ring = np.concatenate([ring, ring[:, :1]], axis=1)
    frame = pd.DataFrame(
        {
            "code": code,
            "name": name,
            "address": address,
            "households": households,
            "population": population,
            "floors": blocks.floors.astype(np.int64),
            "grid_code": np.asarray(partition.grid_codes, dtype=object)[grid],
            "community_code": comm_codes,
        }
    )
    return gpd.GeoDataFrame(frame, geometry=shapely.polygons(ring), crs="EPSG:4326")


def build_roads_gdf(lattice: Lattice, partition: Partition, names: Names) -> gpd.GeoDataFrame:
    """One LineString per lattice edge touching the district, ranked by the areas it divides:
    primary on street (and district) boundaries, secondary on community ones."""
    rows, cols = lattice.rows, lattice.cols

    def pad_labels(labels: np.ndarray) -> np.ndarray:
        return np.pad(labels, 1, constant_values=-1)

    street, comm = pad_labels(partition.street_of_cell), pad_labels(partition.community_of_cell)
    # East-west edges: node (i, j) -> (i, j + 1), cells above (i - 1, j) and below (i, j).
    ii, jj = np.mgrid[0 : rows + 1, 0:cols]
    h_sides = ((ii, jj + 1), (ii + 1, jj + 1))
    # North-south edges: node (i, j) -> (i + 1, j), cells left (i, j - 1) and right (i, j).
    vi, vj = np.mgrid[0:rows, 0 : cols + 1]
    v_sides = ((vi + 1, vj), (vi + 1, vj + 1))

    parts = []
    for (ai, aj, bi, bj), start, end, road_names in (
        (
            (*h_sides[0], *h_sides[1]),
            lattice.node_id(ii, jj),
            lattice.node_id(ii, jj + 1),
            np.asarray(names.row_road, dtype=object)[ii],
        ),
        (
            (*v_sides[0], *v_sides[1]),
            lattice.node_id(vi, vj),
            lattice.node_id(vi + 1, vj),
            np.asarray(names.col_road, dtype=object)[vj],
        ),
    ):
        s_a, s_b = street[ai, aj], street[bi, bj]
        c_a, c_b = comm[ai, aj], comm[bi, bj]
        keep = (s_a >= 0) | (s_b >= 0)
        kind = np.where(s_a != s_b, "primary", np.where(c_a != c_b, "secondary", "residential"))
        parts.append((start[keep], end[keep], road_names[keep], kind[keep]))
    start = np.concatenate([p[0] for p in parts])
    end = np.concatenate([p[1] for p in parts])
    coords = np.stack([lattice.node_lonlat[start], lattice.node_lonlat[end]], axis=1)
    n = len(start)
    frame = pd.DataFrame(
        {
            "code": [f"R{i + 1:06d}" for i in range(n)],
            "name": np.concatenate([p[2] for p in parts]),
            "kind": np.concatenate([p[3] for p in parts]),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=shapely.linestrings(coords), crs="EPSG:4326")


def build_stations_gdf(
    lattice: Lattice, blocks: Blocks, partition: Partition, names: Names, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    """Place several stations per community in block corners (building-free by construction):
    one party service centre each, neighbourhood stations most often, health ones rarely."""
    n_comm = len(partition.community_codes)
    rows = []
    street_has_new_employment = np.zeros(len(partition.street_codes), dtype=bool)
    plans = []
    for c in range(n_comm):
        kinds = ["party_service"] + ["neighbourhood"] * (1 + int(rng.binomial(2, 0.5)))
        kinds += ["convenience"] * int(rng.binomial(2, 0.4))
        for kind, p in (
            ("shared", 0.35),
            ("mediation", 0.5),
            ("health", 0.3),
            ("new_employment", 0.35),
        ):
            if rng.random() < p:
                kinds.append(kind)
        plans.append(kinds)
        if "new_employment" in kinds:
            street_has_new_employment[partition.community_street[c]] = True
    # Every street office runs at least one station for delivery riders.
    for s in np.nonzero(~street_has_new_employment)[0]:
        plans[int(np.nonzero(partition.community_street == s)[0][0])].append("new_employment")

    for c, kinds in enumerate(plans):
        street_name = names.street[partition.community_street[c]]
        cell_r, cell_c = np.nonzero(partition.community_of_cell == c)
        picks = rng.choice(len(cell_r), size=len(kinds), replace=len(kinds) > len(cell_r))
        corners = rng.integers(0, 4, len(kinds))
        seen: dict[str, int] = {}
        for kind, pick, corner in zip(kinds, picks, corners, strict=True):
            r, col = int(cell_r[pick]), int(cell_c[pick])
            u0, v0, u1, v1 = blocks.inner_box_m[r, col]
            east, north = corner % 2 == 1, corner >= 2
            u = u1 - _STATION_INSET_M if east else u0 + _STATION_INSET_M
            v = v1 - _STATION_INSET_M if north else v0 + _STATION_INSET_M
            seen[kind] = seen.get(kind, 0) + 1
            label = STATION_KINDS[kind]
            nth = seen[kind]
            name = f"{names.community[c]}{label}"
            if nth > 1:
                name += f"{_CN_ORDINALS[nth - 1]}号点"
            services = _STATION_SERVICES[kind]
            n_services = int(rng.integers(3, min(6, len(services)) + 1))
            chosen = np.sort(rng.choice(len(services), size=n_services, replace=False))
            hours = _STATION_HOURS[kind]
            cap_lo, cap_hi = _STATION_CAPACITY[kind]
            road = names.row_road[r] if north else names.row_road[r + 1]
            rows.append(
                {
                    "name": name,
                    "kind": kind,
                    "address": f"{CITY_NAME}{DISTRICT_NAME}{street_name}{road}"
                    f"{int(rng.integers(1, 300))}号",
                    "services": ";".join(services[i] for i in chosen),
                    "opening_hours": hours[int(rng.integers(0, len(hours)))],
                    "capacity": int(rng.integers(cap_lo, cap_hi + 1)),
                    "phone": f"024-{int(rng.integers(2, 9))}{int(rng.integers(0, 10**7)):07d}",
                    "u": u,
                    "v": v,
                }
            )
    frame = pd.DataFrame(rows)
    # Codes: community code plus a two-digit sequence within the community.
    frame.insert(
        0,
        "code",
        [
            f"ZD{partition.community_codes[c]}{i + 1:02d}"
            for c, kinds in enumerate(plans)
            for i in range(len(kinds))
        ],
    )
    lon, lat = lattice.to_lonlat(frame.pop("u").to_numpy(), frame.pop("v").to_numpy())
    frame["capacity"] = frame["capacity"].astype(np.int64)
    return gpd.GeoDataFrame(frame, geometry=shapely.points(lon, lat), crs="EPSG:4326")


def build_workers_df(
    partition: Partition, buildings_gdf: gpd.GeoDataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """One grid worker per grid, except that a few under-band grids are added to a
    neighbouring grid's worker; one or two staff per community and a few per street."""
    n_grids = len(partition.grid_codes)
    hh = (
        buildings_gdf.groupby("grid_code")["households"]
        .sum()
        .reindex(partition.grid_codes)
        .to_numpy()
    )
    neighbours = _grid_neighbours(partition)
    owner = np.arange(n_grids)  # index of the grid whose worker owns this grid
    max_pairs = int(round(0.02 * n_grids))
    paired = np.zeros(n_grids, dtype=bool)
    n_pairs = 0
    for g in np.argsort(hh, kind="stable"):
        if n_pairs >= max_pairs or hh[g] >= HOUSEHOLD_BAND[0]:
            break
        if paired[g]:
            continue
        options = [n for n in sorted(neighbours[g]) if not paired[n]]
        if not options:
            continue
        host = min(options, key=lambda n: (hh[n], n))
        owner[g] = host
        paired[g] = paired[host] = True
        n_pairs += 1

    rows = []
    for s, street_code in enumerate(partition.street_codes):
        for i in range(int(rng.integers(2, 5))):
            rows.append((f"JD{street_code}{i + 1:02d}", "street_staff", ""))
        for c in np.nonzero(partition.community_street == s)[0]:
            comm_code = partition.community_codes[c]
            for i in range(int(rng.integers(1, 3))):
                rows.append((f"SQ{comm_code}{i + 1:02d}", "community_staff", ""))
            for g in np.nonzero(partition.grid_community == c)[0]:
                if owner[g] != g:
                    continue
                owned = [partition.grid_codes[g]]
                owned += [partition.grid_codes[x] for x in np.nonzero(owner == g)[0] if x != g]
                rows.append((f"WG{partition.grid_codes[g]}", "grid_worker", ";".join(owned)))
    n = len(rows)
    return pd.DataFrame(
        {
            "code": [r[0] for r in rows],
            "name": _draw_person_names(n, rng),
            "phone": _draw_mobile_phones(n, rng),
            "role": [r[1] for r in rows],
            "grid_codes": [r[2] for r in rows],
        }
    )


def _grid_neighbours(partition: Partition) -> list[set[int]]:
    """Grids sharing a lattice edge inside the same community."""
    labels = partition.grid_of_cell
    pairs = np.concatenate(
        [
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),
            np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),
        ]
    )
    pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0) & (pairs[:, 0] != pairs[:, 1])]
    same = partition.grid_community[pairs[:, 0]] == partition.grid_community[pairs[:, 1]]
    neighbours: list[set[int]] = [set() for _ in partition.grid_codes]
    for a, b in np.unique(pairs[same], axis=0).tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    return neighbours


def _draw_person_names(n: int, rng: np.random.Generator) -> list[str]:
    # Surname frequencies fall off roughly like 1/rank in China's census tables.
    weights = 1.0 / (np.arange(len(_SURNAMES)) + 4.0)
    surnames = rng.choice(len(_SURNAMES), size=n, p=weights / weights.sum())
    given = rng.choice(len(_GIVEN_CHARS), size=(n, 2))
    two_chars = rng.random(n) < 0.6
    return [
        _SURNAMES[s] + _GIVEN_CHARS[g[0]] + (_GIVEN_CHARS[g[1]] if two else "")
        for s, g, two in zip(surnames, given, two_chars, strict=True)
    ]


def _draw_mobile_phones(n: int, rng: np.random.Generator) -> list[str]:
    prefixes = rng.choice(len(_MOBILE_PREFIXES), size=n)
    # Distinct 8-digit tails make every number unique whatever the prefix.
    tails = rng.choice(100_000_000, size=n, replace=False)
    return [f"{_MOBILE_PREFIXES[p]}{t:08d}" for p, t in zip(prefixes, tails, strict=True)]


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
def build_cases_gdf(
    lattice: Lattice,
    blocks: Blocks,
    buildings_gdf: gpd.GeoDataFrame,
    partition: Partition,
    names: Names,
    preset: DistrictSize,
    rng: np.random.Generator,
) -> gpd.GeoDataFrame:
    """Draw a year of cases: where (hotspots, housing, background), when (daily, weekly and
    seasonal cycles per source) and what (skewed subclasses, heating in winter)."""
    n = preset.n_cases
    source = rng.choice(len(CASE_SOURCES), size=n, p=_SOURCE_P)
    local_s = _draw_local_seconds(source, rng)
    u, v, anchor, place = _draw_case_places(
        lattice, blocks, buildings_gdf, partition, names, preset, n, rng
    )
    day = local_s // 86_400
    days = np.datetime64("2025-11-01") + np.arange(366)
    month = (days.astype("datetime64[M]").astype(np.int64) % 12 + 1)[day]
    categories = _read_categories()
    subclass = _draw_subclasses(categories, month, anchor, source, rng)

    order = np.argsort(local_s, kind="stable")
    local_s, day, source, subclass = local_s[order], day[order], source[order], subclass[order]
    u, v, place = u[order], v[order], place[order]
    daily_seq = np.arange(n) - np.searchsorted(day, day) + 1
    day_label = np.char.replace(np.datetime_as_string(days, unit="D"), "-", "")[day]
    code = [f"SJ{d}{s:05d}" for d, s in zip(day_label, daily_seq, strict=True)]

    sub_names = categories["name"].to_numpy()[subclass]
    template_pick = rng.random(n)
    description = [
        _DESCRIPTION_TEMPLATES[s][int(t * len(_DESCRIPTION_TEMPLATES[s]))].format(place=p, name=nm)
        for s, t, p, nm in zip(source, template_pick, place, sub_names, strict=True)
    ]
    start_utc_ns = CASE_PERIOD_START.tz_convert("UTC").tz_localize(None).to_datetime64()
    reported = pd.DatetimeIndex(
        start_utc_ns.astype("datetime64[ns]") + local_s.astype("timedelta64[s]")
    ).tz_localize("UTC")
    lon, lat = lattice.to_lonlat(u, v)
    frame = pd.DataFrame(
        {
            "code": code,
            "category_code": categories["code"].to_numpy()[subclass],
            "description": description,
            "source": np.asarray(CASE_SOURCES, dtype=object)[source],
            "reported_at": reported.as_unit("ns"),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=shapely.points(lon, lat), crs="EPSG:4326")


def _draw_local_seconds(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds since the period start (local time), drawn per source from day and hour
    weights: weekly rhythm, a mild summer peak and the Spring Festival lull."""
    n_days = int((CASE_PERIOD_END - CASE_PERIOD_START) / pd.Timedelta(days=1))
    days = np.datetime64("2025-11-01") + np.arange(n_days)
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    doy = (days - days.astype("datetime64[Y]")).astype(np.int64)
    season = 1.0 + 0.15 * np.cos(2 * np.pi * (doy - 196) / 365.0)
    festival = (days >= np.datetime64("2026-02-14")) & (days <= np.datetime64("2026-02-23"))
    season = season * np.where(festival, 0.55, 1.0)
    seconds = np.empty(len(source), dtype=np.int64)
    for s in range(len(CASE_SOURCES)):
        idx = np.nonzero(source == s)[0]
        day_w = season * _WEEKDAY_W[s][weekday]
        day = rng.choice(n_days, size=len(idx), p=day_w / day_w.sum())
        hour = rng.choice(24, size=len(idx), p=_HOUR_W[s] / _HOUR_W[s].sum())
        seconds[idx] = day * 86_400 + hour * 3600 + rng.integers(0, 3600, len(idx))
    return seconds


def _draw_case_places(
    lattice: Lattice,
    blocks: Blocks,
    buildings_gdf: gpd.GeoDataFrame,
    partition: Partition,
    names: Names,
    preset: DistrictSize,
    n: int,
    rng: np.random.Generator,
):
    """Mix Gaussian hotspots (markets, old compounds), points at homes and a uniform
    background; redraw any point that falls outside the district."""
    n_hot = int(round(0.40 * n))
    n_home = int(round(0.45 * n))
    n_bg = n - n_hot - n_home

    # Hotspots: markets in commercial blocks, old compounds in walk-up blocks.
    cell_type = blocks.cell_type
    centres_u, centres_v, spot_anchor = [], [], []
    for k in range(preset.n_hotspots):
        wanted = 3 if k % 2 == 0 else 0
        cand_r, cand_c = np.nonzero(cell_type == wanted)
        if len(cand_r) == 0:
            cand_r, cand_c = np.nonzero(lattice.active)
        pick = int(rng.integers(0, len(cand_r)))
        u0, v0, u1, v1 = blocks.inner_box_m[cand_r[pick], cand_c[pick]]
        centres_u.append((u0 + u1) / 2)
        centres_v.append((v0 + v1) / 2)
        spot_anchor.append(0 if wanted == 3 else 1)
    centres_u, centres_v = np.asarray(centres_u), np.asarray(centres_v)
    spot_w = rng.lognormal(0.0, 0.6, preset.n_hotspots)
    spot_sigma_m = rng.uniform(60.0, 220.0, preset.n_hotspots)

    # Homes: weighted by households, with some weight on shops so markets draw cases too.
    hh = buildings_gdf["households"].to_numpy().astype(float)
    home_w = hh + 3.0
    b_u, b_v = blocks.center_u_m, blocks.center_v_m  # same order as buildings_gdf
    b_names = buildings_gdf["name"].to_numpy()

    district = partition.district_geom
    shapely.prepare(district)
    act_r, act_c = np.nonzero(lattice.active)
    box_u = (lattice.u_edges_m[act_c.min()] - 20, lattice.u_edges_m[act_c.max() + 1] + 20)
    box_v = (lattice.v_edges_m[act_r.max() + 1] - 20, lattice.v_edges_m[act_r.min()] + 20)

    u = np.empty(n)
    v = np.empty(n)
    anchor = np.empty(n, dtype=np.int64)
    place = np.empty(n, dtype=object)
    named = np.zeros(n, dtype=bool)
    component = np.concatenate(
        [np.zeros(n_hot, np.int64), np.ones(n_home, np.int64), np.full(n_bg, 2, np.int64)]
    )
    todo = np.arange(n)
    for _ in range(200):
        comp = component[todo]
        hot, home, bg = todo[comp == 0], todo[comp == 1], todo[comp == 2]
        spot = rng.choice(preset.n_hotspots, size=len(hot), p=spot_w / spot_w.sum())
        u[hot] = centres_u[spot] + rng.standard_normal(len(hot)) * spot_sigma_m[spot]
        v[hot] = centres_v[spot] + rng.standard_normal(len(hot)) * spot_sigma_m[spot]
        anchor[hot] = np.asarray(spot_anchor)[spot]
        named[hot] = False
        b = rng.choice(len(home_w), size=len(home), p=home_w / home_w.sum())
        u[home] = b_u[b] + rng.normal(0.0, 12.0, len(home))
        v[home] = b_v[b] + rng.normal(0.0, 12.0, len(home))
        anchor[home] = np.where(hh[b] > 0, 1, 0)
        place[home] = b_names[b]
        named[home] = True
        u[bg] = rng.uniform(*box_u, len(bg))
        v[bg] = rng.uniform(*box_v, len(bg))
        anchor[bg] = 2
        named[bg] = False
        lon, lat = lattice.to_lonlat(u[todo], v[todo])
        todo = todo[~shapely.contains_xy(district, lon, lat)]
        if len(todo) == 0:
            break
    else:
        raise RuntimeError("could not place all cases inside the district")

    # Cases away from a named building are described by their nearest road.
    no_place = np.nonzero(~named)[0]
    place[no_place] = _nearest_road_names(lattice, names, u[no_place], v[no_place])
    return u, v, anchor, place


def _nearest_road_names(lattice: Lattice, names: Names, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cols, rows = lattice.cols, lattice.rows
    col = np.clip(np.searchsorted(lattice.u_edges_m, u) - 1, 0, cols - 1)
    row = np.clip(np.searchsorted(-lattice.v_edges_m, -v) - 1, 0, rows - 1)
    gaps = np.stack(
        [
            u - lattice.u_edges_m[col],
            lattice.u_edges_m[col + 1] - u,
            lattice.v_edges_m[row] - v,
            v - lattice.v_edges_m[row + 1],
        ]
    )
    nearest = np.argmin(gaps, axis=0)
    col_names = np.asarray(names.col_road, dtype=object)
    row_names = np.asarray(names.row_road, dtype=object)
    road = np.select(
        [nearest == 0, nearest == 1, nearest == 2],
        [col_names[col], col_names[col + 1], row_names[row]],
        row_names[row + 1],
    )
    return np.asarray([f"{r}附近" for r in road], dtype=object)


def _draw_subclasses(
    categories: pd.DataFrame,
    month: np.ndarray,
    anchor: np.ndarray,
    source: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw a subclass index per case from skewed weights adjusted by month, anchor and
    source; heating failures all but vanish outside the heating season."""
    codes = categories["code"].to_numpy()
    classes = categories["class_code"].to_numpy()
    base = rng.lognormal(0.0, 0.6, len(codes))
    base *= np.array([_SUBCLASS_SKEW.get(c, 1.0) for c in codes])

    def class_skew(skew: dict[str, float]) -> np.ndarray:
        return np.array([skew.get(c, 1.0) for c in classes])

    anchor_mult = [class_skew(s) for s in _ANCHOR_CLASS_SKEW]
    source_mult = [class_skew(s) for s in _SOURCE_CLASS_SKEW]
    heating = codes == "0601"
    out = np.empty(len(month), dtype=np.int64)
    group = (month - 1) * 9 + anchor * 3 + source
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(12 * 9 + 1))
    for g in range(12 * 9):
        idx = order[bounds[g] : bounds[g + 1]]
        if len(idx) == 0:
            continue
        m, a, s = g // 9 + 1, (g % 9) // 3, g % 3
        w = base * anchor_mult[a] * source_mult[s]
        w = np.where(heating, w * _HEATING_MONTH_SKEW.get(m, 0.02), w)
        if m in (6, 7, 8):
            w = w * np.array([_SUMMER_SUBCLASS_SKEW.get(c, 1.0) for c in codes])
        out[idx] = rng.choice(len(codes), size=len(idx), p=w / w.sum())
    return out
