"""Level 4 runtime: compiled policy artifacts, metering counters and reservations,
idempotency claims (PROFILE.md section 12, runtime-digest sections 4.6 and 7).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Only ``policy_artifacts`` references ``missions``: it is written in the approval transaction,
which holds the Mission row already. The PDP's per-decision tables have no foreign key, so a
permit never waits for the key-share lock behind a lifecycle transition (store/models.py).

Self-contained on purpose (no import of the models), like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
MISSION_ID = sa.String(length=128)
DIGEST = sa.String(length=128)
ID = sa.String(length=255)


def upgrade() -> None:
    op.create_table(
        "policy_artifacts",
        sa.Column("mission_id", MISSION_ID, nullable=False),
        sa.Column("policy_version", DIGEST, nullable=False),
        sa.Column("artifact", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["mission_id"],
            ["missions.mission_id"],
            name=op.f("fk_policy_artifacts_mission_id_missions"),
        ),
        sa.PrimaryKeyConstraint("mission_id", "policy_version", name=op.f("pk_policy_artifacts")),
    )
    op.create_table(
        "meter_counters",
        sa.Column("mission_id", MISSION_ID, nullable=False),
        sa.Column("entry_digest", DIGEST, nullable=False),
        sa.Column("bound", sa.String(length=32), nullable=False),
        sa.Column("limit_value", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("used", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "mission_id", "entry_digest", "bound", name=op.f("pk_meter_counters")
        ),
    )
    op.create_table(
        "meter_reservations",
        sa.Column("evaluation_id", ID, nullable=False),
        sa.Column("entry_digest", DIGEST, nullable=False),
        sa.Column("bound", sa.String(length=32), nullable=False),
        sa.Column("mission_id", MISSION_ID, nullable=False),
        sa.Column("amount", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("lease_until", TIMESTAMP, nullable=False),
        sa.Column("settled_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint(
            "evaluation_id", "entry_digest", "bound", name=op.f("pk_meter_reservations")
        ),
    )
    op.create_index(
        op.f("ix_meter_reservations_mission_id"), "meter_reservations", ["mission_id"],
        unique=False,
    )
    op.create_table(
        "idempotency_claims",
        sa.Column("mission_id", MISSION_ID, nullable=False),
        sa.Column("scope_digest", DIGEST, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("operation_digest", DIGEST, nullable=False),
        sa.Column("evaluation_id", ID, nullable=False),
        sa.Column("permit", sa.String(), nullable=False),
        sa.Column("valid_until", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "mission_id", "scope_digest", "idempotency_key", name=op.f("pk_idempotency_claims")
        ),
    )
    op.create_index(
        op.f("ix_idempotency_claims_expires_at"), "idempotency_claims", ["expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_claims_expires_at"), table_name="idempotency_claims")
    op.drop_table("idempotency_claims")
    op.drop_index(op.f("ix_meter_reservations_mission_id"), table_name="meter_reservations")
    op.drop_table("meter_reservations")
    op.drop_table("meter_counters")
    op.drop_table("policy_artifacts")
