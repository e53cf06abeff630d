"""ImageNet 128×128, class-conditional (SiD2 B.6; FID 1.26 flop heavy).

    --config configs/imagenet128.py:small        U-ViT on the 128² map, no patching (CHOSEN)
    --config configs/imagenet128.py:flop_heavy   no patching, the 128-channel top level removed
                                                 (B.6), so the trunk starts at 128²×256
Loss sigmoid bias 0 (B.6 `sigmoid:0`), guidance 1.0 on logSNR (0, 5), 512 DDPM steps.
"""

from sid2video import config


# The variants `--config configs/imagenet128.py:<variant>` accepts (the first is the default).
VARIANTS = ("small", "flop_heavy")


def get_config(variant: str = "small"):
    return config.imagenet(128, variant, bias=0.0, guidance_interval=(0.0, 5.0),
                           small_patch=1, flop_heavy_patch=1, drop_top_level=True)
