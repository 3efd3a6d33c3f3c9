"""Who is asking at the Mission governance endpoints (``/mission/lifecycle``,
``/mission/status``; PROFILE.md section 10), and how such a request runs and fails.

A request authenticates in exactly one way (RFC 6749 section 2.3: "MUST NOT use more than
one authentication method in each request"); sending two is ``invalid_request``:

- ``private_key_jwt`` (RFC 7523): the client assertion in the form, checked by the issuer's
  registered method (assertion ``aud`` = the issuer identifier, single-use ``jti``).
- ``client_secret_basic`` (status only): HTTP Basic, as at introspection.
- a DPoP-bound access token this AS issued (``Authorization: DPoP <token>`` plus a ``DPoP``
  proof for this endpoint carrying the token's ``ath``, its ``jti`` spent in the request's
  transaction like at the token endpoint): it authenticates the token's ``client_id``, and
  only for the token's own Mission.
- the browser session of a signed-in person (lifecycle only): the signed ``mb_session``
  cookie plus the form's ``csrf_token``.

Client secrets are never accepted at the lifecycle endpoint (issuance digest 8.2/8.3), and
``client_secret_post`` at neither. A caller that authenticates in none of the allowed ways is
401 ``invalid_client`` with a ``WWW-Authenticate`` challenge.

:func:`run_governance` runs a request in one transaction and turns the core's typed errors
into the wire errors of these endpoints: unknown and unauthorized Missions give one identical
404 ``not_found`` answer (anti-oracle); a valid request ``nonce`` is echoed in every error.
"""

from __future__ import annotations

import hmac
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from authlib.oauth2.rfc6749 import OAuth2Error
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.issuer.dpop import verify_request_proof
from missionbound.issuer.introspection import AccessTokenKeys, find_token
from missionbound.issuer.issuance import anchors_of
from missionbound.issuer.mission_access import (
    roles_of_client,
    roles_of_user,
    visible_resources,
)
from missionbound.issuer.server import OAuthResponse
from missionbound.mission.errors import (
    ConcurrentModification,
    InvalidRequest,
    InvalidState,
    MissionError,
    TransitionForbidden,
    wire_text,
)
from missionbound.mission.lifecycle import Role
from missionbound.mission.record import MISSION_ID, MissionRecord
from missionbound.protocol.dpop import SUPPORTED_ALGS, DPoPProofError, UseDPoPNonce
from missionbound.protocol.dpop_nonces import issue_nonce
from missionbound.store import missions
from missionbound.store.errors import MissionNotFound
from missionbound.store.lifecycle_requests import caller_key
from missionbound.store.missions import mission_exists

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import MissionIssuer, OAuthRequest
    from missionbound.tenant import User

# The ways to authenticate, as the metadata names them (web/metadata.py).
PRIVATE_KEY_JWT = "private_key_jwt"
CLIENT_SECRET_BASIC = "client_secret_basic"
DPOP_BOUND_ACCESS_TOKEN = "dpop_bound_access_token"
BROWSER_SESSION = "browser_session"

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_NONCE_LENGTH = 255
# The one description of the 404: the same for a Mission that does not exist and for one
# the caller may not see or act on (PROFILE.md section 10).
NOT_FOUND_DESCRIPTION = "no such Mission"
_DPOP_ALGS = " ".join(SUPPORTED_ALGS)


# -- errors --------------------------------------------------------------------------------


