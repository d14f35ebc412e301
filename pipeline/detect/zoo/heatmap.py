"""OOD heatmaps from a decoder over a fixed classifier's features (Hornauer et al., seed 002).

A small decoder reads the spatial feature maps of a few of the classifier's layers and its predicted class (and,
unlike the paper's, the clip's own pixels, for detail the classifier's coarse maps lack), and outputs one heatmap
per clip at the input's resolution, in ``[0, 1]``: zero where the clip looks like the training
data, high where it differs. The classifier is never changed. Its training pairs are

* in-distribution training clips, target 0 everywhere;
* the same clips after a generic local corruption (:func:`corrupt`), target the normalised difference to the
  clip it was made from, which is its closest in-distribution sample: ``d = mean_{c,t} |x' - x|``, divided by
  its maximum, so every corrupted clip's heatmap peaks at 1 where it was changed.

The corruptions are deliberately generic, never an attack or a test set: axis-aligned blocks and thin bars of random
size and position (uniform over the frame, or, one time in three, flush with one of its edges, where overlays,
banners and letterboxing sit) whose pixels are replaced by noise, a solid colour or another clip's content, or
shifted by low-amplitude noise, static or changing per frame.

A trained decoder still glows faintly all over in-distribution clips (actors' edges, textured scenes). After
training, the ``floor_quantile`` quantile of its per-pixel values over the training clips becomes the **floor**
``f``: heatmaps are reported as ``clip((h - f) / (1 - f), 0, 1)``, so a clip like the training data maps to (almost)
zero and what remains is the change. The raw maps stay available (``raw=True``).

The detector's score is ``-mean(heatmap)`` (higher = more in-distribution); :meth:`HeatmapDetector.heatmaps`
returns the maps themselves, ``(N, H, W)`` float32, for localisation and alert overlays.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from pipeline.detect.features import model_device
from pipeline.detect.zoo.base import ZooDetector, ZooError, check_positive, clip_batches

log = logging.getLogger(__name__)

DECODER_FORMAT = "clipwatch.heatmap-decoder"
DECODER_WEIGHTS = "decoder.safetensors"
DECODER_JSON = "decoder.json"
DECODER_FILES = (DECODER_WEIGHTS, DECODER_JSON)
FLOOR_PIXELS_PER_CLIP = 1024
"""Most pixels of one clip's heatmap that count towards the floor's quantile."""


def default_heatmap_layers(model: nn.Module, clip_shape: Sequence[int]) -> tuple[str, ...]:
    """The model's top-level convolutions and blocks whose outputs are 5-D maps at least 4 pixels wide, in order:
    ``conv1, layer1, layer2, layer3`` for the 3D ResNets at 80x80."""
    outputs: dict[str, tuple[int, ...]] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, tuple(out.shape)))
             for name, module in model.named_children()
             if isinstance(module, (nn.Conv3d, nn.Sequential))]
    try:
        with torch.inference_mode():
            model(torch.zeros((1, *clip_shape), device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return tuple(name for name, shape in outputs.items() if len(shape) == 5 and min(shape[-2:]) >= 4)


class HeatmapDecoder(nn.Module):
    """Feature maps ``[(B, C_l, T_l, H_l, W_l)]``, predicted classes ``(B,)`` and the model input
    ``(B, 3, T, H, W)`` -> heatmaps ``(B, H, W)``.

    Each map is summarised over time (mean and largest magnitude), projected to ``hidden`` channels and resized to
    the largest map; their sum and a per-class embedding pass two 3x3 convolutions and are upsampled to the input's
    size. There they meet a short convolutional branch over the input's own mean and deviation over time (the
    classifier's maps are too coarse, and its motion filters too blind to static texture, to place a change to
    the pixel), and a last convolution and a sigmoid give the heatmap.
    """

    def __init__(self, channels: Sequence[int], n_classes: int, size: tuple[int, int], hidden: int = 16) -> None:
        super().__init__()
        self.size = tuple(size)
        self.project = nn.ModuleList(nn.Conv2d(2 * c, hidden, 1) for c in channels)
        self.classes = nn.Embedding(n_classes, hidden)
        self.body = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.pixels = nn.Sequential(nn.Conv2d(6, hidden, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(2 * hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 1, 3, padding=1))
        nn.init.constant_(self.out[-1].bias, -4.0)  # start near an all-zero heatmap

    def forward(self, maps: Sequence[torch.Tensor], classes: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        flat = [torch.cat([m.float().mean(dim=2), m.float().abs().amax(dim=2)], dim=1) for m in maps]
        largest = max((f.shape[-2:] for f in flat), key=lambda s: s[0] * s[1])
        x = sum(F.interpolate(p(f), size=largest, mode="bilinear", align_corners=False)
                for p, f in zip(self.project, flat, strict=True))
        x = self.body(x + self.classes(classes)[:, :, None, None])
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        pixels = self.pixels(torch.cat(time_moments(inputs.float()), dim=1))
        return torch.sigmoid(self.out(torch.cat([x, pixels], dim=1)))[:, 0]


def time_moments(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation over time of ``(B, C, T, H, W)`` clips, each ``(B, C, H, W)``.

    ``Tensor.std(dim=2)`` reduces along a strided axis several times slower than this two-pass form.
    """
    mean = clips.mean(dim=2, keepdim=True)
    variance = (clips - mean).square().sum(dim=2) / max(clips.shape[2] - 1, 1)
    return mean[:, :, 0], variance.sqrt()


