"""The demo ERP API (DESIGN.md "The demo tenant"): invoices and journal entries behind the
Resource Server kit, at tier RS-D (PROFILE.md sections 2 and 12): every call is decided by the
Mission PDP.

It is built only on the public kit :mod:`missionbound.enforce.rs` and the Shared Signals
receiver :mod:`missionbound.enforce.signals`, with FastAPI; it imports nothing of the
Authorization Server, so it reads as what any API owner would write (docs/resource-servers.md).
It talks to the AS over HTTP only, with the demo Resource Servers' credential ``demo-rs``:

- the AS's JWK Set (``<issuer>/jwks``) to verify access tokens (RFC 9068);
- the signed Mission Status (``<issuer>/mission/status``, PROFILE.md section 10) to learn the
  Mission's state, trusted for at most ``staleness_seconds`` (the published bound): a
  Mission the AS said is no longer active is refused here without asking the PDP;
- optionally the AS's Shared Signals stream API (SSF 1.0 section 8): :class:`ErpSignals`
  subscribes this API to the Mission lifecycle events, pushed (RFC 8935) to
  ``<resource>/ssf/events``, so a revocation is refused on the next request rather than up
  to ``staleness_seconds`` later;
- the AS's co-located Mission PDP (AuthZEN 1.0, ``<issuer>/access/v1/evaluation``), asked
  about every call once the checks above passed, over the exact parameters the route acts
  on. It reads the Mission's state itself (staleness 0), so a revoked Mission is denied at
  once whatever the bound; it records Decision Evidence for each call, permit or deny.

Routes (relative to where the app is mounted, ``/demo/erp`` in ``missionbound serve``):

- ``GET /invoices[?vendor=]`` and ``GET /invoices/{invoice_id}``: action ``invoices.read``
  (class ``consequential_read``: gated, so decided by the PDP too; decision M131);
- ``POST /journal-entries`` with JSON ``{"invoice_id", "amount", "currency"}``: action
  ``journal-entries.write`` (``consequential_write``). Its ``max_value`` constraint is
  checked here against ``amount`` and ``currency`` (decimal strings, no floats) before the
  PDP is asked (RS-D keeps every constraint it can evaluate local; the PDP checks it again
  and meters consumption bounds): an entry over the cap is refused without a PDP decision,
  so its refusal carries no ``evaluation_id`` (decision M132). A permitted entry's answer
  carries the PDP's ``evaluation_id``, which names its Decision Evidence.

The PDP cannot be asked (down, slow, an answer that is not a decision): ``503
temporarily_unavailable`` (reason ``pdp_unreachable``) with ``Retry-After``; nothing runs.
Journal entries live in memory, per app (a demo, not a ledger).
"""

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import httpx
import structlog
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Route

from missionbound.demo.invoices import INVOICES  # the demo invoices, shared with payments_mcp
from missionbound.enforce.rs import (
    DEFAULT_STALENESS_SECONDS,
    MISSING,
    MissionContext,
    MissionGuard,
    MissionStateView,
    MissionStatusSource,
    PdpClient,
    Tier,
    TrustedIssuer,
    install,
    json_field,
    money,
    require_mission,
)
from missionbound.enforce.signals import LIFECYCLE_CHANGE, MissionStateBook, SignalReceiver
from missionbound.protocol.jwks import JwksCache

log = structlog.get_logger("missionbound.demo.erp")

PUSH_PATH = "/ssf/events"  # where the AS pushes lifecycle events, under the app
PUSH_METHOD = "urn:ietf:rfc:8935"  # SSF delivery method: RFC 8935 push
STREAM_DESCRIPTION = "demo ERP API"  # marks this API's stream among demo-rs's

_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?")
_CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217 alphabetic code


