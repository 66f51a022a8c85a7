"""Credentials for ``dask.distributed`` workers, outside the task graph.

Task graphs carry only opaque handles (see :mod:`xarray_terrascope.auth`). The
credentials themselves (a username and password, or for an OpenID Connect login the
provider's token endpoint, the access token, the refresh token and the expiry, from
which each worker refreshes the access token itself) reach a cluster in
:class:`CredentialsPlugin`, a worker plugin
registered on the scheduler of one client under a name of its own (:func:`plugin_name`:
one per client of each process), holding only what that
client's graphs need (the login default if a graph uses it, the explicit credentials
of the cubes by token):

* when a graph with Terrascope reads is serialized by a client to be sent to its
  scheduler (:func:`share_for_graph`, called while the cube's array is pickled): the
  registration is scheduled on the client's event loop, and the graph carries the
  *stamp* of that credential state, for which the workers wait (see
  :func:`xarray_terrascope.auth.resolve`) since the plugin may reach them after the
  first tasks;
* when :func:`share_credentials` is called;
* again on ``login()`` and ``logout()`` (:func:`republish`), on the clients reached
  before only: registered anew with the new credentials, removed on logout.

No other client gets anything. The scheduler keeps the plugin (to set up workers that
join later) until it is replaced or removed: whoever can reach that scheduler can read
it (see docs/user-guide/clusters.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from distributed import WorkerPlugin
from distributed.client import Client, default_client
from distributed.utils import in_async_call

from xarray_terrascope.auth import state
from xarray_terrascope.auth.credentials import Credentials
from xarray_terrascope.auth.tokens import TokenCredentials, TokenHolder
from xarray_terrascope.exceptions import AuthenticationError, InvalidArgumentError, TerrascopeError

__all__ = [
    "PLUGIN_NAME",
    "CredentialsPlugin",
    "plugin_name",
    "republish",
    "serializing_client",
    "share_credentials",
    "share_for_graph",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "xarray-terrascope-credentials"

#: This process, as the sender of credential states (see :data:`.state.Stamp`).
_SENDER = secrets.token_hex(8)
_generations = itertools.count(1)
#: Numbers the clients this process shares with (each is a sender of its own).
_client_ids = itertools.count(1)
#: The code of the client method that serializes a graph in the calling thread (None
#: if a version of distributed has no such method: then only share_credentials() shares).
_GRAPH_TO_FUTURES = getattr(getattr(Client, "_graph_to_futures", None), "__code__", None)
#: Seconds login()/logout() wait for a scheduler to take the new state.
_SYNC_TIMEOUT = 60
_lock = threading.Lock()

_Fingerprint = tuple[str | None, frozenset[str]]


def _packed(creds: state.AnyCredentials) -> tuple[Any, ...]:
    """What the plugin carries of ``creds``: the username and password, or for an
    OpenID Connect login what a worker needs to use and refresh the tokens itself (the
    provider, the access and refresh tokens, the expiry)."""
    if isinstance(creds, TokenCredentials):
        return ("oidc", creds.username, creds.token, creds.holder.snapshot())
    return ("basic", creds.username, creds.password, creds.token)


def _unpacked(packed: tuple[Any, ...]) -> state.AnyCredentials:
    if packed[0] == "oidc":
        _kind, username, token, snapshot = packed
        return TokenCredentials(username, TokenHolder.from_snapshot(snapshot), token)
    _kind, username, password, token = packed
    return Credentials(username, password, token)


class CredentialsPlugin(WorkerPlugin):
    """Install credentials shared by a client in each worker process.

    Parameters
    ----------
    default : Credentials or None
        The client's login default, for graphs that use :data:`state.DEFAULT_HANDLE`.
    handles : dict
        Explicit credentials by token.
    stamp : tuple
        The ``(sender, generation)`` of this state, for which graphs may wait.
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(
        self,
        default: state.AnyCredentials | None,
        handles: dict[str, state.AnyCredentials],
        stamp: state.Stamp,
    ) -> None:
        self._default = _packed(default) if default is not None else None
        self._handles = {token: _packed(c) for token, c in handles.items()}
        self.stamp = stamp
        self.name = f"{PLUGIN_NAME}-{stamp[0]}"  # see :func:`plugin_name`

    def __repr__(self) -> str:
        user = self._default[1] if self._default else None
        return f"CredentialsPlugin(default_user={user!r}, handles={len(self._handles)})"

    def setup(self, worker: Any) -> None:
        """Replace the worker process's shared credentials with these."""
        default = _unpacked(self._default) if self._default else None
        handles = {k: _unpacked(v) for k, v in self._handles.items()}
        state._install(default, handles, self.stamp)  # announces "forget": drops old readers
        logger.debug("Installed Terrascope credentials (%d handle(s)) on a worker", len(handles))

    def teardown(self, worker: Any) -> None:
        """Forget the credentials when the plugin is removed (or replaced) or the worker closes."""
        state._install(None, {}, self.stamp)


