"""Terrascope's local copies: assets carry an alternate ``local`` href
(``file:///data/MTDA/...``), readable on Terrascope's own notebooks and VMs. Which of
them exist on this machine, asked of the file system as rarely as possible."""

from __future__ import annotations

import os
import time
from urllib.parse import unquote, urlsplit

from xarray_terrascope.cache import BoundedCache
from xarray_terrascope.options import get_options

__all__ = ["local_path"]

#: Missing directories remembered at most.
_ABSENT_DIRS_SIZE = 64
#: ``{directory: when it was found missing}``: the top missing directory of the local
#: hrefs looked up (``/data`` off Terrascope's machines), so that the other files under
#: it cost no system call.
_absent_dirs: BoundedCache[str, float] = BoundedCache(_ABSENT_DIRS_SIZE)


def local_path(href: str | None) -> str | None:
    """The local file an alternate href names, when it exists on this machine.

    Off Terrascope's machines every item's local href lies under a directory that does
    not exist (``/data/MTDA``): that directory is remembered as missing for
    the ``local_absence_seconds`` option, so the reads of a cube ask the file system once, not
    once per file and read (each such call gives up the GIL in the middle of a read).
    """
    if not href:
        return None
    path = href
    if href[:5].lower() == "file:":  # RFC 8089: no host or "localhost", escaped path
        parts = urlsplit(href)
        if parts.netloc.lower() not in ("", "localhost"):
            return None  # another machine's file
        path = unquote(parts.path)
    if not path.startswith("/"):
        return None
    now = time.monotonic()
    remembered = get_options().local_absence_seconds
    with _absent_dirs.lock:  # other threads add
        known = tuple(_absent_dirs.items())
    for missing, since in known:
        if path.startswith(missing) and now - since < remembered:
            return None
    if os.path.isfile(path):
        return path
    folder, top = os.path.dirname(path), None
    while len(folder) > 1 and not os.path.isdir(folder):
        top, folder = folder, os.path.dirname(folder)
    if top is not None:
        with _absent_dirs.lock:
            _absent_dirs.put(top + "/", now)
    return None