def build_erp_app(
    *,
    issuer: str,
    resource: str,
    http_client: httpx.Client,
    rs_client_id: str,
    rs_client_secret: str,
    staleness_seconds: float = DEFAULT_STALENESS_SECONDS,
    labels: Sequence[str] = ("finance",),
    signals: bool = False,
) -> FastAPI:
    """The ERP API for ``resource`` (its RFC 8707 identifier), trusting tokens of ``issuer``.

    ``http_client`` reaches the AS (the caller owns and closes it). ``rs_client_id`` /
    ``rs_client_secret`` is this API's credential at the AS (Mission Status, Shared Signals,
    the PDP's AuthZEN endpoint).
    ``labels`` are the resource's data-classification labels, as the catalog declares them.
    With ``signals``, the app serves the push endpoint and ``app.state.signals`` is the
    :class:`ErpSignals` that subscribes to the AS's lifecycle events (call
    :meth:`ErpSignals.run` once the AS listens); without, it is None.
    """
    # The AS's keys, one cache for the access tokens, the Mission Status answers and the SETs.
    as_keys = JwksCache(f"{issuer}/jwks", client=http_client)
    book = MissionStateBook(max_missions=100_000) if signals else None
    # The RS-C check first: the Mission must be active as the AS said at most
    # staleness_seconds ago, or as a lifecycle event (the book) said since, whichever is
    # stricter. A Mission known to be over is refused without a PDP round trip.
    state = MissionStateView(
        MissionStatusSource(
            issuer=issuer, status_endpoint=f"{issuer}/mission/status", keys=as_keys,
            audience=resource, client_id=rs_client_id, client_secret=rs_client_secret,
            client=http_client),
        staleness_seconds=staleness_seconds, book=book)
    # RS-D: then the AS's co-located PDP decides each call (PROFILE.md section 12), asked
    # with this API's credential through the same client as the AS's other endpoints.
    pdp = PdpClient(issuer, client_id=rs_client_id, client_secret=rs_client_secret,
                    http_client=http_client)
    guard = MissionGuard(
        resource=resource,
        issuers=[TrustedIssuer(issuer, keys=as_keys)],
        tier=Tier.RS_D,
        state=state,
        pdp=pdp,
        labels=labels,
        dpop_required=True,  # sender-constrained tokens only (RFC 9449)
        # Clients sign the URL they address: the resource's public origin (DPoP htu).
        public_base_url=issuer,
        resource_name="Demo ERP API",
    )

    app = FastAPI(title="Demo ERP API", summary="Invoices and journal entries, Mission-bound",
                  docs_url=None, redoc_url=None, openapi_url=None)
    # Refusals in the OAuth shape. The RFC 9728 document is served by the host instead: its
    # well-known path is at the host's root, outside this mounted app.
    install(app, guard, serve_metadata=False)
    app.state.guard = guard
    app.state.journal = []  # the journal entries posted, oldest first
    entry_numbers = itertools.count(1)

    # What each route needs from the Mission: the guard, and at RS-D the PDP, decide before
    # the route body runs. Both actions are consequential (the catalog's consequential_read
    # and consequential_write): the PDP decides reads too (decision M131).
    ReadInvoices = Annotated[MissionContext, Depends(require_mission(guard, "invoices.read"))]
    WriteEntries = Annotated[MissionContext, Depends(require_mission(
        guard, "journal-entries.write",
        # PROFILE.md section 6: the catalog binds max_value to the amount; here it is read
        # from the body as a decimal string with its currency, and checked before the PDP.
        bind={"max_value": money(json_field("amount"), json_field("currency"))}))]

    @app.get("/invoices")
    async def list_invoices(mission: ReadInvoices, vendor: str | None = None) -> JSONResponse:
        found = [invoice for invoice in INVOICES.values()
                 if vendor is None or invoice["vendor"] == vendor]
        return JSONResponse({"invoices": found})

    @app.get("/invoices/{invoice_id}")
    async def get_invoice(mission: ReadInvoices, invoice_id: str) -> JSONResponse:
        invoice = INVOICES.get(invoice_id)
        if invoice is None:
            return _error(404, "not_found", f"there is no invoice {invoice_id[:100]!r}")
        return JSONResponse(invoice)

    @app.post("/journal-entries", status_code=201)
    async def post_journal_entry(mission: WriteEntries) -> JSONResponse:
        # The parameters the PDP decided on (the body as the guard read it, strictly: a
        # member named twice was refused), and nothing else: its permit is for these.
        decision = mission.decision
        body: Any = dict(decision.parameters) if decision is not None else MISSING
        problem = _invalid_entry(body)
        if problem is not None:
            return _error(400, "invalid_request", problem)
        entry = {
            "entry_id": f"je-{next(entry_numbers)}",
            "invoice_id": body["invoice_id"],
            "vendor": INVOICES[body["invoice_id"]]["vendor"],
            "amount": body["amount"],
            "currency": body["currency"],
            "posted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            # Who did it, on whose authority: the evidence the Mission gives the API.
            "posted_by": mission.subject,
            "acting_client": mission.acting_client,
            "mission_id": mission.mission.id,
            "jti": mission.token.jti,
            # The PDP's permit this entry was posted under: its Decision Evidence.
            "evaluation_id": mission.evaluation_id,
        }
        app.state.journal.append(entry)
        return JSONResponse(entry, status_code=201)

    app.state.signals = None
    if signals:
        assert book is not None
        receiver = SignalReceiver(issuer=issuer, audience=rs_client_id, keys=as_keys, book=book)
        endpoint_url = resource + PUSH_PATH
        authorization = push_authorization(rs_client_secret, endpoint_url)
        # A Route, not a Mount (a Mount would redirect the bare path to a trailing slash).
        app.router.routes.append(
            Route(PUSH_PATH, receiver.push_endpoint(authorization=authorization)))
        app.state.signals = ErpSignals(
            http=http_client, issuer=issuer, client_id=rs_client_id,
            client_secret=rs_client_secret, endpoint_url=endpoint_url,
            authorization=authorization, receiver=receiver)
    return app


