"""ONNX export of a bundle's classifier, tapped layers included, and scoring it with ONNX Runtime.

``export_bundle(BUNDLE, DIR)`` (``clipwatch export``) writes a self-contained, sealed folder; ``OnnxDetector.load(DIR)``
scores clips from it like :class:`pipeline.detect.Detector`. Both need the ``onnx`` extra
(``pip install 'clipwatch[onnx]'``), imported only when used.
"""

from pipeline.export.exporter import export_bundle
from pipeline.export.runtime import ExportError, OnnxDetector, read_export

__all__ = ["ExportError", "OnnxDetector", "export_bundle", "read_export"]
