"""RFC 9449 DPoP proof checks (section 4.3) with real keys and real signatures: every refusal
carries ``invalid_dpop_proof`` (or ``use_dpop_nonce``) and a valid proof passes."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key, RSAKey

from missionbound.mission.errors import wire_text
from missionbound.protocol.dpop import (
    DEFAULT_CLOCK_SKEW_SECONDS,
    DEFAULT_MAX_AGE_SECONDS,
    MAX_JTI_LENGTH,
    MAX_PROOF_LENGTH,
    SUPPORTED_ALGS,
    DPoPProof,
    DPoPProofError,
    UseDPoPNonce,
    access_token_hash,
    jwk_thumbprint,
    normalize_htu,
    single_dpop_header,
    verify_dpop_proof,
)
from tests.protocol.proofs import (
    DROP,
    IAT,
    METHOD,
    NOW,
    URL,
    b64url,
    forge,
    forge_raw,
    generate_key,
    make_proof,
    public_jwk,
)

# RFC 9449 section 5, Figures 5 and 7: the example proofs, and (section 6.1, Figure 9) the
# thumbprint of their key.
RFC_PROOF_FIGURE_5 = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNo"
    "UklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERW"
    "clUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0"
    "dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-"
    "FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
RFC_PROOF_FIGURE_7 = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNo"
    "UklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERW"
    "clUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0"
    "dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjY1Mjk2fQ.pAqut2IRDm_De6PR93"
    "SYmGBPXpwrAk90e8cP2hjiaG5QsGSuKDYW7_X620BxqhvYC8ynrrvZLTk41mSRroapUA"
)
RFC_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
# RFC 9449 section 5, Figure 6 (the access token) and section 7, Figure 13 (its ath).
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"

TOKEN = "an-access-token"


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    """One key per supported alg (RSA generation is the slow part: once per module)."""
    return {alg: generate_key(alg) for alg in SUPPORTED_ALGS}


@pytest.fixture
def key(keys: dict[str, Key]) -> Key:
    return keys["ES256"]


def verify(proof: str, **overrides: Any) -> DPoPProof:
    arguments: dict[str, Any] = {"method": METHOD, "url": URL, "now": NOW, **overrides}
    return verify_dpop_proof(proof, **arguments)


def refused(proof: Any, **overrides: Any) -> DPoPProofError:
    """Assert ``proof`` is refused as invalid_dpop_proof (not a nonce request); return why."""
    with pytest.raises(DPoPProofError) as caught:
        verify(proof, **overrides)
    error = caught.value
    assert type(error) is DPoPProofError
    assert error.error == "invalid_dpop_proof"
    assert error.status == 400
    # On the wire the description keeps to RFC 6749 section 5.2's characters.
    assert error.to_wire() == {"error": "invalid_dpop_proof",
                               "error_description": wire_text(str(error))}
    assert error.description
    return error


# -- valid proofs ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGS)
def test_a_valid_proof_passes_with_every_supported_alg(keys: dict[str, Key], alg: str) -> None:
    key = keys[alg]
    proof = make_proof(key, alg=alg, jti="jti-1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)  # verifying "EdDSA" stays quiet
        result = verify(proof)
    assert result.jkt == key.thumbprint() == jwk_thumbprint(public_jwk(key))
    assert (result.jti, result.iat, result.htm, result.htu) == ("jti-1", IAT, METHOD, URL)
    assert result.alg == alg
    assert result.nonce is None
    assert result.public_jwk == public_jwk(key)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(result.public_jwk)
    assert result.accepted_until == NOW + timedelta(seconds=DEFAULT_MAX_AGE_SECONDS)


@pytest.mark.parametrize(
    ("proof", "iat"), [(RFC_PROOF_FIGURE_5, 1562262616), (RFC_PROOF_FIGURE_7, 1562265296)]
)
def test_the_rfc_9449_example_proofs_verify(proof: str, iat: int) -> None:
    now = datetime.fromtimestamp(iat + 10, UTC)
    result = verify(proof, url="https://server.example.com/token", now=now)
    assert result.jkt == RFC_JKT
    assert result.jti == "-BwC3ESc6acc2lTc"
    assert result.public_jwk == RFC_JWK


def test_the_rfc_9449_example_proof_is_refused_at_another_endpoint() -> None:
    now = datetime.fromtimestamp(1562262620, UTC)
    refused(RFC_PROOF_FIGURE_5, url="https://server.example.com/par", now=now)
    refused(RFC_PROOF_FIGURE_5, url="https://server.example.com/token", method="GET", now=now)


def test_extra_header_parameters_and_claims_are_allowed(key: Key) -> None:
    # RFC 9449 section 4.2: "A DPoP proof MAY contain other JOSE Header Parameters or claims".
    proof = make_proof(key, header={"kid": "k1", "x-note": "hi"}, extra={"any": ["thing"]})
    assert verify(proof).jkt == key.thumbprint()


# -- helpers -----------------------------------------------------------------------------


def test_jwk_thumbprint_matches_rfc_9449_and_ignores_non_required_members() -> None:
    assert jwk_thumbprint(RFC_JWK) == RFC_JKT
    assert jwk_thumbprint({**RFC_JWK, "kid": "x", "use": "sig", "alg": "ES256"}) == RFC_JKT


def test_jwk_thumbprint_is_rfc_7638_over_the_required_members(keys: dict[str, Key]) -> None:
    for alg in ("ES256", "EdDSA", "RS256"):
        jwk = public_jwk(keys[alg])
        required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                    "RSA": ("e", "kty", "n")}[jwk["kty"]]
        members = json.dumps({n: jwk[n] for n in required}, separators=(",", ":"))
        assert jwk_thumbprint(jwk) == b64url(hashlib.sha256(members.encode()).digest())


@pytest.mark.parametrize("jwk", [{}, {"kty": "EC"}, {"kty": "nope"}, {**RFC_JWK, "x": "AAAA"}])
def test_jwk_thumbprint_refuses_an_invalid_jwk(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_access_token_hash_matches_rfc_9449() -> None:
    assert access_token_hash(RFC_ACCESS_TOKEN) == RFC_ATH
    with pytest.raises(ValueError):
        access_token_hash("tökén")


def test_single_dpop_header() -> None:
    assert single_dpop_header([]) is None
    assert single_dpop_header(["proof"]) == "proof"
    with pytest.raises(DPoPProofError) as caught:
        single_dpop_header(["one", "two"])
    assert caught.value.error == "invalid_dpop_proof"
    assert "2 DPoP header fields" in caught.value.description


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://issuer.example/token", "https://issuer.example/token"),
        ("HTTPS://Issuer.EXAMPLE/token", "https://issuer.example/token"),
        ("https://issuer.example:443/token", "https://issuer.example/token"),
        ("http://issuer.example:80/token", "http://issuer.example/token"),
        ("http://issuer.example:8000/token", "http://issuer.example:8000/token"),
        ("https://issuer.example/token?a=1#frag", "https://issuer.example/token"),
        ("https://issuer.example", "https://issuer.example/"),
        ("https://issuer.example/a/./b/../c", "https://issuer.example/a/c"),
        ("https://issuer.example/../a", "https://issuer.example/a"),
        ("https://issuer.example/%7Euser/%2f%41", "https://issuer.example/~user/%2FA"),
        ("http://[::1]:8000/token", "http://[::1]:8000/token"),
        ("http://127.0.0.1:8000/par", "http://127.0.0.1:8000/par"),
    ],
)
def test_normalize_htu(url: str, normalized: str) -> None:
    assert normalize_htu(url) == normalized


@pytest.mark.parametrize(
    "url",
    [
        "/token",
        "issuer.example/token",
        "ftp://issuer.example/token",
        "https:///token",
        "https://user:pw@issuer.example/token",
        "https://issuer.example:99999/token",
        "https://issuer.example/to ken",
        "https://issuer.example/to\tken",
        "https://issuer.exämple/token",
    ],
)
def test_normalize_htu_refuses_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


# -- item 2: one well-formed JWS ---------------------------------------------------------


@pytest.mark.parametrize(
    "proof",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d.e",  # JWE compact
        "eyJ0eXAiOiJkcG9wK2p3dCJ9..c2ln",  # detached payload
        "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.",  # no signature (alg none style)
        " eyJhIjoxfQ.e30.c2ln",
        "eyJhIjoxfQ==.e30.c2ln",
    ],
)
def test_anything_but_one_compact_jws_is_refused(proof: str) -> None:
    assert "compact serialization" in refused(proof).description


def test_a_proof_that_is_not_text_is_refused(key: Key) -> None:
    refused(make_proof(key).encode())


def test_two_proofs_joined_into_one_header_value_are_refused(key: Key) -> None:
    joined = make_proof(key) + ", " + make_proof(key)
    assert "list of values" in refused(joined).description


def test_an_oversize_proof_is_refused(key: Key) -> None:
    proof = make_proof(key, padding="x" * MAX_PROOF_LENGTH)
    assert f"limit is {MAX_PROOF_LENGTH}" in refused(proof).description


@pytest.mark.parametrize(
    ("header_json", "claims_json"),
    [
        ("not json", "{}"),
        ('["typ"]', "{}"),
        ('{"typ":"dpop+jwt","alg":"ES256"}', "[1, 2]"),
        ('{"typ":"dpop+jwt","alg":"ES256"}', '{"iat": NaN}'),
        ('{"typ":"dpop+jwt","typ":"dpop+jwt","alg":"ES256"}', "{}"),
        ('{"typ":"dpop+jwt","alg":"ES256"}', '{"htu":"https://a/","htu":"https://b/"}'),
    ],
)
def test_header_and_claims_must_be_json_objects_without_duplicates(
    header_json: str, claims_json: str
) -> None:
    refused(forge_raw(header_json, claims_json))


def test_a_segment_that_is_not_utf8_is_refused() -> None:
    header, payload = b64url(b'{"typ":"dpop+jwt"}'), b64url(bytes([0xFF, 0xFE]))
    refused(f"{header}.{payload}.c2ln")


# -- items 4 and 5: typ and alg ----------------------------------------------------------


@pytest.mark.parametrize("typ", [DROP, "JWT", "at+jwt", "application/dpop+jwt", "DPOP+JWT"])
def test_typ_must_be_dpop_jwt(key: Key, typ: Any) -> None:
    assert '"typ"' in refused(make_proof(key, header={"typ": typ})).description


def test_typ_must_be_a_string(key: Key) -> None:
    # joserfc will not even sign this header: forged, refused before any signature check.
    proof = forge({"typ": 1, "alg": "ES256", "jwk": public_jwk(key)})
    assert '"typ"' in refused(proof).description


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512"])
def test_none_and_mac_algorithms_are_refused(key: Key, alg: str) -> None:
    proof = forge({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)})
    assert "not an asymmetric" in refused(proof).description


@pytest.mark.parametrize("alg", ["ES512", "RS512", "PS384", "ES256K", "Ed448", "XYZ"])
def test_algorithms_outside_the_supported_list_are_refused(key: Key, alg: str) -> None:
    proof = forge({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)})
    assert "not supported" in refused(proof).description


@pytest.mark.parametrize("alg", [None, 256])
def test_alg_must_be_a_string(key: Key, alg: Any) -> None:
    assert 'lacks "alg"' in refused(
        forge({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)})
    ).description


def test_alg_must_be_present(key: Key) -> None:
    assert 'lacks "alg"' in refused(forge({"typ": "dpop+jwt", "jwk": public_jwk(key)})).description


@pytest.mark.parametrize("extension", [{"crit": ["b64"], "b64": True}, {"b64": True}])
def test_jws_extensions_are_refused(key: Key, extension: dict[str, Any]) -> None:
    assert '"crit" or "b64"' in refused(make_proof(key, header=extension)).description


# -- items 6 and 7: the jwk and the signature --------------------------------------------


def test_the_jwk_header_is_required(key: Key) -> None:
    assert '"jwk"' in refused(make_proof(key, header={"jwk": DROP})).description


@pytest.mark.parametrize("jwk", ["a string", ["a", "list"]])
def test_the_jwk_must_be_an_object(jwk: Any) -> None:
    proof = forge({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})
    assert "must be a JSON object" in refused(proof).description


def test_a_symmetric_jwk_is_refused(key: Key) -> None:
    proof = make_proof(key, jwk={"kty": "oct", "k": "c2VjcmV0"})
    assert "asymmetric public key" in refused(proof).description


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_a_jwk_with_private_members_is_refused(keys: dict[str, Key], alg: str) -> None:
    key = keys[alg]
    proof = make_proof(key, alg=alg, jwk=dict(key.as_dict(private=True)))
    assert "private key members" in refused(proof).description


def test_a_short_rsa_key_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc warns: that is the point
        short = RSAKey.generate_key(1024, private=True)
    assert "2048 bits" in refused(make_proof(short, alg="RS256")).description


def test_a_jwk_that_is_not_a_valid_key_is_refused(key: Key) -> None:
    not_on_curve = {**RFC_JWK, "y": RFC_JWK["x"]}
    assert "not a valid public key" in refused(make_proof(key, jwk=not_on_curve)).description
    refused(make_proof(key, jwk={"kty": "EC", "crv": "P-256"}))


@pytest.mark.parametrize(
    "extra", [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"key_ops": ["sign"]}, {"use": "x"}]
)
def test_a_jwk_not_meant_for_verifying_signatures_is_refused(
    key: Key, extra: dict[str, Any]
) -> None:
    refused(make_proof(key, jwk={**public_jwk(key), **extra}))


def test_a_signature_by_another_key_is_refused(key: Key) -> None:
    other = generate_key("ES256")
    proof = make_proof(other, jwk=public_jwk(key))
    assert "does not verify" in refused(proof).description


def test_a_tampered_payload_is_refused(key: Key) -> None:
    header, _, signature = make_proof(key, jti="one").split(".")
    _, payload, _ = make_proof(key, jti="two").split(".")
    assert "does not verify" in refused(f"{header}.{payload}.{signature}").description


@pytest.mark.parametrize(("alg", "other"), [("ES256", "EdDSA"), ("ES256", "ES384"),
                                            ("ES256", "RS256"), ("EdDSA", "ES256")])
def test_a_jwk_that_does_not_fit_the_alg_is_refused(
    keys: dict[str, Key], alg: str, other: str
) -> None:
    proof = make_proof(keys[alg], alg=alg, jwk=public_jwk(keys[other]))
    refused(proof)


# -- item 3: the required claims ---------------------------------------------------------


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_every_required_claim_must_be_present(key: Key, claim: str) -> None:
    proof = make_proof(key, **{claim: DROP})
    assert f'required "{claim}" claim' in refused(proof).description


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("jti", ""),
        ("jti", 42),
        ("jti", "j" * (MAX_JTI_LENGTH + 1)),
        ("htm", ""),
        ("htm", ["POST"]),
        ("htu", None),
        ("htu", ""),
        ("iat", str(IAT)),
        ("iat", True),
        ("iat", None),
    ],
)
def test_required_claims_must_be_well_typed(key: Key, claim: str, value: Any) -> None:
    refused(make_proof(key, **{claim: value}))


def test_a_jti_at_the_length_limit_passes(key: Key) -> None:
    assert verify(make_proof(key, jti="j" * MAX_JTI_LENGTH)).jti == "j" * MAX_JTI_LENGTH


# -- items 8 and 9: htm and htu ----------------------------------------------------------


@pytest.mark.parametrize("htm", ["GET", "post", "PUT"])
def test_htm_must_match_the_method_exactly(key: Key, htm: str) -> None:
    assert "htm" in refused(make_proof(key, htm=htm)).description


@pytest.mark.parametrize(
    "htu",
    [
        "https://issuer.example/token?grant=x",
        "https://issuer.example/token#frag",
        "HTTPS://ISSUER.example:443/token",
        "https://issuer.example/./token",
        "https://issuer.example/x/../token",
        "https://issuer.example/%74oken",
    ],
)
def test_htu_equal_after_normalization_passes(key: Key, htu: str) -> None:
    assert verify(make_proof(key, htu=htu)).htu == htu


@pytest.mark.parametrize(
    "htu",
    [
        "http://issuer.example/token",
        "https://issuer.example:8443/token",
        "https://other.example/token",
        "https://issuer.example/token/",
        "https://issuer.example/Token",
        "https://issuer.example/par",
        "https://issuer.example/token%2F",
    ],
)
def test_htu_for_another_url_is_refused(key: Key, htu: str) -> None:
    assert "does not match the request URL" in refused(make_proof(key, htu=htu)).description


@pytest.mark.parametrize("htu", ["/token", "urn:x:y", "https://user@issuer.example/token"])
def test_htu_that_is_not_an_absolute_http_url_is_refused(key: Key, htu: str) -> None:
    assert "not an http(s) URL" in refused(make_proof(key, htu=htu)).description


def test_the_request_url_is_normalized_too(key: Key) -> None:
    assert verify(make_proof(key), url="HTTPS://issuer.example:443/token?x=1").htu == URL
    # A request URL built from a hostile Host header is a 400, not a crash.
    refused(make_proof(key), url="https://issuer.example:99999/token")


# -- item 11: iat within the window ------------------------------------------------------


@pytest.mark.parametrize(
    "iat",
    [
        IAT - DEFAULT_MAX_AGE_SECONDS,
        IAT - 1,
        IAT + DEFAULT_CLOCK_SKEW_SECONDS,
        IAT + 0.5,
    ],
)
def test_iat_inside_the_window_passes(key: Key, iat: float) -> None:
    result = verify(make_proof(key, iat=iat))
    assert result.iat == int(iat // 1)
    assert result.accepted_until == datetime.fromtimestamp(iat + DEFAULT_MAX_AGE_SECONDS, UTC)


def test_a_proof_older_than_the_window_is_refused(key: Key) -> None:
    proof = make_proof(key, iat=IAT - DEFAULT_MAX_AGE_SECONDS - 1)
    assert "issued 301 s ago" in refused(proof).description


def test_a_proof_from_the_future_beyond_the_skew_is_refused(key: Key) -> None:
    proof = make_proof(key, iat=IAT + DEFAULT_CLOCK_SKEW_SECONDS + 1)
    assert "in the future" in refused(proof).description


def test_the_window_is_configurable(key: Key) -> None:
    proof = make_proof(key, iat=IAT - 30)
    refused(proof, max_age_seconds=20)
    assert verify(proof, max_age_seconds=40).accepted_until == NOW + timedelta(seconds=10)
    early = make_proof(key, iat=IAT + 3)
    refused(early, max_clock_skew_seconds=0)
    assert verify(early, max_clock_skew_seconds=5).iat == IAT + 3


def test_now_must_be_timezone_aware(key: Key) -> None:
    with pytest.raises(ValueError):
        verify(make_proof(key), now=NOW.replace(tzinfo=None))


# -- item 12: ath ------------------------------------------------------------------------


def test_ath_matching_the_access_token_passes(key: Key) -> None:
    proof = make_proof(key, ath=access_token_hash(TOKEN))
    assert verify(proof, access_token=TOKEN).jkt == key.thumbprint()


def test_ath_is_required_with_an_access_token(key: Key) -> None:
    assert 'lacks "ath"' in refused(make_proof(key), access_token=TOKEN).description


@pytest.mark.parametrize("ath", [access_token_hash("another-token"), "", 7, "é"])
def test_ath_for_another_token_is_refused(key: Key, ath: Any) -> None:
    proof = make_proof(key, ath=ath)
    assert "does not match the access token" in refused(proof, access_token=TOKEN).description


def test_ath_is_ignored_without_an_access_token(key: Key) -> None:
    # Token and PAR endpoints: no token is presented, so nothing to compare (see the module).
    assert verify(make_proof(key, ath="anything")).jkt == key.thumbprint()


def test_a_non_ascii_access_token_is_refused_not_crashed(key: Key) -> None:
    refused(make_proof(key, ath="x"), access_token="tökén")


# -- item 10: the server nonce -----------------------------------------------------------


class Nonces:
    """A nonce_check that records what it was given and accepts only "good"."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def __call__(self, nonce: str | None) -> None:
        self.seen.append(nonce)
        if nonce != "good":
            raise UseDPoPNonce("good", "use the nonce")


