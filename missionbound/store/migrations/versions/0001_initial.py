"""Initial schema: every table of missionbound.store.models.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Self-contained on purpose (no import of the models): a migration must keep producing the
schema it produced when it was written, whatever the models become later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# missionbound.store.column_types: UTC timestamps, 64-bit ids that are rowids on SQLite.
TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=True),
        sa.Column("mission_seq", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.JSON(), nullable=True),
        sa.Column("proposal_hash", sa.String(length=128), nullable=True),
        sa.Column("consent_rendering_hash", sa.String(length=128), nullable=True),
        sa.Column("authority_hash", sa.String(length=128), nullable=True),
        sa.Column("policy_version", sa.String(length=255), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("prev_hash", sa.String(length=128), nullable=True),
        sa.Column("mission_prev_hash", sa.String(length=128), nullable=True),
        sa.Column("record_hash", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_records")),
        sa.UniqueConstraint(
            "mission_id", "mission_seq", name=op.f("uq_audit_records_mission_id_mission_seq")
        ),
    )
    op.create_index(
        op.f("ix_audit_records_mission_id_event_mission_seq"),
        "audit_records",
        ["mission_id", "event", "mission_seq"],
        unique=False,
    )
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_clients")),
    )
    op.create_table(
        "missions",
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("subject_sub", sa.String(length=255), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("mission_expiry", TIMESTAMP, nullable=False),
        sa.Column("activated_at", TIMESTAMP, nullable=True),
        sa.Column("approval_event_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("mission_id", name=op.f("pk_missions")),
        sa.UniqueConstraint("approval_event_id", name=op.f("uq_missions_approval_event_id")),
    )
    op.create_index(op.f("ix_missions_client_id"), "missions", ["client_id"], unique=False)
    op.create_index(
        op.f("ix_missions_state_mission_expiry"),
        "missions",
        ["state", "mission_expiry"],
        unique=False,
    )
    op.create_index(op.f("ix_missions_subject_sub"), "missions", ["subject_sub"], unique=False)
    op.create_table(
        "outbox_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    op.create_index(
        op.f("ix_outbox_events_delivered_at_next_attempt_at"),
        "outbox_events",
        ["delivered_at", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_outbox_events_mission_id"), "outbox_events", ["mission_id"], unique=False
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=255), nullable=False),
        sa.Column("alg", sa.String(length=16), nullable=False),
        sa.Column("private_jwk", sa.JSON(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("retired_at", TIMESTAMP, nullable=True),
        sa.Column("not_after", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "single_use_ids",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "value", name=op.f("pk_single_use_ids")),
    )
    op.create_index(
        op.f("ix_single_use_ids_expires_at"), "single_use_ids", ["expires_at"], unique=False
    )
    op.create_table(
        "authorization_codes",
        sa.Column("code_hash", sa.String(length=128), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2048), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("dpop_jkt", sa.String(length=128), nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("used_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_authorization_codes_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_authorization_codes")),
    )
    op.create_index(
        op.f("ix_authorization_codes_mission_id"),
        "authorization_codes",
        ["mission_id"],
        unique=False,
    )
    op.create_table(
        "derivation_counters",
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_derivation_counters_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("mission_id", name=op.f("pk_derivation_counters")),
    )
    op.create_table(
        "issued_tokens",
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("aud", sa.JSON(), nullable=True),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("grant_id", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_issued_tokens_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_issued_tokens")),
    )
    op.create_index(
        op.f("ix_issued_tokens_mission_id"), "issued_tokens", ["mission_id"], unique=False
    )
    op.create_index(
        op.f("ix_issued_tokens_grant_id"), "issued_tokens", ["grant_id"], unique=False
    )
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_secrets")),
    )
    op.create_table(
        "mission_history",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.JSON(), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("committed_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_mission_history_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mission_history")),
        sa.UniqueConstraint(
            "mission_id", "version", name=op.f("uq_mission_history_mission_id_version")
        ),
    )
    op.create_table(
        "pushed_authorization_requests",
        sa.Column("request_uri", sa.String(length=512), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("consumed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_pushed_authorization_requests_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("request_uri", name=op.f("pk_pushed_authorization_requests")),
    )
    op.create_index(
        op.f("ix_pushed_authorization_requests_client_id"),
        "pushed_authorization_requests",
        ["client_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_pushed_authorization_requests_mission_id"),
        "pushed_authorization_requests",
        ["mission_id"],
        unique=False,
    )
    op.create_table(
        "refresh_token_families",
        sa.Column("family_id", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("dpop_jkt", sa.String(length=128), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_refresh_token_families_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("family_id", name=op.f("pk_refresh_token_families")),
    )
    op.create_index(
        op.f("ix_refresh_token_families_mission_id"),
        "refresh_token_families",
        ["mission_id"],
        unique=False,
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("family_id", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("dpop_jkt", sa.String(length=128), nullable=True),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("rotated_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["family_id"],
            ["refresh_token_families.family_id"],
            name=op.f("fk_refresh_tokens_family_id_refresh_token_families"),
        ),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_refresh_tokens_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index(
        op.f("ix_refresh_tokens_family_id"), "refresh_tokens", ["family_id"], unique=False
    )
    op.create_index(
        op.f("ix_refresh_tokens_mission_id"), "refresh_tokens", ["mission_id"], unique=False
    )

    # The audit chain head is a single row that appenders lock (missionbound.audit.log).
    op.bulk_insert(
        sa.table(
            "audit_chain_head",
            sa.column("id", sa.Integer()),
            sa.column("last_seq", sa.BigInteger()),
            sa.column("last_hash", sa.String()),
        ),
        [{"id": 1, "last_seq": 0, "last_hash": None}],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_refresh_tokens_mission_id"), table_name="refresh_tokens")
    op.drop_index(op.f("ix_refresh_tokens_family_id"), table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index(op.f("ix_refresh_token_families_mission_id"), table_name="refresh_token_families")
    op.drop_table("refresh_token_families")
    op.drop_index(
        op.f("ix_pushed_authorization_requests_mission_id"),
        table_name="pushed_authorization_requests",
    )
    op.drop_index(
        op.f("ix_pushed_authorization_requests_client_id"),
        table_name="pushed_authorization_requests",
    )
    op.drop_table("pushed_authorization_requests")
    op.drop_table("mission_history")
    op.drop_table("server_secrets")
    op.drop_index(op.f("ix_issued_tokens_grant_id"), table_name="issued_tokens")
    op.drop_index(op.f("ix_issued_tokens_mission_id"), table_name="issued_tokens")
    op.drop_table("issued_tokens")
    op.drop_table("derivation_counters")
    op.drop_index(op.f("ix_authorization_codes_mission_id"), table_name="authorization_codes")
    op.drop_table("authorization_codes")
    op.drop_index(op.f("ix_single_use_ids_expires_at"), table_name="single_use_ids")
    op.drop_table("single_use_ids")
    op.drop_table("signing_keys")
    op.drop_index(op.f("ix_outbox_events_mission_id"), table_name="outbox_events")
    op.drop_index(op.f("ix_outbox_events_delivered_at_next_attempt_at"), table_name="outbox_events")
    op.drop_table("outbox_events")
    op.drop_index(op.f("ix_missions_subject_sub"), table_name="missions")
    op.drop_index(op.f("ix_missions_state_mission_expiry"), table_name="missions")
    op.drop_index(op.f("ix_missions_client_id"), table_name="missions")
    op.drop_table("missions")
    op.drop_table("clients")
    op.drop_index(
        op.f("ix_audit_records_mission_id_event_mission_seq"), table_name="audit_records"
    )
    op.drop_table("audit_records")
    op.drop_table("audit_chain_head")
