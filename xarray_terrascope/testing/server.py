"""Run the sandbox: the STAC API and the download server on two loopback ports.

The STAC API is a WSGI app on werkzeug's threaded server. The download server (and the
"bucket" of :meth:`Sandbox.start_bucket`) runs on aiohttp, on an event loop of its own
in a daemon thread: the added latency is an ``asyncio.sleep``, so dozens of concurrent
range requests cost little more than one latency period, as on a real server, instead
of a thread (and GIL hand-offs) each.

>>> with Sandbox(seed=0) as sandbox, sandbox.activate():  # doctest: +SKIP
...     ds = xts.open_dataset(list(SAMPLE_FIELD), start="2025-05-01", end="2025-05-31")

:meth:`Sandbox.activate` points this process at the sandbox (options and default
credentials, in memory) until the ``with`` block ends; another process (a shell, a
Jupyter kernel started elsewhere) takes :attr:`Sandbox.env` instead.

For a long-running sandbox (the ``xarray-terrascope sandbox`` command), call
:meth:`Sandbox.serve_forever`, which starts the servers if needed and blocks until
:meth:`Sandbox.stop` is called from another thread or Ctrl-C is pressed.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from ._servers import HOST, DownloadServer, Server, WsgiServer
from ._sso import DISCOVERY_PATH
from .activate import Activation
from .download import DownloadApp
from .request_log import RequestLog
from .stac_api import StacApi
from .world import World

__all__ = ["Sandbox"]

logger = logging.getLogger(__name__)


MAIN_USER = "sandbox-user"
SECOND_USER = "second-user"


class Sandbox:
    """A Terrascope stand-in: STAC API + authenticated download server on loopback.

    Parameters
    ----------
    seed : int
        Seed of the synthetic world (and of the random faults).
    users : dict, optional
        ``{username: password}``; the first entry is the main account. By default a
        main account ``sandbox-user`` and a second account ``second-user``, each
        with a random password made for this sandbox.
    latency : float
        Seconds added to every download request.
    stac_latency : float
        Seconds added to every STAC API request.
    max_concurrent : int, optional
        In-flight download requests allowed before 429.
    max_rate : float, optional
        Download requests per second allowed (a token bucket of 5) before 429.
    fault_rate, drop_rate : float
        Fractions of download requests answered 503 / dropped.
    bearer : bool
        Enable the OIDC token endpoint and Bearer tokens.
    cache_dir : str or os.PathLike, optional
        Where COGs are cached (kept on stop). By default a temporary directory,
        removed by :meth:`stop`.
    token_lifetime : float
        Seconds access tokens live.
    start, end : str
        Period of the world's acquisitions.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        users: dict[str, str] | None = None,
        latency: float = 0.0,
        stac_latency: float = 0.0,
        max_concurrent: int | None = None,
        max_rate: float | None = None,
        fault_rate: float = 0.0,
        drop_rate: float = 0.0,
        bearer: bool = False,
        cache_dir: str | Path | None = None,
        token_lifetime: float = 300.0,
        start: str = "2025-01-01",
        end: str = "2025-12-31",
    ) -> None:
        if users is None:
            users = {MAIN_USER: secrets.token_urlsafe(16), SECOND_USER: secrets.token_urlsafe(16)}
        if not users:
            raise ValueError("users must hold at least one account")
        self.seed = seed
        self.users: dict[str, str] = dict(users)
        self.username = next(iter(self.users))
        self._options: dict[str, Any] = {
            "latency": latency,
            "max_concurrent": max_concurrent,
            "max_rate": max_rate,
            "fault_rate": fault_rate,
            "drop_rate": drop_rate,
            "bearer": bearer,
            "token_lifetime": token_lifetime,
        }
        self._stac_latency = stac_latency
        self._period = (start, end)
        self._given_cache = Path(cache_dir) if cache_dir is not None else None
        self._own_cache: str | None = None
        self._servers: list[Server] = []
        self._stopped = threading.Event()
        self.world: World | None = None
        self.stac: StacApi | None = None
        self.download: DownloadApp | None = None
        self.bucket: DownloadApp | None = None
        self.bucket_url = ""
        self.stac_url = self.download_url = self.download_host = self.download_origin = ""
        self._activations: list[Activation] = []

    @property
    def password(self) -> str:
        """Password of the main account."""
        return self.users[self.username]

    @property
    def running(self) -> bool:
        """Whether the servers are up."""
        return bool(self._servers)

    @property
    def log(self) -> RequestLog:
        """The download server's request log."""
        if self.download is None:
            raise RuntimeError("the sandbox is not started")
        return self.download.log

    @property
    def env(self) -> dict[str, str]:
        """``TERRASCOPE_*`` variables pointing at this sandbox (with the main account)."""
        if not self.running:
            raise RuntimeError("the sandbox is not started")
        return {
            "TERRASCOPE_STAC_URL": self.stac_url,
            "TERRASCOPE_DOWNLOAD_URL": self.download_url,
            "TERRASCOPE_DOWNLOAD_HOSTS": self.download_origin,
            "TERRASCOPE_OIDC_URL": self.oidc_url,
            "TERRASCOPE_USERNAME": self.username,
            "TERRASCOPE_PASSWORD": self.password,
        }

    @property
    def options(self) -> dict[str, str]:
        """The package's options pointing at this sandbox (endpoints only, no
        credentials): ``xts.set_options(**sandbox.options)``, then
        ``xts.login(sandbox.username, sandbox.password)``; :meth:`activate` does both,
        and undoes them."""
        if not self.running:
            raise RuntimeError("the sandbox is not started")
        return {
            "stac_url": self.stac_url,
            "download_url": self.download_url,
            "download_hosts": self.download_origin,
            "oidc_url": self.oidc_url,
        }

    @property
    def oidc_url(self) -> str:
        """The OpenID Connect configuration document of the sandbox's realm (served by
        the download server; its token endpoints answer when ``bearer`` is on)."""
        if not self.running:
            raise RuntimeError("the sandbox is not started")
        return f"{self.download_origin}{DISCOVERY_PATH}"

    def __repr__(self) -> str:
        state = (
            f"stac_url={self.stac_url!r}, download_url={self.download_url!r}"
            if self.running
            else "stopped"
        )
        return f"Sandbox(seed={self.seed}, {state}, username={self.username!r})"

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Build the world and start both servers; return ``self``."""
        if self.running:
            return self
        if self._given_cache is not None:
            cache = self._given_cache
        else:
            self._own_cache = tempfile.mkdtemp(prefix="terrascope-sandbox-")
            cache = Path(self._own_cache)
        try:
            self.world = World(self.seed, *self._period, cache_dir=cache)
            self.download = DownloadApp(self.world, self.users, seed=self.seed, **self._options)
            dl_server = self._serve_download(self.download, "download")
            self.download_host = f"{HOST}:{dl_server.port}"
            self.download_origin = f"http://{self.download_host}"
            self.download_url = f"{self.download_origin}/download/"
            self.stac = StacApi(self.world, self.download_url, latency=self._stac_latency)
            self.stac.token_roles = self.download.token_roles
            stac_server = self._serve(self.stac, "stac")
            self.stac_url = f"http://{HOST}:{stac_server.port}/"
        except BaseException:
            self.stop()
            raise
        self._stopped.clear()
        logger.info("sandbox up: STAC %s, download %s", self.stac_url, self.download_url)
        return self

    def start_bucket(self) -> DownloadApp:
        """Start a second loopback server, an "object store" holding the same files, and
        make the download server answer file requests with a 302 to an S3-presigned-looking
        URL on it (``X-Amz-Date`` = now, ``X-Amz-Expires``, ``X-Amz-Signature``).

        The bucket serves without credentials and logs whether requests carried some
        (``sandbox.bucket.log``), so tests can check that none reached it.
        :meth:`reset` ends the redirects; the bucket server runs until :meth:`stop`.

        Returns
        -------
        DownloadApp
            The bucket's app (its ``log`` records every request it answered).
        """
        if self.world is None or self.download is None:
            raise RuntimeError("the sandbox is not started")
        if self.bucket is None:
            self.bucket = DownloadApp(
                self.world, {}, seed=self.seed, public=True, latency=self._options["latency"]
            )
            server = self._serve_download(self.bucket, "bucket")
            self.bucket_url = f"http://{HOST}:{server.port}/download/"
        self.download.redirect_to = self.bucket_url
        return self.bucket

    def activate(self, *, validate: bool = True) -> Activation:
        """Point this process at the sandbox: start it if needed, set the package's
        options to its endpoints and log its main account in, in memory.

        In force at once, until the returned :class:`Activation` is closed: at the end of
        its ``with`` block, by ``activation.close()``, or by :meth:`stop`. Closing puts
        back the options and the default credentials (a previous ``login()``, or none)
        that were in force. Nothing is written to ``os.environ`` (for another process,
        use :attr:`env`). While active, COG headers are kept in memory only
        (``header_cache=False``), so the sandbox leaves nothing in the user's cache.

        Parameters
        ----------
        validate : bool, default True
            Prove the credentials with one request, as :func:`~xarray_terrascope.login`.

        Returns
        -------
        Activation
            ``with`` gives the sandbox itself.

        Examples
        --------
        >>> import xarray_terrascope as xts
        >>> from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox
        >>> with Sandbox() as sandbox, sandbox.activate():  # doctest: +SKIP
        ...     ds = xts.open_dataset(list(SAMPLE_FIELD), start="2025-05-01", end="2025-05-31")

        In a notebook, where a ``with`` block cannot span cells:

        >>> sandbox = Sandbox().start()  # doctest: +SKIP
        >>> sandbox.activate()  # doctest: +SKIP
        >>> sandbox.stop()  # also puts the options and credentials back  # doctest: +SKIP
        """
        self.start()
        activation = Activation(self, validate=validate)
        self._activations.append(activation)
        return activation

    def _activation_closed(self, activation: Activation) -> None:
        if activation in self._activations:
            self._activations.remove(activation)

    def parcels(self) -> Any:
        """The world's parcels with their crops (:meth:`World.parcels`), a GeoDataFrame."""
        if self.world is None:
            raise RuntimeError("the sandbox is not started")
        return self.world.parcels()

    def _serve(self, app: Any, name: str) -> Server:
        server = WsgiServer(app, name)
        self._servers.append(server)
        return server

    def _serve_download(self, app: DownloadApp, name: str) -> Server:
        server = DownloadServer(app, name)
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Close the activations still in force (newest first, see :meth:`activate`), shut
        the servers down, wait for their threads, remove the temporary cache."""
        for activation in reversed(list(self._activations)):
            activation.close()
        for server in self._servers:
            server.stop()
        self._servers.clear()
        self.bucket, self.bucket_url = None, ""
        if self._own_cache is not None:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = None
        self._stopped.set()

    def reset(self) -> None:
        """Restore the servers' switches, end injected faults, clear the request log."""
        if self.download is not None:
            self.download.reset()
        if self.bucket is not None:
            self.bucket.reset()
        if self.stac is not None:
            self.stac.latency = self._stac_latency
            self.stac.reset_faults()

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` or Ctrl-C (then stop)."""
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
