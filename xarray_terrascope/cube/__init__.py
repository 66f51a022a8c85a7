"""The lazy cube: the xarray backend entry point, the Dataset it builds (variables backed
by an xarray ``BackendArray`` whose reads go to the engine), and the decoding of stored
values to physical ones.

May import: :mod:`xarray_terrascope.engine`, :mod:`xarray_terrascope.plan`,
:mod:`xarray_terrascope.catalog`, :mod:`xarray_terrascope.auth` and the base modules;
never analyses, plots, the accessor or the CLI.
"""
