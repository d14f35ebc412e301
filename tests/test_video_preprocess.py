"""preprocess: shapes, normalisation, and resize + centre crop checked against OpenCV and PIL references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from videos import random_frames

from pipeline.video import preprocess
from pipeline.video.preprocess import KINETICS_MEAN, KINETICS_STD, resize_frames, resize_target

MEAN = np.array(KINETICS_MEAN)
STD = np.array(KINETICS_STD)
ONE_LEVEL = 1.0 / 255.0 / STD.min()
"""One uint8 level after normalisation: resizers may round differently by that much."""


def reference(clip: np.ndarray, out_height: int, out_width: int, crop: int, interpolate) -> np.ndarray:
    """(3, T, crop, crop) float64: resize each frame with `interpolate`, crop the centre, normalise."""
    resized = np.stack([interpolate(frame, out_width, out_height) for frame in clip]).astype(np.float64)
    top, left = (out_height - crop) // 2, (out_width - crop) // 2
    cropped = resized[:, top:top + crop, left:left + crop] / 255.0
    return ((cropped - MEAN) / STD).transpose(3, 0, 1, 2)


def cv2_linear(frame, width, height):
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


def pil_bilinear(frame, width, height):
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def test_shapes_dtype_and_layout():
    clip = random_frames(16, 120, 160)
    single = preprocess(clip)
    assert single.shape == (1, 3, 16, 112, 112) and single.dtype == torch.float32 and single.is_contiguous()
    batch = preprocess(np.stack([clip, clip[::-1]]), short_side=64, crop=56)
    assert batch.shape == (2, 3, 16, 56, 56)
    torch.testing.assert_close(batch[1], batch[0].flip(1))
    assert preprocess(torch.from_numpy(clip), crop=100).shape == (1, 3, 16, 100, 100)


def test_normalisation_of_constant_colours():
    colour = np.array([255, 128, 0], dtype=np.uint8)
    clip = np.broadcast_to(colour, (4, 128, 128, 3)).copy()
    out = preprocess(clip).double()
    expected = (colour / 255.0 - MEAN) / STD
    for channel in range(3):
        torch.testing.assert_close(out[0, channel], torch.full((4, 112, 112), expected[channel], dtype=torch.float64),
                                   atol=1e-5, rtol=0)
    custom = preprocess(clip, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).double()
    torch.testing.assert_close(custom[0, :, 0, 0, 0], torch.tensor((colour / 255.0 - 0.5) / 0.5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("height, width, out_size", [(240, 320, (128, 171)), (180, 320, (128, 228)),
                                                      (300, 200, (192, 128)), (97, 61, (204, 128))])
def test_short_side_resize_and_centre_crop_match_opencv(height, width, out_size):
    clip = random_frames(3, height, width, seed=height)
    out = preprocess(clip).numpy()[0].astype(np.float64)
    expected = reference(clip, *out_size, 112, cv2_linear)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= ONE_LEVEL + 1e-6
    assert np.abs(out - expected).mean() < 0.25 * ONE_LEVEL


def test_fixed_size_like_c3d():
    clip = random_frames(2, 144, 176)
    out = preprocess(clip, size=(128, 171)).numpy()[0].astype(np.float64)
    expected = reference(clip, 128, 171, 112, cv2_linear)
    assert np.abs(out - expected).max() <= ONE_LEVEL + 1e-6


def test_antialiased_downscale_matches_pil():
    clip = random_frames(2, 480, 640, seed=3)
    out = preprocess(clip, antialias=True).numpy()[0].astype(np.float64)
    expected = reference(clip, 128, 171, 112, pil_bilinear)
    assert np.abs(out - expected).max() <= ONE_LEVEL + 1e-6
    aliased = preprocess(clip).numpy()[0].astype(np.float64)
    assert np.abs(aliased - expected).mean() > 2 * np.abs(out - expected).mean()


def test_frames_already_at_size_are_only_cropped_and_normalised():
    clip = random_frames(2, 128, 150)
    out = preprocess(clip).numpy()[0]
    manual = ((clip[:, 8:120, 19:131] / 255.0 - MEAN) / STD).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(out, manual, atol=1e-5)


@pytest.mark.parametrize("frames, message", [
    (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((4, 32, 32), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((4, 128, 128, 3), np.uint8), "crop 200 is larger"),
])
def test_invalid_input_is_rejected(frames, message):
    with pytest.raises(ValueError, match=message):
        preprocess(frames, crop=200 if "crop" in message else 112)


def test_invalid_statistics_are_rejected():
    with pytest.raises(ValueError, match="std > 0"):
        preprocess(np.zeros((1, 128, 128, 3), np.uint8), std=(0.2, 0.0, 0.2))


SLIVER_SCRIPT = """
import json, resource
import numpy as np
from pipeline.detect.features import model_input
from pipeline.models import Preprocessing
from pipeline.video.preprocess import preprocess, resize_frames

sliver = np.zeros((16, 1, 65536, 3), np.uint8)
prep = Preprocessing(clip_len=16, frame_step=1, short_side=128, crop=112, mean=(0.45,) * 3, std=(0.225,) * 3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = []
for call in (lambda: preprocess(sliver), lambda: resize_frames(sliver, 128), lambda: model_input(sliver[None], prep)):
    try:
        call()
        errors.append("accepted")
    except ValueError as error:
        errors.append(str(error))
grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"errors": errors, "grown_mib": grown_mib}))
"""


def test_a_sliver_clip_is_refused_before_any_allocation_on_every_resize_path():
    """16 x 1 x 65536 frames (3 MiB) scaled to a short side of 128 would take 20 GB; peak memory must not move."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", SLIVER_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["errors"]) == 3
    for error in report["errors"]:
        assert error.startswith("1x65536 frames would be resized to 128x8388608: 16 such frames exceed the limit")
    assert report["grown_mib"] < 64


