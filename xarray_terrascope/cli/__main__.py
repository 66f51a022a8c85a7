"""``python -m xarray_terrascope.cli``: the console script."""

import sys

from xarray_terrascope.cli.main import main

sys.exit(main())
