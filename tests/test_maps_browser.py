"""The served maps in real headless Chromium (Debian's chromium + chromedriver).

The small demo district is loaded once into a SpatiaLite store and served by a real
uvicorn server; each map is loaded once. Every request the page makes must succeed and
stay on the test server, the console must hold no errors, and the Leaflet layers must
be there (counted from the map object). A screenshot of each map goes to
test-artifacts/. The served data on both stores is checked in tests/test_maps.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from api.settings import Settings
from data.demo import generate_district
from data.loader import load_district
from gis.db.engine import make_engine, make_sessionmaker, migrate
from tests.server import serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# Counts Leaflet layers on the page's map by kind; a GeoJSON feature's id is its code.
COUNT_LAYERS_JS = """
const map = Object.values(window).find(v => v instanceof L.Map);
const out = {polygons: {}, circleMarkers: 0, circles: 0, polylines: 0, clusters: 0,
             clustered: 0, heat: 0, heatPoints: 0, legends: [], overlays: 0, tagged: {},
             uncovered: 0, routeVertices: [], counts: {}};
map.eachLayer(l => {
  if (L.MarkerClusterGroup && l instanceof L.MarkerClusterGroup) { out.clusters++;
    out.clustered += l.getLayers().length; return; }
  if (L.HeatLayer && l instanceof L.HeatLayer) { out.heat++;
    out.heatPoints += l._latlngs.length; return; }
  if (l.feature && l.feature.properties && 'walk_min' in l.feature.properties) {
    out.uncovered++; return; }
  if (l.feature && String(l.feature.id).includes(':')) {
    const tag = String(l.feature.id).split(':')[0]; out.tagged[tag] = (out.tagged[tag] || 0) + 1;
    return; }
  if (l instanceof L.Circle) { out.circles++; return; }
  if (l instanceof L.CircleMarker) { out.circleMarkers++; return; }
  if (l instanceof L.Polygon) { const n = l.feature ? String(l.feature.id).length : 0;
    out.polygons[n] = (out.polygons[n] || 0) + 1; return; }
  if (l instanceof L.Polyline) { out.polylines++;
    out.routeVertices.push(l.getLatLngs().length); return; }
});
document.querySelectorAll('[data-count-for]').forEach(d => {
  out.counts[d.dataset.countFor] = d.textContent; });
document.querySelectorAll('.wangge-legend').forEach(d => out.legends.push(d.dataset.legend));
out.overlays = document.querySelectorAll('.leaflet-control-layers-overlays label').length;
return out;
"""


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The small demo on SpatiaLite, served; yields (base URL, API facts)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('maps') / 'demo.sqlite'}"
    engine = make_engine(url)
    migrate(engine)
    load_district(make_sessionmaker(engine), generate_district("small"))
    engine.dispose()
    # The development identity headers stand in for a login (the browser sends none,
    # so every request acts as an admin, as in the other tests); built here because a
    # module-scoped server starts before conftest's per-test environment.
    settings = Settings(database_url=url, dev_role_headers=True, dev_default_role="admin")
    with serve(settings) as base:
        api = f"{base}/api/v1"
        grids = httpx.get(f"{api}/areas", params={"level": "grid", "limit": 1}).json()
        stations = httpx.get(f"{api}/stations", params={"limit": 1}).json()
        coverage = httpx.get(f"{api}/coverage", params={"kind": "neighbourhood", "limit": 1})
        all_kinds = httpx.get(f"{base}/maps/coverage", params={"layer": "uncovered"})
        facts = {
            "grids": grids["numberMatched"],
            "first_grid": grids["features"][0]["properties"]["code"],
            "stations": stations["numberMatched"],
            "uncovered": len(all_kinds.json()["features"]),
            "uncovered_neighbourhood": coverage.json()["uncovered"]["numberMatched"],
            "cases": 4000,  # the small demo's year of cases
            "store_url": url,
        }
        yield base, facts


def start_chromium(profile_dir: Path) -> webdriver.Chrome:
    """Headless Chromium with its own profile (its own cookies), logging the console
    and the network."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get("about:blank")
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def load_page(driver, url: str) -> dict:
    """Load `url`; return its requests, failures and console errors, and layer counts
    (`page_report`)."""
    driver.get_log("performance")  # drop entries from earlier pages
    driver.get_log("browser")
    driver.get(url)
    return page_report(driver, url)


