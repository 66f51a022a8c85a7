"""Point this process at a running sandbox, and back: :meth:`Sandbox.activate`.

An activation sets the package's options to the sandbox's endpoints
(:func:`~xarray_terrascope.set_options`) and makes the sandbox's main account the
process default credentials, in memory (as :func:`~xarray_terrascope.login` does; nothing
goes to ``os.environ``). Closing it (the end of its ``with`` block, :meth:`Activation.close`,
or :meth:`Sandbox.stop`) puts back the options and the default credentials it found.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from xarray_terrascope.auth.credentials import Credentials
from xarray_terrascope.auth.signin import validate_credentials
from xarray_terrascope.auth.state import replace_default
from xarray_terrascope.options import set_options

if TYPE_CHECKING:
    from .server import Sandbox

__all__ = ["Activation"]


class Activation:
    """The package pointed at a sandbox, from creation until :meth:`close`.

    Made by :meth:`Sandbox.activate` (which see); in force as soon as it is made, so it
    works both as a statement in a notebook and as a ``with`` block. Activations nest:
    close them in the reverse order of their making.
    """

    def __init__(self, sandbox: Sandbox, *, validate: bool = True) -> None:
        self.sandbox = sandbox
        # headers in memory only: the sandbox's ports change with every start, so
        # persisted headers would only fill the user's cache directory
        self._options = set_options(**sandbox.options, header_cache=False)
        try:
            creds = Credentials(sandbox.username, sandbox.password)
            if validate:
                validate_credentials(creds)  # reads the download URL set just above
        except BaseException:
            self._options.__exit__(None, None, None)
            raise
        self._previous = replace_default(creds)
        self.closed = False

    @property
    def active(self) -> bool:
        """Whether the activation is still in force."""
        return not self.closed

    def close(self) -> None:
        """Put back the options and the default credentials found at activation (again:
        nothing)."""
        if self.closed:
            return
        self.closed = True
        replace_default(self._previous)
        self._options.__exit__(None, None, None)
        self.sandbox._activation_closed(self)

    def __enter__(self) -> Sandbox:
        return self.sandbox

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "active"
        return f"<Activation of {self.sandbox!r}: {state}>"
