"""MobileFaceNet and ViT: arcface_torch's state-dict layout (strict, both ways, same outputs), sizes and
FLOPs as documented, their options, and each family through train / resume / export / int8."""

import json
import re

import pytest
import torch

from engine_support import ROOT, assert_same_weights, load, tiny_overrides, write_image_folder
from irface.bench.flops import count_flops
from irface.cli import main
from irface.errors import ModelFileError
from irface.models import create_backbone, identify_state_dict, list_backbones
from irface.models.loading import load_backbone
from irface.models.vit import VisionTransformer
from reference_arcface_torch import RefMobileFaceNet, RefViT, randomise, ref_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW = ["mbf", "mbf_large", "vit_t", "vit_s", "vit_b", "vit_l"]
# Parameters and forward GFLOP (2 x multiply-accumulates, attention's two products included) at
# 112x112 with 512-d embeddings; docs/training.md lists the same figures.
SIZES = {
    "mbf": (2_059_520, 0.875), "mbf_large": (6_314_880, 3.633), "vit_t": (19_137_792, 3.010),
    "vit_s": (76_023_296, 11.493), "vit_b": (113_833_472, 22.874), "vit_l": (255_684_352, 50.676),
}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registry_has_the_new_families():
    assert set(NEW) <= set(list_backbones())


@pytest.mark.parametrize("name", NEW)
def test_layout_size_and_flops_match_arcface_torch(name):
    # On the meta device: shapes only, so even ViT-L costs nothing.
    with torch.device("meta"):
        ours, ref = create_backbone(name), ref_model(name)
    assert _shapes(ours) == _shapes(ref)
    cls, arch, found = identify_state_dict(ours.state_dict())
    assert found == name and arch["embedding_size"] == 512 and arch["input_size"] == 112
    params, gflop = SIZES[name]
    assert sum(p.numel() for p in ours.parameters()) == params
    assert round(count_flops(ours, 112) / 1e9, 3) == gflop


def test_documented_sizes_are_the_measured_ones():
    text = (ROOT / "docs" / "training.md").read_text()
    for name, (params, gflop) in SIZES.items():
        row = re.search(rf"^\| `{name}` \|([^|]*)\|([^|]*)\|", text, flags=re.M)
        assert row, f"docs/training.md has no row for {name}"
        assert row.group(1).strip() == f"{params:,}" and row.group(2).strip() == f"{gflop:.3f}", name


# (our network, options, the reference built by hand, input side): real geometry at 112 for mbf; fewer
# blocks elsewhere so that a CPU test stays fast while every kind of layer and branch is built.
CASES = {
    "mbf": ("mbf", {}, lambda: RefMobileFaceNet(512, (1, 4, 6, 2), 2), 112),
    "mbf_large_short": ("mbf_large", {"layers": [2, 1, 1, 1], "embedding_size": 128},
                        lambda: RefMobileFaceNet(128, (2, 1, 1, 1), 4), 112),
    "mbf_small_input": ("mbf", {"input_size": 64}, lambda: RefMobileFaceNet(512, (1, 4, 6, 2), 2, gdc_kernel=4), 64),
    "vit_t_short": ("vit_t", {"layers": [2]}, lambda: RefViT(512, 256, 2), 112),
    "vit_s_short_small_input": ("vit_s", {"layers": [1], "input_size": 36}, lambda: RefViT(512, 512, 1, img=36), 36),
}


@pytest.mark.parametrize("case", list(CASES))
def test_public_weights_load_strict_and_compute_the_same(case, tmp_path):
    name, options, build_ref, size = CASES[case]
    ref = randomise(build_ref()).eval()
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    ours, info = load_backbone(path)  # the architecture is read off the keys
    assert info["family"] == type(create_backbone(name, **options)).__name__
    assert ours.input_size == size and ours.embedding_size == options.get("embedding_size", 512)
    ours.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    # ... and back: a model built here loads strictly into the reference and gives its outputs.
    mine = randomise(create_backbone(name, **options), seed=2).eval()
    ref.load_state_dict(mine.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), mine(x), rtol=1e-4, atol=1e-4)


