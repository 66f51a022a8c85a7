"""time_slider and save_html: the plot object, its errors, and the saved page in Chromium.

The browser test serves the saved page from a loopback HTTP server (port 0, in a
thread) rather than loading it as ``file://``: the server records every request, so
the test can assert that the page fetched nothing but itself (no sibling JSON/JS files
and, together with the console log and the Resource Timing entries, no CDN), and http
is how such a page is usually published.
"""

from __future__ import annotations

import functools
import http.server
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers da.rio)
import xarray as xr

from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError
from xarray_terrascope.plot import save_html, time_slider

from ..support.helpers import missing_tier

logger = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,800",
)
TIMES = pd.date_range("2025-05-01", periods=4, freq="5D")
LABELS = ["2025-05-01", "2025-05-06", "2025-05-11", "2025-05-16"]
NY, NX = 60, 80
NAN_ROWS, NAN_COLS = 10, 12  # the no-data block in the north-west corner, every date


@pytest.fixture
def cube() -> xr.DataArray:
    """A (time=4, y=60, x=80) NDVI cube in UTM 31N at 10 m, greener at every date."""
    x = 700005.0 + 10.0 * np.arange(NX)
    y = 5680005.0 - 10.0 * np.arange(NY)
    ramp = np.linspace(-0.05, 0.35, NX, dtype=np.float32)  # west -> east
    data = np.stack([np.tile(ramp + np.float32(0.18 * i), (NY, 1)) for i in range(len(TIMES))])
    data[:, :NAN_ROWS, :NAN_COLS] = np.nan
    data[2, 30:40, :] = np.nan  # a cloud stripe on the third date only
    da = xr.DataArray(
        data.astype(np.float32),
        dims=("time", "y", "x"),
        coords={
            "time": TIMES,
            "y": y,
            "x": x,
            "platform": ("time", ["sentinel-2a", "sentinel-2b"] * 2),
            "cloud_cover": ("time", [1.0, 5.5, 40.0, 0.0]),
            "item_ids": ("time", [f"S2_item_{i}" for i in range(len(TIMES))]),
        },
        name="NDVI",
        attrs={"long_name": "NDVI", "units": "1"},
    )
    return da.rio.write_crs("EPSG:32631")


def _colour_mapper(plot: Any) -> tuple[Any, Any]:
    """The rendered first frame (a Bokeh figure) and its colorbar."""
    import holoviews as hv
    from bokeh.models import ColorBar

    figure = hv.render(plot[0].object)
    colorbar = figure.select_one({"type": ColorBar})
    assert colorbar is not None, "the figure has no colorbar"
    return figure, colorbar


def _near(colour: str, expected: str) -> bool:
    """Two ``#rrggbb`` colours within 2 units per channel (palettes round differently)."""
    rgb = [int(colour.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)]
    want = [int(expected.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)]
    return all(abs(a - b) <= 2 for a, b in zip(rgb, want, strict=True))


# --------------------------------------------------------------------------- the object


def test_time_slider_has_a_date_slider_and_the_requested_colours(cube: xr.DataArray) -> None:
    import holoviews as hv
    import panel as pn

    plot = time_slider(cube, cmap="viridis", vmin=0.0, vmax=0.8, title="Field NDVI")

    sliders = plot.select(pn.widgets.DiscreteSlider)
    assert len(sliders) == 1
    slider = sliders[0]
    assert list(slider.options) == LABELS  # the labels read as dates
    assert [pd.Timestamp(v) for v in slider.values] == list(TIMES)
    assert slider.name == "Date"

    figure, colorbar = _colour_mapper(plot)
    mapper = colorbar.color_mapper
    assert (mapper.low, mapper.high) == (0.0, 0.8)
    assert _near(mapper.palette[0], "#440154")  # viridis: dark purple ...
    assert _near(mapper.palette[-1], "#fde725")  # ... to yellow
    assert mapper.nan_color in ("transparent", "rgba(0, 0, 0, 0)")
    assert colorbar.title == "NDVI"
    assert figure.title.text == "Field NDVI, Date: 2025-05-01"
    # square pixels: the 800 m x 600 m field fills the 600 x 500 box as 600 x 450
    assert (figure.frame_width, figure.frame_height) == (600, 450)
    # the axes name the CRS (issue 23), not only the unit
    assert figure.xaxis[0].axis_label == "x (m, EPSG:32631)"
    assert figure.yaxis[0].axis_label == "y (m, EPSG:32631)"

    dmap = plot[0].object
    assert isinstance(dmap, hv.DynamicMap)
    assert [d.name for d in dmap.kdims] == ["time"]
    frame = dmap[TIMES[1]]
    assert isinstance(frame, hv.Image)
    # the per-time coordinates (platform, cloud_cover, ...) did not become dimensions
    assert [d.name for d in frame.dimensions()] == ["x", "y", "NDVI"]
    np.testing.assert_allclose(
        np.nanmean(frame.dimension_values("NDVI")), float(cube.isel(time=1).mean()), rtol=1e-6
    )


