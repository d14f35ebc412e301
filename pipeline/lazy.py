"""Lazy package exports: a package's public names load their submodule on first use.

``clipwatch --help`` and light commands (``alerts``, ``console``) should not pay for torch, scikit-learn, SciPy and
matplotlib, which the packages below them would otherwise import as soon as any of their submodules is named.
A package lists where each public name lives and hands the result to :func:`lazy_exports` (PEP 562)::

    __getattr__, __dir__ = lazy_exports(__name__, {"train": "trainer", "TrainConfig": "config"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to the submodule (relative to
    the package) that defines it; the first access imports it and caches the value on the package."""
    exports = dict(exports)

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
