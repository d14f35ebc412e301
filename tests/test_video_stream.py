"""Live sources against real streams: ffmpeg publishing MPEG-TS over UDP on 127.0.0.1, cut and restarted mid-stream."""

from __future__ import annotations

import time

import numpy as np
import pytest
from videos import UdpPublisher, free_udp_port, read_index, wait_until, write_indexed_video

from pipeline.video import ClipSplitter, Health, VideoError, open_source
from pipeline.video.sources import FileSource
from pipeline.video.stream import StreamReader

pytestmark = pytest.mark.timeout(60)


def healths(reader) -> list[Health]:
    return [event.health for event in reader.events]


def drain(reader: StreamReader) -> list:
    """The frames already queued, read until none arrives for 0.2 s."""
    frames = []
    while True:
        try:
            frame = reader.read(timeout=0.2)
        except TimeoutError:
            return frames
        if frame is None:
            return frames
        frames.append(frame)


def read_until(reader: StreamReader, done, deadline: float) -> list:
    """Frames read until `done(frames)` holds; fails the test at `deadline` (time.monotonic) rather than hang."""
    frames = []
    while not done(frames):
        assert time.monotonic() < deadline, f"timed out; events so far: {[str(e) for e in reader.events]}"
        try:
            frame = reader.read(timeout=0.2)
        except TimeoutError:
            continue
        assert frame is not None, f"stream ended early: {[str(e) for e in reader.events]}"
        frames.append(frame)
    return frames


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_udp_stream_survives_publisher_restart(backend):
    publisher = UdpPublisher(free_udp_port(), width=64, height=48, fps=25)
    reader = StreamReader(publisher.uri, backend=backend, open_timeout=1.0, stall_timeout=0.8,
                          backoff_initial=0.2, backoff_max=0.4, max_reconnects=30)
    assembler = ClipSplitter(clip_len=8, stride=8).assembler(reader.stream_id)
    deadline = time.monotonic() + 40
    try:
        publisher.start()
        before = read_until(reader, lambda frames: len(frames) >= 20, deadline)
        publisher.kill()
        killed_at = time.time()
        # Keep consuming while the stream is down, until a reconnect attempt has failed against the dead port.
        assert wait_until(lambda: any(e.health is Health.RECONNECTING and e.attempt >= 2 for e in reader.events)
                          or Health.ENDED in healths(reader), timeout=15)
        stalls = [event for event in reader.events if event.health is Health.STALLED]
        assert stalls, f"no stall reported: {[str(e) for e in reader.events]}"
        drained = drain(reader)
        publisher.start()
        after = read_until(reader, lambda frames: sum(f.segment >= 1 for f in frames) >= 20, deadline)
    finally:
        publisher.kill()
        reader.close()
    frames = before + drained + after
    splitter_clips = [clip for clip in map(assembler.push, frames) if clip is not None]

    assert {frame.segment for frame in before} == {0}
    assert max(frame.segment for frame in after) >= 1
    assert all(frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8 for frame in frames)
    indices = [frame.index for frame in frames]
    assert indices == sorted(set(indices))
    assert all(np.isfinite(frame.pts) for frame in frames)

    events = healths(reader)
    assert events[0] is Health.UP and events[-1] is Health.ENDED
    order = [events.index(Health.STALLED), events.index(Health.DOWN), events.index(Health.RECONNECTING)]
    assert order == sorted(order)
    assert events[order[-1]:].count(Health.UP) >= 1
    assert 0.8 * 0.9 <= stalls[0].time - killed_at < 0.8 + 2.5
    reconnects = [event for event in reader.events if event.health is Health.RECONNECTING]
    assert [event.attempt for event in reconnects[:2]] == [1, 2]
    assert reconnects[1].delay > reconnects[0].delay

    assert splitter_clips, "the live feed gave no clips"
    by_index = {frame.index: frame for frame in frames}
    for clip in splitter_clips:
        assert clip.last_frame - clip.first_frame == 7
        assert len({by_index[i].segment for i in range(clip.first_frame, clip.last_frame + 1)}) == 1


