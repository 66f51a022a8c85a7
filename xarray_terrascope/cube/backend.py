"""The ``terrascope`` xarray engine: a thin entrypoint over :func:`dataset.open_cube`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xarray.backends import BackendEntrypoint

from xarray_terrascope.catalog.collections import DEFAULT_COLLECTION
from xarray_terrascope.catalog.items import is_items
from xarray_terrascope.plan.chunks import DEFAULT_CHUNKSIZE
from xarray_terrascope.plan.resampling import DEFAULT_RESAMPLING

__all__ = ["TerrascopeBackendEntrypoint"]


class TerrascopeBackendEntrypoint(BackendEntrypoint):
    """Open Terrascope STAC items as a lazy ``(time, y, x)`` Dataset.

    ``filename_or_obj`` is a WGS84 bbox ``[west, south, east, north]`` (a STAC search
    runs) or a list of ``pystac.Item`` / an ``ItemCollection`` (stacked as given).

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.open_dataset([5.90, 51.24, 5.96, 51.27], engine="terrascope",
    ...                      start="2025-05-01", end="2025-06-30", chunks={})  # doctest: +SKIP
    """

    description = "Terrascope (VITO) Sentinel-1/2 products through its STAC API"
    url = "https://github.com/xarray-terrascope/xarray-terrascope"
    # ``open_dataset_parameters`` is left unset: xarray reads it off the signature below
    # (``xarray.backends.plugins.detect_parameters``), so the two cannot disagree.

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        start: Any = None,
        end: Any = None,
        collection: str = DEFAULT_COLLECTION,
        assets: Sequence[str] | str | None = None,
        max_cloud_cover: float | None = None,
        crs: Any = None,
        resolution: float | None = None,
        credentials: Any = None,
        validate: bool = True,
        bbox: Sequence[float] | None = None,
        decode: bool = True,
        resampling: str | Mapping[str, str] = DEFAULT_RESAMPLING,
        chunksize: int = DEFAULT_CHUNKSIZE,
        prefer_local: bool | None = None,
        mask_clouds: bool = False,
        min_clear: float | None = None,
    ):
        """Search, plan and return the lazy Dataset; no pixel is read.

        Parameters
        ----------
        filename_or_obj
            WGS84 bbox ``[west, south, east, north]``, or pystac Items.
        drop_variables : str or list of str, optional
            Asset keys to leave out of the Dataset.
        start, end : str, date or datetime, optional
            Search interval; a date-only ``end`` includes its whole day; naive = UTC.
        collection : str, default "terrascope-s2-ndvi-v2"
            Collection id (Sentinel-2 NDVI by default).
        assets : str or list of str, optional
            Asset keys, one variable each; default: the collection's.
        max_cloud_cover : float, optional
            Upper bound on ``eo:cloud_cover`` (percent).
        crs : int, str or CRS, optional
            Output CRS; default: the UTM zone of the bbox centre.
        resolution : float, optional
            Output pixel size in CRS units; default: native.
        credentials : Credentials, optional
            Default: the process default from ``login()``.
        validate : bool, default True
            With ``credentials``: prove them at opening with one authenticated request
            to ``TERRASCOPE_DOWNLOAD_URL``, as ``login()`` does; wrong ones raise
            ``AuthenticationError`` there (naming ``credentials=``), not at the first
            read. False skips the request. Without ``credentials`` it does nothing (the
            process default was checked, or not, by ``login``).
        bbox : sequence of 4 floats, optional
            Clip box when ``filename_or_obj`` is a list of items.
        decode : bool, default True
            Physical values as float32 with NaN for no data; False keeps the stored DN.
        resampling : str or dict, default "nearest"
            rasterio resampling name for tiles that must be reprojected or resized, or
            ``{asset: name}`` per asset (assets left out: nearest). Class assets (scene
            classification, cloud masks) stay nearest unless named in such a mapping. With
            nearest, a 20 m or 60 m asset on a 10 m cube is replicated exactly.
        chunksize : int, default 1024
            Spatial size of the stacking chunks (``chunks={}`` uses them), their edges
            at multiples of it from the files' own corner (so on COG tile edges); a
            piece under a quarter of it at either end of a row or column joins its
            neighbour.
        prefer_local : bool, optional
            Terrascope assets carry an alternate ``local`` href (``/data/MTDA/...``),
            readable on Terrascope's own notebooks and VMs. None (default): read the local
            file when it exists on this machine, else the network; True: local files only
            (a missing one is an error); False: always the network.
        mask_clouds : bool, default False
            Make every measurement NaN where the items' scene classification (``SCL``,
            ``SCENECLASSIFICATION_20M``) or ``CLOUDMASK`` says no data, defective, cloud,
            cloud shadow or cirrus, with clouds and shadows grown by 40 m. The mask asset
            is read (and added to the Dataset) even when not in ``assets``; band tiles
            that the mask covers entirely are not fetched.
        min_clear : float, optional
            Leave out the dates whose clear share of the cube (pixels the mask keeps,
            without the 40 m growth) is below this share (0..1); reads only the mask asset
            of every date to decide, at opening. The dropped dates and their shares are
            logged and kept in ``attrs["dropped_dates"]`` and
            ``attrs["dropped_clear_shares"]``; the kept dates' shares in the
            ``clear_share`` coordinate.
        """
        from xarray_terrascope.cube.dataset import open_cube

        if isinstance(drop_variables, str):
            drop_variables = [drop_variables]
        return open_cube(
            filename_or_obj,
            start=start,
            end=end,
            collection=collection,
            assets=assets,
            max_cloud_cover=max_cloud_cover,
            crs=crs,
            resolution=resolution,
            credentials=credentials,
            validate=validate,
            bbox=bbox,
            decode=decode,
            resampling=resampling,
            chunksize=chunksize,
            prefer_local=prefer_local,
            mask_clouds=mask_clouds,
            min_clear=min_clear,
            drop_variables=list(drop_variables) if drop_variables else None,
        )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for pystac Items or an ItemCollection; never touches the network."""
        return is_items(filename_or_obj)
