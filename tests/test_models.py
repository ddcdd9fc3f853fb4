import pytest
import torch
from torch import nn

from irface.models import (
    DEPTHS, IResNet, arch_from_state_dict, backbone_from_state_dict, create_backbone, list_backbones,
    register_backbone,
)


def test_registry_lists_the_family():
    assert list_backbones() == ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200",
                                "mbf", "mbf_large", "vit_b", "vit_l", "vit_s", "vit_t"]


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(KeyError, match="iresnet100") as e:
        create_backbone("iresnet101")
    assert "iresnet101" in str(e.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        @register_backbone
        def iresnet18():  # noqa: F811 - the point of the test
            return nn.Identity()


@pytest.mark.parametrize("name", list(DEPTHS))
def test_every_backbone_forward_backward_at_tiny_width(name):
    # The registry's depth spec with narrow stages keeps the test fast while building every block.
    model = create_backbone(name, widths=[4, 4, 8, 8], embedding_size=8, input_size=32)
    assert [len(s) for s in model.stages] == DEPTHS[name]
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 8)
    out.sum().backward()
    assert model.conv1.weight.grad is not None
    assert model.features.weight.grad is None  # frozen gamma


def test_iresnet100_layout_matches_the_common_checkpoints():
    model = create_backbone("iresnet100")
    state = model.state_dict()
    assert len(state) == 925
    assert sum(p.numel() for p in model.parameters()) == 65_156_160
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)
    for key, shape in {
        "conv1.weight": (64, 3, 3, 3), "bn1.weight": (64,), "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.prelu.weight": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.bn3.running_var": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer1.0.downsample.1.weight": (64,),
        "layer2.12.conv2.weight": (128, 128, 3, 3), "layer3.29.bn3.bias": (256,),
        "layer4.0.downsample.0.weight": (512, 256, 1, 1), "bn2.weight": (512,),
        "fc.weight": (512, 512 * 7 * 7), "fc.bias": (512,), "features.weight": (512,),
        "features.running_mean": (512,),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer1.1.downsample.0.weight" not in state


def test_gradient_checkpointing_gives_the_same_gradients(tiny_backbone):
    x = torch.randn(3, 3, 16, 16)
    tiny_backbone.train()
    tiny_backbone(x).square().sum().backward()
    ref = [p.grad.clone() for p in tiny_backbone.parameters() if p.grad is not None]
    tiny_backbone.zero_grad()
    tiny_backbone.grad_checkpointing = True
    tiny_backbone(x).square().sum().backward()
    got = [p.grad for p in tiny_backbone.parameters() if p.grad is not None]
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b)


def test_input_size_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        IResNet(layers=[1, 1], widths=[4, 8], input_size=30)


def test_arch_is_read_back_from_a_state_dict():
    model = create_backbone("iresnet50", widths=[4, 8, 8, 16], stem_width=8, embedding_size=24, input_size=48)
    arch = arch_from_state_dict(model.state_dict())
    assert arch == {"layers": DEPTHS["iresnet50"], "widths": [4, 8, 8, 16], "stem_width": 8,
                    "embedding_size": 24, "input_size": 48}
    model.eval()
    clone = backbone_from_state_dict(model.state_dict()).eval()
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(model(x), clone(x), rtol=0, atol=0)
