"""RS-C Mission state (enforce/rs/state.py) against a real Authorization Server in process
(tests/issuer/flow.py): the signed Mission Status and introspection sources as the demo
Resource Servers' client ``demo-rs`` uses them, Missions changed through
``POST /mission/lifecycle``, lifecycle events taken from a real RFC 8936 poll stream of the
AS by a real :class:`~missionbound.enforce.signals.SignalReceiver`.

The RS reaches the AS through :class:`Network`: an HTTP client into the issuer app that
counts the requests per path and can be slowed down or cut, as a network would be."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from missionbound.enforce.rs.state import (
    IntrospectionSource,
    MissionStateView,
    MissionStatusSource,
    ObservedState,
    StateUnavailable,
    effective,
)
from missionbound.enforce.signals import (
    LIFECYCLE_CHANGE,
    MissionState,
    MissionStateBook,
    Outcome,
    SignalPoller,
    SignalReceiver,
)
from missionbound.mission.lifecycle import State
from missionbound.mission.record import new_mission_id
from missionbound.protocol.jwks import JwksCache, StaticKeys
from tests.e2e_support import free_port
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import ERP, ISSUER, MCP, Flow
from tests.issuer.governance_support import DEMO_RS, governance
from tests.protocol.proofs import generate_key, public_jwk
from tests.protocol.secevents import ManualClock
from tests.protocol.test_mission_status import serving_status
from tests.signals.conftest import Streams
from tests.signals.support import event_of

STATUS_PATH = "/mission/status"
STATUS = ISSUER + STATUS_PATH
INTROSPECT = ISSUER + "/introspect"
JWKS = ISSUER + "/jwks"
STALENESS = 5.0


class Network:
    """The RS's way to the AS: a client into the issuer app. ``calls`` counts requests per
    path; ``delay`` slows each one; ``down`` makes each fail to connect; ``on_response``
    runs while a status answer is on its way."""

    def __init__(self, app: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = 0.0
        self.down = False
        self._lock = threading.Lock()
        self.client = TestClient(app, base_url=ISSUER, follow_redirects=False)
        self.on_response: Callable[[], None] | None = None
        self.client.event_hooks = {"request": [self._on_request],
                                   "response": [self._on_response]}

    def _on_request(self, request: httpx.Request) -> None:
        with self._lock:
            self.calls[request.url.path] += 1
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)

    def _on_response(self, response: httpx.Response) -> None:
        # What happens while a status answer is on its way to the RS.
        if self.on_response is not None and response.request.url.path == STATUS_PATH:
            self.on_response()


@pytest.fixture
def network(flow: Flow) -> Iterator[Network]:  # noqa: F811 (the imported fixture)
    made = Network(flow.app)
    try:
        yield made
    finally:
        made.client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def streams(flow: Flow) -> Iterator[Streams]:  # noqa: F811 (the imported fixture)
    helper = Streams(flow)
    try:
        yield helper
    finally:
        helper.cleanup()


def status_source(flow: Flow, network: Network, clock: ManualClock, *,  # noqa: F811
                  keys: Any = None, secret: str = DEMO_RS[1]) -> MissionStatusSource:
    """The ERP API's Mission Status source, as ``demo-rs``."""
    return MissionStatusSource(
        issuer=ISSUER, status_endpoint=STATUS,
        keys=keys if keys is not None else JwksCache(JWKS, client=network.client),
        audience=ERP, client_id=DEMO_RS[0], client_secret=secret, client=network.client,
        clock=clock, wall_clock=flow.now)


def introspection_source(network: Network, clock: ManualClock, *,
                         secret: str = DEMO_RS[1]) -> IntrospectionSource:
    return IntrospectionSource(introspection_endpoint=INTROSPECT, client_id=DEMO_RS[0],
                               client_secret=secret, client=network.client, clock=clock)


def active_mission(flow: Flow, **options: Any) -> str:  # noqa: F811
    """A new active Mission (version 2) for the ERP and MCP APIs."""
    return governance(flow).mission(**options)


