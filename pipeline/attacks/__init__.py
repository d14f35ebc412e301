"""Adversarial attacks on clipwatch's video classifiers, in pixel space ``[0, 1]``: framing, FGSM, PGD, storage.

All attacks take pixel clips ``(B, C, T, H, W)`` and a ``normalize`` callable (e.g. :class:`Normalize` built from
the model manifest) that maps them to model input; they return pixel clips on the 8-bit grid by default. The
adaptive ones (:mod:`pipeline.attacks.adaptive`) also know the detector bundle and push its score up.
"""

from pipeline.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "DetectorAwareObjective": "adaptive",
    "framing_adaptive": "adaptive",
    "framing_adaptive_universal": "adaptive",
    "pgd_adaptive": "adaptive",
    "Normalize": "common",
    "AttackError": "errors",
    "AdversarialFrame": "frame",
    "scaled_frame_width": "frame",
    "FramingAttack": "framing",
    "blackbox_framing": "framing",
    "fgsm": "gradient",
    "pgd": "gradient",
    "from_uint8": "io",
    "load_attacked_clips": "io",
    "save_attacked_clips": "io",
    "to_uint8": "io",
})

__all__ = [
    "AdversarialFrame",
    "AttackError",
    "DetectorAwareObjective",
    "FramingAttack",
    "Normalize",
    "blackbox_framing",
    "fgsm",
    "framing_adaptive",
    "framing_adaptive_universal",
    "from_uint8",
    "load_attacked_clips",
    "pgd",
    "pgd_adaptive",
    "save_attacked_clips",
    "scaled_frame_width",
    "to_uint8",
]
