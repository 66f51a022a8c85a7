"""Scene classification of the synthetic world: Sen2Cor's SCL and Terrascope's CLOUDMASK.

Both are derived from the world's truth, never from the reflectance. Every 10 m pixel has
a sky class (:class:`Sky`) from the cloud and shadow densities of its 20 m cell (``_sky``),
or :attr:`Sky.NODATA` outside the swath. A 20 m SCL pixel takes the most severe sky class
of the 10 m pixels it covers (on 31UFS and 31UGS these are one cell; 32ULB's clipped grid
starts 10 m off its zone's cells, so there a 20 m pixel straddles up to four cells), and
where the sky is clear, hazy or dim a land class from the ground it covers:

============================  ===============================================  ==========
sky / ground                  rule                                             SCL
============================  ===============================================  ==========
outside the swath             a 60 m block whose centre is beyond the edge     0
cloud, high probability       cloud density > 0.75                             9
cloud, medium probability     cloud density in (0.5, 0.75]                     8
cloud shadow                  shadow density > 0.5 (and no cloud)              3
thin cirrus                   cloud density in (0.35, 0.5]: the hazy edges     10
water                         at least half of the 10 m pixels are water       6
vegetation                    mean cloud-free NDVI >= 0.4                      4
not vegetated                 otherwise                                        5
============================  ===============================================  ==========

Cloud and shadow densities in (0.2, 0.35] (cloud) or (0.2, 0.5] (shadow) alter the
reflectance but are not flagged (:attr:`Sky.HAZE`): the soft edges that masks miss, and
that a dilation catches. The NDVI products mask (255) exactly the cloud and shadow
classes (SCL 3, 8, 9). CLOUDMASK is 1 on cloud, shadow and thin cirrus (SCL 3, 8, 9, 10),
0 elsewhere, 255 outside the swath.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "CLOUDMASK_NODATA",
    "SCL_MEANINGS",
    "Sky",
    "cloudmask_from",
    "land_classes",
    "scl_from",
    "sky_classes",
]

#: Sen2Cor's class names, indexed by SCL value (0..11), as CF ``flag_meanings`` words.
SCL_MEANINGS = (
    "no_data",
    "saturated_or_defective",
    "dark_area_pixels",
    "cloud_shadows",
    "vegetation",
    "not_vegetated",
    "water",
    "unclassified",
    "cloud_medium_probability",
    "cloud_high_probability",
    "thin_cirrus",
    "snow",
)
SCL_NO_DATA, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10
CLOUDMASK_NODATA = 255

#: Density thresholds of the classes (see the module's table).
HAZE_DENSITY, CIRRUS_DENSITY, CLOUD_DENSITY, HIGH_DENSITY = 0.2, 0.35, 0.5, 0.75
SHADOW_DENSITY = 0.5
#: Mean cloud-free NDVI from which a 20 m pixel is vegetation.
VEGETATION_NDVI = 0.4


class Sky(IntEnum):
    """What the sky does to a pixel, by increasing severity (a larger value hides a
    smaller one: a cloud hides its shadow).

    ``truth >= Sky.SHADOW`` is what the NDVI products mask (255); ``truth >= Sky.CIRRUS``
    is what SCL classes 3, 8, 9, 10 (and 0) mask; only :attr:`CLEAR` pixels show the
    ground's reflectance unaltered.
    """

    #: The ground as it is.
    CLEAR = 0
    #: Faint haze or the soft edge of a shadow: the reflectance is altered, SCL does not
    #: flag it (its land class stands).
    HAZE = 1
    #: A hazy cloud edge flagged as thin cirrus (SCL 10); the NDVI products keep it.
    CIRRUS = 2
    #: Cloud shadow (SCL 3).
    SHADOW = 3
    #: Cloud, medium probability (SCL 8).
    CLOUD_MEDIUM = 4
    #: Cloud, high probability (SCL 9).
    CLOUD_HIGH = 5
    #: Outside the swath (SCL 0, bands 32767), or outside the item's grid.
    NODATA = 6


def sky_classes(cloud: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """Return the uint8 :class:`Sky` class of cells with these cloud and shadow densities."""
    out = np.zeros(np.shape(cloud), np.uint8)
    out[(cloud > HAZE_DENSITY) | (shadow > HAZE_DENSITY)] = Sky.HAZE
    out[cloud > CIRRUS_DENSITY] = Sky.CIRRUS
    out[shadow > SHADOW_DENSITY] = Sky.SHADOW
    out[cloud > CLOUD_DENSITY] = Sky.CLOUD_MEDIUM
    out[cloud > HIGH_DENSITY] = Sky.CLOUD_HIGH
    return out


def land_classes(water_share: np.ndarray, ndvi: np.ndarray) -> np.ndarray:
    """Return the uint8 SCL land class (4, 5 or 6) of pixels with this share of water
    and this mean cloud-free NDVI."""
    out = np.where(ndvi >= VEGETATION_NDVI, SCL_VEGETATION, SCL_NOT_VEGETATED).astype(np.uint8)
    out[water_share >= 0.5] = SCL_WATER
    return out


# SCL of each sky class; 255: the land class shows
_SCL_OF_SKY = np.array(
    [255, 255, SCL_CIRRUS, SCL_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_NO_DATA], np.uint8
)
_CLOUDMASK_OF_SKY = np.array([0, 0, 1, 1, 1, 1, CLOUDMASK_NODATA], np.uint8)


def scl_from(sky: np.ndarray, land: np.ndarray) -> np.ndarray:
    """Return the uint8 SCL of pixels with these sky classes and land classes.

    Examples
    --------
    >>> scl_from(np.array([0, 1, 2, 3, 5, 6], np.uint8), np.full(6, 4, np.uint8)).tolist()
    [4, 4, 10, 3, 9, 0]
    """
    out = _SCL_OF_SKY[sky]
    land_shows = out == 255
    out[land_shows] = land[land_shows]
    return out


def cloudmask_from(sky: np.ndarray) -> np.ndarray:
    """Return the uint8 CLOUDMASK (0 clear, 1 cloud, shadow or cirrus, 255 no data).

    Examples
    --------
    >>> cloudmask_from(np.array([0, 1, 2, 3, 4, 5, 6], np.uint8)).tolist()
    [0, 0, 1, 1, 1, 1, 255]
    """
    return _CLOUDMASK_OF_SKY[sky]