def lifecycle(flow: Flow, mission_id: str, operation: str) -> None:  # noqa: F811
    """``operation`` on the Mission at the AS, as the administrator bob."""
    response = governance(flow).lifecycle(mission_id, operation, user="bob")
    assert response.status_code == 200, response.text


def receiver(flow: Flow, book: MissionStateBook) -> SignalReceiver:  # noqa: F811
    """The ERP API's receiver of the AS's SETs (a ``demo-rs`` stream)."""
    jwks = flow.client.get("/jwks").json()
    return SignalReceiver(issuer=ISSUER, audience=DEMO_RS[0], keys=StaticKeys(jwks), book=book)


def poll_until(poller: SignalPoller, book: MissionStateBook, mission_id: str,
               version: int) -> None:
    """Poll the AS (RFC 8936) until ``book`` holds ``mission_id`` at ``version``."""
    for _ in range(50):
        poller.poll_once()
        held = book.get(mission_id)
        if held is not None and held.version >= version:
            poller.flush_acks()
            return
    raise AssertionError(f"version {version} of {mission_id} never arrived")


def sets_by_version(streams: Streams, stream_id: str, mission_id: str) -> dict[int, str]:
    """Every lifecycle-change SET the stream holds for ``mission_id`` (acknowledged), by
    Mission version."""
    out: dict[int, str] = {}
    acks: list[str] = []
    while True:
        answer = streams.polled(DEMO_RS, stream_id, ack=acks)
        tokens = answer["sets"]
        if not tokens:
            return out
        acks = list(tokens)
        for token, claims in zip(tokens.values(), streams.claims(list(tokens.values())),
                                 strict=True):
            event_type, body = event_of(claims)
            if event_type == LIFECYCLE_CHANGE and body["mission"]["id"] == mission_id:
                out[body["version"]] = token


# -- the signed Mission Status source ------------------------------------------------------


