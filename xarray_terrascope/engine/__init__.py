"""The read engine: from a cube plan and a window to the stored values of that window.

One asyncio event loop per process (:mod:`.aio`) runs the network I/O: ranged GETs with
per-origin adaptive limits and retries (:mod:`.transport`, :mod:`.limiter`), what is
learnt of each origin (:mod:`.origins`), COG headers kept in memory and on disk
(:mod:`.header_cache`, :mod:`.header_files`), decoded tiles shared between neighbouring
windows (:mod:`.tile_store`), COG reads and decoding with async-tiff (:mod:`.cog`, a
file as its store in :mod:`.source`), nearest-neighbour warps in memory (:mod:`.warp`),
reading ahead (:mod:`.readahead`), what the process remembers of the windows it reads
and the work it starts around each read (:mod:`.windows`). Files that must be resampled
otherwise, and local files, go through GDAL (:mod:`.gdal`, :mod:`.gdal_cache`).
:mod:`.read` reads one window of a plan: it chooses the path per file and mosaics the
dates.

May import: :mod:`xarray_terrascope.plan`, :mod:`xarray_terrascope.catalog`,
:mod:`xarray_terrascope.auth`, :mod:`xarray_terrascope.config`,
:mod:`xarray_terrascope.exceptions`, :mod:`xarray_terrascope.http_policy`; never the cube,
analyses, plots or the CLI.
"""
