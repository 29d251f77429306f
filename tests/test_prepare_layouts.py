"""`data prepare` on every common layout: captions tables by column name (OpenVid, WebVid, Panda-70M; CSV, TSV,
JSONL, Parquet), Hugging Face VideoFolder, webdataset tars; the report, workers, and resuming."""

import csv
import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expert.prepare import REPORT_NAME, STATE_NAME, PrepareReport, prepare_videos
from expert.shards import load_dataset, open_dataset
from protocol.errors import ParisError
from tests.videos import frame_index, write_video

SMALL = {"frames": 4, "fps": 8.0, "height": 16, "width": 16}  # 0.5 s clips


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Four real videos of different codecs, rates and sizes, one 10 s long; and a broken one."""
    d = tmp_path_factory.mktemp("sources")
    write_video(d / "a.mp4", frames=24, fps=24, height=64, width=96)
    write_video(d / "b.avi", frames=25, fps=25, height=48, width=64, codec="mpeg4")
    write_video(d / "c.webm", frames=30, fps=30, height=96, width=64, codec="libvpx-vp9")
    write_video(d / "long.mp4", frames=120, fps=12, height=72, width=128, gop=24)
    (d / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    return d


def _folder(sources, dest, files: dict[str, str]):
    for rel, name in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources / name, dest / rel)
    return dest


def _csv(path, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def test_openvid_csv_with_files_in_subfolders(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4", "sub/b.avi": "b.avi", "c.webm": "c.webm",
                                             "stray.mp4": "a.mp4", "broken.mp4": "broken.mp4"})
    caps = _csv(tmp_path / "OpenVid-1M.csv", [
        {"video": "a.mp4", "caption": "a red car", "aesthetic score": 5.1, "motion score": 2.0},
        {"video": "b.avi", "caption": "a blue boat", "aesthetic score": 4.2, "motion score": 1.0},
        {"video": "c.webm", "caption": "a tall tower", "aesthetic score": 4.0, "motion score": 3.0},
        {"video": "broken.mp4", "caption": "broken", "aesthetic score": 1.0, "motion score": 1.0},
        {"video": "gone.mp4", "caption": "not downloaded", "aesthetic score": 1.0, "motion score": 1.0},
        {"video": "a.mp4", "caption": "a red car, again", "aesthetic score": 5.1, "motion score": 2.0}])
    report = prepare_videos(vids, caps, tmp_path / "out", **SMALL)
    assert report.written == 3 and report.layout == "table:csv"
    reasons = {s.file: s.reason for s in report.skipped}
    assert reasons["stray.mp4"] == "no caption" and reasons["broken.mp4"].startswith("unreadable")
    assert reasons["gone.mp4"].startswith("no such video") and reasons["a.mp4"].startswith("listed again")
    manifest, clips = load_dataset(tmp_path / "out")
    assert manifest.fps == 8.0 and manifest.generator["layout"] == "table:csv"
    assert clips.names == ["a.mp4", "sub/b.avi", "c.webm"]
    assert clips.captions == ["a red car", "a blue boat", "a tall tower"]
    assert clips.frames.shape == (3, 4, 16, 16, 3)
    assert clips.spans == [(0.25, 0.75), (0.25, 0.75), (0.25, 0.75)]  # 1 s sources, the middle 0.5 s
    assert [frame_index(f) for f in clips.frames[0]] == [6, 9, 12, 15]  # 24 fps → 8 fps
    saved = PrepareReport.model_validate_json((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved.data_id == report.data_id and {s.file for s in saved.skipped} == set(reasons)
    lazy = open_dataset(tmp_path / "out")[1]
    assert lazy.spans == clips.spans and lazy.select([2, 0]).spans == [(0.25, 0.75)] * 2


def test_webvid_csv_finds_videos_under_page_dir(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"000001_000050/1001.mp4": "a.mp4", "000051_000100/1002.webm": "c.webm"})
    caps = _csv(tmp_path / "results_2M_train.csv", [
        {"videoid": 1001, "contentUrl": "https://x/1001.mp4", "duration": "PT00H00M01S", "page_dir": "000001_000050",
         "name": "Aerial shot of a lake"},
        {"videoid": 1002, "contentUrl": "https://x/1002.mp4", "duration": "PT00H00M01S", "page_dir": "000051_000100",
         "name": "Close-up of a flower"}])
    report = prepare_videos(vids, caps, tmp_path / "out", **SMALL)
    _, clips = load_dataset(tmp_path / "out")
    assert report.written == 2 and report.skipped == []
    assert clips.captions == ["Aerial shot of a lake", "Close-up of a flower"]
    assert clips.names == ["000001_000050/1001.mp4", "000051_000100/1002.webm"]


PANDA_STAMPS = [["0:00:01.000", "0:00:03.000"], ["0:00:05.500", "0:00:06.000"], ["0:00:08.000", "0:00:09.500"],
                ["0:00:09.800", "0:00:10.000"]]
PANDA_CAPTIONS = ["a dog runs", "the dog sits", "the dog sleeps", "too short"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_panda70m_timestamps_cut_several_clips_per_video(tmp_path, sources, suffix):
    vids = _folder(sources, tmp_path / "v", {"--abc123.mp4": "long.mp4", "zz9.mp4": "a.mp4"})
    rows = [{"videoID": "--abc123", "url": "https://youtu.be/--abc123", "timestamp": PANDA_STAMPS,
             "caption": PANDA_CAPTIONS, "matching_score": [0.4, 0.4, 0.4, 0.4]},
            {"videoID": "zz9", "url": "https://youtu.be/zz9", "timestamp": [["0:00:00.000", "0:00:01.000"]],
             "caption": ["a flash of red"], "matching_score": [0.3]},
            {"videoID": "missing", "url": "https://youtu.be/missing", "timestamp": [["0:00:00.000", "0:00:02.000"]],
             "caption": ["never downloaded"], "matching_score": [0.3]}]
    caps = tmp_path / f"panda70m_testing{suffix}"
    if suffix == ".csv":  # Panda-70M's CSVs hold the lists as Python literals
        _csv(caps, [{k: str(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
    elif suffix == ".jsonl":
        caps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), caps)
    report = prepare_videos(vids, caps, tmp_path / "out", **SMALL)
    _, clips = load_dataset(tmp_path / "out")
    assert clips.names == ["--abc123.mp4#0", "--abc123.mp4#1", "--abc123.mp4#2", "zz9.mp4#0"]
    assert clips.captions == ["a dog runs", "the dog sits", "the dog sleeps", "a flash of red"]
    assert clips.spans == [(1.75, 2.25), (5.5, 6.0), (8.5, 9.0), (0.25, 0.75)]
    assert [frame_index(f) for f in clips.frames[1]] == [66, 68, 69, 71]  # 12 fps, from 5.5 s (ties go later)
    reasons = {s.file: s.reason for s in report.skipped}
    assert reasons["--abc123.mp4#3"].startswith("too short: the segment lasts 0.20 s")
    assert reasons["missing"].startswith("no such video")


def test_tsv_and_explicit_columns(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4"})
    caps = _csv(tmp_path / "caps.tsv", [{"clip_name": "a.mp4", "words": "a red square, moving"}], delimiter="\t")
    with pytest.raises(ParisError, match=r"no video column; name it with --video-column\. Columns found: "
                                         r"clip_name, words"):
        prepare_videos(vids, caps, tmp_path / "out", **SMALL)
    report = prepare_videos(vids, caps, tmp_path / "out", video_column="clip_name", caption_column="words", **SMALL)
    assert report.written == 1 and load_dataset(tmp_path / "out")[1].captions == ["a red square, moving"]
    with pytest.raises(ParisError, match="has no column 'nope'"):
        prepare_videos(vids, caps, tmp_path / "out", video_column="nope", **SMALL)


def test_ambiguous_columns_are_one_line_errors(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4"})
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"file": "a.mp4", "path": "v/a.mp4", "caption": "x"}) + "\n")
    with pytest.raises(ParisError) as e:
        prepare_videos(vids, caps, tmp_path / "out", **SMALL)
    assert str(e.value) == ("caps.jsonl: video column is ambiguous (path, file); pick one with --video-column. "
                            "Columns found: file, path, caption")
    caps.write_text(json.dumps({"video": "a.mp4", "caption": "x", "text": "y"}) + "\n")
    with pytest.raises(ParisError, match=r"caption column is ambiguous \(caption, text\)"):
        prepare_videos(vids, caps, tmp_path / "out", **SMALL)


def test_huggingface_videofolder_needs_no_captions_flag(tmp_path, sources):
    root = _folder(sources, tmp_path / "hf", {"train/a.mp4": "a.mp4", "train/clips/b.avi": "b.avi",
                                              "test/c.webm": "c.webm", "train/extra.mp4": "a.mp4"})
    (root / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.mp4", "text": "a red car"}) + "\n"
        + json.dumps({"file_name": "clips/b.avi", "text": "a blue boat"}) + "\n")
    _csv(root / "test" / "metadata.csv", [{"file_name": "c.webm", "text": "a tall tower"}])
    report = prepare_videos(root, None, tmp_path / "out", **SMALL)
    assert report.layout == "videofolder" and report.written == 3
    assert [(s.file, s.reason) for s in report.skipped] == [("train/extra.mp4", "no caption")]
    _, clips = load_dataset(tmp_path / "out")
    assert clips.names == ["test/c.webm", "train/a.mp4", "train/clips/b.avi"]
    assert clips.captions == ["a tall tower", "a red car", "a blue boat"]


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_tar_shards_are_read_in_place(tmp_path, sources):
    shards = tmp_path / "wds"
    shards.mkdir()
    _tar(shards / "shard-000000.tar", {
        "000000.mp4": (sources / "a.mp4").read_bytes(), "000000.txt": b"a red car\n",
        "000001.webm": (sources / "c.webm").read_bytes(),
        "000001.json": json.dumps({"caption": "a tall tower", "width": 64}).encode(),
        "000002.mp4": (sources / "a.mp4").read_bytes()})
    _tar(shards / "shard-000001.tar", {
        "sub/000003.avi": (sources / "b.avi").read_bytes(), "sub/000003.txt": b"a blue boat",
        "000004.mp4": (sources / "broken.mp4").read_bytes(), "000004.txt": b"broken"})
    report = prepare_videos(shards, None, tmp_path / "out", **SMALL)
    assert report.layout == "webdataset" and report.written == 3
    reasons = {s.file: s.reason for s in report.skipped}
    assert reasons["shard-000000.tar/000002.mp4"] == "no caption"
    assert reasons["shard-000001.tar/000004.mp4"].startswith("unreadable")
    _, clips = load_dataset(tmp_path / "out")
    assert clips.captions == ["a red car", "a tall tower", "a blue boat"]
    assert [frame_index(f) for f in clips.frames[0]] == [6, 9, 12, 15]
    one = prepare_videos(shards / "shard-000001.tar", None, tmp_path / "one", **SMALL)
    assert one.written == 1
    (shards / "x.tar.gz").write_bytes(b"")
    with pytest.raises(ParisError, match=r"x\.tar\.gz is compressed"):
        prepare_videos(shards, None, tmp_path / "gz", **SMALL)


def test_no_layout_found_says_what_to_give(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4"})
    with pytest.raises(ParisError, match="pass --captions FILE"):
        prepare_videos(vids, None, tmp_path / "out", **SMALL)


def test_workers_and_resuming_give_the_same_data_set(tmp_path, sources):
    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4", "b.avi": "b.avi", "c.webm": "c.webm",
                                             "d.mp4": "long.mp4", "e.mp4": "broken.mp4"})
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"path": n, "prompt": f"clip {n}"}) + "\n" for n in
                            ("a.mp4", "b.avi", "c.webm", "d.mp4", "e.mp4")))
    args = {**SMALL, "clips_per_shard": 1}
    whole = prepare_videos(vids, caps, tmp_path / "whole", **args)
    assert whole.written == 4 and not (tmp_path / "whole" / STATE_NAME).exists()
    parallel = prepare_videos(vids, caps, tmp_path / "parallel", workers=2, **args)
    assert parallel.data_id == whole.data_id
    assert 0 < parallel.peak_worker_rss < 300 << 20

    seen = []

    def stop_after_two(n):
        seen.append(n)
        if sum(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_videos(vids, caps, tmp_path / "resumed", on_progress=stop_after_two, **args)
    assert (tmp_path / "resumed" / STATE_NAME).is_file() and not (tmp_path / "resumed" / "manifest.json").exists()
    seen.clear()
    resumed = prepare_videos(vids, caps, tmp_path / "resumed", on_progress=seen.append, **args)
    assert resumed.resumed == 2 and seen[0] == 2 and sum(seen) == 5
    assert resumed.data_id == whole.data_id and resumed.skipped == whole.skipped
    again = prepare_videos(vids, caps, tmp_path / "resumed", **args)  # finished: nothing is decoded again
    assert again == resumed
    changed = prepare_videos(vids, caps, tmp_path / "resumed", **{**args, "fps": 4.0})
    assert changed.resumed == 0 and changed.data_id != whole.data_id


def test_run_init_refuses_the_synthetic_feature_on_real_videos(tmp_path, sources):
    from expert.run_init import init_run

    vids = _folder(sources, tmp_path / "v", {"a.mp4": "a.mp4", "b.avi": "b.avi"})
    caps = _csv(tmp_path / "caps.csv", [{"video": "a.mp4", "caption": "x"}, {"video": "b.avi", "caption": "y"}])
    prepare_videos(vids, caps, tmp_path / "data", **SMALL)
    with pytest.raises(ParisError, match=r"holds real videos: the shapes-v1 feature .* pass --dinov2 DIR .* or "
                                         r"--clip-weights FILE"):
        init_run(tmp_path / "data", 2, preset_name="tiny")