def _invalid_entry(body: Any) -> str | None:
    """What is wrong with a journal entry request, or None. The guard checked the Mission's
    cap and the PDP permitted it; this is the API's own validation, whatever the Mission
    says."""
    if not isinstance(body, dict):
        return 'the body must be a JSON object {"invoice_id", "amount", "currency"}'
    unknown = sorted(set(body) - {"invoice_id", "amount", "currency"})
    if unknown:
        return f"unknown members: {', '.join(repr(name[:50]) for name in unknown[:5])}"
    invoice_id, amount, currency = (body.get(k) for k in ("invoice_id", "amount", "currency"))
    if not isinstance(invoice_id, str) or invoice_id not in INVOICES:
        return "invoice_id must name an invoice of this ERP"
    if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount) or Decimal(amount) <= 0:
        return 'amount must be a positive decimal string with at most 2 decimals ("120.00")'
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return "currency must be an ISO 4217 code (three capital letters)"
    if currency != INVOICES[invoice_id]["currency"]:
        return f"the invoice {invoice_id} is in {INVOICES[invoice_id]['currency']}, not {currency}"
    return None


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


# -- Shared Signals: the subscription ------------------------------------------------------


def push_authorization(rs_client_secret: str, endpoint_url: str) -> str:
    """The ``Authorization`` value the AS sends with each push to ``endpoint_url``.

    Derived from this API's own secret, so every instance of it (replicas, a restart)
    expects the same value without sharing anything else, and subscribing again is
    idempotent. The SETs are signed anyway: this only keeps strangers' posts out."""
    mac = hmac.new(rs_client_secret.encode(), b"ssf-push " + endpoint_url.encode(),
                   hashlib.sha256).digest()
    return "Bearer " + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


class SignalsUnavailable(Exception):
    """The AS's stream API could not be used; the ERP falls back on the staleness bound."""


