"""MindSpore `.ckpt` -> irface: the real MindSpore fixture, synthesised seed checkpoints, hostile files."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from irface.errors import ModelFileError
from irface.interop.mindspore import MindSporeCheckpoint, read_mindspore_backbone, read_mindspore_checkpoint
from irface.models import IResNet, create_backbone

FIXTURES = Path(__file__).parent / "fixtures" / "mindspore"
CKPT = FIXTURES / "tiny_iresnet_e.ckpt"

# ---------------------------------------------------------------- a protobuf writer of our own
# Written from the wire-format spec, independently of irface.interop.protobuf (which only reads).


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative numbers
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def tensor_proto(dims, type_name: str, content: bytes, packed: bool = False) -> bytes:
    if packed:
        body = ld(1, b"".join(varint(d) for d in dims)) if dims else b""
    else:
        body = b"".join(varint(1 << 3) + varint(d) for d in dims)
    return body + ld(2, type_name.encode()) + ld(3, content)


def ms_value(name: str, dims, type_name: str, content: bytes, packed: bool = False) -> bytes:
    """One serialised `Checkpoint` holding one value, as MindSpore writes each parameter."""
    return ld(1, ld(1, name.encode()) + ld(2, tensor_proto(dims, type_name, content, packed)))


def ms_array(name: str, array: np.ndarray, type_name: str = "Float32", packed: bool = False) -> bytes:
    return ms_value(name, list(array.shape), type_name, np.ascontiguousarray(array).tobytes(), packed)


def seed_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An IResNet's state dict under the seed's MindSpore parameter names."""
    kinds = {name: type(m) for name, m in model.named_modules()}
    out = {}
    for key, value in model.state_dict().items():
        module, _, param = key.rpartition(".")
        kind = kinds[module]
        if param == "num_batches_tracked":
            continue
        if kind in (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d):
            param = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                     "running_var": "moving_variance"}[param]
        elif kind is torch.nn.PReLU:
            param = "w"
        out[f"{module}.{param}"] = value
    return out


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if m is not getattr(model, "features", None):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model


def write_seed_ckpt(path: Path, model: torch.nn.Module, extra: bytes = b"", type_name: str = "Float32") -> dict:
    names = seed_names(model)
    np_type = {"Float32": np.float32, "Float16": np.float16}[type_name]
    with open(path, "wb") as f:
        for name, value in names.items():
            f.write(ms_array(name, value.numpy().astype(np_type), type_name))
        f.write(extra)
    return names


def tiny_model() -> IResNet:
    return randomise(IResNet(layers=[1, 1], widths=[8, 16], embedding_size=16, input_size=16))


# ---------------------------------------------------------------- the real MindSpore file


def test_real_mindspore_checkpoint_reproduces_mindspore_output():
    state, info = read_mindspore_backbone(CKPT)
    assert info["arch"] == {"layers": [1], "widths": [16], "stem_width": 8, "embedding_size": 32, "input_size": 8}
    model = IResNet(layers=[1], widths=[16], stem_width=8, embedding_size=32, input_size=8)
    model.load_state_dict(state, strict=True)
    io = np.load(FIXTURES / "tiny_iresnet_e_io.npz")
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(io["x"])).numpy()
    np.testing.assert_allclose(y, io["y"], rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(y - io["y"]) / np.max(np.abs(io["y"]))) < 1e-5


def test_raw_reader_sees_every_mindspore_name():
    raw = read_mindspore_checkpoint(CKPT)
    assert len(raw) == 36 and all(v.dtype == torch.float32 for v in raw.values())
    assert raw["conv1.weight"].shape == (8, 3, 3, 3) and raw["layer1.0.prelu.w"].shape == (16,)
    assert torch.all(raw["features.gamma"] == 1)  # frozen at 1 in the seed


def test_load_model_and_load_backbone_open_a_ckpt_directly():
    from irface.infer import load_model
    from irface.models.loading import load_backbone

    model, info = load_backbone(CKPT)
    assert info["kind"] == "mindspore" and model.embedding_size == 32
    embedder = load_model(CKPT)
    out = embedder.embed(np.zeros((3, 8, 8, 3), dtype=np.uint8))
    assert out.shape == (3, 32)


# ---------------------------------------------------------------- synthesised seed checkpoints


