"""payments: a life (pending -> succeeded -> refunded, pending -> canceled)

Adds when a row last changed and which refund took it back, and an index for reconciliation
(pending rows by age). Rows written before this revision were all succeeded payments (only
those were recorded); any other status they carry is normalised to `succeeded`.

Revision ID: 0004_payment_lifecycle
Revises: 0003_email_keys
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_payment_lifecycle"
down_revision = "0003_email_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("refund_id", sa.String(64), nullable=True))
    op.execute(
        "UPDATE payments SET status = 'succeeded' "
        "WHERE status NOT IN ('pending', 'succeeded', 'canceled', 'refunded')"
    )
    op.execute("UPDATE payments SET updated_at = created_at WHERE updated_at IS NULL")
    op.create_index("ix_payments_status", "payments", ["status"])


def downgrade() -> None:
    op.drop_index("ix_payments_status", table_name="payments")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("refund_id")
        batch.drop_column("updated_at")