def wait_for_document(driver, url: str) -> None:
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not finish loading")
        time.sleep(0.05)


def page_report(driver, url: str) -> dict:
    """What the page at `url` (loaded since the logs were last read) requested, what
    failed, the console errors and its layer counts."""
    wait_for_document(driver, url)
    time.sleep(0.5)  # let Leaflet draw and the heat layer paint
    wait_for_layers(driver)
    # Only requests made by the map page count; the browser's own start page is not ours.
    url_of, failed = {}, []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        if method == "Network.requestWillBeSent" and params.get("documentURL") == url:
            url_of[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed" and params["requestId"] in url_of:
            failed.append((url_of[params["requestId"]], params["errorText"]))
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            failed.append((params["response"]["url"], params["response"]["status"]))
    requests = list(url_of.values())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    return {
        "requests": requests,
        "failed": failed,
        "errors": errors,
        "layers": driver.execute_script(COUNT_LAYERS_JS),
    }


def wait_for_layers(driver, timeout_s: float = 30) -> None:
    """Wait until the layers the page fetches have arrived (`wanggePending` is 0)."""
    deadline = time.monotonic() + timeout_s
    while driver.execute_script("return window.wanggePending || 0") > 0:
        if time.monotonic() > deadline:
            raise AssertionError("the page's layers did not load")
        time.sleep(0.05)
    time.sleep(0.2)


def check_clean(page: dict, base: str) -> None:
    assert page["failed"] == []
    assert page["errors"] == []
    outside = [u for u in page["requests"] if not u.startswith((base, "data:"))]
    assert outside == [], "requests left the machine"
    assert any(u.endswith("/maps/static/leaflet/leaflet.js") for u in page["requests"])


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"map-{name}.png"))


@pytest.fixture(scope="module", autouse=True)
def _need_chromium():
    # A missing browser fails the run rather than skipping it (conftest forbids skips).
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), "install chromium-driver"


def test_coverage_map_in_browser(demo_server, browser):
    base, facts = demo_server
    page = load_page(browser, f"{base}/maps/coverage")
    check_clean(page, base)
    layers = page["layers"]
    assert layers["polygons"]["15"] == facts["grids"]  # grids have 15-digit codes
    assert layers["polygons"]["12"] >= 1  # community outlines
    assert layers["polygons"]["9"] >= 1  # street outlines
    assert layers["circleMarkers"] == facts["stations"]
    assert layers["circles"] == 0  # the demo stores its streets: isochrones, not radii
    # The page fetched its large layers: the first kind's isochrones and the uncovered
    # buildings (as many as the API counts), and the legend shows that count.
    fetched = [u for u in page["requests"] if "layer=" in u]
    assert len(fetched) == 2 and all(u.startswith(f"{base}/maps/coverage?") for u in fetched)
    assert layers["tagged"] == {"isochrone": 1}
    assert layers["uncovered"] == facts["uncovered"] > 0
    assert layers["counts"] == {"uncovered": str(facts["uncovered"])}
    assert sorted(layers["legends"]) == ["coverage", "share", "station_kind"]
    screenshot(browser, "coverage")

    # Another kind's isochrones load when switched on in the layer control.
    browser.execute_script(
        """
        const labels = [...document.querySelectorAll('.leaflet-control-layers-overlays label')];
        const off = labels.find(l => l.textContent.includes('步行等时圈')
                                     && !l.querySelector('input').checked);
        off.querySelector('input').click();
        """
    )
    wait_for_layers(browser)
    assert browser.execute_script(COUNT_LAYERS_JS)["tagged"] == {"isochrone": 2}
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_grid_map_in_browser(demo_server, browser):
    base, facts = demo_server
    page = load_page(browser, f"{base}/maps/grids/{facts['first_grid']}?lang=en")
    check_clean(page, base)
    layers = page["layers"]
    assert layers["polygons"]["15"] >= 2  # the grid and its neighbours
    assert sum(v for k, v in layers["polygons"].items() if k != "15") >= 1  # buildings
    assert "Grid" in browser.title
    screenshot(browser, "grid")


