"""VideoReader returns exactly the frames asked for, on real encoded files, including decord's known failure cases."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest
from videos import index_frame, read_index, read_indices, write_indexed_video

from pipeline.video import ClipSplitter, VideoError, VideoReader, iter_file_clips, open_video

NUM_FRAMES = 60
SCATTERED = [59, 3, 40, 41, 0, 17, 59, 30, 12, 11]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Indexed videos of 60 frames at 25 fps: name -> path."""
    root = tmp_path_factory.mktemp("reader")
    paths = {
        "h264.mp4": write_indexed_video(root / "h264.mp4", NUM_FRAMES, codec="h264"),
        "mjpeg.avi": write_indexed_video(root / "mjpeg.avi", NUM_FRAMES, codec="mjpeg"),
        "h264.mkv": write_indexed_video(root / "h264.mkv", NUM_FRAMES, codec="h264"),
        # decord's pitfalls: AVI with B-frames (no timestamps), MPEG-TS (no seek index).
        "h264_bframes.avi": write_indexed_video(root / "h264_bframes.avi", NUM_FRAMES, codec="h264"),
        "mpeg4_bframes.avi": write_indexed_video(root / "mpeg4_bframes.avi", NUM_FRAMES, codec="mpeg4"),
        "h264.ts": write_indexed_video(root / "h264.ts", NUM_FRAMES, codec="h264"),
    }
    writer = cv2.VideoWriter(str(root / "opencv_mjpg.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for index in range(NUM_FRAMES):
        writer.write(cv2.cvtColor(index_frame(index, 48, 64), cv2.COLOR_RGB2BGR))
    writer.release()
    paths["opencv_mjpg.avi"] = root / "opencv_mjpg.avi"
    # A stream-copied cut starting mid-GOP: the MP4 gets an edit list hiding the lead-in frames (decord counts them).
    cut = root / "cut_editlist.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1.1", "-i", str(paths["h264.mp4"]), "-c", "copy", str(cut)],
                   check=True, timeout=60)
    paths["cut_editlist.mp4"] = cut
    # Rotation metadata (phones, some cameras): decord rotates and then fails copying the frame.
    rotated = root / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(paths["h264.mp4"]), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rotated)], check=True, timeout=60)
    paths["rotated.mp4"] = rotated
    return paths


@pytest.mark.parametrize("name", ["h264.mp4", "mjpeg.avi", "opencv_mjpg.avi", "h264.mkv"])
def test_decord_serves_exact_frames_in_any_order(videos, name):
    with open_video(videos[name]) as reader:
        assert reader.backend == "decord" and reader.fallback_reason is None
        assert (reader.num_frames, reader.width, reader.height, reader.fps) == (NUM_FRAMES, 64, 48, 25.0)
        frames = reader.get_frames(SCATTERED)
        assert frames.shape == (len(SCATTERED), 48, 64, 3) and frames.dtype == np.uint8
        assert read_indices(frames) == SCATTERED
        assert read_indices(reader.get_frames(range(44, 60))) == list(range(44, 60))
        assert read_index(reader.get_frames([NUM_FRAMES - 1])[0]) == NUM_FRAMES - 1
        assert read_indices(reader.get_frames(range(0, 16))) == list(range(16))


@pytest.mark.parametrize("name, reason", [
    ("h264_bframes.avi", "without presentation timestamps"),
    ("mpeg4_bframes.avi", "without presentation timestamps"),
    ("h264.ts", "no seek index"),
    ("rotated.mp4", "decord failed"),
])
def test_decord_pitfalls_fall_back_to_exact_sequential_reading(videos, name, reason):
    with open_video(videos[name]) as reader:
        assert reader.backend == "pyav"
        assert reason in reader.fallback_reason
        assert reader.num_frames == NUM_FRAMES
        assert read_indices(reader.get_frames(SCATTERED)) == SCATTERED
        assert read_indices(reader.get_frames(range(NUM_FRAMES))) == list(range(NUM_FRAMES))


def test_raw_decord_really_misreads_the_pitfall_files(videos):
    """The fallback is needed: plain decord returns wrong frames for these files."""
    import decord

    avi = decord.VideoReader(str(videos["h264_bframes.avi"]), num_threads=1)
    assert read_indices(avi.get_batch(SCATTERED).asnumpy()) != SCATTERED
    ts = decord.VideoReader(str(videos["h264.ts"]), num_threads=1)
    assert read_indices(ts.get_batch(list(range(16))).asnumpy()) != list(range(16))


