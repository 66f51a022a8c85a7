"""Top-of-canopy reflectance of the synthetic world (``terrascope-s2-toc-v2``).

Ground (cloud-free) reflectance at 10 m comes from the world's cloud-free NDVI ``v`` (the
land unit's curve plus texture, what the NDVI product quantises) and the land cover:
a brightness ``S = nir + red`` per cover, growing with the canopy, and then

    ``red = S (1 - v) / 2``,  ``nir = S (1 + v) / 2``,

so that ``(nir - red) / (nir + red) = v`` exactly (before the int16 quantisation). With
``S = b0 + b1 v``:

=============  =====  =====  =====================================================
cover          b0     b1     e.g.
=============  =====  =====  =====================================================
road           0.20   0      v 0.09: red 0.091, nir 0.109
built-up       0.22   0.10   v 0.20: red 0.096, nir 0.144
woods          0.20   0.14   v 0.86: red 0.022, nir 0.298
crops, grass   0.28   0.16   bare soil v 0.15: red 0.129, nir 0.175; canopy v 0.85:
                             red 0.031, nir 0.385
water          0.05   0      v -0.35: red 0.034, nir 0.016
=============  =====  =====  =====================================================

The other bands are linear in red and nir (``a_red red + a_nir nir + a_0``, one row for
land, one for water; :data:`BANDS`), within the ranges Sentinel-2 shows over such covers.

The sky (see ``_scl``): a cloud of opacity ``w`` (``_scene.opacity``: up to 0.6 on its
hazy edge, 1 from density 0.75) pulls every band towards its bright, flat reflectance
(0.33-0.48, NDVI ~0.01), ``rho -> rho + w (rho_cloud - rho)``; then a shadow blocks a
share ``k`` (``_scene.shadow_dim``, 0.73-0.85 where masked) of the light on what lies
under it, hazy cloud edges included (a model: the shadows of this world mostly fall
beside their clouds, on their hazy edges), and leaves a blue-ish diffuse light, ``rho ->
rho + k (rho_diffuse - rho)``: dark (mostly below 0.12 in every band), with a low NDVI. A cloud
hides its shadow. An unmasked NDVI is wrong under clouds, shadows and haze.

A 20 m or 60 m band is the mean of the 10 m values it covers (``raster:sampling:
area``). Values are stored as int16 ``DN = floor(rho / 0.0001 + 0.5)``, 32767 outside the
swath. AOT (aerosol optical thickness, uint16, scale 0.001, 60 m) is a smooth field of
the ground position and the day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._model import Acquisition, TocProduct
from ._scene import Scene, block_mean, grid
from ._scl import CLOUDMASK_NODATA, cloudmask_from, land_classes, scl_from

__all__ = [
    "ASSETS",
    "BANDS",
    "TOC",
    "Band",
    "TocAsset",
    "render_asset",
    "render_scl",
    "toc_filename",
]

REFLECTANCE_NODATA = 32767
SCALE = 0.0001
#: S = b0 + b1 * NDVI by cover code (road, built-up, woods, 5 crops, water).
_SUM0 = np.array([0.20, 0.22, 0.20, 0.28, 0.28, 0.28, 0.28, 0.28, 0.05], np.float32)
_SUM1 = np.array([0.0, 0.10, 0.14, 0.16, 0.16, 0.16, 0.16, 0.16, 0.0], np.float32)


@dataclass(frozen=True)
class Band:
    """A Sentinel-2 MSI band of the TOC product and how the world makes it.

    ``land`` and ``water`` are ``(a_red, a_nir, a_0)``; ``cloud`` the reflectance of a
    thick cloud, ``diffuse`` what a shadow leaves.
    """

    name: str
    common_name: str
    wavelength: float
    fwhm: float
    res: int
    land: tuple[float, float, float]
    water: tuple[float, float, float]
    cloud: float
    diffuse: float


BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", "coastal", 0.443, 0.027, 60, (0.50, 0.01, 0.03), (0.3, 0.0, 0.05), 0.48, 0.03),
        Band("B02", "blue", 0.490, 0.098, 10, (0.55, 0.02, 0.012), (0.3, 0.0, 0.035), 0.46, 0.025),
        Band("B03", "green", 0.560, 0.045, 10, (0.55, 0.12, 0.015), (0.6, 0.0, 0.03), 0.44, 0.02),
        Band("B04", "red", 0.665, 0.038, 10, (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), 0.42, 0.015),
        Band(
            "B05", "rededge", 0.705, 0.019, 20, (0.75, 0.22, 0.005), (0.3, 0.3, 0.01), 0.42, 0.015
        ),
        Band("B08", "nir", 0.842, 0.145, 10, (0.0, 1.0, 0.0), (0.0, 1.0, 0.0), 0.43, 0.02),
        Band("B8A", "nir08", 0.865, 0.033, 20, (0.0, 1.03, 0.002), (0.0, 0.9, 0.0), 0.43, 0.02),
        Band("B11", "swir16", 1.610, 0.143, 20, (1.2, 0.35, 0.03), (0.0, 0.2, 0.005), 0.33, 0.01),
    )
}


@dataclass(frozen=True)
class TocAsset:
    """One asset (file) of a TOC item: its key, grid, encoding and STAC roles."""

    key: str
    res: int
    dtype: str
    scale: float
    nodata: int | None
    roles: tuple[str, ...]
    file_part: str  # in the file name: ``<prefix>_<file_part>_<res>M_<version>.tif``
    description: str | None = None
    unit: str | None = None

    @property
    def band(self) -> Band | None:
        """The MSI band, for reflectance assets."""
        return BANDS.get(self.key)


ASSETS: dict[str, TocAsset] = {
    **{
        key: TocAsset(
            key, band.res, "int16", SCALE, REFLECTANCE_NODATA, ("data",), f"TOC-{key}", unit="-"
        )
        for key, band in BANDS.items()
    },
    "SCL": TocAsset(
        "SCL",
        20,
        "uint8",
        1.0,
        None,
        ("data-mask",),
        "SCENECLASSIFICATION",
        "Scene classification generated by Sen2Cor",
    ),
    "CLOUDMASK": TocAsset(
        "CLOUDMASK",
        20,
        "uint8",
        1.0,
        CLOUDMASK_NODATA,
        ("data-mask", "cloud"),
        "CLOUDMASK",
        "Cloud mask: 0 clear, 1 cloud, cloud shadow or thin cirrus, 255 no data",
    ),
    "AOT": TocAsset(
        "AOT",
        60,
        "uint16",
        0.001,
        REFLECTANCE_NODATA,
        ("data",),
        "AOT",
        "Aerosol Optical Thickness at native 60M resolution",
        unit="-",
    ),
}


def toc_filename(prefix: str, key: str, version: str) -> str:
    """``<prefix>_TOC-B04_10M_V220.tif``, ``<prefix>_SCENECLASSIFICATION_20M_V220.tif``..."""
    asset = ASSETS[key]
    return f"{prefix}_{asset.file_part}_{asset.res}M_{version}.tif"


TOC = TocProduct(
    "terrascope-s2-toc-v2",
    "TOC_V2",
    "V220",
    "Sentinel-2 top-of-canopy reflectance, V2 (sandbox)",
    "Sentinel-2 L2A top-of-canopy reflectance (iCOR/Sen2Cor, processing version 220) on the "
    "Sentinel-2 tile grid: bands at 10, 20 and 60 m, scene classification, cloud mask, "
    "aerosol optical thickness. Synthetic data of the xarray-terrascope sandbox, in the item "
    "shape Terrascope serves in 2026 (STAC 1.1). Reflectance = 0.0001 * DN; 32767 is no data.",
)


def _combine(coef: tuple[float, float, float], red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    a_red, a_nir, a_0 = (np.float32(v) for v in coef)
    out = red * a_red if a_red else np.zeros_like(red)
    if a_nir:
        out += nir * a_nir
    if a_0:
        out += a_0
    return out


def red_nir(ndvi: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the float32 cloud-free ``(red, nir)`` for NDVI and cover codes."""
    s = _SUM0[code] + _SUM1[code] * ndvi
    s *= np.float32(0.5)
    return s * (np.float32(1.0) - ndvi), s * (np.float32(1.0) + ndvi)


