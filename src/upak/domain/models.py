"""Users. Plans, payments and subscriptions live in their own modules beside this one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from upak.domain.db import Base
from upak.domain.emails import email_key


def _email_key_of_row(context: Any) -> str:
    # Rows made without a key (fixtures, scripts) still get the identity their email has.
    return email_key(context.get_current_parameters()["email"])


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # As the user spelled it (shown back); `email_key`, its case-folded form, is the identity.
    email: Mapped[str] = mapped_column(String(320), index=True)
    email_key: Mapped[str] = mapped_column(
        String(320), unique=True, index=True, default=_email_key_of_row
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Filled by payments (the webhooks issue): the current plan and when it runs out.
    plan: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    subscription_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=None
    )

    def __repr__(self) -> str:  # no hash, no email in reprs that reach logs
        return f"User(id={self.id})"
