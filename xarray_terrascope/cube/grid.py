"""The affine transform of a cube's regular x/y grid, without rioxarray's arithmetic.

rioxarray 0.19's ``obj.rio.transform()`` rebuilds it from the coordinates as
``Affine.translation(...) * Affine.scale(...)``, which affine 3 warns about
(``PendingDeprecationWarning: Use `@` matmul``) at every call: the package computes it
itself wherever it needs one (zonal statistics, the GeoTIFF export).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine

__all__ = ["grid_transform"]


def _step(values: np.ndarray, dim: str, cached: float | None) -> float:
    if values.ndim != 1:
        raise ValueError(f"the {dim!r} coordinate is not one-dimensional")
    if values.size < 2:
        if cached is None:
            raise ValueError(f"one pixel along {dim!r} and no GeoTransform: no resolution")
        return cached
    steps = np.diff(values.astype(np.float64))
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0) or steps[0] == 0:
        raise ValueError(f"the {dim!r} coordinate is not a regular grid")
    return float(steps[0])


def grid_transform(obj: Any) -> Affine:
    """The affine transform of ``obj``'s regular grid: its x/y coordinates are pixel
    centres, so the origin is half a pixel before the first ones.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        With 1-D x/y coordinates (rioxarray's ``x_dim``/``y_dim``) on a regular grid; a
        single pixel along one takes its size from the grid mapping's ``GeoTransform``.

    Returns
    -------
    affine.Affine

    Raises
    ------
    ValueError
        For coordinates that are not a regular 1-D grid.

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray(np.zeros((2, 3)), coords={"y": [95.0, 85.0], "x": [5.0, 15.0, 25.0]})
    >>> tuple(grid_transform(da))[:6]
    (10.0, 0.0, 0.0, 0.0, -10.0, 100.0)
    """
    import rioxarray  # noqa: F401  (the .rio accessor)

    x_dim, y_dim = obj.rio.x_dim, obj.rio.y_dim
    x, y = np.asarray(obj[x_dim].values), np.asarray(obj[y_dim].values)
    cached = None
    if x.size < 2 or y.size < 2:
        cached = obj.rio.resolution()  # from the GeoTransform (no arithmetic on it)
    dx = _step(x, x_dim, None if cached is None else float(cached[0]))
    dy = _step(y, y_dim, None if cached is None else float(cached[1]))
    return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)