def test_time_slider_defaults_are_the_ndvi_range_in_red_yellow_green(cube: xr.DataArray) -> None:
    _, colorbar = _colour_mapper(time_slider(cube.assign_attrs(units="m")))
    mapper = colorbar.color_mapper
    assert (mapper.low, mapper.high) == pytest.approx((-0.08, 0.92))
    assert _near(mapper.palette[0], "#a50026")  # RdYlGn: dark red ...
    assert _near(mapper.palette[-1], "#006837")  # ... to dark green
    assert colorbar.title == "NDVI (m)"


def test_open_colour_range_comes_from_the_data(cube: xr.DataArray) -> None:
    _, colorbar = _colour_mapper(time_slider(cube, vmin=None, vmax=None))
    first = cube.isel(time=0)
    assert colorbar.color_mapper.low == pytest.approx(float(first.min()), abs=1e-6)
    assert colorbar.color_mapper.high == pytest.approx(float(first.max()), abs=1e-6)


def test_two_images_on_one_day_get_labels_with_the_time(cube: xr.DataArray) -> None:
    import panel as pn

    times = pd.to_datetime(
        ["2025-05-01 10:56", "2025-05-01 11:06", "2025-05-06 00:00", "2025-05-11 00:00"]
    )
    plot = time_slider(cube.assign_coords(time=times))
    slider = plot.select(pn.widgets.DiscreteSlider)[0]
    assert list(slider.options)[:2] == ["2025-05-01 10:56", "2025-05-01 11:06"]
    assert len(slider.options) == 4


@pytest.mark.parametrize(
    ("transform", "missing"),
    [
        (lambda da: da.isel(time=0), ["'time'"]),
        (lambda da: da.rename(x="easting"), ["'x'"]),
        (lambda da: da.isel(time=0).rename(y="northing"), ["'time'", "'y'"]),
    ],
    ids=["no-time", "no-x", "no-time-no-y"],
)
def test_missing_dimensions_are_named(
    cube: xr.DataArray, transform: Callable[[xr.DataArray], xr.DataArray], missing: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        time_slider(transform(cube))
    message = str(info.value)
    assert "missing" in message
    for name in missing:
        assert name in message.split("missing")[1]
    present = {"'time'", "'y'", "'x'"} - set(missing)
    assert not any(name in message.split("missing")[1].split("(it has")[0] for name in present)
    assert isinstance(info.value, TerrascopeError)
    assert isinstance(info.value, ValueError)


def test_repeated_times_are_refused(cube: xr.DataArray) -> None:
    doubled = cube.assign_coords(time=[TIMES[0], TIMES[0], TIMES[1], TIMES[2]])
    with pytest.raises(InvalidArgumentError, match="repeated 'time'"):
        time_slider(doubled)


def test_tiles_without_geoviews_name_the_extra(
    cube: xr.DataArray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "geoviews", None)  # None makes `import geoviews` fail
    with pytest.raises(ImportError, match="pip install geoviews"):
        time_slider(cube, tiles="OSM")


def test_package_imports_without_hvplot_and_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "for name in ('hvplot', 'holoviews', 'panel'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np, xarray as xr\n"
        "import xarray_terrascope\n"
        "from xarray_terrascope.plot import time_slider\n"
        "da = xr.DataArray(np.zeros((1, 2, 2), 'float32'), dims=('time', 'y', 'x'),\n"
        "                  coords={'time': np.array(['2025-05-01'], 'datetime64[ns]'),\n"
        "                          'y': [1.0, 0.0], 'x': [0.0, 1.0]})\n"
        "try:\n"
        "    time_slider(da)\n"
        "except ImportError as exc:\n"
        "    sys.stdout.write(str(exc))\n"
        "else:\n"
        "    sys.exit('no ImportError')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert 'pip install "xarray-terrascope[plot]"' in done.stdout


def test_saved_page_is_standalone(cube: xr.DataArray, tmp_path: Path) -> None:
    import re

    target = tmp_path / "out" / "ndvi.html"
    written = save_html(time_slider(cube), target)
    assert written == target
    html = target.read_text(encoding="utf-8")
    assert "<title>ndvi</title>" in html
    # no script, stylesheet or icon loaded from elsewhere ...
    assert not re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?!data:)[^\"]+\"", html)
    # ... and no Panel CSS imported from its CDN at run time
    assert not re.findall(r'"url":"(https?://[^"]+)"', html)
    assert "cdn.holoviz.org" not in html
    # every date is embedded as a slider state
    assert '"embedded"' in html
    for label in LABELS:
        assert label in html


