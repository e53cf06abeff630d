"""The network: the factorized spatio-temporal Residual U-ViT (SPEC §5).

    from sid2video.models import UViT, UViTConfig, create
    model = create(config.model, seed=config.seed)   # or UViT(config.model, rngs=nnx.Rngs(...))
    out = model(z, logsnr, cond=cond, cond_mask=cond_mask, label=label, deterministic=True)

Nothing here knows about noise schedules, losses or data.
"""

from sid2video.models.uvit import (  # noqa: F401
    UViT,
    UViTConfig,
    abstract,
    count_params,
    create,
    named_shardings,
    param_partition_spec,
    partition_specs,
)