@dataclass
class ErpSignals:
    """This API's push stream of Mission lifecycle events at the AS (docs/signals.md)."""

    http: httpx.Client
    issuer: str
    client_id: str
    client_secret: str
    endpoint_url: str
    authorization: str
    receiver: SignalReceiver

    def subscribe(self) -> str:
        """Create the stream, or take over the one a previous run created for the same
        endpoint (a client may hold only 10), and make sure it is enabled; its
        ``stream_id``. Blocking. Raises :class:`SignalsUnavailable`."""
        metadata = self._transmitter()
        streams_url, status_url = metadata["configuration_endpoint"], metadata["status_endpoint"]
        wanted = {
            "delivery": {"method": PUSH_METHOD, "endpoint_url": self.endpoint_url,
                         "authorization_header": self.authorization},
            "events_requested": [LIFECYCLE_CHANGE],
            "description": STREAM_DESCRIPTION,
        }
        # Ours: for this endpoint, or left by an earlier run at another issuer URL (a
        # client may hold only 10 streams). Two instances that subscribed at once made two.
        ours = [stream["stream_id"] for stream in self._call("GET", streams_url)
                if stream.get("description") == STREAM_DESCRIPTION
                or stream.get("delivery", {}).get("endpoint_url") == self.endpoint_url]
        for extra in ours[1:]:
            self._call("DELETE", streams_url, params={"stream_id": extra})
        if ours:
            # PUT replaces every member: the authorization header is never read back.
            stream_id = self._call("PUT", streams_url,
                                   json={"stream_id": ours[0], **wanted})["stream_id"]
        else:
            stream_id = self._call("POST", streams_url, json=wanted)["stream_id"]
        status = self._call("GET", status_url, params={"stream_id": stream_id})
        if status.get("status") != "enabled":  # e.g. disabled for a backlog (decision E13)
            self._call("POST", status_url, json={"stream_id": stream_id, "status": "enabled"})
        return str(stream_id)

    def verify(self, stream_id: str, *, timeout_seconds: float) -> bool | None:
        """Ask the AS for a verification event (SSF 1.0 section 8.1.4) and wait, at most
        ``timeout_seconds``, for it to arrive here: True when pushes reach this API, None
        when the AS would not send one now (one per 10 s: a quick restart)."""
        state = secrets.token_urlsafe(12)
        try:
            self._call("POST", self._transmitter()["verification_endpoint"],
                       json={"stream_id": stream_id, "state": state})
        except SignalsUnavailable:
            return None
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if state in self.receiver.verification_states:
                return True
            time.sleep(0.05)
        return False

    async def run(self, *, attempts: int = 8, first_delay: float = 0.25,
                  verify_seconds: float = 10.0) -> None:
        """Subscribe, retrying while the AS is not listening yet (a bounded number of
        times), then check that pushes arrive. Logs the outcome; never raises: without
        the stream, the ERP still refuses a revoked Mission within the staleness bound."""
        delay = first_delay
        for attempt in range(1, attempts + 1):
            try:
                stream_id = await asyncio.to_thread(self.subscribe)
                verified = await asyncio.to_thread(self.verify, stream_id,
                                                   timeout_seconds=verify_seconds)
                break
            except Exception as exc:  # an answer of another shape too: this is optional
                if attempt == attempts:
                    log.warning("demo_erp_signals_unavailable",
                                detail=str(exc) or type(exc).__name__,
                                consequence="revocations are seen within the staleness bound")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if verified:
            log.info("demo_erp_signals_ready", stream_id=stream_id, endpoint=self.endpoint_url)
        elif verified is None:
            log.info("demo_erp_signals_subscribed", stream_id=stream_id,
                     endpoint=self.endpoint_url, detail="not verified: the AS sends one "
                     "verification event per 10 s")
        else:
            log.warning("demo_erp_signals_unverified", stream_id=stream_id,
                        endpoint=self.endpoint_url,
                        detail="no verification event arrived; is the endpoint reachable "
                        "from the AS?")

    def _transmitter(self) -> dict[str, Any]:
        """The AS's SSF Transmitter Configuration Metadata (SSF 1.0 section 7.1)."""
        metadata = self._call("GET", f"{self.issuer}/.well-known/ssf-configuration", auth=False)
        if not isinstance(metadata, dict):
            raise SignalsUnavailable("the SSF configuration is not a JSON object")
        return metadata

    def _call(self, method: str, url: str, *, auth: bool = True, **kwargs: Any) -> Any:
        try:
            response = self.http.request(
                method, url, auth=(self.client_id, self.client_secret) if auth else None,
                follow_redirects=False, **kwargs)
        except httpx.HTTPError as exc:
            raise SignalsUnavailable(f"{method} {url}: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise SignalsUnavailable(f"{method} {url}: HTTP {response.status_code} "
                                     f"{response.text[:200]}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise SignalsUnavailable(f"{method} {url}: the answer is not JSON") from None
