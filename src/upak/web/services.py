"""What a running app holds: settings, the store, and the features built on them.

Built once per app in `create_app` and reached by routes through `request.app.state.services`
(see `get_services`), so tests can build apps with any configuration side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from upak.config import Settings
from upak.store import FailoverStore, KeySpace
from upak.web.metrics import Metrics


@dataclass
class Services:
    settings: Settings
    store: FailoverStore
    metrics: Metrics
    clock: Callable[[], float] = time.time
    keys: KeySpace = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeySpace(self.settings.redis_key_prefix)


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]
