"""Origins (who may receive credentials) and URLs as messages show them (redacted)."""

from __future__ import annotations

import contextlib
import logging
import re
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK_HOSTS",
    "hosts_from_text",
    "note_credentials_to",
    "origin",
    "public_url",
    "redact",
    "redacted",
]

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Host names of this machine, where plain http carries nothing over a network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: The origins :func:`note_credentials_to` has seen (warned about or not).
_noted: set[str] = set()


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


def note_credentials_to(found: str | None) -> None:
    """Log a WARNING, once per origin and process, when credentials go to origin
    ``found`` over plain http to a host that is not this machine: Terrascope's own
    origins are https; an http origin is one set by hand (``TERRASCOPE_DOWNLOAD_HOSTS``,
    the download or STAC URL), where anyone on the network path reads the password or
    token. Called where credentials leave: one set lookup for an origin seen before."""
    if found is None or found in _noted:
        return
    _noted.add(found)
    parts = urlsplit(found)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        logger.warning(
            "Sending Terrascope credentials to %s over plain http: anyone on the network "
            "path can read them. Use its https URL (TERRASCOPE_DOWNLOAD_HOSTS, "
            "TERRASCOPE_DOWNLOAD_URL, TERRASCOPE_STAC_URL)",
            found,
        )


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
#: A query string (``?key=value...``) left in a message: after a file name or a path
#: that libraries quote without their scheme (libtiff's ``x.tif?sig=...``, urllib3's
#: ``with url: /download/?token=...``), or in a URL the pattern above does not take
#: (an IPv6 literal).
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>?]*=[^\s'\"<>]*")


def redact(text: str) -> str:
    """``text`` with every URL in it shown as :func:`public_url` shows it, and any other
    query string left out. Every message that quotes a URL, or another library's message
    that may, goes through this.

    Examples
    --------
    >>> redact("'/vsicurl/https://b.example/x.tif?sig=s3cret' not recognized")
    "'/vsicurl/https://b.example/x.tif' not recognized"
    >>> redact("x.tif?X-Amz-Signature=s3cret TIFFReadDirectory failed")
    'x.tif TIFFReadDirectory failed'
    """
    text = _URL_IN_TEXT.sub(lambda found: public_url(found.group(0)), text)
    return _QUERY_IN_TEXT.sub("", text)


def redacted(err: BaseException) -> BaseException:
    """``err``, with every URL in its arguments and its text attributes (rasterio's
    ``errmsg``), and in those of every exception it chains (causes and contexts), shown as
    :func:`redact` shows it; changed in place. For another library's exception (GDAL's,
    async-tiff's) kept as the cause of one of ours."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        each = todo.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        # (an exception type whose arguments are fixed keeps them)
        with contextlib.suppress(AttributeError, TypeError):
            each.args = tuple(redact(a) if isinstance(a, str) else a for a in each.args)
        for name, value in list(getattr(each, "__dict__", {}).items()):
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(each, name, redact(value))
        todo.extend(e for e in (each.__cause__, each.__context__) if e is not None)
    return err


def _origin_entry(entry: str) -> str:
    text = entry.strip()
    url = text if "://" in text else f"https://{text}"
    found = origin(url)
    if found is None or urlsplit(url).path not in ("", "/"):
        from xarray_terrascope.exceptions import InvalidArgumentError

        raise InvalidArgumentError(
            "TERRASCOPE_DOWNLOAD_HOSTS (the download_hosts option) entries must be origins "
            "such as 'https://services.terrascope.be', 'http://127.0.0.1:8080' or a bare "
            f"'host[:port]' (meaning https), got {text!r}"
        )
    return found


def hosts_from_text(text: str) -> frozenset[str]:
    """The origins (``scheme://host:port``) in a comma-separated list of
    ``https://host[:port]``, ``http://host[:port]`` or bare ``host[:port]`` (https): the
    ``download_hosts`` option. Credentials go to these exact scheme, host and port only.

    Raises
    ------
    InvalidArgumentError
        For an entry that is not an origin (a path, user information, a bad port).

    Examples
    --------
    >>> sorted(hosts_from_text("services.terrascope.be, http://127.0.0.1:8080"))
    ['http://127.0.0.1:8080', 'https://services.terrascope.be:443']
    """
    return frozenset(_origin_entry(h) for h in text.split(",") if h.strip())
