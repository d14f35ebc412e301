"""Per-camera normal model: what *this* camera usually shows, learned online from its own clips.

The bundle's class-conditional densities know the training set's activities. They cannot know that a corridor
camera only ever sees people walking one way, or that its picture was sharp and bright until someone covered the
lens. A :class:`CameraNormal` learns that from the camera's own recent clips, in two views:

* ``scene``: statistics of the picture itself (:data:`SCENE_FEATURES`, :func:`scene_statistics`): brightness,
  contrast, sharpness, frame-to-frame change, sudden cuts, global shift between frames (phase correlation), colour
  and the coarse layout of the view. Tampering (a covered or defocused lens, a knock, a turned camera, lights going
  off) moves these far from the camera's own history, whatever the classifier makes of the clip.
* ``activity``: the classifier's semantic features of the clip (e.g. its logits), on the camera's own leading
  principal axes plus the log residual norm: an activity that is ordinary in the training set may never happen in
  front of this camera.

Each view is a Gaussian fitted in float64 on a bounded buffer of the camera's recent clips (the covariance plus each
statistic's measurement resolution squared, as a correlation shrunk toward the identity by ``shrinkage``, factored
once per refit). Its p-values come from the
buffer's own *cross-fitted* squared Mahalanobis distances (four contiguous blocks, each scored by a fit on the
other three, so that neither the fit's optimism nor the correlation of consecutive clips leaks into the
calibration), matched in mean and variance by a scaled chi-square (Satterthwaite): its tail gives p-values below
``1 / n``, which a rank-based p-value on a warm-up of a hundred clips could never reach. The camera's p-value is
the smaller view p-value times the number of views (Bonferroni).

The model is ready after ``warmup`` clips; after that it refits every ``refit_every`` new clips on the last
``memory`` clips it was given, so slow drift (daylight, seasons) is followed. What it is given is the caller's
choice; the density step gives it only clips judged normal, so a lasting change (a camera turned away) keeps being
flagged instead of being learned.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.linalg import solve_triangular
from scipy.stats import chi2

from pipeline.errors import ClipwatchError

__all__ = ["LAYOUT_CELLS", "LAYOUT_GRID", "SCENE_FEATURES", "VIEWS", "CameraError", "CameraNormal", "combined_p_value",
           "scene_statistics"]

LAYOUT_GRID = 4
"""The scene's layout is the clip's mean luminance averaged over a ``LAYOUT_GRID`` x ``LAYOUT_GRID`` grid."""
LAYOUT_CELLS = tuple((row, col) for row in range(LAYOUT_GRID) for col in range(LAYOUT_GRID))
SCENE_FEATURES = ("brightness", "contrast", "sharpness", "motion", "cut", "shift", "coherence", "red_green",
                  "blue_green", *(f"layout_r{row}c{col}" for row, col in LAYOUT_CELLS))
"""The columns of :func:`scene_statistics`, in order (reasons name the most deviating ones). The layout is centred
on its own mean (brightness is a column of its own), so its cells sum to zero."""
SCENE_FLOOR = np.array([0.01] * 7 + [0.004] * (2 + len(LAYOUT_CELLS)))
"""The measurement resolution of each scene statistic, added as noise variance to the fitted covariance: about what
one grey level or one pixel of shift moves it (1 % for the logs and the shift, 1/255 for colour and layout). A
steady camera's statistic may barely vary (no shake: a shift of 0 in every clip), and a change of one pixel must not
read as thousands of deviations."""
ACTIVITY_FLOOR = 1e-3
"""The same for the activity view (projections of the classifier's features)."""
VIEWS = ("scene", "activity")
_FOLDS = 4
_EPS = 1e-3


class CameraError(ClipwatchError, ValueError):
    """Invalid per-camera model settings, or features that do not match what the model was fitted on."""


def scene_statistics(inputs: torch.Tensor, mean, std) -> np.ndarray:
    """``(B, len(SCENE_FEATURES))`` float64 statistics of normalised model inputs ``(B, 3, T, H, W)`` (the
    preprocessing's ``mean`` / ``std`` undo the normalisation): scale-free where it matters (logs, ratios), so a
    camera's values are stable from clip to clip."""
    with torch.no_grad():
        x = inputs.detach().to(torch.float32)  # on its device: only the (B, K) result is copied back
        scale = dict(dtype=torch.float32, device=x.device)
        x = x * torch.as_tensor(std, **scale).view(1, 3, 1, 1, 1) + torch.as_tensor(mean, **scale).view(1, 3, 1, 1, 1)
        red, green, blue = x[:, 0], x[:, 1], x[:, 2]
        y = 0.299 * red + 0.587 * green + 0.114 * blue  # (B, T, H, W)
        contrast = y.std(dim=(2, 3)).mean(dim=1)
        gradient = (y.diff(dim=3).pow(2).mean(dim=(1, 2, 3)) + y.diff(dim=2).pow(2).mean(dim=(1, 2, 3)))
        change = (y.diff(dim=1).abs().mean(dim=(2, 3)) if y.shape[1] > 1
                  else torch.zeros(y.shape[0], 1, device=y.device))  # (B, T-1)
        shift, coherence = _phase_correlation(y)
        layout = torch.nn.functional.adaptive_avg_pool2d(y.mean(dim=1), LAYOUT_GRID).flatten(1)
        columns = [
            torch.log(y.mean(dim=(1, 2, 3)) + 0.01),
            torch.log(contrast + _EPS),
            torch.log(gradient + 1e-6) - 2 * torch.log(contrast + _EPS),
            torch.log(change.mean(dim=1) + _EPS),
            torch.log((change.max(dim=1).values + _EPS) / (change.median(dim=1).values + _EPS)),
            shift,
            coherence,
            (red - green).mean(dim=(1, 2, 3)),
            (blue - green).mean(dim=(1, 2, 3)),
        ]
        stacked = torch.cat([torch.stack(columns, dim=1), layout - layout.mean(dim=1, keepdim=True)], dim=1)
    return stacked.double().cpu().numpy()


def _phase_correlation(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean global shift between consecutive frames (fraction of the side) and the mean height of the phase
    correlation peak (near 1 for a steady view, low when the picture changes as a whole), per clip."""
    if y.shape[1] < 2:
        zeros = torch.zeros(y.shape[0], device=y.device)
        return zeros, zeros + 1
    height, width = y.shape[-2:]
    window = torch.outer(torch.hann_window(height, periodic=False, device=y.device),
                         torch.hann_window(width, periodic=False, device=y.device))
    spectrum = torch.fft.rfft2((y - y.mean(dim=(2, 3), keepdim=True)) * window)
    cross = spectrum[:, 1:] * spectrum[:, :-1].conj()
    surface = torch.fft.irfft2(cross / (cross.abs() + 1e-9), s=(height, width))  # (B, T-1, H, W)
    peak, where = surface.flatten(2).max(dim=2)
    rows, cols = (where // width).float(), (where % width).float()
    rows = torch.where(rows > height / 2, rows - height, rows) / height
    cols = torch.where(cols > width / 2, cols - width, cols) / width
    return torch.sqrt(rows ** 2 + cols ** 2).mean(dim=1), peak.mean(dim=1)


class _Gaussian:
    """One view's Gaussian: optional projection on the leading principal axes (+ log residual norm), then the
    covariance plus ``floor**2`` on its diagonal, as a correlation shrunk toward the identity, factored once."""

    def __init__(self, data: np.ndarray, *, components: int, shrinkage: float, floor):
        data = np.asarray(data, dtype=np.float64)
        self.centre_ = data.mean(axis=0)
        self.axes_ = None
        if components:
            self.axes_ = _principal_axes(data - self.centre_, min(components, *data.shape))
        values = self.transform(data)
        self.mean_ = values.mean(axis=0)
        centred = values - self.mean_
        # The floor is measurement noise added to the covariance: a statistic that barely varies on this camera
        # still has the resolution of its measurement (one grey level, one pixel), not a near-zero variance.
        covariance = (centred.T @ centred) / len(centred) + np.diag(np.broadcast_to(floor, self.mean_.shape) ** 2)
        self.scale_ = np.sqrt(np.diag(covariance))
        correlation = covariance / np.outer(self.scale_, self.scale_)
        shrunk = (1 - shrinkage) * correlation + shrinkage * np.eye(len(correlation))
        self.cholesky_ = np.linalg.cholesky(shrunk + 1e-9 * np.eye(len(shrunk)))

    def transform(self, data: np.ndarray) -> np.ndarray:
        if self.axes_ is None:
            return data
        centred = data - self.centre_  # a new array: the caller's is left as it is
        projected = centred @ self.axes_
        residual = np.linalg.norm(centred - projected @ self.axes_.T, axis=1)
        return np.column_stack([projected, np.log(residual + 1e-9)])

    def standardised(self, data: np.ndarray) -> np.ndarray:
        return (self.transform(np.asarray(data, dtype=np.float64)) - self.mean_) / self.scale_

    def distances(self, data: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances ``(N,)``."""
        whitened = solve_triangular(self.cholesky_, self.standardised(data).T, lower=True)
        return (whitened ** 2).sum(axis=0)


def _principal_axes(centred: np.ndarray, components: int) -> np.ndarray:
    """``(D, components)`` leading principal axes of centred rows: exact for narrow features, randomized (seeded)
    for wide ones, where a refit must not stall the density stage."""
    if centred.shape[1] <= 256:
        return np.linalg.svd(centred, full_matrices=False)[2][:components].T
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(centred, components, random_state=0)[2].T


class CameraNormal:
    """One camera's normal model (see the module docstring); feed it with :meth:`partial_fit`, ask
    :meth:`p_values` once :attr:`ready`.

    ``views`` are among :data:`VIEWS`; ``warmup`` clips make it ready; it refits every ``refit_every`` clips on the
    last ``memory`` ones; ``shrinkage`` in [0, 1] pulls each view's correlation toward the identity; the activity
    view keeps ``activity_dims`` principal axes of the camera's own features (at most a quarter of the clips)."""

    def __init__(self, *, views: tuple[str, ...] = VIEWS, warmup: int = 128, memory: int = 1024,
                 refit_every: int = 64, shrinkage: float = 0.2, activity_dims: int = 8):
        self.views = tuple(views)
        self.warmup = warmup
        self.memory = memory
        self.refit_every = refit_every
        self.shrinkage = shrinkage
        self.activity_dims = activity_dims
        self._validate()

    def _validate(self) -> None:
        unknown = [view for view in self.views if view not in VIEWS]
        if not self.views or unknown or len(set(self.views)) != len(self.views):
            raise CameraError(f"views must be distinct names among {', '.join(VIEWS)}, got {list(self.views)}")
        if not 4 * _FOLDS <= self.warmup <= self.memory:
            raise CameraError(f"need {4 * _FOLDS} <= warmup <= memory, got warmup {self.warmup}, memory {self.memory}")
        if self.refit_every < 1 or self.activity_dims < 1:
            raise CameraError("refit_every and activity_dims must be at least 1")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise CameraError(f"shrinkage must be in [0, 1], got {self.shrinkage}")

    def reset(self) -> CameraNormal:
        """Forget everything (a new warm-up starts)."""
        self.seen_ = 0
        self.buffers_: dict[str, np.ndarray] = {}
        self._since_fit = 0
        self.fits_: dict[str, _Gaussian] = {}
        self.tails_: dict[str, tuple[float, float]] = {}
        return self

    @property
    def ready(self) -> bool:
        return bool(getattr(self, "fits_", None))

    @property
    def clips(self) -> int:
        """Clips in the buffer (at most ``memory``)."""
        return min(getattr(self, "seen_", 0), self.memory)

    def partial_fit(self, features: dict[str, np.ndarray]) -> CameraNormal:
        """Add clips (``{view: (N, D)}``, the same N for every view) to the buffer, oldest first out; refit when
        the warm-up is complete and every ``refit_every`` clips after."""
        if not hasattr(self, "seen_"):
            self.reset()
        rows = self._check(features)
        for view in self.views:
            values = np.asarray(features[view], dtype=np.float64)
            if view not in self.buffers_:
                self.buffers_[view] = np.empty((self.memory, values.shape[1]))
            buffer = self.buffers_[view]
            for offset in range(0, rows, self.memory):  # a batch larger than the memory keeps its last rows
                chunk = values[offset:offset + self.memory]
                slots = (self.seen_ + offset + np.arange(len(chunk))) % self.memory
                buffer[slots] = chunk
        self.seen_ += rows
        self._since_fit += rows
        if self.seen_ >= self.warmup and (not self.ready or self._since_fit >= self.refit_every):
            self._refit()
        return self

    def p_values(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-view p-values ``{view: (N,)}`` (small = unlike this camera's clips) and ``"camera"``: the smallest
        times the number of views, at most 1. CameraError before the warm-up is complete."""
        if not self.ready:
            raise CameraError(f"the camera's normal model is warming up ({self.clips} of {self.warmup} clips)")
        self._check(features)
        out = {}
        for view in self.views:
            scale, dof = self.tails_[view]
            out[view] = chi2.sf(self.fits_[view].distances(features[view]) / scale, dof)
        out["camera"] = np.minimum(1.0, len(self.views) * np.min([out[view] for view in self.views], axis=0))
        return out

    def deviations(self, view: str, features: np.ndarray) -> np.ndarray:
        """Standardised deviations ``(N, D')`` of one view's features from the camera's mean (for reasons)."""
        return self.fits_[view].standardised(features)

    def _check(self, features: dict[str, np.ndarray]) -> int:
        missing = [view for view in self.views if view not in features]
        if missing:
            raise CameraError(f"features lack the view(s) {', '.join(missing)}")
        rows = {np.shape(features[view])[0] for view in self.views}
        if len(rows) != 1:
            raise CameraError(f"views have different numbers of clips: {sorted(rows)}")
        for view in self.views:
            shape = np.shape(features[view])
            known = getattr(self, "buffers_", {}).get(view)
            width = len(SCENE_FEATURES) if view == "scene" else None if known is None else known.shape[1]
            if len(shape) != 2 or (width is not None and shape[1] != width):
                raise CameraError(f"{view} features of shape {shape}, expected (N, {width or 'D'})")
            if not np.isfinite(features[view]).all():
                raise CameraError(f"{view} features are not all finite")
        return rows.pop()

    def _ordered(self, view: str) -> np.ndarray:
        """The buffer's clips, oldest first."""
        buffer = self.buffers_[view]
        if self.seen_ <= self.memory:
            return buffer[:self.seen_]
        return np.roll(buffer, -(self.seen_ % self.memory), axis=0)

    def _refit(self) -> None:
        for view in self.views:
            data = self._ordered(view)
            components = 0 if view == "scene" else max(1, min(self.activity_dims, len(data) // 4, data.shape[1]))
            fit = functools.partial(_Gaussian, components=components, shrinkage=self.shrinkage,
                                    floor=SCENE_FLOOR if view == "scene" else ACTIVITY_FLOOR)
            folds = np.array_split(np.arange(len(data)), _FOLDS)
            crossed = np.concatenate([fit(np.delete(data, fold, axis=0)).distances(data[fold]) for fold in folds])
            self.fits_[view] = fit(data)
            self.tails_[view] = _scaled_chi2(crossed)
        self._since_fit = 0


def combined_p_value(bundle: np.ndarray, camera: np.ndarray, share: float) -> np.ndarray:
    """The p-value of a clip judged by the bundle and by its camera's normal model: weighted Bonferroni,
    ``min(p_bundle / (1 - share), p_camera / share)`` (at most 1), so that flagging it at ``alpha`` spends
    ``(1 - share) * alpha`` on the bundle and ``share * alpha`` on the camera and the false-alarm rate stays at most
    ``alpha``."""
    if not 0.0 < share < 1.0:
        raise CameraError(f"the camera's share of the false-alarm rate must be in (0, 1), got {share}")
    combined = np.minimum(np.asarray(bundle, dtype=np.float64) / (1 - share), np.asarray(camera, dtype=np.float64) / share)
    return np.minimum(1.0, combined)


def _scaled_chi2(distances: np.ndarray) -> tuple[float, float]:
    """``(c, nu)`` with ``c * chi2(nu)`` matching the mean and variance of ``distances`` (Satterthwaite)."""
    mean, variance = float(np.mean(distances)), float(np.var(distances))
    if not (math.isfinite(mean) and math.isfinite(variance)) or mean <= 0 or variance <= 0:
        return max(mean, 1e-9), 1.0
    return variance / (2 * mean), 2 * mean ** 2 / variance
