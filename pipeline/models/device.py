"""Where a model runs: a device name checked against this machine before any model or data is loaded.

``resolve_device("cuda")`` on a machine without CUDA raises a one-line :class:`ModelError` naming why (this
torch build has no CUDA support, no device is visible, or the index is too high), so a command or a worker
asked for an accelerator it cannot have fails at once rather than after minutes of decoding. Densities and
calibration always run on the CPU in float64; only the backbone's forward (and backward, for attacks) moves.
"""

from __future__ import annotations

import re

import torch

from pipeline.models.errors import ModelError

DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?|mps)$"
"""Device names clipwatch accepts (``cpu``, ``cuda``, ``cuda:N``, ``mps``); also the config's ``classifier.device``."""


def resolve_device(name: str | torch.device, *, source: str = "device") -> torch.device:
    """The torch device ``name`` names, once it is known to be usable here; ``source`` prefixes the error message.

    Raises :class:`ModelError` (one line) for a malformed name, or a device this machine or torch build lacks.
    """
    text = str(name).strip()
    where = f"{source} {text}" if text else source
    if not re.match(DEVICE_PATTERN, text):
        raise ModelError(f"{where}: not a device; expected cpu, cuda, cuda:N or mps")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            why = ("no MPS device on this machine" if torch.backends.mps.is_built()
                   else f"this torch {torch.__version__} has no MPS support")
            raise ModelError(f"{where}: MPS is not available ({why})")
        return torch.device("mps")
    if not torch.backends.cuda.is_built():
        raise ModelError(f"{where}: CUDA is not available (this torch {torch.__version__} has no CUDA support)")
    if not torch.cuda.is_available():
        raise ModelError(f"{where}: CUDA is not available (no CUDA device visible)")
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ModelError(f"{where}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return device
