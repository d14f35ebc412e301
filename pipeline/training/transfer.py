"""Start a training run from other weights: a clipwatch model (shipped or trained), or a checkpoint of another code base.

``init`` names where the weights come from:

- ``scratch``: none (the model's own initialisation);
- a shipped model's name (``default``) or a clipwatch model folder (``model.json`` + ``model.safetensors``): its
  architecture, options and preprocessing become the run's, so its features mean what they meant there; except
  the input size and frame step of a 3D ResNet (its global pooling takes any size and duration: the run's preset or
  options choose them) and how frames are fitted to the input (``fit``);
- a checkpoint file: ``.safetensors``, or a PyTorch file (``.pth``/``.pt``/``.tar``) read with
  ``torch.load(weights_only=True)`` (no code runs), such as Hara et al.'s 3D-ResNets
  (``{"state_dict": {"module.conv1.weight": ...}, ...}``); the run's ``--model``/``--width`` must match it;
- ``pytorchvideo:NAME`` or ``pytorchvideo:NAME:CHECKPOINT``: a pytorchvideo hub model
  (:mod:`pipeline.models.pytorchvideo`, extra ``clipwatch[pytorchvideo]``) with the hub's input, from its own
  initialisation or from a local checkpoint file read as above.

Every tensor but the classification head's is copied, and must fit the new model exactly (a mismatch is refused
with the first differing name and shape); the head is left freshly initialised, since the user's classes are not
the checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.models import ModelManifest, build_model, load_model, resolve_model_dir
from pipeline.models.errors import ModelNotFoundError
from pipeline.models.io import load_state_dict_file, load_weights
from pipeline.models.pytorchvideo import HUB
from pipeline.training.errors import TrainingError

SCRATCH = "scratch"
PYTORCHVIDEO = "pytorchvideo:"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors")
MANIFEST_FIELDS = ("clip_len", "mean", "std")
"""Preprocessing a run takes over from a clipwatch model it starts from. Not ``fit``: how much of a frame the model
sees is the run's choice (its preset or ``--fit``), and fine-tuning adapts the backbone to it."""
INPUT_SIZE_FIELDS = ("short_side", "crop")
"""Taken over too, unless the architecture pools globally (`SIZE_FREE_ARCHITECTURES`): there the run's input size
stands, since the user's data decides how many pixels its actors need."""
STEP_FIELD = "frame_step"
"""Taken over on the same terms: a 3D ResNet pools over time too, so how much time a clip spans is the run's choice."""
SIZE_FREE_ARCHITECTURES = ("r3d-",)
"""Name prefixes of architectures whose features do not depend on the input's size (3D ResNets: global pooling)."""


@dataclass(frozen=True)
class Initialisation:
    """Weights to start from: their `source`, the tensors by name, and the manifest of a clipwatch model."""

    source: str
    state: dict[str, torch.Tensor]
    manifest: ModelManifest | None = None
    fields: dict[str, Any] | None = None
    """Training settings the weights fix (architecture, options, input) when they come without a manifest."""


def read_init(init: str) -> Initialisation | None:
    """The weights `init` names (see the module docstring); None for ``scratch``. TrainingError if unusable."""
    if init == SCRATCH:
        return None
    if init.startswith(PYTORCHVIDEO):
        return _read_hub_init(init)
    path = Path(init).expanduser()
    if path.is_file() or path.suffix in CHECKPOINT_SUFFIXES:
        return Initialisation(str(path), load_state_dict_file(path))
    try:
        model, manifest = load_model(resolve_model_dir(init))
    except ModelNotFoundError as error:
        raise TrainingError(f"--init {init}: not a checkpoint file, a model folder or a shipped model ({error})") \
            from None
    return Initialisation(init, model.state_dict(), manifest)


def _read_hub_init(init: str) -> Initialisation:
    name, _, checkpoint = init[len(PYTORCHVIDEO):].partition(":")
    if name not in HUB:
        raise TrainingError(f"--init {init}: unknown pytorchvideo model {name!r}; available: {', '.join(HUB)}")
    state = load_state_dict_file(checkpoint) if checkpoint else build_model(name, 1).state_dict()
    prep = HUB[name].preprocessing()
    fields = {"model": name, "model_options": {}, **{key: list(v) if isinstance(v, tuple) else v
                                                     for key, v in prep.items()}}
    return Initialisation(init, state, fields=fields)


def head_name(model: nn.Module) -> str:
    """The module name of the model's classification head: its last Linear layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise TrainingError(f"{type(model).__name__} has no Linear classification head to re-initialise")
    return names[-1]


def transfer_weights(model: nn.Module, init: Initialisation) -> str:
    """Copy every tensor of `init` but the head's into `model` (WeightsError on any other mismatch); a summary."""
    head = head_name(model)
    load_weights(model, init.state, exclude=[f"{head}."])
    copied = sum(not name.startswith(f"{head}.") for name in init.state)
    return f"{copied} tensors from {init.source}, head {head!r} re-initialised"


def config_from_init(fields: dict[str, Any], init: Initialisation | None) -> dict[str, Any]:
    """Training settings with the architecture, options and preprocessing of the clipwatch model started from."""
    if init is not None and init.fields is not None:
        return {**fields, **init.fields}
    if init is None or init.manifest is None:
        return fields
    manifest = init.manifest
    prep = manifest.preprocessing
    taken = {"model": manifest.architecture, "model_options": dict(manifest.options)}
    taken.update({name: getattr(prep, name) for name in MANIFEST_FIELDS})
    taken.update(fixed_input_size(init) or {})
    if not manifest.architecture.startswith(SIZE_FREE_ARCHITECTURES):
        taken[STEP_FIELD] = prep.frame_step
    return {**fields, **{name: list(value) if isinstance(value, tuple) else value for name, value in taken.items()}}


def fixed_input_size(init: Initialisation | None) -> dict[str, int] | None:
    """``{"short_side": .., "crop": ..}`` that the weights of `init` require (a pytorchvideo hub model, a C3D), or None
    where the run chooses (scratch, a 3D ResNet, a bare checkpoint file: the run's ``--model`` decides)."""
    if init is None:
        return None
    if init.fields is not None:
        return {name: init.fields[name] for name in INPUT_SIZE_FIELDS}
    if init.manifest is None or init.manifest.architecture.startswith(SIZE_FREE_ARCHITECTURES):
        return None
    return {name: getattr(init.manifest.preprocessing, name) for name in INPUT_SIZE_FIELDS}


def input_change(init: Initialisation | None, config_fields: dict[str, Any]) -> str | None:
    """A line saying how the run's input differs from the clipwatch model it starts from (size, fit, frame step), or
    None."""
    if init is None or init.manifest is None:
        return None
    prep = init.manifest.preprocessing
    before = (prep.crop, prep.fit, prep.frame_step)
    after = (config_fields["crop"], config_fields.get("fit", "crop"), config_fields[STEP_FIELD])
    if before == after:
        return None
    return (f"{init.source} was trained on {before[0]}x{before[0]} inputs ({before[1]}, frame step {before[2]}); "
            f"this run uses {after[0]}x{after[0]} ({after[1]}, frame step {after[2]}), and fine-tuning adapts the "
            "backbone to them")
