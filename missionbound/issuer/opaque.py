"""Opaque credentials: authorization codes, refresh tokens, ``request_uri`` values.

The AS hands out random values. Codes and refresh tokens are kept only as hashes, so a read
of the database (a backup, a replica) yields nothing a client could redeem; a ``request_uri``
is stored as is (it is bound to its client and grants nothing by itself).
"""

from __future__ import annotations

import base64
import hashlib
import secrets

# 256 bits: RFC 6749 section 10.10 asks for at most 2^-128 guessing odds; this is far below.
_RANDOM_BYTES = 32


def new_opaque_value() -> str:
    return secrets.token_urlsafe(_RANDOM_BYTES)


def opaque_hash(value: str) -> str:
    """What the store keeps for ``value``: ``sha256:`` + base64url (no padding)."""
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
