"""``missionbound gateway``: the Mission-aware MCP gateway (PROFILE.md section 13,
docs/mcp.md) as its own process, in front of one upstream MCP server.

The gateway is a Resource Server of the Authorization Server at ``--issuer``: it accepts
the DPoP-bound Mission access tokens issued for ``--resource`` (its RFC 8707 identifier,
the URL agents address), shows an agent only the tools its Mission grants, and asks the PDP
at ``--pdp`` about every ``tools/call``, with its own client credential there
(``--pep-client-id`` / ``--pep-client-secret``). It holds no database and no state a
replica would need to share: run as many as needed behind one name.

The MCP endpoint is served at the path of ``--resource`` (``http://127.0.0.1:8100/mcp``:
``/mcp``), and the resource's RFC 9728 metadata at its well-known path
(``/.well-known/oauth-protected-resource/mcp``). The AS's signing keys come from the
``jwks_uri`` of its RFC 8414 metadata, read once at start: a gateway whose AS does not
answer does not start (exit 1), so a wrong ``--issuer`` shows at once. The Mission's state
comes from the AS's Mission Status endpoint (RS-C), trusted for ``--mission-staleness``
seconds: a Mission that is no longer active is refused for every request, ``tools/list``
included, before the PDP is asked.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from starlette.applications import Starlette

from missionbound.cli.common import EXIT_USAGE, fail, log

DEFAULT_PORT = 8100
PEP_SECRET_ENV = "MISSIONBOUND_PEP_CLIENT_SECRET"
NONCE_SECRET_ENV = "MISSIONBOUND_GATEWAY_DPOP_NONCE_SECRET"
MIN_NONCE_SECRET_BYTES = 16  # MissionGuard's floor
# A day: a definition change unnoticed longer than that is no caching trade-off any more.
MAX_DEFINITIONS_TTL_SECONDS = 86_400
DEFAULT_MISSION_STALENESS_SECONDS = 5.0  # as the demo resources publish
MAX_MISSION_STALENESS_SECONDS = 3_600
# The AS's RFC 8414 document, read once at start (jwks_uri, and that it names --issuer).
METADATA_TIMEOUT_SECONDS = 10.0
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"  # RFC 8414 section 3


def gateway(
    resource: Annotated[str, typer.Option(
        help="This gateway's resource identifier: the URL agents call, as the AS's catalog "
             "names it (e.g. https://mcp.example.com/mcp). Its path is where the MCP "
             "endpoint is served.", show_default=False)],
    upstream: Annotated[str, typer.Option(
        help="The upstream MCP server's streamable HTTP endpoint "
             "(e.g. http://127.0.0.1:8765/mcp).", show_default=False)],
    issuer: Annotated[str, typer.Option(
        help="The Authorization Server whose Mission tokens are accepted (its issuer "
             "identifier).", show_default=False)],
    pep_client_id: Annotated[str, typer.Option(
        help="This gateway's client id at the PDP (HTTP Basic).", show_default=False)],
    pep_client_secret: Annotated[str, typer.Option(
        envvar=PEP_SECRET_ENV, show_envvar=True,
        help="Its client secret (prefer the environment variable: a command line is visible "
             "to every user of the machine).", show_default=False)],
    pdp: Annotated[str | None, typer.Option(
        help="The Mission PDP's base URL (AuthZEN at <pdp>/access/v1/evaluation). "
             "Default: the issuer.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    definitions_ttl: Annotated[float, typer.Option(
        help="Seconds the upstream's tools/list is kept. 0 (the default) lists it again "
             "for every request, so a changed tool definition is refused "
             "(capability_drift) from the very next call; more saves upstream round trips "
             "and lets a change go unnoticed that long.")] = 0.0,
    mission_staleness: Annotated[float, typer.Option(
        help="Seconds a Mission's state read from the AS's Mission Status endpoint is "
             "trusted (RS-C): a Mission no longer active is refused for every request, "
             "tools/list included, at the latest this long after the change. 0 asks the "
             "AS on every request.")
    ] = DEFAULT_MISSION_STALENESS_SECONDS,
    dpop_nonce_secret: Annotated[str | None, typer.Option(
        envvar=NONCE_SECRET_ENV, show_envvar=True,
        help="Require this gateway's DPoP nonces in proofs (RFC 9449 section 9), made with "
             "this secret (at least 16 characters; the same on every replica). Default: no "
             "nonces.", show_default=False)] = None,
    log_level: Annotated[str, typer.Option(
        help="Log level (debug, info, warning, error).")] = "info",
) -> None:
    """Run the Mission-aware MCP gateway in front of one upstream MCP server."""
    # Imported here: the other commands need neither uvicorn nor the web stack.
    import uvicorn

    from missionbound.web.logs import configure_logging

    options = check_options(resource=resource, upstream=upstream, issuer=issuer,
                            pdp=pdp or issuer, port=port, pep_client_id=pep_client_id,
                            pep_client_secret=pep_client_secret,
                            dpop_nonce_secret=dpop_nonce_secret, log_level=log_level,
                            definitions_ttl=definitions_ttl,
                            mission_staleness=mission_staleness)
    level = options.pop("log_level")
    jwks_uri, status_endpoint = discover_endpoints(options["issuer"])
    # Once nothing can stop the start any more: a refusal is a plain message on stderr.
    configure_logging(level)
    application = build_gateway_host(**options, jwks_uri=jwks_uri,
                                     status_endpoint=status_endpoint)
    log.info("gateway_serving", resource=options["resource"], upstream=options["upstream"],
             issuer=options["issuer"], pdp=options["pdp"], host=host, port=port)
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


def check_options(*, resource: str, upstream: str, issuer: str, pdp: str, port: int,
                  pep_client_id: str, pep_client_secret: str, log_level: str,
                  dpop_nonce_secret: str | None = None, definitions_ttl: float = 0.0,
                  mission_staleness: float = DEFAULT_MISSION_STALENESS_SECONDS
                  ) -> dict[str, Any]:
    """The options, checked: a usage error (exit 2) names the option and what it needs."""
    _absolute_url(resource, "--resource", path_required=True)
    if resource.endswith("/"):
        # The endpoint is served at exactly the resource's path, the URL proofs sign (htu).
        fail(f"--resource {resource!r}: without a trailing slash, e.g. "
             f"{resource.rstrip('/')}", EXIT_USAGE)
    _absolute_url(upstream, "--upstream", path_required=True)
    _absolute_url(issuer, "--issuer")
    _absolute_url(pdp, "--pdp")
    if not 1 <= port <= 65535:
        fail(f"--port {port}: a TCP port is 1-65535", EXIT_USAGE)
    if not pep_client_id.strip():
        fail("--pep-client-id is empty", EXIT_USAGE)
    if not pep_client_secret:
        fail(f"--pep-client-secret (or {PEP_SECRET_ENV}) is empty", EXIT_USAGE)
    nonce_secret = None if dpop_nonce_secret is None else dpop_nonce_secret.encode()
    if nonce_secret is not None and len(nonce_secret) < MIN_NONCE_SECRET_BYTES:
        fail(f"--dpop-nonce-secret (or {NONCE_SECRET_ENV}) needs at least "
             f"{MIN_NONCE_SECRET_BYTES} characters", EXIT_USAGE)
    if not 0 <= definitions_ttl <= MAX_DEFINITIONS_TTL_SECONDS:
        fail(f"--definitions-ttl {definitions_ttl:g}: 0 to {MAX_DEFINITIONS_TTL_SECONDS} "
             "seconds", EXIT_USAGE)
    if not 0 <= mission_staleness <= MAX_MISSION_STALENESS_SECONDS:
        fail(f"--mission-staleness {mission_staleness:g}: 0 to "
             f"{MAX_MISSION_STALENESS_SECONDS} seconds", EXIT_USAGE)
    level = log_level.lower()
    if level not in ("debug", "info", "warning", "error"):
        fail(f"--log-level {log_level!r}: one of debug, info, warning, error", EXIT_USAGE)
    if _same_endpoint(resource, upstream):
        fail("--upstream is the gateway's own --resource: it would call itself", EXIT_USAGE)
    # The issuer verbatim: it is compared with iss and the metadata character for character.
    return {"resource": resource, "upstream": upstream, "issuer": issuer,
            "pdp": pdp.rstrip("/"), "pep_client_id": pep_client_id,
            "pep_client_secret": pep_client_secret, "dpop_nonce_secret": nonce_secret,
            "definitions_ttl": definitions_ttl, "mission_staleness": mission_staleness,
            "log_level": level}


def _absolute_url(value: str, option: str, *, path_required: bool = False) -> None:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        fail(f"{option} {value!r}: the port is not a number in 0-65535", EXIT_USAGE)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"{option} {value!r}: expected an absolute http(s) URL", EXIT_USAGE)
    if parts.query or parts.fragment or "#" in value:
        fail(f"{option} {value!r}: a URL without query or fragment", EXIT_USAGE)
    if parts.username is not None or parts.password is not None:
        fail(f"{option} {value!r}: credentials do not belong in a URL", EXIT_USAGE)
    if path_required and parts.path.strip("/") == "":
        fail(f"{option} {value!r}: the MCP endpoint needs a path, e.g. {value.rstrip('/')}/mcp",
             EXIT_USAGE)


def _same_endpoint(a: str, b: str) -> bool:
    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url)
        default = {"http": 80, "https": 443}[parts.scheme]
        return (parts.scheme, parts.hostname or "", parts.port or default,
                parts.path.rstrip("/"))
    return key(a) == key(b)


def discover_endpoints(issuer: str) -> tuple[str, str]:
    """The ``jwks_uri`` and ``mission_status_endpoint`` of ``issuer``'s RFC 8414 metadata,
    whose ``issuer`` must be exactly ``issuer`` (section 3.3). Not answering, or answering
    something else, ends the command (exit 1) with what went wrong."""
    import httpx

    # Section 3.1: the well-known segment goes between the host and the issuer's path.
    parts = urlsplit(issuer)
    url = f"{parts.scheme}://{parts.netloc}{AS_METADATA_PATH}{parts.path.rstrip('/')}"
    try:
        response = httpx.get(url, timeout=METADATA_TIMEOUT_SECONDS, follow_redirects=False)
    except httpx.HTTPError as exc:
        fail(f"the Authorization Server does not answer at {url}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        fail(f"{url} answered HTTP {response.status_code}: is --issuer the Authorization "
             "Server's issuer identifier?")
    try:
        metadata = response.json()
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        fail(f"{url} did not answer with a JSON object")
    if metadata.get("issuer") != issuer:
        # RFC 8414 section 3.3: metadata naming another issuer is not this AS's.
        fail(f"{url} names the issuer {metadata.get('issuer')!r}, not {issuer!r}")
    jwks_uri = metadata.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
        fail(f"{url} has no http(s) jwks_uri")
    status_endpoint = metadata.get("mission_status_endpoint")
    if not isinstance(status_endpoint, str) or not status_endpoint.startswith(
            ("https://", "http://")):
        # The gateway refuses a Mission that is no longer active before anything else.
        fail(f"{url} has no http(s) mission_status_endpoint: is it a Mission-bound AS?")
    return jwks_uri, status_endpoint


def build_gateway_host(*, resource: str, upstream: str, issuer: str, pdp: str,
                       pep_client_id: str, pep_client_secret: str, jwks_uri: str,
                       status_endpoint: str,
                       dpop_nonce_secret: bytes | None = None,
                       definitions_ttl: float = 0.0,
                       mission_staleness: float = DEFAULT_MISSION_STALENESS_SECONDS
                       ) -> Starlette:
    """The ASGI application: the gateway for ``resource`` in front of ``upstream``, served
    at the resource's path (and its RFC 9728 document at the host root's well-known path).

    Tokens are checked against the AS's keys (``jwks_uri``), DPoP required; the PDP's
    permits are signed with the same keys (the Mission PDP is the AS's own), one
    :class:`JwksCache` for both. The Mission's state is read at ``status_endpoint`` (RS-C,
    with the gateway's PEP credential) and trusted ``mission_staleness`` seconds. With
    ``dpop_nonce_secret``, proofs must carry this gateway's nonce (RFC 9449 section 9)."""
    from missionbound.enforce.mcp.gateway import build_gateway_app, mount_gateway
    from missionbound.enforce.mcp.upstream import Upstream
    from missionbound.enforce.rs import (
        MissionGuard,
        MissionStateView,
        MissionStatusSource,
        PdpClient,
        Tier,
        TrustedIssuer,
    )
    from missionbound.protocol.jwks import JwksCache

    keys = JwksCache(jwks_uri)
    state = MissionStateView(
        MissionStatusSource(issuer=issuer, status_endpoint=status_endpoint, keys=keys,
                            audience=resource, client_id=pep_client_id,
                            client_secret=pep_client_secret),
        staleness_seconds=mission_staleness)
    guard = MissionGuard(
        resource=resource, issuers=[TrustedIssuer(issuer, keys=keys)],
        tier=Tier.RS_C, state=state,
        dpop_required=True,  # sender-constrained tokens only (RFC 9449)
        dpop_nonce_secret=dpop_nonce_secret,
        resource_name="Mission-aware MCP gateway")
    gateway_app = build_gateway_app(
        resource=resource, guard=guard,
        upstream=Upstream(upstream, definitions_ttl_seconds=definitions_ttl),
        pdp=PdpClient(pdp, client_id=pep_client_id, client_secret=pep_client_secret),
        permit_keys=keys, permit_issuer=issuer)
    path = urlsplit(resource).path
    host = Starlette()
    mount_gateway(host, path, gateway_app)
    return host
