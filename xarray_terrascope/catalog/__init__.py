"""The STAC catalogue: checked search arguments, the search itself, item helpers, and
what the package knows of Terrascope's collections.

May import: :mod:`xarray_terrascope.config`, :mod:`xarray_terrascope.exceptions`,
:mod:`xarray_terrascope.http_policy` (and pystac, pystac-client); nothing that plans or
reads pixels.
"""
