"""Packages export their public names lazily (pipeline.lazy): every name resolves, and naming a package is cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY = ("pipeline.attacks", "pipeline.density", "pipeline.detect", "pipeline.evaluation", "pipeline.models",
        "pipeline.training")


@pytest.mark.parametrize("name", LAZY)
def test_every_public_name_resolves_and_is_listed(name):
    package = importlib.import_module(name)
    for public in package.__all__:
        value = getattr(package, public)
        assert getattr(package, public) is value  # cached on the package after the first access
        assert public in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        package.not_there  # noqa: B018


def test_naming_the_packages_imports_none_of_the_heavy_libraries():
    probe = (f"import sys\nimport {', '.join(LAZY)}\n"
             "print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]"], out.stderr


def test_a_lazy_name_is_the_object_its_module_defines():
    from pipeline.density.registry import DENSITY_TYPES
    from pipeline.detect.detector import Detector

    assert importlib.import_module("pipeline.detect").Detector is Detector
    assert importlib.import_module("pipeline.density").DENSITY_TYPES is DENSITY_TYPES
