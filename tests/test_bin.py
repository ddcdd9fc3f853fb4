"""`.bin` verification sets: the archive's format reads, and a crafted pickle runs nothing."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from irface.data import load_bin, read_bin, save_bin
from irface.errors import DataError


def jpeg(color, size=112):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_protocol2_pickle_of_jpeg_bytes_loads(tmp_path):
    bins = [jpeg((200, 10, 10)), jpeg((10, 200, 10)), jpeg((10, 10, 200)), jpeg((10, 10, 200))]
    path = tmp_path / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump((bins, [False, True]), f, protocol=2)  # how the archive's files are written
    images, issame = load_bin(path)
    assert images.shape == (4, 112, 112, 3) and images.dtype == np.uint8
    assert issame.tolist() == [False, True]
    assert images[0, 50, 50, 0] > 150 and images[1, 50, 50, 1] > 150  # RGB order kept


def test_numpy_bool_labels_and_numpy_byte_arrays(tmp_path):
    bins = [np.frombuffer(jpeg((1, 2, 3)), dtype=np.uint8) for _ in range(2)]
    path = tmp_path / "x.bin"
    with open(path, "wb") as f:
        pickle.dump((bins, np.array([True])), f, protocol=4)
    images, issame = load_bin(path)
    assert images.shape == (2, 112, 112, 3) and issame.tolist() == [True]


@pytest.mark.faults
def test_other_sizes_are_resized_short_side_and_centre_cropped(tmp_path):
    save_bin(tmp_path / "a.bin", [jpeg((9, 9, 9), 224), jpeg((9, 9, 9), 96)], [True])
    images, _ = load_bin(tmp_path / "a.bin")
    assert images.shape == (2, 112, 112, 3)


def test_save_bin_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    save_bin(tmp_path / "r.bin", arr, [True, False])
    bins, issame = read_bin(tmp_path / "r.bin")
    assert len(bins) == 4 and issame.tolist() == [True, False]


@pytest.mark.faults
def test_crafted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump(([Payload(), b"x"], [True]), f, protocol=2)
    with pytest.raises(DataError, match="refusing to load 'posix.system'"):
        load_bin(path)
    assert not marker.exists()


@pytest.mark.faults
@pytest.mark.parametrize("obj,message", [
    (([b"a", b"b", b"c"], [True]), "odd number of images"),
    (([b"a", b"b", b"c", b"d"], [True]), "4 images but 1 pairs"),
    ({"a": 1}, "expected a pickle of"),
])
def test_malformed_bins_are_refused(tmp_path, obj, message):
    path = tmp_path / "m.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=message):
        read_bin(path)


@pytest.mark.faults
def test_garbage_and_missing(tmp_path):
    (tmp_path / "g.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="g.bin"):
        read_bin(tmp_path / "g.bin")
    with pytest.raises(DataError, match="no such file"):
        read_bin(tmp_path / "none.bin")


@pytest.mark.faults
def test_undecodable_image_names_the_file_and_index(tmp_path):
    save_bin(tmp_path / "u.bin", [jpeg((1, 1, 1)), b"not an image"], [True])
    with pytest.raises(DataError, match=r"u\.bin image 1: cannot decode"):
        load_bin(tmp_path / "u.bin")
