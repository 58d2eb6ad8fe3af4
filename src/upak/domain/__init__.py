"""The domain: users, plans, payments and subscriptions, in a relational database."""

from __future__ import annotations

import importlib
import pkgutil

# Modules that hold no tables and pull in what a migration does not need.
_NOT_MODELS = frozenset({"cli", "migrations"})


def import_models() -> None:
    """Import every module of `upak.domain`, so every table is on `Base.metadata`.

    Alembic's env.py calls this: a module that defines a table needs no registration to be
    seen by migrations and autogenerate.
    """
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_MODELS:
            importlib.import_module(f"{__name__}.{module.name}")
