"""Analyses of a cube: zonal statistics per geometry (reading only the windows the
geometries touch) and temporal composites.

May import: :mod:`xarray_terrascope.cube`, :mod:`xarray_terrascope.plan` and lower.
"""
