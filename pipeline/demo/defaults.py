"""Where the demo's shipped inputs live (light: naming them imports nothing heavy, for the command's parser)."""

from __future__ import annotations

from pathlib import Path

import pipeline

ASSETS = Path(pipeline.__file__).resolve().parent / "assets"
DEFAULT_BUNDLE = ASSETS / "bundles" / "default"
DEFAULT_FRAME = ASSETS / "frames" / "default.safetensors"
