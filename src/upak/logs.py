"""Logging: one line per event, JSON in production, and no secret in any line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from upak.config import Settings


class RedactSecrets(logging.Filter):
    """Replaces every configured secret in a record's final text (belt and braces)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            redacted = text
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != text:
                record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(entry, ensure_ascii=False)


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def secrets_of(settings: Settings) -> list[str]:
    found = [settings.redis.password or ""]
    if settings.redis_password:
        found.append(settings.redis_password.get_secret_value())
    if settings.webhook_secret:
        found.extend(settings.webhook_secret.get_secret_value().split(","))
    return [s.strip() for s in found if s.strip()]


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.production:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger("upak")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False


def uvicorn_log_config(settings: Settings) -> dict[str, object] | None:
    """In production uvicorn's own lines are JSON too; in development its defaults stay."""
    if not settings.production:
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "upak.logs.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            name: {"handlers": ["default"], "level": settings.log_level, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
