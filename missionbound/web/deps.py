"""Typed access to what :func:`~missionbound.web.app.create_app` was given, for handlers'
``Depends``. The app holds its collaborators in ``app.state``; nothing is module-global."""

from __future__ import annotations

from typing import cast

from fastapi import Request
from sqlalchemy import Engine

from missionbound.config import Settings
from missionbound.tenant import Tenant


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_tenant(request: Request) -> Tenant:
    return cast(Tenant, request.app.state.tenant)


def get_engine(request: Request) -> Engine:
    return cast(Engine, request.app.state.engine)
