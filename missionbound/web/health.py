"""``/healthz``: is this replica able to serve? It is if its database answers."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from missionbound.store.engine import read_only_engine
from missionbound.web.deps import get_engine

log = structlog.get_logger("missionbound.web")

router = APIRouter(tags=["operations"])


def database_answers(engine: Engine) -> bool:
    try:
        # DEFERRED on SQLite: a probe must not queue behind (or block) a writer.
        with read_only_engine(engine).connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("healthz_database_unavailable", error=type(exc).__name__, detail=str(exc))
        return False
    return True


@router.get(
    "/healthz",
    summary="Liveness and readiness",
    responses={503: {"description": "the database does not answer"}},
)
def healthz(engine: Annotated[Engine, Depends(get_engine)]) -> JSONResponse:
    # Sync handler: FastAPI runs it in the threadpool, so a slow database never blocks the loop.
    ok = database_answers(engine)
    body: dict[str, Any] = {
        "status": "ok" if ok else "unavailable",
        # The reason stays in the log: database errors can name hosts and users.
        "checks": {"database": "ok" if ok else "unavailable"},
    }
    return JSONResponse(body, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})
