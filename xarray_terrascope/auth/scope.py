"""Which origins may receive credentials, and the GDAL options of one read: credentials
for an allowed origin only, and nothing GDAL or curl would add by themselves.
"""

from __future__ import annotations

from xarray_terrascope import config
from xarray_terrascope.auth.credentials import Credentials
from xarray_terrascope.auth.tokens import TokenCredentials
from xarray_terrascope.options import get_options

__all__ = ["BASE_GDAL_OPTIONS", "gdal_options", "reader_identity", "sends_credentials"]

#: GDAL options for every read, with or without credentials: no sidecar-file probing
#: (saves ~10 requests per file), retries with backoff on 429/5xx answers, and nothing
#: that GDAL or curl would add to a request by themselves. Values set to "" override
#: what other code may have left in the environment or in GDAL's configuration (the
#: thread-local options of a read win over both).
BASE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    # GDAL remembers a 302 to an S3-presigned-looking URL and sends later range requests
    # straight there, GDAL_HTTP_USERPWD included: the password would leave the allowed
    # origin. Without this, curl follows each redirect itself and drops the credentials
    # when the host changes.
    "CPL_VSIL_CURL_USE_S3_REDIRECT": "NO",
    "CPL_VSIL_CURL_AUTHORIZATION_HEADER_ALLOWED_IF_REDIRECT": "NO",
    # curl reads ~/.netrc (or GDAL_HTTP_NETRC_FILE) itself and answers any host named
    # there with its password, whatever TERRASCOPE_DOWNLOAD_HOSTS says
    "GDAL_HTTP_NETRC": "NO",
    # extra headers and tokens left over by other code (a leafmap-style header file with
    # an "Authorization: Bearer ..." line, GDAL_HTTP_HEADERS, GDAL_HTTP_BEARER)
    "GDAL_HTTP_HEADERS": "",
    "GDAL_HTTP_HEADER_FILE": "",
    "GDAL_HTTP_BEARER": "",
    # curl's verbose mode prints every request header, Authorization included, to stderr
    "CPL_CURL_VERBOSE": "NO",
}

#: GDAL options of a read whose origin may not receive credentials. A GDAL_HTTP_USERPWD
#: left in the environment would otherwise be sent: an empty one overrides it, and
#: ANYSAFE (no Basic) keeps curl from sending even the empty pair ("Basic Og==") up
#: front; it answers an authentication challenge only, and then with nothing secret.
_NO_CREDENTIALS: dict[str, str] = {"GDAL_HTTP_AUTH": "ANYSAFE", "GDAL_HTTP_USERPWD": ""}

#: Cookie settings overridden when they are set anywhere GDAL looks (a cookie file from
#: another tool's single sign-on); left alone otherwise, since an empty GDAL_HTTP_COOKIE
#: sends an empty Cookie header and an empty cookie file turns curl's cookie engine on.
_COOKIE_OPTIONS = ("GDAL_HTTP_COOKIE", "GDAL_HTTP_COOKIEFILE", "GDAL_HTTP_COOKIEJAR")


def sends_credentials(url: str) -> bool:
    """Whether ``url``'s origin (scheme, host and port) is one of the allowed origins
    (the ``download_hosts`` option, ``TERRASCOPE_DOWNLOAD_HOSTS``, read now).

    Examples
    --------
    >>> from xarray_terrascope.options import set_options
    >>> with set_options(download_hosts="services.terrascope.be"):
    ...     sends_credentials("https://services.terrascope.be/download/a.tif")
    True
    >>> with set_options(download_hosts="services.terrascope.be"):  # plain http
    ...     sends_credentials("http://services.terrascope.be/download/a.tif")
    False
    """
    found = config.origin(url)
    return found is not None and found in get_options().allowed_origins


def gdal_options(
    url: str, credentials: Credentials | TokenCredentials | None, *, allowed: bool | None = None
) -> dict:
    """Return the GDAL configuration options for one read of ``url``.

    The base options (no directory listing, retries, no netrc, no extra headers, bearer
    token or cookies from elsewhere) always; HTTP Basic credentials (or, for an OpenID
    Connect login, its access token as of now as a Bearer header) only when ``url`` is
    on an allowed download host (``allowed``, else ``TERRASCOPE_DOWNLOAD_HOSTS`` read
    now) and ``credentials`` is given, and otherwise options that send none, whatever
    the environment holds. Use the result in a ``rasterio.Env`` around the read, never
    in ``os.environ``.

    Examples
    --------
    >>> opts = gdal_options("https://example.com/a.tif", Credentials("u", "p"))
    >>> opts["GDAL_HTTP_USERPWD"], opts["GDAL_HTTP_NETRC"]
    ('', 'NO')
    """
    options = dict(BASE_GDAL_OPTIONS)
    options.update({name: "" for name in _COOKIE_OPTIONS if _gdal_config(name)})
    if allowed is None:
        allowed = sends_credentials(url)
    if allowed and isinstance(credentials, (Credentials, TokenCredentials)):
        config.note_credentials_to(config.origin(url))
    if isinstance(credentials, TokenCredentials) and allowed:
        # GDAL >= 3.9: curl sends "Authorization: Bearer"; not to a redirect target on
        # another origin (CPL_VSIL_CURL_AUTHORIZATION_HEADER_ALLOWED_IF_REDIRECT above)
        options.update(_NO_CREDENTIALS)
        options["GDAL_HTTP_AUTH"] = "BEARER"
        options["GDAL_HTTP_BEARER"] = credentials.holder.access_token()
    elif isinstance(credentials, Credentials) and allowed:
        options["GDAL_HTTP_AUTH"] = "BASIC"
        options["GDAL_HTTP_USERPWD"] = f"{credentials.username}:{credentials.password}"
    else:
        options.update(_NO_CREDENTIALS)
    return options


def _gdal_config(name: str) -> str | None:
    """What GDAL would find for option ``name`` outside the package's options: its
    process-wide configuration, else the environment."""
    from rasterio.env import get_gdal_config

    value = get_gdal_config(name, normalize=False)
    return None if value in (None, "") else str(value)


def reader_identity(credentials: Credentials | TokenCredentials | None) -> str | None:
    """What keys a GDAL reader opened with ``credentials``: their opaque token, and for
    an OpenID Connect login the access token's generation too (refreshed first when it
    is about to expire), so a reader opened with an expired token is not reused."""
    if credentials is None:
        return None
    if isinstance(credentials, TokenCredentials):
        credentials.holder.refresh_if_needed()
        return f"{credentials.token}:{credentials.holder.generation}"
    return credentials.token
