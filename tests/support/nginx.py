"""A real nginx on loopback for tests: Basic auth, extra directives, an optional bucket.

:class:`Nginx` writes a configuration built from its parameters into a temporary
directory of its own, runs nginx in the foreground (``daemon off``) as a child process,
waits until its ports accept connections and, on :meth:`Nginx.stop`, ends it by its own
PID (and its workers by theirs) and removes the directory.

>>> with Nginx(root, {"alice": "secret"}, location="max_ranges 1;") as server:  # doctest: +SKIP
...     server.download_url  # 'http://127.0.0.1:PORT/download/', serving ``root``
...     server.records()  # the access log, parsed

Nothing secret is written in clear: the password file holds salted SHA-1 hashes
(``{SSHA}``, which nginx reads without OpenSSL's command-line tool) and the access logs
record whether a request carried an ``Authorization`` header, never its value.

The binary is ``TERRASCOPE_TEST_NGINX`` when set, else ``nginx`` on ``PATH``, else
``/usr/sbin/nginx`` (:func:`find_nginx`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .harness import HOST, Harness, free_port

__all__ = ["ENV_NGINX", "Nginx", "NginxError", "Record", "find_nginx"]

#: Environment variable naming the nginx binary to test against.
ENV_NGINX = "TERRASCOPE_TEST_NGINX"
#: Seconds :meth:`Nginx.start` waits for the port to accept connections.
START_TIMEOUT = 10.0
#: Seconds :meth:`Nginx.stop` waits after SIGTERM before killing.
STOP_TIMEOUT = 10.0
#: Temporary paths nginx creates at start-up (their compiled-in defaults lie under
#: /var/lib/nginx), by the module that declares each.
_TEMP_PATHS = {
    "client_body": None,
    "proxy": "proxy",
    "fastcgi": "fastcgi",
    "uwsgi": "uwsgi",
    "scgi": "scgi",
}
#: Fields of the access log format (tab separated; nginx escapes tabs inside values).
_LOG_FORMAT = "\\t".join(
    (
        "$msec",
        "$request_method",
        "$request_uri",
        "$status",
        "$http_range",
        "$body_bytes_sent",
        "$has_auth",
        "$connection",
        "$request_time",
    )
)


class NginxError(RuntimeError):
    """nginx did not start (the message holds its error log)."""


def find_nginx() -> str | None:
    """The nginx binary to test against, or None when there is none.

    ``TERRASCOPE_TEST_NGINX`` when set (it must then be an executable file), else
    ``nginx`` on ``PATH``, else ``/usr/sbin/nginx`` (not on a normal user's ``PATH``).

    Returns
    -------
    str or None
        Path of an executable file.
    """
    given = os.environ.get(ENV_NGINX, "").strip()
    candidates = [given] if given else [shutil.which("nginx") or "", "/usr/sbin/nginx"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


@functools.lru_cache(maxsize=8)
def _build_flags(binary: str) -> str:
    """``nginx -V`` output (configure arguments), to leave out what was not built."""
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


def _ssha(password: str) -> str:
    """``{SSHA}`` hash of ``password`` (salted SHA-1, as OpenLDAP writes it), for nginx's
    ``auth_basic_user_file``."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (nginx's workers), from ``/proc``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


@dataclass(frozen=True)
class Record:
    """One request as nginx logged it.

    Attributes
    ----------
    time : float
        When the request ended, seconds since the epoch (``$msec``).
    method : str
        HTTP method.
    path, query : str
        The request URI split at ``?`` (query empty when absent).
    status : int
        Status logged: ``444`` for a connection closed without an answer, ``499``
        when the client went away first.
    range : str
        The ``Range`` header as sent, empty when none.
    bytes_sent : int
        Body bytes nginx wrote to the socket (``$body_bytes_sent``).
    has_auth : bool
        Whether the request carried an ``Authorization`` header.
    connection : int
        nginx's connection serial number (requests on one keep-alive share it).
    duration : float
        Seconds from the request's first byte to the log line (``$request_time``).
    """

    time: float
    method: str
    path: str
    query: str
    status: int
    range: str
    bytes_sent: int
    has_auth: bool
    connection: int
    duration: float

    @property
    def start(self) -> float:
        """When the request arrived, seconds since the epoch (millisecond precision)."""
        return self.time - self.duration

    @property
    def ranges(self) -> int:
        """Number of byte ranges in the ``Range`` header (0 when none)."""
        if not self.range:
            return 0
        return len(self.range.split("=", 1)[-1].split(","))


def _parse(line: str) -> Record:
    msec, method, uri, status, rng, sent, has_auth, conn, took = line.split("\t")
    path, _, query = uri.partition("?")
    return Record(
        time=float(msec),
        method=method,
        path=path,
        query=query,
        status=int(status),
        range="" if rng == "-" else rng,
        bytes_sent=int(sent),
        has_auth=has_auth == "yes",
        connection=int(conn),
        duration=float(took),
    )


class Nginx(Harness):
    """nginx serving ``root`` at ``/download/`` with HTTP Basic auth, on a free port.

    Parameters
    ----------
    root : str or os.PathLike
        Directory served at ``/download/`` (symbolic links are followed).
    users : mapping
        ``{username: password}`` accepted by ``auth_basic``.
    http : str
        Directives added to the ``http`` block (``limit_req_zone``, ``map``,
        ``split_clients``...).
    location : str
        Directives added to the ``/download/`` location, after the authentication
        (``max_ranges 1;``, ``limit_conn``, ``if (...) { return 503; }``...).
    bucket : bool
        Also run an "object store": a second server on its own port serving the same
        ``root`` at ``/download/`` without authentication (:attr:`bucket_url`); its
        requests are logged apart (``records("bucket")``).
    listen : str
        Parameters added to the server's ``listen`` directive (``sndbuf=8k``: a small
        socket send buffer, so answers last until the client has read them).
    redirect_to_bucket : bool
        Answer every authenticated ``/download/`` request with a 302 to the same path on
        the bucket, with the query string of an S3 presigned URL. Implies ``bucket``.
    binary : str, optional
        The nginx executable; by default :func:`find_nginx`.

    Attributes
    ----------
    port, bucket_port : int
        Ports of the server and of the bucket (0 while stopped / without bucket).
    directory : pathlib.Path or None
        The temporary directory (configuration, logs, pid file) while running.

    Notes
    -----
    :meth:`start` connects once to each port to see it listen, so nginx's connection
    serials (``$connection``) 1, and 2 with a bucket, are those checks; a client's first
    connection comes next. nginx runs one worker process, as ``root`` when the tests
    do (so that it reads files in other tests' private temporary directories).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        users: Mapping[str, str],
        *,
        http: str = "",
        location: str = "",
        bucket: bool = False,
        redirect_to_bucket: bool = False,
        listen: str = "",
        binary: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.users = dict(users)
        self.http = http
        self.location = location
        self.bucket = bucket or redirect_to_bucket
        self.redirect_to_bucket = redirect_to_bucket
        self.listen = listen
        self.binary = binary or find_nginx()
        self.port = self.bucket_port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # --- addresses ----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` of the authenticating server."""
        return f"http://{HOST}:{self.port}"

    @property
    def download_url(self) -> str:
        """Root of the served files, ending with ``/``."""
        return f"{self.origin}/download/"

    @property
    def bucket_url(self) -> str:
        """Root of the bucket's files, ending with ``/`` (empty without bucket)."""
        return f"http://{HOST}:{self.bucket_port}/download/" if self.bucket else ""

    @property
    def pid(self) -> int | None:
        """PID of the nginx master process while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # --- configuration ------------------------------------------------------------------

    def config(self) -> str:
        """The configuration for the current ports and directory."""
        if self.directory is None:
            raise RuntimeError("nginx is not started")
        d = self.directory
        flags = _build_flags(self.binary or "nginx")
        temp_paths = "\n".join(
            f"  {name}_temp_path {d}/temp/{name};"
            for name, module in _TEMP_PATHS.items()
            if module is None or f"--without-http_{module}_module" not in flags
        )
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read root's 0700 dirs
        redirect = ""
        if self.redirect_to_bucket:
            presigned = (
                "X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=NGINX%2F20250101%2Feu-west-1%2Fs3%2Faws4_request"
                "&X-Amz-Date=$amz_date&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
                "&X-Amz-Signature=$request_id$request_id"
            )
            redirect = f"""
    location @bucket {{
      return 302 http://{HOST}:{self.bucket_port}$uri?{presigned};
    }}"""
        bucket = ""
        if self.bucket:
            bucket = f"""
  server {{
    listen {HOST}:{self.bucket_port};
    access_log {d}/bucket.log probe;
    location /download/ {{
      alias {self.root}/;
    }}
  }}"""
        return f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{
  worker_connections 1024;
}}
http {{
{temp_paths}
  map $http_authorization $has_auth {{
    "" no;
    default yes;
  }}
  map $time_iso8601 $amz_date {{
    "~^(?<y>\\d+)-(?<mo>\\d+)-(?<d>\\d+)T(?<h>\\d+):(?<mi>\\d+):(?<s>\\d+)"
        "${{y}}${{mo}}${{d}}T${{h}}${{mi}}${{s}}Z";
  }}
  log_format probe "{_LOG_FORMAT}";
  access_log off;
  default_type application/octet-stream;
  types {{
    image/tiff tif tiff;
  }}
  sendfile on;
  server_tokens off;
  keepalive_timeout 60s;
  {self.http}
  server {{
    listen {HOST}:{self.port} {self.listen};
    access_log {d}/download.log probe;
    location /download/ {{
      auth_basic "terrascope";
      auth_basic_user_file {d}/htpasswd;
      alias {self.root}/;
      {self.location}
      {"try_files /.never-a-file @bucket;" if self.redirect_to_bucket else ""}
    }}{redirect}
  }}{bucket}
}}
"""

    # --- life cycle ---------------------------------------------------------------------

    def start(self, attempts: int = 5) -> Nginx:
        """Start nginx on free ports and wait until it accepts connections.

        Parameters
        ----------
        attempts : int
            Port choices tried when another process took a chosen port meanwhile.

        Returns
        -------
        Nginx
            ``self``.

        Raises
        ------
        NginxError
            When nginx exits at start-up (bad configuration...): its error log is the
            message.
        """
        if self.binary is None:
            raise NginxError(f"no nginx binary (set {ENV_NGINX} or install nginx)")
        if self._proc is not None:
            return self
        for attempt in range(attempts):
            self.directory = Path(tempfile.mkdtemp(prefix="terrascope-nginx-"))
            try:
                self._launch()
                return self
            except NginxError as err:
                self.stop()
                if "Address already in use" not in str(err) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        d = self.directory
        assert d is not None
        for name in _TEMP_PATHS:
            (d / "temp" / name).mkdir(parents=True)
        lines = "".join(f"{user}:{_ssha(password)}\n" for user, password in self.users.items())
        (d / "htpasswd").write_text(lines)
        self.port = free_port()
        self.bucket_port = free_port() if self.bucket else 0
        while self.bucket and self.bucket_port == self.port:
            self.bucket_port = free_port()
        (d / "nginx.conf").write_text(self.config())
        for log in ("download.log", "bucket.log"):
            (d / log).touch()
        self._proc = subprocess.Popen(
            [self.binary, "-p", f"{d}/", "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ports = [self.port, self.bucket_port] if self.bucket else [self.port]
        deadline = time.monotonic() + START_TIMEOUT
        while ports:
            if self._proc.poll() is not None:
                status = self._proc.returncode
                raise NginxError(f"nginx exited with status {status}: {self.errors()}")
            if time.monotonic() > deadline:
                raise NginxError(f"nginx did not listen in {START_TIMEOUT} s: {self.errors()}")
            try:
                socket.create_connection((HOST, ports[0]), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                ports.pop(0)

    def stop(self) -> None:
        """End nginx (SIGTERM to its master, SIGKILL to it and its workers, each by PID,
        if it has not exited in :data:`STOP_TIMEOUT` seconds) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                for pid in [*workers, *_children(proc.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # --- logs ---------------------------------------------------------------------------

    def records(self, server: str = "download") -> list[Record]:
        """The access log of ``server`` (``"download"`` or ``"bucket"``), parsed.

        nginx writes a line when a request ends, so a request still being answered
        is not there yet.
        """
        if server not in ("download", "bucket"):
            raise ValueError(f"server must be 'download' or 'bucket', not {server!r}")
        if self.directory is None:
            raise RuntimeError("nginx is not started")
        text = (self.directory / f"{server}.log").read_text()
        return [_parse(line) for line in text.splitlines() if line]

    def clear_log(self) -> None:
        """Forget the requests logged so far (both servers)."""
        if self.directory is None:
            raise RuntimeError("nginx is not started")
        for name in ("download.log", "bucket.log"):
            with open(self.directory / name, "r+b") as log:
                log.truncate(0)

    def errors(self) -> str:
        """nginx's error log (start-up problems, rate-limit rejections...)."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "error.log").read_text(errors="replace")
        except OSError:
            return ""
