"""Structured JSON logs (structlog), one object per line on stderr.

stderr, so that commands printing data (``mission list --json``) keep stdout clean. Records
from the standard library (uvicorn, SQLAlchemy, Alembic) are rendered by the same processors,
so every line a ``serve`` process writes is one JSON object.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Install the JSON log pipeline for this process. Called once by the CLI, never by
    :func:`~missionbound.web.app.create_app` (an app factory must not own global state)."""
    out = stream if stream is not None else sys.stderr
    numeric = _LEVELS[level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[Any] = [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Our own loggers write straight to the stream: no stdlib hop on the request path.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn installs its own handlers unless told otherwise; route through ours.
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # The request middleware writes one line per request; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every migration context at INFO; only its warnings matter to operators.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    # Per-request chatter at INFO that the request line already covers: the HTTP clients'
    # "HTTP Request: ..." (calls to this AS's own endpoints, JWKS, Mission Status) and the mcp
    # SDK's session manager starting and stopping once per stateless MCP request.
    for name in ("httpx", "httpx2", "mcp.server.streamable_http_manager"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