def test_loader_names_the_network_and_refuses_a_wrong_one(tmp_path):
    path = tmp_path / "mbf.pth"
    torch.save(RefMobileFaceNet().state_dict(), path)
    assert load_backbone(path)[1]["network"] == "mbf"
    with pytest.raises(ModelFileError, match="holds mbf, not vit_t"):
        load_backbone(path, network="vit_t")
    bn_vit = {f"blocks.0.norm1.bn.{k}": v for k, v in torch.nn.BatchNorm1d(4).state_dict().items()}
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 9, 9), "pos_embed": torch.zeros(1, 4, 8), **bn_vit},
               tmp_path / "bn.pth")
    with pytest.raises(ModelFileError, match="BatchNorm token norms"):
        load_backbone(tmp_path / "bn.pth")


def test_vit_training_forward_is_arcface_torchs_with_the_same_random_draws():
    # WebFace42M's vit_b_dp005_mask_005 trains with drop path 0.05 and, whatever its name says, 0.1 masking.
    ref = randomise(RefViT(64, 32, 3, heads=4, img=36, drop_path_rate=0.5, mask_ratio=0.05)).train()
    ours = create_backbone("vit_t", layers=[3], widths=[32], num_heads=4, input_size=36, embedding_size=64,
                           drop_path_rate=0.5, mask_ratio=0.1).train()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 3, 36, 36)
    torch.manual_seed(5)
    want = ref(x)
    torch.manual_seed(5)
    torch.testing.assert_close(ours(x), want, rtol=1e-4, atol=1e-4)
    torch.manual_seed(6)
    assert not torch.allclose(ours(x), want, rtol=1e-4, atol=1e-4)  # the draws matter: another seed differs


def test_vit_masks_tokens_and_drops_paths_in_training_only():
    vit = VisionTransformer(embed_dim=16, depth=2, num_heads=4, input_size=36, embedding_size=8,
                            drop_path_rate=0.5, mask_ratio=0.25)
    x = torch.randn(3, 3, 36, 36)
    vit.train()
    tokens = vit.forward_features(x).reshape(3, 16, 16)
    is_mask = torch.isclose(tokens, vit.mask_token.reshape(1, 1, 16)).all(dim=-1)
    assert is_mask.sum(dim=1).tolist() == [4, 4, 4]  # 16 - int(16 * 0.75) per image, at random places
    assert not torch.equal(is_mask[0], is_mask[1]) or not torch.equal(is_mask[1], is_mask[2])
    vit.eval()
    with torch.no_grad():
        torch.testing.assert_close(vit(x), vit(x))  # no masking, no drop path: deterministic
        tokens = vit.forward_features(x).reshape(3, 16, 16)
    assert not torch.isclose(tokens, vit.mask_token.reshape(1, 1, 16)).all(dim=-1).any()
    # Without masking the mask token gets no gradient, so it is frozen (DDP would wait for it otherwise).
    assert not VisionTransformer(embed_dim=16, depth=1, num_heads=4, input_size=18, mask_ratio=0.0).mask_token.requires_grad


@pytest.mark.parametrize("name, options, message", [
    ("mbf", {"dropout": 0.1}, "mbf has no dropout"),
    ("mbf", {"widths": [8]}, "mbf does not take widths=\\[8\\]"),
    ("mbf", {"mask_ratio": 0.1}, "mbf does not take mask_ratio=0.1"),
    ("iresnet18", {"drop_path_rate": 0.1}, "iresnet18 does not take drop_path_rate=0.1"),
    ("vit_t", {"stem_width": 8}, "vit_t does not take stem_width=8"),
    ("vit_t", {"layers": [2, 2]}, "one stage"),
    ("mbf", {"input_size": 120}, "multiple of 16"),
])
def test_options_a_network_lacks_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(name, **options)