@dataclass(eq=False)
class _Shared:
    """What this process shares with the cluster of one client."""

    #: Who shares it, in stamps and the plugin's name: this process and this client.
    sender: str = field(default_factory=lambda: f"{_SENDER}.{next(_client_ids)}")
    #: Handles the client's graphs carried (``DEFAULT_HANDLE``, tokens).
    handles: set[str] = field(default_factory=set)
    #: Fingerprint (user-visible tokens only) of the state decided for the scheduler;
    #: None: nothing to share there.
    wanted: _Fingerprint | None = None
    #: Stamp of the state decided last; graphs wait for it while ``wanted`` is not None.
    stamp: state.Stamp | None = None
    #: Whether a change was decided and not sent yet: register ``plugin``, or remove the
    #: plugin when it is None.
    unsent: bool = False
    plugin: CredentialsPlugin | None = None
    #: Whether the scheduler holds this process's plugin (as far as it knows).
    registered: bool = False
    #: One change on the scheduler at a time, in the order decided.
    order: asyncio.Lock = field(default_factory=asyncio.Lock)


#: Clients that received (or are to receive) credentials; weak, a closed client goes.
_clients: weakref.WeakKeyDictionary[Client, _Shared] = weakref.WeakKeyDictionary()


def _reset_after_fork() -> None:
    """In a forked child: another sender, and none of the parent's clients."""
    global _SENDER, _lock
    _SENDER, _lock = secrets.token_hex(8), threading.Lock()
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def plugin_name(client: Client) -> str | None:
    """The name of the plugin that this process registered (or registers) on
    ``client``'s scheduler, None if none: :data:`PLUGIN_NAME` and the sender's id (one
    per client of each process), so that the plugins of two clients sharing a scheduler
    never replace each other (one would tear down the other's credentials)."""
    with _lock:
        shared = _clients.get(client)
    return None if shared is None else f"{PLUGIN_NAME}-{shared.sender}"


def serializing_client() -> Client | None:
    """The ``distributed`` client whose ``_graph_to_futures`` is serializing a graph in
    this thread (the caller is being pickled into it), or None."""
    if _GRAPH_TO_FUTURES is None:
        return None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _GRAPH_TO_FUTURES:
            client = frame.f_locals.get("self")
            return client if isinstance(client, Client) else None
        frame = frame.f_back
    return None


def _decide(shared: _Shared) -> bool:
    """Set what the scheduler should hold for ``shared.handles``; True when it changed
    (``shared.plugin`` is then what to send). Call with :data:`_lock` held."""
    default, explicit = state._shareable(shared.handles)
    wanted: _Fingerprint | None = (
        (default.token if default is not None else None, frozenset(explicit))
        if default is not None or explicit
        else None
    )
    if wanted == shared.wanted:
        return False
    shared.wanted, shared.unsent, shared.plugin = wanted, True, None
    if wanted is not None:
        shared.stamp = (shared.sender, next(_generations))
        shared.plugin = CredentialsPlugin(default, explicit, shared.stamp)
    return True


async def _flush(client: Client, shared: _Shared) -> None:
    """Send the state decided last for ``client``'s scheduler (if not sent yet); returns
    once it is there, after any change decided before it."""
    async with shared.order:
        with _lock:
            if not shared.unsent:
                return
            plugin, shared.plugin, shared.unsent = shared.plugin, None, False
        if plugin is not None:
            await client._register_worker_plugin(plugin, plugin.name, False)
            shared.registered = True
        elif shared.registered:
            shared.registered = False
            await client._unregister_worker_plugin(f"{PLUGIN_NAME}-{shared.sender}")


