"""A real stac-fastapi-pgstac (PostgreSQL + PostGIS) on loopback, holding the sandbox's catalogue.

:class:`Pgstac` makes a temporary directory of its own, creates a PostgreSQL cluster
there (``initdb``, as the ``postgres`` user when the tests run as root, since
PostgreSQL refuses to run as root), starts it on a free loopback port with its unix
socket inside the directory, creates a database, installs pgstac's schema
(``pypgstac migrate``), loads the sandbox's collections and items (with their hrefs on
the sandbox's download server, as the sandbox's STAC API serves them) and runs
stac-fastapi-pgstac under uvicorn on another free port. :meth:`Pgstac.stop` ends
uvicorn by its PID, stops PostgreSQL with ``pg_ctl stop -m fast`` and removes the
directory.

>>> with Pgstac(venv, sandbox) as server:  # doctest: +SKIP
...     server.url  # 'http://127.0.0.1:PORT/', a STAC API of the sandbox's world
...     server.records()  # uvicorn's access log, parsed

stac-fastapi-pgstac, pypgstac and uvicorn come from a virtualenv of their own
(``TERRASCOPE_TEST_PGSTAC``; ``scripts/run.sh test`` makes it), never mixed with the
package's; PostgreSQL 15 and PostGIS from Debian's packages (:data:`PG_BIN`). The
database's password is random, lives in the process's memory and in the child
processes' environments only, and PostgreSQL listens on 127.0.0.1 alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import HOST, Harness, free_port

__all__ = ["ENV_PGSTAC", "Pgstac", "PgstacError", "Record", "unavailable"]

#: Environment variable naming the virtualenv with stac-fastapi-pgstac, pypgstac, uvicorn.
ENV_PGSTAC = "TERRASCOPE_TEST_PGSTAC"
#: Debian's PostgreSQL 15 binaries (``initdb``, ``pg_ctl``, ``createdb``).
PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: PostGIS's extension control file for PostgreSQL 15 (pgstac's schema needs PostGIS).
POSTGIS_CONTROL = Path("/usr/share/postgresql/15/extension/postgis.control")
#: The OS account that runs PostgreSQL when the tests run as root.
PG_OS_USER = "postgres"
#: The database superuser, and the database the STAC API reads.
DB_USER = "postgres"
DB_NAME = "pgstac"
#: Seconds given to PostgreSQL and to uvicorn to start, and to each set-up command.
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 300.0
#: Seconds :meth:`Pgstac.stop` waits after SIGTERM (uvicorn) or ``pg_ctl stop``.
STOP_TIMEOUT = 15.0
#: A loopback test database need not survive a crash: no fsync, no synchronous commit.
_POSTGRES_CONF = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
"""
#: uvicorn's access log line: ``INFO:     127.0.0.1:40000 - "POST /search HTTP/1.1" 200 OK``.
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


class PgstacError(RuntimeError):
    """PostgreSQL, pypgstac or stac-fastapi-pgstac failed to start (the message says
    which step and holds its output)."""


def _venv_bin(venv: str | os.PathLike[str], name: str) -> Path:
    return Path(venv) / "bin" / name


def unavailable(venv: str | None = None) -> str | None:
    """Why no stac-fastapi-pgstac can be run here, or None when everything is present.

    Parameters
    ----------
    venv : str, optional
        The virtualenv to use; by default ``TERRASCOPE_TEST_PGSTAC``.

    Returns
    -------
    str or None
        A reason fit for ``pytest.skip``.
    """
    venv = venv if venv is not None else os.environ.get(ENV_PGSTAC, "").strip()
    if not venv:
        return (
            f"{ENV_PGSTAC} is not set: run `bash scripts/run.sh test` (which installs "
            "PostgreSQL/PostGIS and a virtualenv with stac-fastapi-pgstac) or set it to "
            "such a virtualenv"
        )
    for name in ("python", "uvicorn", "pypgstac"):
        if not os.access(_venv_bin(venv, name), os.X_OK):
            return f"{ENV_PGSTAC}={venv} has no bin/{name}"
    for name in ("initdb", "pg_ctl", "postgres", "createdb"):
        if not os.access(PG_BIN / name, os.X_OK):
            return f"no PostgreSQL 15 ({PG_BIN / name}): apt-get install postgresql-15"
    if not POSTGIS_CONTROL.is_file():
        return f"no PostGIS ({POSTGIS_CONTROL}): apt-get install postgresql-15-postgis-3"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root and there is no {PG_OS_USER!r} account to run PostgreSQL"
    return None


@dataclass(frozen=True)
class Record:
    """One request as uvicorn logged it.

    Attributes
    ----------
    method : str
        HTTP method.
    path, query : str
        The request target split at ``?`` (query empty when absent).
    status : int
        Status answered.
    """

    method: str
    path: str
    query: str
    status: int


