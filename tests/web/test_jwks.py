"""``/jwks`` over in-process HTTP on both databases: a JWS signed with the current key
verifies against the published set, before and after a rotation; nothing private leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from sqlalchemy import Engine

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key, rotate_signing_key, signing_key
from missionbound.store.keys import PRIVATE_JWK_MEMBERS
from missionbound.store.transactions import Store
from missionbound.web.app import create_app
from tests.web.conftest import ISSUER

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db_client(settings: Settings, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the migrated SQLite or PostgreSQL database of tests/conftest.py."""
    transport = httpx.ASGITransport(app=create_app(settings, engine=engine))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        yield client


def sign(store: Store, payload: bytes) -> str:
    signer = signing_key(store, datetime.now(UTC))
    return jws.serialize_compact(
        signer.protected_header(typ="JWT"), payload, signer.key, registry=signer.registry
    )


async def fetch_key_set(client: httpx.AsyncClient) -> KeySet:
    response = await client.get("/jwks")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "max-age=60"
    body = response.json()
    for jwk in body["keys"]:
        assert not PRIVATE_JWK_MEMBERS & set(jwk), jwk
        assert jwk["use"] == "sig"
    return KeySet.import_key_set(body)


async def test_a_signed_jws_verifies_against_the_served_jwks(
    db_client: httpx.AsyncClient, store: Store
) -> None:
    ensure_signing_key(store, datetime.now(UTC))
    token = sign(store, b'{"sub":"alice"}')
    key_set = await fetch_key_set(db_client)
    # KeySet picks the key by the header's kid, as a relying party does.
    assert jws.deserialize_compact(token, key_set).payload == b'{"sub":"alice"}'


async def test_after_rotation_old_and_new_signatures_both_verify(
    db_client: httpx.AsyncClient, store: Store
) -> None:
    ensure_signing_key(store, datetime.now(UTC))
    before = sign(store, b"before")
    new_kid, retired = rotate_signing_key(store, datetime.now(UTC))
    after = sign(store, b"after")
    assert jws.extract_compact(after.encode()).headers()["kid"] == new_kid
    key_set = await fetch_key_set(db_client)
    assert {k.kid for k in key_set.keys} == {new_kid, *retired}
    assert jws.deserialize_compact(before, key_set).payload == b"before"
    assert jws.deserialize_compact(after, key_set).payload == b"after"


async def test_an_empty_database_serves_an_empty_set(db_client: httpx.AsyncClient) -> None:
    response = await db_client.get("/jwks")
    assert response.status_code == 200
    assert response.json() == {"keys": []}


async def test_metadata_points_at_the_jwks(db_client: httpx.AsyncClient) -> None:
    metadata = (await db_client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["jwks_uri"] == f"{ISSUER}/jwks"
