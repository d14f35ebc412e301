"""Adversarial attacks on clipwatch's video classifiers, in pixel space ``[0, 1]``: framing, FGSM, PGD, storage.

All attacks take pixel clips ``(B, C, T, H, W)`` and a ``normalize`` callable (e.g. :class:`Normalize` built from
the model manifest) that maps them to model input; they return pixel clips on the 8-bit grid by default. The
adaptive ones (:mod:`pipeline.attacks.adaptive`) also know the detector bundle and push its score up.
"""

from pipeline.attacks.adaptive import (
    DetectorAwareObjective,
    framing_adaptive,
    framing_adaptive_universal,
    pgd_adaptive,
)
from pipeline.attacks.common import Normalize
from pipeline.attacks.errors import AttackError
from pipeline.attacks.frame import AdversarialFrame, scaled_frame_width
from pipeline.attacks.framing import FramingAttack, blackbox_framing
from pipeline.attacks.gradient import fgsm, pgd
from pipeline.attacks.io import from_uint8, load_attacked_clips, save_attacked_clips, to_uint8

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
