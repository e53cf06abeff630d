"""Kinetics600 frame prediction at 128² (SiD2 B.7, Table 4; FVD_50k 2.3).

16-frame clips; the model sees the first 5 frames clean (with a mask channel) and predicts the
other 11. Which frames condition is data (`cond_mask`), not architecture.

    --config configs/kinetics600.py:small

SiD2 B.7 states the cost (3570 GFLOPs per forward pass with the B.3 counting "adapted to 3D
convs", about 2.5 zettaflops of training), the sampler (aDDIM, 128 steps) and the loss (sigmoid,
b = 0, Table 4); its block of model and training settings did not survive in the text, so the
network below is CHOSEN: the ImageNet-128 small trunk (128² top map, 128-256-512 ResBlock
levels and a 1024-wide transformer at 16²) with 3×3×3 convolutions and factorized space/time
attention, E2-D2 ResBlock levels and 11 transformer blocks (E5-D6, decoder heavier, C.3) — the
depths that bring the B.3 count to 3570 GFLOPs. Batch 256 × 900k steps ≈ 2.5 ZFLOPs (CHOSEN to
match B.7's total).
"""

from sid2video import config


# The variants `--config configs/kinetics600.py:<variant>` accepts (the first is the default).
VARIANTS = ("small",)


def get_config(variant: str = "small"):
    if variant != "small":
        raise ValueError(f"unknown variant {variant!r} for kinetics600; choose 'small'")
    return config.base(
        data=dict(dataset="kinetics600", num_frames=16, num_cond_frames=5, resolution=128,
                  frame_stride=1, num_classes=0),
        model=dict(
            patch_size=1,
            patch_frames=1,
            channels=(128, 256, 512, 1024),
            block_types=("resnet", "resnet", "resnet", "transformer"),
            encoder_blocks=(2, 2, 2, 5),
            decoder_blocks=(2, 2, 2, 6),
            num_heads=8,
            emb_channels=1024,
            conv="3d",
            attention="factorized",
            dropout=0.1,  # CHOSEN, transformer level only
            dropout_from_resolution=16,
            frame_conditioning=True,
            dtype="bfloat16",
            remat=True,
            scan_blocks=True,
        ),
        # CHOSEN: the ImageNet schedule of B.6 at 128² (B.7 does not name one).
        schedule=config.interpolated_schedule(32, 512),
        loss=dict(weighting="sigmoid", bias=0.0, class_drop_rate=0.0, cond_drop_rate=0.0),
        sampler=dict(method="addim", num_steps=128, logvar_interp=0.3, clip=True, guidance=0.0,
                     guidance_interval=None),
        train=dict(batch_size=256, num_steps=900_000),
    )
