"""Map labels, legends and tooltips: Simplified Chinese by default, English on request."""

from __future__ import annotations

from gis.domain import STATION_KINDS

LANGS = ("zh", "en")

_LABELS: dict[str, tuple[str, str]] = {
    # layers
    "grids": ("网格", "Grids"),
    "communities": ("社区边界", "Community boundaries"),
    "streets": ("街道边界", "Street boundaries"),
    "stations": ("驿站", "Stations"),
    "isochrones": ("步行等时圈", "Walking isochrones"),
    "radius": (
        "{minutes}分钟步行圈（直线半径约{radius_m}米）",
        "{minutes}-minute walk (about {radius_m} m straight-line radius)",
    ),
    "uncovered": ("未覆盖楼栋", "Buildings not covered"),
    "buildings": ("楼栋", "Buildings"),
    "neighbours": ("相邻网格", "Neighbouring grids"),
    "cases": ("事件", "Cases"),
    "open_cases_layer": ("未办结事件", "Open cases"),
    "heatmap": ("事件热力图", "Case heat map"),
    "residents": ("关爱对象", "Cared-for residents"),
    "you": ("您的位置", "You are here"),
    "routes": ("步行路线", "Walking routes"),
    # fields
    "grid_code": ("网格编码", "Grid code"),
    "grid_name": ("网格名称", "Grid"),
    "worker": ("网格员", "Grid worker"),
    "households": ("户数", "Households"),
    "floors": ("楼层", "Floors"),
    "open_cases": ("未办结事件", "Open cases"),
    "share": ("占社区平均", "Share of community mean"),
    "name": ("名称", "Name"),
    "kind": ("类型", "Kind"),
    "hours": ("开放时间", "Opening hours"),
    "address": ("地址", "Address"),
    "code": ("编码", "Code"),
    "category": ("类别", "Category"),
    "status": ("状态", "Status"),
    "reported_at": ("上报时间", "Reported"),
    "deadline_at": ("办结时限", "Deadline"),
    "minutes": ("步行分钟", "Walking minutes"),
    "distance_m": ("距离（米）", "Distance (m)"),
    "open_now": ("当前开放", "Open now"),
    "care_group": ("关爱类别", "Care group"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
    "unknown": ("未知", "unknown"),
    "open": ("开放中", "open"),
    "closed": ("已关闭", "closed"),
    "none": ("无", "none"),
    # legends
    "legend_share_households": (
        "网格户数占社区平均（%）·工作量数据接入前以户数代替",
        "Grid households, % of community mean (stand-in until workload data lands)",
    ),
    "legend_share_workload": ("网格工作量占社区平均（%）", "Grid workload, % of community mean"),
    "legend_case_status": ("事件状态", "Case status"),
    "legend_station_kind": ("驿站类型", "Station kind"),
    "legend_nearest": ("最近驿站", "Nearest stations"),
    "straight_line": (
        "虚线：直线距离×绕行系数估算（未存储路网）",
        "dashed: straight line × detour factor (no street network stored)",
    ),
    "walk_route": ("实线：沿路网的步行路线", "solid: walking route on the street network"),
    "legend_coverage": ("驿站覆盖", "Station coverage"),
    "legend_isochrone": ("{minutes}分钟步行可达范围", "within {minutes} minutes on foot"),
    "legend_radius": ("{minutes}分钟步行半径", "{minutes}-minute walking radius"),
    "legend_uncovered": ("未覆盖楼栋（步行超过{minutes}分钟）", "buildings beyond {minutes} min"),
    "walk_network": ("按路网最短步行路径计算", "walks on the street network (shortest path)"),
    "walk_straight": (
        "未存储路网：按直线距离×绕行系数估算",
        "no street network stored: straight line × detour factor",
    ),
    "n_minutes": ("{minutes}分钟", "{minutes} min"),
    "minutes_short": ("{minutes}分钟", "{minutes} min"),
    "no_data": ("无数据", "no data"),
    "overdue": ("已超时", "overdue"),
    # titles
    "title_coverage": ("网格覆盖与驿站", "Grid coverage and stations"),
    "title_worker": ("网格 {code}", "Grid {code}"),
    "title_nearest": ("离我最近的驿站", "Nearest stations"),
    "title_cases": ("事件分布", "Cases"),
}

_STATUS: dict[str, tuple[str, str]] = {
    "reported": ("已上报", "reported"),
    "dispatched": ("已派遣", "dispatched"),
    "accepted": ("已受理", "accepted"),
    "in_progress": ("处置中", "in progress"),
    "returned": ("已退回", "returned"),
    "escalated": ("已上报上级", "escalated"),
    "resolved": ("已处置", "resolved"),
    "evaluated": ("已评价", "evaluated"),
    "closed": ("已结案", "closed"),
    "duplicate": ("重复", "duplicate"),
    "rejected": ("不予受理", "rejected"),
}

_CARE_GROUPS: dict[str, tuple[str, str]] = {
    "elderly_alone": ("独居老人", "elderly living alone"),
    "bereaved_parents": ("失独家庭", "bereaved parents"),
    "low_income": ("低保户", "low income"),
    "disabled": ("残疾人", "disabled"),
    "reemployment": ("再就业人员", "re-employment"),
    "veterans": ("退役军人", "veterans"),
    "community_corrections": ("社区矫正人员", "community corrections"),
}


def check_lang(lang: str) -> str:
    """`lang` if wangge has labels for it; ValueError otherwise."""
    if lang not in LANGS:
        raise ValueError(f"unknown map language {lang!r}; use one of {', '.join(LANGS)}")
    return lang


def _pick(pair: tuple[str, str], lang: str) -> str:
    return pair[LANGS.index(check_lang(lang))]


def label(key: str, lang: str = "zh", **values) -> str:
    """The label `key` in `lang`, with `{placeholders}` filled from `values`."""
    text = _pick(_LABELS[key], lang)
    return text.format(**values) if values else text


def station_kind_label(kind: str, lang: str = "zh") -> str:
    """A station kind's display name (the Chinese name, or the English key spelled out)."""
    if lang == "zh":
        return STATION_KINDS.get(kind, kind)
    return kind.replace("_", " ")


def status_label(status: str, lang: str = "zh") -> str:
    return _pick(_STATUS[status], lang) if status in _STATUS else status


def care_group_label(group: str, lang: str = "zh") -> str:
    return _pick(_CARE_GROUPS[group], lang) if group in _CARE_GROUPS else group
