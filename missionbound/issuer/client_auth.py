"""Client authentication at the token, PAR, introspection and revocation endpoints.

Authlib does the work: ``client_secret_basic``, ``client_secret_post`` and ``none``
(RFC 6749 section 2.3) and ``private_key_jwt`` (RFC 7523 section 2.2, OpenID Connect Core
section 9). This module only supplies what Authlib asks of a deployment: where a client's
keys are, which audiences an assertion may name, and a ``jti`` store shared by every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store

# Client authentication methods, per endpoint (PROFILE.md section 10: introspection callers
# are registered Resource Servers or PEPs, so they never authenticate with "none").
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
CONFIDENTIAL_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")

# private_key_jwt assertion algorithms (joserfc's recommended asymmetric set).
ASSERTION_ALGS = ("ES256", "ES384", "PS256", "RS256")

# RFC 7523 section 3 item 4 allows a small leeway for clock skew.
ASSERTION_LEEWAY_SECONDS = 60
# How long a used assertion jti is remembered: longer than any assertion we accept can live
# (we refuse an exp further out than this, so a remembered jti outlives its assertion).
ASSERTION_MAX_LIFETIME = timedelta(minutes=10)


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` with the client's registered ``jwks`` and single-use ``jti``."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, audiences: list[str], store: Store, clock: Callable[[], datetime]):
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY_SECONDS)
        self._audiences = audiences
        self._store = store
        self._clock = clock

    def get_audiences(self) -> list[str]:
        return self._audiences

    def resolve_client_public_key(self, client: Any) -> KeySet:
        jwks = getattr(client, "jwks", None)
        if not jwks:
            raise InvalidClientError(
                description="The client registered no jwks for private_key_jwt."
            )
        try:
            return KeySet.import_key_set(cast(Any, dict(jwks)))
        except Exception as error:  # joserfc raises several types for bad key sets
            raise InvalidClientError(
                description="The client's registered jwks is unusable."
            ) from error

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        # Authlib decodes with joserfc's default registry (HS256, RS256, ES256): name the
        # algorithms the metadata advertises instead, and no symmetric one.
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGS))
        except JoseError as error:
            raise InvalidClientError(description="The client assertion is not valid.") from error
        self.verify_claims(token.claims)
        return token.claims

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            return False
        now = self._clock()
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp > (now + ASSERTION_MAX_LIFETIME).timestamp():
            raise InvalidClientError(
                description="The client assertion must expire within 10 minutes."
            )
        # Committed at once, in its own transaction: an assertion is spent the moment it
        # authenticated a request, whatever that request then does (RFC 7523 section 3 item 7).
        with self._store.begin() as session:
            return consume_once(
                session,
                "client-assertion-jti",
                f"{claims.get('iss')}:{jti}",
                expires_at=datetime.fromtimestamp(exp, UTC) + timedelta(seconds=self.leeway),
            )
