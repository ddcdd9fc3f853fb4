import pytest
import yaml

from irface.config import TrainConfig, load_config, save_config
from irface.errors import ConfigError


def test_defaults_are_the_seeds():
    cfg = TrainConfig()
    assert (cfg.num_classes, cfg.image_size, cfg.batch_size, cfg.epoch_size) == (85742, 112, 128, 25)
    assert (cfg.schedule, cfg.gamma, cfg.lr, cfg.momentum, cfg.weight_decay) == ([10, 16, 21], 0.1, 0.1, 0.9, 5e-4)
    assert cfg.scaled_lr(8) == pytest.approx(0.2)  # 0.1 x 1024 / 512


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.05\nschedule: [5, 8]\nhead: arcface\n")
    cfg = load_config(path, ["schedule=[8,14]", "batch_size=64", "compile=true", "margin=0.3", "output_dir=out/x"])
    assert cfg.lr == 0.05 and cfg.schedule == [8, 14] and cfg.batch_size == 64 and cfg.compile is True
    assert cfg.head_params() == {"s": 64.0, "m": 0.3}
    assert cfg.output_dir == "out/x"


def test_int_is_accepted_for_float():
    assert load_config(None, ["lr=1"]).lr == 1.0


@pytest.mark.faults
@pytest.mark.parametrize("override,message", [
    ("learning_rate=0.1", "unknown config key 'learning_rate'"),
    ("bach_size=3", "did you mean 'batch_size'"),
    ("batch_size=abc", "'batch_size': expected int"),
    ("batch_size=1.5", "'batch_size': expected int"),
    ("schedule=5", "'schedule': expected a list of int"),
    ("schedule=[16,10]", "increasing order"),
    ("head=sphere", "'head'"),
    ("precision=fp8", "'precision'"),
    ("sample_rate=0", "'sample_rate'"),
    ("compile=yes please", "'compile': expected bool"),
    ("batch_size", "expected key=value"),
])
def test_bad_overrides_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


@pytest.mark.faults
def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'epochs'"):
        load_config(path)


@pytest.mark.faults
def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["head=combined", "margins=[1.0,0.3,0.2]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["margins"] == [1.0, 0.3, 0.2]


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in root.glob("*.yaml"):
        load_config(path)
    seed = load_config(root / "lresnet100e_ir_config_gpu.yaml")
    assert seed.head == "softmax" and seed.scaled_lr(8) == pytest.approx(0.2)


def test_docs_config_md_is_current():
    """docs/config.md is generated from the dataclass; regenerate with `python -m irface.config > docs/config.md`."""
    from pathlib import Path

    from irface.config import describe_keys, field_names

    text = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert describe_keys() in text
    for key in field_names():
        assert f"`{key}`" in text
