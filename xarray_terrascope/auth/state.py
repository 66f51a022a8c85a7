"""This process's credential state: the login default, the explicit credentials of open
cubes (by opaque handle), what a cluster's worker plugin installed, and who is told when
any of it changes.

Credentials live in this process's memory only. They are never written to
``os.environ``, files, logs or reprs, and they never travel inside a dask graph: the
graph carries an opaque *handle* (a short random string) that each process resolves at
read time with :func:`resolve`. On a ``dask.distributed`` cluster the credentials a graph
needs reach the workers through a worker plugin (:mod:`.plugin`), which installs them here
with :func:`_install`. Modules that hold state tied to credentials (open files, HTTP
caches, the cluster plugin) register callbacks with :func:`subscribe`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

from xarray_terrascope.auth.credentials import Credentials, logged_out, logouts
from xarray_terrascope.auth.tokens import TokenCredentials
from xarray_terrascope.exceptions import AuthenticationError, InvalidArgumentError

__all__ = [
    "DEFAULT_HANDLE",
    "INSTALL_WAIT",
    "Stamp",
    "credentials_handle",
    "current_credentials",
    "replace_default",
    "resolve",
    "subscribe",
]

logger = logging.getLogger(__name__)

#: Environment variables the default credentials may come from (not options: an option
#: can be printed, a password never).
ENV_USERNAME = "TERRASCOPE_USERNAME"
ENV_PASSWORD = "TERRASCOPE_PASSWORD"

#: The handle that means "this process's default credentials, whatever they are at read time".
DEFAULT_HANDLE = "default"

_lock = threading.RLock()
#: Notified whenever a worker plugin installs credentials in this process.
_installed_changed = threading.Condition(_lock)
#: What the process default or a cube's ``credentials=`` may be: a username and password,
#: or an OpenID Connect login.
AnyCredentials = Credentials | TokenCredentials
_default: AnyCredentials | None = None
#: Explicit credentials by token, held weakly: each open cube holds its own
#: :class:`Credentials`, so an entry goes with the last cube that uses it (and on logout()).
_registry: weakref.WeakValueDictionary[str, AnyCredentials] = weakref.WeakValueDictionary()


def _new_lock_after_fork() -> None:
    global _lock, _installed_changed
    _lock = threading.RLock()  # another thread may have held it at the fork
    _installed_changed = threading.Condition(_lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)

#: ``(sender, generation)`` of a credential state shared with a cluster: ``sender`` is a
#: random id of the client process, ``generation`` grows with each state it shares.
Stamp = tuple[str, int]
#: What the worker plugins installed in this process, by sender (each client process that
#: shares credentials with the cluster has a plugin of its own): the default, the explicit
#: credentials by token (held strongly: the plugin is the only holder) and the
#: generation; kept apart from the process's own login.
_installs: dict[str, tuple[AnyCredentials | None, dict[str, AnyCredentials], int]] = {}
#: Per sender, the generation the newest graph this process received asks for (see
#: :func:`_expect`).
_expected: dict[str, int] = {}
#: Whose graph the read running in this context comes from: the sender of its stamp;
#: ``""`` for a graph that came with none (read with this process's own credentials
#: only, never with another sender's); None outside a graph (a cube opened here).
_graph_sender: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "terrascope_graph_sender", default=None
)
#: Seconds a dask worker waits for credentials that are on their way (see :func:`resolve`).
INSTALL_WAIT = 30.0

#: ``"forget"``: credentials changed, drop whatever was read or opened with the old ones;
#: ``"publish"``: the process's credential state changed, share it (e.g. with a cluster).
Event = Literal["forget", "publish"]
_subscribers: dict[str, list[Callable[[], None]]] = {"forget": [], "publish": []}


def subscribe(event: Event, callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever ``event`` happens (once per callback, however often
    it is subscribed).

    ``"forget"`` follows a logout or a change of the default credentials, and the
    installation of a worker's credentials; ``"publish"`` follows a login or a logout.
    """
    if event not in _subscribers:
        raise InvalidArgumentError(f"event must be 'forget' or 'publish', got {event!r}")
    with _lock:
        if callback not in _subscribers[event]:
            _subscribers[event].append(callback)


def _notify(event: Event) -> None:
    with _lock:
        callbacks = list(_subscribers[event])
    for callback in callbacks:
        callback()


