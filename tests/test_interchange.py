"""iresnet18/50/100 weights move between irface and the common PyTorch IResNet layout, strict, same outputs."""

import pytest
import torch

from irface.models import DEPTHS, create_backbone
from irface.models.loading import load_backbone
from reference_iresnet import RefIResNet


def _randomise_bn(model):
    # Identity BN statistics would hide a wrong mapping; make every BN and PReLU distinct.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if m.weight.requires_grad:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        if isinstance(m, torch.nn.Conv2d):
            # Fan-in scaling keeps a 100-layer eval-mode forward finite with random BN statistics.
            fan_in = m.weight[0].numel()
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50", "iresnet100"])
def test_public_layout_loads_strict_and_back(name, tmp_path):
    ref = RefIResNet(DEPTHS[name]).eval()
    with torch.no_grad():
        _randomise_bn(ref)
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)

    ours, info = load_backbone(path)  # architecture read off the keys
    assert info["network"] == name
    ours.eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)

    # ... and back: our state dict loads strictly into the reference code.
    mine = create_backbone(name).eval()
    with torch.no_grad():
        _randomise_bn(mine)
    ref2 = RefIResNet(DEPTHS[name]).eval()
    ref2.load_state_dict(mine.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref2(x), mine(x), rtol=1e-5, atol=1e-5)


def test_wrong_network_name_is_refused(tmp_path):
    path = tmp_path / "b.pth"
    torch.save(RefIResNet(DEPTHS["iresnet18"]).state_dict(), path)
    from irface.errors import ModelFileError

    with pytest.raises(ModelFileError, match="iresnet18, not iresnet50"):
        load_backbone(path, network="iresnet50")


def test_ddp_prefix_and_wrapped_state_dict(tmp_path, tiny_backbone):
    path = tmp_path / "b.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_backbone.state_dict().items()}}, path)
    model, _ = load_backbone(path)
    assert model.arch["widths"] == [8, 16]


@pytest.mark.faults
def test_pickled_code_in_a_weights_file_does_not_run(tmp_path):
    from irface.errors import ModelFileError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises(ModelFileError, match="refused"):
        load_backbone(path)
    assert not marker.exists()


@pytest.mark.faults
def test_a_text_file_is_not_called_a_hostile_pickle(tmp_path):
    from irface.errors import ModelFileError

    path = tmp_path / "notes.pth"
    path.write_bytes(b"no")
    with pytest.raises(ModelFileError, match="not a PyTorch weights file"):
        load_backbone(path)
