"""Lazy package exports (PEP 562): a package names what it exports and where from, and a name's module is
imported on first use, so importing the package (or one module of it) stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for ``{module: names}`` (modules
    absolute, or relative to ``package``): ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later look-ups find it without __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(getattr(sys.modules[package], "__all__", where))

    return __getattr__, __dir__
