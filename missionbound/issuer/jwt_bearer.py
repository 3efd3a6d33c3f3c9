"""The JWT bearer grant (RFC 7523 section 2.1) redeeming an ID-JAG at a Resource AS
(PROFILE.md section 11, issuance digest 9.2; docs/resource-as.md).

``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with ``assertion`` = an ID-JAG the
Mission's origin signed for this AS, a DPoP proof of the grant's ``cnf.jkt`` and the client's
own authentication here (a confidential client of this AS's tenant with the same
``client_id`` the grant names: decision F2). Optional ``resource``, ``scope`` and
``authorization_details`` narrow what the local token carries, never beyond the conveyed
entries.

The redemption runs in two phases, so that no call to the origin happens inside a database
transaction (on SQLite that would hold the one writer for a network round trip):

1. :func:`prepare_redemption`, before the request's transaction: client authentication, the
   request's parameters, the grant itself (issuer/id_jag_validation.py), ``client_id`` equal to
   the authenticated client, a read-only look for a ``jti`` already redeemed, the narrowing,
   then the Mission's state from the origin's signed Mission Status
   (issuer/remote_missions.py, asked on every redemption: decision F3).
2. :class:`IdJagBearerGrant` inside the transaction: a refusal of phase 1 is raised there
   (so it is answered and audited like any other), the state is recorded forward-only and
   must be ``active``, the DPoP proof at this AS's ``/token`` must be of ``cnf.jkt``
   (``invalid_grant`` when missing or of another key: issuance digest 9.2), the ``jti`` is
   spent once for every replica (``single_use_ids``), and the local token is minted,
   recorded in ``issued_tokens`` and audited (``token.issued``) in the same transaction.

The local token is an RFC 9068 ``at+jwt`` signed by this AS: ``iss`` this AS, ``sub`` from
the grant, ``aud`` the resources of its entries, ``client_id`` the authenticated client,
``exp`` = min(now + 300 s, the grant's ``exp``), ``cnf.jkt`` the grant's key, ``mission``
verbatim, ``act`` verbatim when the grant carries one. No refresh token: a new ID-JAG from
the origin is the only way to more (each one gated and counted there).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.issuer.access_tokens import (
    ACCESS_TOKEN_LIFETIME,
    MintedToken,
    new_jti,
    sign_access_token,
)
from missionbound.issuer.client_auth import CONFIDENTIAL_AUTH_METHODS
from missionbound.issuer.clients import JWT_BEARER
from missionbound.issuer.id_jag_validation import IdJag, validate_id_jag
from missionbound.issuer.remote_missions import ask_any_audience, record_and_require_active
from missionbound.issuer.token_endpoint import (
    authenticate_grant_client,
    token_narrowing,
    token_request_proof,
)
from missionbound.issuer.trusted_origins import trusted_origins_of
from missionbound.mission.authority import Entry
from missionbound.mission.errors import MissionError
from missionbound.store.errors import InvalidGrant
from missionbound.store.models import SingleUseId
from missionbound.store.remote_missions import RemoteState
from missionbound.store.single_use import consume_once
from missionbound.store.tokens import record_issued_token

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import MissionIssuer, OAuthRequest

# ID-JAG jti values spent at this AS, keyed by (origin, jti): two origins may pick the same.
REPLAY_NAMESPACE = "id-jag-jti"
# A spent jti is remembered past the grant's exp by this much: replicas' clocks disagree a
# little, and one running behind must still find it (as for DPoP proofs, issuer/dpop.py).
REPLAY_MARGIN = timedelta(seconds=60)
# RFC 7523 section 2.1: one assertion; the narrowing parameters once each.
SINGLE_VALUED = ("assertion", "scope", "authorization_details")
MAX_ASSERTION_LENGTH = 65536


@dataclass(frozen=True)
class Redemption:
    """Phase 1's result: a valid grant, what the local token will carry, the origin's word."""

    id_jag: IdJag
    entries: list[Entry]
    audience: str | list[str]
    state: RemoteState


@dataclass(frozen=True)
class Prepared:
    """Phase 1's outcome: a redemption, or the refusal phase 2 raises."""

    redemption: Redemption | None = None
    error: Exception | None = None


