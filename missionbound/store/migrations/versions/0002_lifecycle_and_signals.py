"""Lifecycle endpoint nonces and Shared Signals streams and deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Self-contained on purpose (no import of the models), like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "lifecycle_requests",
        sa.Column("caller", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("nonce", sa.String(length=255), nullable=False),
        sa.Column("request_digest", sa.String(length=128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "caller", "mission_id", "nonce", name=op.f("pk_lifecycle_requests")
        ),
    )
    op.create_index(
        op.f("ix_lifecycle_requests_expires_at"), "lifecycle_requests", ["expires_at"]
    )
    op.create_table(
        "ssf_streams",
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("audience", sa.String(length=2048), nullable=False),
        sa.Column("delivery_method", sa.String(length=64), nullable=False),
        sa.Column("endpoint_url", sa.String(length=2048), nullable=True),
        sa.Column("authorization_header", sa.String(length=4096), nullable=True),
        sa.Column("events_requested", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=1024), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_ssf_streams")),
    )
    op.create_index(op.f("ix_ssf_streams_client_id"), "ssf_streams", ["client_id"])
    op.create_table(
        "ssf_deliveries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["ssf_streams.stream_id"],
            name=op.f("fk_ssf_deliveries_stream_id_ssf_streams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ssf_deliveries")),
        sa.UniqueConstraint("jti", name=op.f("uq_ssf_deliveries_jti")),
    )
    op.create_index(
        op.f("ix_ssf_deliveries_stream_id_delivered_at_id"),
        "ssf_deliveries",
        ["stream_id", "delivered_at", "id"],
    )


def downgrade() -> None:
    op.drop_table("ssf_deliveries")
    op.drop_table("ssf_streams")
    op.drop_table("lifecycle_requests")
