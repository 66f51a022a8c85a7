"""One file's part of an output window, as decoded tiles not yet copied into it.

The read engine's event loop thread drives every request of the process; each numpy copy
there lets go of the GIL and then waits to take it back while other threads run, which
held up the reads in flight (about 0.1 s of the loop's time for the 148 files of the
benchmark's field, for 0.03 s of copying). So the loop hands back :class:`Pieces`, and
the thread that wants the window (a dask task, or ``.load()``) pastes them straight into
its output, also saving the per-file window array the loop used to fill first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Pieces"]


@dataclass(frozen=True)
class Pieces:
    """Decoded tiles of one file and where each lands in a window.

    Attributes
    ----------
    shape : tuple of int
        The window's ``(height, width)``.
    dtype : numpy.dtype
        The window's (storage) dtype; tiles are viewed as it.
    fill
        The value of the window's pixels outside the file.
    parts : tuple
        ``(tile, tile_slices, window_slices)`` for each tile: ``tile[tile_slices]`` is
        the window's ``[window_slices]``. Tiles may be shared with other reads: they are
        only read.

    Examples
    --------
    >>> tile = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> p = Pieces((2, 3), np.dtype(np.uint8), 255,
    ...            ((tile, (slice(2, 4), slice(0, 2)), (slice(0, 2), slice(1, 3))),))
    >>> p.array().tolist()
    [[255, 8, 9], [255, 12, 13]]
    >>> out = np.array([[1, 255, 255], [255, 255, 7]], np.uint8)
    >>> p.paste(out, only_nodata=255)
    >>> out.tolist()
    [[1, 8, 9], [255, 12, 7]]
    """

    shape: tuple[int, int]
    dtype: np.dtype
    fill: Any
    parts: tuple[tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]], ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the tiles held (at least those of the window's pixels they give)."""
        return sum(tile.nbytes for tile, _, _ in self.parts)

    def paste(self, out: np.ndarray, *, only_nodata: Any = None) -> None:
        """Copy the file's pixels into ``out`` (the window's shape); with
        ``only_nodata``, only where ``out`` holds that value (NaN: where it is NaN)."""
        nan = isinstance(only_nodata, (float, np.floating)) and bool(np.isnan(only_nodata))
        for tile, src, dst in self.parts:
            values = tile[src].view(self.dtype)
            if only_nodata is None:
                out[dst] = values
                continue
            target = out[dst]
            np.copyto(target, values, where=np.isnan(target) if nan else target == only_nodata)

    def array(self) -> np.ndarray:
        """The window as a new array (``fill`` outside the file)."""
        covered = sum(
            (dst[0].stop - dst[0].start) * (dst[1].stop - dst[1].start) for _, _, dst in self.parts
        )
        whole = covered == self.shape[0] * self.shape[1]
        out = (
            np.empty(self.shape, self.dtype)
            if whole
            else np.full(self.shape, self.fill, self.dtype)
        )
        self.paste(out)
        return out
