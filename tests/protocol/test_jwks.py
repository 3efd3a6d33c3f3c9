"""JWK Sets: StaticKeys, and JwksCache against a real HTTP server on 127.0.0.1 (fetching,
caching, key rotation with a rate-limited refetch, refusals, thread safety)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import RSAKey

from missionbound.protocol.jwks import (
    InvalidJwks,
    JwksCache,
    JwksUnavailable,
    KeyNotFound,
    KeyRefreshThrottled,
    KeySource,
    StaticKeys,
    parse_jwks,
)
from tests.e2e_support import free_port
from tests.protocol.proofs import public_jwk
from tests.protocol.secevents import JwksServer, ManualClock, Transmitter, serving_jwks

OLD, NEW = Transmitter(kid="old"), Transmitter(kid="new")


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with serving_jwks(OLD) as running:
        yield running


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(server: JwksServer, clock: ManualClock) -> Iterator[JwksCache]:
    with JwksCache(server.url, clock=clock, min_refresh_seconds=30,
                   max_age_seconds=300) as made:
        yield made


# -- parse_jwks and StaticKeys ----------------------------------------------------------


def test_static_keys_find_keys_by_kid() -> None:
    keys = StaticKeys({"keys": [OLD.jwk, NEW.jwk]})
    assert isinstance(keys, KeySource)
    assert keys.key_for("new").kid == "new"
    assert [key.kid for key in keys.key_set()] == ["old", "new"]
    with pytest.raises(KeyNotFound) as caught:
        keys.key_for("gone")
    assert caught.value.kid == "gone"


def test_a_key_without_kid_is_named_by_its_thumbprint() -> None:
    jwk = public_jwk(OLD.key)
    keys = StaticKeys({"keys": [jwk]})
    assert keys.key_for(OLD.key.thumbprint()).kid == OLD.key.thumbprint()


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_a_private_key_member_refuses_the_whole_set(member: str) -> None:
    with pytest.raises(InvalidJwks, match="private"):
        parse_jwks({"keys": [OLD.jwk, {**NEW.jwk, member: "AAAA"}]})


def test_a_real_private_jwk_and_a_symmetric_key_are_refused() -> None:
    private = {**OLD.key.as_dict(private=True), "kid": "x"}
    with pytest.raises(InvalidJwks):
        StaticKeys({"keys": [private]})
    with pytest.raises(InvalidJwks):
        StaticKeys({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]})


@pytest.mark.parametrize("document", [
    [], {"keys": {}}, {"key": []}, "keys", {"keys": ["not a key"]},
    {"keys": [OLD.jwk] * 101},
])
def test_a_document_that_is_not_a_jwk_set_is_refused(document: Any) -> None:
    with pytest.raises(InvalidJwks):
        parse_jwks(document)


def test_two_keys_with_one_kid_are_refused() -> None:
    with pytest.raises(InvalidJwks, match="share the kid"):
        parse_jwks({"keys": [OLD.jwk, {**NEW.jwk, "kid": "old"}]})


def test_keys_unusable_for_signatures_are_skipped() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # the weak key is the point
        weak = {**RSAKey.generate_key(1024).as_dict(private=False), "kid": "weak"}
    document = {"keys": [
        OLD.jwk,
        {**NEW.jwk, "kid": "enc", "use": "enc"},
        {**NEW.jwk, "kid": "ops", "key_ops": ["encrypt"]},
        {"kty": "PQ", "kid": "future", "x": "AAAA"},  # RFC 7517 section 5: ignore unknown kty
        {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA", "kid": "curve"},
        {**NEW.jwk, "kid": 7},
        weak,
    ]}
    keys = StaticKeys(document)
    assert [key.kid for key in keys.key_set()] == ["old"]
    for kid in ("enc", "ops", "future", "curve", "weak"):
        with pytest.raises(KeyNotFound):
            keys.key_for(kid)


def test_an_empty_set_is_valid_and_holds_nothing() -> None:
    with pytest.raises(KeyNotFound):
        StaticKeys({"keys": []}).key_for("any")


# -- JwksCache: fetching and caching ----------------------------------------------------


def test_the_set_is_fetched_once_and_cached(cache: JwksCache, server: JwksServer) -> None:
    assert cache.fetched_at is None
    for _ in range(20):
        assert cache.key_for("old").kid == "old"
    assert server.requests == 1
    assert [key.kid for key in cache.key_set()] == ["old"]
    assert server.requests == 1


def test_a_copy_older_than_max_age_is_fetched_again(cache: JwksCache, server: JwksServer,
                                                    clock: ManualClock) -> None:
    cache.key_for("old")
    clock.advance(299)
    cache.key_for("old")
    assert server.requests == 1
    clock.advance(1)
    server.publish(NEW)  # the old key was retired meanwhile
    with pytest.raises(KeyNotFound):
        cache.key_for("old")
    assert server.requests == 2


def test_cached_key_for_answers_from_a_young_copy_and_never_fetches(
    cache: JwksCache, server: JwksServer, clock: ManualClock
) -> None:
    assert cache.cached_key_for("old") is None  # no copy yet: the caller must fetch
    assert server.requests == 0
    cache.key_for("old")
    key = cache.cached_key_for("old")
    assert key is not None and key.kid == "old"
    assert cache.cached_key_for("new") is None  # unknown kid: key_for would refetch
    clock.advance(300)
    assert cache.cached_key_for("old") is None  # too old: key_for would refetch
    assert server.requests == 1


def test_an_unknown_kid_triggers_one_refetch_key_rotation(
    cache: JwksCache, server: JwksServer, clock: ManualClock
) -> None:
    cache.key_for("old")
    server.publish(OLD, NEW)  # the issuer rotates
    clock.advance(31)
    assert cache.key_for("new").kid == "new"
    assert server.requests == 2
    assert cache.key_for("old").kid == "old"  # still published
    assert server.requests == 2


def test_unknown_kids_refetch_at_most_once_per_min_refresh(
    cache: JwksCache, server: JwksServer, clock: ManualClock
) -> None:
    cache.key_for("old")
    clock.advance(31)
    with pytest.raises(KeyNotFound):  # refetched: the issuer really has no such key
        cache.key_for("made-up-1")
    assert server.requests == 2
    clock.advance(10)
    for n in range(50):
        with pytest.raises(KeyRefreshThrottled) as caught:
            cache.key_for(f"made-up-{n}")
    assert server.requests == 2
    assert caught.value.retry_after == pytest.approx(20)
    assert isinstance(caught.value, JwksUnavailable)  # "not known yet", no verdict
    server.publish(OLD, NEW)
    clock.advance(20)
    assert cache.key_for("new").kid == "new"
    assert server.requests == 3


def test_right_after_the_first_fetch_an_unknown_kid_is_definitely_unknown(
    cache: JwksCache, server: JwksServer
) -> None:
    # The fetch began after the question: no second request, a definite answer.
    with pytest.raises(KeyNotFound):
        cache.key_for("nope")
    assert server.requests == 1


def test_concurrent_lookups_of_a_new_kid_share_one_refetch(server: JwksServer) -> None:
    with JwksCache(server.url, min_refresh_seconds=0.0) as cache:
        cache.key_for("old")
        server.publish(OLD, NEW)
        barrier = threading.Barrier(16)

        def look_up(_: int) -> str | None:
            barrier.wait()
            return cache.key_for("new").kid

        with ThreadPoolExecutor(16) as pool:
            kids = list(pool.map(look_up, range(16)))
    assert kids == ["new"] * 16
    # One refetch at least, and far fewer than one per thread: waiters reuse it.
    assert 2 <= server.requests <= 4


def test_refresh_fetches_now(cache: JwksCache, server: JwksServer) -> None:
    cache.key_for("old")
    server.publish(NEW)
    assert [key.kid for key in cache.refresh()] == ["new"]
    assert server.requests == 2


def test_a_caller_supplied_client_is_used_and_left_open(server: JwksServer) -> None:
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]}) as client:
        with JwksCache(server.url, client=client) as cache:
            cache.key_for("old")
        assert seen == [server.url]
        assert not client.is_closed


# -- JwksCache: refusals and failures ---------------------------------------------------


@pytest.mark.parametrize(("status", "content_type", "raw"), [
    (404, "application/json", None),
    (500, "application/json", None),
    (302, "application/json", None),  # redirects are not followed
    (200, "text/html", None),
    (200, None, None),
    (200, "application/json", b"<html>not json</html>"),
    (200, "application/json", b'{"keys": [], "keys": []}'),
    (200, "application/json", b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
    (200, "application/json", b"\xff\xfe"),
])
def test_unacceptable_answers_leave_no_keys(
    server: JwksServer, status: int, content_type: str | None, raw: bytes | None
) -> None:
    server.status, server.content_type, server.raw = status, content_type, raw
    with JwksCache(server.url) as cache, pytest.raises(JwksUnavailable):
        cache.key_for("old")


@pytest.mark.parametrize("content_type", ["application/jwk-set+json",
                                          "application/json; charset=utf-8",
                                          "Application/JSON"])
def test_json_media_types_are_accepted(server: JwksServer, content_type: str) -> None:
    server.content_type = content_type
    with JwksCache(server.url) as cache:
        assert cache.key_for("old").kid == "old"


@pytest.mark.parametrize("send_length", [True, False])
def test_an_oversized_set_is_refused(server: JwksServer, send_length: bool) -> None:
    server.raw = b'{"keys": [], "padding": "' + b"x" * 5000 + b'"}'
    server.send_length = send_length
    with JwksCache(server.url, max_bytes=4096) as cache, pytest.raises(
        JwksUnavailable, match="more than 4096"
    ):
        cache.key_set()
    with JwksCache(server.url, max_bytes=8192) as cache:
        assert list(cache.key_set()) == []


def test_nothing_listening_is_unavailable() -> None:
    with JwksCache(f"http://127.0.0.1:{free_port()}/jwks") as cache, pytest.raises(
        JwksUnavailable, match="could not fetch"
    ):
        cache.key_for("old")


def test_failed_fetches_are_rate_limited_too(server: JwksServer, clock: ManualClock) -> None:
    server.status = 503
    with JwksCache(server.url, clock=clock, min_refresh_seconds=30) as cache:
        for _ in range(5):
            with pytest.raises(JwksUnavailable, match="503"):
                cache.key_set()
        assert server.requests == 1
        server.status = 200
        clock.advance(30)
        assert cache.key_for("old").kid == "old"
        assert server.requests == 2


def test_a_stale_copy_is_not_served_when_refresh_fails_by_default(
    cache: JwksCache, server: JwksServer, clock: ManualClock
) -> None:
    cache.key_for("old")
    server.status = 500
    clock.advance(301)
    with pytest.raises(JwksUnavailable):
        cache.key_for("old")


def test_stale_if_error_serves_the_old_copy_for_a_while(server: JwksServer,
                                                        clock: ManualClock) -> None:
    with JwksCache(server.url, clock=clock, stale_if_error_seconds=60) as cache:
        cache.key_for("old")
        server.status = 500
        clock.advance(301)
        assert cache.key_for("old").kid == "old"  # refetch failed; the copy is 301 s old
        clock.advance(58)
        assert cache.key_for("old").kid == "old"
        clock.advance(2)
        with pytest.raises(JwksUnavailable):
            cache.key_for("old")


@pytest.mark.parametrize("uri", ["ftp://as.example/jwks", "/jwks", "file:///etc/jwks",
                                 "https:///jwks"])
def test_only_http_urls_are_fetched(uri: str) -> None:
    with pytest.raises(ValueError):
        JwksCache(uri)


@pytest.mark.parametrize("options", [{"max_age_seconds": 0}, {"min_refresh_seconds": -1},
                                     {"min_refresh_seconds": 600}, {"max_bytes": 0},
                                     {"stale_if_error_seconds": -1}])
def test_durations_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JwksCache("https://as.example/jwks", **options)