def test_file_uri_streams_every_frame_in_order_then_ends(tmp_path):
    path = write_indexed_video(tmp_path / "replay.mp4", 40)
    with StreamReader(path.resolve().as_uri(), buffer_frames=4) as reader:
        frames = list(reader)
    assert [read_index(frame.image) for frame in frames] == list(range(40))
    assert [frame.index for frame in frames] == list(range(40))
    np.testing.assert_allclose([frame.pts for frame in frames], np.arange(40) / 25.0, atol=1e-6)
    assert healths(reader) == [Health.UP, Health.ENDED]
    assert reader.events[-1].detail == "end of stream" and reader.dropped_frames == 0
    assert reader.read(timeout=1) is None


def test_slow_consumer_of_a_live_source_drops_oldest_frames(tmp_path):
    path = write_indexed_video(tmp_path / "fast.mp4", 60)
    reader = StreamReader(path.resolve().as_uri(), buffer_frames=2, drop_frames=True)
    frames = []
    with reader:
        for frame in reader:
            frames.append(frame)
            time.sleep(0.01)
    assert reader.dropped_frames > 0 and reader.frames_decoded == 60
    assert len(frames) + reader.dropped_frames == 60
    assert all(read_index(frame.image) == frame.index for frame in frames)
    clips = list(ClipSplitter(clip_len=2, stride=2).clips(frames, "fast"))
    assert all(clip.last_frame == clip.first_frame + 1 for clip in clips)


def test_unreachable_stream_gives_up_after_max_reconnects():
    events = []
    reader = StreamReader(f"udp://127.0.0.1:{free_udp_port()}", open_timeout=0.3, stall_timeout=0.3,
                          max_reconnects=3, backoff_initial=0.05, backoff_max=0.15, backoff_jitter=0.0,
                          on_event=events.append)
    started = time.monotonic()
    assert list(reader) == []
    assert time.monotonic() - started < 10
    assert [event.health for event in events] == [Health.DOWN] + [Health.RECONNECTING] * 3 + [Health.ENDED]
    assert events[0].detail.startswith("cannot connect")
    assert [(event.attempt, event.delay) for event in events[1:4]] == [(1, 0.05), (2, 0.1), (3, 0.15)]
    assert events[-1].detail.startswith("gave up after 3 reconnect attempts")


def test_missing_camera_reports_down_and_ends():
    source = open_source("63", max_reconnects=0)
    assert isinstance(source, StreamReader) and source.backend == "opencv" and source.stream_id == "camera63"
    with source:
        assert source.read(timeout=15) is None
    assert healths(source) == [Health.DOWN, Health.ENDED]


def test_credentials_never_reach_ids_events_or_errors():
    uri = "rtsp://admin:hunter2@127.0.0.1:1/live"
    reader = StreamReader(uri, open_timeout=0.5, max_reconnects=0)
    assert reader.stream_id == "rtsp://admin:***@127.0.0.1:1/live"
    assert list(reader) == []
    assert all("hunter2" not in str(event) for event in reader.events)
    with pytest.raises(VideoError) as caught:
        StreamReader("gopher://user:hunter2@host/x")
    assert "hunter2" not in str(caught.value) and "unsupported stream scheme 'gopher'" in str(caught.value)


def test_event_callback_errors_do_not_stop_the_stream(tmp_path):
    path = write_indexed_video(tmp_path / "short.mp4", 10)

    def broken(event):
        raise RuntimeError("subscriber bug")

    with StreamReader(path.resolve().as_uri(), on_event=broken) as reader:
        assert len(list(reader)) == 10
    assert healths(reader) == [Health.UP, Health.ENDED]


def test_open_source_dispatches_on_the_kind_of_input(tmp_path):
    path = write_indexed_video(tmp_path / "lobby.mp4", 20)
    with open_source(path) as file_source:
        assert isinstance(file_source, FileSource) and file_source.stream_id == "lobby"
        assert [frame.index for frame in file_source] == list(range(20))
    assert isinstance(open_source(path.resolve().as_uri()), StreamReader)
    assert open_source(0).backend == "opencv"
    with pytest.raises(VideoError, match="lobby.txt: no such file"):
        open_source(tmp_path / "lobby.txt")
