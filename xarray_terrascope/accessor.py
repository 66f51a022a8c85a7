"""The ``.terrascope`` accessor on Datasets (and DataArrays) from the ``terrascope`` engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pystac
import xarray as xr

from xarray_terrascope.analysis.clouds import DEFAULT_DILATION
from xarray_terrascope.cube.decode import decode_cf_array
from xarray_terrascope.exceptions import InvalidArgumentError, TerrascopeError
from xarray_terrascope.plan.sparse import DEFAULT_BLOCK_SIZE

__all__ = ["TerrascopeDataArrayAccessor", "TerrascopeDatasetAccessor", "decode_raw"]

_NOT_FROM_ENGINE = (
    "This {kind} did not come from xr.open_dataset(..., engine='terrascope'): it has no "
    "{missing}. Open it with the terrascope engine (or xarray_terrascope.open_dataset)."
)


def decode_raw(da: xr.DataArray) -> xr.DataArray:
    """Turn stored digital numbers into physical float32 values, no data -> NaN.

    Uses the CF attributes ``scale_factor``, ``add_offset`` and ``_FillValue`` that the
    engine writes with ``decode=False``. A float array is returned as it is.

    Examples
    --------
    >>> import numpy as np
    >>> raw = xr.DataArray(np.array([0, 125, 255], "uint8"),
    ...                    attrs={"scale_factor": 0.004, "add_offset": -0.08, "_FillValue": 255})
    >>> decode_raw(raw).values.astype(float).round(3).tolist()
    [-0.08, 0.42, nan]
    """
    if da.dtype.kind == "f" and "scale_factor" not in da.attrs:
        return da
    # xarray's own CF decoder, the one the engine's decoding is checked against
    return decode_cf_array(da).astype("float32").rename(da.name)


def _mean_of_zonal(series: xr.DataArray) -> xr.DataArray:
    """The per-geometry mean of zonal statistics (their ``zonal_statistics`` dimension):
    the curve the season analyses take."""
    if "zonal_statistics" not in series.dims:
        return series
    names = [str(name) for name in series["zonal_statistics"].values]
    if "mean" not in names:
        raise InvalidArgumentError(
            f"these zonal statistics hold {', '.join(names)}, no 'mean', the curve the "
            "season analyses take: compute zonal_stats(..., stats=['mean', ...])"
        )
    return series.sel(zonal_statistics="mean", drop=True)


def _dates(obj: xr.Dataset | xr.DataArray, kind: str) -> list[str]:
    if "time" not in obj.coords:
        raise TerrascopeError(_NOT_FROM_ENGINE.format(kind=kind, missing="'time' coordinate"))
    days = np.atleast_1d(obj["time"].values).astype("datetime64[D]")  # a scalar after isel
    return [str(day) for day in np.unique(days)]


class _TerrascopeAccessor:
    """What ``ds.terrascope`` and ``da.terrascope`` share: dates and the analyses."""

    _kind = "Dataset"

    def __init__(self, xarray_obj: Any) -> None:
        self._obj = xarray_obj

    def dates(self) -> list[str]:
        """The acquisition dates as ``YYYY-MM-DD`` strings (unique, sorted)."""
        return _dates(self._obj, self._kind)

    def composite(self, freq: str = "1MS", how: str = "median") -> xr.Dataset:
        """Temporal composites over valid pixels, with the count of valid observations.

        See :func:`xarray_terrascope.analysis.composite.composite`.

        Examples
        --------
        >>> ds.terrascope.composite("1MS", "max")  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.composite import composite

        return composite(self._obj, freq, how)

    def smooth(
        self,
        method: str = "whittaker",
        lmbda: float | None = None,
        freq: str | None = None,
        weights: xr.DataArray | None = None,
        **options: Any,
    ) -> Any:
        """Whittaker (or Savitzky-Golay) smoothing and gap filling along ``time``.

        A Dataset smooths each numeric variable with a ``time`` dimension. See
        :func:`xarray_terrascope.analysis.smooth.smooth`.

        Examples
        --------
        >>> ds.NDVI.terrascope.smooth(lmbda=30, expectile=0.8, freq="5D")  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.smooth import smooth, smooth_dataset

        kwargs = {"method": method, "lmbda": lmbda, "freq": freq, "weights": weights, **options}
        if isinstance(self._obj, xr.Dataset):
            decoded = {
                name: decode_raw(var)
                for name, var in self._obj.data_vars.items()
                if "time" in var.dims and var.dtype.kind in "iuf"
            }
            return smooth_dataset(self._obj.assign(decoded), **kwargs)
        return smooth(decode_raw(self._obj), **kwargs)

    def _series(self, variable: str | None) -> xr.DataArray:
        obj = self._obj
        if isinstance(obj, xr.DataArray):
            return _mean_of_zonal(decode_raw(obj))
        timed = [n for n, v in obj.data_vars.items() if "time" in v.dims]
        if variable is None:
            if "NDVI" in timed:
                variable = "NDVI"
            elif len(timed) == 1:
                variable = str(timed[0])
            else:
                raise InvalidArgumentError(
                    f"pass variable= one of {', '.join(map(str, timed)) or '(none with time)'}"
                )
        elif variable not in obj.data_vars:
            raise InvalidArgumentError(
                f"variable={variable!r} is not in this Dataset; choose one of "
                f"{', '.join(map(str, obj.data_vars))}"
            )
        return _mean_of_zonal(decode_raw(obj[variable]))

    def phenology(
        self, threshold: float = 0.5, *, variable: str | None = None, **options: Any
    ) -> xr.Dataset:
        """Start, peak and end of season per pixel or parcel (TIMESAT's seasonal
        amplitude). A Dataset uses ``variable`` (default NDVI; the ``mean`` of a
        zonal_stats result). See :func:`xarray_terrascope.analysis.phenology.phenology`.

        Examples
        --------
        >>> zs.terrascope.phenology(lmbda=30, expectile=0.8).to_dataframe()  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.phenology import phenology

        return phenology(self._series(variable), threshold, **options)

    def events(
        self,
        min_drop: float = 0.1,
        window: int = 10,
        *,
        variable: str | None = None,
        **options: Any,
    ) -> xr.Dataset:
        """Sharp drops (mowing, harvest) per pixel or parcel: date and size, an ``event``
        dimension. See :func:`xarray_terrascope.analysis.events.events`.

        Examples
        --------
        >>> zs.terrascope.events(0.1, lmbda=30, expectile=0.8)  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.events import events

        return events(self._series(variable), min_drop, window, **options)

    def _zonal_stats(self, geometries: Any, stats: Any, items: Any, **options: Any) -> Any:
        from xarray_terrascope.analysis.zonal import zonal_stats

        return zonal_stats(self._obj, geometries, stats, items=items, **options)


class TerrascopeDatasetAccessor(_TerrascopeAccessor):
    """``ds.terrascope``: NDVI and other spectral indices, cloud masking, the STAC items,
    asset URLs, dates, the time slider and the analyses (zonal statistics, composites,
    smoothing, phenology, events).

    Examples
    --------
    >>> ds = xr.open_dataset(bbox, engine="terrascope", start="2025-05-01",
    ...                      end="2025-06-30")  # doctest: +SKIP
    >>> ds.terrascope.dates()[:2]  # doctest: +SKIP
    ['2025-05-01', '2025-05-03']
    """

    def _attr(self, name: str) -> Any:
        if name not in self._obj.attrs:
            raise TerrascopeError(
                _NOT_FROM_ENGINE.format(kind="Dataset", missing=f"{name!r} attribute")
            )
        return self._obj.attrs[name]

    @property
    def items(self) -> list[pystac.Item]:
        """The STAC items behind the cube's dates, sorted by datetime.

        Only the items of the dates still in the Dataset: after ``ds.isel(time=[0])``,
        those of the first date. In the process that opened the cube they are kept in
        memory; elsewhere (a worker, a Dataset read back from disk) they are fetched
        again by id.
        """
        from xarray_terrascope.catalog.items import item_moment
        from xarray_terrascope.cube.item_store import recall_items

        if "item_ids" not in self._obj.coords:
            raise TerrascopeError(
                _NOT_FROM_ENGINE.format(kind="Dataset", missing="'item_ids' coordinate")
            )
        ids = [
            i for group in np.atleast_1d(self._obj["item_ids"].values) for i in str(group).split()
        ]
        wanted = set(ids)
        items = recall_items(self._attr("terrascope_items_key"))
        if items is None:
            from xarray_terrascope.catalog.search import search

            items = search(self._attr("collection"), ids=ids) if ids else []
        kept = [item for item in items if item.id in wanted]
        return sorted(kept, key=lambda item: (item_moment(item), item.id))

    def asset_urls(self, asset: str = "NDVI") -> list[str]:
        """Hrefs of ``asset`` for every item of the cube, in datetime order."""
        from xarray_terrascope.catalog.search import asset_urls

        return asset_urls(self.items, asset)

    def ndvi(self) -> xr.DataArray:
        """NDVI as physical float32 values (NaN = no data).

        The ``NDVI`` variable of an NDVI cube (also from a ``decode=False`` cube); else
        computed from the red and near-infrared reflectance bands, found by their
        ``eo:common_name`` (``red``; ``nir``, or ``nir08``), as ``(nir - red) / (nir +
        red)`` (see :meth:`index`).

        Examples
        --------
        >>> ds = xr.open_dataset(bbox, engine="terrascope", collection="terrascope-s2-toc-v2",
        ...                      assets=["B04", "B08"])  # doctest: +SKIP
        >>> ds.terrascope.ndvi()  # doctest: +SKIP
        """
        if "NDVI" in self._obj.data_vars:
            return decode_raw(self._obj["NDVI"])
        from xarray_terrascope.analysis.indices import missing_bands, spectral_index

        lacking = missing_bands(self._obj, "NDVI")
        if lacking:
            raise TerrascopeError(
                "This Dataset has no 'NDVI' variable (it has: "
                f"{', '.join(map(str, self._obj.data_vars)) or 'none'}), nor the red and "
                "near-infrared reflectance bands to compute it from (found by their "
                f"'eo:common_name'; missing: {', '.join(lacking)}). Open the collection "
                "'terrascope-s2-ndvi-v2', or 'terrascope-s2-toc-v2' with "
                "assets=['B04', 'B08'] (red and nir reflectance)."
            )
        return spectral_index(self._obj, "NDVI")

    def index(self, name: str, **params: Any) -> xr.DataArray:
        """A spectral index of the Awesome Spectral Indices catalogue (through spyndex).

        Bands are found by their ``eo:common_name`` (red, nir, green, blue, rededge,
        swir16...); constants default to the catalogue's and are overridden by
        ``params``. See :func:`xarray_terrascope.analysis.indices.spectral_index`.

        Parameters
        ----------
        name : str
            ``"NDVI"``, ``"EVI"``, ``"NDWI"``, ``"NDRE"`` (the catalogue's ``NDREI``),
            ``"NBR"``, ``"SAVI"`` or any other index of the catalogue.
        **params
            Constants (``L=0.5``, ``g=2.5``...) or a band's variable (``N="B8A"``).

        Returns
        -------
        xarray.DataArray
            float32, NaN where an input is NaN, lazy on a dask-backed cube.

        Raises
        ------
        InvalidArgumentError
            An unknown index (close names are listed), or a band the cube lacks (with
            the assets to add).

        Examples
        --------
        >>> ds = xr.open_dataset(bbox, engine="terrascope", collection="terrascope-s2-toc-v2",
        ...                      assets=["B02", "B04", "B08"])  # doctest: +SKIP
        >>> evi = ds.terrascope.index("EVI")  # doctest: +SKIP
        >>> savi = ds.terrascope.index("SAVI", L=0.5)  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.indices import spectral_index

        return spectral_index(self._obj, name, **params)

    def mask_clouds(
        self,
        classes: Iterable[int | str] | int | str | None = None,
        dilation: float = DEFAULT_DILATION,
        source: str | None = None,
    ) -> xr.Dataset:
        """The cube with every measurement NaN where the mask says cloud, shadow, cirrus,
        no data or defective.

        Default SCL classes masked: 0, 1, 3, 8, 9, 10 (snow, 11, is kept: add it with
        ``classes=[*DEFAULT_SCL_CLASSES, 11]``), with a buffer of ``dilation`` metres
        (default 40) around clouds and shadows; ``source="CLOUDMASK"`` uses the cloud
        mask instead. See :func:`xarray_terrascope.analysis.clouds.mask_clouds`.

        Examples
        --------
        >>> ds = xr.open_dataset(bbox, engine="terrascope", collection="terrascope-s2-toc-v2",
        ...                      assets=["B04", "B08", "SCL"])  # doctest: +SKIP
        >>> clear = ds.terrascope.mask_clouds(dilation=60)  # doctest: +SKIP
        >>> clear.terrascope.ndvi()  # doctest: +SKIP
        """
        from xarray_terrascope.analysis.clouds import mask_clouds

        return mask_clouds(self._obj, classes, dilation, source)

    def plot_time_slider(self, variable: str | None = None, **kwargs: Any):
        """An hvplot image with a time slider; see :func:`xarray_terrascope.plot.time_slider`."""
        from xarray_terrascope.plot import time_slider

        if variable is None:
            if "NDVI" in self._obj.data_vars:
                variable = "NDVI"
            elif len(self._obj.data_vars) == 1:
                variable = next(iter(self._obj.data_vars))
            else:
                raise TerrascopeError(
                    "Several variables: pass variable= one of "
                    f"{', '.join(map(str, self._obj.data_vars))}"
                )
        elif variable not in self._obj.data_vars:
            raise InvalidArgumentError(
                f"variable={variable!r} is not in this Dataset; choose one of "
                f"{', '.join(map(str, self._obj.data_vars))}"
            )
        return time_slider(decode_raw(self._obj[variable]), **kwargs)

    def zonal_stats(
        self,
        geometries: Any,
        stats: str | Sequence[str] = "mean",
        *,
        name: str = "geometry",
        index: bool | None = None,
        all_touched: bool = False,
        method: str = "rasterize",
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> xr.Dataset:
        """Per-geometry statistics reading only the tiles the geometries touch.

        xvec's arguments and layout; see :func:`xarray_terrascope.analysis.zonal.zonal_stats`.

        Examples
        --------
        >>> ds.terrascope.zonal_stats(parcels, ["mean", "count"])  # doctest: +SKIP
        """
        from xarray_terrascope.cube.item_store import recall_items

        key = self._obj.attrs.get("terrascope_items_key")
        items = recall_items(key) if key else None
        return self._zonal_stats(
            geometries,
            stats,
            items,
            name=name,
            index=index,
            all_touched=all_touched,
            method=method,
            block_size=block_size,
        )


class TerrascopeDataArrayAccessor(_TerrascopeAccessor):
    """``da.terrascope``: dates, decoding, the time slider and the analyses of one variable."""

    _kind = "DataArray"

    def decode(self) -> xr.DataArray:
        """Physical float32 values (see :func:`decode_raw`)."""
        return decode_raw(self._obj)

    def plot_time_slider(self, **kwargs: Any):
        """An hvplot image with a time slider; see :func:`xarray_terrascope.plot.time_slider`."""
        from xarray_terrascope.plot import time_slider

        return time_slider(decode_raw(self._obj), **kwargs)

    def zonal_stats(
        self,
        geometries: Any,
        stats: str | Sequence[str] = "mean",
        *,
        name: str = "geometry",
        index: bool | None = None,
        all_touched: bool = False,
        method: str = "rasterize",
        block_size: int = 256,
        items: Sequence[pystac.Item] | None = None,
    ) -> xr.DataArray:
        """Per-geometry statistics reading only the tiles the geometries touch.

        xvec's arguments and layout; see :func:`xarray_terrascope.analysis.zonal.zonal_stats`.
        A DataArray does not know its items: pass ``items=ds.terrascope.items`` to align
        the read blocks to the files' tiles (``ds.terrascope.zonal_stats`` does it).

        Examples
        --------
        >>> ds.NDVI.terrascope.zonal_stats(parcels, ["mean", "count"])  # doctest: +SKIP
        """
        return self._zonal_stats(
            geometries,
            stats,
            items,
            name=name,
            index=index,
            all_touched=all_touched,
            method=method,
            block_size=block_size,
        )


xr.register_dataset_accessor("terrascope")(TerrascopeDatasetAccessor)
xr.register_dataarray_accessor("terrascope")(TerrascopeDataArrayAccessor)
