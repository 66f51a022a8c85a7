"""Spectral indices from the Awesome Spectral Indices catalogue, bands found by common name.

The formulas, band symbols and default constants are the catalogue's, read through
`spyndex <https://github.com/awesome-spectral-indices/spyndex>`_ (its core install is the
catalogue and a small evaluator; plotting and Earth Engine are extras we do not pull).
Nothing here writes a formula by hand.

A cube's variables are matched to the catalogue's band symbols (``R``, ``N``, ``G``,
``B``, ``RE1``, ``S1``...) by their ``eo:common_name`` attribute, compared with the
catalogue's own common names (``red``, ``nir``, ``green``, ``rededge071``, ``swir16``...).
A generic ``rededge`` is told apart by the variable's ``center_wavelength`` (or its
Sentinel-2 ``band_name``). A symbol with no variable of its own is served by a narrower
band inside its spectral range (``nir08``, B8A, for ``N``, the 760-900 nm NIR), so a
20 m cube of B8A computes NDVI too. Everything stays lazy on a dask-backed cube.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xarray_terrascope.analysis.clouds import is_mask_variable
from xarray_terrascope.cube.decode import decode_cf_array
from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["ALIASES", "band_variables", "index_names", "missing_bands", "spectral_index"]

logger = logging.getLogger(__name__)

#: Names analysts use that the catalogue spells differently: ``"NDRE"`` is the
#: catalogue's ``NDREI`` (Normalized Difference Red Edge Index, (N - RE1) / (N + RE1)).
ALIASES: dict[str, str] = {"NDRE": "NDREI"}

#: Where a missing band is found: the collection whose items carry it.
_TOC = "terrascope-s2-toc-v2"
#: STAC common names that stand for several of the catalogue's bands (items may say
#: ``rededge`` for B05, B06 and B07: the wavelength tells them apart).
_GENERIC = frozenset({"rededge", "lwir"})


@dataclass(frozen=True)
class _Band:
    """One band of the catalogue: its symbol, STAC common name, range (nm) and the
    Sentinel-2 band that carries it (None when Sentinel-2 has none)."""

    symbol: str
    common_name: str
    low: float
    high: float
    sentinel2: str | None

    @property
    def asset(self) -> str | None:
        """The Terrascope TOC asset key of the Sentinel-2 band (``B4`` -> ``B04``)."""
        if self.sentinel2 is None:
            return None
        return re.sub(r"^B(\d)$", r"B0\1", self.sentinel2)

    @property
    def family(self) -> str:
        """The common name without its wavelength: ``nir`` for ``nir08``."""
        return re.sub(r"\d+$", "", self.common_name)

    def contains(self, other: _Band) -> bool:
        """Whether ``other`` is a narrower band of the same kind inside this one's range
        (``nir08``, 850-880 nm, inside ``nir``, 760-900 nm)."""
        return (
            other.symbol != self.symbol
            and other.family == self.family
            and self.low <= other.low <= other.high <= self.high
        )


def _spyndex() -> Any:
    import spyndex  # on first use only: tens of ms, and only indices need it

    return spyndex


@functools.cache
def _bands() -> dict[str, _Band]:
    table = {}
    for symbol, band in _spyndex().bands.items():
        s2 = getattr(band, "sentinel2a", None)
        table[symbol] = _Band(
            symbol,
            band.common_name,
            float(band.min_wavelength),
            float(band.max_wavelength),
            s2.band if s2 is not None else None,
        )
    return table


@functools.cache
def _constants() -> dict[str, Any]:
    return {name: constant.default for name, constant in _spyndex().constants.items()}


def index_names() -> list[str]:
    """The names of the catalogue's indices (and of :data:`ALIASES`), sorted.

    Examples
    --------
    >>> names = index_names()
    >>> {"NDVI", "EVI", "NDWI", "NDREI", "NDRE", "NBR", "SAVI"} <= set(names)
    True
    """
    return sorted({*_spyndex().indices.keys(), *ALIASES})


def _resolve_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"name must be an index name such as 'NDVI', got {name!r}")
    catalogue = _spyndex().indices
    if name in catalogue:
        return name
    if name in ALIASES:
        return ALIASES[name]
    by_upper: dict[str, list[str]] = {}
    for known in [*catalogue.keys(), *ALIASES]:
        by_upper.setdefault(known.upper(), []).append(known)
    same = by_upper.get(name.upper(), [])
    if len(same) == 1:
        return ALIASES.get(same[0], same[0])
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=5, cutoff=0.6)
    suggestions = [k for upper in close for k in by_upper[upper]]
    hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise InvalidArgumentError(
        f"{name!r} is not an index of the Awesome Spectral Indices catalogue "
        f"({len(catalogue)} indices; xarray_terrascope.analysis.indices.index_names() lists "
        f"them).{hint}"
    )


def _band_of(da: xr.DataArray) -> _Band | None:
    """The catalogue band a variable holds, from its attributes (None if unknown)."""
    common = da.attrs.get("eo:common_name")
    if not isinstance(common, str) or not common:
        return None
    common = common.lower()
    bands = _bands()
    exact = [b for b in bands.values() if b.common_name == common]
    if exact:
        return exact[0]
    # a generic name ("rededge" for B05, B06 and B07): its wavelength, or its S2 band, says which
    family = [b for b in bands.values() if b.common_name.startswith(common)]
    wavelength = da.attrs.get("center_wavelength")
    if isinstance(wavelength, int | float | np.floating) and np.isfinite(wavelength):
        nm = float(wavelength) * 1000.0  # STAC eo: micrometres
        inside = [b for b in family if b.low <= nm <= b.high]
        if len(inside) == 1:
            return inside[0]
    band_name = da.attrs.get("band_name")
    named = [b for b in family if b.asset is not None and band_name in (b.asset, b.sentinel2)]
    return named[0] if len(named) == 1 else None


def band_variables(ds: xr.Dataset) -> dict[str, list[str]]:
    """The catalogue band symbols the Dataset's variables hold, by ``eo:common_name``.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube whose measurement variables carry ``eo:common_name`` (and, for a generic
        ``rededge``, ``center_wavelength`` in micrometres or ``band_name``).

    Returns
    -------
    dict of str to list of str
        Symbol (``"R"``, ``"N"``, ``"RE1"``...) to the names of the variables holding
        it (usually one). Mask and class variables are left out.

    Examples
    --------
    >>> ds = xr.Dataset({
    ...     "B04": ("x", [0.1], {"eo:common_name": "red"}),
    ...     "B05": ("x", [0.2], {"eo:common_name": "rededge", "center_wavelength": 0.705}),
    ...     "B8A": ("x", [0.4], {"eo:common_name": "nir08"}),
    ... })
    >>> band_variables(ds)
    {'R': ['B04'], 'RE1': ['B05'], 'N2': ['B8A']}
    """
    found: dict[str, list[str]] = {}
    for name, da in ds.data_vars.items():
        if is_mask_variable(name, da):
            continue
        band = _band_of(da)
        if band is not None:
            found.setdefault(band.symbol, []).append(str(name))
    return found


def _physical(da: xr.DataArray) -> xr.DataArray:
    """Float values whatever the cube's ``decode``: stored numbers are decoded (lazily)."""
    if da.dtype.kind != "f" or "scale_factor" in da.attrs:
        da = decode_cf_array(da).astype("float32")
    return da