def prepare_redemption(issuer: MissionIssuer, request: OAuthRequest) -> None:
    """Phase 1 for a JWT bearer request (anything else is left alone): call it before
    :meth:`MissionIssuer.run`. The outcome rides on ``request`` to phase 2."""
    if request.form.get("grant_type") != JWT_BEARER:
        return
    grant = issuer.get_token_grant(request)
    if isinstance(grant, IdJagBearerGrant):
        request.id_jag_redemption = grant.prepare()


def replay_key(id_jag: IdJag) -> str:
    """The ``single_use_ids`` value of a grant: its origin and ``jti``, hashed to a fixed
    length (both are the origin's choice)."""
    digest = hashlib.sha256(f"{id_jag.origin.issuer}\0{id_jag.jti}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class IdJagBearerGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 7523 section 2.1 with an ID-JAG, as an Authlib grant (resource_as role)."""

    GRANT_TYPE = JWT_BEARER
    # Issuance digest 9.2: the redeeming client authenticates at this AS; a public
    # client's client_id proves nothing.
    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_AUTH_METHODS)  # noqa: RUF012

    # -- phase 1: before the transaction ---------------------------------------------------

    def prepare(self) -> Prepared:
        try:
            return Prepared(redemption=self._redeemable())
        except (OAuth2Error, MissionError) as error:
            return Prepared(error=error)

    def _redeemable(self) -> Redemption:
        request, issuer = self.request, self.server
        client = authenticate_grant_client(self)
        assertion = _assertion(request)
        narrowing = token_narrowing(request)
        origins = trusted_origins_of(issuer)
        catalog = issuer.tenant.catalog
        id_jag = validate_id_jag(assertion, origins=origins, audience=issuer.issuer,
                                 catalog=catalog, now=request.now)
        # A verified grant names its Mission: refusals from here on are that Mission's
        # evidence at this AS too (MissionIssuer._audit_refusal).
        request.refusal.update(remote_mission_id=id_jag.mission_id,
                               origin=id_jag.origin.issuer)
        if id_jag.client_id != client.client_id:
            # Decision F2: the same client_id at both ASes, never a mapping.
            raise InvalidGrant("the ID-JAG was issued to another client")
        entries, audience = narrowing.apply(id_jag.entries, catalog.constraints)
        if _spent(issuer, id_jag):
            # Spares the origin a status request; phase 2's consume_once decides.
            raise InvalidGrant("the ID-JAG was already redeemed")
        # The origin is asked about the token's resources first, then the grant's others.
        resources = list(dict.fromkeys(
            entry["resource"] for entry in [*entries, *id_jag.entries]))
        state = ask_any_audience(origins, id_jag.origin, id_jag.mission_id, resources,
                                 request.now)
        return Redemption(id_jag, entries, audience, state)

    # -- phase 2: in the transaction -------------------------------------------------------

    def validate_token_request(self) -> None:
        request = self.request
        prepared = getattr(request, "id_jag_redemption", None)
        if not isinstance(prepared, Prepared):
            # Not prepared by the route: do it here (the origin is then asked inside the
            # transaction, before its first statement).
            prepared = self.prepare()
        if prepared.error is not None:
            raise prepared.error
        request.redemption = prepared.redemption

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        request, issuer = self.request, self.server
        redemption: Redemption = request.redemption
        id_jag, now = redemption.id_jag, request.now
        session = request.session()
        record_and_require_active(session, redemption.state, now)
        if not request.dpop_headers:
            # Checked before the proof: a client registered with dpop_bound_access_tokens
            # would otherwise get invalid_dpop_proof, and issuance digest 9.2 says a grant
            # presented without its proof of possession is invalid_grant (decision F8).
            raise InvalidGrant("the ID-JAG is bound to a DPoP key (cnf.jkt): send a DPoP "
                               "proof of that key")
        proof = token_request_proof(issuer, request, request.client)
        assert proof is not None  # a DPoP header was sent: a proof, or an error raised
        if proof.jkt != id_jag.jkt:
            raise InvalidGrant("the DPoP proof's key is not the key the ID-JAG is bound to")
        spent_until = datetime.fromtimestamp(id_jag.expires_at, UTC) + REPLAY_MARGIN
        if not consume_once(session, REPLAY_NAMESPACE, replay_key(id_jag), spent_until):
            raise InvalidGrant("the ID-JAG was already redeemed")
        token = mint_local_token(issuer, request, redemption)
        _record(session, request, redemption, token)
        body: dict[str, Any] = {
            "access_token": token.value,
            "token_type": "DPoP",
            "expires_in": max(0, int((token.expires_at - now).total_seconds())),
            "authorization_details": token.authorization_details,
            "mission_id": id_jag.mission_id,
        }
        return 200, body, self.TOKEN_RESPONSE_HEADER