def test_resize_frames_matches_preprocess_and_keeps_frames_already_at_size():
    clip = random_frames(3, 90, 120, seed=5)
    resized = resize_frames(clip, 64)
    assert resized.shape == (3, 64, 85, 3) and resized.dtype == torch.uint8
    torch.testing.assert_close(preprocess(resized.numpy(), 64, 64), preprocess(clip, 64, 64))
    assert resize_frames(clip, 90).data_ptr() == torch.as_tensor(clip).data_ptr()
    with pytest.raises(ValueError, match="exceed the limit of 16777216 pixels per clip"):
        resize_target(16, 64, 64, 128, size=(2048, 2048))


def test_model_inputs_of_mixed_frame_sizes_keep_their_order():
    from pipeline.detect.features import model_input, model_inputs
    from pipeline.models import Preprocessing

    prep = Preprocessing(clip_len=3, frame_step=1, short_side=32, crop=32, mean=(0.45,) * 3, std=(0.225,) * 3)
    clips = [random_frames(3, 48, 64, seed=1), random_frames(3, 40, 40, seed=2), random_frames(3, 48, 64, seed=3)]
    mixed = model_inputs(clips, prep)
    assert mixed.shape == (3, 3, 3, 32, 32)
    for row, clip in zip(mixed, clips, strict=True):
        torch.testing.assert_close(row, model_input(clip[None], prep)[0], rtol=0, atol=0)
    same = model_inputs([clips[0], clips[2]], prep)  # one frame size: the batch is preprocessed at once
    for row, clip in zip(same, [clips[0], clips[2]], strict=True):
        torch.testing.assert_close(row, model_input(clip[None], prep)[0], rtol=0, atol=0)


def test_stretch_sees_the_whole_field_of_view_that_crop_drops():
    from pipeline.video.preprocess import fitted_frames, resize_crop

    frames = np.full((2, 240, 320, 3), 128, np.uint8)
    frames[:, :, :24] = 255  # a bright stripe along the left edge: outside the centre square of a 4:3 frame
    cropped = resize_crop(frames, 80, 80).numpy()
    stretched = resize_crop(frames, 80, 80, fit="stretch").numpy()
    assert cropped.shape == stretched.shape == (2, 80, 80, 3)
    assert (cropped == 128).all()
    assert (stretched[:, :, :5] == 255).all() and (stretched[:, :, 7:] == 128).all()
    # the stretch is a second resize of the short-side frames, so frames scaled while decoding give the same pixels
    early = resize_frames(frames, 80)
    assert torch.equal(fitted_frames(early, 80, 80, fit="stretch"), fitted_frames(frames, 80, 80, fit="stretch"))
    assert torch.equal(preprocess(early, 80, 80, fit="stretch"), preprocess(frames, 80, 80, fit="stretch"))
    with pytest.raises(ValueError, match="unknown fit 'pad'"):
        preprocess(frames, 80, 80, fit="pad")


def test_model_window_is_the_part_of_a_frame_the_input_covers():
    from pipeline.video.preprocess import model_window

    assert model_window(240, 320, 80, 80) == (0, 40, 240, 240)
    assert model_window(240, 320, 80, 80, "stretch") == (0, 0, 240, 320)
    assert model_window(240, 320, 88, 80, "stretch") == (11, 14, 218, 291)
    assert model_window(320, 240, 80, 80) == (40, 0, 240, 240)


def test_a_stretch_model_gets_the_whole_frame_on_every_inference_path(tmp_path):
    from videos import write_frames

    from pipeline.detect.features import load_clips, model_inputs, pixel_input
    from pipeline.models import Preprocessing
    from pipeline.video import open_video
    from pipeline.video.preprocess import resize_crop

    prep = Preprocessing(clip_len=4, frame_step=1, short_side=24, crop=24, fit="stretch", mean=(0.4,) * 3,
                         std=(0.2,) * 3)
    wide, tall = random_frames(4, 48, 96, seed=1), random_frames(4, 60, 40, seed=2)
    inputs = model_inputs([wide, tall], prep)
    assert inputs.shape == (2, 3, 4, 24, 24)
    for row, clip in enumerate((wide, tall)):
        expected = preprocess(clip, 24, 24, prep.mean, prep.std, fit="stretch")[0]
        assert torch.equal(inputs[row], expected)
        assert not torch.equal(inputs[row], preprocess(clip, 24, 24, prep.mean, prep.std)[0]), "not the centre crop"
    pixels = pixel_input(wide[None], prep)[0]
    assert torch.allclose(pixels, resize_crop(wide, 24, 24, fit="stretch").permute(3, 0, 1, 2).float() / 255)

    video = write_frames(tmp_path / "wide.mp4", random_frames(8, 48, 96, seed=3), 96, 48)
    clips, _, _, skipped = load_clips([(video, 0)], prep, progress=False)
    with open_video(video) as reader:
        decoded = reader.get_frames(np.arange(8))
    assert not skipped and clips.shape == (2, 4, 24, 24, 3)
    assert np.array_equal(clips[0], resize_crop(decoded[:4], 24, 24, fit="stretch").numpy())