def test_full_size_iresnet100_converts_to_identical_weights(tmp_path, caplog):
    model = create_backbone("iresnet100")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # distinct values everywhere, negative PReLU slopes excluded below
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.abs_()
        model.features.weight.fill_(1.0)
    classifier = np.random.default_rng(0).normal(size=(100, 512)).astype(np.float32)
    extra = (ms_array("weight", classifier) + ms_array("bias", np.arange(100, dtype=np.float32))
             + ms_array("moments.fc.weight", np.zeros((512, 25088), np.float32))
             + ms_array("moments.weight", np.zeros((100, 512), np.float32))
             + ms_array("learning_rate", np.array(0.1, np.float32))
             + ms_array("global_step", np.array([142150], np.int32), "Int32"))
    path = tmp_path / "lresnet100e_ir-25_5686.ckpt"
    write_seed_ckpt(path, model, extra)
    with caplog.at_level(logging.INFO, logger="irface.interop.mindspore"):
        state, info = read_mindspore_backbone(path)
    assert info["network"] == "iresnet100" and info["arch"]["embedding_size"] == 512
    assert info["arch"]["input_size"] == 112 and info["ignored"] == 4
    assert "ignored 4 entries" in caplog.text and "moments.*" in caplog.text
    expected = model.state_dict()
    assert list(state) == list(expected) and len(state) == 925  # DESIGN.md's key count
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    head = info["head"]
    assert head["num_classes"] == 100 and torch.equal(head["state"]["weight"], torch.from_numpy(classifier))
    assert torch.equal(head["state"]["bias"], torch.arange(100, dtype=torch.float32))


def test_half_precision_and_bfloat16_tensors(tmp_path):
    model = tiny_model()
    path = tmp_path / "fp16.ckpt"
    write_seed_ckpt(path, model, type_name="Float16")
    state, _ = read_mindspore_backbone(path)
    ref = model.state_dict()
    assert state["conv1.weight"].dtype == torch.float32
    assert torch.equal(state["conv1.weight"], ref["conv1.weight"].half().float())

    values = torch.tensor([1.0, -2.5, 3.14159, 1e-3, 65504.0])
    bf16 = values.bfloat16()
    raw_bf16 = bf16.view(torch.int16).numpy().tobytes()
    data = (ms_value("a", [5], "BFloat16", raw_bf16)
            + ms_array("b", np.array([[1, -2], [3, 2**40]], np.int64), "Int64")
            + ms_array("c", np.array([7, -7], np.int32), "Int32")
            + ms_array("d", np.array([0.5, 1.5], np.float64), "Float64")
            + ms_array("e", np.array([1.5, -0.25], np.float16), "Float16"))
    (tmp_path / "types.ckpt").write_bytes(data)
    raw = read_mindspore_checkpoint(tmp_path / "types.ckpt")
    assert raw["a"].dtype == torch.bfloat16 and torch.equal(raw["a"], bf16)
    assert raw["b"].tolist() == [[1, -2], [3, 2**40]] and raw["b"].dtype == torch.int64
    assert raw["c"].tolist() == [7, -7] and raw["d"].tolist() == [0.5, 1.5] and raw["e"].tolist() == [1.5, -0.25]


