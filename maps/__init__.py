"""Folium maps: pure renderers (`maps.render`) and the offline assets they load."""

from maps.render import render_cases, render_coverage, render_nearest, render_worker_area

__all__ = ["render_cases", "render_coverage", "render_nearest", "render_worker_area"]