def test_train_refuses_a_key_the_network_lacks_in_one_line(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data")
    assert main(["train", *_overrides(tmp_path / "out", data, "mbf", dropout=0.2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["irface train: error: config key 'network': mbf has no dropout layer (the reference has none); "
                   "dropout=0.2 must be 0"]


# Tiny members of each family for the CLI's whole path; the ViT masks tokens and drops paths, so its
# resume must restore the random streams those draw from.
FAMILY_RUNS = {
    "mbf": {"network": "mbf", "network_layers": "[1,1,1,1]"},
    "vit": {"network": "vit_t", "network_layers": "[2]", "network_widths": "[32]", "image_size": 18,
            "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.1, "mask_ratio": 0.25, "drop_path_rate": 0.2},
}


def _overrides(out, data, family, **extra):
    values = {"network_widths": None, "schedule": "[3]", **FAMILY_RUNS[family], **extra}
    base = [o for o in tiny_overrides(out, data) if o.split("=")[0] not in values]
    return base + [f"{k}={v}" for k, v in values.items() if v is not None]


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_family_trains_resumes_exports_and_quantises(family, tmp_path, capsys):
    data = write_image_folder(tmp_path / "data")
    assert main(["train", *_overrides(tmp_path / "whole", data, family, max_steps=6)]) == 0
    assert main(["train", *_overrides(tmp_path / "split", data, family, max_steps=3)]) == 0
    assert main(["train", *_overrides(tmp_path / "split", data, family, max_steps=6, resume="auto")]) == 0
    whole = sorted((tmp_path / "whole").glob("checkpoint-*.pt"))[-1]
    split = sorted((tmp_path / "split").glob("checkpoint-*.pt"))[-1]
    assert_same_weights(load(whole), load(split))
    capsys.readouterr()

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(tmp_path / "split"), "--output", str(onnx_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["network"] is None  # a shrunken member: no registered name, the architecture still known
    assert report["metadata"]["network"] == {"mbf": "MobileFaceNet", "vit": "VisionTransformer"}[family]
    assert [c["batch"] for c in report["checks"]] == [1, 7] and all(c["relative_error"] < 1e-4 for c in report["checks"])
    int8_path = tmp_path / "q.onnx"
    assert main(["export", "--ckpt", str(tmp_path / "split"), "--output", str(int8_path), "--int8",
                 "--calib", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8_agreement"]["mean_cosine"] > 0.98
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert "QuantizeLinear" in ops
    quantised = {"mbf": "Conv", "vit": "MatMul"}[family]
    graph = onnx.load(str(int8_path)).graph
    # The family's main work is quantised: some node of that type reads a dequantised input.
    dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert any(n.op_type == quantised and n.input[0] in dequantised for n in graph.node)


@pytest.mark.parametrize("config, family, options", [
    ("ms1mv2_mbf.yaml", "MobileFaceNet", {}),
    ("webface_vit_b.yaml", "VisionTransformer", {"mask_ratio": 0.1, "drop_path_rate": 0.05, "grad_checkpointing": True}),
])
def test_recipe_configs_build_their_network(config, family, options):
    from irface.config import load_config

    cfg = load_config(ROOT / "configs" / config)
    with torch.device("meta"):
        model = create_backbone(cfg.network, **cfg.backbone_kwargs())
    assert type(model).__name__ == family
    for key, value in options.items():
        assert getattr(cfg, key) == value
    if options:
        assert model.mask_ratio == 0.1 and isinstance(model.blocks[-1].drop_path.p, float)
        assert model.blocks[-1].drop_path.p == pytest.approx(0.05)


@pytest.mark.parametrize("name, options, size", [
    ("mbf", {"layers": [2, 1, 1, 1], "input_size": 32}, 32),
    ("vit_t", {"layers": [1], "widths": [32], "input_size": 18}, 18),
])
def test_batchnorm_folds_away_exactly(name, options, size):
    from irface.models.fold import fold_batchnorm

    model = randomise(create_backbone(name, **options)).eval()
    folded = fold_batchnorm(model, leading=True)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