def corrupt(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``clips`` ``(B, 3, T, H, W)`` in ``[0, 1]`` with one random rectangle per clip changed (see the
    module docstring); the input is not modified."""
    out = clips.clone()
    b, _, t, h, w = clips.shape

    def draw(low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=generator))

    for i in range(b):
        rh = max(2, round(h * draw(0.05, 0.6)))
        rw = max(2, round(w * draw(0.05, 0.6)))
        if draw(0, 1) < 0.5:  # thin bars as often as blocks
            rh, rw = (max(2, round(h * draw(0.02, 0.1))), round(w * draw(0.3, 1.0))) if draw(0, 1) < 0.5 else \
                     (round(h * draw(0.3, 1.0)), max(2, round(w * draw(0.02, 0.1))))
        y = int(draw(0, h - rh + 1 - 1e-6))
        x = int(draw(0, w - rw + 1 - 1e-6))
        if draw(0, 1) < 1 / 3:  # flush with one edge, where overlays, banners and letterboxing sit
            side = int(draw(0, 4 - 1e-6))
            y, x = (0, x) if side == 0 else (h - rh, x) if side == 1 else (y, 0) if side == 2 else (y, w - rw)
        region = out[i, :, :, y:y + rh, x:x + rw]
        frames = t if draw(0, 1) < 0.5 else 1  # changing per frame, or static
        kind = int(draw(0, 4 - 1e-6))
        if kind == 0:
            fill = torch.rand((3, frames, rh, rw), generator=generator)
        elif kind == 1:
            fill = torch.rand((3, 1, 1, 1), generator=generator).expand(3, frames, rh, rw)
        elif kind == 2:
            other = clips[(i + 1 + int(draw(0, b - 1 - 1e-6))) % b] if b > 1 else clips[i].flip(-1)
            fill = other[:, :, y:y + rh, x:x + rw] if frames == t else other[:, :1, y:y + rh, x:x + rw]
        else:
            amplitude = draw(4, 32) / 255
            fill = (region[:, :frames] + amplitude * torch.randn((3, frames, rh, rw), generator=generator)).clamp(0, 1)
        region.copy_(fill.expand_as(region) if frames == 1 else fill)
    return out


def difference_target(clean: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """``mean_{c,t} |changed - clean|`` per pixel, divided by each clip's maximum (0 for an unchanged clip)."""
    diff = (changed - clean).abs().mean(dim=(1, 2))
    peak = diff.flatten(1).amax(dim=1).clamp_min(1e-6)
    return diff / peak[:, None, None]


class HeatmapDetector(ZooDetector):
    """Zoo detector ``heatmap``: trains a :class:`HeatmapDecoder` on training clips (``fit_clips``) and scores clips
    by ``-mean(heatmap)``. ``layers=None`` taps :func:`default_heatmap_layers`."""

    name = "heatmap"
    needs_clips = True
    needs_training_clips = True

    def __init__(self, layers: tuple[str, ...] | None = None, epochs: int = 10, lr: float = 3e-3, hidden: int = 16,
                 batch_size: int = 16, seed: int = 0, floor_quantile: float = 0.99) -> None:
        self.layers = layers
        self.epochs = epochs
        self.lr = lr
        self.hidden = hidden
        self.batch_size = batch_size
        self.seed = seed
        self.floor_quantile = floor_quantile

    @property
    def layer_used(self) -> str:
        return "maps"

    def _validate(self) -> None:
        for parameter in ("epochs", "hidden", "batch_size"):
            check_positive(self.name, parameter, getattr(self, parameter), integer=True)
        check_positive(self.name, "lr", self.lr)
        if not 0 <= self.floor_quantile < 1:
            raise ZooError(f"{self.name}: floor_quantile must be in [0, 1), got {self.floor_quantile!r}")
        if self.layers is not None and (isinstance(self.layers, str) or not self.layers):
            raise ZooError(f"{self.name}: layers must be a non-empty sequence of layer names or None")

    def fit_clips(self, model: nn.Module, clips: torch.Tensor | Callable[[], Iterable[torch.Tensor]],
                  normalize: Callable[[torch.Tensor], torch.Tensor]) -> HeatmapDetector:
        """Train the decoder for ``epochs`` passes over in-distribution clips ``(N, 3, T, H, W)`` in ``[0, 1]`` (or a
        callable returning an iterable of such batches, called once per pass); ``model`` in eval mode, unchanged."""
        self._validate()
        with torch.random.fork_rng(devices=[]):  # the decoder's initialisation is seeded; the caller's RNG is left alone
            torch.manual_seed(int(self.seed))
            self._train(model, clips, normalize, torch.Generator().manual_seed(int(self.seed)))
        return self.fit_floor(model, clips, normalize)

    def fit_floor(self, model: nn.Module, clips: torch.Tensor | Callable[[], Iterable[torch.Tensor]],
                  normalize: Callable[[torch.Tensor], torch.Tensor]) -> HeatmapDetector:
        """Set ``floor_`` to the ``floor_quantile`` quantile of the raw heatmap values of in-distribution clips (the
        training clips, in ``fit_clips``, so it runs a little low for new clips); at most ``FLOOR_PIXELS_PER_CLIP``
        evenly spaced pixels of each clip count, so memory stays bounded."""
        self._check_fitted()
        self._validate()
        values = []
        for batch in self._batches(clips):
            raw = self.heatmaps(model, batch, normalize, raw=True).reshape(len(batch), -1)
            step = max(1, raw.shape[1] // FLOOR_PIXELS_PER_CLIP)
            values.append(raw[:, ::step].ravel())
        if not values:
            raise ZooError(f"{self.name}: no clips to set the floor on")
        self.floor_ = float(np.quantile(np.concatenate(values), float(self.floor_quantile)))
        log.info("heatmap floor: %.4f (quantile %.3f of the training clips' pixels)", self.floor_,
                 self.floor_quantile)
        return self

    def _train(self, model: nn.Module, clips, normalize, generator: torch.Generator) -> HeatmapDetector:
        decoder = optimizer = None
        losses: list[float] = []
        for epoch in range(int(self.epochs)):
            total, count = 0.0, 0
            for batch in self._batches(clips):
                if decoder is None:
                    decoder = self._build(model, batch.shape[1:])
                    optimizer = torch.optim.Adam(decoder.parameters(), lr=float(self.lr))
                changed = corrupt(batch, generator)
                target = torch.cat([torch.zeros_like(batch[:, 0, 0]), difference_target(batch, changed)])
                inputs = normalize(torch.cat([batch, changed]))
                maps, classes = self._features(model, inputs)
                predicted = decoder(maps, classes, inputs.to(classes.device))
                loss = F.binary_cross_entropy(predicted, target.to(predicted.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()) * len(batch), count + len(batch)
            if count == 0:
                raise ZooError(f"{self.name}: no training clips")
            losses.append(total / count)
            log.info("heatmap decoder epoch %d/%d: loss %.4f", epoch + 1, self.epochs, losses[-1])
        self.decoder_ = decoder.eval()
        self.losses_ = losses
        self.n_classes_ = decoder.classes.num_embeddings
        return self

    def heatmaps(self, model: nn.Module, clips: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor], *,
                 raw: bool = False) -> np.ndarray:
        """``(N, H, W)`` float32 heatmaps in ``[0, 1]`` of pixel clips ``(N, 3, T, H, W)`` in ``[0, 1]`` (``raw``:
        without the floor)."""
        self._check_fitted()
        parts = []
        for batch in self._batches(clips):
            inputs = normalize(batch).to(model_device(model))
            with self.capturing(model) as captured, torch.inference_mode():
                logits = model(inputs)
            parts.append(self.decode(captured, logits, inputs, raw=raw))
        return np.concatenate(parts) if parts else np.zeros((0, *self.decoder_.size), dtype=np.float32)

    @contextlib.contextmanager
    def capturing(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, every forward pass of ``model`` leaves the decoder's layer outputs in the yielded dict
        (for callers that run the model themselves, such as the streaming classifier)."""
        captured: dict[str, torch.Tensor] = {}
        try:
            modules = [(name, model.get_submodule(name)) for name in self.layers_]
        except AttributeError as error:
            raise ZooError(f"{self.name}: {error}") from None
        hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                 for name, module in modules]
        try:
            yield captured
        finally:
            for hook in hooks:
                hook.remove()

    def decode(self, captured: dict[str, torch.Tensor], logits: torch.Tensor, inputs: torch.Tensor, *,
               raw: bool = False) -> np.ndarray:
        """Heatmaps ``(B, H, W)`` float32 from a forward pass's captured maps, its logits and its (normalised) input,
        above the floor (``raw``: as the decoder gives them)."""
        with torch.inference_mode():
            return self.decode_tensor(captured, logits, inputs, raw=raw).cpu().numpy()

    def decode_tensor(self, captured: dict[str, torch.Tensor], logits: torch.Tensor, inputs: torch.Tensor, *,
                      raw: bool = False) -> torch.Tensor:
        """:meth:`decode` as a tensor in the autograd graph of the maps and inputs (for attacks that descend
        through the decoder); the decoder's own weights take no gradient. The predicted class is an embedding
        lookup: no gradient flows through it."""
        self._check_fitted()
        weights = {name: value.detach() for name, value in self.decoder_.named_parameters()}
        heat = torch.func.functional_call(
            self.decoder_, weights, ([captured[name].float() for name in self.layers_], logits.argmax(dim=1),
                                     inputs.float()))
        return heat if raw else self.floored(heat)

    def floored(self, heat):
        """Raw heatmaps (NumPy or torch) above the floor, rescaled to ``[0, 1]``: ``clip((h - f) / (1 - f), 0, 1)``."""
        floor = getattr(self, "floor_", 0.0)
        return heat if floor <= 0 else ((heat - floor) / (1.0 - floor)).clip(0.0, 1.0)

    def _check_fitted(self) -> None:
        if not hasattr(self, "decoder_"):
            raise ZooError(f"{self.name} is not fitted: call fit_clips(model, clips, normalize) first")

    def score_clips(self, model: nn.Module, clips: torch.Tensor,
                    normalize: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """``-mean(heatmap)`` per clip, float64, higher = more in-distribution."""
        return -self.heatmaps(model, clips, normalize).mean(axis=(1, 2)).astype(np.float64)

    def _score(self, features) -> np.ndarray:
        raise ZooError(f"{self.name} scores pixel clips through the model: use score_clips")

    def save(self, directory: str | Path) -> Path:
        """Write the fitted decoder as ``decoder.safetensors`` + ``decoder.json`` into ``directory`` (no pickle)."""
        if not hasattr(self, "decoder_"):
            raise ZooError(f"{self.name} is not fitted: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        decoder = self.decoder_
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()},
                  str(directory / DECODER_WEIGHTS))
        description = {"format": DECODER_FORMAT, "layers": list(self.layers_), "size": list(decoder.size),
                       "channels": [p.in_channels // 2 for p in decoder.project], "n_classes": self.n_classes_,
                       "params": self.get_params(), "training_loss": self.losses_,
                       "floor": getattr(self, "floor_", 0.0)}
        description["params"]["layers"] = list(self.layers_)
        (directory / DECODER_JSON).write_text(json.dumps(description, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> HeatmapDetector:
        """A fitted detector from what :meth:`save` wrote (one-line ZooError if unreadable or inconsistent)."""
        directory = Path(directory)
        try:
            description = json.loads((directory / DECODER_JSON).read_text(encoding="utf-8"))
            if description.get("format") != DECODER_FORMAT:
                raise ValueError(f"format {description.get('format')!r}, expected {DECODER_FORMAT!r}")
            params = {**description["params"], "layers": tuple(description["params"]["layers"])}
            detector = cls(**params)
            decoder = HeatmapDecoder(description["channels"], int(description["n_classes"]),
                                     tuple(description["size"]), int(params["hidden"]))
            decoder.load_state_dict(load_file(str(directory / DECODER_WEIGHTS)))
            floor = float(description.get("floor", 0.0))  # decoders saved before the floor existed: none
            if not 0 <= floor < 1:
                raise ValueError(f"floor {floor!r} is not in [0, 1)")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ZooError(f"{directory}: not a usable heatmap decoder ({reason})") from None
        detector.layers_ = params["layers"]
        detector.decoder_ = decoder.to(device).eval()
        detector.n_classes_ = int(description["n_classes"])
        detector.losses_ = list(description.get("training_loss", []))
        detector.floor_ = floor
        return detector

    def _build(self, model: nn.Module, clip_shape: Sequence[int]) -> HeatmapDecoder:
        self.layers_ = tuple(self.layers) if self.layers is not None else default_heatmap_layers(model, clip_shape)
        if not self.layers_:
            raise ZooError(f"{self.name}: {type(model).__name__} has no spatial feature maps to decode")
        device = model_device(model)
        maps, classes = self._features(model, torch.zeros((1, *clip_shape), device=device))
        n_classes = _output_size(model, clip_shape)
        return HeatmapDecoder([m.shape[1] for m in maps], n_classes, tuple(clip_shape[-2:]),
                              int(self.hidden)).to(device)

    def _features(self, model: nn.Module, inputs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The decoder's layer outputs and the predicted classes, as plain tensors a training step can use."""
        with self.capturing(model) as captured, torch.inference_mode():
            logits = model(inputs.to(model_device(model)))
        return [captured[name].float().clone() for name in self.layers_], logits.argmax(dim=1).clone()

    def _batches(self, clips) -> Iterator[torch.Tensor]:
        return clip_batches(self.name, clips, self.batch_size)


def _output_size(model: nn.Module, clip_shape: Sequence[int]) -> int:
    with torch.inference_mode():
        return int(model(torch.zeros((1, *clip_shape), device=model_device(model))).shape[1])


def border_mass(heatmaps: np.ndarray, width: int) -> np.ndarray:
    """Per heatmap ``(N, H, W)``, the fraction of its mass within ``width`` pixels of the edge (NaN for an all-zero
    map): how well a framing attack's border is localised."""
    inside = np.zeros(heatmaps.shape[-2:], dtype=bool)
    inside[:width], inside[-width:], inside[:, :width], inside[:, -width:] = True, True, True, True
    total = heatmaps.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, heatmaps[:, inside].sum(axis=1, dtype=np.float64) / total, np.nan)
