"""The server's embedding thread: concurrent requests' faces share a forward pass, each gets its own rows."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from irface.infer.embed import l2_normalize
from irface.infer.model_file import Embedder, TorchEmbedder
from irface.serve.batcher import EmbedBatcher


class GatedEmbedder(Embedder):
    """Delegates to a real embedder; records batch sizes; the first call waits until `release` is set."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self.input_size, self.embedding_size, self.info = inner.input_size, inner.embedding_size, inner.info
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        self.entered.set()
        self.release.wait(30)
        if (images == 7).all():
            raise ValueError("bad batch")
        return self.inner.embed(images)


@pytest.fixture
def embedder(tiny_backbone):
    return TorchEmbedder(tiny_backbone, {"path": "tiny"}, torch.device("cpu"), 16, 16)


def test_waiting_requests_are_embedded_together_and_each_gets_its_rows(embedder):
    gated = GatedEmbedder(embedder)
    batcher = EmbedBatcher(gated, max_batch=64)
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, 256, (1 + i % 3, 16, 16, 3), dtype=np.uint8) for i in range(9)]
    results: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        results[i] = batcher.embed(requests[i])

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert gated.entered.wait(30)  # the model is busy with request 0 ...
    others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 9)]
    for t in others:
        t.start()
    while batcher._queue.qsize() < 8:  # ... while the other eight queue up
        threading.Event().wait(0.01)
    gated.release.set()
    for t in [first, *others]:
        t.join(30)
    batcher.close()
    assert gated.sizes == [len(requests[0]), sum(len(r) for r in requests[1:])]
    for i, crops in enumerate(requests):
        np.testing.assert_allclose(results[i], l2_normalize(embedder.embed(crops)), rtol=1e-4, atol=1e-5)


def test_an_error_reaches_every_request_of_its_batch_and_the_thread_goes_on(embedder):
    gated = GatedEmbedder(embedder)
    gated.release.set()
    batcher = EmbedBatcher(gated)
    with pytest.raises(ValueError, match="bad batch"):
        batcher.embed(np.full((2, 16, 16, 3), 7, np.uint8))
    ok = batcher.embed(np.zeros((1, 16, 16, 3), np.uint8))
    assert ok.shape == (1, 16) and abs(np.linalg.norm(ok) - 1) < 1e-5
    batcher.close()
    assert batcher.embed(np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 16)
