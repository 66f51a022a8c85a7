"""The package's options: one object, read in one place.

Each option has a default, may be set for the process (or a ``with`` block) by
:func:`set_options`, and, when it names an environment variable, may be set there:
an option set with :func:`set_options` wins over its environment variable, which wins
over the default. :func:`get_options` reads the environment at each call, so a variable
changed between two calls counts from the second; it returns a frozen :class:`Options`
that the stages pass on, so that one read sees one set of values from start to end.
While neither the variables nor :func:`set_options` changed, it returns the same object
(the read path asks for the options many times per file).

Credentials are not options: ``TERRASCOPE_USERNAME`` and ``TERRASCOPE_PASSWORD`` are read
by :func:`xarray_terrascope.login` only (an option can be printed, a password never).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xarray_terrascope.exceptions import InvalidArgumentError

__all__ = ["Options", "get_options", "options_table", "set_options"]

logger = logging.getLogger(__name__)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a URL such as 'https://stac.terrascope.be'")
    return value.strip()


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def _hosts(value: Any) -> str | None:
    """Checked when used (:attr:`Options.download_hosts`): a bad entry in the environment
    must not break what does not send credentials."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError("comma-separated origins, or a list of them")
    return value


def _positive(value: Any) -> int:
    return _at_least(value, 1)


def _non_negative(value: Any) -> int:
    return _at_least(value, 0)


def _at_least(value: Any, minimum: int) -> int:
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, bool):
        raise ValueError(f"an integer of at least {minimum}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"an integer of at least {minimum}") from None
    if number < minimum or (not isinstance(value, str) and number != value):
        raise ValueError(f"an integer of at least {minimum}")
    return number


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds, at least 0") from None
    if isinstance(value, bool) or not seconds >= 0:
        raise ValueError("a number of seconds, at least 0")
    return seconds


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "false", "no", "off"):
            return False
        if text in ("1", "true", "yes", "on", ""):
            return True
    raise ValueError("True or False (in the environment: 1/0, true/false, yes/no, on/off)")


def _directory(value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError("a directory path")
    return Path(value).expanduser()


def _option(default: Any, check: Callable[[Any], Any], doc: str, env: str | None = None) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc, "env": env})


