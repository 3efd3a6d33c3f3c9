"""Token introspection (RFC 7662) with the Mission projection (PROFILE.md section 10,
issuance digest section 8.1), as an Authlib endpoint.

``active`` is composite: the token is valid (its signature, ``iss``, ``exp``, and its
``issued_tokens`` row not revoked; or, for a refresh token, its row neither rotated, revoked
nor expired and its family not revoked) **and** its Mission is effectively ``active``
(clock first). Who learns what:

* The caller authenticates as a confidential client (``none`` is never enough: callers are
  Resource Servers and PEPs, PROFILE.md section 10); otherwise 401 ``invalid_client``.
* An access token is shown only to a caller that is one of its audiences (the caller's
  configured ``audiences`` meet the token's ``aud``), a refresh token only to the client it
  was issued to. Anyone else gets ``{"active": false}``: RFC 7662 section 2.2 requires that
  answer when "the protected resource is not allowed to introspect this particular token".
* Unknown, forged, expired or revoked tokens get a bare ``{"active": false}``.
* A valid token whose Mission is not active gets ``{"active": false, "mission": {...}}``
  (issuance digest 8.1: the deliberate deviation from RFC 7662, justified only because the
  caller is authorized for the token), with no other member.
* ``authorization_details`` and ``aud`` are cut down to the caller's audiences: another
  audience's entries are never disclosed (issuance digest 8.1, "Minimization").

The token lookup (:func:`find_token`) is shared with RFC 7009 revocation, which must
recognize a genuine token even when it is no longer active. The Mission's state may come
from the process's Mission cache (:mod:`missionbound.store.mission_cache`), which is trusted
only while the change feed vouches for it; the token's own checks always read the database.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from missionbound.issuer.access_tokens import ACCESS_TOKEN_TYPE
from missionbound.issuer.client_auth import CONFIDENTIAL_AUTH_METHODS
from missionbound.issuer.keys import SigningAlgorithm
from missionbound.issuer.opaque import opaque_hash
from missionbound.mission.errors import InvalidState
from missionbound.mission.lifecycle import LifecyclePolicy, State, effective_state
from missionbound.mission.record import MISSION_ID, MissionRecord
from missionbound.store import keys as key_rows
from missionbound.store.mission_cache import MissionStateCache
from missionbound.store.mission_rows import MISSION_RECORD_COLUMNS, to_record
from missionbound.store.models import IssuedToken, Mission, RefreshToken, RefreshTokenFamily

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import OAuthRequest

INTROSPECTION = "introspection"
AUDIT_REFUSED = "introspection.refused"
INACTIVE: dict[str, Any] = {"active": False}

# RFC 9068 section 4 item 1: "at+jwt", or the full media type, names an access token.
ACCESS_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, f"application/{ACCESS_TOKEN_TYPE}"})
# joserfc's own limits (512-octet header, 128000-octet payload) bound a JWS; this bounds
# what is handed to it. A refresh token (opaque.py) is 43 characters.
MAX_TOKEN_LENGTH = 200_000
MAX_REFRESH_TOKEN_LENGTH = 512
# The AS's published keys are re-read at most this often (the signer is cached as long:
# server.SIGNER_CACHE_SECONDS), or at once when a token names a kid not seen yet.
KEY_CACHE_SECONDS = 10.0


class _AccessTokenRegistry(JWSRegistry):
    """joserfc's JWS registry narrowed to the algorithms the AS signs with."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in {alg.value for alg in SigningAlgorithm}:
            raise UnsupportedAlgorithmError(f"algorithm {name} is not one this AS signs with")
        # joserfc warns on every use of "EdDSA" (RFC 9864 prefers "Ed25519"); the AS signs
        # with it on purpose (keys.py), so skip the per-request warning.
        return self.algorithms[name]


_REGISTRY = _AccessTokenRegistry()


# -- the AS's own keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    alg: str
    key: Key