def _assertion(request: OAuthRequest) -> str:
    for name in SINGLE_VALUED:
        if len(request.values(name)) > 1:
            raise InvalidRequestError(f"Parameter '{name}' appears more than once.")
    assertion = request.form.get("assertion")
    if not assertion:
        raise InvalidRequestError("Missing 'assertion' in request (RFC 7523 section 2.1).")
    if len(assertion) > MAX_ASSERTION_LENGTH:
        raise InvalidRequestError("The 'assertion' is too large.")
    return assertion


def _client_id(request: OAuthRequest) -> str:
    client: OAuthClient | None = request.client
    assert client is not None  # authenticated in phase 1
    return client.client_id


def _spent(issuer: MissionIssuer, id_jag: IdJag) -> bool:
    with issuer.store.read() as session, session.begin():
        return session.get(SingleUseId, (REPLAY_NAMESPACE, replay_key(id_jag))) is not None


def mint_local_token(issuer: MissionIssuer, request: OAuthRequest,
                     redemption: Redemption) -> MintedToken:
    """The local RFC 9068 token (issuance digest 9.2 item 5)."""
    id_jag, now = redemption.id_jag, request.now
    issued_at = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "sub": id_jag.subject,
        "aud": redemption.audience,
        "client_id": _client_id(request),
        "iat": issued_at,
        # Never past the grant (hence never past mission_expiry, which bounds the grant).
        "exp": min(issued_at + int(ACCESS_TOKEN_LIFETIME.total_seconds()), id_jag.expires_at),
        "jti": new_jti(),
        "authorization_details": redemption.entries,
        # Sender-constrained to the grant's own key, never bearer (issuance digest 6.6).
        "cnf": {"jkt": id_jag.jkt},
        "mission": dict(id_jag.mission),
    }
    if id_jag.act is not None:
        claims["act"] = id_jag.act
    return sign_access_token(request.pinned_signing_key(), claims, now)


def _record(session: Session, request: OAuthRequest, redemption: Redemption,
            token: MintedToken) -> None:
    id_jag = redemption.id_jag
    client_id = _client_id(request)
    record_issued_token(
        session,
        jti=token.jti,
        mission_id=id_jag.mission_id,
        client_id=client_id,
        kind="access_token",
        aud=token.audience,
        issued_at=request.now,
        expires_at=token.expires_at,
        grant_id=None,
    )
    audit.append(
        session,
        event="token.issued",
        mission_id=id_jag.mission_id,
        actor={"client_id": client_id},
        # The one anchor this AS holds: the origin's, carried by the grant.
        anchors={"authority_hash": id_jag.mission["authority_hash"]},
        policy_version=None,
        data={
            "grant_type": JWT_BEARER,
            "jti": token.jti,
            "aud": token.audience,
            "exp": token.claims["exp"],
            "cnf_jkt": id_jag.jkt,
            "origin": id_jag.origin.issuer,
            "id_jag_jti": id_jag.jti,
            "mission_version": redemption.state.version,
        },
        at=request.now,
    )
