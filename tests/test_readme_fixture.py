"""The README's "sandbox for your own tests" example, verbatim, as a user would write it."""

import xarray_terrascope as xts
from xarray_terrascope.testing import SAMPLE_FIELD


def test_my_pipeline(terrascope_env):  # TERRASCOPE_* point at the sandbox for this test
    xts.login()
    ds = xts.open_dataset(list(SAMPLE_FIELD), start="2025-05-01", end="2025-05-31")
    ndvi = ds.terrascope.ndvi().mean(["x", "y"]).compute()
    assert float(ndvi.max()) > 0.5  # the synthetic field greens up in May
    xts.logout()
