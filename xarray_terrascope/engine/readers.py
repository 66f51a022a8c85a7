"""The reader of each kind of request (see :class:`~.requests.Reader`)."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from xarray_terrascope.engine.coarsen import CoarsenReader
from xarray_terrascope.engine.cog import AlignedReader
from xarray_terrascope.engine.gdal import GdalReader
from xarray_terrascope.engine.requests import (
    AlignedRead,
    CoarsenRead,
    FileRead,
    GdalRead,
    Reader,
    WarpedRead,
)
from xarray_terrascope.engine.warp import WarpedReader

__all__ = ["READERS", "read", "reader_for"]

#: The reader of each kind of request.
READERS: dict[type[FileRead], Reader[Any]] = {
    AlignedRead: AlignedReader(),
    WarpedRead: WarpedReader(),
    CoarsenRead: CoarsenReader(),
    GdalRead: GdalReader(),
}


def reader_for(request: FileRead) -> Reader[Any]:
    """The reader of ``request``'s kind."""
    return READERS[type(request)]


async def read(request: FileRead) -> npt.NDArray[Any]:
    """The window's values for ``request``'s file (on the engine's loop)."""
    return await reader_for(request).read(request)
