"""Evidence records as signed, hash-linked objects (runtime-digest sections 5.1-5.5): the
three record kinds and their media types, the JWS envelope, the link between records, and
the verification of a chain with nothing but the records and the issuer's JWK Set.

Pure: no database, no clock. :mod:`missionbound.runtime.evidence` builds and stores records
with it; ``missionbound audit verify`` and offline verifiers check them with it.

Signing (section 5.4): the record without ``evidence_envelope`` is serialized with JCS
(RFC 8785) and signed as a JWS in compact serialization whose protected header carries
``typ`` ``application/mission-runtime-evidence+jws`` and ``cty`` the record's media type;
the JWS is stored inside the record as ``{"evidence_envelope": {"format": "jws-compact",
"value": ...}}``. Linking (section 5.5): a record's ``record_hash`` is the ``sha-256:``
digest of its JWS (so it covers the content and the signature); each record carries
``sequence`` (1, 2, ... per chain) and ``prev_hash``, the ``record_hash`` of the record
before it in its chain (null for the first).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from joserfc import jws

from missionbound.issuer.keys import SignerKey, SigningAlgorithm
from missionbound.mission.canonical import canonicalize, digest_bytes
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.jose_segments import (
    COMPACT_JWS,
    AllowListRegistry,
    JwsRefused,
    b64url_decode,
    json_object_segment,
    verify_signed_jws,
)
from missionbound.protocol.jwks import InvalidJwks, KeySource, StaticKeys

EVIDENCE_JWS_TYPE = "application/mission-runtime-evidence+jws"
ENVELOPE = "evidence_envelope"
ENVELOPE_FORMAT = "jws-compact"  # the only format section 5.4 defines
MAX_JWS_LENGTH = 256 * 1024

_REGISTRY = AllowListRegistry(
    [alg.value for alg in SigningAlgorithm], max_length=MAX_JWS_LENGTH
)


class RecordKind(StrEnum):
    DECISION = "decision"
    REFUSAL = "refusal"
    EXECUTION = "execution"


# Section 5.1: the JWS ``cty`` of each kind (no cross-kind reuse of a signature).
MEDIA_TYPES: Mapping[RecordKind, str] = {
    RecordKind.DECISION: "application/mission-decision-evidence+json",
    RecordKind.REFUSAL: "application/mission-refusal-record+json",
    RecordKind.EXECUTION: "application/mission-execution-evidence+json",
}
# The identifier member each kind carries (sections 5.2 and 5.3); it also tells the kinds
# apart, since the media type travels only in the envelope.
ID_MEMBERS: Mapping[RecordKind, str] = {
    RecordKind.DECISION: "evidence_id",
    RecordKind.REFUSAL: "refusal_id",
    RecordKind.EXECUTION: "execution_id",
}
_ID_PREFIXES: Mapping[RecordKind, str] = {
    RecordKind.DECISION: "evd_",
    RecordKind.REFUSAL: "ref_",
    RecordKind.EXECUTION: "exe_",
}


def new_record_id(kind: RecordKind) -> str:
    """A fresh identifier: a kind prefix and 144 random bits (section 5.2: >= 128 bits)."""
    return _ID_PREFIXES[kind] + secrets.token_urlsafe(18)


def sign_record(record: Mapping[str, Any], kind: RecordKind, signer: SignerKey
                ) -> tuple[dict[str, Any], str]:
    """The stored form of ``record`` (its JWS in ``evidence_envelope``) and that JWS."""
    if ENVELOPE in record:
        raise InvalidRequest("an evidence record is signed without its evidence_envelope")
    payload = record_bytes(record)
    header = signer.protected_header(typ=EVIDENCE_JWS_TYPE, cty=MEDIA_TYPES[kind])
    value = jws.serialize_compact(header, payload, signer.key, registry=signer.registry)
    return {**record, ENVELOPE: {"format": ENVELOPE_FORMAT, "value": value}}, value


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """JCS (RFC 8785) of ``record``: the JWS payload.

    The records built here hold only ASCII member names, strings, integers of the I-JSON
    range, booleans, null, arrays and objects. For such values the standard library's
    sorted, compact, non-ASCII-preserving JSON is byte for byte the JCS form (ASCII names
    sort the same by code point and by UTF-16 unit; strings escape alike; integers print
    alike), at a seventh of the cost of the general serializer (docs/evidence.md,
    "Cost"). Anything else (a float, a non-ASCII member name, a lone surrogate) goes through
    :func:`~missionbound.mission.canonical.canonicalize`. Verification always uses the
    general serializer, so the two can never silently disagree."""
    if _plain(record, 0):
        try:
            return json.dumps(record, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            pass  # a lone surrogate: canonicalize names the problem
    return canonicalize(dict(record))


_I_JSON_MAX = 2**53 - 1


def _plain(value: Any, depth: int) -> bool:
    if depth > 32:
        return False
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_I_JSON_MAX <= value <= _I_JSON_MAX
    if isinstance(value, dict):
        return all(isinstance(key, str) and key.isascii() and _plain(item, depth + 1)
                   for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item, depth + 1) for item in value)
    return False


def record_hash(jws_value: str) -> str:
    """What the next record's ``prev_hash`` names: the digest of the whole JWS."""
    return digest_bytes(jws_value.encode("ascii"))


