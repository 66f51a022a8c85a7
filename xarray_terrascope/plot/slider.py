"""The time slider: an hvplot image of a ``(time, y, x)`` cube with a date slider
(:func:`time_slider`), and :func:`save_html`, which writes it as one self-contained,
offline HTML file."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.plot.overlay import (
    cube_crs,
    extent,
    hover_tool,
    overlay_lines,
)

__all__ = ["save_html", "time_slider"]

logger = logging.getLogger(__name__)

_DIMS = ("time", "y", "x")
_PLOT_EXTRA = 'pip install "xarray-terrascope[plot]"'
# Options of the Panel HoloViews pane (the widgets), not of hvplot's image().
_PANE_OPTIONS = ("widget_location", "widget_type", "widgets", "center")


def _import_plotting() -> tuple[Any, Any]:
    """hvplot (with its xarray accessor, which needs holoviews) and panel, or an ImportError."""
    try:
        import hvplot
        import hvplot.xarray  # registers da.hvplot
        import panel as pn
    except ImportError as exc:
        raise ImportError(
            f"Interactive plots need hvplot, holoviews, panel and bokeh ({exc}). "
            f"Install them with: {_PLOT_EXTRA}"
        ) from exc
    return hvplot, pn


def _check_dims(da: Any) -> xr.DataArray:
    """The DataArray as ``(time, y, x)``, or an InvalidArgumentError naming what is wrong."""
    if not isinstance(da, xr.DataArray):
        raise InvalidArgumentError(
            f"da must be an xarray.DataArray with dims ('time', 'y', 'x'), got {type(da).__name__}"
        )
    missing = [d for d in _DIMS if d not in da.dims]
    if missing:
        raise InvalidArgumentError(
            f"da must have the dimensions ('time', 'y', 'x'); missing: "
            f"{', '.join(repr(d) for d in missing)} (it has {tuple(map(str, da.dims))})"
        )
    extra = [d for d in da.dims if d not in _DIMS]
    too_long = [d for d in extra if da.sizes[d] != 1]
    if too_long:
        raise InvalidArgumentError(
            f"da may only have the dimensions ('time', 'y', 'x') (plus ones of size 1); "
            f"select one element of {', '.join(repr(d) for d in too_long)} first, "
            f"e.g. da.isel({too_long[0]}=0)"
        )
    if extra:
        da = da.squeeze(extra, drop=True)
    for d in _DIMS:
        if da.sizes[d] == 0:
            raise InvalidArgumentError(f"da has no elements along {d!r}: nothing to plot")
    times = pd.Index(da["time"].values)
    if times.has_duplicates:
        dupes = sorted({str(t) for t in times[times.duplicated()]})
        raise InvalidArgumentError(
            f"da has repeated 'time' values ({', '.join(dupes[:3])}): the slider needs one image "
            "per time; merge them first, e.g. da.groupby('time').max()"
        )
    return da.transpose(*_DIMS)


def _time_format(times: np.ndarray) -> str:
    """The shortest strftime format under which all time labels stay distinct."""
    stamps = pd.DatetimeIndex(times)
    for fmt in ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        if stamps.strftime(fmt).nunique() == len(stamps):
            return fmt
    return "%Y-%m-%dT%H:%M:%S.%f"


def _colorbar_label(da: xr.DataArray) -> str:
    """``long_name`` (or the name) with the units, e.g. ``"NDVI"`` or ``"reflectance (%)"``."""
    name = str(da.attrs.get("long_name") or da.attrs.get("standard_name") or da.name or "value")
    units = str(da.attrs.get("units") or "").strip()
    if units and units not in ("1", "-", "none", "dimensionless", name):
        return f"{name} ({units})"
    return name


def _crs_name(crs: Any) -> str:
    """``EPSG:32631`` when the CRS has an EPSG code, else its name."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(crs.name or crs)


def _axis_options(da: xr.DataArray) -> dict[str, str]:
    """Axis labels with the CRS's unit and name, e.g. ``"x (m, EPSG:32631)"``; whole
    numbers for metres; longitude and latitude for a geographic CRS."""
    crs = cube_crs(da)
    if crs is None:
        return {"xlabel": "x", "ylabel": "y"}
    if crs.is_geographic:
        return {"xlabel": "longitude (°)", "ylabel": "latitude (°)"}
    unit = str(crs.linear_units or "").lower()
    name = _crs_name(crs)
    if unit in ("metre", "meter", "m"):
        return {
            "xlabel": f"x (m, {name})",
            "ylabel": f"y (m, {name})",
            "xformatter": "%.0f",
            "yformatter": "%.0f",
        }
    where = f"{unit}, {name}" if unit else name
    return {"xlabel": f"x ({where})", "ylabel": f"y ({where})"}


