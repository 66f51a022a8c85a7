"""Run the sandbox: the STAC API and the download server on two loopback ports.

>>> with Sandbox(seed=0) as sandbox:  # doctest: +SKIP
...     os.environ.update(sandbox.env)
...     ...

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

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .download import DownloadApp
from .request_log import RequestLog
from .stac_api import StacApi
from .world import World

__all__ = ["Sandbox"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAIN_USER = "sandbox-user"
SECOND_USER = "second-user"


class _QuietHandler(WSGIRequestHandler):
    """Request handler logging to this module's logger at DEBUG, with a socket timeout."""

    timeout = 60  # a client that never sends its request cannot block stop() forever

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, getattr(self, "path", "?"), code)

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug("werkzeug %s: " + message.rstrip(), type, *args)


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
        self._options = {
            "latency": latency,
            "max_concurrent": max_concurrent,
            "fault_rate": fault_rate,
            "drop_rate": drop_rate,
            "bearer": bearer,
            "token_lifetime": token_lifetime,
        }
        self._stac_latency = stac_latency
        self._period = (start, end)
        self._given_cache = Path(cache_dir) if cache_dir is not None else None
        self._own_cache: str | None = None
        self._servers: list[BaseWSGIServer] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self.world: World | None = None
        self.stac: StacApi | None = None
        self.download: DownloadApp | None = None
        self.bucket: DownloadApp | None = None
        self.bucket_url = ""
        self.stac_url = self.download_url = self.download_host = self.download_origin = ""

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
            "TERRASCOPE_USERNAME": self.username,
            "TERRASCOPE_PASSWORD": self.password,
        }

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
            dl_server = self._serve(self.download, "download")
            self.download_host = f"{HOST}:{dl_server.port}"
            self.download_origin = f"http://{self.download_host}"
            self.download_url = f"{self.download_origin}/download/"
            self.stac = StacApi(self.world, self.download_url, latency=self._stac_latency)
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
            server = self._serve(self.bucket, "bucket")
            self.bucket_url = f"http://{HOST}:{server.port}/download/"
        self.download.redirect_to = self.bucket_url
        return self.bucket

    def parcels(self) -> Any:
        """The world's parcels with their crops (:meth:`World.parcels`), a GeoDataFrame."""
        if self.world is None:
            raise RuntimeError("the sandbox is not started")
        return self.world.parcels()

    def _serve(self, app: Any, name: str) -> BaseWSGIServer:
        server = make_server(HOST, 0, app, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"terrascope-sandbox-{name}",
            daemon=True,
        )
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        """Shut both servers down, wait for their threads, remove the temporary cache."""
        for server in self._servers:
            server.shutdown()
        for thread in self._threads:
            thread.join(timeout=30)
        for server in self._servers:
            server.server_close()
        self._servers.clear()
        self._threads.clear()
        self.bucket, self.bucket_url = None, ""
        if self._own_cache is not None:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = None
        self._stopped.set()

    def reset(self) -> None:
        """Restore the download server's switches and clear its request log."""
        if self.download is not None:
            self.download.reset()
        if self.bucket is not None:
            self.bucket.reset()
        if self.stac is not None:
            self.stac.latency = self._stac_latency

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