async def _flush_logged(client: Client, shared: _Shared) -> None:
    """:func:`_flush` in the background: a failure is logged (the workers then say they
    have no credentials)."""
    try:
        await _flush(client, shared)
    except Exception as err:
        logger.warning(
            "Could not share the Terrascope credentials with the scheduler at %s (%s: %s)",
            client.scheduler.address if client.scheduler is not None else "?",
            type(err).__name__,
            err,
        )


def share_for_graph(handle: str) -> state.Stamp | None:
    """Called while a graph holding a read with ``handle`` is pickled: when a client is
    serializing it, schedule (not wait for) the registration on that client of what its
    graphs need, if its scheduler does not hold it yet.

    Returns
    -------
    tuple or None
        The stamp of the credential state the graph's reads are to wait for; None when
        no client is serializing or nothing is shared with its cluster.
    """
    client = serializing_client()
    if client is None:
        return None
    with _lock:
        shared = _clients.get(client)
        if shared is None:
            shared = _clients[client] = _Shared()
        shared.handles.add(handle)
        changed = _decide(shared)
        stamp = shared.stamp if shared.wanted is not None else None
    if changed:
        # The client holds its locks while it serializes: never wait here.
        _flush_soon(client, shared)
    return stamp


def _flush_soon(client: Client, shared: _Shared) -> None:
    """Schedule :func:`_flush_logged` on the client's own loop, without waiting."""
    loop = client.loop
    # typed `IOLoop | None`, but distributed raises rather than give None
    assert loop is not None
    loop.add_callback(_flush_logged, client, shared)


def republish() -> None:
    """After a login or logout: give the clients reached before the new state (removing
    the plugin where nothing is left to share), and no other client."""
    with _lock:
        changed = []
        for client, shared in list(_clients.items()):
            if client.status in ("closing", "closed"):
                del _clients[client]
            elif _decide(shared):
                changed.append((client, shared))
    for client, shared in changed:
        if client.status != "running" or client.asynchronous or in_async_call(client.loop):
            # cannot wait here: the client's own loop sends it soon
            _flush_soon(client, shared)
            continue
        try:
            client.sync(_flush, client, shared, callback_timeout=_SYNC_TIMEOUT)
        except Exception as err:  # a logout must not fail because a scheduler is gone
            logger.warning(
                "Could not update the Terrascope credentials on a dask scheduler (%s: %s)",
                type(err).__name__,
                err,
            )


def share_credentials(client: Client | None = None) -> Awaitable[None] | None:
    """Register the login credentials on ``client``'s cluster now; see
    :func:`xarray_terrascope.share_credentials`."""
    if client is None:
        try:
            client = default_client()
        except ValueError as err:
            raise InvalidArgumentError(
                "share_credentials() found no dask.distributed client: create one first, "
                "or pass client=..."
            ) from err
    if not isinstance(client, Client):
        raise InvalidArgumentError(
            f"client must be a distributed.Client, got {type(client).__name__}"
        )
    if client.status in ("closing", "closed"):
        raise InvalidArgumentError("share_credentials() needs an open client; this one is closed")
    if state._shareable([state.DEFAULT_HANDLE])[0] is None:
        raise AuthenticationError(
            "No credentials to share: call xarray_terrascope.login() first (credentials= "
            "of a cube reach the cluster when the cube is computed there)."
        )
    with _lock:
        shared = _clients.get(client)
        if shared is None:
            shared = _clients[client] = _Shared()
        shared.handles.add(state.DEFAULT_HANDLE)
        _decide(shared)
    if client.asynchronous:
        return _flush(client, shared)
    try:
        client.sync(_flush, client, shared, callback_timeout=_SYNC_TIMEOUT)
    except Exception as err:
        raise TerrascopeError(
            "Could not register the Terrascope credentials on the dask scheduler "
            f"({type(err).__name__}); check that the client is connected."
        ) from err
    return None