# -- verification ----------------------------------------------------------------------------


class EvidenceBreak(Exception):
    """A record that does not verify; ``description`` says which check failed."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def kind_of(record: Mapping[str, Any]) -> RecordKind:
    """The record's kind, from the one identifier member it carries."""
    kinds = [kind for kind, member in ID_MEMBERS.items() if member in record]
    if len(kinds) != 1:
        raise EvidenceBreak("carries none or several of evidence_id, refusal_id, execution_id")
    return kinds[0]


def record_label(record: Any) -> str:
    """``decision evidence 3 (evd_...)``: how a break names the record."""
    if not isinstance(record, Mapping):
        return "evidence record (not a JSON object)"
    try:
        kind = kind_of(record)
    except EvidenceBreak:
        return f"evidence record {record.get('sequence')!s:.20}"
    words = {RecordKind.DECISION: "decision evidence", RecordKind.REFUSAL: "refusal record",
             RecordKind.EXECUTION: "execution evidence"}[kind]
    return f"{words} {record.get('sequence')!s:.20} ({record.get(ID_MEMBERS[kind])!s:.40})"


def check_signed_record(record: Any, keys: KeySource) -> str:
    """Verify one record as section 5.4 orders it and return its ``record_hash``: the
    envelope's format; the JWS payload byte-equal to JCS of the record without the
    envelope; ``typ`` and ``cty`` (the kind's own media type); the signature, with the
    key its ``kid`` names in ``keys``. Raises :class:`EvidenceBreak`."""
    if not isinstance(record, Mapping):
        raise EvidenceBreak("is not a JSON object")
    kind = kind_of(record)
    envelope = record.get(ENVELOPE)
    if not isinstance(envelope, Mapping) or envelope.get("format") != ENVELOPE_FORMAT:
        raise EvidenceBreak(f"has no {ENVELOPE} of format {ENVELOPE_FORMAT}")
    value = envelope.get("value")
    if not isinstance(value, str) or len(value) > MAX_JWS_LENGTH or not COMPACT_JWS.fullmatch(
        value
    ):
        raise EvidenceBreak("its envelope value is not a JWS in compact serialization")
    header_segment, payload_segment, _ = value.split(".")
    header = json_object_segment(header_segment, "the JWS header", EvidenceBreak)
    if header.get("typ") != EVIDENCE_JWS_TYPE:
        raise EvidenceBreak(f"its JWS typ is not {EVIDENCE_JWS_TYPE}")
    if header.get("cty") != MEDIA_TYPES[kind]:
        raise EvidenceBreak(f"its JWS cty is not {MEDIA_TYPES[kind]} (a signature of "
                            "another kind of record)")
    try:
        content = canonicalize({k: v for k, v in record.items() if k != ENVELOPE})
    except InvalidRequest as exc:
        raise EvidenceBreak(f"has no canonical form: {exc.description}") from None
    if b64url_decode(payload_segment) != content:
        raise EvidenceBreak("its content differs from what was signed (the JWS payload)")
    try:
        verify_signed_jws(value, header, keys=keys, registry=_REGISTRY, what="record")
    except JwsRefused as exc:
        raise EvidenceBreak(exc.description) from None
    return record_hash(value)