def current_credentials() -> AnyCredentials | None:
    """Return the process default set by :func:`login` (in a dask worker, else the one
    the client shared with it: the sender of the graph being read, or the only client
    that shared any), or None."""
    default = _default
    if default is not None:
        return default
    with _lock:
        install = _install_for(_graph_sender.get())
    return install[0] if install is not None else None


def _install_for(
    sender: str | None,
) -> tuple[AnyCredentials | None, dict[str, AnyCredentials], int] | None:
    """What ``sender``'s plugin installed here; for no sender (a cube opened in this
    process, not received in a graph), what the only sender installed, if only one did.
    Call with :data:`_lock` held."""
    if sender is not None:
        return _installs.get(sender)
    holding = [install for install in _installs.values() if install[0] is not None or install[1]]
    return holding[0] if len(holding) == 1 else None


@contextlib.contextmanager
def reading_for(stamp: Stamp | None, *, from_graph: bool) -> Iterator[None]:
    """Resolve credentials in this block for a graph of the sender of ``stamp`` (a cube
    received in a graph: ``from_graph``; with no stamp, its sender shared nothing, and
    only this process's own credentials apply)."""
    sender = stamp[0] if stamp is not None else ("" if from_graph else None)
    token = _graph_sender.set(sender)
    try:
        yield
    finally:
        _graph_sender.reset(token)


def _set_default(creds: AnyCredentials | None) -> None:
    global _default
    with _lock:
        previous, _default = _default, creds
    if previous is not None and previous != creds:
        _notify("forget")
    _notify("publish")


def replace_default(creds: AnyCredentials | None) -> AnyCredentials | None:
    """Make ``creds`` this process's default credentials (``None``: no default), as
    :func:`~xarray_terrascope.login` does without a check, and return the previous default.

    For code that must put the default back as it found it (the sandbox's
    :meth:`~xarray_terrascope.testing.Sandbox.activate`); the explicit ``credentials=``
    of open cubes stay registered, unlike :func:`~xarray_terrascope.logout`.
    """
    with _lock:
        previous = _default
    _set_default(creds)
    return previous


def _forget_all() -> AnyCredentials | None:
    """Forget the login default and every explicit registration (logout); returns the
    default that was."""
    global _default
    with _lock:
        previous, _default = _default, None
        had_explicit = len(_registry) > 0
        _registry.clear()
        logged_out()  # the requests of reads under way send these credentials no more
    if previous is not None or had_explicit:
        _notify("forget")
    _notify("publish")
    return previous


def credentials_handle(credentials: AnyCredentials | None) -> str:
    """Return the opaque handle that stands for ``credentials`` in a dask graph.

    ``None`` gives :data:`DEFAULT_HANDLE`, resolved at read time to the process default
    (so :func:`logout` and a new :func:`login` are honoured by later computations).
    Explicit credentials are registered in this process under their random token, weakly:
    whoever uses the handle must hold ``credentials`` (an open cube does), and
    :func:`logout` forgets every registration.
    """
    if credentials is None:
        return DEFAULT_HANDLE
    if not isinstance(credentials, (Credentials, TokenCredentials)):
        raise TypeError(
            "credentials must be an xarray_terrascope.Credentials (or what "
            "login(method='oidc') returns), "
            f"got {type(credentials).__name__}"
        )
    with _lock:
        _registry[credentials.token] = credentials
    return credentials.token


def _shareable(
    handles: Iterable[str],
) -> tuple[AnyCredentials | None, dict[str, AnyCredentials]]:
    """What of ``handles`` this process can share: its login default (for
    :data:`DEFAULT_HANDLE`) and the explicit credentials still registered."""
    with _lock:
        default = _default if DEFAULT_HANDLE in handles else None
        explicit = {h: c for h in handles if (c := _registry.get(h)) is not None}
    return default, explicit


def _install(
    default: AnyCredentials | None, handles: dict[str, AnyCredentials], stamp: Stamp | None
) -> None:
    """Replace the credentials the plugin of ``stamp``'s sender installed in this process
    (nothing, as a removed plugin does: none, unless a later state of that sender is there
    already; the generation stays, so that its graphs under way fail at once instead of
    waiting for credentials that will not come); the other senders' and the process's own
    login and registrations stay as they are."""
    if stamp is None:
        return
    sender, generation = stamp
    with _lock:
        current = _installs.get(sender)
        if default is not None or handles or current is None or current[2] <= generation:
            _installs[sender] = (default, dict(handles), generation)
        _installed_changed.notify_all()
    _notify("forget")


