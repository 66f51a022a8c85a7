"""The ``xarray-terrascope`` console script (:mod:`.main`, one module per command group)
and the main job it runs on the sandbox (:mod:`xarray_terrascope.cli.demo`). The CLI
prints; nothing below it does.

May import every stage and :mod:`xarray_terrascope.testing`; nothing imports it.
"""

from xarray_terrascope.cli.demo import run_demo
from xarray_terrascope.cli.main import build_parser, main
from xarray_terrascope.cli.zonal import zonal_table

__all__ = ["build_parser", "main", "run_demo", "zonal_table"]