class Pgstac(Harness):
    """stac-fastapi-pgstac serving the sandbox's collections and items, on a free port.

    Parameters
    ----------
    venv : str or os.PathLike
        Virtualenv with ``stac-fastapi.pgstac``, ``pypgstac[psycopg]`` and ``uvicorn``.
    sandbox : xarray_terrascope.testing.Sandbox
        A running sandbox: its world's collections and items are loaded, their assets
        on its download server (``sandbox.download_url``).
    collections : sequence of dict, optional
        More collection documents to load, with no items (more than pgstac's page of
        10 collections makes ``GET /collections`` page).

    Attributes
    ----------
    port, db_port : int
        Ports of the STAC API and of PostgreSQL (0 while stopped).
    directory : pathlib.Path or None
        The temporary directory (cluster, socket, logs, ndjson files) while running.
    timings : dict
        Seconds each start-up step took (``initdb``, ``postgres``, ``migrate``,
        ``load``, ``api``).
    """

    def __init__(
        self,
        venv: str | os.PathLike[str],
        sandbox: Any,
        *,
        collections: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.venv = Path(venv)
        self.sandbox = sandbox
        self.collections = [dict(doc) for doc in collections]
        self.port = self.db_port = 0
        self.directory: Path | None = None
        self.timings: dict[str, float] = {}
        self._password = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._postgres_up = False
        self._as_postgres: dict[str, Any] = {}

    # --- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The STAC API's landing page, ``http://127.0.0.1:PORT/``."""
        return f"http://{HOST}:{self.port}/"

    @property
    def pid(self) -> int | None:
        """PID of uvicorn while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def postgres_pid(self) -> int | None:
        """PID of the PostgreSQL server (its ``postmaster.pid``) while it runs."""
        if self.directory is None or not self._postgres_up:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        return None

    # --- start and stop -----------------------------------------------------------------

    def start(self) -> Pgstac:
        """Create and start the database, load the sandbox's catalogue, start the API.

        Returns
        -------
        Pgstac
            ``self``.

        Raises
        ------
        PgstacError
            When a step fails (its output is the message); everything started is
            stopped and the directory removed first.
        """
        reason = unavailable(str(self.venv))
        if reason:
            raise PgstacError(reason)
        if self._proc is not None:
            return self
        self.directory = Path(tempfile.mkdtemp(prefix="terrascope-pgstac-"))
        try:
            steps = {
                "initdb": self._initdb,
                "postgres": self._start_postgres,
                "migrate": self._migrate,
                "load": self._load,
                "api": self._start_api,
            }
            for name, step in steps.items():
                began = time.monotonic()
                step()
                self.timings[name] = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End uvicorn (SIGTERM by its PID, SIGKILL after :data:`STOP_TIMEOUT` seconds),
        stop PostgreSQL (``pg_ctl stop -m fast``, SIGQUIT to its PID if that fails) and
        remove the directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._postgres_up and self.directory is not None:
            pid = self.postgres_pid
            try:
                stopped = self._pg_ctl("stop", "-m", "fast", check=False).returncode == 0
            except PgstacError:  # pg_ctl itself hung
                stopped = False
            if not stopped and pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
                deadline = time.monotonic() + STOP_TIMEOUT
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.1)
            self._postgres_up = False
        self.port = self.db_port = 0
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # --- the steps ------------------------------------------------------------------------

    def _run(
        self,
        step: str,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [str(a) for a in args],
                env=dict(env) if env is not None else self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
                **kw,
            )
        except subprocess.TimeoutExpired as err:
            raise PgstacError(f"{step} did not finish in {COMMAND_TIMEOUT} s") from err
        if check and done.returncode != 0:
            raise PgstacError(
                f"{step} failed (exit status {done.returncode}):\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}{self._postgres_log()}"
            )
        return done

    def _env(self, *, connect: bool = True, **extra: str) -> dict[str, str]:
        """The environment of the children: no inherited ``PG*`` variables or Python path
        and, with ``connect``, the connection in ``PG*`` variables (libpq's, which
        pypgstac and stac-fastapi-pgstac 7 read)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PG") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        }
        if connect:
            env.update(
                PGHOST=HOST,
                PGPORT=str(self.db_port),
                PGUSER=DB_USER,
                PGPASSWORD=self._password,
                PGDATABASE=DB_NAME,
            )
        env.update(extra)
        return env

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        d = self.directory
        assert d is not None
        return self._run(
            "pg_ctl " + args[0],
            [PG_BIN / "pg_ctl", "-D", d / "data", "-w", "-t", str(int(START_TIMEOUT)), *args],
            env=self._env(connect=False),
            check=check,
            **self._as_postgres,
        )

    def _postgres_log(self) -> str:
        if self.directory is None:
            return ""
        try:
            text = (self.directory / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- postgres.log:\n{text[-3000:]}"

    def _initdb(self) -> None:
        d = self.directory
        assert d is not None
        (d / "data").mkdir(mode=0o700)
        (d / "socket").mkdir()
        self._password = secrets.token_urlsafe(24)
        pwfile = d / "pwfile"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self._password + "\n")
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            account = pwd.getpwnam(PG_OS_USER)
            for path in (d, d / "data", d / "socket", pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._as_postgres = {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": [],
                "cwd": d,
            }
        try:
            self._run(
                "initdb",
                [
                    PG_BIN / "initdb",
                    "-D",
                    d / "data",
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ],
                env=self._env(connect=False),
                **self._as_postgres,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(d / "data" / "postgresql.conf", "a") as conf:
            conf.write(_POSTGRES_CONF.format(socket=d / "socket"))

    def _start_postgres(self, attempts: int = 3) -> None:
        d = self.directory
        assert d is not None
        self._postgres_up = True  # from here on, stop() runs pg_ctl stop
        for attempt in range(attempts):  # another process may take the free port first
            self.db_port = free_port()
            last = attempt == attempts - 1
            options = f"-p {self.db_port}"
            done = self._pg_ctl("start", "-l", str(d / "postgres.log"), "-o", options, check=last)
            if done.returncode == 0:
                break
        self._run("createdb", [PG_BIN / "createdb", DB_NAME], env=self._env(PGDATABASE="postgres"))

    def _pypgstac(self, step: str, *args: str | os.PathLike[str]) -> None:
        # pypgstac's --dsn defaults to "", which makes libpq read the PG* variables
        self._run(step, [_venv_bin(self.venv, "pypgstac"), *args])

    def _migrate(self) -> None:
        self._pypgstac("pypgstac migrate", "migrate")

    def _load(self) -> None:
        d = self.directory
        assert d is not None
        world, root = self.sandbox.world, self.sandbox.download_url
        collections, items = d / "collections.ndjson", d / "items.ndjson"
        with open(collections, "w") as out:
            for doc in [*world.collections.values(), *self.collections]:
                out.write(json.dumps(doc) + "\n")
        with open(items, "w") as out:
            for cid in world.collections:
                for item in world.item_dicts(cid, root):  # what the sandbox's STAC API serves
                    out.write(json.dumps(item) + "\n")
        for kind, path in (("collections", collections), ("items", items)):
            self._pypgstac(f"pypgstac load {kind}", "load", kind, path, "--method", "upsert")

    def _start_api(self, attempts: int = 3) -> None:
        d = self.directory
        assert d is not None
        (d / "api").mkdir(exist_ok=True)  # its working directory: no stray .env is read
        env = self._env(ENABLE_TRANSACTIONS_EXTENSIONS="false", PYTHONUNBUFFERED="1")
        for attempt in range(attempts):
            self.port = free_port()
            with open(d / "uvicorn.log", "wb") as log:
                self._proc = subprocess.Popen(
                    [
                        str(_venv_bin(self.venv, "uvicorn")),
                        "stac_fastapi.pgstac.app:create_app",
                        "--factory",
                        "--host",
                        HOST,
                        "--port",
                        str(self.port),
                        "--no-use-colors",
                    ],
                    cwd=d / "api",
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_for_api()
                return
            except PgstacError as err:
                proc, self._proc = self._proc, None
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if "address already in use" not in str(err) or attempt == attempts - 1:
                    raise

    def _wait_for_api(self) -> None:
        assert self._proc is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise PgstacError(
                    f"uvicorn exited with status {self._proc.returncode}:\n{self.log()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise PgstacError(
                    f"stac-fastapi-pgstac did not answer in {START_TIMEOUT} s:\n"
                    f"{self.log()[-4000:]}"
                )
            try:
                with opener.open(self.url, timeout=2) as answer:
                    if answer.status == 200 and json.load(answer).get("type") == "Catalog":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    # --- logs ---------------------------------------------------------------------------

    def log(self) -> str:
        """uvicorn's output (start-up messages, tracebacks, the access log)."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "uvicorn.log").read_text(errors="replace")
        except OSError:
            return ""

    def records(self) -> list[Record]:
        """uvicorn's access log, parsed (a line is written when the answer starts)."""
        out = []
        for match in _ACCESS.finditer(self.log()):
            path, _, query = match["target"].partition("?")
            out.append(Record(match["method"], path, query, int(match["status"])))
        return out

    def searches(self) -> list[Record]:
        """The ``/search`` requests logged so far."""
        return [r for r in self.records() if r.path == "/search"]
