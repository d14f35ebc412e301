"""ClipSplitter plans and clip assembly, for files (index planning + batched reads) and for frame-by-frame feeds."""

from __future__ import annotations

import numpy as np
import pytest
from videos import index_frame, read_indices, write_indexed_video

from pipeline.video import Clip, ClipSplitter, Health, VideoError, iter_file_clips, open_source, open_video
from pipeline.video.events import Frame
from pipeline.video.preprocess import resize_frames

NUM_FRAMES = 70


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_indexed_video(tmp_path_factory.mktemp("clips") / "street.mp4", NUM_FRAMES, fps=20.0)


def feed(indices, segment=0, height=8, width=40):
    """Frames as a live source would deliver them, each image showing its own index."""
    return [Frame(index_frame(i, height, width), i, i / 10.0, 0.0, segment) for i in indices]


@pytest.mark.parametrize("clip_len, stride, step, num_frames, starts", [
    (16, 16, 1, 70, [0, 16, 32, 48]),
    (16, 8, 1, 70, [0, 8, 16, 24, 32, 40, 48]),
    (16, 16, 2, 70, [0, 16, 32]),
    (4, 10, 3, 30, [0, 10, 20]),
    (4, 10, 3, 29, [0, 10]),
    (16, 16, 1, 16, [0]),
    (16, 16, 1, 15, []),
])
def test_plan_counts_strides_and_steps(clip_len, stride, step, num_frames, starts):
    splitter = ClipSplitter(clip_len, stride, step)
    plan = splitter.plan(num_frames)
    assert [int(indices[0]) for indices in plan] == starts
    for indices in plan:
        assert indices.dtype == np.int64
        np.testing.assert_array_equal(indices, indices[0] + np.arange(clip_len) * step)
        assert indices[-1] < num_frames
    assert splitter.span == (clip_len - 1) * step + 1


@pytest.mark.parametrize("field, value", [("clip_len", 0), ("stride", -1), ("frame_step", 1.5), ("clip_len", True)])
def test_invalid_splitter_settings_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        ClipSplitter(**{field: value})


@pytest.mark.parametrize("splitter", [ClipSplitter(), ClipSplitter(16, 5, 2), ClipSplitter(8, 30, 1)])
def test_file_clips_hold_the_planned_frames(video, splitter):
    clips = list(iter_file_clips(video, splitter))
    plan = splitter.plan(NUM_FRAMES)
    assert [clip.seq for clip in clips] == list(range(len(plan)))
    for clip, indices in zip(clips, plan, strict=True):
        assert isinstance(clip, Clip) and clip.stream_id == "street" and clip.key == f"street:{clip.seq}"
        assert clip.frames.shape == (splitter.clip_len, 48, 64, 3) and clip.frames.dtype == np.uint8
        assert read_indices(clip.frames) == indices.tolist()
        assert (clip.first_frame, clip.last_frame) == (indices[0], indices[-1])
        np.testing.assert_allclose(clip.pts, indices / 20.0, atol=1e-9)
        assert len(clip) == splitter.clip_len


@pytest.mark.parametrize("splitter", [ClipSplitter(16, 16, 2), ClipSplitter(16, 5, 2), ClipSplitter(8, 30, 1)])
def test_file_clips_scaled_at_decoding_equal_full_frames_resized(video, splitter):
    """Frames scaled down as they are decoded (each once) are the pixels of the full clip resized afterwards."""
    full = list(iter_file_clips(video, splitter))
    scaled = list(iter_file_clips(video, splitter, short_side=24))
    assert len(scaled) == len(full) > 0
    for small, large in zip(scaled, full, strict=True):
        assert small.frames.shape == (splitter.clip_len, 24, 32, 3) and small.key == large.key
        np.testing.assert_array_equal(small.frames, resize_frames(large.frames, 24).numpy())
    unscaled = list(iter_file_clips(video, splitter, short_side=48))  # never scaled up, never copied for nothing
    for same, large in zip(unscaled, full, strict=True):
        np.testing.assert_array_equal(same.frames, large.frames)


def test_file_clips_from_an_open_reader_leave_it_open(video):
    with open_video(video) as reader:
        clips = list(iter_file_clips(reader, ClipSplitter(16, 16), stream_id="cam7"))
        assert [clip.key for clip in clips] == ["cam7:0", "cam7:1", "cam7:2", "cam7:3"]
        assert read_indices(reader.get_frames([69])) == [69]


