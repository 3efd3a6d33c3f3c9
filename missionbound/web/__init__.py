"""FastAPI assembly: :func:`missionbound.web.app.create_app` builds the HTTP application."""

from missionbound.web.app import create_app

__all__ = ["create_app"]
