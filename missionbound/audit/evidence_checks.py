"""The evidence part of ``missionbound audit verify`` (PROFILE.md sections 12 and 15;
runtime-digest sections 5.4 and 5.5): every stored evidence chain, record by record.

For each chain, in ``chain_id`` order, each record in ``sequence`` order: its signature and
envelope (:func:`missionbound.runtime.evidence_format.check_signed_record`, with the key its
``kid`` names), its place in the chain (``sequence`` 1, 2, ... without a gap, ``prev_hash``
linking to the record before), and the stored columns agreeing with the signed record
(chain, sequence, kind, identifier, hashes); then the chain's head naming its last record,
so records cut from the end are noticed too. Raises :class:`Break` at the first failure.

The keys: by default the public half of every signing key the database holds, retired ones
included (evidence outlives a key's publication in ``/jwks``); an auditor who does not trust
the database's keys passes the JWK Sets it kept (``audit verify --jwks FILE``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from missionbound.audit.mission_checks import Break
from missionbound.protocol.jwks import KeySource
from missionbound.runtime.evidence_format import (
    ID_MEMBERS,
    ChainVerifier,
    EvidenceBreak,
    keys_from,
    kind_of,
    record_label,
)
from missionbound.store import evidence as rows


class EvidenceChecker:
    """Verifies every evidence chain (:meth:`run`); ``checked`` counts the records verified
    so far, also when :class:`Break` stops it."""

    def __init__(self, session: Session,
                 jwks: Mapping[str, Any] | KeySource | None = None) -> None:
        self.session = session
        self.jwks = jwks
        self.checked = 0

    def run(self) -> int:
        session = self.session
        try:
            keys = keys_from(self.jwks if self.jwks is not None
                             else rows.verification_jwks(session))
        except EvidenceBreak as exc:
            raise Break(f"evidence keys: {exc.description}") from None
        heads = rows.chain_heads(session)
        verifier: ChainVerifier | None = None
        chain_id: str | None = None
        seen: set[str] = set()
        for row in _rows(session):
            if row["chain_id"] != chain_id:
                if chain_id is not None and verifier is not None:
                    _check_head(chain_id, verifier, heads)
                chain_id = row["chain_id"]
                seen.add(chain_id)
                verifier = ChainVerifier(keys)
            assert verifier is not None and chain_id is not None
            _check_row(chain_id, row, verifier)
            self.checked += 1
        if chain_id is not None and verifier is not None:
            _check_head(chain_id, verifier, heads)
        for missing in sorted(set(heads) - seen):
            raise Break(f"evidence chain {_chain_words(missing)}: its head names record "
                        f"{heads[missing].last_sequence} but the chain has no record left "
                        "(records were removed)")
        return self.checked


def check_evidence(session: Session, jwks: Mapping[str, Any] | KeySource | None = None) -> int:
    """Verify every evidence chain; the number of records checked. :class:`Break` names
    the first failure."""
    return EvidenceChecker(session, jwks).run()


def _rows(session: Session) -> Iterator[dict[str, Any]]:
    try:
        yield from rows.records_in_chain_order(session)
    except SQLAlchemyError:
        raise
    except Exception as exc:
        # A stored record the driver cannot decode (JSON that is not JSON any more).
        raise Break(f"evidence records cannot be read: {type(exc).__name__}: "
                    f"{str(exc)[:200]}") from None


def _check_row(chain_id: str, row: dict[str, Any], verifier: ChainVerifier) -> None:
    record = row["record"]
    where = f"evidence chain {_chain_words(chain_id)}, {record_label(record)}"
    signed_sequence = record.get("sequence") if isinstance(record, dict) else None
    if signed_sequence != row["sequence"]:
        raise Break(f"{where}: the stored sequence column ({row['sequence']}) differs from "
                    f"the signed sequence ({signed_sequence!s:.20}): records were renumbered")
    try:
        record_hash = verifier.check(record)
    except EvidenceBreak as exc:
        raise Break(f"{where}: {exc.description}") from None
    if verifier.chain_id != chain_id:
        raise Break(f"{where}: stored in chain {chain_id} but belongs to {verifier.chain_id}")
    kind = kind_of(record)
    stored = {
        "sequence": record["sequence"],
        "kind": kind.value,
        "record_id": record[ID_MEMBERS[kind]],
        "record_hash": record_hash,
        "prev_hash": record["prev_hash"],
    }
    for column, expected in stored.items():
        if row[column] != expected:
            raise Break(f"{where}: the stored {column} column differs from the signed record")


def _check_head(chain_id: str, verifier: ChainVerifier,
                heads: Mapping[str, rows.ChainHead]) -> None:
    head = heads.get(chain_id)
    words = f"evidence chain {_chain_words(chain_id)}"
    if head is None:
        raise Break(f"{words} has no chain head")
    if head.last_sequence != verifier.last_sequence:
        raise Break(f"{words}: its head names record {head.last_sequence} but the chain ends "
                    f"at record {verifier.last_sequence} (records were removed from its end)")
    if head.last_hash != verifier.last_hash:
        raise Break(f"{words}: its head hash does not match record {verifier.last_sequence}")


def _chain_words(chain_id: str) -> str:
    if chain_id.startswith(rows.UNBOUND_CHAIN_PREFIX):
        return f"of emitter {chain_id.removeprefix(rows.UNBOUND_CHAIN_PREFIX)}"
    return f"of mission {chain_id}"