@dataclass(frozen=True)
class Options:
    """The options in force for one read, search or login (frozen: see :func:`get_options`).

    Attributes are the options; their meaning, default and environment variable are in
    :func:`options_table` (the options table of docs/how-it-works.md).
    """

    stac_url: str = _option(
        "https://stac.terrascope.be", _url, "STAC API root", "TERRASCOPE_STAC_URL"
    )
    download_url: str = _option(
        "https://services.terrascope.be/download/",
        _url,
        "download service root; `login()` probes it",
        "TERRASCOPE_DOWNLOAD_URL",
    )
    download_hosts: str | None = _option(
        None,
        _hosts,
        "comma-separated origins that may receive credentials: `https://host[:port]`, "
        "`http://host[:port]`, or a bare `host[:port]` (https); default: the origin of "
        "the download URL",
        "TERRASCOPE_DOWNLOAD_HOSTS",
    )
    oidc_url: str = _option(
        "https://sso.terrascope.be/auth/realms/terrascope/.well-known/openid-configuration",
        _url,
        'OpenID Connect configuration document of the identity provider (`login(method="oidc")`)',
        "TERRASCOPE_OIDC_URL",
    )
    oidc_client_id: str = _option(
        "public", _text, 'OAuth 2 client id for `login(method="oidc")`', "TERRASCOPE_OIDC_CLIENT_ID"
    )
    config_dir: Path | None = _option(  # noqa: RUF009 (a field with metadata)
        None,
        _directory,
        'where `login(method="oidc", store=True)` keeps the refresh token; default: the '
        "user config directory (`~/.config/xarray-terrascope`)",
        "TERRASCOPE_CONFIG_DIR",
    )
    max_connections: int = _option(
        32,
        _positive,
        "requests in flight per download host and process (adaptive below it)",
        "TERRASCOPE_MAX_CONNECTIONS",
    )
    cache_dir: Path | None = _option(  # noqa: RUF009 (a field with metadata)
        None,
        _directory,
        "where COG headers are persisted; default: the user cache directory "
        "(`~/.cache/xarray-terrascope`)",
        "TERRASCOPE_CACHE_DIR",
    )
    header_cache: bool = _option(
        True,
        _flag,
        "persist COG headers on disk (False: in memory only)",
        "TERRASCOPE_HEADER_CACHE",
    )
    header_cache_mb: int = _option(
        256,
        _positive,
        "MiB of disk the persisted COG headers take at most, shared by every process using "
        "the directory (least recently used removed first)",
        "TERRASCOPE_HEADER_CACHE_MB",
    )
    tile_cache_mb: int = _option(
        64,
        _non_negative,
        "MiB of decoded COG tiles kept per process for the neighbouring chunk; 0 keeps none",
        "TERRASCOPE_TILE_CACHE_MB",
    )
    whole_files_mb: int = _option(
        512,
        _non_negative,
        "MiB of whole files kept per process from hosts that ignore `Range`",
    )
    readahead_files: int = _option(
        32, _non_negative, "dates read ahead (whole) per window read date after date"
    )
    readahead_mb: int = _option(
        128, _non_negative, "MiB of decoded windows that reading ahead may hold per process"
    )
    header_write_defer: float = _option(
        2.0,
        _seconds,
        "seconds a header's disk write waits for the read engine to be idle",
    )
    local_absence_seconds: float = _option(
        60.0,
        _seconds,
        "seconds a missing local directory (`/data/MTDA` off Terrascope's machines) is "
        "remembered as missing",
    )

    @functools.cached_property
    def allowed_origins(self) -> frozenset[str]:
        """The origins (``scheme://host:port``) that may receive credentials: those of
        :attr:`download_hosts`, else the origin of :attr:`download_url`.

        Raises
        ------
        InvalidArgumentError
            For an entry that is not an origin (a path, user information, a bad port).
        """
        from xarray_terrascope.config import hosts_from_text, origin

        if self.download_hosts and self.download_hosts.strip():
            return hosts_from_text(self.download_hosts)
        found = origin(self.download_url)
        return frozenset({found} if found else ())


_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_lock = threading.Lock()
#: Options set with :func:`set_options` (checked values), by field name.
_set: dict[str, Any] = {}
#: ``(variable, value)`` pairs already warned about.
_warned: set[tuple[str, str]] = set()
#: The environment variables of the options, in field order.
_VARIABLES = tuple(f.metadata["env"] for f in _FIELDS.values() if f.metadata["env"])
_ENCODED = tuple(map(os.fsencode, _VARIABLES))
#: Bumped by every change of ``_set``; with the raw variables it keys ``_resolved``.
_generation = 0
#: The last options resolved, with the key they were resolved for.
_resolved: tuple[tuple[int, tuple[Any, ...]], Options] | None = None