class AccessTokenKeys:
    """The public keys the AS publishes (issuer.keys: every key not past its publication
    window, retired ones included, so a token verifies until it expires), by ``kid``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, VerificationKey] = {}
        self._read_at: float | None = None

    def find(self, session: Session, kid: str, now: datetime) -> VerificationKey | None:
        with self._lock:
            stale = self._read_at is None or time.monotonic() - self._read_at > KEY_CACHE_SECONDS
            if stale or kid not in self._keys:
                # A key rotated in by another replica is found at its first token.
                self._keys = self._read(session, now)
                self._read_at = time.monotonic()
            return self._keys.get(kid)

    @staticmethod
    def _read(session: Session, now: datetime) -> dict[str, VerificationKey]:
        found: dict[str, VerificationKey] = {}
        for row in key_rows.published_signing_keys(session, now=now):
            public = {
                name: value
                for name, value in row.public_jwk.items()
                if name not in key_rows.PRIVATE_JWK_MEMBERS
            }
            found[row.kid] = VerificationKey(row.alg, JWKRegistry.import_key(public))
        return found


def verify_access_token(
    value: str, *, session: Session, keys: AccessTokenKeys, issuer: str, now: datetime
) -> dict[str, Any] | None:
    """The claims of an RFC 9068 access token this AS signed, or None for anything else.

    Checked: the ``typ`` (RFC 9068 section 4 item 1), the signature with the published key
    the ``kid`` names and that key's algorithm only (no algorithm confusion), ``iss``
    (item 3) and the members the AS always sets. Not checked here: ``exp``, which the
    caller weighs (an expired token is inactive, but still recognizable for revocation).
    """
    if not isinstance(value, str) or len(value) > MAX_TOKEN_LENGTH or value.count(".") != 2:
        return None
    try:
        compact = jws.extract_compact(value.encode("ascii"), registry=_REGISTRY)
    except (JoseError, ValueError, TypeError, UnicodeError):
        return None
    header = compact.headers()
    kid, alg = header.get("kid"), header.get("alg")
    if header.get("typ") not in ACCESS_TOKEN_TYPES or not isinstance(kid, str):
        return None
    found = keys.find(session, kid, now)
    if found is None or found.alg != alg:
        return None
    try:
        valid = jws.validate_compact(compact, found.key, registry=_REGISTRY)
        claims = json.loads(compact.payload) if valid else None
    except (JoseError, ValueError, TypeError):
        return None
    if not isinstance(claims, dict) or claims.get("iss") != issuer:
        return None
    mission = claims.get("mission")
    well_formed = (
        _is_int(claims.get("exp"))
        and _is_int(claims.get("iat"))
        and isinstance(claims.get("jti"), str)
        and isinstance(claims.get("client_id"), str)
        and isinstance(mission, dict)
        and isinstance(mission.get("id"), str)
    )
    return claims if well_formed else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- finding a token -----------------------------------------------------------------------


@dataclass(frozen=True)
class FoundToken:
    """A token this AS issued, as introspection and revocation need it.

    ``live`` is the token's own validity (not the Mission's): unexpired, not revoked, and
    for a refresh token not rotated and its family not revoked.
    """

    kind: str  # "access_token" | "refresh_token"
    client_id: str
    mission_id: str
    grant_id: str | None  # the refresh token family
    live: bool
    claims: dict[str, Any]  # the access token's claims; for a refresh token, synthesized
    jti: str | None = None
    token_hash: str | None = None

    @property
    def audiences(self) -> frozenset[str]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return frozenset({aud})
        if isinstance(aud, list):
            return frozenset(item for item in aud if isinstance(item, str))
        return frozenset()


def find_token(
    session: Session, value: str, *, keys: AccessTokenKeys, issuer: str, now: datetime
) -> FoundToken | None:
    """The access or refresh token ``value`` names, or None when it names none.

    The token's shape says its type (a JWS has two dots; refresh tokens are base64url,
    without any), so ``token_type_hint`` is not needed: RFC 7009 section 2.1 and RFC 7662
    section 2.1 let the server detect the type itself.
    """
    if "." in value:
        return _find_access_token(session, value, keys=keys, issuer=issuer, now=now)
    return _find_refresh_token(session, value, issuer=issuer, now=now)


# Introspection is the hot path of every Resource Server: plain Core statements, built once,
# reading only the columns needed (no ORM entities, no identity map).
_ISSUED_TOKEN = select(
    IssuedToken.jti,
    IssuedToken.kind,
    IssuedToken.mission_id,
    IssuedToken.client_id,
    IssuedToken.grant_id,
    IssuedToken.revoked_at,
    IssuedToken.expires_at,
).where(IssuedToken.jti == bindparam("jti"))
_MISSION = select(*MISSION_RECORD_COLUMNS).where(Mission.mission_id == bindparam("mission_id"))
_MISSION_VERSION = select(Mission.version).where(Mission.mission_id == bindparam("mission_id"))


def read_mission(
    session: Session, mission_id: str, cache: MissionStateCache | None = None
) -> MissionRecord | None:
    """The Mission's record (without history) for introspection, through ``cache`` when
    given. Raises :class:`InvalidState` for an unreadable row (never cached)."""

    def load() -> MissionRecord | None:
        row = session.connection().execute(_MISSION, {"mission_id": mission_id}).first()
        return None if row is None else to_record(row)

    if cache is None:
        return load()

    def confirm() -> int | None:
        version = session.connection().execute(
            _MISSION_VERSION, {"mission_id": mission_id}).scalar()
        return version if isinstance(version, int) else None

    return cache.get(mission_id, load, confirm)


def _find_access_token(
    session: Session, value: str, *, keys: AccessTokenKeys, issuer: str, now: datetime
) -> FoundToken | None:
    claims = verify_access_token(value, session=session, keys=keys, issuer=issuer, now=now)
    if claims is None:
        return None
    row = session.connection().execute(_ISSUED_TOKEN, {"jti": claims["jti"]}).first()
    # The row must be the token's own: a signature is not enough to name a recorded token.
    if (
        row is None
        or row.kind != "access_token"
        or row.mission_id != claims["mission"]["id"]
        or row.client_id != claims["client_id"]
    ):
        return None
    live = row.revoked_at is None and now.timestamp() < claims["exp"] and now < row.expires_at
    return FoundToken(
        kind="access_token",
        client_id=row.client_id,
        mission_id=row.mission_id,
        grant_id=row.grant_id,
        live=live,
        claims=claims,
        jti=row.jti,
    )


def _find_refresh_token(
    session: Session, value: str, *, issuer: str, now: datetime
) -> FoundToken | None:
    if not value or len(value) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    token_hash = opaque_hash(value)
    row = session.get(RefreshToken, token_hash)
    if row is None:
        return None
    family = session.get(RefreshTokenFamily, row.family_id)
    live = (
        row.rotated_at is None
        and row.revoked_at is None
        and now < row.expires_at
        and family is not None
        and family.revoked_at is None
    )
    claims: dict[str, Any] = {
        "iss": issuer,
        "client_id": row.client_id,
        "iat": int(row.issued_at.timestamp()),
        "exp": int(row.expires_at.timestamp()),
    }
    if row.dpop_jkt is not None:
        # RFC 9449 section 5: the refresh token is bound to this key.
        claims["cnf"] = {"jkt": row.dpop_jkt}
    return FoundToken(
        kind="refresh_token",
        client_id=row.client_id,
        mission_id=row.mission_id,
        grant_id=row.family_id,
        live=live,
        claims=claims,
        token_hash=token_hash,
    )


def token_parameter(request: OAuthRequest) -> str:
    """The ``token`` parameter (RFC 7662 section 2.1, RFC 7009 section 2.1), sent once."""
    values = request.values("token")
    if len(values) != 1 or not values[0]:
        raise InvalidRequestError("Send the 'token' parameter exactly once.")
    for name, sent in request.payload.datalist.items():
        if len(sent) > 1:
            # RFC 6749 section 3.2: request parameters must not be included more than once.
            raise InvalidRequestError(f"Parameter '{_ascii(name)}' appears more than once.")
    return values[0]


def _ascii(text: str) -> str:
    # OAuth error descriptions allow only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 5.2).
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)[:64]


# -- the projection ------------------------------------------------------------------------


def may_see(token: FoundToken, caller: OAuthClient) -> bool:
    """Whether ``caller`` is authorized for this token (issuance digest 8.1 (b)): an audience
    of an access token; the client a refresh token was issued to."""
    if token.kind == "refresh_token":
        return caller.client_id == token.client_id
    return bool(caller.audiences & token.audiences)


def mission_member(mission: MissionRecord, state: State) -> dict[str, Any]:
    """PROFILE.md section 10: ``{id, origin, authority_hash, state, version}``, plus
    ``policy_version`` (the compiled policy artifact's digest, section 12), as Mission Status
    shows it: a PEP can tell which approved policy its PDP must evaluate."""
    return {
        "id": mission.mission_id,
        "origin": mission.origin,
        "authority_hash": mission.authority_hash,
        "state": state.value,
        "version": mission.version,
        "policy_version": mission.policy_version,
    }


def project(
    token: FoundToken, mission: MissionRecord, state: State, caller: OAuthClient
) -> dict[str, Any]:
    """The introspection response for a live token that ``caller`` may see."""
    if state is not State.ACTIVE:
        # Issuance digest 8.1: the token is valid, the Mission is not; say why, and nothing
        # else (RFC 7662 section 2.2: no other member of an inactive token).
        return {"active": False, "mission": mission_member(mission, state)}
    claims = token.claims
    body: dict[str, Any] = {"active": True, "client_id": token.client_id}
    if mission.subject is not None:
        body["sub"] = mission.subject.sub
    if token.kind == "access_token":
        shown = sorted(caller.audiences & token.audiences)
        # RFC 9068 section 2.2: a string when there is one audience.
        body["aud"] = shown[0] if len(shown) == 1 else shown
        entries = [
            entry
            for entry in claims.get("authorization_details", [])
            if isinstance(entry, dict) and entry.get("resource") in caller.audiences
        ]
        body["token_type"] = "DPoP" if "cnf" in claims else "Bearer"
    else:
        # Only the client the refresh token was issued to sees this: the token can derive
        # access tokens for any part of the Authority Set, so that is its authority.
        entries = list(mission.authority_set)
        body["token_type"] = "refresh_token"
    for name in ("iss", "exp", "iat", "jti", "cnf", "act"):
        if name in claims:
            body[name] = claims[name]
    body["authorization_details"] = entries
    body["mission"] = mission_member(mission, state)
    return body


def introspect(
    session: Session,
    value: str,
    *,
    caller: OAuthClient,
    keys: AccessTokenKeys,
    issuer: str,
    now: datetime,
    policy: LifecyclePolicy,
    cache: MissionStateCache | None = None,
) -> dict[str, Any]:
    """The RFC 7662 response for ``value`` as ``caller`` may see it. The Mission's state
    comes from ``cache`` when it can vouch for it (store/mission_cache.py), else from the
    database; the token's own checks (signature, its row, ``revoked_at``) never do."""
    token = find_token(session, value, keys=keys, issuer=issuer, now=now)
    if token is None or not token.live or not may_see(token, caller):
        return dict(INACTIVE)
    if not MISSION_ID.fullmatch(token.mission_id):
        return dict(INACTIVE)
    try:
        mission = read_mission(session, token.mission_id, cache)
    except InvalidState:
        # An unreadable record or unknown state permits nothing (fail closed); it says
        # nothing either, since there is no trustworthy state to report.
        return dict(INACTIVE)
    if mission is None:
        return dict(INACTIVE)
    # Clock first, on a cached record too: past mission_expiry it is expired.
    state = effective_state(
        mission.state,
        now=now,
        mission_expiry=mission.mission_expiry,
        created_at=mission.created_at,
        policy=policy,
    )
    return project(token, mission, state, caller)


class MissionIntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """Authlib's RFC 7662 endpoint: client authentication and the response shape are
    Authlib's; finding the token and what the caller may see are the Mission profile's.

    Authlib's ``check_permission`` hook answers only yes or no, and its
    ``create_introspection_payload`` never sees the caller; the projection here depends on
    who asks (audience minimization, the ``mission`` member on a dead Mission), so the
    response is built by :func:`introspect` instead.
    """

    CLIENT_AUTH_METHODS = list(CONFIDENTIAL_AUTH_METHODS)  # noqa: RUF012 (Authlib's attribute)

    def __init__(self, keys: AccessTokenKeys, server: Any = None) -> None:
        super().__init__(server)
        self.keys = keys

    def authenticate_endpoint_client(self, request: OAuthRequest) -> OAuthClient:
        try:
            return super().authenticate_endpoint_client(request)  # type: ignore[no-any-return]
        except InvalidClientError as error:
            # RFC 7662 section 2.3: a caller that fails to authenticate gets 401, whichever
            # method it tried (Authlib answers 400 for a form client_id it does not know).
            error.status_code = 401
            raise

    def create_endpoint_response(
        self, request: OAuthRequest
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        caller = self.authenticate_endpoint_client(request)
        # Decision O9: a refusal of an authenticated caller is evidence (an answer, even
        # "active": false, is not a refusal and writes nothing).
        request.refusal = {"event": AUDIT_REFUSED, "client_id": caller.client_id}
        value = token_parameter(request)
        server = self.server
        body = introspect(
            request.session(),
            value,
            caller=caller,
            keys=self.keys,
            issuer=server.issuer,
            now=request.now,
            policy=server.lifecycle_policy,
            cache=server.mission_cache,
        )
        # default_json_headers carries Cache-Control: no-store (RFC 7662 section 2.2
        # responses are specific to one token and one caller).
        return 200, body, list(default_json_headers)
