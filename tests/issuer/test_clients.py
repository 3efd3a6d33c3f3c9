"""Redirect URI matching of OAuthClient: exact, except a loopback IP's port (RFC 8252 7.3)."""

from __future__ import annotations

import pytest

from missionbound.issuer.clients import OAuthClient
from missionbound.mission.derivation import ClientCeiling

REGISTERED = ("http://127.0.0.1:8765/callback", "https://agent.example/cb")


def client() -> OAuthClient:
    return OAuthClient(
        client_id="agent", client_name="agent", auth_methods=("none",),
        redirect_uris=REGISTERED, grant_types=("authorization_code",),
        ceiling=ClientCeiling("agent", {}), purposes=None, secret=None,
    )


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1:8765/callback",
    "http://127.0.0.1:53111/callback",  # a native app's ephemeral port
    "https://agent.example/cb",
])
def test_accepted(uri: str) -> None:
    assert client().check_redirect_uri(uri)


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1:8765/callback/",  # trailing slash
    "http://127.0.0.1:8765/callback?x=1",  # added query
    "http://127.0.0.1/callback",  # no port at all
    "http://localhost:8765/callback",  # RFC 8252 8.3: not localhost
    "http://127.0.0.1:8765/other",
    "http://user@127.0.0.1:8765/callback",
    "https://agent.example:8443/cb",  # only loopback ports float
    "https://agent.example/cb/",
    "https://agent.example/CB",
    "http://127.0.0.1:99999/callback",  # not a port
])
def test_refused(uri: str) -> None:
    assert not client().check_redirect_uri(uri)
