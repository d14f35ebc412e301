"""Simulated camera feeds for the demo: recordings of known activity, of a novel activity, and an attacked feed.

Each camera is a folder of short motion-triggered recordings (every file is one stream for the pipeline):

* ``lobby``: activities the model was trained on (normal traffic);
* ``yard``: activities it never saw (the synthetic *novel* classes);
* ``gate``: known activities whose frames carry a universal adversarial frame painted around the border.
  This camera records at the model's input resolution (a square of the model's short side) and is encoded
  losslessly (FFV1), so the frame painted on the model's centre-crop window reaches the classifier
  pixel-exact. At other resolutions the resize would blur the pattern.
* ``dock``: one fixed scene with its three usual known activities (:class:`pipeline.data.cameras.FixedCamera`,
  160x120), where the pipeline learns the camera's own normal (``camera_normal``) from its first recordings; then
  a recording with something over its lens, and one after it was turned away (:mod:`pipeline.data.tamper`). Its recordings are
  named by what they should be judged: ``dock-00-normal`` ... ``dock-08-adversarial-covered``.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from pipeline.attacks import AdversarialFrame
from pipeline.data import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES
from pipeline.data.cameras import FixedCamera
from pipeline.data.motions import sample_spec
from pipeline.data.render import SourceImagery, render_video
from pipeline.data.synth import write_video
from pipeline.data.tamper import tamper
from pipeline.video.preprocess import resize_crop

CAMERAS = ("lobby", "yard", "gate", "dock")
DOCK_RECORDINGS = 8
"""Normal recordings of the dock camera, each of `DOCK_CLIPS` clips: what it learns its normal from (its warm-up,
`DOCK_WARMUP` clips, then more normal clips it judges)."""
DOCK_CLIPS = 8
DOCK_WARMUP = 48


def write_lossless(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames with FFV1 (lossless) in Matroska."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def paint_frame(frames: np.ndarray, frame: AdversarialFrame, crop: int) -> np.ndarray:
    """Paint the adversarial border onto the centred ``crop`` window of ``(T, S, S, 3)`` uint8 frames.

    The window is what the model sees after its centre crop; the frame's time pattern repeats over the video.
    """
    offset = (frames.shape[1] - crop) // 2
    window = frames[:, offset : offset + crop, offset : offset + crop]
    clip = torch.from_numpy(np.ascontiguousarray(window)).permute(3, 0, 1, 2).float().div(255.0)[None]
    length = frame.pixels.shape[1]
    painted = []
    for start in range(0, clip.shape[2], length):
        part = clip[:, :, start : start + length]
        if part.shape[2] < length:
            part = torch.cat([part, part[:, :, -1:].expand(-1, -1, length - part.shape[2], -1, -1)], dim=2)
        painted.append(frame.apply(part)[:, :, : min(length, clip.shape[2] - start)])
    out = torch.cat(painted, dim=2)[0].permute(1, 2, 3, 0)
    result = frames.copy()
    result[:, offset : offset + crop, offset : offset + crop] = out.mul(255.0).round().clamp(0, 255).byte().numpy()
    return result


def write_feeds(out: Path, frame: AdversarialFrame, *, short_side: int, crop: int, clip_frames: int,
                recordings: int = 4, num_frames: int = 48, width: int = 320, height: int = 240, fps: float = 25.0,
                seed: int = 7) -> dict[str, Path]:
    """Write the cameras' recordings under ``out/<camera>/``; returns the folders. ``clip_frames`` is the span of one
    model clip in frames (clip length times frame step): the dock camera's activities change at that pace."""
    rng = np.random.default_rng(seed)
    imagery = SourceImagery(height)
    folders = {camera: out / camera for camera in CAMERAS}
    for index in range(recordings):
        known = SYNTH_CLASSES[int(rng.integers(len(SYNTH_CLASSES)))]
        frames, _ = render_video(sample_spec(known, rng, width, height, num_frames), imagery)
        write_video(folders["lobby"] / f"lobby-{index:02d}-{known}.avi", frames, fps, quality=3)

        novel = SYNTH_NOVEL_CLASSES[index % len(SYNTH_NOVEL_CLASSES)]
        frames, _ = render_video(sample_spec(novel, rng, width, height, num_frames), imagery)
        write_video(folders["yard"] / f"yard-{index:02d}-{novel}.avi", frames, fps, quality=3)

        known = SYNTH_CLASSES[int(rng.integers(len(SYNTH_CLASSES)))]
        frames, _ = render_video(sample_spec(known, rng, width, height, num_frames), imagery)
        square = np.ascontiguousarray(resize_crop(frames, short_side, short_side).numpy())
        attacked = paint_frame(square, frame, crop)
        write_lossless(folders["gate"] / f"gate-{index:02d}-{known}.mkv", attacked, fps)
    write_dock(folders["dock"], np.random.default_rng([seed, 1]), clip_frames, fps)
    return folders


def write_dock(folder: Path, rng: np.random.Generator, clip_frames: int, fps: float) -> None:
    """The dock camera's recordings (see the module docstring): `DOCK_RECORDINGS` normal ones, then one where its
    lens gets covered and one where it is turned away, each of `DOCK_CLIPS` activities of ``clip_frames`` frames."""
    camera = FixedCamera.draw(rng, SourceImagery(120), 160, 120, clip_frames)
    usual = tuple(str(name) for name in rng.choice(SYNTH_CLASSES, size=3, replace=False))
    for index in range(DOCK_RECORDINGS):
        recording = np.concatenate(camera.render(usual, DOCK_CLIPS))
        write_video(folder / f"dock-{index:02d}-normal.avi", recording, fps, quality=3)
    for index, (kind, name) in enumerate((("covered", "covered"), ("redirect", "turned")), start=DOCK_RECORDINGS):
        recording = np.concatenate(camera.render(usual, DOCK_CLIPS))
        tampered = tamper(recording[None], kind, seed=index, start=0)[0]
        write_video(folder / f"dock-{index:02d}-adversarial-{name}.avi", tampered, fps, quality=3)
