"""One thread runs the model; concurrent requests' faces are embedded together in one batch.

No timer: the thread takes whatever faces are waiting when it is free. One client alone gets no
added latency; under load, the faces that queued while a batch ran form the next batch, which is
where a batched forward pass pays (a PyTorch model on CPU or any model on a GPU).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Optional

import numpy as np

from irface.infer.embed import l2_normalize
from irface.infer.model_file import Embedder


class EmbedBatcher(Embedder):
    """The served model as an `Embedder` whose `embed(crops)` may be called from any thread.

    Rows come back L2-normalised. Everything else (input size, threshold, info) is the model's, so
    the library's functions that take an Embedder (`compare_faces`, ...) run through the batcher.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 64):
        self.embedder = embedder
        self.input_hw, self.embedding_size, self.info = embedder.input_hw, embedder.embedding_size, embedder.info
        self.threshold = embedder.threshold
        self.threshold_source = getattr(embedder, "threshold_source", None)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Optional[tuple[np.ndarray, Future]]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="irface-embed", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    def embed(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.embedder.embedding_size), np.float32)
        self.start()
        future: Future = Future()
        self._queue.put((crops, future))
        return future.result()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            count = len(item[0])
            stop = False
            while count < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                count += len(more[0])
            self._embed(batch)
            if stop:
                return

    def _embed(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            out = l2_normalize(self.embedder.embed(np.concatenate([crops for crops, _ in batch])))
        except BaseException as e:  # each waiting request gets the error, the thread carries on
            for _, future in batch:
                future.set_exception(e)
            return
        start = 0
        for crops, future in batch:
            future.set_result(out[start:start + len(crops)])
            start += len(crops)
