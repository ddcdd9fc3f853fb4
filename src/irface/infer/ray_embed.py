"""`irface embed --ray`: the photo pipeline on Ray Data, for more photos than one process gets through.

The photos are listed as `irface embed` lists them (`collect_faces`) and cut into shards of
`shard_size` in listing order. Each shard goes through two stages:
- a Ray task (one CPU) reads, decodes, detects and aligns its photos with the one-process functions
  (`irface.infer.embed.source_faces`), keeping each skipped photo and its reason;
- an actor of a fixed pool holds the model (one GPU each when the cluster has GPUs) and embeds the
  shard's crops, then writes the shard's Parquet file itself (`irface.infer.shards`: to a temporary name,
  then renamed), so only counts come back to the driver.
The driver marks each finished shard done in the manifest. A rerun with the same model, photos and
options skips the shards marked done; a task whose worker dies is retried by Ray, a dead actor restarted.

On a cluster (`--ray ADDRESS`), every node needs irface installed and the --output folder on storage
all nodes share (the actors write there).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from irface.data.images import crop_shape
from irface.errors import ConfigError, DataError, first_line
from irface.infer.shards import (Manifest, check_output_folder, exclusive, import_ray_extra, listing_digest,
                                 remove_partial_files, shard_metadata, shard_name, shard_ranges, write_shard)

if TYPE_CHECKING:
    from irface.infer.images import FaceSource

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ShardJob:
    """What the tasks and actors need to know (sent to them pickled)."""

    output: str
    model: dict[str, Any]  # load_model's keyword arguments (irface.cli._model.model_options)
    input_size: int | tuple[int, int]  # the model's side, or (H, W) for a model that is not square
    embedding_size: int
    mode: str = "auto"
    all_faces: bool = False
    detector: Optional[dict[str, Any]] = None  # load_detector's options; None: the defaults
    quality: bool = False
    batch_size: int = 64
    cwd: str = "."  # the driver's folder: photo names relative to it are read from there on any node


# ---- the detection stage: Ray tasks -------------------------------------------------------------

class _TaskDetector:
    """The detector, made on first use (a folder of aligned crops never needs it) with one onnxruntime
    thread: each task holds one CPU, and the cluster's parallelism comes from running many tasks."""

    def __init__(self, options: Optional[dict[str, Any]]):
        self.options = dict(options or {})
        self._detector = None

    def _get(self):
        if self._detector is None:
            from irface.detect import load_detector

            self._detector = load_detector(**self.options, threads=1)
        return self._detector

    def detect(self, image: np.ndarray):
        return self._get().detect(image)

    def describe(self) -> str:
        return self._get().describe()


@functools.lru_cache(maxsize=4)
def _task_detector(options_json: str) -> _TaskDetector:
    # One per worker process and settings: made once, reused by every task the worker runs.
    return _TaskDetector(json.loads(options_json))


def shard_faces(photos: Sequence[str], job: ShardJob) -> tuple[np.ndarray, dict[str, Any]]:
    """Every face of a shard's photos: the crops (N, S, S, 3) uint8 and {"sources", "faces", "boxes",
    "scores", "skipped"}, by the one-process rules (`source_faces`)."""
    import dataclasses

    from irface.infer.embed import source_faces
    from irface.infer.images import collect_faces

    detector = _task_detector(json.dumps(job.detector, sort_keys=True))
    crops: list[np.ndarray] = []
    meta: dict[str, list] = {"sources": [], "faces": [], "boxes": [], "scores": [], "skipped": []}
    for name in photos:
        try:
            # The listing's own FaceSource for a file, read where the driver's relative name points (a
            # worker's folder is not the driver's), named as the listing named it.
            source = dataclasses.replace(collect_faces([Path(job.cwd) / name], job.input_size)[0], name=name)
        except DataError as e:  # the photo went away since the listing
            meta["skipped"].append({"name": name, "reason": str(e)})
            continue
        found, skip = source_faces(source, mode=job.mode, all_faces=job.all_faces, detector=detector,
                                   size=job.input_size)
        if skip:
            meta["skipped"].append(skip)
        for k, face in enumerate(found):
            crops.append(face.crop)
            meta["sources"].append(name)
            meta["faces"].append(k)
            meta["boxes"].append(None if face.box is None else [float(v) for v in face.box])
            meta["scores"].append(None if face.score is None else float(face.score))
    return (np.stack(crops) if crops else np.zeros((0, *crop_shape(job.input_size), 3), np.uint8)), meta


