"""The xarray entry point and the accessor without data: the engine's keywords and
defaults (those of ``open_cube``, as docs/user-guide/opening.md promises them), and what
the accessor says on a Dataset it did not make."""

from __future__ import annotations

import inspect
import re

import pytest
import xarray as xr

from xarray_terrascope.cube.backend import TerrascopeBackendEntrypoint
from xarray_terrascope.cube.dataset import open_cube
from xarray_terrascope.exceptions import TerrascopeError

#: The engine's keywords and defaults, as the table of docs/user-guide/opening.md promises them.
ENGINE_DEFAULTS = {
    "drop_variables": None,
    "start": None,
    "end": None,
    "collection": "terrascope-s2-ndvi-v2",
    "assets": None,
    "max_cloud_cover": None,
    "crs": None,
    "resolution": None,
    "credentials": None,
    "validate": True,
    "bbox": None,
    "decode": True,
    "resampling": "nearest",
    "chunksize": 1024,
    "prefer_local": None,
    "mask_clouds": False,
    "min_clear": None,
}


def _keyword_defaults(function) -> dict:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_the_engine_takes_exactly_open_cubes_keywords_and_defaults():
    """The entry point xarray registers (its parameters read off its signature) and
    :func:`open_cube` take the same keywords with the same defaults: a keyword added to
    one and not the other fails here, and so does a changed default."""
    engine = xr.backends.list_engines()["terrascope"]
    assert isinstance(engine, TerrascopeBackendEntrypoint)
    assert engine.open_dataset_parameters == ("filename_or_obj", *ENGINE_DEFAULTS)
    assert _keyword_defaults(engine.open_dataset) == ENGINE_DEFAULTS
    assert _keyword_defaults(open_cube) == ENGINE_DEFAULTS
    # the docstring's "name : type, default value" lines say the same
    documented = re.findall(r"^\s+(\w+) : [^\n]*, default (.+)$", engine.open_dataset.__doc__, re.M)
    assert {name for name, _ in documented} == {
        "collection",
        "decode",
        "resampling",
        "chunksize",
        "mask_clouds",
        "validate",
    }
    for name, text in documented:
        assert text.strip('"') == str(ENGINE_DEFAULTS[name]), name


def test_accessor_on_a_foreign_dataset_says_what_is_missing():
    plain = xr.Dataset({"a": ("x", [1.0, 2.0])})
    with pytest.raises(TerrascopeError, match="terrascope"):
        _ = plain.terrascope.items
    with pytest.raises(TerrascopeError, match="'time'"):
        plain.terrascope.dates()
    with pytest.raises(TerrascopeError, match="no 'NDVI' variable"):
        plain.terrascope.ndvi()
    with pytest.raises(TerrascopeError, match="terrascope"):
        plain.terrascope.asset_urls()
