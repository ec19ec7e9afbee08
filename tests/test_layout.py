"""The tree shows the layers: the pure-math and model layers import none of Lightning, gymnasium or Hydra."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("lightning", "lightning_fabric", "pytorch_lightning", "gymnasium", "hydra", "omegaconf", "wandb")


def test_core_models_and_accel_load_no_framework():
    code = ("import sys\n"
            "import pglab.core.estimators, pglab.core.baselines, pglab.core.surrogates, pglab.core.distributions\n"
            "import pglab.core.types, pglab.core.components, pglab.core.collectives\n"
            "import pglab.models.mlp, pglab.models.cnn, pglab.models.transformer, pglab.models.build\n"
            "import pglab.accel.structure, pglab.accel.fused_actor, pglab.accel.lean, pglab.accel.verify\n"
            "import pglab.learner.loss\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the pure layers imported {out.strip()}"