def test_decord_start_offset_is_caught_by_the_first_frame_check(videos, monkeypatch):
    """If a container slipped past the seek-index rule, the first-frame check still catches decord's wrong start."""
    monkeypatch.setattr("pipeline.video.probe.SEEKABLE_CONTAINERS", frozenset({"mpegts"}))
    with open_video(videos["h264.ts"]) as reader:
        assert reader.backend == "pyav" and reader.fallback_reason == "decord's first frame differs from FFmpeg's"
        assert read_indices(reader.get_frames([0, 1, 59])) == [0, 1, 59]


def test_first_read_away_from_frame_zero(videos):
    with open_video(videos["h264.mp4"]) as reader:
        assert read_indices(reader.get_frames([33, 34])) == [33, 34]
        assert read_indices(reader.get_frames([0])) == [0]


def test_edit_list_cut_counts_only_the_visible_frames(videos):
    """decord counts the 4 frames the edit list hides; the reader serves the 32 that play, starting at frame 28."""
    import decord

    assert len(decord.VideoReader(str(videos["cut_editlist.mp4"]))) == 36
    with open_video(videos["cut_editlist.mp4"]) as reader:
        assert reader.backend == "pyav" and "edit list" in reader.fallback_reason
        assert reader.num_frames == 32
        assert read_indices(reader.get_frames([0, 31, 5])) == [28, 59, 33]
        assert reader.get_timestamps([0, 1, 31]) == pytest.approx([0.0, 0.04, 1.24])


def test_timestamps_are_presentation_times_from_zero(videos):
    with open_video(videos["h264.mp4"]) as reader:
        times = reader.get_timestamps(range(NUM_FRAMES))
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, np.arange(NUM_FRAMES) / 25.0, atol=1e-9)


def test_repeated_and_empty_requests(videos):
    with VideoReader(videos["h264.mp4"]) as reader:
        assert read_indices(reader.get_frames([5, 5, 2, 5])) == [5, 5, 2, 5]
        assert reader.get_frames([]).shape == (0, 48, 64, 3)
        assert len(reader) == NUM_FRAMES
        assert "decord" in repr(reader)


def test_out_of_range_indices_name_the_file(videos):
    with open_video(videos["mjpeg.avi"]) as reader:
        with pytest.raises(IndexError, match="mjpeg.avi.*60"):
            reader.get_frames([0, NUM_FRAMES])
        with pytest.raises(IndexError):
            reader.get_frames([-1])
        with pytest.raises(TypeError):
            reader.get_frames([0.5])


def test_sequential_fallback_restarts_for_earlier_frames(videos):
    with open_video(videos["h264.ts"]) as reader:
        assert read_indices(reader.get_frames([50, 51])) == [50, 51]
        assert read_indices(reader.get_frames([2])) == [2]
        assert read_indices(reader.get_frames([3, 4])) == [3, 4]


def test_info_describes_the_file(videos):
    with open_video(videos["h264.mp4"]) as reader:
        info = reader.info
    assert (info.codec, info.width, info.height, info.num_frames, info.backend) == ("h264", 64, 48, 60, "decord")
    assert info.duration == pytest.approx(2.4)


def test_missing_file_is_a_video_error(tmp_path):
    with pytest.raises(VideoError, match="nothing.mp4: no such file"):
        open_video(tmp_path / "nothing.mp4")


@pytest.mark.parametrize("name", ["h264.mp4", "mjpeg.avi", "opencv_mjpg.avi", "h264.mkv"])
def test_sequential_access_decodes_clean_files_with_opencv_exactly(videos, name):
    with open_video(videos[name], access="sequential") as reader:
        assert reader.backend == "opencv" and reader.fallback_reason is None
        assert read_indices(reader.get_frames(range(0, 16))) == list(range(16))
        assert read_indices(reader.get_frames([20, 21, 40, 59])) == [20, 21, 40, 59]
        assert read_indices(reader.get_frames([3, 4])) == [3, 4], "an earlier frame reopens the file"
    clips = list(iter_file_clips(videos[name], ClipSplitter(16, 8)))
    assert [read_indices(clip.frames) for clip in clips] == [list(range(s, s + 16)) for s in range(0, 45, 8)]


@pytest.mark.parametrize("name", ["h264_bframes.avi", "mpeg4_bframes.avi", "h264.ts", "cut_editlist.mp4",
                                  "rotated.mp4"])
def test_sequential_access_is_exact_on_decord_pitfall_files(videos, name):
    """In file order OpenCV needs no seek index: it may serve these files, but only with the exact frames."""
    with open_video(videos[name]) as random_reader:
        expected = read_indices(random_reader.get_frames(range(random_reader.num_frames)))
    with open_video(videos[name], access="sequential") as reader:
        assert reader.backend in ("opencv", "pyav")
        assert read_indices(reader.get_frames(range(reader.num_frames))) == expected
