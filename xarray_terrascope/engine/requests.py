"""What a window read asks of one file: frozen, typed values, and the readers' protocol.

:func:`xarray_terrascope.engine.read.read_window` turns a window of the cube into one
request per file: an :class:`AlignedRead` when the file's pixels are pixels of the cube
(the usual Terrascope case), a :class:`WarpedRead` when they must be warped with nearest
neighbour, a :class:`CoarsenRead` when each cube pixel covers exactly ``k`` x ``k`` file
pixels and an area resampling (average, min, ...) reduces them, a :class:`GdalRead`
otherwise (another resampling, a local file, a file the async engine does not decode
exactly). Each has its :class:`Reader`, and every reader
returns the window's stored values for its file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from xarray_terrascope.auth import AnyCredentials, RequestAuth
    from xarray_terrascope.plan.grids import NativeGrid, OutputGrid
    from xarray_terrascope.plan.planner import CubePlan

__all__ = [
    "AlignedRead",
    "CoarsenRead",
    "FileRead",
    "GdalRead",
    "Placement",
    "Reader",
    "WarpedRead",
    "Window",
    "for_pixels",
]


@dataclass(frozen=True)
class Window:
    """A window of the cube's grid: rows ``row0`` to ``row1`` and columns ``col0`` to
    ``col1`` (ends excluded).

    Examples
    --------
    >>> window = Window.of(slice(10, 20), slice(0, 5))
    >>> window.shape, window.rows
    ((10, 5), slice(10, 20, None))
    """

    row0: int
    row1: int
    col0: int
    col1: int

    @classmethod
    def of(cls, rows: slice, cols: slice) -> Window:
        """The window of ``rows`` and ``cols`` (slices with a step of 1)."""
        return cls(int(rows.start), int(rows.stop), int(cols.start), int(cols.stop))

    @property
    def rows(self) -> slice:
        return slice(self.row0, self.row1)

    @property
    def cols(self) -> slice:
        return slice(self.col0, self.col1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


@dataclass(frozen=True)
class Placement:
    """Where a file's pixels sit on the cube's grid, when they are pixels of it.

    Attributes
    ----------
    epsg : int
        The CRS both share.
    x0, y0 : float
        The file's upper-left corner.
    resolution : float
        Pixel size of both.
    row_offset, col_offset : int
        Cube pixel ``(r, c)`` is file pixel ``(r + row_offset, c + col_offset)``.
    """

    epsg: int
    x0: float
    y0: float
    resolution: float
    row_offset: int
    col_offset: int


@dataclass(frozen=True, kw_only=True)
class FileRead:
    """One file's part of one window of the cube.

    Attributes
    ----------
    url : str
        The file (an http(s) URL, or a local path for a :class:`GdalRead`).
    label : str
        What the file is to the user (its item id), named in errors.
    window : Window
        The window of the cube's grid.
    dtype : numpy.dtype
        The stored type.
    fill : numpy scalar
        Value of the window's pixels outside the file.
    access : RequestAuth or None
        What a request for the file may carry (None: no credentials).
    """

    url: str
    label: str
    window: Window
    dtype: np.dtype[Any]
    fill: Any
    access: RequestAuth | None = field(default=None, compare=False)

    @property
    def key(self) -> Hashable:
        """What reads of the same pixels with the same credentials share: never the
        secret, only the credentials' identity. The window is in cube pixels: two cubes
        of one file (other bboxes, grids) have the same windows at other places in it,
        so the key holds where the file's pixels land (:attr:`placed`) too."""
        identity = None if self.access is None else self.access.identity
        # the fill as stored bytes: equal for equal values, NaN included
        fill = np.asarray(self.fill, self.dtype).tobytes()
        kind = type(self).__name__
        return (kind, self.url, self.window, self.dtype.str, fill, identity, self.placed)

    @property
    def placed(self) -> Hashable:
        """Where the file's pixels land on the cube's grid (what, beside the window, says
        which of them a read gives)."""
        return None

    @property
    def nbytes(self) -> int:
        """Bytes of the window's values."""
        height, width = self.window.shape
        return height * width * self.dtype.itemsize


