"""Clearing GDAL's process-wide ``/vsicurl/`` cache, which rasterio does not expose.

GDAL caches file sizes, headers and pixel blocks of HTTP files per URL, whoever asked.
After ``logout()`` or a change of credentials, a cached block could answer a read that
the server would now refuse (or serve a 401 that new credentials would fix), so the
package clears the cache then. We call GDAL's public C function ``VSICurlClearCache``
in the very libgdal that rasterio loaded (found in ``/proc/self/maps``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _libgdal() -> ctypes.CDLL | None:
    import rasterio  # noqa: F401  (loads libgdal into the process)

    candidates: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if "libgdal" in path and path not in candidates:
                    candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.VSICurlClearCache  # noqa: B018  (raises AttributeError when absent)
            return lib
        except (OSError, AttributeError):
            continue
    return None


def clear_http_cache() -> bool:
    """Drop everything GDAL's ``/vsicurl/`` layer has cached in this process.

    Returns False (and logs a warning) when libgdal could not be found.
    """
    lib = _libgdal()
    if lib is None:
        logger.warning(
            "Could not find libgdal to clear its HTTP cache: data cached before a logout "
            "or a change of credentials may still be served from memory"
        )
        return False
    lib.VSICurlClearCache()
    return True


def clear_url(url: str) -> None:
    """Drop what GDAL's ``/vsicurl/`` layer remembers of ``url`` (failures included);
    nothing for a local file (which GDAL would report on stderr as a malformed URL)."""
    if not url.lower().startswith(("http://", "https://")):
        return
    lib = _libgdal()
    clear = getattr(lib, "VSICurlPartialClearCache", None) if lib is not None else None
    if clear is None:
        clear_http_cache()
        return
    clear(f"/vsicurl/{url}".encode())
