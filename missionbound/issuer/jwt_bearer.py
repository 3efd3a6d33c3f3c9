"""GROUNDWORK: replaced by the helper that owns this module (see /work/plan/issue5.md)."""

from __future__ import annotations

from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin

from missionbound.issuer.clients import JWT_BEARER


class IdJagBearerGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = JWT_BEARER
