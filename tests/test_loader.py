import numpy as np
import torch

from irface.data.datasets import ArrayDataset, ImageFolderDataset
from irface.data.loader import build_train_loader, set_loader_epoch


def _dataset(n=24):
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 5)


def _epoch(loader, epoch, start=0):
    set_loader_epoch(loader, epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_two_ranks_see_the_global_batches_of_one_process():
    ds = _dataset()
    one = _epoch(build_train_loader(ds, 8, num_workers=0, seed=3), 2)
    r0 = _epoch(build_train_loader(ds, 4, rank=0, world_size=2, num_workers=0, seed=3), 2)
    r1 = _epoch(build_train_loader(ds, 4, rank=1, world_size=2, num_workers=0, seed=3), 2)
    assert len(one) == len(r0) == len(r1) == 3
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert torch.equal(torch.cat([y0, y1]), y)
        assert torch.equal(torch.cat([x0, x1]), x)  # flips agree too


def test_epochs_differ_and_resume_skips_exactly():
    loader = build_train_loader(_dataset(), 4, num_workers=0)
    e0, e1 = _epoch(loader, 0), _epoch(loader, 1)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(e0, e1))
    resumed = _epoch(loader, 1, start=4)
    assert len(resumed) == len(e1) - 4
    for (x, y), (xr, yr) in zip(e1[4:], resumed):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_persistent_workers_follow_the_epoch():
    ds = _dataset()
    ref = build_train_loader(ds, 4, num_workers=0)
    par = build_train_loader(ds, 4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        for (x, y), (xp, yp) in zip(_epoch(ref, epoch), _epoch(par, epoch)):
            assert torch.equal(x, xp) and torch.equal(y, yp)


def test_image_folder_sorted_classes(tmp_path):
    from PIL import Image

    for cls in ("b", "a"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (112, 112), (5, 5, 5)).save(tmp_path / cls / "0.png")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a", "b"] and ds.num_classes == 2
    img, label = ds[1]
    assert img.shape == (3, 112, 112) and img.dtype == torch.uint8 and label == 1
