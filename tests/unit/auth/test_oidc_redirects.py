"""The OpenID Connect requests that carry a secret (the password grant's form, a refresh
token) follow no redirect: requests would send the same form again to a 307/308's target,
another origin. Servers here on 127.0.0.1 (port 0)."""

from __future__ import annotations

import pytest
from aiohttp import web

from xarray_terrascope.auth import oidc
from xarray_terrascope.exceptions import AuthenticationError

from ...support.loopback import LoopbackServer


@pytest.mark.parametrize("status", [307, 308, 302])
def test_a_token_endpoint_that_redirects_gets_no_secret_sent_on(status):
    received: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        received.append(await request.text())
        return web.json_response({"access_token": "stolen", "token_type": "Bearer"})

    with LoopbackServer(elsewhere) as other:

        async def provider(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": other.url("/token")})

        with LoopbackServer(provider) as server:
            found = oidc.Provider(server.url(""), server.url("/token"), None, "public")
            with pytest.raises(AuthenticationError, match="redirect") as login:
                oidc.password_grant(found, "alice", "hunter2-secret")
            with pytest.raises(AuthenticationError, match="redirect"):
                oidc.refresh(found, "REFRESH-TOKEN-SECRET")
    assert received == []
    assert "hunter2-secret" not in str(login.value)
    assert [seen.path for seen in server.seen] == ["/token", "/token"]
