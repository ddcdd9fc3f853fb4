"""`irface convert mindspore`: every output kind loads back and computes what MindSpore computed."""

from pathlib import Path

import numpy as np
import pytest
import torch

from irface.cli import main
from irface.models.loading import load_backbone
from test_interop_mindspore import CKPT, FIXTURES, ms_array, tiny_model, write_seed_ckpt


def fixture_output(model) -> tuple[np.ndarray, np.ndarray]:
    io = np.load(FIXTURES / "tiny_iresnet_e_io.npz")
    with torch.no_grad():
        return model.eval()(torch.from_numpy(io["x"])).numpy(), io["y"]


@pytest.mark.parametrize("name", ["backbone.pth", "model.safetensors", "checkpoint.pt"])
def test_each_output_kind_reproduces_mindspore(tmp_path, name, capsys):
    out = tmp_path / name
    assert main(["convert", "mindspore", str(CKPT), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "43 tensors" in printed
    model, info = load_backbone(out)
    y, expected = fixture_output(model)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_irface_checkpoint_keeps_config_and_the_seeds_classifier(tmp_path, capsys):
    from irface.config import config_from_dict
    from irface.heads import create_head

    model = tiny_model()
    classifier = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    src = tmp_path / "seed.ckpt"
    write_seed_ckpt(src, model, ms_array("weight", classifier) + ms_array("bias", np.ones(7, np.float32))
                    + ms_array("moments.conv1.weight", np.zeros((8, 3, 3, 3), np.float32)))
    out = tmp_path / "ckpt.pt"
    assert main(["convert", "mindspore", str(src), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "classifier of 7 classes kept as a softmax head" in printed and "1 optimizer" in printed

    ckpt = torch.load(out, weights_only=True)
    assert ckpt["format"] == "irface-checkpoint"
    cfg = config_from_dict(ckpt["config"])
    assert (cfg.head, cfg.num_classes, cfg.embedding_size, cfg.image_size) == ("softmax", 7, 16, 16)
    head = create_head("softmax", embedding_size=16, num_classes=7)
    head.load_state_dict(ckpt["head"], strict=True)
    assert torch.equal(head.weight.data, torch.from_numpy(classifier)) and torch.all(head.bias == 1)
    loaded, _ = load_backbone(out)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    # A bare .pth holds only the backbone.
    assert main(["convert", "mindspore", str(src), "-o", str(tmp_path / "b.pth")]) == 0
    assert "dropped (kept only in .pt)" in capsys.readouterr().out
    assert set(torch.load(tmp_path / "b.pth", weights_only=True)) == set(model.state_dict())


def test_network_check_and_bad_output_leave_nothing_behind(tmp_path, capsys):
    out = tmp_path / "x.pth"
    assert main(["convert", "mindspore", str(CKPT), "-o", str(out), "--network", "iresnet50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not iresnet50" in err and not out.exists()
    assert main(["convert", "mindspore", str(CKPT), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".pth, .safetensors, .pt" in err
    assert main(["convert", "mindspore", str(tmp_path / "none.ckpt"), "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary files either


def test_network_name_accepted_when_it_matches(tmp_path):
    from test_interop_mindspore import randomise

    from irface.models import create_backbone

    src = tmp_path / "r18.ckpt"
    model = randomise(create_backbone("iresnet18", widths=[8, 8, 8, 8], embedding_size=8))
    write_seed_ckpt(src, model)
    assert main(["convert", "mindspore", str(src), "-o", str(tmp_path / "r18.pth"), "--network", "iresnet18"]) == 0
    loaded, info = load_backbone(tmp_path / "r18.pth", network="iresnet18")
    assert info["network"] == "iresnet18"
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    assert Path(tmp_path / "r18.pth").stat().st_size > 0
