"""The lazy cube: the xarray backend entry point, the Dataset it builds (variables backed
by an xarray ``BackendArray`` whose reads go to the engine), the decoding of stored
values to physical ones, cloud masks read at open, and the items of the cubes opened
(:mod:`.item_store`, for ``ds.terrascope.items``).

May import: :mod:`xarray_terrascope.engine`, :mod:`xarray_terrascope.plan`,
:mod:`xarray_terrascope.catalog`, :mod:`xarray_terrascope.auth` and the base modules;
never analyses, plots, the accessor or the CLI.
"""