@pytest.mark.parametrize("splitter", [ClipSplitter(), ClipSplitter(16, 5, 2), ClipSplitter(4, 9, 3)])
def test_frame_feed_of_a_file_gives_the_same_clips_as_planning(video, splitter):
    planned = list(iter_file_clips(video, splitter))
    with open_source(video) as source:
        assembled = list(splitter.clips(source))
    assert [health for health in (event.health for event in source.events)] == [Health.UP, Health.ENDED]
    assert len(assembled) == len(planned) > 0
    for a, b in zip(assembled, planned, strict=True):
        assert (a.key, a.first_frame, a.last_frame) == (b.key, b.first_frame, b.last_frame)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.pts, b.pts)


def test_live_assembler_emits_each_clip_once_it_is_complete():
    assembler = ClipSplitter(clip_len=4, stride=2, frame_step=1).assembler("cam", first_seq=10)
    emitted = {frame.index: assembler.push(frame) for frame in feed(range(9))}
    completed = {index: clip for index, clip in emitted.items() if clip is not None}
    assert sorted(completed) == [3, 5, 7]
    assert [(clip.seq, clip.first_frame, clip.last_frame) for clip in completed.values()] == [
        (10, 0, 3), (11, 2, 5), (12, 4, 7)]
    assert read_indices(completed[5].frames) == [2, 3, 4, 5]
    np.testing.assert_allclose(completed[7].pts, [0.4, 0.5, 0.6, 0.7])


def test_live_clips_never_span_a_reconnect_or_dropped_frames():
    splitter = ClipSplitter(clip_len=4, stride=4)
    frames = feed(range(0, 6)) + feed(range(6, 13), segment=1) + feed(range(15, 20), segment=1)
    clips = list(splitter.clips(frames, "cam"))
    # segment 0 gives 0-3 (4-5 are cut by the reconnect); segment 1 gives 6-9 (10-12 cut by the gap), then 15-18.
    assert [(clip.first_frame, clip.last_frame) for clip in clips] == [(0, 3), (6, 9), (15, 18)]
    assert [clip.seq for clip in clips] == [0, 1, 2]
    for clip in clips:
        assert read_indices(clip.frames) == list(range(clip.first_frame, clip.last_frame + 1))


def test_live_frame_step_and_sparse_stride():
    clips = list(ClipSplitter(clip_len=3, stride=10, frame_step=2).clips(feed(range(25)), "cam"))
    assert [read_indices(clip.frames) for clip in clips] == [[0, 2, 4], [10, 12, 14], [20, 22, 24]]
    with pytest.raises(ValueError, match="stream_id"):
        next(ClipSplitter().clips(feed(range(16))))


@pytest.mark.parametrize("splitter", [ClipSplitter(16, 16, 2), ClipSplitter(4, 3, 2), ClipSplitter(3, 10, 2)])
def test_live_clips_scaled_as_taken_equal_full_frames_resized(splitter):
    frames = feed(range(80), height=24, width=40) + feed(range(80, 130), 1, height=30, width=40)  # a new size
    full = list(splitter.clips(frames, "cam"))
    scaled = list(splitter.clips(frames, "cam", short_side=12))
    assert len(scaled) == len(full) > 2
    for small, large in zip(scaled, full, strict=True):
        assert small.key == large.key and min(small.frames.shape[1:3]) == 12
        np.testing.assert_array_equal(small.frames, resize_frames(large.frames, 12).numpy())
    assert all(frame.image.shape == (24, 40, 3) for frame in frames[:80])  # the caller's frames are left alone


def test_frames_too_large_to_scale_are_refused_in_one_line_naming_the_input(video, monkeypatch):
    import importlib

    preprocess_module = importlib.import_module("pipeline.video.preprocess")  # the module, not its function
    monkeypatch.setattr(preprocess_module, "MAX_RESIZED_PIXELS", 100)  # stands in for an absurd frame shape
    with pytest.raises(VideoError, match=r"street\.mp4: 48x64 frames would be resized to 24x32: 16 such frames"):
        next(iter_file_clips(video, ClipSplitter(16, 16, 2), short_side=24))
    with pytest.raises(VideoError, match=r"^cam: 24x40 frames would be resized to 12x20: .* exceed the limit"):
        list(ClipSplitter(4, 4).clips(feed(range(8), height=24, width=40), "cam", short_side=12))


def test_assembler_reset_drops_the_partial_clip():
    assembler = ClipSplitter(clip_len=3, stride=3).assembler("cam")
    frames = feed(range(8))
    assert [assembler.push(frame) for frame in frames[:2]] == [None, None]
    assembler.reset()
    clips = [clip for clip in map(assembler.push, frames[2:]) if clip is not None]
    assert [read_indices(clip.frames) for clip in clips] == [[2, 3, 4], [5, 6, 7]]
