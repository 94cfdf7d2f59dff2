"""XLA compiler options that run these CNNs faster on CPU (the default fast path)."""

from __future__ import annotations

import jax

# XLA:CPU's experimental YNNPACK library fusions are on by default; its convolutions ran this
# project's convolutions at half the speed of XLA's Eigen path, or (the strided model's 3×3
# 32→32 layer, in inference) at a tenth. Enabling only its reduce fusions keeps the one YNNPACK
# piece that helps here: inference of the classic CNN ran at 3,800 images/s with the list empty
# and 7,200 with reduce fusions on (the same as with the default list), training no slower.
# Measured with `dr-jax bench` against `--config.train.fast_cpu=false`.
FAST_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(fast_cpu: bool) -> dict[str, str] | None:
  """Per-function compiler options for every jitted program (train, eval, predict).

  None off CPU or when disabled: then XLA compiles with its defaults.
  """
  if fast_cpu and jax.default_backend() == "cpu":
    return dict(FAST_CPU_OPTIONS)
  return None