def _band_variable(ds: xr.Dataset, symbol: str, held: Mapping[str, list[str]]) -> str | None:
    """The variable that serves a band symbol: its own, else a narrower band inside it."""
    names = held.get(symbol)
    if not names:
        band = _bands()[symbol]
        narrower = [b.symbol for b in _bands().values() if band.contains(b) and held.get(b.symbol)]
        if not narrower:
            return None
        names = held[narrower[0]]
        logger.info("band %s (%s) taken from %s", symbol, band.common_name, names[0])
    if len(names) > 1:
        raise InvalidArgumentError(
            f"Several variables hold band {symbol} ({_bands()[symbol].common_name}): "
            f"{', '.join(names)}; pass {symbol}='<variable>' to choose one"
        )
    return names[0]


def _missing_message(index: str, asked: str, missing: list[str]) -> str:
    bands = _bands()
    lacking, assets, absent = [], [], []
    for symbol in missing:
        band = bands[symbol]
        narrower = [b for b in bands.values() if band.contains(b)]
        names = [band.common_name, *(b.common_name for b in narrower)]
        if band.family != band.common_name and band.family in _GENERIC:
            names.append(f"{band.family} at {band.low:g}-{band.high:g} nm")
        lacking.append(f"{symbol} (eo:common_name {' or '.join(map(repr, names))})")
        if band.asset is None:
            absent.append(band.common_name)
        else:
            alt = "".join(f" or {b.asset!r}" for b in narrower if b.asset)
            assets.append(f"{band.asset!r}{alt} ({band.common_name})")
    label = index if asked == index else f"{index} (asked as {asked!r})"
    todo = []
    if assets:
        todo.append(f"add {' and '.join(assets)} to assets= (collection {_TOC!r})")
    if absent:
        todo.append(f"Sentinel-2 has no {' or '.join(absent)} band")
    platforms = ", ".join(_spyndex().indices[index].platforms)
    fix = "; ".join(todo)
    return (
        f"{label} needs bands this Dataset lacks: {', '.join(lacking)}. Bands are found by "
        f"their 'eo:common_name' attribute. {fix[0].upper()}{fix[1:]}; or pass the band "
        f"as {missing[0]}=<variable name or DataArray>. {index} is defined for {platforms}."
    )


def missing_bands(ds: xr.Dataset, name: str) -> list[str]:
    """The common names of the bands index ``name`` needs and the Dataset lacks.

    Examples
    --------
    >>> ds = xr.Dataset({"B04": ("x", [0.1], {"eo:common_name": "red"})})
    >>> missing_bands(ds, "NDVI")
    ['nir']
    """
    index = _resolve_name(name)
    held = band_variables(ds)
    needed = [s for s in _spyndex().indices[index].bands if s in _bands()]
    return [_bands()[s].common_name for s in needed if _band_variable(ds, s, held) is None]