def _raw_variables() -> tuple[Any, ...]:
    """The options' variables as the environment holds them now (unparsed), cheaply:
    CPython's ``os.environ`` keeps them in ``_data``, encoded, and every change made
    through ``os.environ`` lands there; decoding each with ``os.environ.get`` would
    cost most of what the memo in :func:`get_options` saves."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict) and os.name == "posix":
        return tuple(map(data.get, _ENCODED))
    return tuple(map(os.environ.get, _VARIABLES))


def _checked(name: str, value: Any) -> Any:
    check = _FIELDS[name].metadata["check"]
    try:
        return check(value)
    except ValueError as err:
        raise InvalidArgumentError(f"option {name} must be {err}, got {value!r}") from None


def _from_environment(name: str) -> Any:
    """The option's value in its environment variable, or the field's default when the
    variable is unset, empty or invalid (then with a warning, once per value)."""
    spec = _FIELDS[name]
    default = spec.default
    variable = spec.metadata["env"]
    raw = os.environ.get(variable, "") if variable else ""
    if not raw.strip():
        return default
    try:
        return spec.metadata["check"](raw)
    except ValueError as err:
        if (variable, raw) not in _warned:
            _warned.add((variable, raw))
            logger.warning("%s=%r is not %s; using %r", variable, raw, err, default)
        return default


def get_options() -> Options:
    """The options in force now: those set with :func:`set_options`, else their
    environment variables (read now), else the defaults.

    Returns
    -------
    Options
        Frozen: pass it on, and one operation sees one set of values.

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> xts.get_options().max_connections
    32
    >>> with xts.set_options(max_connections=4):
    ...     xts.get_options().max_connections
    4
    """
    raw = _raw_variables()
    with _lock:
        key = (_generation, raw)
        if _resolved is not None and _resolved[0] == key:
            return _resolved[1]
        chosen = dict(_set)
    values = {name: chosen[name] if name in chosen else _from_environment(name) for name in _FIELDS}
    options = Options(**values)
    _remember(key, options)
    return options


def _remember(key: tuple[int, tuple[Any, ...]], options: Options) -> None:
    """Keep the last resolved options: the read path asks for them about ten times per
    file, and resolving them (checks, paths) costs far more than comparing the raw
    variables again."""
    global _resolved
    with _lock:
        if key[0] == _generation:
            _resolved = (key, options)


def _changed() -> None:
    """Called with ``_lock`` held whenever :func:`set_options` changes ``_set``."""
    global _generation, _resolved
    _generation += 1
    _resolved = None


class set_options:  # a function to the user, as xarray.set_options
    """Set options for the process, or for a ``with`` block.

    Parameters
    ----------
    **options
        Option names and values (see :func:`options_table`); ``download_hosts`` takes a
        comma-separated string or a list of origins. An option set here wins over its
        environment variable.

    Raises
    ------
    InvalidArgumentError
        For an unknown option or a value it does not take (nothing is set then).

    Examples
    --------
    >>> import xarray_terrascope as xts
    >>> with xts.set_options(tile_cache_mb=0, readahead_files=0):
    ...     xts.get_options().tile_cache_mb
    0
    >>> xts.get_options().tile_cache_mb
    64
    """

    def __init__(self, **options: Any) -> None:
        checked: dict[str, Any] = {}
        for name, value in options.items():
            if name not in _FIELDS:
                raise InvalidArgumentError(
                    f"unknown option {name!r}; the options are: {', '.join(_FIELDS)}"
                )
            checked[name] = _checked(name, value)
        with _lock:
            self._previous = {name: _set.get(name, _UNSET) for name in checked}
            _set.update(checked)
            _changed()

    def __enter__(self) -> Options:
        return get_options()

    def __exit__(self, *exc: object) -> None:
        with _lock:
            for name, value in self._previous.items():
                if value is _UNSET:
                    _set.pop(name, None)
                else:
                    _set[name] = value
            _changed()


_UNSET = object()


def _rows() -> Iterator[tuple[str, str, str, str]]:
    for spec in dataclasses.fields(Options):
        default = spec.default
        shown = "(see meaning)" if default is None else f"`{default!r}`"
        env = f"`{spec.metadata['env']}`" if spec.metadata["env"] else ""
        yield f"`{spec.name}`", env, spec.metadata["doc"], shown


def options_table() -> str:
    """The options as a Markdown table (the table in docs/how-it-works.md is this table).

    Examples
    --------
    >>> print(options_table().splitlines()[0])
    | option | environment variable | meaning | default |
    """
    lines = ["| option | environment variable | meaning | default |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in _rows()]
    return "\n".join(lines)