def _expect(stamp: Stamp) -> None:
    """Note that a graph this process received needs the credential state ``stamp`` (or a
    later one from the same sender): :func:`resolve` in a dask worker waits for it."""
    sender, generation = stamp
    with _lock:
        _expected[sender] = max(generation, _expected.get(sender, generation))


def _has_expected(sender: str | None) -> bool:
    expected = _expected.get(sender) if sender else None
    install = _installs.get(sender) if sender else None
    return expected is None or (install is not None and install[2] >= expected)


def _wait_for_expected(sender: str | None) -> bool:
    """In a dask worker, wait (at most :data:`INSTALL_WAIT` s) until the credentials the
    graphs received from ``sender`` need are installed; False when they did not arrive in
    time."""
    if _has_expected(sender) or not _in_dask_worker():
        return True
    logger.debug("Waiting for the Terrascope credentials the client is sharing")
    deadline = time.monotonic() + INSTALL_WAIT
    with _installed_changed:
        while not _has_expected(sender):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "The Terrascope credentials the client shared did not reach this worker "
                    "within %.0f s",
                    INSTALL_WAIT,
                )
                _expected.pop(sender or "", None)  # later reads do not wait again for it
                return False
            _installed_changed.wait(remaining)
    return True


def _from_environment() -> Credentials | None:
    user = os.environ.get(ENV_USERNAME)
    password = os.environ.get(ENV_PASSWORD)
    if user and password:
        return Credentials(user, password)
    return None


def resolve(handle: str) -> AnyCredentials:
    """Return the credentials a handle stands for in this process.

    The default handle resolves to the process default (in a dask worker, else the one
    the client shared), else to ``TERRASCOPE_USERNAME``/``TERRASCOPE_PASSWORD`` in this
    process's environment (how workers that the client's credentials did not reach can
    be configured). In a dask worker that received a graph whose credentials are still on
    their way, it first waits for them (at most :data:`INSTALL_WAIT` seconds); elsewhere
    it never waits.

    Raises
    ------
    AuthenticationError
        When this process has no credentials for the handle; the message says how to fix it.
    """
    sender = _graph_sender.get()
    arrived = _wait_for_expected(sender)
    with _lock:
        install = _install_for(sender)
        if handle == DEFAULT_HANDLE:
            creds = _default if _default is not None else (install[0] if install else None)
        else:
            creds = _registry.get(handle) or (install[1].get(handle) if install else None)
    if creds is None and handle == DEFAULT_HANDLE:
        creds = _from_environment()
    if creds is None:
        if _in_dask_worker():
            late = (
                ""
                if arrived
                else f" The credentials the client shared did not arrive within "
                f"{INSTALL_WAIT:.0f} s."
            )
            raise AuthenticationError(
                f"No Terrascope credentials in this dask worker (handle {handle!r}).{late} "
                + (
                    "Call xarray_terrascope.login() on the client and compute again, or set "
                    "TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD in the environment of the "
                    "workers."
                    if handle == DEFAULT_HANDLE
                    else "The credentials this cube was opened with did not come with the "
                    "graph (logout() on the client forgets them): open the cube again with "
                    "credentials=..., or login(), and compute again."
                )
            )
        why = (
            "logout() was called after the cube was opened"
            if logouts()
            else "a new process (multiprocessing's spawn or forkserver, a script of its "
            "own) does not inherit the login of the process that opened the cube"
        )
        raise AuthenticationError(
            f"No Terrascope credentials in this process to read the data ({why}). Call "
            "xarray_terrascope.login() here and compute again, or set TERRASCOPE_USERNAME "
            "and TERRASCOPE_PASSWORD in this process's environment."
            if handle == DEFAULT_HANDLE
            else "The credentials this cube was opened with are not known in this process "
            f"(handle {handle!r}; {why}, and credentials=... stay in the process they were "
            "given to): open the cube again here with credentials=..., or login()."
        )
    return creds


def _in_dask_worker() -> bool:
    import sys

    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True