def _escape_braces(text: str) -> str:
    """``text`` for a ``str.format`` template (HoloViews formats plot titles)."""
    return text.replace("{", "{{").replace("}", "}}")


def _frame_size(da: xr.DataArray, width: int, height: int) -> tuple[int, int]:
    """The map frame in pixels: as large as fits in width x height with square map pixels."""

    def extent(dim: str) -> float:
        coord = np.asarray(da[dim].values, dtype="float64")
        step = abs(float(coord[1] - coord[0])) if coord.size > 1 else 1.0
        return abs(float(coord[-1] - coord[0])) + step  # pixel centres -> pixel edges

    ext_x, ext_y = extent("x"), extent("y")
    scale = min(width / ext_x, height / ext_y)
    return max(1, round(ext_x * scale)), max(1, round(ext_y * scale))


def _geo_options(da: xr.DataArray, tiles: str | bool) -> dict[str, Any]:
    """hvplot options for a basemap: the tile source and the cube's CRS as a cartopy CRS."""
    try:
        import cartopy.crs as ccrs
        import geoviews  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"tiles={tiles!r} (a basemap) needs geoviews and cartopy ({exc}). Install them "
            "with: pip install geoviews   (or leave tiles=None; basemaps also need internet)"
        ) from exc
    crs = getattr(getattr(da, "rio", None), "crs", None)
    if crs is None:
        raise InvalidArgumentError(
            "tiles= needs to know the CRS of da: write it with da.rio.write_crs('EPSG:...')"
        )
    epsg = crs.to_epsg()
    cartopy_crs = ccrs.epsg(epsg) if epsg is not None else ccrs.Projection(crs.to_wkt())
    return {"tiles": "OSM" if tiles is True else tiles, "crs": cartopy_crs}


