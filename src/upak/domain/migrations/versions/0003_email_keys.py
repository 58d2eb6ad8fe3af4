"""email keys: identity is the case-folded address, the user's spelling stays for display

Revision ID: 0003_email_keys
Revises: 0002_payments
Create Date: 2026-12-02

Existing rows get `email_key = casefold(trimmed email)`. Rows that differ only in case (two
accounts for `Alice@x` and `alice@x`, which the old rules allowed) cannot share a key: the
oldest account keeps it, each later one gets an unmatchable key (` duplicate <id> <key>`:
keys never start with a space), so it cannot log in by email until an operator merges or
renames it. Their ids are logged (never the addresses).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_email_keys"
down_revision: str | None = "0002_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def _key(email: str) -> str:
    # Frozen copy of upak.domain.emails.email_key as of this revision.
    return email.strip().casefold()


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email_key", sa.String(length=320), nullable=True))
    connection = op.get_bind()
    users = sa.table("users", sa.column("id"), sa.column("email"), sa.column("email_key"))
    taken: set[str] = set()
    duplicates: list[int] = []
    rows = connection.execute(sa.select(users.c.id, users.c.email).order_by(users.c.id)).all()
    for user_id, email in rows:
        key = _key(email)
        if key in taken:
            duplicates.append(user_id)
            key = f" duplicate {user_id} {key}"[:320]
        taken.add(key)
        connection.execute(users.update().where(users.c.id == user_id).values(email_key=key))
    if duplicates:
        log.warning(
            "users %s share an email (up to case) with an older account: they cannot log "
            "in by email until merged or renamed",
            ", ".join(map(str, duplicates)),
        )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("email_key", existing_type=sa.String(length=320), nullable=False)
        batch.drop_index("ix_users_email")
        batch.create_index("ix_users_email", ["email"], unique=False)
        batch.create_index("ix_users_email_key", ["email_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_email_key")
        batch.drop_index("ix_users_email")
        batch.create_index("ix_users_email", ["email"], unique=True)
        batch.drop_column("email_key")
