"""The Mission Issuer: Authlib's ``AuthorizationServer`` with the project's clients, grants
and endpoints, and the framework-free request/response adapter the FastAPI routes use.

Authlib is synchronous; so is everything here (FastAPI runs the ``def`` routes in its
thread pool). A request is handled inside one store transaction: every write a request makes
(a code redeemed, a Mission's derivation counted, a token recorded, the audit record)
commits together, or, when the request is refused, none of it does.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.config import Settings
from missionbound.issuer.authorization_code import MissionAuthorizationCodeGrant, S256Only
from missionbound.issuer.client_auth import PrivateKeyJWT
from missionbound.issuer.clients import ClientDirectory, OAuthClient
from missionbound.issuer.issuance import anchors_of
from missionbound.issuer.jwt_bearer import IdJagBearerGrant
from missionbound.issuer.keys import SignerKey, signing_key
from missionbound.issuer.refresh_token import MissionRefreshTokenGrant
from missionbound.issuer.token_exchange import (
    MissionTokenExchangeGrant,
    ResourceASTokenExchangeGrant,
)
from missionbound.mission.errors import MissionError
from missionbound.mission.lifecycle import LifecyclePolicy
from missionbound.protocol.dpop_nonces import issue_nonce
from missionbound.protocol.tool_manifest import ToolDefinitionSource
from missionbound.store import missions
from missionbound.store.mission_cache import MissionStateCache
from missionbound.store.missions import mission_exists
from missionbound.store.secrets import server_secret
from missionbound.store.transactions import Store
from missionbound.tenant import Tenant

# Signing keys are read from the database at most this often: ``keys rotate`` from another
# process takes effect within it, and retired keys stay published far longer (keys.py).
SIGNER_CACHE_SECONDS = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    """Request parameters as Authlib reads them: first value per name, and every value."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        values: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in items:
            values[name].append(value)
        self._datalist = values
        self._data = {name: found[0] for name, found in values.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """One HTTP request, already read, as Authlib expects it, plus what the Mission
    extensions carry along: the transaction it runs in and its DPoP header values."""

    def __init__(
        self,
        *,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Iterable[tuple[str, str]],
        dpop_headers: list[str],
        now: datetime,
    ) -> None:
        # Authlib's constructor refuses plain-http URLs other than loopback. Transport is a
        # deployment decision made once, for the issuer URL (``serve`` warns about an http
        # issuer), not per request; so the attributes it would set are set here (Authlib
        # 1.9, pinned).
        self.method = method
        self.uri = url
        self.headers = headers
        self._body = None
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None
        self.payload = _FormPayload(params)
        self.dpop_headers = dpop_headers
        self.now = now
        self.db: Session | None = None
        # What to audit if the request is refused: set by a handler once it knows who is
        # asking (an unauthenticated request leaves no audit record: no log flooding).
        self.refusal: dict[str, Any] | None = None
        # The key this request signs with, read before its transaction opens (see run).
        self.signing_key: SignerKey | None = None
        # A token exchange's parameters (issuer/token_exchange.py), once checked.
        self.exchange: Any = None

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    def values(self, name: str) -> list[str]:
        """Every value sent for ``name`` (``resource`` may repeat: RFC 8707 section 2)."""
        return list(self.payload.datalist.get(name, []))

    def pinned_signing_key(self) -> SignerKey:
        """The signing key :meth:`MissionIssuer.run` read for this request."""
        if self.signing_key is None:
            raise RuntimeError("the request is not running in MissionIssuer.run")
        return self.signing_key

    def session(self) -> Session:
        if self.db is None:
            raise RuntimeError("the request is not running in a store transaction")
        return self.db


class OAuthResponse:
    """What Authlib produced: status, JSON body (or text) and headers."""

    def __init__(self, status: int, body: Any, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class RefusedResponse(Exception):
    """Raised out of the request's transaction when Authlib answered with an error, so that
    nothing the request wrote before the error (a code marked used, say) is committed."""

    def __init__(self, response: OAuthResponse) -> None:
        super().__init__(response.status)
        self.response = response


class MissionIssuer(AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        settings: Settings,
        tenant: Tenant,
        store: Store,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(scopes_supported=None)
        self.settings = settings
        self.tenant = tenant
        self.store = store
        self.clock = clock
        self.issuer = settings.issuer
        self.clients = ClientDirectory(tenant, store)
        self.lifecycle_policy = LifecyclePolicy(
            consent_window=timedelta(seconds=settings.consent_window_seconds)
        )
        # Introspection's Mission state cache; create_app sets it (store/mission_cache.py).
        self.mission_cache: MissionStateCache | None = None
        # Where approval reads the tool definitions it binds granted tools to (runtime/
        # approval.py, runtime-digest 5.8); the app sets it. None: no tool is bound.
        self.tool_definitions: ToolDefinitionSource | None = None
        self._signer: tuple[float, SignerKey] | None = None
        self._signer_lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        if settings.role == "resource_as":
            # A Resource AS holds no Mission: it redeems origins' ID-JAGs (RFC 7523) and
            # issues Transaction Tokens for its own local tokens (docs/cross-domain.md).
            self.register_grant(IdJagBearerGrant)
            self.register_grant(ResourceASTokenExchangeGrant)
        else:
            self.register_grant(MissionAuthorizationCodeGrant, [S256Only(required=True)])
            self.register_grant(MissionRefreshTokenGrant)
            self.register_grant(MissionTokenExchangeGrant)
        self.register_client_auth_method(
            "private_key_jwt",
            PrivateKeyJWT(
                # draft-ietf-oauth-rfc7523bis: the issuer identifier alone, so an assertion
                # made for another AS that named one of our endpoint URLs (the 2025
                # audience-injection attack) is never accepted here.
                [self.issuer],
                store,
                clock,
            ),
        )

    def endpoint_url(self, path: str) -> str:
        return f"{self.issuer.rstrip('/')}{path}"

    def secret(self, name: str) -> bytes:
        """A server secret shared by every replica (store/secrets.py); it never changes, so
        each process reads it once."""
        cached = self._secrets.get(name)
        if cached is None:
            with self.store.begin() as session:
                cached = server_secret(session, name, now=self.clock())
            self._secrets[name] = cached
        return cached

    def dpop_nonce_secret(self) -> bytes | None:
        """The DPoP nonce secret when this deployment requires server nonces (RFC 9449
        section 8), else None."""
        return self.secret("dpop-nonce") if self.settings.dpop_nonce_required else None

    def signer(self) -> SignerKey:
        """The current signing key, re-read from the database every few seconds."""
        with self._signer_lock:
            cached = self._signer
            if cached is None or time.monotonic() - cached[0] > SIGNER_CACHE_SECONDS:
                cached = (time.monotonic(), signing_key(self.store, self.clock()))
                self._signer = cached
            return cached[1]

    # -- Authlib hooks ---------------------------------------------------------------------

    def query_client(self, client_id: Any) -> OAuthClient | None:
        return self.clients.find(client_id)

    def save_token(self, token: Any, request: Any) -> None:
        # Tokens are recorded by the grants, in the request's transaction.
        return None

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        # Authlib signals once a token-endpoint client is authenticated: from then on every
        # refusal is that client's and is audited, including those Authlib raises before a
        # grant finds its code or refresh token (no code, no refresh_token, a grant type the
        # client may not use). The grants add the Mission once they know it.
        if name == "after_authenticate_client":
            grant, client = kwargs.get("grant"), kwargs.get("client")
            request = getattr(grant, "request", None)
            if isinstance(request, OAuthRequest) and request.refusal is None and client:
                request.refusal = {"event": "token.refused", "client_id": client.client_id}
        return None

    def create_oauth2_request(self, request: Any) -> OAuthRequest:
        assert isinstance(request, OAuthRequest)
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> OAuthResponse:
        response = OAuthResponse(status, body, list(headers or []))
        if status >= 400:
            raise RefusedResponse(response)
        return response

    # -- running a request in a transaction ------------------------------------------------

    def run(self, request: OAuthRequest, handler: Callable[[OAuthRequest], OAuthResponse],
            *, read_only: bool = False) -> OAuthResponse:
        """``handler`` inside one write transaction. A refusal (an Authlib error response,
        an ``OAuth2Error``, a :class:`MissionError`) rolls the transaction back, is audited
        in a transaction of its own, and is answered: errors are the wire format here.

        ``read_only`` is for endpoints that write nothing (introspection): the handler then
        runs in :meth:`Store.begin_read`, which on SQLite takes no write lock and is always
        rolled back. Refusals are audited exactly as for a write transaction (their own
        transaction, after this one closed)."""
        # Secrets are read (once per process) before the transaction opens: on SQLite a
        # second transaction inside this one would wait for its write lock forever.
        nonce_secret = self.dpop_nonce_secret()
        # The signing key too, pinned for the request: re-reading it (every few seconds)
        # inside the transaction needs a second pooled connection while the first holds the
        # transaction's locks, and under load every other pooled connection is waiting on
        # those locks: the request then stalls for the pool timeout and fails (50 racing
        # refreshes, tests/issuer/test_concurrency.py).
        request.signing_key = self.signer()
        try:
            transaction = self.store.begin_read() if read_only else self.store.begin()
            with transaction as session:
                request.db = session
                try:
                    answer = handler(request)
                except OAuth2Error as error:
                    raise RefusedResponse(OAuthResponse(*error())) from None
        except RefusedResponse as refused:
            body = refused.response.body
            self._audit_refusal(request, body if isinstance(body, dict) else {})
            answer = refused.response
        except MissionError as error:
            self._audit_refusal(request, error.to_wire())
            answer = OAuthResponse(error.status, error.to_wire(), [("Cache-Control", "no-store")])
            nonce = getattr(error, "nonce", None)
            if isinstance(nonce, str):
                # RFC 9449 section 8: the nonce to retry with.
                answer.headers.append(("DPoP-Nonce", nonce))
                return answer
        finally:
            request.db = None
        if nonce_secret is not None:
            # RFC 9449 section 8.2: a fresh nonce with every answer, refusals included,
            # spares the client a refused round trip when the one it holds goes stale.
            answer.headers.append(("DPoP-Nonce", issue_nonce(nonce_secret, request.now)))
        return answer

    def _audit_refusal(self, request: OAuthRequest, wire: dict[str, Any]) -> None:
        """DESIGN.md: every refusal is evidence. Written after the rollback, so it never
        rides on the refused transaction."""
        context = request.refusal
        if context is None:
            return
        with self.store.begin() as session:
            # The refused request's Mission, with its anchors when it has them: the refusal
            # joins the Mission's own chain like its issuances do.
            mission = None
            if mission_exists(session, context.get("mission_id")):
                mission = missions.get(session, context["mission_id"])
            data = {name: wire[name] for name in sorted(wire) if name != "error_description"}
            data["error_description"] = str(wire.get("error_description", ""))[:500]
            # A Resource AS holds no Mission: a refused redemption of a verified ID-JAG
            # names the origin's Mission and the origin (issuer/jwt_bearer.py).
            mission_id = mission.mission_id if mission is not None else None
            if mission is None and isinstance(context.get("remote_mission_id"), str):
                mission_id = context["remote_mission_id"]
                data["origin"] = context.get("origin")
            audit.append(
                session,
                event=context["event"],
                mission_id=mission_id,
                actor={"client_id": context.get("client_id")},
                anchors=anchors_of(mission) if mission is not None else None,
                policy_version=mission.policy_version if mission is not None else None,
                data=data,
                at=request.now,
            )
