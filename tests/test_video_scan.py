"""Bad inputs give one-line VideoErrors naming the file; odd sizes work; a directory scan reports and skips bad ones."""

from __future__ import annotations

import logging
import subprocess

import cv2
import numpy as np
import pytest
from videos import read_indices, write_frames, write_indexed_video

from pipeline.video import VideoError, open_video, scan_videos


def truncate(source, target, fraction=0.6):
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Unusable inputs, each with a fragment its error message must contain: name -> (path, reason fragment)."""
    root = tmp_path_factory.mktemp("bad")
    good_mp4 = write_indexed_video(root / "source.mp4", 60)
    faststart = write_indexed_video(root / "source_faststart.mp4", 60, extra_args=["-movflags", "+faststart"])
    good_avi = write_indexed_video(root / "source.avi", 60, codec="mjpeg")
    good_mkv = write_indexed_video(root / "source.mkv", 60)
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    cv2.imwrite(str(root / "picture.png"), np.zeros((20, 30, 3), np.uint8))
    (root / "picture.mp4").write_bytes((root / "picture.png").read_bytes())
    corrupt = bytearray(good_mkv.read_bytes())
    corrupt[:256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
    (root / "corrupt_header.mkv").write_bytes(bytes(corrupt))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(root / "audio.mp4")],
                   check=True, timeout=60)
    files = {
        "empty": (root / "empty.mp4", "empty file (0 bytes)"),
        "text": (root / "notes.mp4", "not a readable video"),
        "image": (root / "picture.mp4", "still image"),
        "audio": (root / "audio.mp4", "no video stream"),
        "corrupt": (root / "corrupt_header.mkv", "not a readable video"),
        "truncated_mp4": (truncate(good_mp4, root / "cut_moov.mp4"), "without a readable index (moov atom)"),
        "truncated_faststart": (truncate(faststart, root / "cut_faststart.mp4"),
                                "truncated: the container declares 60 frames but only"),
        "truncated_avi": (truncate(good_avi, root / "cut.avi"), "truncated: the container declares 60 frames"),
        "truncated_mkv": (truncate(good_mkv, root / "cut.mkv"), "truncated: the container declares 2.40 s"),
    }
    for path in (good_mp4, faststart, good_avi, good_mkv, root / "picture.png"):
        path.unlink()
    return files


@pytest.mark.parametrize("name", ["empty", "text", "image", "audio", "corrupt", "truncated_mp4",
                                  "truncated_faststart", "truncated_avi", "truncated_mkv"])
def test_bad_input_gives_one_line_error_naming_it(bad_files, name):
    path, fragment = bad_files[name]
    with pytest.raises(VideoError) as caught:
        open_video(path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"{path}: ") and fragment in message
    assert "\n" not in message and caught.value.reason in message


def test_truncated_file_can_be_salvaged_when_not_strict(bad_files):
    path, _ = bad_files["truncated_avi"]
    with open_video(path, strict=False) as reader:
        assert reader.backend == "pyav" and reader.fallback_reason.startswith("truncated")
        assert 0 < reader.num_frames < 60
        assert read_indices(reader.get_frames(range(reader.num_frames))) == list(range(reader.num_frames))


def test_longer_audio_track_does_not_make_video_look_truncated(tmp_path):
    video = write_indexed_video(tmp_path / "video.mkv", 30)
    with_audio = tmp_path / "with_audio.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-f", "lavfi", "-i", "sine=duration=3",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(with_audio)],
                   check=True, timeout=60)
    with open_video(with_audio) as reader:
        assert reader.num_frames == 30 and reader.backend == "decord"
        assert read_indices(reader.get_frames([29, 0])) == [29, 0]


def test_directory_and_non_file_paths(tmp_path):
    with pytest.raises(VideoError, match="not a regular file"):
        open_video(tmp_path)
    with pytest.raises(VideoError, match="not a directory"):
        scan_videos(tmp_path / "missing")


@pytest.mark.parametrize("codec, suffix", [("h264_444", "mp4"), ("mjpeg_444", "avi"), ("mjpeg", "avi")])
def test_odd_frame_sizes_decode_exactly(tmp_path, codec, suffix):
    path = write_indexed_video(tmp_path / f"odd.{suffix}", 20, width=33, height=17, codec=codec)
    with open_video(path) as reader:
        assert (reader.width, reader.height, reader.num_frames) == (33, 17, 20)
        frames = reader.get_frames([19, 0, 7])
    assert frames.shape == (3, 17, 33, 3)
    assert read_indices(frames) == [19, 0, 7]


def test_one_pixel_video_decodes_through_the_fallback(tmp_path):
    """decord fails on 1x1 frames; the reader notices at open and serves exact frames with PyAV."""
    levels = np.arange(20) * 12
    frames = (np.full((1, 1, 3), level, np.uint8) for level in levels)
    path = write_frames(tmp_path / "dot.avi", frames, width=1, height=1, codec="mjpeg_444")
    with open_video(path) as reader:
        assert reader.backend == "pyav" and "decord failed" in reader.fallback_reason
        assert (reader.width, reader.height, reader.num_frames) == (1, 1, 20)
        values = reader.get_frames([19, 0, 10]).astype(int)
    np.testing.assert_allclose(values[:, 0, 0, :].mean(axis=1), levels[[19, 0, 10]], atol=3)


def test_min_side_rejects_tiny_frames(tmp_path):
    path = write_indexed_video(tmp_path / "tiny.mp4", 5, width=16, height=8, codec="h264_444")
    with pytest.raises(VideoError, match=r"tiny.mp4: frame size 16x8 is below the minimum of 32 px"):
        open_video(path, min_side=32)


def test_scan_returns_good_videos_and_reports_each_bad_one(tmp_path, bad_files, caplog):
    good = [write_indexed_video(tmp_path / "cam1.mp4", 20),
            write_indexed_video(tmp_path / "cam2.avi", 20, codec="mjpeg")]
    nested = tmp_path / "day2"
    nested.mkdir()
    good.append(write_indexed_video(nested / "cam3.mkv", 20))
    for name in ("empty", "text", "truncated_avi"):
        source, _ = bad_files[name]
        (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / "readme.txt").write_text("not scanned: not a video extension")

    with caplog.at_level(logging.WARNING, logger="pipeline.video.scan"):
        result = scan_videos(tmp_path, progress=False)

    assert result.paths == sorted(str(path) for path in good)
    assert [info.num_frames for info in result.good] == [20, 20, 20]
    bad = {bad.path.rsplit("/", 1)[-1]: bad.reason for bad in result.bad}
    assert set(bad) == {"empty.mp4", "notes.mp4", "cut.avi"}
    assert bad["empty.mp4"] == "empty file (0 bytes)" and bad["cut.avi"].startswith("truncated")
    assert len(caplog.records) == 3 and all(record.getMessage().startswith("skipping ") for record in caplog.records)
    report = result.report().splitlines()
    assert report[0] == "3 usable videos, 3 skipped"
    assert all(line.startswith(f"skipped {tmp_path}") for line in report[1:])

    top_level_only = scan_videos(tmp_path, recursive=False, progress=False)
    assert len(top_level_only.good) == 2