def _parameter(ds: xr.Dataset, index: str, symbol: str, value: Any) -> Any:
    if isinstance(value, str):
        if value not in ds.data_vars:
            raise InvalidArgumentError(
                f"{symbol}={value!r}: no such variable; this Dataset has "
                f"{', '.join(map(str, ds.data_vars))}"
            )
        return _physical(ds[value])
    if isinstance(value, xr.DataArray):
        return value
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return float(value)  # a Python float keeps float32 inputs float32 (NEP 50)
    raise InvalidArgumentError(
        f"{index} parameter {symbol} must be a number, a DataArray or a variable name, "
        f"got {type(value).__name__}"
    )


def spectral_index(ds: xr.Dataset, name: str, **params: Any) -> xr.DataArray:
    """Compute a spectral index of the Awesome Spectral Indices catalogue on a cube.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube, with measurement variables carrying ``eo:common_name`` (as the
        terrascope engine writes them); stored numbers are decoded first.
    name : str
        The catalogue's name of the index (``"NDVI"``, ``"EVI"``, ``"NDWI"``, ``"NBR"``,
        ``"SAVI"``...; case is ignored where unambiguous). ``"NDRE"`` is the catalogue's
        ``"NDREI"``, (N - RE1) / (N + RE1), see :data:`ALIASES`.
    **params
        Constants of the formula, overriding the catalogue's defaults (``L``, ``g``,
        ``C1``, ``C2``...; note that the catalogue's ``L`` is 1.0, EVI's value, also for
        SAVI: pass ``L=0.5`` for Huete's usual SAVI). A band symbol (``N="B8A"``) picks
        the variable for that band, or gives its values (a DataArray or a number).

    Returns
    -------
    xarray.DataArray
        float32, named after the index, NaN where an input is NaN; dask-backed (lazy)
        when the cube is. Attributes: ``long_name``, ``formula``, ``reference`` and
        ``terrascope:inputs`` (which variable or value served each symbol).

    Raises
    ------
    InvalidArgumentError
        An unknown index (the message lists close names), a band the Dataset lacks (the
        message names it and the asset to add), a constant without a default and not
        given, or a parameter the index does not take.

    Examples
    --------
    >>> import numpy as np
    >>> ds = xr.Dataset({
    ...     "B04": ("x", np.array([0.05, 0.10], "float32"), {"eo:common_name": "red"}),
    ...     "B08": ("x", np.array([0.45, np.nan], "float32"), {"eo:common_name": "nir"}),
    ... })
    >>> ndvi = spectral_index(ds, "NDVI")
    >>> ndvi.dtype, ndvi.values.astype(float).round(3).tolist()
    (dtype('float32'), [0.8, nan])
    >>> spectral_index(ds, "SAVI", L=0.5).values.astype(float).round(3).tolist()
    [0.6, nan]
    """
    spyndex = _spyndex()
    index = _resolve_name(name)
    entry = spyndex.indices[index]
    symbols = list(entry.bands)
    unknown = sorted(set(params) - set(symbols))
    if unknown:
        raise InvalidArgumentError(
            f"{index} takes no parameter {', '.join(unknown)}; its bands and constants are "
            f"{', '.join(symbols)}"
        )
    held = band_variables(ds)
    values: dict[str, Any] = {}
    inputs: list[str] = []
    missing: list[str] = []
    for symbol in symbols:
        if symbol in params:
            values[symbol] = _parameter(ds, index, symbol, params[symbol])
            given = params[symbol]
            shown = given if isinstance(given, str | int | float) else "<given>"
            inputs.append(f"{symbol}={shown}")
        elif symbol in _bands():
            variable = _band_variable(ds, symbol, held)
            if variable is None:
                missing.append(symbol)
                continue
            values[symbol] = _physical(ds[variable])
            inputs.append(f"{symbol}={variable}")
        elif _constants().get(symbol) is not None:
            values[symbol] = float(_constants()[symbol])
            inputs.append(f"{symbol}={values[symbol]:g}")
        elif symbol in ds.data_vars:  # radar symbols (VV, VH...) are variable names
            values[symbol] = _physical(ds[symbol])
            inputs.append(f"{symbol}={symbol}")
        else:
            raise InvalidArgumentError(
                f"{index} needs {symbol}, which has no default: pass {symbol}=... "
                f"(formula: {entry.formula}; kernel values such as kNN and kNR come from "
                "spyndex.computeKernel)"
            )
    if missing:
        raise InvalidArgumentError(_missing_message(index, name, missing))
    result = spyndex.computeIndex(index=index, params=values)
    if not isinstance(result, xr.DataArray):
        result = xr.DataArray(np.float32(result))
    result = result.astype("float32").rename(index)
    result.attrs = {
        "long_name": entry.long_name,
        "formula": entry.formula,
        "reference": entry.reference,
        "terrascope:inputs": " ".join(inputs),
    }
    return result