def test_nearest_map_in_browser(demo_server, browser):
    base, _facts = demo_server
    page = load_page(browser, f"{base}/maps/nearest?lon=123.43&lat=41.80&k=3")
    check_clean(page, base)
    layers = page["layers"]
    assert layers["circleMarkers"] == 3 + 1  # three stations and the resident
    assert layers["polylines"] == 3  # one walking route to each
    assert all(n > 2 for n in layers["routeVertices"])  # along the streets, not straight
    labels = browser.execute_script(
        "return [...document.querySelectorAll('.leaflet-tooltip')].map(t => t.textContent)"
    )
    assert len(labels) == 3 and all("分钟" in t for t in labels)  # minutes on screen
    assert layers["legends"] == ["nearest"]
    screenshot(browser, "nearest")


def test_cases_map_in_browser(demo_server, browser):
    base, _facts = demo_server
    page = load_page(browser, f"{base}/maps/cases")
    check_clean(page, base)
    layers = page["layers"]
    assert layers["heat"] == 1
    assert layers["clusters"] >= 5  # one cluster layer per category class with cases
    assert layers["clustered"] > 0
    assert layers["legends"] == ["case_status"]
    screenshot(browser, "cases")


def test_large_cases_map_fetches_its_points_in_browser(demo_server, browser):
    base, facts = demo_server
    page = load_page(browser, f"{base}/maps/cases?since=2000-01-01")  # the whole year
    check_clean(page, base)
    layers = page["layers"]
    assert [u for u in page["requests"] if "layer=cases" in u]
    assert layers["heat"] == 1 and layers["heatPoints"] == facts["cases"]
    assert layers["clustered"] == facts["cases"]
    assert layers["clusters"] >= 5
    screenshot(browser, "cases-fetched")


# ------------------------------------------------------------------ logging in

LOGIN_SECRET = "a-browser-test-secret-of-32-bytes!!"
LOGIN_PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def login_server(demo_server):
    """The same demo store served with real logins (no development identity headers):
    a grid worker and an admin who log in through the form. Yields (base URL, facts)."""
    from gis.db import users_repo

    dev_base, facts = demo_server
    api = f"{dev_base}/api/v1"
    grid = facts["first_grid"]
    (worker,) = httpx.get(f"{api}/workers", params={"grid": grid, "role": "grid_worker"}).json()[
        "workers"
    ]
    areas = httpx.get(f"{api}/areas", params={"limit": 1000}).json()["features"]
    parent = {f["properties"]["code"]: f["properties"]["parent_code"] for f in areas}
    grids = [f["properties"]["code"] for f in areas if f["properties"]["level"] == "grid"]

    def street(code: str) -> str:
        return parent[parent[code]]  # grid -> community -> street

    other = next(g for g in grids if street(g) != street(grid))
    engine = make_engine(facts["store_url"])
    with make_sessionmaker(engine).begin() as s:
        users_repo.add_user(s, "wg1", LOGIN_PASSWORD, "worker", scope=worker["code"])
        users_repo.add_user(s, "boss", LOGIN_PASSWORD, "admin")
    engine.dispose()
    buildings = httpx.get(f"{api}/buildings", params={"grid": grid, "limit": 1})
    settings = Settings(
        database_url=facts["store_url"], dev_role_headers=False, secret_key=LOGIN_SECRET
    )
    with serve(settings) as base:
        yield (
            base,
            {
                "grid": grid,
                "other_street_grid": other,
                "buildings": buildings.json()["numberMatched"],
                "uncovered": facts["uncovered"],
            },
        )


