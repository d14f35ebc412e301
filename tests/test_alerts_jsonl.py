"""The JSONL alert log: one durable line per idempotency key, across restarts and concurrent writers."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.alerts import Alert, JsonlSink, ScoredClip, validate_alert_body
from pipeline.alerts.errors import JournalError, SinkClosedError


def alert(seq: int, kind: str = "novel", stream: str = "cam1") -> Alert:
    clip = ScoredClip(
        stream_id=stream, seq=seq, verdict=kind, fused_score=5.5, p_value=0.002, clip_start=seq * 0.5,
        clip_end=seq * 0.5 + 0.5, scored_at=1_700_000_000.0 + seq, reasons=("far from every class",),
        prediction="running", softmax=0.31, layer_scores={"layer4": -77.0},
    )
    return Alert.from_clip(clip, kind)


def lines(path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_each_alert_is_one_schema_valid_line(tmp_path):
    path = tmp_path / "log" / "alerts.jsonl"
    alerts = [alert(0), alert(1, "adversarial"), alert(0, stream="cam2")]
    with JsonlSink(path) as sink:
        assert [sink.write(a) for a in alerts] == [True, True, True]
        assert len(sink) == 3 and "cam1:1:adversarial" in sink
    written = lines(path)
    assert written == [a.to_json_bytes() for a in alerts]
    for line in written:
        validate_alert_body(json.loads(line))


def test_a_redelivered_alert_is_not_written_twice_even_after_a_restart(tmp_path):
    path = tmp_path / "alerts.jsonl"
    with JsonlSink(path) as sink:
        assert sink.write(alert(0)) is True
        assert sink.write(alert(0)) is False
        assert sink.write(alert(1)) is True
    with JsonlSink(path) as reopened:
        assert len(reopened) == 2
        assert reopened.write(alert(1)) is False
        assert reopened.write(alert(0)) is False
        assert reopened.write(alert(1, "adversarial")) is True
    keys = [json.loads(line)["idempotency_key"] for line in lines(path)]
    assert keys == ["cam1:0:novel", "cam1:1:novel", "cam1:1:adversarial"]


def test_concurrent_writers_produce_each_line_once(tmp_path):
    path = tmp_path / "alerts.jsonl"
    alerts = [alert(i, stream=f"cam{i % 3}") for i in range(40)]
    with JsonlSink(path) as sink:
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.extend(sink.write(a) for a in alerts)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results.count(True) == 40 and results.count(False) == 120
    assert sorted(lines(path)) == sorted(a.to_json_bytes() for a in alerts)


def test_a_torn_last_line_from_a_crash_is_cut_off(tmp_path, caplog):
    path = tmp_path / "alerts.jsonl"
    with JsonlSink(path) as sink:
        sink.write(alert(0))
    torn = alert(1).to_json_bytes()[:40]
    with open(path, "ab") as handle:
        handle.write(torn)
    with JsonlSink(path) as reopened:
        assert len(reopened) == 1
        assert reopened.write(alert(1)) is True
    assert lines(path) == [alert(0).to_json_bytes(), alert(1).to_json_bytes()]
    assert "torn last line" in caplog.text


def test_corruption_inside_the_file_names_file_and_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(alert(0).to_json_bytes() + b"\n{oops\n" + alert(1).to_json_bytes() + b"\n")
    with pytest.raises(JournalError, match=rf"^{path}:2: not JSON: ") as error:
        JsonlSink(path)
    assert isinstance(error.value, ValueError)
    path.write_bytes(b'{"kind":"novel"}\n')
    with pytest.raises(JournalError, match=rf"^{path}:1: alert line without an idempotency_key$"):
        JsonlSink(path)


def test_writing_after_close_is_an_error(tmp_path):
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    sink.close()
    with pytest.raises(SinkClosedError, match="alert sink is closed"):
        sink.write(alert(0))


def test_group_commit_writes_at_once_and_syncs_once_when_the_block_ends(tmp_path, monkeypatch):
    from pipeline.alerts import journal as journal_module

    synced: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = journal_module.JsonlJournal(tmp_path / "verdicts.jsonl")
    synced.clear()  # creating the file syncs its directory
    log.append({"n": 0})
    assert len(synced) == 1, "outside a block every record is synced"
    with log.group_commit():
        with log.group_commit():  # nested blocks sync once, at the outer end
            for n in range(1, 4):
                log.append({"n": n})
        # written and flushed already: a killed process loses none of them
        assert [json.loads(line)["n"] for line in lines(log.path)] == [0, 1, 2, 3]
        assert len(synced) == 1
    assert len(synced) == 2
    with log.group_commit():
        pass
    assert len(synced) == 2, "a block without appends syncs nothing"
    with log.group_commit():
        log.append({"n": 4})
        log.close()  # closing inside a block still makes the lines durable
    assert len(synced) == 3
    assert [json.loads(line)["n"] for line in lines(log.path)] == [0, 1, 2, 3, 4]


def test_a_torn_tail_of_unsynced_lines_is_cut_off_but_a_bad_line_before_good_ones_is_corruption(tmp_path, caplog):
    from pipeline.alerts.journal import JsonlJournal

    path = tmp_path / "verdicts.jsonl"
    good = b'{"n": 0}\n{"n": 1}\n'
    path.write_bytes(good + b"\0\0\0\0\n" + b'{"n": 2' + b"\n\0\0")  # a power cut during a group commit
    journal = JsonlJournal(path)
    assert journal.existing == [{"n": 0}, {"n": 1}]
    assert path.read_bytes() == good and "torn tail of 3 lines" in caplog.text
    journal.append({"n": 2})
    journal.close()
    assert JsonlJournal(path).existing == [{"n": 0}, {"n": 1}, {"n": 2}]
    path.write_bytes(b'{"n": 0}\n\0\0\n{"n": 1}\n')
    with pytest.raises(JournalError, match=rf"^{path}:2: not JSON: "):
        JsonlJournal(path)


def test_after_a_failed_group_sync_the_journal_refuses_more_and_other_threads_are_not_deferred(tmp_path, monkeypatch):
    from pipeline.alerts import journal as journal_module

    real_fsync = journal_module.os.fsync
    synced: list[str] = []
    log = journal_module.JsonlJournal(tmp_path / "verdicts.jsonl")

    def fsync(fd):
        synced.append(threading.current_thread().name)
        return real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    with log.group_commit():
        log.append({"n": 0})
        other = threading.Thread(target=log.append, args=({"n": 1},), name="other")
        other.start()
        other.join()
        assert synced == ["other"], "another thread's append is synced at once"
        log.append({"n": 1.5})
    assert synced == ["other", "MainThread"], "the block syncs what its thread wrote since"

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error"), log.group_commit():
        log.append({"n": 2})
    monkeypatch.setattr(journal_module.os, "fsync", fsync)  # a later fsync may succeed without the lost lines
    with pytest.raises(OSError, match="an earlier fsync failed"), log.group_commit():
        pass
    with pytest.raises(OSError, match="an earlier fsync failed"):
        log.append({"n": 3})
    log.close()


def test_a_whole_json_value_that_is_not_an_object_is_corruption_even_at_the_end(tmp_path):
    from pipeline.alerts.journal import JsonlJournal

    path = tmp_path / "verdicts.jsonl"
    for tail in (b"null\n", b"[1, 2]\n", b"{oops\n[1]\n"):
        path.write_bytes(b'{"n": 0}\n' + tail)
        with pytest.raises(JournalError, match=rf"^{path}:2: "):
            JsonlJournal(path)
