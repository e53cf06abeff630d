"""ImageNet 512×512, class-conditional (SiD2 §2.2, B.6, Table 5; FID 1.48 flop heavy).

    --config configs/imagenet512.py:small        4×4 patches -> U-ViT on a 128² map (§2.2)
    --config configs/imagenet512.py:flop_heavy   2×2 patches -> the same parameters on a 256² map
Loss sigmoid bias −3 (§2.1, Table 1a), guidance 1.0 on logSNR (−3, 5), 512 DDPM steps;
schedule cosine_interpolated_low_32_high_512.
"""

from sid2video import config


# The variants `--config configs/imagenet512.py:<variant>` accepts (the first is the default).
VARIANTS = ("small", "flop_heavy")


def get_config(variant: str = "small"):
    return config.imagenet(512, variant, bias=-3.0, guidance_interval=(-3.0, 5.0),
                           small_patch=4, flop_heavy_patch=2)