def test_packed_dims_and_a_tensor_split_into_slices(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    slices = b"".join(ms_value("big", [4, 6], "Float32", part.tobytes()) for part in np.array_split(a, 3))
    (tmp_path / "x.ckpt").write_bytes(ms_array("packed", a, packed=True) + slices + ms_array("after", a[0]))
    raw = read_mindspore_checkpoint(tmp_path / "x.ckpt")
    assert np.array_equal(raw["packed"].numpy(), a) and np.array_equal(raw["big"].numpy(), a)
    assert list(raw) == ["packed", "big", "after"]


def test_negative_prelu_slopes_follow_mindspore(tmp_path, caplog):
    model = tiny_model()
    with torch.no_grad():
        model.prelu.weight.copy_(torch.linspace(-0.5, 0.5, 8))
    path = tmp_path / "neg.ckpt"
    write_seed_ckpt(path, model)
    with caplog.at_level(logging.INFO, logger="irface.interop.mindspore"):
        state, info = read_mindspore_backbone(path)
    assert info["prelu_clamped"] == 4 and "negative PReLU slopes" in caplog.text
    # MindSpore's PReLU: x for x > 0, relu(w) * x otherwise.
    x = torch.randn(2, 8, 3, 3)
    w = torch.linspace(-0.5, 0.5, 8).view(1, 8, 1, 1)
    mindspore_prelu = torch.where(x > 0, x, torch.relu(w) * x)
    ours = torch.nn.PReLU(8)
    ours.weight.data.copy_(state["prelu.weight"])
    torch.testing.assert_close(ours(x), mindspore_prelu)


def test_unsupported_type_is_an_error_only_when_needed(tmp_path):
    model = tiny_model()
    path = tmp_path / "t.ckpt"
    write_seed_ckpt(path, model, extra=ms_value("moments.conv1.weight", [2], "Complex64", b"\0" * 16))
    state, info = read_mindspore_backbone(path)  # optimizer state is never decoded
    assert info["ignored"] == 1
    with pytest.raises(ModelFileError, match=r"'moments.conv1.weight' has type 'Complex64'.*supported: Float32"):
        read_mindspore_checkpoint(path)
    (tmp_path / "u.ckpt").write_bytes(ms_value("conv1.weight", [1], "String", b"abc"))
    with pytest.raises(ModelFileError, match="'String'"):
        read_mindspore_checkpoint(tmp_path / "u.ckpt")


# ---------------------------------------------------------------- files that are not what they claim


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.faults
@pytest.mark.parametrize("content, why", [
    (b"", "empty file"),
    (b"hello, this is a text file\n", "not a MindSpore checkpoint"),
    (b"PK\x03\x04" + b"\0" * 40, "zip archive"),
    (b"\x80\x02}q\x00.", "Python pickle"),
    (bytes(range(256)) * 4, "not a MindSpore checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, why):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as e:
        read_mindspore_backbone(path)
    assert why in one_line(e) and str(path) in str(e.value)


@pytest.mark.faults
def test_truncated_checkpoint(tmp_path):
    data = CKPT.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 7):
        (tmp_path / "t.ckpt").write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as e:
            read_mindspore_backbone(tmp_path / "t.ckpt")
        assert "not a MindSpore checkpoint" in one_line(e)


@pytest.mark.faults
def test_absurd_declared_sizes_allocate_nothing(tmp_path):
    import tracemalloc

    # 100000 x 100000 float32 (40 GB) declared, 4 bytes present.
    (tmp_path / "a.ckpt").write_bytes(ms_value("fc.weight", [100000, 100000], "Float32", b"\0" * 4))
    # A length field claiming 2**40 bytes in a 30-byte file.
    (tmp_path / "b.ckpt").write_bytes(varint(1 << 3 | 2) + varint(1 << 40) + b"\0" * 20)
    # A dims product that would overflow int64.
    (tmp_path / "c.ckpt").write_bytes(ms_value("x", [2**62, 2**62, 16], "Float32", b"\0" * 8))
    tracemalloc.start()
    try:
        for name, pattern in (("a", r"declares 100000x100000 Float32 \(40,000,000,000 bytes\) but holds 4 bytes"),
                              ("b", "declares 1099511627776 bytes"), ("c", "but holds 8 bytes")):
            with pytest.raises(ModelFileError, match=pattern):
                read_mindspore_checkpoint(tmp_path / f"{name}.ckpt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


@pytest.mark.faults
def test_negative_dimension_and_bad_names(tmp_path):
    (tmp_path / "n.ckpt").write_bytes(ms_value("x", [-1], "Float32", b"\0" * 4))
    with pytest.raises(ModelFileError, match="negative dimension"):
        read_mindspore_checkpoint(tmp_path / "n.ckpt")
    (tmp_path / "u.ckpt").write_bytes(ld(1, ld(1, b"\xff\xfe") + ld(2, tensor_proto([1], "Float32", b"\0" * 4))))
    with pytest.raises(ModelFileError, match="not UTF-8"):
        read_mindspore_checkpoint(tmp_path / "u.ckpt")


def test_checkpoint_of_another_network(tmp_path):
    (tmp_path / "lenet.ckpt").write_bytes(ms_array("dense1.weight", np.zeros((4, 4), np.float32))
                                          + ms_array("dense1.bias", np.zeros(4, np.float32)))
    with pytest.raises(ModelFileError, match="not of an IResNet"):
        read_mindspore_backbone(tmp_path / "lenet.ckpt")


def test_missing_and_misshapen_weights_are_named(tmp_path):
    model = tiny_model()
    names = seed_names(model)
    with open(tmp_path / "m.ckpt", "wb") as f:
        for name, value in names.items():
            if name != "layer2.0.bn3.moving_variance":
                f.write(ms_array(name, value.numpy()))
    with pytest.raises(ModelFileError, match=r"missing layer2\.0\.bn3\.moving_variance"):
        read_mindspore_backbone(tmp_path / "m.ckpt")
    with open(tmp_path / "s.ckpt", "wb") as f:
        for name, value in names.items():
            v = value.numpy()
            f.write(ms_array(name, v[:-1] if name == "layer1.0.bn2.gamma" else v))
    with pytest.raises(ModelFileError, match=r"'layer1\.0\.bn2\.gamma' has shape \[7\].*needs \[8\]"):
        read_mindspore_backbone(tmp_path / "s.ckpt")


def test_checkpoint_stays_usable_only_while_open():
    with MindSporeCheckpoint(CKPT) as ckpt:
        t = ckpt.tensor("fc.weight")
    assert t.shape == (32, 256) and float(t.abs().sum()) > 0  # the copy outlives the mapping
    with pytest.raises(ValueError, match="closed"):
        ckpt.tensor("fc.weight")


def test_crc_field_of_newer_writers_is_skipped(tmp_path):
    # A newer writer's crc_num (top-level field 2, varint) must not stop the reader.
    data = CKPT.read_bytes() + varint(2 << 3 | 0) + varint(123456)
    (tmp_path / "crc.ckpt").write_bytes(data)
    state, _ = read_mindspore_backbone(tmp_path / "crc.ckpt")
    assert state["fc.weight"].shape == (32, 256)
