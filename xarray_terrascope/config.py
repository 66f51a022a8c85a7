"""Endpoints, environment variable names, numeric settings, origins and URL redaction.

Everything here is read at call time: changing ``TERRASCOPE_STAC_URL`` (or any other
variable) between two calls takes effect on the second call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from urllib.parse import urlsplit

__all__ = [
    "download_hosts",
    "download_url",
    "int_setting",
    "origin",
    "public_url",
    "redact",
    "redacted",
    "stac_url",
]

logger = logging.getLogger(__name__)

ENV_STAC_URL = "TERRASCOPE_STAC_URL"
ENV_DOWNLOAD_URL = "TERRASCOPE_DOWNLOAD_URL"
ENV_DOWNLOAD_HOSTS = "TERRASCOPE_DOWNLOAD_HOSTS"
ENV_USERNAME = "TERRASCOPE_USERNAME"
ENV_PASSWORD = "TERRASCOPE_PASSWORD"
ENV_NETRC = "NETRC"

DEFAULT_STAC_URL = "https://stac.terrascope.be"
DEFAULT_DOWNLOAD_URL = "https://services.terrascope.be/download/"


def stac_url() -> str:
    """Return the STAC API root, from ``TERRASCOPE_STAC_URL`` or the public default."""
    return os.environ.get(ENV_STAC_URL) or DEFAULT_STAC_URL


def download_url() -> str:
    """Return the download service root, from ``TERRASCOPE_DOWNLOAD_URL`` or the default."""
    return os.environ.get(ENV_DOWNLOAD_URL) or DEFAULT_DOWNLOAD_URL


#: ``(variable, value)`` pairs already warned about (a setting read per tile warns once).
_warned: set[tuple[str, str]] = set()


def int_setting(name: str, default: int, *, minimum: int = 1) -> int:
    """The integer in environment variable ``name`` (read now), or ``default`` when it is
    unset, empty, not an integer or below ``minimum`` (then with a warning, once per
    value).

    Examples
    --------
    >>> int_setting("TERRASCOPE_EXAMPLE_UNSET", 32)
    32
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        if (name, raw) not in _warned:
            _warned.add((name, raw))
            logger.warning(
                "%s=%r is not an integer of at least %d; using %d", name, raw, minimum, default
            )
        return default
    return value


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str | None:
    """Return the origin ``scheme://host:port`` of an http(s) URL, or None.

    Scheme and host are lower-cased and the port is always written out, so that
    ``https://Example.org/a`` and ``https://example.org:443/b`` have the same origin.
    URLs that are not plain http(s) ones, that carry user information (``user@host``)
    or a backslash, or whose port is invalid, have no origin: they never receive
    credentials.

    Examples
    --------
    >>> origin("https://services.terrascope.be/download/x.tif")
    'https://services.terrascope.be:443'
    >>> origin("http://127.0.0.1:8080/a") is None, origin("https://u:p@host/a") is None
    (False, True)
    """
    if not isinstance(url, str) or "\\" in url:
        return None
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port}"


def public_url(url: str) -> str:
    """``url`` without user information, query string or fragment: what messages show
    (presigned URLs carry their signatures in the query string).

    Examples
    --------
    >>> public_url("https://u:p@bucket.example/a.tif?X-Amz-Signature=abc#x")
    'https://bucket.example/a.tif'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path


#: A URL inside a message (GDAL's and aiohttp's messages quote them in various ways).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}|\\^`]+")


def redact(text: str) -> str:
    """``text`` with every URL in it shown as :func:`public_url` shows it. Every message
    that quotes a URL, or another library's message that may, goes through this.

    Examples
    --------
    >>> redact("'/vsicurl/https://b.example/x.tif?sig=s3cret' not recognized")
    "'/vsicurl/https://b.example/x.tif' not recognized"
    """
    return _URL_IN_TEXT.sub(lambda found: public_url(found.group(0)), text)


def redacted(err: BaseException) -> BaseException:
    """``err``, with every URL in its arguments (and in those of the exceptions it
    chains) shown as :func:`public_url` shows it; changed in place. For another
    library's exception (GDAL's, async-tiff's) kept as the cause of one of ours."""
    seen: set[int] = set()
    each: BaseException | None = err
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        # (an exception type whose arguments are fixed keeps them)
        with contextlib.suppress(AttributeError, TypeError):
            each.args = tuple(redact(a) if isinstance(a, str) else a for a in each.args)
        each = each.__cause__ or each.__context__
    return err


def _origin_entry(entry: str) -> str:
    text = entry.strip()
    url = text if "://" in text else f"https://{text}"
    found = origin(url)
    if found is None or urlsplit(url).path not in ("", "/"):
        from xarray_terrascope.exceptions import InvalidArgumentError

        raise InvalidArgumentError(
            f"{ENV_DOWNLOAD_HOSTS} entries must be origins such as "
            f"'https://services.terrascope.be', 'http://127.0.0.1:8080' or a bare "
            f"'host[:port]' (meaning https), got {text!r}"
        )
    return found


def download_hosts() -> frozenset[str]:
    """Return the origins (``scheme://host:port``) that may receive credentials.

    From ``TERRASCOPE_DOWNLOAD_HOSTS`` (comma-separated ``https://host[:port]``,
    ``http://host[:port]``, or a bare ``host[:port]`` meaning https), else the origin of
    :func:`download_url`. Credentials go to these exact scheme, host and port only.

    Raises
    ------
    InvalidArgumentError
        For an entry that is not an origin (a path, user information, a bad port).

    Examples
    --------
    >>> import os
    >>> os.environ[ENV_DOWNLOAD_HOSTS] = "services.terrascope.be, http://127.0.0.1:8080"
    >>> sorted(download_hosts())
    ['http://127.0.0.1:8080', 'https://services.terrascope.be:443']
    >>> del os.environ[ENV_DOWNLOAD_HOSTS]
    """
    raw = os.environ.get(ENV_DOWNLOAD_HOSTS)
    if raw and raw.strip():
        return frozenset(_origin_entry(h) for h in raw.split(",") if h.strip())
    found = origin(download_url())
    return frozenset({found} if found else ())