def _find_faces(batch: dict[str, Any], job: ShardJob) -> dict[str, Any]:
    """The detection stage over a batch of shards: crops travel as bytes, the rest as JSON."""
    out: dict[str, list] = {"shard": [], "photos": [], "crops": [], "meta": []}
    for k, photos in zip(batch["shard"], batch["photos"]):
        crops, meta = shard_faces([str(p) for p in photos], job)
        out["shard"].append(int(k))
        out["photos"].append(len(photos))
        out["crops"].append(crops.tobytes())
        out["meta"].append(json.dumps(meta))
    return {"shard": np.array(out["shard"], np.int64), "photos": np.array(out["photos"], np.int64),
            "crops": np.array(out["crops"], dtype=object), "meta": np.array(out["meta"], dtype=object)}


# ---- the model stage: a pool of actors ----------------------------------------------------------

class EmbedShards:
    """An actor holding the model: embeds a shard's crops and writes the shard's file."""

    def __init__(self, job: ShardJob):
        from irface.infer import load_model

        self.job = job
        self.embedder = load_model(**job.model)  # device "auto": the GPU Ray gave this actor, if any

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """The model's raw outputs (N, E) float32, `batch_size` crops per forward, as `embed_sources` runs it."""
        bs = self.job.batch_size
        chunks = [self.embedder.embed(crops[i:i + bs]).astype(np.float32) for i in range(0, len(crops), bs)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.job.embedding_size), np.float32)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from irface.infer.embed import unit_and_norms

        h, w = crop_shape(self.job.input_size)
        done: dict[str, list] = {"shard": [], "photos": [], "faces": [], "skipped": []}
        for k, photos, data, meta_json in zip(batch["shard"], batch["photos"], batch["crops"], batch["meta"]):
            meta = json.loads(meta_json)
            crops = np.frombuffer(data, np.uint8).reshape(-1, h, w, 3)
            embeddings, norms = unit_and_norms(self.embed(crops))
            write_shard(Path(self.job.output) / shard_name(int(k)), meta["sources"], meta["faces"], meta["boxes"],
                        meta["scores"], embeddings, norms if self.job.quality else None, photos=int(photos),
                        skipped=meta["skipped"])
            done["shard"].append(int(k))
            done["photos"].append(int(photos))
            done["faces"].append(len(crops))
            done["skipped"].append(json.dumps(meta["skipped"]))
        return {"shard": np.array(done["shard"], np.int64), "photos": np.array(done["photos"], np.int64),
                "faces": np.array(done["faces"], np.int64), "skipped": np.array(done["skipped"], dtype=object)}


# ---- the driver ---------------------------------------------------------------------------------