def test_the_status_source_reads_the_signed_state(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    source = status_source(flow, network, clock)
    observed = source.observe(mission_id, access_token="unused")
    assert (observed.mission_id, observed.state, observed.version) == (mission_id, "active", 2)
    assert observed.observed_at == clock.now
    assert observed.mission_expiry is not None
    assert abs(observed.mission_expiry - (flow.now() + timedelta(days=1))) < timedelta(
        seconds=5)
    # The signed answer lives 60 s (mission_status_lifetime_seconds): no use after that.
    assert observed.valid_until is not None
    assert 58 <= observed.valid_until - observed.observed_at <= 61
    lifecycle(flow, mission_id, "revoke")
    revoked = source.observe(mission_id, access_token="unused")
    assert (revoked.state, revoked.version) == ("revoked", 3)
    assert effective(revoked, flow.now()) == "revoked"


def test_a_mission_the_as_does_not_vouch_for_is_not_active(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    source = status_source(flow, network, clock)
    unknown = source.observe(new_mission_id(), access_token="unused")
    assert (unknown.state, unknown.version) == ("", None)
    # A Mission for another API only: not visible to the ERP API, and it looks the same.
    elsewhere = active_mission(flow, resources=(MCP,))
    hidden = source.observe(elsewhere, access_token="unused")
    assert (hidden.state, hidden.version) == ("", None)
    assert effective(hidden, flow.now()) == ""


def test_a_status_signed_by_another_key_is_unavailable(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    published = flow.client.get("/jwks").json()["keys"]
    other = public_jwk(generate_key("ES256"))
    # The AS's kids, with another key's public values under them.
    forged = {"keys": [{**key, "x": other["x"], "y": other["y"]} for key in published
                       if key.get("kty") == "EC" and key.get("crv") == "P-256"]}
    assert forged["keys"]
    source = status_source(flow, network, clock, keys=StaticKeys(forged))
    with pytest.raises(StateUnavailable, match="does not verify"):
        source.observe(mission_id, access_token="unused")
    # The real keys verify the same AS's answer.
    assert status_source(flow, network, clock).observe(
        mission_id, access_token="unused").state == "active"


def test_a_refused_credential_is_unavailable(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    source = status_source(flow, network, clock, secret="not-the-secret")
    with pytest.raises(StateUnavailable, match="HTTP 401"):
        source.observe(active_mission(flow), access_token="unused")


def test_an_unreachable_as_is_unavailable(clock: ManualClock) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with MissionStatusSource(
        issuer=closed, status_endpoint=f"{closed}/mission/status",
        keys=StaticKeys({"keys": []}), audience=ERP, client_id=DEMO_RS[0],
        client_secret=DEMO_RS[1], timeout_seconds=2, clock=clock,
    ) as source, pytest.raises(StateUnavailable, match="cannot be reached"):
        source.observe(new_mission_id(), access_token="unused")
    with IntrospectionSource(
        introspection_endpoint=f"{closed}/introspect", client_id=DEMO_RS[0],
        client_secret=DEMO_RS[1], timeout_seconds=2, clock=clock,
    ) as introspection, pytest.raises(StateUnavailable, match="cannot be reached"):
        introspection.observe(new_mission_id(), access_token="a.b.c")


@pytest.mark.parametrize(("status", "content_type", "body"), [
    (500, "application/json", b'{"error": "server_error"}'),
    (503, "text/plain", b"busy"),
    (200, "application/json", b'{"active": true}'),
])
def test_an_as_answering_otherwise_is_unavailable(
    clock: ManualClock, status: int, content_type: str, body: bytes
) -> None:
    with serving_status() as server, httpx.Client(timeout=5) as http:
        server.plain(status, body, content_type=content_type)
        source = MissionStatusSource(
            issuer="https://as.example", status_endpoint=server.url,
            keys=StaticKeys({"keys": []}), audience=ERP, client_id=DEMO_RS[0],
            client_secret=DEMO_RS[1], client=http, clock=clock)
        with pytest.raises(StateUnavailable):
            source.observe(new_mission_id(), access_token="unused")
        assert len(server.requests) == 1


# -- the introspection source --------------------------------------------------------------


def test_introspection_reads_the_missions_state_and_version(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    grant = flow.grant()
    source = introspection_source(network, clock)
    observed = source.observe(grant.mission_id, access_token=grant.access_token)
    assert (observed.state, observed.version, observed.observed_at) == ("active", 2, clock.now)
    lifecycle(flow, grant.mission_id, "suspend")
    # The token is valid, the Mission is not: "active": false with the mission member.
    suspended = source.observe(grant.mission_id, access_token=grant.access_token)
    assert (suspended.state, suspended.version) == ("suspended", 3)
    lifecycle(flow, grant.mission_id, "resume")
    resumed = source.observe(grant.mission_id, access_token=grant.access_token)
    assert (resumed.state, resumed.version) == ("active", 4)


def test_introspection_of_an_unknown_token_is_not_active(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    grant = flow.grant()
    source = introspection_source(network, clock)
    header, claims, _ = grant.access_token.split(".")
    forged = f"{header}.{claims}.{'A' * 86}"
    observed = source.observe(grant.mission_id, access_token=forged)
    assert (observed.state, observed.version) == ("", None)
    assert effective(observed, flow.now()) == ""


def test_introspection_for_another_mission_is_unavailable(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    grant = flow.grant()
    source = introspection_source(network, clock)
    with pytest.raises(StateUnavailable, match="not msn_"):
        source.observe(new_mission_id(), access_token=grant.access_token)


def test_introspection_with_a_refused_credential_is_unavailable(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    grant = flow.grant()
    source = introspection_source(network, clock, secret="not-the-secret")
    with pytest.raises(StateUnavailable, match="HTTP 401"):
        source.observe(grant.mission_id, access_token=grant.access_token)


@pytest.mark.parametrize(("status", "content_type", "body"), [
    (500, "application/json", b'{"error": "server_error"}'),
    (200, "text/html", b'{"active": false}'),
    (200, "application/json", b"not json"),
    (200, "application/json", b'{"active": true, "active": false}'),
    (200, "application/json", b'["active"]'),
    (200, "application/json", b'{"active": "yes"}'),
    (200, "application/json", b'{"active": true}'),
    (200, "application/json", b'{"active": true, "mission": {"id": "MID", "state": "active"}}'),
    (200, "application/json",
     b'{"active": true, "mission": {"id": "MID", "state": "active", "version": 0}}'),
    (200, "application/json", b'{"active": true, "mission": {"id": "MID", "version": 2}}'),
    (307, "application/json", b"{}"),
])
def test_an_introspection_answer_that_cannot_be_relied_on_is_unavailable(
    clock: ManualClock, status: int, content_type: str, body: bytes
) -> None:
    mission_id = new_mission_id()
    with serving_status() as server, httpx.Client(timeout=5) as http:
        server.plain(status, body.replace(b"MID", mission_id.encode()),
                     content_type=content_type, Location=server.url)
        source = IntrospectionSource(introspection_endpoint=server.url, client_id=DEMO_RS[0],
                                     client_secret=DEMO_RS[1], client=http, clock=clock)
        with pytest.raises(StateUnavailable):
            source.observe(mission_id, access_token="a.b.c")
        assert len(server.requests) == 1  # a redirect is not followed
        [(form, _)] = server.requests
        assert form == {"token": "a.b.c"}


def test_an_inactive_token_never_reads_as_an_active_mission(clock: ManualClock) -> None:
    mission_id = new_mission_id()
    with serving_status() as server, httpx.Client(timeout=5) as http:
        server.plain(200, b'{"active": false, "mission": {"id": "%s", "state": "active", '
                     b'"version": 2}}' % mission_id.encode(), content_type="application/json")
        source = IntrospectionSource(introspection_endpoint=server.url, client_id=DEMO_RS[0],
                                     client_secret=DEMO_RS[1], client=http, clock=clock)
        observed = source.observe(mission_id, access_token="a.b.c")
    assert (observed.state, observed.version) == ("", 2)


# -- the view: staleness bound -------------------------------------------------------------


def test_a_revocation_is_seen_at_the_latest_after_the_staleness_bound(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, clock=clock)
    assert view.cached(mission_id) is None  # nothing observed yet
    first = view.observe(mission_id, access_token="unused")
    assert (first.state, first.version) == ("active", 2)
    lifecycle(flow, mission_id, "revoke")
    asked = network.calls[STATUS_PATH]
    clock.advance(STALENESS - 0.01)
    # Within the bound the observation is used as is, and nothing is asked.
    assert view.cached(mission_id) == first
    assert network.calls[STATUS_PATH] == asked
    clock.advance(0.01)
    assert view.cached(mission_id) is None  # the bound: observe again
    after = view.observe(mission_id, access_token="unused")
    assert (after.state, after.version) == ("revoked", 3)
    assert network.calls[STATUS_PATH] == asked + 1
    assert view.cached(mission_id) == after


def test_observe_returns_a_fresh_answer_without_asking_again(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, clock=clock)
    first = view.observe(mission_id, access_token="unused")
    asked = network.calls[STATUS_PATH]
    assert view.observe(mission_id, access_token="unused") == first
    assert network.calls[STATUS_PATH] == asked


def test_a_signed_status_is_not_used_past_its_exp(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    view = MissionStateView(status_source(flow, network, clock), staleness_seconds=3600,
                            clock=clock)
    observed = view.observe(mission_id, access_token="unused")
    assert observed.valid_until is not None
    clock.now = observed.valid_until - 0.5
    assert view.cached(mission_id) == observed
    clock.now = observed.valid_until
    assert view.cached(mission_id) is None


def test_a_zero_bound_observes_every_time(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    view = MissionStateView(status_source(flow, network, clock), staleness_seconds=0,
                            clock=clock)
    view.observe(mission_id, access_token="unused")
    assert view.cached(mission_id) is None


def test_the_view_with_introspection_follows_the_mission(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    grant = flow.grant()
    view = MissionStateView(introspection_source(network, clock),
                            staleness_seconds=STALENESS, clock=clock)
    assert view.observe(grant.mission_id, access_token=grant.access_token).state == "active"
    lifecycle(flow, grant.mission_id, "suspend")
    cached = view.cached(grant.mission_id)
    assert cached is not None and cached.state == "active"
    clock.advance(STALENESS)
    assert view.cached(grant.mission_id) is None
    observed = view.observe(grant.mission_id, access_token=grant.access_token)
    assert (observed.state, observed.version) == ("suspended", 3)


# -- the view with a Shared Signals receiver ----------------------------------------------


def test_with_a_receiver_a_revocation_is_refused_at_once(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    book = MissionStateBook()
    poller = SignalPoller(receiver(flow, book), poll_url=f"{ISSUER}/ssf/poll?stream_id="
                          f"{stream_id}", auth=DEMO_RS, client=flow.client)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, book=book, clock=clock)
    mission_id = active_mission(flow)
    poll_until(poller, book, mission_id, 2)
    # An "active" event is not an observation: the RS still asks.
    assert view.cached(mission_id) is None
    assert view.observe(mission_id, access_token="unused").state == "active"
    asked = network.calls[STATUS_PATH]

    lifecycle(flow, mission_id, "revoke")
    cached = view.cached(mission_id)
    assert cached is not None and cached.state == "active"  # the event has not arrived
    poll_until(poller, book, mission_id, 3)
    # The very next request is refused, long before the bound, without asking the AS.
    refused = view.cached(mission_id)
    assert refused is not None and (refused.state, refused.version) == ("revoked", 3)
    assert effective(refused, flow.now()) == "revoked"
    assert network.calls[STATUS_PATH] == asked

    # A view that never observed this Mission refuses it too: ended is for good.
    fresh = MissionStateView(status_source(flow, network, clock), book=book, clock=clock)
    known = fresh.cached(mission_id)
    assert known is not None and known.state == "revoked"
    assert fresh.observe(mission_id, access_token="unused").state == "revoked"
    assert network.calls[STATUS_PATH] == asked
    view.close()
    fresh.close()


def test_an_older_event_never_revives_and_a_newer_activation_is_observed(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    mission_id = active_mission(flow)
    book = MissionStateBook()
    signals = receiver(flow, book)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, book=book, clock=clock)
    assert view.observe(mission_id, access_token="unused").version == 2
    lifecycle(flow, mission_id, "suspend")
    lifecycle(flow, mission_id, "resume")
    tokens = sets_by_version(streams, stream_id, mission_id)
    assert sorted(tokens) == [1, 2, 3, 4]

    # The suspension (version 3) arrives first: refused at once.
    assert signals.receive(tokens[3]).outcome is Outcome.APPLIED
    suspended = view.cached(mission_id)
    assert suspended is not None and (suspended.state, suspended.version) == ("suspended", 3)
    # The activation of version 2, delivered late, changes nothing.
    assert signals.receive(tokens[2]).outcome is Outcome.STALE
    still = view.cached(mission_id)
    assert still is not None and still.state == "suspended"
    clock.advance(STALENESS / 2)
    still = view.cached(mission_id)
    assert still is not None and still.state == "suspended"

    # The resumption (version 4): the suspension is dropped, and the AS is asked again;
    # the event itself is never taken as an observation.
    asked = network.calls[STATUS_PATH]
    assert signals.receive(tokens[4]).outcome is Outcome.APPLIED
    assert len(view) == 0  # dropped at once
    assert view.cached(mission_id) is None
    resumed = view.observe(mission_id, access_token="unused")
    assert (resumed.state, resumed.version) == ("active", 4)
    assert network.calls[STATUS_PATH] == asked + 1

    # A second RS whose receiver lags: it observed version 4, then gets version 3's
    # suspension late. The newer observation stands.
    lagging_book = MissionStateBook()
    lagging = receiver(flow, lagging_book)
    other = MissionStateView(status_source(flow, network, clock),
                             staleness_seconds=STALENESS, book=lagging_book, clock=clock)
    assert other.observe(mission_id, access_token="unused").version == 4
    assert lagging.receive(tokens[3]).outcome is Outcome.APPLIED  # news to that book
    kept = other.cached(mission_id)
    assert kept is not None and (kept.state, kept.version) == ("active", 4)
    view.close()
    other.close()


def test_a_suspension_alone_in_the_book_is_observed_first(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    """Only an ended Mission is refused on the book's word alone: a suspension without an
    observation is checked with the AS (a lost "resume" must not refuse for ever)."""
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    mission_id = active_mission(flow)
    lifecycle(flow, mission_id, "suspend")
    book = MissionStateBook()
    signals = receiver(flow, book)
    tokens = sets_by_version(streams, stream_id, mission_id)
    signals.receive(tokens[3])
    view = MissionStateView(status_source(flow, network, clock), book=book, clock=clock)
    assert view.cached(mission_id) is None
    lifecycle(flow, mission_id, "resume")  # its event is lost
    observed = view.observe(mission_id, access_token="unused")
    assert (observed.state, observed.version) == ("active", 4)


def test_an_event_that_overtakes_the_answer_wins_over_it(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    """The AS answers version 2 (active); while that answer is on its way, the Mission is
    revoked and the receiver applies version 3: the revocation is what is returned and
    cached."""
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    mission_id = active_mission(flow)
    book = MissionStateBook()
    signals = receiver(flow, book)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, book=book, clock=clock)

    def revoked_meanwhile() -> None:
        network.on_response = None
        lifecycle(flow, mission_id, "revoke")
        signals.receive(sets_by_version(streams, stream_id, mission_id)[3])

    network.on_response = revoked_meanwhile
    observed = view.observe(mission_id, access_token="unused")
    assert book.get(mission_id) is not None  # the event did overtake the answer
    assert (observed.state, observed.version) == ("revoked", 3)
    cached = view.cached(mission_id)
    assert cached is not None and (cached.state, cached.version) == ("revoked", 3)


def test_an_activation_that_overtakes_the_answer_is_observed_next_time(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    """The AS answers version 3 (suspended); while that answer is on its way, the Mission
    is resumed and the receiver applies version 4: this request is refused on the answer,
    and the next one asks the AS again instead of using the older suspension."""
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    mission_id = active_mission(flow)
    lifecycle(flow, mission_id, "suspend")
    book = MissionStateBook()
    signals = receiver(flow, book)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, book=book, clock=clock)

    def resumed_meanwhile() -> None:
        network.on_response = None
        lifecycle(flow, mission_id, "resume")
        signals.receive(sets_by_version(streams, stream_id, mission_id)[4])

    network.on_response = resumed_meanwhile
    observed = view.observe(mission_id, access_token="unused")
    assert (observed.state, observed.version) == ("suspended", 3)
    assert view.cached(mission_id) is None
    again = view.observe(mission_id, access_token="unused")
    assert (again.state, again.version) == ("active", 4)


def test_the_exact_end_survives_the_book_compacting_it(
    flow: Flow, network: Network, clock: ManualClock, streams: Streams  # noqa: F811
) -> None:
    """An event makes the cached observation itself stricter, and an older answer arriving
    after it does not undo that: when the book later keeps only the Mission's id (ended,
    compacted), the view still says which end it was."""
    stream_id = streams.poll(DEMO_RS)["stream_id"]
    mission_id, other = active_mission(flow), active_mission(flow)
    book = MissionStateBook(max_missions=1)
    signals = receiver(flow, book)
    view = MissionStateView(status_source(flow, network, clock),
                            staleness_seconds=STALENESS, book=book, clock=clock)
    assert view.observe(mission_id, access_token="unused").version == 2
    clock.advance(STALENESS)

    def revoked_meanwhile() -> None:
        network.on_response = None
        lifecycle(flow, mission_id, "revoke")
        signals.receive(sets_by_version(streams, stream_id, mission_id)[3])

    network.on_response = revoked_meanwhile
    observed = view.observe(mission_id, access_token="unused")
    assert (observed.state, observed.version) == ("revoked", 3)
    lifecycle(flow, other, "complete")
    signals.receive(sets_by_version(streams, stream_id, other)[3])
    assert book.get(mission_id) is None and book.has_ended(mission_id)  # compacted
    cached = view.cached(mission_id)
    assert cached is not None and (cached.state, cached.version) == ("revoked", 3)


def test_a_mission_the_book_compacted_as_ended_is_refused(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    book = MissionStateBook(max_missions=1)
    ended, other = new_mission_id(), new_mission_id()
    book.apply(MissionState(ended, ISSUER, "revoked", 3, None))
    book.apply(MissionState(other, ISSUER, "revoked", 3, None))
    assert book.get(ended) is None and book.has_ended(ended)
    view = MissionStateView(status_source(flow, network, clock), book=book, clock=clock)
    refused = view.cached(ended)
    assert refused is not None and effective(refused, flow.now()) != "active"
    assert network.calls[STATUS_PATH] == 0


# -- the view: concurrency, failures, bounds -----------------------------------------------


def test_concurrent_observations_of_one_mission_make_one_call(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    keys = JwksCache(JWKS, client=network.client)
    keys.refresh()
    view = MissionStateView(status_source(flow, network, clock, keys=keys),
                            staleness_seconds=STALENESS, clock=clock)
    network.delay = 0.3
    results: list[ObservedState] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        results.append(view.observe(mission_id, access_token="unused"))

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert network.calls[STATUS_PATH] == 1
    assert {(r.state, r.version) for r in results} == {("active", 2)}


def test_a_failure_is_shared_by_the_waiters_and_not_cached(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id = active_mission(flow)
    keys = JwksCache(JWKS, client=network.client)
    keys.refresh()
    view = MissionStateView(status_source(flow, network, clock, keys=keys),
                            staleness_seconds=STALENESS, clock=clock)
    network.down, network.delay = True, 0.3
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        barrier.wait()
        try:
            view.observe(mission_id, access_token="unused")
        except StateUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 4 and all("cannot be reached" in str(e) for e in errors)
    assert network.calls[STATUS_PATH] == 1
    assert view.cached(mission_id) is None  # nothing cached: the next request asks again
    network.down, network.delay = False, 0.0
    assert view.observe(mission_id, access_token="unused").state == "active"
    assert network.calls[STATUS_PATH] == 2


def test_a_source_that_breaks_its_contract_fails_closed(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    mission_id, other = active_mission(flow), active_mission(flow)
    real = status_source(flow, network, clock)

    class Misdirected:
        def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
            return real.observe(other, access_token=access_token)  # another Mission

    view = MissionStateView(Misdirected(), clock=clock)
    with pytest.raises(StateUnavailable, match="another Mission"):
        view.observe(mission_id, access_token="unused")
    assert view.cached(mission_id) is None and len(view) == 0


def test_the_view_keeps_at_most_max_missions(
    flow: Flow, network: Network, clock: ManualClock  # noqa: F811
) -> None:
    first, second, third = (active_mission(flow) for _ in range(3))
    view = MissionStateView(status_source(flow, network, clock), max_missions=2, clock=clock)
    for mission_id in (first, second, third):
        view.observe(mission_id, access_token="unused")
    assert len(view) == 2
    assert view.cached(first) is None  # the oldest went
    assert view.cached(second) is not None and view.cached(third) is not None


@pytest.mark.parametrize(("options", "message"), [
    ({"staleness_seconds": -1}, "staleness_seconds"),
    ({"staleness_seconds": float("nan")}, "staleness_seconds"),
    ({"max_missions": 0}, "max_missions"),
])
def test_the_view_refuses_nonsense_settings(
    flow: Flow, network: Network, clock: ManualClock,  # noqa: F811
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MissionStateView(status_source(flow, network, clock), **options)


# -- what to act on ------------------------------------------------------------------------


def test_effective_puts_the_clock_first_and_fails_closed(flow: Flow) -> None:  # noqa: F811
    now = flow.now()
    mission_id = new_mission_id()

    def state(name: str, expiry: Any = None) -> ObservedState:
        return ObservedState(mission_id, name, 2, 0.0, expiry)

    assert effective(state("active"), now) == "active"
    assert effective(state("active", now + timedelta(seconds=1)), now) == "active"
    assert effective(state("active", now), now) == State.EXPIRED.value
    assert effective(state("suspended"), now) == "suspended"
    assert effective(state("paused"), now) == ""
    assert effective(state(""), now) == ""