class Unauthenticated(MissionError):
    """No acceptable authentication: 401 ``invalid_client`` with a challenge."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, *, dpop_error: str | None = None) -> None:
        super().__init__(description)
        self.dpop_error = dpop_error


class DPoPNonceRequired(Unauthenticated):
    """RFC 9449 section 9: the proof must carry the server nonce sent in ``DPoP-Nonce``."""

    error = "use_dpop_nonce"

    def __init__(self, nonce: str, description: str) -> None:
        super().__init__(description, dpop_error="use_dpop_nonce")
        self.nonce = nonce


class NotVisible(MissionError):
    """The caller may not see or act on this Mission: answered exactly like an unknown one.
    ``cause`` says why, for the audit log only (``no_role``, ``operation_not_allowed``,
    ``other_mission``, ``unreadable_record``, ``not_visible``)."""

    error = "not_found"
    status = 404

    def __init__(self, cause: str) -> None:
        super().__init__(NOT_FOUND_DESCRIPTION)
        self.cause = cause


# -- the caller ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """An authenticated client or person. ``mission_id`` is set when a token authenticated
    the client: it speaks only for that Mission."""

    kind: str  # "client" | "user"
    name: str  # client_id or username
    method: str  # one of the four names above
    client: OAuthClient | None = field(default=None, repr=False)
    user: User | None = field(default=None, repr=False)
    mission_id: str | None = None

    @property
    def label(self) -> str:
        """``sub`` and, at the lifecycle endpoint, ``aud`` of the signed status."""
        return self.name if self.kind == "client" else f"user:{self.name}"

    @property
    def nonce_key(self) -> str:
        """The ``caller`` of ``lifecycle_requests``: nonces are per principal."""
        return caller_key(self.kind, self.name)

    def trace(self, via: str) -> dict[str, Any]:
        """How the audit log and the Mission history name this caller."""
        if self.kind == "client":
            return {"client_id": self.name, "auth": self.method, "via": via}
        return {"user": self.name, "auth": self.method, "via": via}

    def may_address(self, mission_id: str) -> bool:
        return self.mission_id is None or self.mission_id == mission_id

    def roles_on(self, record: MissionRecord) -> frozenset[Role]:
        """The lifecycle roles this caller holds on ``record`` (none for another Mission
        than its token's)."""
        if not self.may_address(record.mission_id):
            return frozenset()
        if self.user is not None:
            return roles_of_user(self.user, record)
        return roles_of_client(self.name, record)

    def visible_resources(self, record: MissionRecord) -> frozenset[str]:
        """The resources of ``record`` this caller may be told about (status)."""
        if self.client is None or not self.may_address(record.mission_id):
            return frozenset()
        return visible_resources(self.name, self.client.audiences, record)


@dataclass(frozen=True)
class BrowserCredentials:
    """What the request's browser session cookie says (the web layer reads and verifies it,
    ``web/sessions.py``): who is signed in (None: nobody) and the session's CSRF token."""

    user: str | None
    csrf_token: str = field(repr=False)


_TOKEN_KEYS: weakref.WeakKeyDictionary[Any, AccessTokenKeys] = weakref.WeakKeyDictionary()
_TOKEN_KEYS_LOCK = threading.Lock()


def token_keys(issuer: MissionIssuer) -> AccessTokenKeys:
    """One cache of the AS's verification keys per issuer (never shared between apps)."""
    with _TOKEN_KEYS_LOCK:
        keys = _TOKEN_KEYS.get(issuer)
        if keys is None:
            keys = _TOKEN_KEYS[issuer] = AccessTokenKeys()
        return keys


def single_values(request: OAuthRequest) -> dict[str, str]:
    """The form, each parameter once (RFC 6749 section 3.2: never repeated)."""
    for name, sent in request.payload.datalist.items():
        if len(sent) > 1:
            raise InvalidRequest(f"parameter {name[:64]!r} appears more than once")
    return dict(request.form)


# The form parameters authentication reads; everything else is read after it (decision G4).
AUTHENTICATION_PARAMETERS = ("client_assertion", "client_assertion_type", "client_id",
                             "client_secret", "csrf_token")


def authentication_values(request: OAuthRequest) -> dict[str, str]:
    """The form parameters authentication reads, each once: one of them repeated is no
    authentication (401), so an unauthenticated caller learns nothing about the rest of the
    form before it authenticates (decision G4)."""
    values: dict[str, str] = {}
    for name in AUTHENTICATION_PARAMETERS:
        sent = request.values(name)
        if len(sent) > 1:
            raise Unauthenticated(f"{name} appears more than once")
        if sent:
            values[name] = sent[0]
    return values


def authenticate(
    issuer: MissionIssuer,
    request: OAuthRequest,
    session: Session,
    *,
    methods: frozenset[str],
    endpoint: str,
    browser: BrowserCredentials | None = None,
) -> Caller:
    """The caller of ``request``, authenticated in exactly one of ``methods``.

    Call it first in the transaction: ``private_key_jwt`` spends the assertion ``jti`` in a
    transaction of its own, which on SQLite must open before this one's first statement.
    Reads only :data:`AUTHENTICATION_PARAMETERS` of the form: the rest (and any repeated
    parameter there) is the endpoint's to check, after this."""
    form = authentication_values(request)
    authorization = request.headers.get("authorization")
    presented = []
    if "client_assertion" in form or "client_assertion_type" in form:
        presented.append("assertion")
    if "client_secret" in form:
        presented.append("client_secret")
    if authorization is not None:
        presented.append("authorization")
    if "csrf_token" in form:
        presented.append("session")
    if len(presented) > 1:
        raise InvalidRequest("authenticate in exactly one way: "
                             + " and ".join(presented) + " were both sent")
    way = presented[0] if presented else None
    if way is None:
        signed_in = _browser_user(issuer, browser) if browser is not None else None
        if signed_in is not None and BROWSER_SESSION in methods:
            raise InvalidRequest("the form has no csrf_token: reload the page and try again")
        raise Unauthenticated("authentication required: " + ", ".join(sorted(methods)))
    if way == "client_secret":
        raise Unauthenticated("client secrets in the form are not accepted at this endpoint")
    if way == "assertion":
        if PRIVATE_KEY_JWT not in methods:
            raise Unauthenticated("private_key_jwt is not accepted at this endpoint")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get(
                "client_assertion"):
            raise Unauthenticated(f"client_assertion_type must be {ASSERTION_TYPE} "
                                  "with a client_assertion")
        client = _authlib_client(issuer, request, PRIVATE_KEY_JWT, endpoint)
        return Caller("client", client.client_id, PRIVATE_KEY_JWT, client=client)
    if way == "session":
        if BROWSER_SESSION not in methods or browser is None:
            raise Unauthenticated("a browser session is not accepted at this endpoint")
        user = _browser_user(issuer, browser, check_csrf=True, form=form)
        if user is None:
            raise Unauthenticated("sign in first: the browser session is missing or expired")
        return Caller("user", user.username, BROWSER_SESSION, user=user)
    assert authorization is not None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        if CLIENT_SECRET_BASIC not in methods:
            raise Unauthenticated("client secrets are not accepted at this endpoint: "
                                  "use private_key_jwt or a DPoP-bound access token")
        client = _authlib_client(issuer, request, CLIENT_SECRET_BASIC, endpoint)
        return Caller("client", client.client_id, CLIENT_SECRET_BASIC, client=client)
    if scheme.lower() == "dpop" and DPOP_BOUND_ACCESS_TOKEN in methods:
        return _token_caller(issuer, request, session, credentials.strip())
    raise Unauthenticated(f"the {scheme[:16]!r} authorization scheme is not accepted here",
                          dpop_error="invalid_token" if scheme.lower() == "bearer" else None)


def _authlib_client(issuer: MissionIssuer, request: OAuthRequest, method: str,
                    endpoint: str) -> OAuthClient:
    try:
        client = issuer.authenticate_client(request, [method], endpoint)
    except OAuth2Error as error:
        raise Unauthenticated(str(error.description or "client authentication failed")
                              ) from None
    return client  # type: ignore[no-any-return]


def _browser_user(issuer: MissionIssuer, browser: BrowserCredentials, *,
                  check_csrf: bool = False, form: Mapping[str, str] | None = None
                  ) -> User | None:
    user = issuer.tenant.users.get(browser.user) if browser.user else None
    if user is not None and check_csrf:
        submitted = (form or {}).get("csrf_token", "")
        # As web/sessions.check_csrf: 400 invalid_request, compared in constant time.
        if not submitted or not hmac.compare_digest(
                submitted.encode("utf-8"), browser.csrf_token.encode("utf-8")):
            raise InvalidRequest("the form has expired or was not sent from this site: "
                                 "reload the page and try again")
    return user


def _token_caller(issuer: MissionIssuer, request: OAuthRequest, session: Session,
                  token: str) -> Caller:
    if not token or " " in token:
        raise Unauthenticated("Authorization: DPoP must carry one access token",
                              dpop_error="invalid_token")
    found = find_token(session, token, keys=token_keys(issuer), issuer=issuer.issuer,
                       now=request.now)
    if found is None or found.kind != "access_token" or not found.live:
        raise Unauthenticated("the access token is not valid", dpop_error="invalid_token")
    cnf = found.claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str):
        raise Unauthenticated("the access token is not DPoP-bound", dpop_error="invalid_token")
    try:
        proof = verify_request_proof(
            session, request.dpop_headers, method=request.method, url=request.uri,
            now=request.now, access_token=token, nonce_secret=issuer.dpop_nonce_secret())
    except UseDPoPNonce as error:
        raise DPoPNonceRequired(error.nonce, error.description) from None
    except DPoPProofError as error:
        raise Unauthenticated(error.description, dpop_error="invalid_dpop_proof") from None
    if proof is None:
        raise Unauthenticated("a DPoP proof must accompany the access token",
                              dpop_error="invalid_dpop_proof")
    if proof.jkt != jkt:
        raise Unauthenticated("the DPoP proof is not signed with the key the token is bound to",
                              dpop_error="invalid_dpop_proof")
    client = issuer.clients.find(found.client_id)
    if client is None:
        raise Unauthenticated("the access token's client is no longer registered",
                              dpop_error="invalid_token")
    return Caller("client", found.client_id, DPOP_BOUND_ACCESS_TOKEN, client=client,
                  mission_id=found.mission_id)