def test_nonce_check_receives_the_nonce_claim(key: Key) -> None:
    nonces = Nonces()
    assert verify(make_proof(key, nonce="good"), nonce_check=nonces).nonce == "good"
    assert nonces.seen == ["good"]


@pytest.mark.parametrize("nonce", [DROP, "stale"])
def test_a_refused_nonce_raises_use_dpop_nonce(key: Key, nonce: Any) -> None:
    nonces = Nonces()
    with pytest.raises(UseDPoPNonce) as caught:
        verify(make_proof(key, nonce=nonce), nonce_check=nonces)
    assert caught.value.error == "use_dpop_nonce"
    assert caught.value.nonce == "good"
    assert caught.value.to_wire() == {
        "error": "use_dpop_nonce",
        "error_description": "use the nonce",
    }
    assert nonces.seen == [None if nonce is DROP else nonce]


@pytest.mark.parametrize("nonce", ["", 5, ["good"]])
def test_a_malformed_nonce_claim_is_refused(key: Key, nonce: Any) -> None:
    refused(make_proof(key, nonce=nonce), nonce_check=Nonces())


def test_an_otherwise_invalid_proof_gets_invalid_dpop_proof_not_a_nonce(key: Key) -> None:
    nonces = Nonces()
    refused(make_proof(key, htm="GET"), nonce_check=nonces)
    assert nonces.seen == []


def test_a_nonce_is_not_checked_when_the_server_asks_for_none(key: Key) -> None:
    assert verify(make_proof(key, nonce="whatever")).nonce == "whatever"

