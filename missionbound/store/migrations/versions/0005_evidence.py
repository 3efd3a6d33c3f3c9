"""Runtime evidence: signed Decision Evidence, Refusal Records and Execution Evidence,
hash-linked per Mission (runtime-digest sections 5.1-5.5), and the head of each chain.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

No foreign key to ``missions``: a record is written in the decision's transaction, and on
PostgreSQL a referencing insert would wait behind any lifecycle transaction holding the
Mission row (store/models.py). Refusals may name a Mission that is not stored at all.

Self-contained on purpose (no import of the models), like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CHAIN = sa.String(length=300)
DIGEST = sa.String(length=128)


def upgrade() -> None:
    op.create_table(
        "evidence_records",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("chain_id", CHAIN, nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=True),
        sa.Column("evaluation_id", sa.String(length=255), nullable=True),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("record_hash", DIGEST, nullable=False),
        sa.Column("prev_hash", DIGEST, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence_records")),
        sa.UniqueConstraint(
            "chain_id", "sequence", name=op.f("uq_evidence_records_chain_id_sequence")
        ),
        sa.UniqueConstraint("record_id", name=op.f("uq_evidence_records_record_id")),
    )
    op.create_index(
        op.f("ix_evidence_records_evaluation_id"), "evidence_records", ["evaluation_id"],
        unique=False,
    )
    op.create_table(
        "evidence_chain_heads",
        sa.Column("chain_id", CHAIN, nullable=False),
        sa.Column("last_sequence", sa.Integer(), nullable=False),
        sa.Column("last_hash", DIGEST, nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_evidence_chain_heads")),
    )


def downgrade() -> None:
    op.drop_table("evidence_chain_heads")
    op.drop_index(op.f("ix_evidence_records_evaluation_id"), table_name="evidence_records")
    op.drop_table("evidence_records")
