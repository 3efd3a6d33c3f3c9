"""verify_access_token (RFC 9068 section 4, PROFILE.md sections 2 RS-B and 8): real signatures
throughout, every refusal with its reason code, and a token the AS really minted."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key, OctKey
from joserfc.jws import JWSRegistry

from missionbound.mission.anchors import authority_hash
from missionbound.mission.delegation import MAX_CHAIN_LENGTH, Actor
from missionbound.protocol.access_tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    INVALID_ACTOR,
    INVALID_AUTHORIZATION_DETAILS,
    INVALID_CLAIM,
    INVALID_CONFIRMATION,
    INVALID_MISSION,
    MALFORMED,
    MAX_ACCESS_TOKEN_LENGTH,
    MISSING_CLAIM,
    MISSING_MISSION,
    NOT_YET_VALID,
    TOO_LONG_LIVED,
    UNKNOWN_KEY,
    UNSUPPORTED_ALGORITHM,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    WRONG_TYPE,
    AccessTokenRejected,
    MissionEvidence,
    is_access_token_type,
    verify_access_token,
)
from missionbound.protocol.jwks import JwksUnavailable, StaticKeys
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import ERP, MCP, Flow
from tests.issuer.flow import ISSUER as FLOW_ISSUER
from tests.protocol.proofs import b64url, forge_raw, generate_key, public_jwk

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
IAT = int(NOW.timestamp())
ISSUER = "https://as.example.test"
RESOURCE = "https://erp.example.test/api"
OTHER_RESOURCE = "https://mcp.example.test/mcp"
T = "mission_resource_access"
DETAILS = [{"type": T, "resource": RESOURCE, "actions": ["invoices.read"]}]
MISSION = {
    "id": "msn_" + "A" * 32,
    "origin": ISSUER,
    "authority_hash": authority_hash(ISSUER, DETAILS),
}
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
ACT = {"sub": "tool-runner", "iss": ISSUER,
       "act": {"sub": "demo-subagent", "iss": ISSUER}}
DROP: Any = object()


class Issuer:
    """An AS signing access tokens with one key of ``alg``."""

    def __init__(self, alg: str = "ES256", kid: str = "as-key-1") -> None:
        self.alg = alg
        self.kid = kid
        self.key: Key = generate_key(alg)
        self.jwk = {**public_jwk(self.key), "kid": kid, "alg": alg, "use": "sig"}

    def sign(self, claims: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None,
             key: Key | None = None, **overrides: Any) -> str:
        protected = _merge({"typ": "at+jwt", "alg": self.alg, "kid": self.kid}, header or {})
        body = _merge(claims if claims is not None else good_claims(), overrides)
        registry = JWSRegistry(algorithms=[protected["alg"]], strict_check_header=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return jws.serialize_compact(protected, json.dumps(body), key or self.key,
                                         registry=registry)


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": RESOURCE,
        "client_id": "demo-agent",
        "iat": IAT,
        "exp": IAT + 300,
        "jti": "kV6cB0Yx3-Wq2bO1rE9y1c8nZ0aJ2gT4",
        "authorization_details": DETAILS,
        "mission": dict(MISSION),
    }
    return _merge(claims, overrides)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items() if value is not DROP}


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def keys(issuer: Issuer) -> StaticKeys:
    return StaticKeys({"keys": [issuer.jwk]})


def verify(token: Any, keys: Any, **options: Any) -> Any:
    return verify_access_token(token, keys=keys, **{"issuer": ISSUER, "audience": RESOURCE,
                                                     "now": NOW, **options})


def refused(token: Any, keys: Any, reason: str, **options: Any) -> AccessTokenRejected:
    with pytest.raises(AccessTokenRejected) as caught:
        verify(token, keys, **options)
    assert caught.value.reason == reason, caught.value.description
    wire = caught.value.to_wire()
    assert wire["error"] == "invalid_token" and caught.value.status == 401
    # RFC 6750 section 3: error_description is %x20-21 / %x23-5B / %x5D-7E.
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in wire["error_description"])
    return caught.value


# -- accepted ----------------------------------------------------------------------------------


def test_a_good_access_token_is_read_whole(issuer: Issuer, keys: StaticKeys) -> None:
    token = verify(issuer.sign(), keys)
    assert token.issuer == ISSUER and token.subject == "alice"
    assert token.client_id == "demo-agent" and token.jti == "kV6cB0Yx3-Wq2bO1rE9y1c8nZ0aJ2gT4"
    assert token.audiences == (RESOURCE,)
    assert token.issued_at == NOW and token.expires_at == NOW + timedelta(seconds=300)
    assert token.jkt is None and token.actors == () and not token.delegated
    assert token.mission == MissionEvidence(**MISSION)
    assert token.authorization_details == tuple(DETAILS)
    assert token.claims["mission"] == MISSION


def test_a_delegated_dpop_bound_token_gives_its_act_chain(issuer: Issuer,
                                                          keys: StaticKeys) -> None:
    token = verify(issuer.sign(act=ACT, cnf={"jkt": JKT}, client_id="tool-runner"), keys)
    assert token.actors == (Actor("tool-runner", ISSUER), Actor("demo-subagent", ISSUER))
    assert token.delegated and token.jkt == JKT and token.client_id == "tool-runner"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256", "RS256"])
def test_every_asymmetric_algorithm_verifies(alg: str) -> None:
    signer = Issuer(alg)
    verify(signer.sign(), StaticKeys({"keys": [signer.jwk]}))


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_the_type_may_be_spelled_as_rfc_7515_allows(issuer: Issuer, keys: StaticKeys,
                                                    typ: str) -> None:
    assert is_access_token_type(typ)
    verify(issuer.sign(header={"typ": typ}), keys)


def test_an_audience_array_containing_the_resource_is_accepted(issuer: Issuer,
                                                               keys: StaticKeys) -> None:
    token = verify(issuer.sign(aud=[OTHER_RESOURCE, RESOURCE]), keys)
    assert token.audiences == (OTHER_RESOURCE, RESOURCE)


def test_leeway_absorbs_a_clock_behind_and_ahead(issuer: Issuer, keys: StaticKeys) -> None:
    verify(issuer.sign(exp=IAT - 10, iat=IAT - 310), keys, leeway=30)
    verify(issuer.sign(iat=IAT + 20, exp=IAT + 320, nbf=IAT + 20), keys, leeway=30)


def test_unknown_claims_and_mission_members_are_ignored(issuer: Issuer,
                                                        keys: StaticKeys) -> None:
    token = verify(issuer.sign(scope="invoices.read", mission={**MISSION, "state": "active"}),
                   keys)
    assert token.mission == MissionEvidence(**MISSION) and token.claims["scope"]


# -- refused: the JOSE layer -------------------------------------------------------------------


@pytest.mark.parametrize("typ", [DROP, "JWT", "txntoken+jwt", "secevent+jwt",
                                 "oauth-id-jag+jwt", "dpop+jwt", "at+jwt; x=1", "at", 1])
def test_any_other_type_is_refused(issuer: Issuer, keys: StaticKeys, typ: Any) -> None:
    if isinstance(typ, str) or typ is DROP:
        token = issuer.sign(header={"typ": typ})
    else:  # joserfc signs no such header: refused before the signature anyway
        header = {"typ": typ, "alg": "ES256", "kid": issuer.kid}
        token = forge_raw(json.dumps(header), json.dumps(good_claims()))
    refused(token, keys, WRONG_TYPE)


def test_alg_none_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    header = {"typ": "at+jwt", "alg": "none", "kid": issuer.kid}
    token = forge_raw(json.dumps(header), json.dumps(good_claims()), b"")
    error = refused(token, keys, UNSUPPORTED_ALGORITHM)
    assert "'none'" in error.description


def test_hs256_keyed_with_the_public_key_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    # The classic confusion: the public JWK (as published) used as an HMAC secret.
    secret = OctKey.import_key(json.dumps(issuer.jwk, sort_keys=True).encode())
    header = {"typ": "at+jwt", "alg": "HS256", "kid": issuer.kid}
    token = jws.serialize_compact(header, json.dumps(good_claims()), secret,
                                  registry=JWSRegistry(algorithms=["HS256"]))
    error = refused(token, keys, UNSUPPORTED_ALGORITHM)
    assert "HS256" in error.description


@pytest.mark.parametrize("alg", ["HS512", "ES512", "RS512", "dir", "None"])
def test_algorithms_off_the_list_are_refused(issuer: Issuer, keys: StaticKeys, alg: str) -> None:
    header = {"typ": "at+jwt", "alg": alg, "kid": issuer.kid}
    refused(forge_raw(json.dumps(header), json.dumps(good_claims())), keys,
            UNSUPPORTED_ALGORITHM)


def test_an_algorithm_the_key_cannot_make_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    other = Issuer("EdDSA", kid=issuer.kid)  # an EdDSA header naming the P-256 key
    refused(other.sign(), keys, UNSUPPORTED_ALGORITHM)


def test_an_unknown_kid_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(header={"kid": "rotated-away"}), keys, UNKNOWN_KEY)


def test_a_key_brought_in_the_header_is_never_used(keys: StaticKeys) -> None:
    rogue = Issuer(kid="rogue")
    refused(rogue.sign(header={"jwk": public_jwk(rogue.key)}), keys, UNKNOWN_KEY)


def test_a_bad_signature_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(key=generate_key("ES256")), keys, BAD_SIGNATURE)


def test_claims_changed_after_signing_are_refused(issuer: Issuer, keys: StaticKeys) -> None:
    header, _, signature = issuer.sign().split(".")
    wider = [{"type": T, "resource": RESOURCE, "actions": ["invoices.read", "wire.send"]}]
    changed = b64url(json.dumps(good_claims(authorization_details=wider)).encode())
    refused(f"{header}.{changed}.{signature}", keys, BAD_SIGNATURE)


@pytest.mark.parametrize("header", [{"kid": DROP}, {"kid": ""}, {"kid": "k" * 256},
                                    {"alg": DROP}, {"crit": ["exp"]}, {"b64": False}])
def test_header_members_missing_or_unsupported_are_malformed(issuer: Issuer, keys: StaticKeys,
                                                             header: dict[str, Any]) -> None:
    protected = _merge({"typ": "at+jwt", "alg": "ES256", "kid": issuer.kid}, header)
    refused(forge_raw(json.dumps(protected), json.dumps(good_claims())), keys, MALFORMED)


@pytest.mark.parametrize("token", [
    "", "not-a-jwt", "a.b", "a.b.c.d.e", "é.b.c", None, 42, b"a.b.c",
    forge_raw("[]", "{}"), forge_raw("{", "{}"),
    forge_raw('{"typ": "at+jwt", "typ": "JWT", "alg": "ES256", "kid": "k"}', "{}"),
    forge_raw('{"typ": "at+jwt", "alg": "ES256", "kid": "k"}', '{"sub": "a", "sub": "b"}'),
])
def test_what_is_no_compact_jws_is_malformed(keys: StaticKeys, token: Any) -> None:
    refused(token, keys, MALFORMED)


def test_an_oversize_token_is_refused_before_parsing(issuer: Issuer, keys: StaticKeys) -> None:
    padded = issuer.sign(padding="x" * MAX_ACCESS_TOKEN_LENGTH)
    error = refused(padded, keys, MALFORMED)
    assert str(MAX_ACCESS_TOKEN_LENGTH) in error.description
    refused("x" * (MAX_ACCESS_TOKEN_LENGTH + 1), keys, MALFORMED)


def test_an_unavailable_key_source_is_no_verdict(issuer: Issuer) -> None:
    class Down:
        def key_for(self, kid: str) -> Key:
            raise JwksUnavailable("the JWKS endpoint is down")

        def key_set(self) -> Any:
            raise JwksUnavailable("the JWKS endpoint is down")

    with pytest.raises(JwksUnavailable):
        verify(issuer.sign(), Down())


# -- refused: the claims -----------------------------------------------------------------------


def test_an_unexpected_issuer_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(), keys, WRONG_ISSUER, issuer="https://other.example.test")
    refused(issuer.sign(iss=ISSUER + "/"), keys, WRONG_ISSUER)
    refused(issuer.sign(iss=DROP), keys, MISSING_CLAIM)
    refused(issuer.sign(iss=[ISSUER]), keys, INVALID_CLAIM)


@pytest.mark.parametrize("aud", [OTHER_RESOURCE, [OTHER_RESOURCE], RESOURCE.upper()])
def test_another_audience_is_refused(issuer: Issuer, keys: StaticKeys, aud: Any) -> None:
    refused(issuer.sign(aud=aud), keys, WRONG_AUDIENCE)


@pytest.mark.parametrize("aud", [[], 7, None, [RESOURCE, 7], [""], {"aud": RESOURCE}])
def test_an_ill_typed_audience_is_refused(issuer: Issuer, keys: StaticKeys, aud: Any) -> None:
    refused(issuer.sign(aud=aud), keys, INVALID_CLAIM)


def test_an_expired_token_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(iat=IAT - 400, exp=IAT - 31), keys, EXPIRED, leeway=30)
    refused(issuer.sign(iat=IAT - 300, exp=IAT), keys, EXPIRED, leeway=0)
    refused(issuer.sign(), keys, EXPIRED, now=NOW + timedelta(hours=1))


def test_a_token_from_the_future_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(iat=IAT + 31, exp=IAT + 300), keys, NOT_YET_VALID, leeway=30)


def test_a_token_not_valid_before_a_later_time_is_refused(issuer: Issuer,
                                                          keys: StaticKeys) -> None:
    refused(issuer.sign(nbf=IAT + 31), keys, NOT_YET_VALID, leeway=30)
    refused(issuer.sign(nbf="soon"), keys, INVALID_CLAIM)


def test_exp_not_after_iat_is_refused(issuer: Issuer, keys: StaticKeys) -> None:
    refused(issuer.sign(iat=IAT + 10, exp=IAT + 5), keys, INVALID_CLAIM)


def test_the_lifetime_is_bounded_when_asked(issuer: Issuer, keys: StaticKeys) -> None:
    token = issuer.sign(exp=IAT + 3600)
    verify(token, keys)
    refused(token, keys, TOO_LONG_LIVED, max_lifetime_seconds=300)
    verify(issuer.sign(), keys, max_lifetime_seconds=300)


@pytest.mark.parametrize("name", ["iat", "exp", "aud", "sub", "client_id", "jti"])
def test_every_required_claim_is_required(issuer: Issuer, keys: StaticKeys, name: str) -> None:
    refused(issuer.sign(**{name: DROP}), keys, MISSING_CLAIM)


@pytest.mark.parametrize(("name", "value"), [
    ("iat", "1700000000"), ("exp", True), ("exp", None), ("sub", ""), ("sub", ["alice"]),
    ("client_id", 7), ("client_id", "c" * 1025), ("jti", ""), ("jti", None),
])
def test_ill_typed_claims_are_refused(issuer: Issuer, keys: StaticKeys, name: str,
                                      value: Any) -> None:
    refused(issuer.sign(**{name: value}), keys, INVALID_CLAIM)


def test_a_token_without_mission_is_refused_as_a_downgrade(issuer: Issuer,
                                                           keys: StaticKeys) -> None:
    # PROFILE.md section 2, RS-B: an otherwise perfect RFC 9068 token stripped of "mission"
    # is not served as a plain token.
    error = refused(issuer.sign(mission=DROP), keys, MISSING_MISSION)
    assert "mission" in error.description


@pytest.mark.parametrize("mission", [
    "msn_x", ["msn"], None,
    {**MISSION, "id": "not-a-mission-id"},
    {**MISSION, "id": DROP},
    {**MISSION, "origin": "urn:example:as"},
    {**MISSION, "origin": ""},
    {**MISSION, "origin": DROP},
    {**MISSION, "authority_hash": "sha-1:abc"},
    {**MISSION, "authority_hash": "sha-256:short"},
    {**MISSION, "authority_hash": None},
])
def test_a_malformed_mission_is_refused(issuer: Issuer, keys: StaticKeys, mission: Any) -> None:
    if isinstance(mission, dict):
        mission = _merge(mission, {})
    refused(issuer.sign(mission=mission), keys, INVALID_MISSION)


def test_a_token_without_authorization_details_is_refused(issuer: Issuer,
                                                          keys: StaticKeys) -> None:
    refused(issuer.sign(authorization_details=DROP), keys, MISSING_CLAIM)


@pytest.mark.parametrize("details", [
    {"type": T}, "mission_resource_access", [], [DETAILS[0], "x"], [{"resource": RESOURCE}],
    [{"type": 7}], [{"type": ""}], None,
])
def test_authorization_details_not_a_list_of_typed_objects_is_refused(
        issuer: Issuer, keys: StaticKeys, details: Any) -> None:
    refused(issuer.sign(authorization_details=details), keys, INVALID_AUTHORIZATION_DETAILS)


@pytest.mark.parametrize("cnf", [
    "jkt", [JKT], None, {}, {"jkt": 7}, {"jkt": "short"}, {"jkt": JKT + "="},
    {"x5t#S256": JKT},
])
def test_a_malformed_or_uncheckable_cnf_is_refused(issuer: Issuer, keys: StaticKeys,
                                                   cnf: Any) -> None:
    refused(issuer.sign(cnf=cnf), keys, INVALID_CONFIRMATION)


def _chain(depth: int) -> dict[str, Any]:
    act: dict[str, Any] | None = None
    for level in range(depth):
        act = {"sub": f"agent-{level}", "iss": ISSUER, **({"act": act} if act else {})}
    assert act is not None
    return act


@pytest.mark.parametrize("act", [
    None, "tool-runner", [ACT], {"sub": "tool-runner"}, {"sub": "", "iss": ISSUER},
    {"sub": "tool-runner", "iss": ISSUER, "client_id": "x"},
    {"sub": "tool-runner", "iss": ISSUER, "act": "demo-subagent"},
    {"sub": "tool-runner", "iss": ISSUER, "act": {"sub": 7, "iss": ISSUER}},
    _chain(MAX_CHAIN_LENGTH + 1),
])
def test_a_malformed_act_is_refused(issuer: Issuer, keys: StaticKeys, act: Any) -> None:
    refused(issuer.sign(act=act), keys, INVALID_ACTOR)


def test_the_longest_chain_is_read(issuer: Issuer, keys: StaticKeys) -> None:
    token = verify(issuer.sign(act=_chain(MAX_CHAIN_LENGTH)), keys)
    assert len(token.actors) == MAX_CHAIN_LENGTH and token.actors[0].sub == "agent-15"


# -- the caller's mistakes ---------------------------------------------------------------------


def test_options_are_checked(issuer: Issuer, keys: StaticKeys) -> None:
    token = issuer.sign()
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(token, keys, now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="leeway"):
        verify(token, keys, leeway=-1)
    with pytest.raises(ValueError, match="max_lifetime_seconds"):
        verify(token, keys, max_lifetime_seconds=0)
    with pytest.raises(ValueError, match="audience"):
        verify(token, keys, audience="")
    with pytest.raises(ValueError, match="issuer"):
        verify(token, keys, issuer="")


def test_now_defaults_to_the_current_time(issuer: Issuer, keys: StaticKeys) -> None:
    current = int(datetime.now(UTC).timestamp())
    verify(issuer.sign(iat=current, exp=current + 60), keys, now=None)


def test_a_refusal_reason_must_be_known() -> None:
    with pytest.raises(ValueError):
        AccessTokenRejected("nope", "x")


# -- a token the AS minted ---------------------------------------------------------------------


def test_a_token_minted_by_the_as_verifies_against_its_jwks(flow: Flow) -> None:  # noqa: F811
    dpop_key = generate_key("ES256")
    grant = flow.grant(dpop_key=dpop_key)
    keys = StaticKeys(flow.client.get("/jwks").json())
    _, claims = flow.decode(grant.access_token)
    audience = claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]
    assert audience in (ERP, MCP)
    token = verify_access_token(grant.access_token, keys=keys, issuer=FLOW_ISSUER,
                                audience=audience, now=flow.now(), max_lifetime_seconds=300)
    record = flow.mission(grant.mission_id)
    assert token.mission == MissionEvidence(id=record.mission_id, origin=record.origin,
                                            authority_hash=str(record.authority_hash))
    assert token.mission.origin == FLOW_ISSUER
    assert token.client_id == "demo-agent" and token.actors == ()
    assert token.jkt is not None and token.jkt == dpop_key.thumbprint()
    assert list(token.authorization_details) == grant.body["authorization_details"]
    with pytest.raises(AccessTokenRejected) as caught:
        verify_access_token(grant.access_token, keys=keys, issuer=FLOW_ISSUER,
                            audience="https://elsewhere.example/api", now=flow.now())
    assert caught.value.reason == WRONG_AUDIENCE
