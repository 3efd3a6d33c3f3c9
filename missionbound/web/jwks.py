"""``/jwks``: the AS's JWK Set (RFC 7517 section 5), the ``jwks_uri`` of its metadata
(RFC 8414 section 2). Public members only; see ``missionbound.issuer.keys``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from missionbound.issuer.keys import public_jwks
from missionbound.store.transactions import Store
from missionbound.web.deps import get_engine

router = APIRouter(tags=["discovery"])

JWKS_PATH = "/jwks"

# Short, and far below issuer.keys.RETIRED_KEY_PUBLISHED_FOR: a verifier's cached set
# still holds every key that signed a live token (a retired key stays published longer).
CACHE_MAX_AGE_S = 60


@router.get(JWKS_PATH, summary="JSON Web Key Set (RFC 7517)")
def jwks(engine: Annotated[Engine, Depends(get_engine)]) -> JSONResponse:
    # Sync handler: FastAPI runs it in the threadpool, off the event loop.
    key_set = public_jwks(Store(engine), datetime.now(UTC))
    return JSONResponse(key_set, headers={"Cache-Control": f"max-age={CACHE_MAX_AGE_S}"})
