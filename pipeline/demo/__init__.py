"""The demo: simulated cameras (normal, novel activity, adversarial frame) through the pipeline, with a report."""

from pipeline.demo.feeds import CAMERAS, paint_frame, write_feeds, write_lossless
from pipeline.demo.run import DEFAULT_BUNDLE, DEFAULT_FRAME, run_demo

__all__ = ["CAMERAS", "DEFAULT_BUNDLE", "DEFAULT_FRAME", "paint_frame", "run_demo", "write_feeds", "write_lossless"]
