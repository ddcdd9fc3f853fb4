"""What `irface demo` generates and how long it trains, with its defaults: declared here once, read by
the CLI and by `irface.demo`.

Light on purpose (no torch): the CLI builds its arguments from these before the demo is imported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

# Inside the demo's --out folder: the exported model, the synthetic data, the training run.
MODEL_FILE = "model.onnx"
DATA_DIR = "data"
RUN_DIR = "run"


@dataclasses.dataclass
class DemoSettings:
    """What the demo generates and how long it trains; the network and recipe come from the config."""

    out_dir: Path = Path("demo_out")
    config: Optional[Path] = None  #: default: configs/demo.yaml of this checkout
    minutes: float = 7.0  #: training time budget at most (training also stops at the config's epochs)
    budget_minutes: float = 10.0  #: the whole demo's wall-clock target; training gets what the other stages leave
    threads: int = 0  #: torch threads on CPU; 0 = measure which count steps fastest now
    ids: int = 300  #: training identities
    per_id: int = 20  #: training images per identity
    holdout_ids: int = 100  #: identities used only in the .bin sets
    pairs: int = 6000  #: pairs per .bin set, as many as LFW and AgeDB-30 (so the figures resolve 0.02 points)
    seed: int = 0
    device: str = "auto"
    overrides: tuple[str, ...] = ()  #: extra key=value config overrides