def ground(band: Band, scene: Scene) -> np.ndarray:
    """Return the float32 cloud-free reflectance of ``band`` on the scene's 10 m grid."""
    red, nir = scene.memo("red_nir", lambda: red_nir(scene.ndvi, scene.code))
    out = _combine(band.land, red, nir)
    if band.water != band.land:
        water = scene.water
        out[water] = _combine(band.water, red[water], nir[water])
    return out


def observed(band: Band, rho: np.ndarray, scene: Scene) -> np.ndarray:
    """Return the reflectance seen through the scene's clouds and shadows (exactly
    ``rho`` where the sky is clear)."""
    if scene.weight is not None:
        rho = rho + scene.weight * (np.float32(band.cloud) - rho)
    if scene.dim is not None:
        rho = rho + scene.dim * (np.float32(band.diffuse) - rho)
    return rho


def to_dn(rho: np.ndarray, scale: float, dtype: str) -> np.ndarray:
    """Return ``floor(rho / scale + 0.5)`` clipped to ``[0, 32766]`` as ``dtype``."""
    t = rho * np.float32(1.0 / scale)
    t += np.float32(0.5)
    np.clip(t, 0.0, 32766.0, out=t)
    return t.astype(dtype)


def render_band(scene: Scene, band: Band, *, clouds: bool = True) -> np.ndarray:
    """Return a reflectance band's int16 raster (its own grid), 32767 outside the swath."""
    rho = ground(band, scene)
    if clouds:
        rho = observed(band, rho, scene)
    out = to_dn(block_mean(rho, band.res // 10), SCALE, "int16")
    outside = scene.swath(band.res)
    if outside is not None:
        out[outside] = REFLECTANCE_NODATA
    return out


def render_scl(scene: Scene, *, swath: bool, clouds: bool = True) -> np.ndarray:
    """Return the uint8 20 m scene classification (see ``_scl``); 0 outside the swath
    when ``swath``."""

    def land() -> np.ndarray:
        water = block_mean(scene.water.astype(np.float32), 2)
        return land_classes(water, block_mean(scene.ndvi, 2))

    return scl_from(scene.sky_at(20, swath=swath, clouds=clouds), scene.memo("scl_land", land))


def render_aot(scene: Scene, acq: Acquisition, seed: int) -> np.ndarray:
    """Return the uint16 60 m AOT: ``0.08 + 0.1 * (smooth field in 0..1)``."""
    from pyproj import Transformer

    from ._field import lonlat_to_km

    transform, width, height = grid(scene.tile, 60)
    x = transform.c + 60.0 * (np.arange(width) + 0.5)
    y = transform.f - 60.0 * (np.arange(height) + 0.5)
    gx, gy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(scene.tile.epsg, 4326, always_xy=True).transform(gx, gy)
    kx, ky = lonlat_to_km(lon, lat)
    rng = np.random.default_rng([seed, 7, acq.datetime.toordinal()])
    phase = rng.uniform(0.0, 2 * np.pi, 2)
    level = rng.uniform(0.0, 1.0)
    field = 0.5 + 0.25 * np.sin(kx / 9.0 + phase[0]) + 0.25 * np.cos(ky / 6.0 + phase[1])
    aot = (0.08 + 0.1 * (0.5 * level + 0.5 * field)).astype(np.float32)
    out = to_dn(aot, 0.001, "uint16")
    outside = scene.swath(60)
    if outside is not None:
        out[outside] = REFLECTANCE_NODATA
    return out


def render_asset(
    scene: Scene, acq: Acquisition, seed: int, key: str, *, clouds: bool = True
) -> np.ndarray:
    """Return the raster of a TOC asset (its own grid and dtype)."""
    band = BANDS.get(key)
    if band is not None:
        return render_band(scene, band, clouds=clouds)
    if key == "SCL":
        return render_scl(scene, swath=True, clouds=clouds)
    if key == "CLOUDMASK":
        return cloudmask_from(scene.sky_at(20, swath=True, clouds=clouds))
    if key == "AOT":
        return render_aot(scene, acq, seed)
    raise KeyError(f"no TOC asset {key!r}; the assets are {', '.join(ASSETS)}")