def chain_of_record(record: Mapping[str, Any]) -> str:
    """The chain a record belongs to: its Mission's id, else ``emitter:`` + its emitter's
    id (refusals made before any Mission was established)."""
    mission = record.get("mission")
    mission_id = record.get("mission_id")
    if mission_id is None and isinstance(mission, Mapping):
        mission_id = mission.get("id")
    if isinstance(mission_id, str):
        return mission_id
    emitter = record.get("emitter")
    emitter_id = emitter.get("id") if isinstance(emitter, Mapping) else None
    if not isinstance(emitter_id, str):
        raise EvidenceBreak("names neither a Mission nor an emitter")
    return "emitter:" + emitter_id


class ChainVerifier:
    """Checks the records of one chain one after the other, from the first: each signed
    (:func:`check_signed_record`), in the chain, numbered one more than the previous and
    linked to it by ``prev_hash``."""

    def __init__(self, keys: KeySource) -> None:
        self.keys = keys
        self.chain_id: str | None = None
        self.last_sequence = 0
        self.last_hash: str | None = None

    def check(self, record: Any) -> str:
        """The record's ``record_hash``; :class:`EvidenceBreak` naming what is wrong."""
        hash_ = check_signed_record(record, self.keys)
        chain_id = chain_of_record(record)
        if self.chain_id is None:
            self.chain_id = chain_id
        elif chain_id != self.chain_id:
            raise EvidenceBreak(f"belongs to chain {chain_id}, not {self.chain_id}")
        sequence = record.get("sequence")
        expected = self.last_sequence + 1
        if sequence != expected:
            if isinstance(sequence, int) and sequence > expected:
                missing = (f"record {expected}" if sequence == expected + 1
                           else f"records {expected} to {sequence - 1}")
                raise EvidenceBreak(f"has sequence {sequence} where {expected} was expected: "
                                    f"{missing} of the chain is missing, or the records are "
                                    "out of order")
            raise EvidenceBreak(f"has sequence {sequence!s:.20} where {expected} was "
                                "expected: the records are out of order or repeated")
        if record.get("prev_hash") != self.last_hash:
            raise EvidenceBreak(f"prev_hash does not link to record {self.last_sequence}")
        self.last_sequence = expected
        self.last_hash = hash_
        return hash_


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records_checked: int
    first_break: str | None


def keys_from(jwks: Mapping[str, Any] | KeySource) -> KeySource:
    if isinstance(jwks, Mapping):
        try:
            return StaticKeys(jwks)
        except InvalidJwks as exc:
            raise EvidenceBreak(f"the JWK Set cannot be used: {exc}") from None
    return jwks


def verify_evidence_chain(records: Iterable[Any], jwks: Mapping[str, Any] | KeySource
                          ) -> ChainReport:
    """Verify the records of one chain (one Mission's, in ``sequence`` order, as
    exported), offline: every signature with the published JWK Set, every link, no gap,
    nothing reordered. Stops at the first break and names it. Records removed from the end
    of a chain cannot be seen from the records alone (the store's chain head can:
    ``missionbound audit verify``)."""
    checked = 0
    try:
        verifier = ChainVerifier(keys_from(jwks))
        for record in records:
            try:
                verifier.check(record)
            except EvidenceBreak as exc:
                raise EvidenceBreak(f"{record_label(record)}: {exc.description}") from None
            checked += 1
    except EvidenceBreak as exc:
        return ChainReport(False, checked, exc.description)
    return ChainReport(True, checked, None)