# -- running a request ---------------------------------------------------------------------


def request_nonce(request: OAuthRequest) -> str | None:
    """The request's ``nonce`` if it is one we accept (echoed in errors), else None."""
    values = request.values("nonce")
    if len(values) != 1:
        return None
    return values[0] if is_valid_nonce(values[0]) else None


def is_valid_nonce(value: str) -> bool:
    """1-255 visible ASCII characters (%x21-7E)."""
    return 0 < len(value) <= MAX_NONCE_LENGTH and all(0x21 <= ord(c) <= 0x7E for c in value)


def mission_parameter(form: Mapping[str, str]) -> str:
    """The ``mission`` parameter of a governance request (:func:`single_values`): required,
    a Mission id."""
    mission_id = form.get("mission")
    if not mission_id or not MISSION_ID.fullmatch(mission_id):
        raise InvalidRequest("mission must be a Mission id (msn_...)")
    return mission_id


def nonce_parameter(form: Mapping[str, str]) -> str:
    """The ``nonce`` parameter of a governance request: required, :func:`is_valid_nonce`."""
    nonce = form.get("nonce")
    if nonce is None or not is_valid_nonce(nonce):
        raise InvalidRequest("nonce is required: 1 to 255 visible ASCII characters")
    return nonce


T = TypeVar("T")


