"""Cross-domain Missions: what a Resource AS learned of Missions held elsewhere, and issued
tokens of Missions that are not in this database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

``issued_tokens.mission_id`` loses its foreign key: a Resource AS records the local tokens it
mints for a Mission whose record lives at the origin (docs/cross-domain.md). The issuer
role still writes a token row only in the transaction whose derivation gate locked the
Mission row, so its rows always name a Mission of its own.

Self-contained on purpose (no import of the models), like 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("issued_tokens") as batch:
        batch.drop_constraint("fk_issued_tokens_mission_id_missions", type_="foreignkey")
    op.create_table(
        "remote_missions",
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("mission_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("mission_expiry", TIMESTAMP, nullable=True),
        sa.Column("checked_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("origin", "mission_id", name=op.f("pk_remote_missions")),
    )


def downgrade() -> None:
    op.drop_table("remote_missions")
    with op.batch_alter_table("issued_tokens") as batch:
        batch.create_foreign_key(
            "fk_issued_tokens_mission_id_missions", "missions", ["mission_id"], ["mission_id"]
        )
