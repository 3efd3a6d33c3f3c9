"""The issuer's ``/metrics`` (web/metrics.py, protocol/prometheus.py) as a scraper meets it:
the real application with the demo tenant on a real SQLite database, driven by real requests
(pages, ``/token``, AuthZEN as ``demo-rs``, an MCP ``tools/call`` through the demo gateway),
each scrape parsed by a strict reader of the Prometheus text format 0.0.4 written here (no
``prometheus_client`` in this project), and the exact series compared before and after.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult

from missionbound.issuer.clients import JWT_BEARER
from missionbound.issuer.server import OAuthResponse
from missionbound.protocol.prometheus import Counter, Histogram, render
from missionbound.web.metrics import (
    HTTP_REQUESTS,
    HTTP_SECONDS,
    MAX_ERROR_LABELS,
    PDP_DECISIONS,
    TOKEN_REFUSALS,
    TOKENS_ISSUED,
    IssuerMetrics,
)
from tests.cross_domain.support import build_origin, build_resource_as
from tests.enforce.mcp.mcp_support import World, agent, build_world, new_grant, run
from tests.issuer.flow import AGENT, ERP, ISSUER, Grant
from tests.protocol.proofs import generate_key

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RS = ("demo-rs", "demo-rs-secret")
MCP_CALLS = "missionbound_mcp_tool_calls_total"

# -- a strict reader of the text format ------------------------------------------------------

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
Labels = tuple[tuple[str, str], ...]


class ExpositionError(AssertionError):
    pass


@dataclass
class Exposition:
    kinds: dict[str, str]  # family -> type
    helps: dict[str, str]
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name{labels}`` (labels in any order); 0 when absent."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: value for (sample, labels), value in self.samples.items()
                if sample == name}


def _family(name: str, kinds: dict[str, str]) -> str:
    if name in kinds:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and kinds.get(base) == "histogram":
            return base
    raise ExpositionError(f"sample {name} has no # TYPE line before it")


def _read_labels(line: str, at: int) -> tuple[Labels, int]:
    """The ``{...}`` starting at ``line[at]``, and the index after it."""
    assert line[at] == "{"
    at += 1
    labels: dict[str, str] = {}
    while line[at] != "}":
        name = _LABEL_NAME.match(line, at)
        if name is None:
            raise ExpositionError(f"bad label name at {at}: {line!r}")
        at = name.end()
        if line[at:at + 2] != '="':
            raise ExpositionError(f"expected =\" at {at}: {line!r}")
        at += 2
        value: list[str] = []
        while line[at] != '"':
            if line[at] == "\\":
                escaped = _ESCAPES.get(line[at + 1])
                if escaped is None:
                    raise ExpositionError(f"bad escape \\{line[at + 1]}: {line!r}")
                value.append(escaped)
                at += 2
            else:
                value.append(line[at])
                at += 1
        at += 1
        if name.group() in labels:
            raise ExpositionError(f"label {name.group()} repeats: {line!r}")
        labels[name.group()] = "".join(value)
        if line[at] == ",":
            at += 1
            if line[at] == "}":
                raise ExpositionError(f"trailing comma: {line!r}")
        elif line[at] != "}":
            raise ExpositionError(f"expected , or }} at {at}: {line!r}")
    return tuple(sorted(labels.items())), at + 1


def _unescape_help(text: str) -> str:
    """A ``# HELP`` docstring: only ``\\\\`` and ``\\n`` are escapes."""
    out: list[str] = []
    at = 0
    while at < len(text):
        if text[at] == "\\":
            if text[at + 1:at + 2] not in ("\\", "n"):
                raise ExpositionError(f"bad escape in # HELP: {text!r}")
            out.append(_ESCAPES[text[at + 1]])
            at += 2
        else:
            out.append(text[at])
            at += 1
    return "".join(out)


def _read_value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text)
    if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text):
        raise ExpositionError(f"bad sample value {text!r}")
    return float(text)