def run_governance(
    issuer: MissionIssuer,
    request: OAuthRequest,
    handler: Callable[[OAuthRequest], T],
    finish: Callable[[T], OAuthResponse],
    *,
    read_only: bool = False,
    basic_realm: str | None = None,
) -> OAuthResponse:
    """``handler`` in one transaction (a read-only one when asked), then ``finish`` with what
    it returned, after the commit. Any :class:`MissionError` becomes the wire error; a
    refusal of an authenticated caller (``request.refusal`` set by the handler) is audited
    in a transaction of its own, after the rollback. ``basic_realm``: the endpoint accepts
    HTTP Basic, so its 401 challenges name it too (RFC 6749 section 5.2)."""
    # Read before the transaction opens (see MissionIssuer.run): secrets and the signer.
    nonce_secret = issuer.dpop_nonce_secret()
    request.signing_key = issuer.signer()
    try:
        try:
            transaction = issuer.store.begin_read() if read_only else issuer.store.begin()
            with transaction as session:
                request.db = session
                planned = handler(request)
        finally:
            request.db = None
        answer = finish(planned)
    except MissionError as error:
        _audit_refusal(issuer, request, error)
        answer = error_answer(error, request_nonce(request), basic_realm=basic_realm)
    if nonce_secret is not None and not any(name == "DPoP-Nonce" for name, _ in answer.headers):
        answer.headers.append(("DPoP-Nonce", issue_nonce(nonce_secret, request.now)))
    return answer


