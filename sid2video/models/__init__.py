"""The network: the factorized spatio-temporal Residual U-ViT (SPEC §5).

    from sid2video.models import uvit
    model = uvit.create(config.model, seed=config.seed)   # or uvit.UViT(config.model, rngs=...)
    out = model(z, logsnr, cond=cond, cond_mask=cond_mask, label=label, deterministic=True)

uvit_config.py holds the settings (`UViTConfig`, plain Python), layers.py the blocks, uvit.py the
network, flops.py its analytic cost. Nothing here knows about noise schedules, losses or data.
"""
