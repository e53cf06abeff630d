"""Tiny CPU configs for the tests and `sid2video demo` (widths ≤ 32 for video, ≤ 128 for images).

    --config configs/demo.py:video    16 frames of 16², condition on 5, predict 11; 2×2 patches
                                      -> an 8×8 map with factorized convs, then factorized
                                      space/time attention at 4²; each predicted frame also
                                      sees the last given frame (cond_fill='last')
    --config configs/demo.py:images   T = 1, 16² class-conditional digits (10 classes), the 2D
                                      Residual U-ViT (2×2 patches, widths 64 and 128)
Training settings are sized for minutes on a CPU, not the papers'.
"""

from sid2video import config

_TINY = dict(
    channels=(16, 32),
    block_types=("resnet", "transformer"),
    encoder_blocks=(1, 1),
    decoder_blocks=(1, 1),
    num_heads=2,
    emb_channels=32,
    dtype="float32",
    remat=False,
    scan_blocks=False,
)

# ema_warmup: a run of a few hundred steps would otherwise sample from an EMA that is still
# mostly the initial network (0.999^600 ≈ 0.55).
_TRAIN = dict(batch_size=16, num_steps=2000, learning_rate=1e-3, warmup_steps=100,
              ema_decay=0.999, ema_warmup=True, log_every=10, checkpoint_every=200, keep_checkpoints=2)

# The video demo trains on 8 clips a step at learning rate 3e-3. A step of 8 clips costs about
# half a step of 16 on a CPU (the cost per clip barely changes with the batch), and on two training
# seeds 2000 such steps matched 2000 steps of 16 clips at 1e-3 (README, demo section). The rate
# decays to 0 along a half cosine over 4000 steps, what two CPU devices on a 2-core machine train
# in the demo's 7 minutes; a slower machine stops at the budget with the rate not yet at 0.
_VIDEO_TRAIN = dict(_TRAIN, batch_size=8, learning_rate=3e-3, lr_decay="cosine", num_steps=4000,
                    checkpoint_every=500)


# The variants `--config configs/demo.py:<variant>` accepts (the first is the default).
VARIANTS = ("video", "images")


def get_config(variant: str = "video"):
    if variant == "video":
        return config.base(
            # cache_mb: the 256 training clips decode once (5 MB at 16²) instead of every step.
            data=dict(dataset="moving_digits", num_frames=16, num_cond_frames=5, resolution=16,
                      frame_stride=1, num_classes=0, cache_mb=64),
            # x-prediction and 32 channels at the top: a 2×2 patch of [z_t, given frame, mask] is
            # 28 numbers entering the top level's map. Predicting v, the network must carry z_t's
            # noise through that map to its output (x̂ = α z_t − σ v̂), and what it drops stays in
            # x̂ as coloured speckle; predicting x it outputs clean frames (README, demo section).
            model=dict(_TINY, channels=(32, 32), patch_size=2, conv="factorized", attention="factorized",
                       frame_conditioning=True, cond_fill="last"),
            # 16² frames: the cosine schedule shifted by 2·log(64/16) (simple diffusion's rule
            # for resolutions away from 64²), so training and sampling spend their time at
            # noise levels that matter for small frames.
            schedule=dict(name="cosine_shifted", image_d=16, noise_d=64, logsnr_min=-10.0, logsnr_max=10.0),
            loss=dict(weighting="sigmoid", bias=0.0, mean_type="x", cond_drop_rate=0.0),
            # DDPM: on one model and four sampling seeds it beat aDDIM (32 steps each) on every
            # row (README, demo section); its fresh noise each step keeps the digits sharp.
            sampler=dict(method="ddpm", num_steps=32, guidance=0.0, guidance_interval=None),
            train=dict(_VIDEO_TRAIN),
        )
    if variant == "images":
        return config.base(
            # No mirrored training images: a mirrored 2, 3, 7 or 9 is not that digit.
            data=dict(dataset="digits", num_frames=1, num_cond_frames=0, resolution=16,
                      frame_stride=1, num_classes=10, random_flip=False),
            # 2×2 patches -> an 8×8 map of 64 channels (ResBlocks), then attention at 4² with
            # 128; predicting x. A CPU step costs little more at these widths than at (16, 32) and
            # patch 1, and the samples are far better (README, demo section).
            model=dict(_TINY, channels=(64, 128), patch_size=2, num_heads=4),
            # The same 16² shift as the video config.
            schedule=dict(name="cosine_shifted", image_d=16, noise_d=64, logsnr_min=-10.0, logsnr_max=10.0),
            loss=dict(weighting="sigmoid", bias=0.0, mean_type="x", class_drop_rate=0.1),
            sampler=dict(method="ddpm", num_steps=64, guidance=4.0, guidance_interval=None),
            # 32 images a step, the rate decaying to 0 along a half cosine over 6000 steps: what
            # two CPU devices on a 2-core machine train in the image demo's 8.5 minutes. One
            # checkpoint at the end: at these step times each save costs as much as ~50 steps.
            train=dict(_TRAIN, batch_size=32, learning_rate=2e-3, lr_decay="cosine", num_steps=6000,
                       checkpoint_every=6000),
        )
    raise ValueError(f"unknown variant {variant!r} for demo; choose 'video' or 'images'")
