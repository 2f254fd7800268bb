"""Vocabulary shared by the core, the stores and the front doors."""

from __future__ import annotations

#: Station kinds: English key -> Chinese name.
STATION_KINDS: dict[str, str] = {
    "neighbourhood": "近邻驿站",
    "new_employment": "暖新驿站",
    "convenience": "便民驿站",
    "shared": "共享驿站",
    "party_service": "党群服务中心",
    "mediation": "评理议事厅",
    "health": "健康驿站",
}

LEVEL_NAMES: dict[str, str] = {
    "district": "区",
    "street": "街道",
    "community": "社区",
    "grid": "网格",
}

CASE_SOURCES = ("resident", "worker", "hotline")