@dataclass(frozen=True, kw_only=True)
class AlignedRead(FileRead):
    """A file whose pixels are pixels of the cube (same CRS and resolution, a whole-pixel
    offset), read by the async engine.

    Attributes
    ----------
    placement : Placement
        Where the file's pixels sit (from the item; checked against the file's header).
    shape : tuple of int
        The file's ``(height, width)`` from the item.
    cube : tuple of int or None
        ``(height, width)`` of the cube: tiles crossing a side of the window that a
        neighbouring window shares are kept for it (None: none are kept).
    needed : numpy.ndarray or None
        bool, the window's shape: the pixels wanted (a cloud mask drops the others).
        Tiles holding none of them are not fetched; their pixels are ``fill``. None:
        every pixel.
    """

    placement: Placement
    shape: tuple[int, int]
    cube: tuple[int, int] | None = None
    needed: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)

    @property
    def placed(self) -> Hashable:
        return self.placement, self.shape

    @property
    def key(self) -> Hashable:
        """As :attr:`FileRead.key`, and which pixels are wanted."""
        if self.needed is None:
            return super().key
        digest = hashlib.blake2b(np.packbits(self.needed).tobytes(), digest_size=16).digest()
        return (super().key, digest)


@dataclass(frozen=True, kw_only=True)
class WarpedRead(FileRead):
    """A file on another grid (another UTM zone, another resolution), read by the async
    engine in its own pixels and warped with nearest neighbour."""

    native: NativeGrid
    target: OutputGrid

    @property
    def placed(self) -> Hashable:
        return self.native, self.target


@dataclass(frozen=True, kw_only=True)
class CoarsenRead(FileRead):
    """A file whose pixels tile the cube's, ``factor`` x ``factor`` file pixels to a cube
    pixel (same CRS, the cube's corner on the file's pixel edges), read by the async
    engine in its own pixels and reduced with an area resampling as GDAL's warper would
    (:mod:`xarray_terrascope.engine.coarsen`).

    Attributes
    ----------
    source : AlignedRead
        The file pixels under the window, as a read on a grid of the file's resolution
        whose pixel ``(r, c)`` is cube pixel ``(r // factor, c // factor)``.
    factor : int
        File pixels per cube pixel, along each axis.
    method : str
        GDAL's name of the resampling (``"average"``, ``"min"``, ``"mode"``...).
    nodata : number or None
        The stored value of no data (excluded from every reduction), None when every
        stored value is data.
    """

    source: AlignedRead
    factor: int
    method: str
    nodata: Any = None

    @property
    def key(self) -> Hashable:
        """As :attr:`FileRead.key`, with the reduction, the value it excludes and the
        wanted pixels."""
        return (super().key, self.factor, self.method, repr(self.nodata), self.source.key)


@dataclass(frozen=True, kw_only=True)
class GdalRead(FileRead):
    """A file read by GDAL's warper (another resampling, a local file, a file the async
    engine does not decode exactly), onto the plan's grid."""

    plan: CubePlan
    asset_index: int
    credentials: AnyCredentials | None = field(default=None, compare=False, repr=False)

    @property
    def placed(self) -> Hashable:
        plan = self.plan
        return plan.epsg, plan.bounds, plan.resolution, plan.resampling_of(self.asset_index)


def for_pixels(request: FileRead, wanted: npt.NDArray[np.bool_] | None) -> FileRead | None:
    """``request`` for the ``wanted`` pixels of its window only (None: every pixel): None
    when none is wanted; an aligned read then skips the tiles holding none of them."""
    if wanted is None or wanted.all():
        return request
    if not wanted.any():
        return None
    if isinstance(request, AlignedRead):
        return replace(request, needed=wanted)
    if isinstance(request, CoarsenRead):  # the file pixels under the wanted cube pixels
        k = request.factor
        source = replace(request.source, needed=wanted.repeat(k, axis=0).repeat(k, axis=1))
        return replace(request, source=source)
    return request


R_contra = TypeVar("R_contra", bound=FileRead, contravariant=True)


class Reader(Protocol[R_contra]):
    """Reads the stored values of a file's part of a window.

    Implemented by :class:`~xarray_terrascope.engine.cog.AlignedReader`,
    :class:`~xarray_terrascope.engine.warp.WarpedReader`,
    :class:`~xarray_terrascope.engine.coarsen.CoarsenReader` and
    :class:`~xarray_terrascope.engine.gdal.GdalReader`.
    """

    async def read(self, request: R_contra) -> npt.NDArray[Any]:
        """The window's values (``request.window.shape``, ``request.dtype``); pixels
        outside the file are ``request.fill``.

        Raises
        ------
        AuthenticationError
            When the server refuses the credentials (or their absence).
        ReadError
            For any other failure, naming the item.
        """
        ...