def time_slider(
    da: xr.DataArray,
    *,
    cmap: str = "RdYlGn",
    vmin: float | None = -0.08,
    vmax: float | None = 0.92,
    title: str | None = None,
    width: int = 600,
    height: int = 500,
    tiles: str | bool | None = None,
    rasterize: bool = False,
    overlay: Any = None,
    overlay_color: str = "black",
    **kwargs: Any,
) -> object:
    """An interactive map of a ``(time, y, x)`` cube with a slider over the dates.

    The image is drawn with ``da.hvplot.image(groupby="time")`` in the cube's own CRS
    (``x``/``y`` in metres), with square pixels, NaN (no data) transparent and a colorbar
    in physical units. The slider labels and the plot title show the dates. The hover
    shows ``x``/``y``, longitude/latitude (WGS84, computed in the browser from a
    polynomial fitted to pyproj's transform over the map, error under 1e-7 degrees) and
    the value. ``overlay`` draws outlines (field parcels, say) over every date.

    Parameters
    ----------
    da : xarray.DataArray
        Dimensions ``time``, ``y`` and ``x`` (others only of size 1), ``x``/``y`` the pixel
        centres. Non-dimension coordinates (``spatial_ref``, ``platform``, ...) are ignored.
        Lazy (dask) data is computed one time step at a time, when it is shown.
    cmap : str, default "RdYlGn"
        A colormap name known to Bokeh/Matplotlib/colorcet.
    vmin, vmax : float or None, default -0.08 and 0.92 (the NDVI range)
        The colour range; ``None`` takes that end from the data.
    title : str or None
        Shown before the date in the plot title; by default only the date is shown.
    width, height : int, default 600 and 500
        The largest size in screen pixels of the map area (without axes and colorbar);
        the map fills it as far as square pixels allow.
    tiles : str, bool or None
        A basemap (``True`` = OpenStreetMap, or an hvplot tile name such as
        ``"EsriImagery"``). Off by default: it needs internet and geoviews/cartopy, and
        the map is then shown in Web Mercator.
    rasterize : bool, default False
        Let datashader re-sample the image to the screen (for very large rasters;
        needs datashader and a live Python kernel to update on zoom).
    overlay : geopandas.GeoDataFrame, geopandas.GeoSeries or shapely geometries, optional
        Polygons or lines whose outlines are drawn over the image, reprojected to the
        cube's CRS and clipped to the map. Shapely geometries without a CRS are taken as
        longitude/latitude (EPSG:4326). Not with ``tiles``.
    overlay_color : str, default "black"
        The colour of the outlines.
    **kwargs
        Further options for ``hvplot.image`` (they override the defaults above), and
        ``widget_location``, ``widget_type`` ("individual" = a date slider, the default;
        "scrubber" = a player), ``widgets`` and ``center`` for the Panel pane.

    Returns
    -------
    panel.Column
        The Panel layout hvplot builds for ``groupby``: ``[0]`` the HoloViews pane (its
        ``.object`` is the hvplot ``DynamicMap``), ``[1]`` the widget box with the
        ``DiscreteSlider`` over ``time``. Show it in a notebook, ``.show()`` it, or write
        it with :func:`save_html`.

    Raises
    ------
    InvalidArgumentError
        If ``da`` lacks a ``time``, ``y`` or ``x`` dimension (the message names which),
        has another dimension longer than 1, is empty, or repeats a time.
    ImportError
        If hvplot/panel are missing (``pip install "xarray-terrascope[plot]"``), if
        ``tiles`` is given without geoviews/cartopy (``pip install geoviews``), or if
        ``rasterize=True`` without datashader.
    InvalidArgumentError
        Also for an ``overlay`` that is not geometries, has no CRS, or comes with
        ``tiles``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> da = xr.DataArray(
    ...     np.random.rand(3, 20, 30).astype("float32"), dims=("time", "y", "x"), name="NDVI",
    ...     coords={"time": pd.date_range("2025-05-01", periods=3),
    ...             "y": 5680005.0 - 10 * np.arange(20), "x": 700005.0 + 10 * np.arange(30)})
    >>> plot = time_slider(da, title="NDVI")
    >>> plot[1][0].labels[0]  # the slider  # doctest: +SKIP
    'Date: <b>2025-05-01</b>'
    >>> save_html(plot, "ndvi.html")  # doctest: +SKIP
    PosixPath('ndvi.html')
    >>> parcels = sandbox.parcels()  # doctest: +SKIP
    >>> plot = time_slider(ndvi, overlay=parcels)  # outlines on every date  # doctest: +SKIP
    """
    da = _check_dims(da)
    if overlay is not None and tiles:
        raise InvalidArgumentError(
            "overlay= draws in the cube's CRS and tiles= reprojects the map to Web Mercator: "
            "use one of them"
        )
    _, pn = _import_plotting()

    # Keep only the dimension coordinates: per-time attributes such as platform,
    # cloud_cover or item_ids (and spatial_ref) would become extra hvplot dimensions.
    crs_source = da
    da = da.drop_vars([c for c in da.coords if c not in _DIMS])
    if da.name is None:
        da = da.rename("value")

    frame_width, frame_height = _frame_size(da, width, height)
    clim = (np.nan if vmin is None else float(vmin), np.nan if vmax is None else float(vmax))
    options: dict[str, Any] = {
        "x": "x",
        "y": "y",
        "groupby": "time",
        "cmap": cmap,
        "colorbar": True,
        "clabel": _colorbar_label(da),
        "frame_width": frame_width,
        "frame_height": frame_height,
        "data_aspect": 1,
        **_axis_options(crs_source),
        # HoloViews fills in {dimensions} per frame ("Date: 2025-05-01"); escape the rest.
        "title": f"{_escape_braces(title)}, {{dimensions}}" if title else "{dimensions}",
        "tools": ["hover"],
    }
    crs = cube_crs(crs_source)
    if not tiles:
        options["tools"] = [hover_tool(da, crs, str(da.name))]
    if vmin is not None or vmax is not None:
        options["clim"] = clim
    if tiles:
        options.update(_geo_options(crs_source, tiles))
        options.pop("data_aspect")  # the map is reprojected to Web Mercator
        for key in ("xlabel", "ylabel", "xformatter", "yformatter"):
            options.pop(key, None)
    if rasterize:
        try:
            import datashader  # noqa: F401
        except ImportError as exc:
            raise ImportError("rasterize=True needs datashader: pip install datashader") from exc
        options["rasterize"] = True
    pane_options = {"widget_location": "bottom", "widget_type": "individual"}
    pane_options.update({k: kwargs.pop(k) for k in _PANE_OPTIONS if k in kwargs})
    options.update(kwargs)

    plot = da.hvplot.image(**options)
    time_format = _time_format(da["time"].values)
    plot = plot.redim.value_format(time=lambda t: pd.Timestamp(t).strftime(time_format))
    plot = plot.redim.label(time="Date")
    plot = plot.opts(clipping_colors={"NaN": "transparent"})
    if overlay is not None:
        import holoviews as hv

        lines = overlay_lines(overlay, crs, extent(da))
        outlines = hv.Path(lines, kdims=["x", "y"]).opts(
            color=overlay_color, line_width=1.2, tools=[]
        )
        # the overlay takes the frame's title, with the date, from the image's options
        plot = (plot * outlines).opts(hv.opts.Overlay(title=options["title"]))
    logger.debug(
        "time_slider: %d time steps, %d x %d px, frame %d x %d, clim=%s",
        da.sizes["time"],
        da.sizes["x"],
        da.sizes["y"],
        frame_width,
        frame_height,
        clim,
    )
    layout = pn.panel(plot, **pane_options)
    slider_width = max(300, frame_width)
    for widget in layout.select(pn.widgets.Widget):
        widget.width = slider_width
    return layout


