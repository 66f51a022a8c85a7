"""Credentials as values: never shown nor pickled, usernames Basic auth can carry, the
``Authorization`` value in UTF-8 (RFC 7617)."""

from __future__ import annotations

import base64
import dataclasses
import pickle

import pytest

import xarray_terrascope as xts
from xarray_terrascope.auth.credentials import basic_header
from xarray_terrascope.exceptions import AuthenticationError


def test_credentials_never_show_or_pickle_the_password():
    creds = xts.Credentials("alice", "hunter2-secret")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "hunter2-secret" not in text
        assert "alice" in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(creds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.password = "x"  # type: ignore[misc]
    assert creds.password == "hunter2-secret"


@pytest.mark.parametrize("username", ["a:b", "line\nbreak"])
def test_usernames_basic_auth_cannot_carry_are_refused(username):
    with pytest.raises(AuthenticationError, match="username"):
        xts.Credentials(username, "pw")


def test_basic_auth_is_utf8():
    value = basic_header("user", "pässwörd€")
    assert base64.b64decode(value.split()[1]).decode("utf-8") == "user:pässwörd€"
