"""What :func:`xarray_terrascope.plot.time_slider` draws besides the image: outlines
(``overlay=``) in the cube's CRS, and a hover with longitude/latitude.

The hover's longitude/latitude come from pyproj: a polynomial in the map coordinates,
fitted to pyproj's transform over the map and checked to :data:`LONLAT_TOLERANCE`, that
Bokeh evaluates in the browser (a saved page has no Python to ask).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import xarray as xr

from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["LONLAT_TOLERANCE", "cube_crs", "extent", "hover_tool", "lonlat_fit", "overlay_lines"]

logger = logging.getLogger("xarray_terrascope.plot")

#: Largest error (degrees) of the longitude/latitude the hover shows; ~1 cm.
LONLAT_TOLERANCE = 1e-7


def cube_crs(da: xr.DataArray) -> Any:
    """The cube's CRS (a rasterio CRS) or None when it has none or an unusable one."""
    from pyproj.exceptions import CRSError as ProjCRSError
    from rasterio.errors import CRSError
    from rioxarray.exceptions import RioXarrayError

    try:
        return da.rio.crs
    except (RioXarrayError, CRSError, ProjCRSError, ValueError):
        return None


def extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the pixel edges."""

    def edges(dim: str) -> tuple[float, float]:
        coord = np.asarray(da[dim].values, dtype="float64")
        half = abs(float(coord[1] - coord[0])) / 2 if coord.size > 1 else 0.5
        return float(coord.min()) - half, float(coord.max()) + half

    (x0, x1), (y0, y1) = edges("x"), edges("y")
    return x0, y0, x1, y1


def lonlat_fit(crs: Any, bounds: tuple[float, float, float, float]) -> dict[str, Any] | None:
    """A polynomial in the map coordinates that gives longitude and latitude (pyproj's
    transform, fitted over ``extent``) for the browser to evaluate in the hover.

    ``None`` when no degree up to 6 keeps the error under :data:`LONLAT_TOLERANCE`.
    """
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = bounds
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    half = (max((x1 - x0) / 2, 1e-9), max((y1 - y0) / 2, 1e-9))

    def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
        u, v = np.meshgrid(np.linspace(-1.0, 1.0, n), np.linspace(-1.0, 1.0, n))
        return u.ravel(), v.ravel()

    u_fit, v_fit = grid(15)
    u_check, v_check = grid(41)
    for degree in range(1, 7):
        powers = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]

        def design(u: np.ndarray, v: np.ndarray, powers=powers) -> np.ndarray:
            return np.column_stack([u**i * v**j for i, j in powers])

        coefs, worst = [], 0.0
        for axis in (0, 1):
            target = to_lonlat.transform(centre[0] + u_fit * half[0], centre[1] + v_fit * half[1])
            coef = np.linalg.lstsq(design(u_fit, v_fit), target[axis], rcond=None)[0]
            truth = to_lonlat.transform(
                centre[0] + u_check * half[0], centre[1] + v_check * half[1]
            )[axis]
            worst = max(worst, float(np.max(np.abs(design(u_check, v_check) @ coef - truth))))
            coefs.append(coef)
        if worst <= LONLAT_TOLERANCE:
            logger.debug("hover lon/lat: degree %d polynomial, max error %.1e deg", degree, worst)
            return {
                "centre": list(centre),
                "half": list(half),
                "powers": [list(p) for p in powers],
                "lon": coefs[0].tolist(),
                "lat": coefs[1].tolist(),
            }
    logger.warning("hover lon/lat left out: the map is too large for an exact polynomial")
    return None


# Bokeh's hover passes the cursor's map coordinates in special_vars; the format after
# the field ("$x{lon}") chooses what to show.
_HOVER_JS = """
const fit = (coef) => {
  const u = (special_vars.x - centre[0]) / half[0];
  const v = (special_vars.y - centre[1]) / half[1];
  let total = 0;
  for (let k = 0; k < powers.length; k++) {
    total += coef[k] * Math.pow(u, powers[k][0]) * Math.pow(v, powers[k][1]);
  }
  return total;
};
if (format === "lon") return fit(lon).toFixed(6);
if (format === "lat") return fit(lat).toFixed(6);
return value.toFixed(digits);
"""


def hover_tool(da: xr.DataArray, crs: Any, label: str) -> Any:
    """A hover tool showing x, y, longitude, latitude (for a projected CRS) and the value."""
    from bokeh.models import CustomJSHover, HoverTool

    value = (label, "@image")
    if crs is None or crs.is_geographic:
        names = ("longitude", "latitude") if crs is not None else ("x", "y")
        return HoverTool(tooltips=[(names[0], "$x"), (names[1], "$y"), value])
    fit = lonlat_fit(crs, extent(da))
    unit = str(crs.linear_units or "").lower()
    metres = unit in ("metre", "meter", "m")
    names = ("x (m)", "y (m)") if metres else ("x", "y")
    if fit is None:
        return HoverTool(tooltips=[(names[0], "$x"), (names[1], "$y"), value])
    formatter = CustomJSHover(args={**fit, "digits": 0 if metres else 3}, code=_HOVER_JS)
    return HoverTool(
        tooltips=[
            (names[0], "$x{xy}"),
            (names[1], "$y{xy}"),
            ("longitude", "$x{lon}"),
            ("latitude", "$y{lat}"),
            value,
        ],
        formatters={"$x": formatter, "$y": formatter},
    )


def overlay_lines(overlay: Any, crs: Any, bounds: tuple[float, float, float, float]) -> list:
    """The outlines of ``overlay`` in the cube's CRS, clipped to the map, as (n, 2) arrays."""
    import shapely
    from pyproj import Transformer

    if crs is None:
        raise InvalidArgumentError(
            "overlay= needs to know the CRS of da: write it with da.rio.write_crs('EPSG:...')"
        )
    to_crs = getattr(overlay, "to_crs", None)
    if to_crs is not None:  # a GeoSeries or GeoDataFrame
        if overlay.crs is None:
            raise InvalidArgumentError(
                "overlay has no CRS: set one (gdf.set_crs(...)) so it can be drawn on the map"
            )
        geoms = np.asarray(to_crs(crs).geometry.values, dtype=object)
    else:
        single = isinstance(overlay, shapely.Geometry)
        geoms = np.asarray([overlay] if single else list(overlay), dtype=object).ravel()
        if not all(isinstance(g, shapely.Geometry) for g in geoms):
            raise InvalidArgumentError(
                "overlay must be a GeoSeries, a GeoDataFrame or shapely geometries "
                "(longitude/latitude), got elements of type "
                f"{sorted({type(g).__name__ for g in geoms})}"
            )
        transformer = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        geoms = shapely.transform(
            geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
    outlines = shapely.clip_by_rect(shapely.boundary(geoms), *bounds)
    parts = shapely.get_parts(outlines[~shapely.is_empty(outlines)])
    parts = shapely.get_parts(shapely.line_merge(parts)) if len(parts) else parts
    return [shapely.get_coordinates(line) for line in parts if not line.is_empty]
