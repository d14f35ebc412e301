"""The density step's per-camera normal models: one :class:`~pipeline.detect.camera.CameraNormal` per camera, the
camera's verdicts combined with the bundle's.

A camera's clips are judged by the bundle at ``(1 - share) * alpha`` and, once its model has warmed up, by the
model at ``share * alpha`` (weighted Bonferroni: the false-alarm rate stays at most ``alpha``; during the warm-up
it is lower). A clip the camera flags is ``adversarial`` when its picture is what is unusual (tampering: a covered
or defocused lens, a knock, a turned camera, lights) and ``novel`` when its activity is; when the bundle flags it
too, the stronger evidence (the smaller weighted p-value) names the kind, and both give their reasons. Clips whose
final verdict is ``normal`` are learned; flagged ones are not, so a lasting change keeps being flagged.

Each density process learns from the clips it scores: with several density workers on one Redis stream, each learns
its share of every camera's clips (warming up after ``warmup_clips`` of its own). The models live in memory: a
restart warms up again. At most :data:`MAX_CAMERAS` cameras are kept (the least recently seen is dropped); a camera
holds ``memory_clips`` x (25 + the activity layer's width) float64 values, about 0.3 MB at the defaults with the
shipped bundle.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config.camera import CameraDirectory, CameraNormalConfig
from pipeline.detect.calibration import ADVERSARIAL, NORMAL, NOVEL
from pipeline.detect.camera import LAYOUT_CELLS, SCENE_FEATURES, CameraError, CameraNormal, combined_p_value
from pipeline.stream.messages import EmbeddingMessage

__all__ = ["MAX_CAMERAS", "CameraJudgement", "CameraModels"]

log = logging.getLogger(__name__)

MAX_CAMERAS = 4096
_SCENE_NAMES = (*SCENE_FEATURES[:-len(LAYOUT_CELLS)],
                *(f"layout (row {row}, column {col})" for row, col in LAYOUT_CELLS))
"""How reasons name the scene statistics: the layout cells by their place in the view, row 0 at the top."""


@dataclass(frozen=True)
class CameraJudgement:
    """The camera model's say on one clip: its p-values (empty while warming up), the combined p-value and, when
    it flags the clip, the verdict and reason it gives; ``decisive`` when its evidence is the stronger of the two
    (its weighted p-value below the bundle's), so that its verdict names the clip's kind."""

    p_values: dict[str, float]
    p_value: float | None = None
    verdict: str | None = None
    reason: str | None = None
    decisive: bool = False


class CameraModels:
    """Per-camera normal models of the cameras in ``directory``, judging embeddings whose ``activity_layer``
    features and scene statistics they learn from."""

    def __init__(self, directory: CameraDirectory, activity_layer: str):
        self.directory = directory
        self.activity_layer = activity_layer
        self.models: OrderedDict[str, CameraNormal] = OrderedDict()
        self._learned: dict[str, tuple[deque, set]] = {}
        self._warned: set[str] = set()

    def judged(self, embedding: EmbeddingMessage) -> tuple[str, CameraNormalConfig] | None:
        """The camera whose model judges ``embedding`` and its settings, or None when none does (no model for its
        camera, or views it lacks: then the bundle judges it alone, at the full rate). The density step asks once
        per clip and hands the answers to :meth:`judge` and :meth:`learn`."""
        camera, settings = self.directory.resolve(embedding.stream_id)
        if not settings.enabled:
            return None
        problem = self._view_problem(settings, embedding)
        if problem is not None:
            self._warn(camera, f"embedding {embedding.key} {problem}; the camera's model skips such clips")
            return None
        return camera, settings

    def judge(self, embeddings: Sequence[EmbeddingMessage], cameras: Sequence[tuple | None], bundle_p: np.ndarray,
              alpha: float) -> list[CameraJudgement | None]:
        """Each embedding's judgement (None where no camera model judges it), from the models as they were before
        this batch; ``bundle_p`` are the bundle's p-values. A camera whose model fails on the batch is logged and
        left to the bundle, and the other cameras' clips are judged."""
        out: list[CameraJudgement | None] = [None] * len(embeddings)
        for camera, rows, settings in _by_camera(cameras):
            model = self._model(camera, settings)
            if not model.ready:
                for row in rows:
                    out[row] = CameraJudgement({})
                continue
            try:
                p = model.p_values(self._views(model, [embeddings[row] for row in rows]))
            except CameraError as error:
                self._warn(camera, f"cannot judge its clips: {error}")
                continue
            combined = combined_p_value(bundle_p[rows], p["camera"], settings.share)
            for i, row in enumerate(rows):
                values = {key: float(p[key][i]) for key in p}
                verdict = reason = None
                if values["camera"] <= settings.share * alpha:
                    view = min(model.views, key=lambda name: values[name])
                    verdict = ADVERSARIAL if view == "scene" else NOVEL
                    reason = self._reason(camera, model, view, embeddings[row], values)
                decisive = values["camera"] / settings.share < bundle_p[row] / (1 - settings.share)
                out[row] = CameraJudgement(values, float(combined[i]), verdict, reason, bool(decisive))
        return out

    def learn(self, embeddings: Sequence[EmbeddingMessage], cameras: Sequence[tuple | None],
              verdicts: Sequence[str]) -> None:
        """Add the clips judged ``normal`` to their cameras' models, each clip key once (a clip redelivered after a
        crash is not learned twice while its camera remembers it: the last ``memory_clips`` keys)."""
        normal = [camera if verdict == NORMAL else None for camera, verdict in zip(cameras, verdicts, strict=True)]
        for camera, rows, settings in _by_camera(normal):
            keys, known = self._learned.setdefault(camera, (deque(), set()))
            fresh = [embeddings[row] for row in rows if embeddings[row].key not in known]
            if not fresh:
                continue
            model = self._model(camera, settings)
            try:
                model.partial_fit(self._views(model, fresh))
            except CameraError as error:
                self._warn(camera, f"cannot learn its clips: {error}")
                continue
            for embedding in fresh:
                keys.append(embedding.key)
                known.add(embedding.key)
                if len(keys) > settings.memory_clips:
                    known.discard(keys.popleft())

    def _view_problem(self, settings: CameraNormalConfig, embedding: EmbeddingMessage) -> str | None:
        if "scene" in settings.views:
            if embedding.scene is None:
                return ("has no scene statistics (is the classifier's config the density's, with camera_normal "
                        "enabled?)")
            if embedding.scene.dim != len(SCENE_FEATURES) or not np.isfinite(embedding.scene.array).all():
                return f"has {embedding.scene.dim} scene statistics, or some not finite"
        if "activity" in settings.views and not np.isfinite(embedding.feature(self.activity_layer)).all():
            return f"has non-finite {self.activity_layer} features"
        return None

    def _warn(self, camera: str, message: str) -> None:
        """Log a camera's problem once (a stream of bad clips must not flood the log)."""
        if camera not in self._warned:
            self._warned.add(camera)
            log.warning("camera %s: %s", camera, message)

    def _model(self, camera: str, settings: CameraNormalConfig) -> CameraNormal:
        model = self.models.get(camera)
        if model is None:
            model = self.models[camera] = CameraNormal(**settings.model_kwargs())
            while len(self.models) > MAX_CAMERAS:
                dropped, _ = self.models.popitem(last=False)
                self._learned.pop(dropped, None)
                log.warning("camera %s: normal model dropped (more than %d cameras)", dropped, MAX_CAMERAS)
        self.models.move_to_end(camera)
        return model

    def _views(self, model: CameraNormal, embeddings: Sequence[EmbeddingMessage]) -> dict[str, np.ndarray]:
        views = {}
        if "scene" in model.views:
            views["scene"] = np.stack([e.scene.array for e in embeddings])
        if "activity" in model.views:
            views["activity"] = np.stack([e.feature(self.activity_layer) for e in embeddings])
        return views

    def _reason(self, camera: str, model: CameraNormal, view: str, embedding: EmbeddingMessage,
                values: dict[str, float]) -> str:
        if view == "activity":
            return (f"an activity camera {camera} does not usually show (p {values['activity']:.2g} against its "
                    f"last {model.clips} normal clips)")
        z = model.deviations("scene", embedding.scene.array[None])[0]
        top = np.argsort(-np.abs(z))[:3]
        named = ", ".join(f"{_SCENE_NAMES[i]} {z[i]:+.1f} sd" for i in top)
        return (f"the picture is unlike camera {camera}'s own (p {values['scene']:.2g}: {named}): covered, "
                "defocused, moved or relit?")


def _by_camera(cameras: Sequence[tuple[str, CameraNormalConfig] | None]):
    """``(camera, rows, settings)`` of each camera among the clips' ``(camera, settings)`` (None: not judged)."""
    groups: dict[str, tuple[list[int], CameraNormalConfig]] = {}
    for row, judged in enumerate(cameras):
        if judged is not None:
            groups.setdefault(judged[0], ([], judged[1]))[0].append(row)
    return [(camera, rows, settings) for camera, (rows, settings) in groups.items()]
