"""Simulated cameras whose normal differs from the training set's: a test bed for per-camera normal models.

Each camera has one fixed scene (background crop, mirror, brightness, contrast, sensor noise, shake level, drawn
once) and a few *usual* activities among the known synthetic classes, as a corridor camera sees only some of what a
model was trained on. Its clips are rendered like the default synth world's videos (the same actors, textures and
motion classes; the background footage runs on from clip to clip) with the camera's scene. A scenario gives, per
camera and in time order:

* ``warmup``: usual activities, what the camera learns its normal from;
* ``usual``: more usual activities (negatives: every flag on them is a false alarm);
* ``unusual``: known classes this camera never shows (normal for the classifier, not for the camera);
* ``novel``: the synthetic novel classes (Orbit, ZigZag, Blink);
* ``tamper_<kind>``: the usual test clips after camera tampering (:mod:`pipeline.data.tamper`, at full resolution).

Every clip is ``(frames, H, W, 3)`` uint8 at 320x240. Randomness comes from ``(seed, camera)`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from .motions import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES, sample_spec
from .render import SourceImagery, render_video
from .tamper import TAMPERING, tamper

__all__ = ["CameraScenario", "FixedCamera", "camera_scenario"]

_SCENE_FIELDS = ("background", "background_box", "background_flip", "brightness", "contrast", "noise_sigma",
                 "noise_seed", "jitter", "quality")


@dataclass(frozen=True)
class CameraScenario:
    """One camera's clips by set (see the module docstring) and the classes it usually shows."""

    camera: str
    usual_classes: tuple[str, ...]
    sets: dict[str, np.ndarray]


def camera_scenario(seed: int, *, cameras: int = 4, usual_classes: int = 3, warmup: int = 128, test: int = 40,
                    frames: int = 32, width: int = 320, height: int = 240,
                    tampering: tuple[str, ...] = tuple(TAMPERING), progress=None) -> Iterator[CameraScenario]:
    """``cameras`` simulated cameras (see the module docstring), one after another (a camera's clips are rendered
    when it is reached, so memory holds one camera): ``warmup`` and ``test`` clips of ``frames`` frames each per
    set; ``progress(n)`` is called after every ``n`` rendered clips."""
    imagery = SourceImagery(height)
    for index in range(cameras):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        usual = tuple(str(name) for name in rng.choice(SYNTH_CLASSES, size=usual_classes, replace=False))
        unusual = tuple(name for name in SYNTH_CLASSES if name not in usual)
        camera = FixedCamera.draw(rng, imagery, width, height, frames, usual[0], progress=progress)
        sets = {"warmup": camera.render(usual, warmup), "usual": camera.render(usual, test),
                "unusual": camera.render(unusual, test), "novel": camera.render(SYNTH_NOVEL_CLASSES, test)}
        for kind in tampering:
            sets[f"tamper_{kind}"] = tamper(sets["usual"], kind, seed=seed * 1000 + index)
        yield CameraScenario(f"camera{index}", usual, sets)


@dataclass
class FixedCamera:
    """One camera with a fixed scene: its random source and the time of its background footage, which runs on
    from clip to clip (the demo's dock camera and every camera of :func:`camera_scenario`)."""

    imagery: SourceImagery
    rng: np.random.Generator
    scene: dict
    size: tuple[int, int, int]
    """Width, height and frames of a clip."""
    clock: float
    progress: Callable[[int], object] | None = None

    @classmethod
    def draw(cls, rng: np.random.Generator, imagery: SourceImagery, width: int, height: int, frames: int,
             class_name: str = SYNTH_CLASSES[0], *, progress=None) -> FixedCamera:
        """A camera whose scene (background, mirror, brightness, contrast, noise, shake, encoding quality) is drawn
        from ``rng`` as a synth video's would be (``class_name`` only decides which draws come first)."""
        scene_spec = sample_spec(class_name, rng, width, height, frames)
        return cls(imagery, rng, {name: getattr(scene_spec, name) for name in _SCENE_FIELDS},
                   (width, height, frames), float(rng.uniform()), progress)

    def render(self, classes: tuple[str, ...], count: int) -> np.ndarray:
        """``count`` clips of activities drawn from ``classes``, the background running on from clip to clip."""
        width, height, frames = self.size
        source_length = len(self.imagery.frames(self.scene["background"]))
        clips = np.empty((count, frames, height, width, 3), dtype=np.uint8)
        for i in range(count):
            spec = sample_spec(str(self.rng.choice(classes)), self.rng, width, height, frames)
            spec = replace(spec, **self.scene, background_time=self.clock,
                           brightness_drift=float(self.rng.uniform(-3.0, 3.0)))
            self.clock = (self.clock + frames / source_length) % 1.0
            clips[i] = render_video(spec, self.imagery)[0]
            if self.progress is not None:
                self.progress(1)
        return clips
