"""DPoPAuth (missionbound/client/mcp_auth.py) on a real ``httpx2`` client whose transport is
an ``httpx2.MockTransport``: every proof it sends is checked by the server-side verifier
(``missionbound.protocol.dpop.verify_dpop_proof``), and the transport plays a Resource Server
that asks for a nonce (RFC 9449 section 9). Its use against the real gateway is in
tests/e2e/test_mcp_gateway_e2e.py.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from missionbound.client.dpop import create_dpop_proof, default_alg, proof_htu
from missionbound.client.mcp_auth import DPoPAuth
from missionbound.protocol.dpop import DPoPProof, UseDPoPNonce, verify_dpop_proof

TOKEN = "eyJ0eXAiOiJhdCtqd3QifQ.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
KEY = ECKey.generate_key("P-256", private=True)
NONCE_CHALLENGE = 'DPoP error="use_dpop_nonce", error_description="send the nonce"'


class FakeResourceServer:
    """A transport that verifies each request's DPoP proof like a Resource Server and
    answers by ``respond(request, proof, attempt)``; keeps every request and proof."""

    def __init__(self, respond: Callable[[httpx2.Request, DPoPProof, int], httpx2.Response]
                 ) -> None:
        self.respond = respond
        self.requests: list[httpx2.Request] = []
        self.proofs: list[DPoPProof] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.headers["Authorization"] == f"DPoP {TOKEN}"
        proof = verify_dpop_proof(request.headers["DPoP"], method=request.method,
                                  url=str(request.url), now=datetime.now(UTC),
                                  access_token=TOKEN)
        self.requests.append(request)
        self.proofs.append(proof)
        return self.respond(request, proof, len(self.requests))


def client(server: FakeResourceServer, auth: DPoPAuth) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.MockTransport(server), auth=auth)


def requires_nonce(nonce: str) -> Callable[[httpx2.Request, DPoPProof, int], httpx2.Response]:
    """A Resource Server that wants ``nonce`` in every proof (RFC 9449 section 9)."""
    def respond(request: httpx2.Request, proof: DPoPProof, attempt: int) -> httpx2.Response:
        if proof.nonce != nonce:
            return httpx2.Response(401, headers={"WWW-Authenticate": NONCE_CHALLENGE,
                                                 "DPoP-Nonce": nonce})
        return httpx2.Response(200, json={"body": request.content.decode()})
    return respond


def test_every_request_carries_the_token_and_a_fresh_proof_for_it() -> None:
    server = FakeResourceServer(lambda request, proof, attempt: httpx2.Response(200))
    auth = DPoPAuth(TOKEN, KEY)
    with client(server, auth) as http:
        assert http.post("https://mcp.example/demo/mcp?x=1#frag", json={}).status_code == 200
        assert http.get("https://mcp.example/demo/mcp").status_code == 200
        assert http.delete("https://mcp.example/demo/mcp").status_code == 200
    post = server.proofs[0]
    # verify_dpop_proof checked htm/htu/ath/signature; the claims as sent:
    assert [p.htm for p in server.proofs] == ["POST", "GET", "DELETE"]
    assert post.htu == "https://mcp.example/demo/mcp"  # no query, no fragment (section 4.2)
    assert len({p.jti for p in server.proofs}) == 3
    assert {p.jkt for p in server.proofs} == {KEY.thumbprint()} == {auth.jkt}
    assert all(p.nonce is None for p in server.proofs)
    assert abs(post.iat - datetime.now(UTC).timestamp()) < 5


def test_a_nonce_challenge_is_answered_once_and_the_nonce_remembered() -> None:
    server = FakeResourceServer(requires_nonce("n-1"))
    auth = DPoPAuth(TOKEN, KEY)
    with client(server, auth) as http:
        first = http.post("https://mcp.example/demo/mcp", content=b'{"jsonrpc":"2.0"}')
        assert first.status_code == 200
        # The retry sent the same body again, with a new proof carrying the nonce.
        assert first.json() == {"body": '{"jsonrpc":"2.0"}'}
        assert [p.nonce for p in server.proofs] == [None, "n-1"]
        assert server.proofs[0].jti != server.proofs[1].jti
        assert auth.nonce_for("https://mcp.example/other") == "n-1"
        # Later requests to that origin carry it from the start: no second round trip.
        assert http.get("https://mcp.example/demo/mcp").status_code == 200
    assert [p.nonce for p in server.proofs] == [None, "n-1", "n-1"]


def test_nonces_are_kept_per_origin() -> None:
    server = FakeResourceServer(requires_nonce("n-a"))
    auth = DPoPAuth(TOKEN, KEY)
    with client(server, auth) as http:
        http.get("https://a.example/mcp")
        http.get("https://b.example:8443/mcp")
    assert [p.nonce for p in server.proofs] == [None, "n-a", None, "n-a"]
    assert auth.nonce_for("https://a.example:443/") == "n-a"
    assert auth.nonce_for("http://a.example/") is None


def test_a_refused_nonce_is_not_retried_again() -> None:
    # The server refuses even a proof carrying the nonce it sent: one retry, then the 401.
    def respond(request: httpx2.Request, proof: DPoPProof, attempt: int) -> httpx2.Response:
        return httpx2.Response(401, headers={"WWW-Authenticate": NONCE_CHALLENGE,
                                             "DPoP-Nonce": "n-same"})
    server = FakeResourceServer(respond)
    with client(server, DPoPAuth(TOKEN, KEY)) as http:
        assert http.get("https://mcp.example/mcp").status_code == 401
    assert [p.nonce for p in server.proofs] == [None, "n-same"]


def test_a_rotated_nonce_is_retried_and_replaces_the_old_one() -> None:
    # Section 8.2: the server rotates its nonce; a proof with the old one is refused once.
    current = {"nonce": "n-1"}

    def respond(request: httpx2.Request, proof: DPoPProof, attempt: int) -> httpx2.Response:
        return requires_nonce(current["nonce"])(request, proof, attempt)
    server = FakeResourceServer(respond)
    auth = DPoPAuth(TOKEN, KEY)
    with client(server, auth) as http:
        http.get("https://mcp.example/mcp")
        current["nonce"] = "n-2"
        assert http.get("https://mcp.example/mcp").status_code == 200
    assert [p.nonce for p in server.proofs] == [None, "n-1", "n-1", "n-2"]
    assert auth.nonce_for("https://mcp.example/") == "n-2"


@pytest.mark.parametrize("status, challenge", [
    (401, 'DPoP error="invalid_token"'),  # another error, even with a nonce header
    (403, NONCE_CHALLENGE),  # RFC 9449 section 9 asks with a 401
])
def test_other_refusals_are_not_retried(status: int, challenge: str) -> None:
    def respond(request: httpx2.Request, proof: DPoPProof, attempt: int) -> httpx2.Response:
        return httpx2.Response(status, headers={"WWW-Authenticate": challenge,
                                                "DPoP-Nonce": "n-x"})
    server = FakeResourceServer(respond)
    auth = DPoPAuth(TOKEN, KEY)
    with client(server, auth) as http:
        assert http.get("https://mcp.example/mcp").status_code == status
    assert len(server.proofs) == 1
    # The nonce itself is still the server's newest (section 8.2): the next request uses it.
    assert auth.nonce_for("https://mcp.example/") == "n-x"


def test_a_nonce_sent_with_a_success_is_used_next_time() -> None:
    def respond(request: httpx2.Request, proof: DPoPProof, attempt: int) -> httpx2.Response:
        return httpx2.Response(200, headers={"DPoP-Nonce": f"n-{attempt}"})
    server = FakeResourceServer(respond)
    with client(server, DPoPAuth(TOKEN, KEY)) as http:
        http.get("https://mcp.example/mcp")
        http.get("https://mcp.example/mcp")
    assert [p.nonce for p in server.proofs] == [None, "n-1"]


def test_the_async_client_retries_too() -> None:
    server = FakeResourceServer(requires_nonce("n-async"))

    async def run() -> int:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(server),
                                      auth=DPoPAuth(TOKEN, KEY)) as http:
            response = await http.post("https://mcp.example/mcp", json={"a": 1})
            return response.status_code
    assert asyncio.run(run()) == 200
    assert [p.nonce for p in server.proofs] == [None, "n-async"]


def test_a_new_access_token_is_used_from_the_next_request() -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["Authorization"])
        verify_dpop_proof(request.headers["DPoP"], method="GET", url=str(request.url),
                          now=datetime.now(UTC), access_token="new-token")
        return httpx2.Response(200)
    auth = DPoPAuth(TOKEN, KEY)
    auth.access_token = "new-token"
    with httpx2.Client(transport=httpx2.MockTransport(handler), auth=auth) as http:
        http.get("https://mcp.example/mcp")
    assert seen == ["DPoP new-token"]


@pytest.mark.parametrize("key, alg", [
    (ECKey.generate_key("P-256", private=True), "ES256"),
    (ECKey.generate_key("P-384", private=True), "ES384"),
    (OKPKey.generate_key("Ed25519", private=True), "EdDSA"),
    (RSAKey.generate_key(2048, private=True), "PS256"),
])
def test_proofs_of_every_key_type_verify(key: ECKey | OKPKey | RSAKey, alg: str) -> None:
    assert default_alg(key) == alg
    proof = create_dpop_proof(key, method="get", url="https://rs.example/a?b#c",
                              access_token=TOKEN, nonce="n")
    verified = verify_dpop_proof(proof, method="GET", url="https://rs.example/a",
                                 now=datetime.now(UTC), access_token=TOKEN,
                                 nonce_check=lambda nonce: None if nonce == "n" else (
                                     _raise(UseDPoPNonce("n"))))
    assert (verified.alg, verified.htm, verified.nonce) == (alg, "GET", "n")
    assert "d" not in verified.public_jwk  # the header carries the public key only


def _raise(exc: Exception) -> None:
    raise exc


def test_unusable_keys_and_algorithms_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="private key"):
        DPoPAuth(TOKEN, ECKey.import_key(KEY.as_dict(private=False)))
    with pytest.raises(ValueError, match="oct"):
        DPoPAuth(TOKEN, OctKey.generate_key(256))
    with pytest.raises(ValueError, match="HS256"):
        DPoPAuth(TOKEN, KEY, alg="HS256")
    with pytest.raises(ValueError, match="ASCII"):
        DPoPAuth("tøken", KEY)


def test_htu_drops_query_and_fragment_only() -> None:
    assert proof_htu("https://Rs.example:8443/a/b?c=d#e") == "https://Rs.example:8443/a/b"
    assert proof_htu("http://127.0.0.1:8100/") == "http://127.0.0.1:8100/"


def test_the_client_package_imports_nothing_of_the_issuer_store_or_web() -> None:
    # An agent runs elsewhere: it may use the enforcement points' own pieces (the local
    # tool runner, the AuthZEN request shape), never the AS, the PDP or the store.
    package = Path(__file__).parents[2] / "missionbound" / "client"
    allowed = ("missionbound.client", "missionbound.enforce", "missionbound.protocol",
               "missionbound.mission")
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top != "missionbound" or name.startswith(allowed), (path.name, name)
                # The mcp SDK's client is httpx2 (the OAuth and API calls use httpx).
                assert top != "httpx" or path.name != "mcp_auth.py", (path.name, name)