@pytest.fixture
def login_browser(tmp_path):
    """A browser of its own: its login cookie must not reach the other tests' server
    (cookies do not tell ports apart)."""
    driver = start_chromium(tmp_path / "chromium-login-profile")
    try:
        yield driver
    finally:
        driver.quit()


def log_in_through_the_form(driver, base: str, target: str, username: str) -> dict:
    """Open `target` unauthenticated, land on the login form, log in; the report of
    the page the form leads back to."""
    from selenium.webdriver.common.by import By

    driver.get(base + target)
    wait_for_document(driver, base + target)
    landed = urlsplit(driver.current_url)
    assert landed.path == "/login" and parse_qs(landed.query)["next"] == [target]
    driver.get_log("performance")  # from here on: the form's post and the map
    driver.get_log("browser")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(LOGIN_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    deadline = time.monotonic() + 10
    while driver.current_url != base + target:
        if time.monotonic() > deadline:
            raise AssertionError(f"not sent back to {target}: at {driver.current_url}")
        time.sleep(0.05)
    return page_report(driver, base + target)


def document_status(driver, url: str) -> int:
    """The HTTP status of the last document loaded from `url`."""
    statuses = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.responseReceived" and params.get("type") == "Document":
            if params["response"]["url"] == url:
                statuses.append(params["response"]["status"])
    assert statuses, f"no document answer for {url}"
    return statuses[-1]


def test_worker_logs_in_and_opens_their_grid_map(login_server, login_browser):
    base, facts = login_server
    driver = login_browser
    target = f"/maps/grids/{facts['grid']}"
    # The login form, before anyone is logged in.
    driver.get(f"{base}/login?next={target}")
    wait_for_document(driver, f"{base}/login")
    assert "登录" in driver.title
    driver.get_log("browser")
    screenshot(driver, "login")

    page = log_in_through_the_form(driver, base, target, "wg1")
    check_clean(page, base)
    assert not any("/login" in u for u in page["requests"])  # straight to the map
    layers = page["layers"]
    assert layers["polygons"]["15"] >= 2  # the grid and its neighbours
    buildings = sum(v for k, v in layers["polygons"].items() if k != "15")
    assert buildings == facts["buildings"] > 0
    overlays = driver.execute_script(
        "return [...document.querySelectorAll('.leaflet-control-layers-overlays label')]"
        ".map(l => l.textContent.trim())"
    )
    assert any(o.startswith(f"楼栋 ({facts['buildings']})") for o in overlays), overlays
    assert any(o.startswith("驿站") for o in overlays), overlays
    assert facts["grid"] in driver.title
    cookie = driver.get_cookie("wangge_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert driver.execute_script("return document.cookie") == ""  # not readable by scripts

    # Another street's grid is outside the worker's scope: refused, not a login loop.
    other = f"{base}/maps/grids/{facts['other_street_grid']}"
    driver.get_log("performance")
    driver.get(other)
    wait_for_document(driver, other)
    assert document_status(driver, other) == 403
    assert driver.current_url == other


def test_admin_logs_in_and_the_coverage_map_fetches_its_layers(login_server, login_browser):
    """The coverage map fetches its large layers with fetch(): they go with the cookie
    (same-origin credentials) and pass the same access rule as the page."""
    base, facts = login_server
    page = log_in_through_the_form(login_browser, base, "/maps/coverage", "boss")
    check_clean(page, base)
    fetched = [u for u in page["requests"] if "layer=" in u]
    assert len(fetched) == 2 and all(u.startswith(f"{base}/maps/coverage?") for u in fetched)
    assert page["layers"]["uncovered"] == facts["uncovered"] > 0
