"""ImageNet 128×128, class-conditional (SiD2 B.6; FID 1.26 flop heavy).

    --config configs/imagenet128.py:small        U-ViT on the 128² map, no patching (CHOSEN)
    --config configs/imagenet128.py:flop_heavy   no patching, the 128-channel top level removed
                                                 (B.6), so the trunk starts at 128²×256
Loss sigmoid bias 0 (B.6 `sigmoid:0`), guidance 1.0 on logSNR (0, 5), 512 DDPM steps.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from configs import common  # noqa: E402


# The variants `--config configs/imagenet128.py:<variant>` accepts (the first is the default).
VARIANTS = ("small", "flop_heavy")


def get_config(variant: str = "small"):
    return common.imagenet(128, variant, bias=0.0, guidance_interval=(0.0, 5.0),
                           small_patch=1, flop_heavy_patch=1, drop_top_level=True)
