"""ImageNet 256×256, class-conditional (SiD2 B.6; FID 1.38 flop heavy).

    --config configs/imagenet256.py:small        2×2 patches -> U-ViT on a 128² map (§2.2)
    --config configs/imagenet256.py:flop_heavy   no patching (B.6 `patching_size = 1`), 256² map
Loss sigmoid bias −1 (B.6 `sigmoid:-1`), guidance 1.0 on logSNR (−1.5, 5), 512 DDPM steps.
"""

from sid2video import config


# The variants `--config configs/imagenet256.py:<variant>` accepts (the first is the default).
VARIANTS = ("small", "flop_heavy")


def get_config(variant: str = "small"):
    return config.imagenet(256, variant, bias=-1.0, guidance_interval=(-1.5, 5.0),
                           small_patch=2, flop_heavy_patch=1)