# --------------------------------------------------------------------------- overlay, hover

# Two parcels (UTM 31N corners) inside the cube, and one reaching out of it to the east.
PARCELS_UTM = [
    [(700100, 5679900), (700300, 5679910), (700290, 5679700), (700110, 5679720)],
    [(700400, 5679600), (700600, 5679600), (700600, 5679450), (700420, 5679460)],
    [(700700, 5679800), (700950, 5679800), (700950, 5679700), (700700, 5679700)],
]


@pytest.fixture
def parcels() -> Any:
    """The parcels as lon/lat polygons (EPSG:4326), as ``Sandbox.parcels()`` gives them."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(32631, 4326, always_xy=True)
    polygons = [
        shapely.Polygon(np.column_stack(to_lonlat.transform(*np.array(q, float).T)))
        for q in PARCELS_UTM
    ]
    return gpd.GeoDataFrame({"parcel_id": [1, 2, 3]}, geometry=polygons, crs="EPSG:4326")


def _hover(figure: Any) -> Any:
    from bokeh.models import HoverTool

    tools = figure.select({"type": HoverTool})
    assert len(tools) == 1
    return tools[0]


def test_overlay_draws_the_outlines_in_the_cube_crs(cube: xr.DataArray, parcels: Any) -> None:
    import holoviews as hv
    from bokeh.models import Image, MultiLine

    plot = time_slider(cube, title="NDVI", overlay=parcels, overlay_color="#ff00ff")
    figure = hv.render(plot[0].object)
    glyphs = [type(r.glyph) for r in figure.renderers]
    assert glyphs == [Image, MultiLine]
    lines = figure.renderers[1]
    assert lines.glyph.line_color == "#ff00ff"
    xs = [np.asarray(x) for x in lines.data_source.data["xs"]]
    ys = [np.asarray(y) for y in lines.data_source.data["ys"]]
    for q, x, y in zip(PARCELS_UTM[:2], xs, ys, strict=False):  # closed rings ...
        np.testing.assert_allclose(x, [c[0] for c in [*q, q[0]]], atol=1e-3)  # ... in metres
        np.testing.assert_allclose(y, [c[1] for c in [*q, q[0]]], atol=1e-3)
    # the third parcel is cut at the east edge of the map (x = 700800): the rest of its
    # outline, open there, in two pieces
    cut = np.concatenate(xs[2:])
    assert len(xs) == 4
    assert (cut.min(), cut.max()) == pytest.approx((700700.0, 700800.0), abs=1e-3)
    assert figure.title.text == "NDVI, Date: 2025-05-01"  # the date survives the overlay
    assert (figure.frame_width, figure.frame_height) == (600, 450)
    # the outlines have no hover of their own: the one hover tool is the image's
    assert _hover(figure).renderers in ("auto", [figure.renderers[0]])


def test_overlay_accepts_shapely_lonlat_and_refuses_what_it_cannot_place(
    cube: xr.DataArray, parcels: Any
) -> None:
    import holoviews as hv

    plot = time_slider(cube, overlay=list(parcels.geometry))  # no CRS: lon/lat
    xs = hv.render(plot[0].object).renderers[1].data_source.data["xs"]
    np.testing.assert_allclose(xs[0], [c[0] for c in [*PARCELS_UTM[0], PARCELS_UTM[0][0]]])
    with pytest.raises(InvalidArgumentError, match="no CRS"):
        time_slider(cube, overlay=parcels.set_crs(None, allow_override=True))
    with pytest.raises(InvalidArgumentError, match="shapely geometries"):
        time_slider(cube, overlay=["not a geometry"])
    with pytest.raises(InvalidArgumentError, match="Web Mercator"):
        time_slider(cube, overlay=parcels, tiles="OSM")


def test_hover_shows_longitude_and_latitude(cube: xr.DataArray) -> None:
    import holoviews as hv
    from bokeh.models import CustomJSHover

    hover = _hover(hv.render(time_slider(cube)[0].object))
    assert [label for label, _ in hover.tooltips] == [
        "x (m)",
        "y (m)",
        "longitude",
        "latitude",
        "NDVI",
    ]
    assert dict(hover.tooltips)["longitude"] == "$x{lon}"
    assert isinstance(hover.formatters["$x"], CustomJSHover)
    # a cube in lon/lat needs no conversion: its x and y are the longitude and latitude
    geographic = cube.assign_coords(x=5.87 + 1e-4 * np.arange(NX), y=51.25 - 1e-4 * np.arange(NY))
    geographic = geographic.rio.write_crs("EPSG:4326")
    hover = _hover(hv.render(time_slider(geographic)[0].object))
    assert hover.tooltips == [("longitude", "$x"), ("latitude", "$y"), ("NDVI", "@image")]
    figure = hv.render(time_slider(geographic)[0].object)
    assert (figure.xaxis[0].axis_label, figure.yaxis[0].axis_label) == (
        "longitude (°)",
        "latitude (°)",
    )


def test_hover_polynomial_matches_pyproj_across_a_whole_tile() -> None:
    from pyproj import Transformer
    from rasterio.crs import CRS

    from xarray_terrascope.plot.overlay import lonlat_fit

    # The hover shows 6 decimals of a degree (11 cm of latitude). An error of at most
    # 1e-7 degree (1.1 cm) moves a shown value by one unit of its last digit at most,
    # and only where the true value sits within 1e-7 of a rounding boundary.
    tolerance = 1e-7

    extent = (600000.0, 5590200.0, 709800.0, 5700000.0)  # a whole Sentinel-2 tile, 31UFS
    fit = lonlat_fit(CRS.from_epsg(32631), extent)
    assert fit is not None
    rng = np.random.default_rng(0)
    x = rng.uniform(extent[0], extent[2], 500)
    y = rng.uniform(extent[1], extent[3], 500)
    u = (x - fit["centre"][0]) / fit["half"][0]
    v = (y - fit["centre"][1]) / fit["half"][1]
    terms = np.column_stack([u**i * v**j for i, j in fit["powers"]])
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(x, y)
    assert np.abs(terms @ np.array(fit["lon"]) - lon).max() < tolerance
    assert np.abs(terms @ np.array(fit["lat"]) - lat).max() < tolerance


# --------------------------------------------------------------------------- the browser


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one directory and records the requested paths on the server."""

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """(folder, base URL, requested paths) of a loopback HTTP server on a free port."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(_RecordingHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    requested: list[str] = []
    server.requested = requested  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="test-plot-http", daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium through its own chromedriver (no Selenium Manager)."""
    if not Path(CHROMEDRIVER).exists():
        missing_tier(
            f"{CHROMEDRIVER} is absent: install Debian's chromium and chromium-driver "
            "(bash scripts/run.sh test does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# Bokeh and Panel draw into nested shadow roots; this finds elements through them.
_FIND_ALL = """
function findAll(root, selector, found) {
  found.push(...root.querySelectorAll(selector));
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) findAll(el.shadowRoot, selector, found);
  }
  return found;
}
"""


def _find_all(driver: Any, selector: str, then: str = "return found;") -> Any:
    return driver.execute_script(
        _FIND_ALL + f"const found = findAll(document, {selector!r}, []);\n" + then
    )


def _frame_box(driver: Any) -> tuple[int, int, int, int] | None:
    """The map frame (left, top, right, bottom) in CSS pixels, once laid out."""
    box = _find_all(
        driver,
        ".bk-CartesianFrame",
        "if (!found.length) return null;"
        "const r = found[0].getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom];",
    )
    if not box or box[2] - box[0] < 100 or box[3] - box[1] < 100:
        return None
    return tuple(round(v) for v in box)


def _slider_state(driver: Any) -> tuple[str | None, str]:
    """The slider handle's position and the slider's label text."""
    position = _find_all(
        driver,
        ".noUi-handle",
        "return found.length ? found[0].getAttribute('aria-valuenow') : null;",
    )
    label = _find_all(
        driver,
        ".bk-Div",
        "return found.map(d => [...(d.shadowRoot ? d.shadowRoot.children : [])]"
        ".filter(c => c.tagName !== 'STYLE' && c.tagName !== 'LINK')"
        ".map(c => c.innerText).join(' ')).join(' | ');",
    )
    return position, " ".join(label.split())


def _screenshot(driver: Any, path: Path) -> Any:
    from PIL import Image

    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = image.width / driver.execute_script("return window.innerWidth")
    if abs(scale - 1) > 0.01:
        image = image.resize((round(image.width / scale), round(image.height / scale)))
    return np.asarray(image)


def _poll(check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """The first truthy result of check(), or its last result after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def _greenness(pixels: np.ndarray) -> float:
    """Mean green minus red: higher NDVI is greener in RdYlGn."""
    return float(np.mean(pixels[..., 1].astype(int) - pixels[..., 0].astype(int)))


def _colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, 3), axis=0))


@pytest.mark.browser
def test_saved_page_slides_through_the_dates_in_chromium(
    cube: xr.DataArray, site: tuple[Path, str, list[str]], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    root, base_url, requested = site
    save_html(time_slider(cube, title="NDVI"), root / "ndvi_time_slider.html")
    browser.get(f"{base_url}/ndvi_time_slider.html")

    box = _poll(lambda: _frame_box(browser), timeout=30)
    assert box, "the Bokeh plot frame never appeared"
    left, top, right, bottom = box

    def shot(name: str, until: Callable[[np.ndarray], bool], timeout: float):
        """(page, map area) of the first screenshot that satisfies until(map area)."""

        def take() -> tuple[np.ndarray, np.ndarray]:
            pixels = _screenshot(browser, tmp_path / name)
            return pixels, pixels[top + 2 : bottom - 2, left + 2 : right - 2]

        deadline = time.monotonic() + timeout
        taken = take()
        while not until(taken[1]) and time.monotonic() < deadline:
            time.sleep(0.25)
            taken = take()
        return taken

    # wait for the canvas to be painted (a blank frame has 1-2 colours)
    page, first = shot("1.png", lambda area: _colours(area) > 30, timeout=30)
    assert _colours(first) > 30, "the map area is blank"
    height, width = first.shape[:2]
    # no data (NaN) is transparent: the page's white shows through in the north-west
    nan_y, nan_x = height * NAN_ROWS // NY // 2, width * NAN_COLS // NX // 2
    assert tuple(first[nan_y, nan_x]) == (255, 255, 255)
    assert tuple(first[height // 2, width // 2]) != (255, 255, 255)
    # the colorbar is a gradient to the right of the frame
    colorbar = page[top + 20 : bottom - 20, right + 15 : right + 60]
    assert _colours(colorbar) > 40, "no colorbar next to the map"
    assert _slider_state(browser) == ("0.0", "Date: 2025-05-01")

    handle = _find_all(browser, ".noUi-handle", "return found[0];")
    handle.send_keys(Keys.ARROW_RIGHT)
    _, second = shot("2.png", lambda area: not np.array_equal(area, first), timeout=15)
    assert _slider_state(browser) == ("1.0", "Date: 2025-05-06")
    changed = np.any(first != second, axis=-1).mean()
    assert changed > 0.8, f"only {changed:.0%} of the map pixels changed"
    greenness = [_greenness(area) for area in (first, second)]
    assert greenness[1] > greenness[0] + 20, f"the next date is not greener: {greenness}"
    assert tuple(second[nan_y, nan_x]) == (255, 255, 255)

    handle.send_keys(Keys.END)  # the last date must be embedded too
    _, last = shot("3.png", lambda area: not np.array_equal(area, second), timeout=15)
    assert _slider_state(browser) == ("3.0", "Date: 2025-05-16")
    assert np.any(last != second, axis=-1).mean() > 0.8

    handle.send_keys(Keys.ARROW_LEFT)  # the third date has a cloud stripe (NaN) at rows 30-39
    _, third = shot("4.png", lambda area: not np.array_equal(area, last), timeout=15)
    assert _slider_state(browser) == ("2.0", "Date: 2025-05-11")
    stripe, clear = third[height * 35 // NY], third[height * 20 // NY]
    assert (stripe == 255).all(), "the NaN stripe of the third date is not transparent"
    assert not (clear == 255).all(axis=-1).any()

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    # everything came from the page itself: no other request, no resource from elsewhere
    assert requested == ["/ndvi_time_slider.html"]
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);"
    )
    assert [r for r in resources if not r.startswith((base_url, "data:", "blob:"))] == []


def _tooltip_rows(driver: Any) -> dict[str, str]:
    """``{label: value}`` of the hover tooltip on screen (empty while none is shown)."""
    rows = _find_all(
        driver,
        ".bk-tooltip-row-label, .bk-tooltip-row-value",
        "return found.filter(e => e.offsetParent !== null || e.getClientRects().length)"
        ".map(e => [e.className, e.innerText]);",
    )
    labels = [t.strip().rstrip(":") for c, t in rows if "label" in c]
    values = [t.strip() for c, t in rows if "value" in c]
    return dict(zip(labels, values, strict=False))


@pytest.mark.browser
def test_saved_page_draws_the_parcels_and_hovers_lon_lat_in_chromium(
    cube: xr.DataArray,
    parcels: Any,
    site: tuple[Path, str, list[str]],
    browser: Any,
    tmp_path: Path,
) -> None:
    from pyproj import Transformer
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    root, base_url, requested = site
    plot = time_slider(cube, title="NDVI", overlay=parcels, overlay_color="#ff00ff")
    save_html(plot, root / "parcels.html")
    browser.get(f"{base_url}/parcels.html")
    box = _poll(lambda: _frame_box(browser), timeout=30)
    assert box, "the Bokeh plot frame never appeared"
    left, top, right, bottom = box

    # the Bokeh document in the page holds one multi-line renderer with the outlines
    outlines = browser.execute_script(
        "const models = [...Bokeh.documents[0].all_models];"
        "return models.filter(m => m.type === 'GlyphRenderer' || "
        "  (m.constructor && m.constructor.__name__ === 'GlyphRenderer'))"
        ".map(r => [r.glyph.constructor.__name__, "
        "  r.glyph.constructor.__name__ === 'MultiLine' ? r.data_source.data.xs.length : -1]);"
    )
    assert sorted(outlines) == [["Image", -1], ["MultiLine", 4]], outlines

    # ... and they are painted: magenta (absent from RdYlGn) along parcel 1's west side
    def to_screen(x: float, y: float) -> tuple[int, int]:
        sx = left + (x - 700000.0) / 800.0 * (right - left)
        sy = top + (5680010.0 - y) / 600.0 * (bottom - top)
        return round(sx), round(sy)

    def magenta(pixels: np.ndarray) -> np.ndarray:
        rgb = pixels.astype(int)
        return (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] > 120)

    west = [to_screen(700100 + 10 * t / 20, 5679900 - 180 * t / 20) for t in range(3, 18)]

    def painted() -> bool:
        pixels = _screenshot(browser, tmp_path / "parcels.png")
        hits = [magenta(pixels[sy - 2 : sy + 3, sx - 2 : sx + 3]).any() for sx, sy in west]
        return all(hits)

    assert _poll(painted, timeout=30), "parcel 1's outline is not drawn where it lies"
    pixels = _screenshot(browser, tmp_path / "parcels.png")
    inside = pixels[to_screen(700200, 5679800)[1], to_screen(700200, 5679800)[0]]
    assert not magenta(inside[None])[0], "the outline's colour fills the parcel"

    # hover over a pixel: the tooltip shows x, y, longitude, latitude and the value
    sx, sy = to_screen(700433.0, 5679777.0)
    action = ActionBuilder(browser)
    action.pointer_action.move_to_location(sx, sy)
    action.perform()
    rows = _poll(lambda: _tooltip_rows(browser), timeout=15)
    assert list(rows)[:4] == ["x (m)", "y (m)", "longitude", "latitude"], rows
    x, y = float(rows["x (m)"]), float(rows["y (m)"])
    assert abs(x - 700433.0) < 10 and abs(y - 5679777.0) < 10  # where the mouse is
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(x, y)
    # x and y are shown to the metre: 0.5 m is ~7e-6 degrees of longitude here
    assert abs(float(rows["longitude"]) - lon) < 1e-5, (rows, lon)
    assert abs(float(rows["latitude"]) - lat) < 1e-5, (rows, lat)
    assert rows["longitude"].count(".") == 1 and len(rows["longitude"].split(".")[1]) == 6
    assert "NDVI" in rows

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    assert requested == ["/parcels.html"]
