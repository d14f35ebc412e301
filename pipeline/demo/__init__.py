"""The demo: simulated cameras (normal, novel activity, adversarial frame) through the pipeline, with a report."""

from pipeline.lazy import lazy_exports

__all__ = ["CAMERAS", "DEFAULT_BUNDLE", "DEFAULT_FRAME", "paint_frame", "run_demo", "write_feeds", "write_lossless"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "CAMERAS": "feeds", "paint_frame": "feeds", "write_feeds": "feeds", "write_lossless": "feeds",
    "DEFAULT_BUNDLE": "defaults", "DEFAULT_FRAME": "defaults", "run_demo": "run"})