def _import_ray():
    ray = import_ray_extra("ray")
    import_ray_extra("ray.data")
    return ray


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, verbose: bool = False) -> bool:
    """Connect to the cluster at `address`, or start a local Ray with `num_cpus` (default: this machine's
    CPUs); nothing when Ray is already up in this process (the caller's). True when this call started it.
    Ray's own logs go to its session folder, not the terminal (unless `verbose`)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": verbose,
             "logging_level": logging.INFO if verbose else logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"--ray: cannot start or reach {where} ({first_line(e)})") from None
    return True


def _quiet_ray_data(ctx, verbose: bool) -> None:
    ctx.enable_progress_bars = False  # the driver shows its own bar, of photos
    ctx.print_on_execution_start = verbose
    if not verbose:
        for handler in logging.getLogger("ray.data").handlers:
            # Ray's console handler only: Ray Data's logging set-up also hangs the handlers the process had
            # (irface's console, a test's capture) on its logger, and those must keep their levels.
            if type(handler).__module__.startswith("ray.") and not hasattr(handler, "baseFilename"):
                handler.setLevel(logging.ERROR)


def pool_size(resources: dict[str, float], actors: int = 0) -> tuple[int, int]:
    """(actors, GPUs per actor): one actor per GPU when the cluster has GPUs; on CPUs only, a quarter of
    them (at least one), and never all: an actor holding the only CPU starves the detection tasks."""
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if actors < 0:
        raise ConfigError(f"--actors must be positive, got {actors}")
    n = actors or (gpus if gpus else max(1, cpus // 4))
    if gpus and n > gpus:
        raise ConfigError(f"--actors {n}: the cluster has {gpus} GPU(s), one per actor")
    if not gpus and n >= cpus:
        raise ConfigError(f"--actors {n}: the Ray cluster has {cpus} CPU(s); the model's actors would hold them all "
                          "and starve the detection tasks (give the cluster more CPUs, or fewer actors)")
    return n, 1 if gpus else 0


def _run_pipeline(job: ShardJob, shards: list[tuple[int, list[str]]], manifest: Manifest, *, actors: int,
                  strict: bool, progress: bool, verbose: bool) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm import tqdm

    ctx = DataContext.get_current()
    _quiet_ray_data(ctx, verbose)
    n_actors, gpus = pool_size(ray.cluster_resources(), actors)
    log.info("embedding %d shards on Ray: %d model actor(s)%s", len(shards), n_actors, " (1 GPU each)" if gpus else "")
    ds: Any = ray.data.from_items([{"shard": k, "photos": photos} for k, photos in shards], override_num_blocks=len(shards))
    # max_calls=0 is Ray's default for tasks (a worker runs any number); it is named so that the two stages'
    # remote arguments differ and Ray Data does not fuse detection into the actors, which would leave it
    # to the pool's few CPUs.
    ds = ds.map_batches(_find_faces, fn_kwargs={"job": job}, batch_size=1, num_cpus=1, max_calls=0)
    ds = ds.map_batches(EmbedShards, fn_constructor_kwargs={"job": job}, batch_size=1,
                        compute=ActorPoolStrategy(size=n_actors), num_cpus=1, num_gpus=gpus)
    total = sum(len(p) for _, p in shards)
    with tqdm(total=total, unit="photo", file=sys.stderr, disable=not progress, desc="embed (ray)") as bar:
        for row in ds.iter_rows():
            skipped = json.loads(row["skipped"])
            if strict and skipped:
                raise DataError(skipped[0]["reason"])
            manifest.mark_done(int(row["shard"]), int(row["photos"]), int(row["faces"]), len(skipped))
            bar.update(int(row["photos"]))


def embed_to_shards(model: dict[str, Any], inputs: Sequence[str | Path], output: str | Path, *,
                    address: Optional[str] = None, num_cpus: Optional[int] = None,
                    shard_size: int, actors: int = 0, batch_size: int = 64,
                    mode: str = "auto", all_faces: bool = False, strict: bool = False,
                    detector: Optional[dict[str, Any]] = None, quality: bool = False, progress: bool = True,
                    verbose: bool = False, listing: Optional[Sequence[FaceSource]] = None,
                    embedder: Any = None) -> dict[str, Any]:
    """Embed every face under `inputs` into Parquet shards in the folder `output` (resuming a run there);
    returns the summary `irface embed --json` prints. `model` holds `load_model`'s arguments.

    `listing`: the photos to embed when the caller listed `inputs` itself and keeps only some (`irface gallery
    build --ray`: the photos of its identity folders, `identity_folders`); default every image under `inputs`
    (`collect_faces`). `inputs` is recorded in the manifest either way: the folders the photos are named below.
    `embedder`: the model of `model`, opened on the CPU by a caller that needed it first (the gallery's
    fingerprint); default: opened here."""
    from irface.infer.fingerprint import model_fingerprint
    from irface.infer import load_model
    from irface.infer.images import collect_faces
    from irface.infer.photo import _check_mode

    from irface.infer.embed import OUTPUT_SUFFIXES

    _check_mode(mode)
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if Path(output).suffix.lower() in OUTPUT_SUFFIXES:
        raise ConfigError(f"{output}: with --ray the output is a folder of Parquet shards (e.g. {Path(output).stem})")
    _import_ray()  # a missing extra is one line before anything is written
    output = check_output_folder(output)
    # The model is opened here once (on the CPU) to refuse a bad file before Ray starts, and for its
    # fingerprint and sizes; the actors open their own.
    if embedder is None:
        embedder = load_model(**{**model, "device": "cpu"})
    sources = collect_faces(inputs, embedder.input_size) if listing is None else listing
    if any(s.photo is None for s in sources):
        raise ConfigError("--ray takes image files and folders; a RecordIO archive holds aligned crops already: "
                          "embed it without --ray")
    names = [s.name for s in sources]
    del sources, listing  # the driver holds the listing of every photo: keep only the names
    ranges = shard_ranges(len(names), shard_size)
    job = ShardJob(str(output.resolve()), {**model, "path": str(Path(model["path"]).resolve())}, embedder.input_size,
                   embedder.embedding_size, mode, all_faces, detector, quality, batch_size, os.getcwd())
    run = {"fingerprint": model_fingerprint(embedder), "embedding_size": embedder.embedding_size,
           "input_size": embedder.input_size, "precision": model.get("precision", "fp32"),
           "options": {"mode": mode, "all_faces": all_faces, "quality": quality, "detector": detector},
           "listing": listing_digest(names), "shard_size": shard_size, "shards": len(ranges),
           "model": str(model["path"]), "inputs": [str(Path(p)) for p in inputs]}
    started = time.perf_counter()
    with exclusive(output):
        manifest = Manifest.open_or_create(output, run)
        if remove_partial_files(output):
            log.info("%s: removed the partial shard files of an interrupted run", output)
        pending = [(k, names[a:b]) for k, (a, b) in enumerate(ranges) if not manifest.is_done(k)]
        done_before = len(ranges) - len(pending)
        if done_before:
            log.info("%s: %d of %d shards already done; embedding the other %d", output, done_before, len(ranges),
                     len(pending))
        if pending:
            started_ray = start_ray(address, num_cpus, verbose)
            try:
                _run_pipeline(job, pending, manifest, actors=actors, strict=strict, progress=progress, verbose=verbose)
                remove_partial_files(output)  # an actor killed while writing left its temporary file
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
    return summarize(manifest, done_before=done_before, written=len(pending),
                     seconds=time.perf_counter() - started)


def summarize(manifest: Manifest, *, done_before: int, written: int, seconds: float) -> dict[str, Any]:
    """The run's summary from the manifest and the shards' footers (skips) or columns (norms)."""
    skipped: list[dict] = []
    for k in range(manifest.shards):
        skipped += shard_metadata(manifest.folder / shard_name(k))["skipped"]
    count = sum(d["faces"] for d in manifest.done.values())
    if not count:
        raise DataError(f"no face embedded: all {manifest.data['listing']['photos']} inputs were skipped "
                        f"(first: {skipped[0]['reason']})")
    summary: dict[str, Any] = {
        "count": count, "embedding_size": int(manifest.data["embedding_size"]),
        "files": [str(manifest.path)], "output": str(manifest.folder),
        "photos": manifest.data["listing"]["photos"],
        "shards": {"total": manifest.shards, "written": written, "done_before": done_before},
        "seconds": round(seconds, 3), "skipped": skipped}
    if manifest.data["options"].get("quality"):
        from irface.infer.shards import read_shards

        norms = np.asarray(read_shards(manifest.folder).norms)
        summary["norm"] = {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}
    return summary