def parse_exposition(text: str) -> Exposition:
    """Every line checked: ``# HELP`` / ``# TYPE`` once per family and before its samples,
    a family's samples together, label values with only the three escapes, no repeated
    series, no timestamps; each histogram series with increasing ``le`` ending at ``+Inf``,
    cumulative counts, ``+Inf`` equal to ``_count``, and a ``_sum``."""
    if not text.endswith("\n"):
        raise ExpositionError("the text must end with a line feed")
    kinds: dict[str, str] = {}
    helps: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    done: set[str] = set()
    current: str | None = None

    def enter(family: str) -> None:
        nonlocal current
        if family != current:
            if family in done:
                raise ExpositionError(f"family {family} is split")
            if current is not None:
                done.add(current)
            current = family

    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
                continue  # a comment
            keyword, name, rest = parts[1], parts[2], parts[3]
            if not _METRIC_NAME.fullmatch(name):
                raise ExpositionError(f"bad family name {name!r}")
            enter(name)
            if keyword == "TYPE":
                if name in kinds or rest not in _KINDS:
                    raise ExpositionError(f"bad or repeated # TYPE: {line!r}")
                if any(sample == name or sample.startswith(name + "_") for sample, _ in samples):
                    raise ExpositionError(f"# TYPE {name} after its samples")
                kinds[name] = rest
            else:
                if name in helps:
                    raise ExpositionError(f"repeated # HELP: {line!r}")
                helps[name] = _unescape_help(rest)
            continue
        name_match = _METRIC_NAME.match(line)
        if name_match is None:
            raise ExpositionError(f"not a sample: {line!r}")
        at = name_match.end()
        labels: Labels = ()
        if at < len(line) and line[at] == "{":
            labels, at = _read_labels(line, at)
        if line[at:at + 1] != " " or " " in line[at + 1:]:
            raise ExpositionError(f"expected one value and no timestamp: {line!r}")
        enter(_family(name_match.group(), kinds))
        key = (name_match.group(), labels)
        if key in samples:
            raise ExpositionError(f"series repeats: {line!r}")
        samples[key] = _read_value(line[at + 1:])
    exposition = Exposition(kinds, helps, samples)
    for family, kind in kinds.items():
        if kind == "histogram":
            _check_histogram(exposition, family)
    return exposition


def _check_histogram(exposition: Exposition, family: str) -> None:
    buckets: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in exposition.series(family + "_bucket").items():
        le = dict(labels).get("le")
        if le is None:
            raise ExpositionError(f"{family}_bucket without le")
        rest = tuple(item for item in labels if item[0] != "le")
        buckets[rest].append((_read_value(le), value))
    counts = exposition.series(family + "_count")
    if set(buckets) != set(counts) or set(counts) != set(exposition.series(family + "_sum")):
        raise ExpositionError(f"{family}: _bucket, _sum and _count series differ")
    for labels, pairs in buckets.items():
        pairs.sort()
        bounds = [bound for bound, _ in pairs]
        running = [count for _, count in pairs]
        if bounds[-1] != math.inf or running != sorted(running):
            raise ExpositionError(f"{family}{labels}: buckets not cumulative up to +Inf")
        if running[-1] != counts[labels]:
            raise ExpositionError(f"{family}{labels}: +Inf bucket is not _count")


# -- the world -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("metrics")
    yield from build_world(f"sqlite:///{folder / 'missionbound.db'}", folder)


def scrape(world: World) -> Exposition:
    response = world.flow.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse_exposition(response.text)


def requests_of(exposition: Exposition, route: str, method: str, status: int) -> float:
    return exposition.value(HTTP_REQUESTS, route=route, method=method, status=str(status))


