"""The result of `irface cluster --into STATE`, kept for the next run: every face, its embedding, its person.

One `.npz` file (numpy, no pickles): `embeddings` float32 (N, E) L2-normalised, `labels` int64 (N,)
(-1 noise), and `header`, UTF-8 JSON bytes: format and version, the model's path and fingerprint
(`irface.infer.fingerprint`), the threshold and min faces in use, every face's photo, number in the
photo, box and score, and every photo already looked at (with or without a face), so that a growing
library's next run embeds only its new photos. Written atomically: a run that fails leaves the old file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from irface.errors import ConfigError, DataError, ModelFileError
from irface.utils import atomic_write

FORMAT = "irface-cluster-state"
VERSION = 1


@dataclass
class ClusterState:
    model: str
    fingerprint: str
    threshold: float
    threshold_source: str
    min_faces: int
    embeddings: np.ndarray  # float32 (N, E), L2-normalised
    labels: np.ndarray  # int64 (N,), -1 noise
    faces: list[dict[str, Any]]  # {"source", "face", "box", "score"} per row
    photos: list[str] = field(default_factory=list)  # every photo looked at, face or not

    def header(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "fingerprint": self.fingerprint,
                "threshold": self.threshold, "threshold_source": self.threshold_source,
                "min_faces": self.min_faces, "faces": [[f["source"], f["face"], f["box"], f["score"]]
                                                       for f in self.faces], "photos": self.photos}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        header = np.frombuffer(json.dumps(self.header()).encode(), np.uint8)
        with atomic_write(path, "wb") as f:
            np.savez(f, embeddings=np.asarray(self.embeddings, np.float32),
                     labels=np.asarray(self.labels, np.int64), header=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClusterState":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such cluster state file")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                embeddings, labels = z["embeddings"], z["labels"]
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, UnicodeDecodeError, EOFError) as e:
            raise DataError(f"{path}: not a cluster state written by irface cluster --into "
                            f"({type(e).__name__})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise DataError(f"{path}: not a cluster state written by irface cluster --into")
        if header.get("version") != VERSION:
            raise DataError(f"{path}: cluster state version {header.get('version')}; this irface reads {VERSION}")
        faces = [{"source": s, "face": int(k), "box": box, "score": score} for s, k, box, score in header["faces"]]
        if embeddings.ndim != 2 or len(embeddings) != len(faces) or labels.shape != (len(faces),):
            raise DataError(f"{path}: damaged cluster state ({len(faces)} faces, embeddings {embeddings.shape}, "
                            f"labels {labels.shape})")
        return cls(header["model"], header["fingerprint"], float(header["threshold"]), header["threshold_source"],
                   int(header["min_faces"]), embeddings.astype(np.float32), labels.astype(np.int64), faces,
                   list(header.get("photos", [])))

    def check_model(self, fingerprint: str, path: str | Path) -> None:
        """Refuse, in one line, faces embedded by another model: their similarities mean nothing here."""
        if fingerprint != self.fingerprint:
            raise ModelFileError(f"{path}: clustered with another model ({Path(self.model).name}, "
                                 f"{self.fingerprint[:19]}), not this one ({fingerprint[:19]}); use that model "
                                 "or start a new state file")

    def people(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels[self.labels >= 0]))

    def members(self, cluster: int, path: str | Path) -> np.ndarray:
        """Rows of one person; ConfigError naming the people there are when it is not one."""
        if cluster < 0:
            raise ConfigError(f"{path}:{cluster}: -1 is the faces that belong to no one, not a person")
        rows = np.where(self.labels == cluster)[0]
        if not len(rows):
            people = self.people()
            have = f"people 0 to {people[-1]}" if people else "no people"
            raise ConfigError(f"{path}:{cluster}: no such person in this state (it has {have})")
        return rows


def parse_reference(ref: str) -> tuple[Path, int]:
    """`STATE:c` -> (state file, person number)."""
    path, sep, number = str(ref).rpartition(":")
    try:
        cluster = int(number)
    except ValueError:
        cluster = None
    if not sep or not path or cluster is None:
        raise ConfigError(f"--from-cluster {ref}: expected STATE:NUMBER (e.g. people.npz:0)")
    return Path(path), cluster


def enroll_cluster(gallery: Any, identity: str, ref: str) -> dict[str, Any]:
    """`irface gallery add G NAME --from-cluster STATE:c`: the faces of person c, as they were embedded."""
    from irface.gallery import validate_identity

    validate_identity(identity)
    path, cluster = parse_reference(ref)
    state = ClusterState.load(path)
    gallery.check_model(state.fingerprint)
    rows = state.members(cluster, path)
    boxes: Optional[np.ndarray] = None
    if all(state.faces[i]["box"] is not None for i in rows):
        boxes = np.array([state.faces[i]["box"] for i in rows], np.float64)
    gallery.add(identity, state.embeddings[rows], [state.faces[i]["source"] for i in rows], boxes)
    return {"faces": int(len(rows)), "identities": 1, "skipped": [], "from_cluster": f"{path}:{cluster}"}
