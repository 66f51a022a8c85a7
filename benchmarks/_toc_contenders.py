"""The contenders of ``bench_toc.py``: a TOC cube of B04 + B08 + SCL, each run in a fresh
child process by ``_contenders.py`` (``spec["module"] = "_toc_contenders"``).

Every contender returns ``{"B04": ..., "B08": ..., "SCL": ...}``: reflectance as float
(NaN = no data) and the scene classification as its codes, computed in memory, written
by the parent process's child runner after the clock. Each writes the code a user would:

- ``terrascope``: ``xr.open_dataset(bbox, engine="terrascope", collection=TOC,
  assets=[...])`` with ``chunks={}`` + compute, or ``chunks=None`` + ``.load()``; the
  same with ``mask_clouds=True`` or ``min_clear=...`` (``open_only``: the opening alone);
- ``odc-stac``: pystac-client, ``odc.stac.load(items, bands=[...], resolution=10,
  bbox=bbox, groupby="solar_day", chunks={})``, then ``.where(b != 32767) * 0.0001`` by
  hand (odc-stac reads the asset-level ``data_type``/``nodata`` of the STAC 1.1 items but
  applies no scale);
- ``stackstac``: pystac-client, ``stackstac.stack(items, assets=[...], epsg=..., resolution=10,
  bounds_latlon=bbox)`` with its defaults otherwise (float64, NaN fill), then ``* 0.0001``
  by hand. It cannot read the CRS from STAC 1.1 ``proj:code`` (``epsg=`` is required) and
  picks another grid without ``resolution=`` (the assets are 10 and 20 m).
"""

from __future__ import annotations

import os
import time
from typing import Any

import _contenders
import numpy as np
from _contenders import _creds

COLLECTION = "terrascope-s2-toc-v2"
BANDS = ("B04", "B08")
MASK = "SCL"
SCALE = 0.0001
NODATA = 32767

Cube = dict[str, np.ndarray]


def _search(spec: dict) -> list:
    import pystac_client

    client = pystac_client.Client.open(os.environ["TERRASCOPE_STAC_URL"])
    found = client.search(
        collections=[COLLECTION],
        bbox=spec["bbox"],
        datetime=f"{spec['start']}/{spec['end']}",
        limit=100,
    )
    return list(found.items())


def _grid_of(transform: Any, shape: tuple[int, int], epsg: int | None) -> dict:
    return {"epsg": epsg, "transform": list(transform)[:6], "shape": list(shape)}


# --- this package -----------------------------------------------------------------------


def run_terrascope(spec: dict) -> tuple[Cube | None, list[str], dict]:
    import xarray as xr

    chunks = {} if spec.get("mode", "dask") == "dask" else None
    kwargs: dict[str, Any] = {}
    if spec.get("mask_clouds"):
        kwargs["mask_clouds"] = True
    if spec.get("min_clear") is not None:
        kwargs["min_clear"] = spec["min_clear"]
    t0 = time.perf_counter()
    ds = xr.open_dataset(
        list(spec["bbox"]),
        engine="terrascope",
        collection=COLLECTION,
        assets=list(spec.get("assets", [*BANDS, MASK])),
        start=spec["start"],
        end=spec["end"],
        chunks=chunks,
        **kwargs,
    )
    extra: dict[str, Any] = {
        "open_s": time.perf_counter() - t0,
        "items": lambda: len(ds.terrascope.items),  # after the clock (_contenders.main)
        "grid": _grid_of(ds.rio.transform(), (ds.sizes["y"], ds.sizes["x"]), ds.rio.crs.to_epsg()),
        "item_ids": [str(v) for v in ds.item_ids.values],
    }
    if "dropped_dates" in ds.attrs:
        extra["dropped_dates"] = [str(d) for d in ds.attrs["dropped_dates"]]
        extra["dropped_clear_shares"] = [float(v) for v in ds.attrs["dropped_clear_shares"]]
    if "clear_share" in ds.coords:
        extra["clear_share"] = [float(v) for v in ds.clear_share.values]
    dates = [str(d)[:10] for d in ds.time.values]
    if spec.get("open_only"):
        return None, dates, extra
    ds = ds.compute() if chunks is not None else ds.load()
    cube = {name: ds[name].values for name in ds.data_vars}
    return cube, dates, extra


# --- odc-stac ---------------------------------------------------------------------------


def run_odc(spec: dict) -> tuple[Cube, list[str], dict]:
    import odc.stac
    import xarray as xr

    user, password = _creds()
    items = _search(spec)
    odc.stac.configure_rio(
        cloud_defaults=True, GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC"
    )
    ds = odc.stac.load(
        items,
        bands=[*BANDS, MASK],
        resolution=10,
        bbox=spec["bbox"],
        groupby="solar_day",
        chunks={},
    )
    # the user's own decoding: odc-stac keeps the stored int16 and fills with the nodata
    out = xr.Dataset(
        {
            **{band: ds[band].where(ds[band] != NODATA) * SCALE for band in BANDS},
            MASK: ds[MASK],
        }
    ).compute()
    geobox = ds.odc.geobox
    extra = {
        "items": len(items),
        "grid": _grid_of(geobox.affine, geobox.shape.yx, geobox.crs.epsg),
        # what odc-stac took from the items' asset-level raster fields
        "odc_band_metadata": {
            name: {"dtype": str(ds[name].dtype), "nodata": ds[name].attrs.get("nodata")}
            for name in (*BANDS, MASK)
        },
    }
    dates = [str(d)[:10] for d in ds.time.values]
    return {name: out[name].values for name in out.data_vars}, dates, extra


# --- plain stackstac --------------------------------------------------------------------


def run_stackstac(spec: dict) -> tuple[Cube, list[str], dict]:
    import stackstac

    user, password = _creds()
    items = _search(spec)
    env = stackstac.DEFAULT_GDAL_ENV.updated(
        always=dict(GDAL_HTTP_USERPWD=f"{user}:{password}", GDAL_HTTP_AUTH="BASIC")
    )
    # epsg= is required (the items say proj:code, which stackstac 0.5 does not read);
    # resolution= too (without it the 10 and 20 m assets give another grid).
    stack = stackstac.stack(
        items,
        assets=[*BANDS, MASK],
        epsg=spec["grid"]["epsg"],
        resolution=10,
        bounds_latlon=spec["bbox"],
        gdal_env=env,
    )
    # one tile: one item per date, no mosaic (the parent checks the dates)
    values = stack.compute()
    cube = {band: values.sel(band=band).values * SCALE for band in BANDS}
    cube[MASK] = values.sel(band=MASK).values
    extra = {
        "items": len(items),
        "grid": _grid_of(stack.attrs["transform"], stack.shape[-2:], stack.attrs["spec"].epsg),
    }
    dates = [str(d)[:10] for d in stack.time.values]
    return cube, dates, extra


CONTENDERS = {
    "terrascope": run_terrascope,
    "odc-stac": run_odc,
    "stackstac": run_stackstac,
}

#: Imported before the clock (see ``_contenders.IMPORTS``).
IMPORTS = {
    # the package's own list (its planner imports stackstac) and the cloud mask's scipy
    "terrascope": [*_contenders.IMPORTS["terrascope"], "scipy.ndimage"],
    "odc-stac": [
        "xarray",
        "dask.array",
        "distributed",
        "rasterio",
        "pystac_client",
        "odc.stac",
        "odc.geo.geobox",
    ],
    "stackstac": ["dask.array", "distributed", "rasterio", "pystac_client", "stackstac"],
}
