"""``Sandbox.activate()``: the package pointed at a sandbox in this process, and back.

Real sandboxes on loopback; what an activation must put back is checked against the
state set up by the test itself (options and a ``login()`` made before it).
"""

from __future__ import annotations

import os

import pytest

import xarray_terrascope as xts
from xarray_terrascope.auth import current_credentials
from xarray_terrascope.engine import read
from xarray_terrascope.testing import SAMPLE_FIELD, Sandbox

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture
def clean_process(monkeypatch, tmp_path):
    """No TERRASCOPE_* variable, no netrc, no login: a reader's fresh kernel."""
    for name in list(os.environ):
        if name.startswith("TERRASCOPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))
    xts.logout()
    yield
    xts.logout()
    read.clear_reader_cache()


def test_activate_points_options_and_login_at_the_sandbox_and_puts_them_back(clean_process):
    before = xts.login("somebody", "their-password", validate=False)  # no request sent
    with xts.set_options(max_connections=7, stac_url="http://127.0.0.1:9/stac/"):
        found = xts.get_options()
        with Sandbox() as sandbox:
            environ = dict(os.environ)
            with sandbox.activate() as active:
                assert active is sandbox
                options = xts.get_options()
                assert options.stac_url == sandbox.stac_url
                assert options.download_url == sandbox.download_url
                assert options.allowed_origins == {sandbox.download_origin}
                assert options.max_connections == 7  # what the sandbox does not set stays
                assert options.header_cache is False  # nothing persisted in the user's cache
                creds = current_credentials()
                assert creds is not None and creds.username == sandbox.username
                # in memory only: the environment is as it was, and holds no password
                assert dict(os.environ) == environ
                assert sandbox.password not in "".join(os.environ.values())
                items = xts.search(
                    "terrascope-s2-ndvi-v2", list(SAMPLE_FIELD), "2025-05-01", "2025-05-10"
                )
                assert items  # the search went to the sandbox
                assert len(sandbox.log) >= 1  # the login's proof reached its download server
        assert xts.get_options() == found
        assert current_credentials() == before
    assert xts.get_options().stac_url == "https://stac.terrascope.be"


def test_activation_without_a_previous_login_leaves_none(clean_process):
    with Sandbox() as sandbox, sandbox.activate():
        assert current_credentials() is not None
    assert current_credentials() is None
    assert xts.get_options().stac_url == "https://stac.terrascope.be"


def test_stop_closes_an_activation_made_as_a_statement(clean_process):
    """The notebook form: no ``with``; ``stop()`` puts everything back."""
    sandbox = Sandbox().start()
    try:
        activation = sandbox.activate()
        assert activation.active and xts.get_options().stac_url == sandbox.stac_url
        ds = xts.open_dataset(list(SAMPLE_FIELD), start="2025-05-01", end="2025-05-10")
        assert ds.sizes["time"] > 0
    finally:
        sandbox.stop()
    assert not activation.active
    assert current_credentials() is None
    assert xts.get_options().stac_url == "https://stac.terrascope.be"
    assert xts.get_options().header_cache is True


def test_activations_nest_and_unwind(clean_process):
    with Sandbox() as first, Sandbox() as second:
        outer = first.activate()
        inner = second.activate()
        assert xts.get_options().stac_url == second.stac_url
        inner.close()
        assert xts.get_options().stac_url == first.stac_url
        assert current_credentials().password == first.password
        outer.close()
        outer.close()  # a second close does nothing
    assert xts.get_options().stac_url == "https://stac.terrascope.be"
    assert current_credentials() is None


def test_a_refused_activation_changes_nothing(clean_process):
    """The sandbox's account rejected (its password changed behind the sandbox's back):
    ``activate()`` raises AuthenticationError and leaves options and login untouched."""
    with Sandbox() as sandbox:
        sandbox.download.users[sandbox.username] = "another-password"
        with pytest.raises(xts.AuthenticationError):
            sandbox.activate()
        assert not sandbox._activations
    assert xts.get_options().stac_url == "https://stac.terrascope.be"
    assert current_credentials() is None
