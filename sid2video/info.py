"""`sid2video info`: parameters, FLOPs and activation memory of a config, without building it.

    sid2video info --config configs/kinetics600.py:small [--config.model.key=value ...]

Arithmetic only (sid2video/models/flops.py: SiD2 B.3 counting, closed-form parameters): it
imports neither the network's Flax modules nor the trainer, optax or orbax.
"""

from __future__ import annotations

from sid2video import flags
from sid2video.models import flops


def run(argv: list[str]) -> int:
    """`sid2video info --config configs/x.py:variant [--config.key=value ...]`."""
    config = flags.parse_flags("sid2video info", argv).config  # checked in full (config.validate)
    overrides = [a for a in argv if a.startswith("--config.")]
    print(f"config       {flags.config_arg(argv)} {' '.join(overrides)}".rstrip())
    print(flops.summary(config.model))
    return 0