def evaluation(grant: Grant, *, mission_id: str | None = None) -> dict[str, Any]:
    """What the demo ERP asks before ``GET /demo/erp/invoices/inv-acme-1``."""
    payload = grant.access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    mission = claims["mission"]
    expires = datetime.fromtimestamp(claims["exp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "subject": {"type": "user", "id": "alice", "properties": {"iss": ISSUER}},
        "resource": {"type": "invoice", "id": "inv-acme-1", "properties": {"audience": ERP}},
        "action": {"name": "invoices.read"},
        "context": {
            "mission": {"id": mission_id or mission["id"], "issuer": mission["origin"],
                        "authority_hash": mission["authority_hash"]},
            "actor": {"client_id": AGENT[0]},
            "credential": {"issuer": ISSUER, "expires_at": expires,
                           "confirmation": claims["cnf"]},
        },
    }


@pytest.fixture(scope="module")
def grant(world: World) -> Grant:
    return new_grant(world.flow)


# -- the endpoint ----------------------------------------------------------------------------


def test_metrics_is_prometheus_text_answered_to_get_only_and_not_in_the_openapi_document(
        world: World) -> None:
    client = world.flow.client
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    exposition = parse_exposition(response.text)
    assert {name: exposition.kinds[name] for name in (
        HTTP_REQUESTS, HTTP_SECONDS, TOKENS_ISSUED, TOKEN_REFUSALS, PDP_DECISIONS)} == {
        HTTP_REQUESTS: "counter", HTTP_SECONDS: "histogram", TOKENS_ISSUED: "counter",
        TOKEN_REFUSALS: "counter", PDP_DECISIONS: "counter"}
    for method in ("POST", "PUT", "DELETE"):
        assert client.request(method, "/metrics").status_code == 405
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_request_counts_once_under_its_route_template_with_its_duration(
        world: World) -> None:
    client = world.flow.client
    before = scrape(world)
    assert client.get("/login").status_code == 200
    assert client.get("/.well-known/authzen-configuration/pdp/no-such-tenant").status_code == 404
    assert client.get("/demo/erp/invoices/inv-acme-2").status_code == 401  # mounted app
    assert client.get("/static/missionbound.css").status_code == 200  # a mount's own answer
    assert client.get("/docs").status_code == 200  # a plain Starlette route
    after = scrape(world)
    for route, status in (("/login", 200),
                          ("/.well-known/authzen-configuration/pdp/{tenant}", 404),
                          ("/demo/erp/invoices/{invoice_id}", 401),
                          ("/static/{path}", 200), ("/docs", 200),
                          # the previous scrape, counted once its answer was sent
                          ("/metrics", 200)):
        assert requests_of(after, route, "GET", status) == requests_of(
            before, route, "GET", status) + 1, route
        labels = {"route": route, "method": "GET"}
        assert after.value(HTTP_SECONDS + "_count", **labels) == before.value(
            HTTP_SECONDS + "_count", **labels) + 1, route
        assert after.value(HTTP_SECONDS + "_bucket", le="+Inf", **labels) == before.value(
            HTTP_SECONDS + "_bucket", le="+Inf", **labels) + 1, route
        assert after.value(HTTP_SECONDS + "_sum", **labels) > before.value(
            HTTP_SECONDS + "_sum", **labels), route
    text = client.get("/metrics").text
    assert "no-such-tenant" not in text and "inv-acme-2" not in text


# -- /token ----------------------------------------------------------------------------------


def test_token_answers_count_issued_by_grant_type_and_refused_by_error(world: World) -> None:
    flow = world.flow
    before = scrape(world)
    refused = flow.refresh("not-a-refresh-token")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    unknown = flow.token({"grant_type": "urn:example:made-up"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unsupported_grant_type"
    missing = flow.token({"code": "x"})  # no grant_type at all
    assert missing.status_code == 400 and missing.json()["error"] == "unsupported_grant_type"
    issued = new_grant(flow)
    assert issued.dpop_key is not None
    assert flow.refresh(issued.refresh_token, dpop=flow.dpop(issued.dpop_key)).status_code == 200
    after = scrape(world)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta(TOKEN_REFUSALS, grant_type="refresh_token", error="invalid_grant") == 1
    # A made-up grant type and none at all are one label value, never the sent one.
    assert delta(TOKEN_REFUSALS, grant_type="_other", error="unsupported_grant_type") == 2
    assert delta(TOKENS_ISSUED, grant_type="authorization_code") == 1
    assert delta(TOKENS_ISSUED, grant_type="refresh_token") == 1
    assert sum(after.series(TOKEN_REFUSALS).values()) - sum(
        before.series(TOKEN_REFUSALS).values()) == 3
    assert requests_of(after, "/token", "POST", 400) - requests_of(before, "/token", "POST",
                                                                   400) == 3
    assert "urn:example:made-up" not in flow.client.get("/metrics").text


# -- the Mission PDP -------------------------------------------------------------------------


def test_pdp_decisions_over_authzen_count_permits_and_denies_by_reason(
        world: World, grant: Grant) -> None:
    client = world.flow.client
    before = scrape(world)
    permit = client.post("/access/v1/evaluation", json=evaluation(grant), auth=RS)
    assert permit.status_code == 200 and permit.json()["decision"] is True, permit.text
    unknown = "msn_" + secrets.token_urlsafe(16)
    deny = client.post("/access/v1/evaluation", json=evaluation(grant, mission_id=unknown),
                       auth=RS)
    assert deny.json() == {"decision": False, "context": {
        "evaluation_id": deny.json()["context"]["evaluation_id"],
        "reason": "view_inconsistent"}}
    malformed = client.post("/access/v1/evaluation", json={"subject": {}}, auth=RS)
    assert malformed.status_code == 400  # not a decision
    after = scrape(world)
    assert after.value(PDP_DECISIONS, decision="permit", reason="") == before.value(
        PDP_DECISIONS, decision="permit", reason="") + 1
    assert after.value(PDP_DECISIONS, decision="deny", reason="view_inconsistent") == (
        before.value(PDP_DECISIONS, decision="deny", reason="view_inconsistent") + 1)
    assert sum(after.series(PDP_DECISIONS).values()) == sum(
        before.series(PDP_DECISIONS).values()) + 2
    assert requests_of(after, "/access/v1/evaluation", "POST", 200) == requests_of(
        before, "/access/v1/evaluation", "POST", 200) + 2


def test_the_demo_gateways_metrics_and_its_pdp_decisions_appear_at_metrics(
        world: World, grant: Grant) -> None:
    before = scrape(world)

    async def work() -> CallToolResult:
        async with agent(world.flow.app, grant) as client:
            result: CallToolResult = await client.call_tool("get_invoice",
                                                            {"invoice_id": "inv-acme-1"})
            return result

    result = run(work)
    assert not result.is_error, result
    after = scrape(world)
    # The in-process (co-located) PDP the gateway asks is counted like the AuthZEN one.
    assert after.value(PDP_DECISIONS, decision="permit", reason="") == before.value(
        PDP_DECISIONS, decision="permit", reason="") + 1
    labels = {"tool": "get_invoice", "decision": "permit", "reason": ""}
    assert after.value(MCP_CALLS, **labels) == before.value(MCP_CALLS, **labels) + 1
    # Every series of the gateway's own endpoint is in /metrics, with the same value.
    gateway = parse_exposition(world.flow.client.get("/demo/mcp/metrics").text)
    assert gateway.samples.items() <= scrape(world).samples.items()
    assert requests_of(after, "/demo/mcp", "POST", 200) > requests_of(
        before, "/demo/mcp", "POST", 200)


def test_a_resource_as_serves_metrics_and_counts_its_token_answers(
        tmp_path: Path) -> None:
    origin = build_origin(f"sqlite:///{tmp_path / 'origin.db'}", tmp_path / "origin")
    # The origin's TestClient stands in for the HTTP client, as in tests/cross_domain/conftest.py.
    ras = build_resource_as(f"sqlite:///{tmp_path / 'ras.db'}", tmp_path / "ras",
                            origin.client)  # type: ignore[arg-type]
    try:
        refused = ras.redeem("not-a-jwt")
        assert refused.status_code == 400, refused.text
        key = generate_key()
        issued = ras.redeem(origin.id_jag(origin.mission(), jkt=key.thumbprint()), key=key)
        assert issued.status_code == 200, issued.text
        response = ras.client.get("/metrics")
        assert response.headers["content-type"] == CONTENT_TYPE
        exposition = parse_exposition(response.text)
        assert exposition.value(TOKENS_ISSUED, grant_type=JWT_BEARER) == 1
        assert exposition.value(TOKEN_REFUSALS, grant_type=JWT_BEARER,
                                error=refused.json()["error"]) == 1
        assert requests_of(exposition, "/token", "POST", 200) == 1
        assert exposition.series(PDP_DECISIONS) == {}  # no Mission PDP in this role
    finally:
        for client in (ras.client, origin.client):
            client.close()
        ras.engine.dispose()
        origin.engine.dispose()


# -- bounded labels --------------------------------------------------------------------------


def test_unmatched_and_made_up_paths_do_not_grow_the_label_set(world: World) -> None:
    client = world.flow.client
    before = scrape(world)
    paths = [f"/{secrets.token_urlsafe(8)}/{secrets.token_hex(4)}" for _ in range(440)]
    paths += [f"/static/{secrets.token_hex(6)}.css" for _ in range(20)]
    paths += [f"/demo/erp/{secrets.token_hex(6)}" for _ in range(20)]
    for path in paths:
        assert client.get(path).status_code == 404
    for _ in range(20):
        client.request("BREW" + secrets.token_hex(3).upper(), "/nowhere")
    after = scrape(world)
    grown = set(after.series(HTTP_REQUESTS)) - set(before.series(HTTP_REQUESTS))
    # At most: _unmatched GET 404, /static/{path} and /demo/erp/{path} GET 404, the made-up
    # methods as _other, and the scrape's own series.
    assert len(grown) <= 5, grown
    assert requests_of(after, "_unmatched", "GET", 404) - requests_of(
        before, "_unmatched", "GET", 404) == 440
    assert requests_of(after, "/static/{path}", "GET", 404) - requests_of(
        before, "/static/{path}", "GET", 404) == 20
    assert requests_of(after, "/demo/erp/{path}", "GET", 404) - requests_of(
        before, "/demo/erp/{path}", "GET", 404) == 20
    assert sum(value for labels, value in after.series(HTTP_REQUESTS).items()
               if ("method", "_other") in labels) - sum(
        value for labels, value in before.series(HTTP_REQUESTS).items()
        if ("method", "_other") in labels) == 20
    text = client.get("/metrics").text
    assert not any(path.split("/")[-1] in text for path in paths)
    assert "BREW" not in text


def test_refusal_error_labels_are_bounded_and_checked() -> None:
    metrics = IssuerMetrics()
    for n in range(MAX_ERROR_LABELS + 50):
        metrics.count_token_answer([("grant_type", "refresh_token")],
                                   OAuthResponse(400, {"error": f"made_up_{n}"}, []))
    metrics.count_token_answer([("grant_type", "refresh_token")],
                               OAuthResponse(400, {"error": 'bad"code\n'}, []))
    metrics.count_token_answer([("grant_type", "refresh_token")], OAuthResponse(500, "", []))
    series = parse_exposition(metrics.render()).series(TOKEN_REFUSALS)
    errors = {dict(labels)["error"] for labels in series}
    assert len(errors) == MAX_ERROR_LABELS + 1 and "_other" in errors
    assert series[(("error", "_other"), ("grant_type", "refresh_token"))] == 50 + 2


def test_label_values_and_help_are_escaped_and_read_back_unchanged() -> None:
    nasty = ['a"b', "back\\slash", "line\nfeed", '\\"\n', "ünï", "{}=,", ""]
    counter = Counter("t_total", 'Help with a \\ and a\nline feed and "quotes".', ("v",))
    histogram = Histogram("t_seconds", "Latency.", ("v",), buckets=(0.5, 1.0))
    for value in nasty:
        counter.inc(value)
        histogram.observe(0.75, value)
    text = render((counter, histogram))
    assert 't_total{v="a\\"b"} 1' in text.splitlines()
    assert 't_total{v="line\\nfeed"} 1' in text.splitlines()
    assert '# HELP t_total Help with a \\\\ and a\\nline feed and "quotes".' in text
    exposition = parse_exposition(text)
    assert exposition.helps["t_total"] == 'Help with a \\ and a\nline feed and "quotes".'
    assert {dict(labels)["v"] for labels in exposition.series("t_total")} == set(nasty)
    for value in nasty:
        assert exposition.value("t_seconds_bucket", v=value, le="0.5") == 0
        assert exposition.value("t_seconds_bucket", v=value, le="1") == 1
        assert exposition.value("t_seconds_count", v=value) == 1


@pytest.mark.parametrize("broken", [
    'm_total{v="a"} 1',  # no # TYPE
    '# TYPE m_total counter\nm_total{v="a\\x"} 1',  # unknown escape
    '# TYPE m_total counter\nm_total{v="a",} 1',  # trailing comma
    '# TYPE m_total counter\nm_total{v="a"} 1\nm_total{v="a"} 2',  # repeated series
    '# TYPE m_total counter\nm_total{v="a"} 1 1700000000',  # a timestamp
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1',
    '# TYPE a_total counter\na_total 1\n# TYPE b_total counter\nb_total 1\na_total{x="y"} 1',
])
def test_the_reader_refuses_what_is_not_the_format(broken: str) -> None:
    with pytest.raises(ExpositionError):
        parse_exposition(broken + "\n")
