"""Planning a cube: STAC items to a picklable, secret-free plan of what to read where.

:mod:`.planner` turns items into a :class:`~.planner.CubePlan` (output grid, per-date
mosaic groups, decoding, each file's own grid); it is the only module that imports
stackstac (pinned, unmaintained), with the grids of :mod:`.grids` and the resampling
methods of :mod:`.resampling`. :mod:`.chunks` lays out the chunks of a lazy cube on
the files' own pixel grid, :mod:`.sparse` the windows that a set of geometries needs.
Nothing here does I/O on pixels.

May import: :mod:`xarray_terrascope.catalog`, :mod:`xarray_terrascope.auth`,
:mod:`xarray_terrascope.config`, :mod:`xarray_terrascope.exceptions`.
"""