def _inline_panel_css(stylesheets: dict[str, Any]):
    """A Panel preprocessing hook that replaces Panel's CDN stylesheets by inline copies.

    Panel references its CSS (widget box, theme, loading spinner) by CDN URL even
    when saving with inline resources; offline those requests fail. ``stylesheets``
    caches one ``InlineStyleSheet`` per URL, shared by all models.
    """
    from bokeh.models import ImportedStyleSheet, InlineStyleSheet
    from bokeh.models.ui.ui_element import UIElement  # not in bokeh.models to a type checker
    from panel.io.resources import CDN_DIST, DIST_DIR

    def hook(viewable: Any, root: Any) -> None:
        for model in root.select({"type": UIElement}):
            replaced = []
            for sheet in model.stylesheets:
                if isinstance(sheet, ImportedStyleSheet) and sheet.url.startswith(CDN_DIST):
                    if sheet.url not in stylesheets:
                        path = Path(DIST_DIR) / sheet.url[len(CDN_DIST) :].split("?")[0]
                        if not path.is_file():
                            logger.warning("no local copy of %s; it stays external", sheet.url)
                            stylesheets[sheet.url] = sheet
                        else:
                            stylesheets[sheet.url] = InlineStyleSheet(
                                css=path.read_text(encoding="utf-8")
                            )
                    sheet = stylesheets[sheet.url]
                replaced.append(sheet)
            if replaced != list(model.stylesheets):
                model.stylesheets = replaced

    return hook


def _favicon() -> str:
    """Panel's favicon as a data URI (the page template would link it from the CDN)."""
    from panel.io.resources import DIST_DIR

    path = Path(DIST_DIR) / "images" / "favicon.ico"
    if not path.is_file():
        return "data:,"
    return "data:image/x-icon;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@contextlib.contextmanager
def _quiet_bokeh_frame_size_warning() -> Iterator[None]:
    """Silence Bokeh's W-1005, which does not know that frame_width/height fix the size."""
    from bokeh.core.validation import is_silenced, silence
    from bokeh.core.validation.warnings import FIXED_SIZING_MODE

    if is_silenced(FIXED_SIZING_MODE):
        yield
        return
    silence(FIXED_SIZING_MODE, True)
    try:
        yield
    finally:
        silence(FIXED_SIZING_MODE, False)


def save_html(obj: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write a plot as one standalone HTML page that works offline.

    The page embeds BokehJS, Panel's JavaScript and CSS (``bokeh.resources.INLINE``)
    and, through Panel's ``embed=True``, the image of every slider position, so moving
    the slider in the browser changes the image without a Python server. It loads from
    ``file://`` or any static server and makes no network requests.

    Parameters
    ----------
    obj : panel.viewable.Viewable or holoviews object
        Typically the result of :func:`time_slider`.
    path : str or os.PathLike
        The file to write (overwritten); parent folders are created.
    title : str or None
        The page title; the file name without suffix by default.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ImportError
        If hvplot/panel are missing (``pip install "xarray-terrascope[plot]"``).

    Notes
    -----
    Every slider position is rendered while saving and stored in the page, so the file
    grows with the number of time steps times the raster size (about 10 bytes per
    pixel per step). Zooming and panning work in the saved page; re-sampling on zoom
    (``rasterize=True``) does not, as it needs Python.

    Examples
    --------
    >>> page = save_html(time_slider(ndvi), "out/ndvi_time_slider.html")  # doctest: +SKIP
    >>> page.stat().st_size > 0  # doctest: +SKIP
    True
    """
    hvplot, pn = _import_plotting()
    from bokeh.resources import INLINE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A wrapper that carries the CSS hook; the caller's object is left as it is.
    page = pn.Column(obj, hooks=[_inline_panel_css({})])
    # Panel's Player embeds range(start, end), missing the last frame: list them all.
    embed_states = {
        player: list(range(player.start, player.end + 1, player.step))
        for player in page.select(pn.widgets.Player)
    }
    buffer = io.StringIO()
    with _quiet_bokeh_frame_size_warning():
        hvplot.save(
            page,
            buffer,
            resources=INLINE,
            title=title or path.stem,
            embed=True,
            embed_states=embed_states,
            progress=False,
            template_variables={"app_favicon": _favicon(), "apple_icon": ""},
        )
    html = buffer.getvalue()
    path.write_text(html, encoding="utf-8")
    logger.info("wrote %s (%.1f MB, standalone)", path, len(html.encode("utf-8")) / 1e6)
    return path
