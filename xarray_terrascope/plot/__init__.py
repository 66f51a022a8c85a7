"""Interactive maps of a ``(time, y, x)`` cube: an hvplot image with a time slider.

:func:`time_slider` builds the plot (a Panel layout holding the hvplot/HoloViews
image and a date slider) and :func:`save_html` writes it as one self-contained HTML
file: the JavaScript, the CSS and every time step are embedded, so the page works
offline, from ``file://`` or any static web server, without a Python process.

hvplot, HoloViews, Panel and Bokeh are optional: ``pip install "xarray-terrascope[plot]"``.
A basemap (``tiles=``) needs geoviews and cartopy as well (``pip install geoviews``).

Examples
--------
>>> import xarray_terrascope.plot as xtp
>>> ndvi = ds.terrascope.ndvi()  # doctest: +SKIP
>>> page = xtp.save_html(xtp.time_slider(ndvi), "ndvi.html")  # doctest: +SKIP
"""

from xarray_terrascope.plot.overlay import LONLAT_TOLERANCE
from xarray_terrascope.plot.slider import save_html, time_slider

__all__ = ["LONLAT_TOLERANCE", "save_html", "time_slider"]