def error_answer(error: MissionError, nonce: str | None, *, basic_realm: str | None = None
                 ) -> OAuthResponse:
    """The wire error for ``error``: ``{"error", "error_description", "nonce"?}``, no-store."""
    headers: list[tuple[str, str]] = [("Cache-Control", "no-store")]
    if isinstance(error, (NotVisible, MissionNotFound, TransitionForbidden)):
        status, code, description = 404, "not_found", NOT_FOUND_DESCRIPTION
    elif isinstance(error, Unauthenticated):
        status, code, description = 401, error.error, error.description
        challenge = f'DPoP algs="{_DPOP_ALGS}"'
        if error.dpop_error is not None:
            challenge = f'DPoP error="{error.dpop_error}", algs="{_DPOP_ALGS}"'
        if basic_realm is not None:
            challenge = f'Basic realm="{basic_realm}", {challenge}'
        headers.append(("WWW-Authenticate", challenge))
        if isinstance(error, DPoPNonceRequired):
            headers.append(("DPoP-Nonce", error.nonce))
    elif isinstance(error, (InvalidState, ConcurrentModification)):
        status, code, description = 409, error.error, error.description
    elif error.status >= 500:
        status, code, description = error.status, error.error, error.description
    else:
        status, code, description = 400, "invalid_request", error.description
    body: dict[str, Any] = {"error": code, "error_description": wire_text(description)}
    if nonce is not None:
        body["nonce"] = nonce
    return OAuthResponse(status, body, headers)


def _audit_refusal(issuer: MissionIssuer, request: OAuthRequest, error: MissionError) -> None:
    """Decision O9 at the governance endpoints: a refusal of an authenticated caller is
    evidence, recorded after the rollback (an unauthenticated one leaves nothing)."""
    if request.refusal is not None:
        audit_refusal(issuer, request.refusal, error, request.now)


def audit_refusal(issuer: MissionIssuer, context: Mapping[str, Any], error: MissionError,
                  now: datetime, *, shown: str | None = None) -> None:
    """Record ``error`` refusing an authenticated caller (decisions O9, G8), in a transaction
    of its own: call it after the refused request's transaction rolled back. ``context``:
    ``event``, ``actor`` and, once known, ``mission_id`` and ``data``; the record adds the
    error the caller was shown (``shown``, else this module's wire error) and the real cause
    behind an anti-oracle 404."""
    wire = error_answer(error, None).body
    assert isinstance(wire, dict)
    if shown is not None:
        wire["error"] = shown
    with issuer.store.begin() as session:
        mission, mission_id = None, None
        if mission_exists(session, context.get("mission_id")):
            mission_id = context["mission_id"]
            try:
                mission = missions.get(session, mission_id, with_history=False)
            except InvalidState:
                mission = None  # unreadable: the record names it, without its anchors
        audit.append(
            session,
            event=context["event"],
            mission_id=mission_id,
            actor=context.get("actor"),
            anchors=anchors_of(mission) if mission is not None else None,
            policy_version=mission.policy_version if mission is not None else None,
            # The log keeps the real cause behind an anti-oracle 404 (unknown Mission, no
            # role, operation not allowed to this role).
            data={**dict(context.get("data") or {}), "error": wire["error"],
                  "cause": _cause(error),
                  "error_description": wire_text(error.description)},
            at=now,
        )


def _cause(error: MissionError) -> str:
    if isinstance(error, NotVisible):
        return error.cause
    if isinstance(error, MissionNotFound):
        return "unknown_mission"
    return error.error
