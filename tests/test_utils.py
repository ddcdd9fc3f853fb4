import os
import stat

import pytest

from irface.utils import atomic_write


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "f.txt", "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_lazy_exports_find_each_name_in_its_module_and_refuse_others():
    import irface.export
    import irface.infer
    from irface.data.align import align_face
    from irface.export.api import export_model

    assert irface.export.export_model is export_model and irface.infer.align_face is align_face
    assert sorted(irface.export.__all__) == irface.export.__all__ and "export_model" in irface.export.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        irface.infer.nothing  # noqa: B018
    assert not hasattr(irface.export, "fold_batchnorm")  # moved to irface.models.fold
