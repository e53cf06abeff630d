"""What a frame-prediction run has learned, noise level by noise level.

    .venv/bin/python benchmarks/demo_probe.py RUN_DIR [--num_clips 16] [--logsnr -7,-5,-3,0,3,6] [--raw]
                                             [--round_trip 4,8,16,24] [--split train]

For the first clips of the run's evaluation split (or of --split), the predicted frames are noised to a fixed
logSNR λ (the conditioning frames stay clean, as in training and sampling) and the network's x̂
comes from one call. The table gives x̂'s mean squared error (pixels in [−1, 1]) on the first
predicted frame and over all predicted frames, beside copying the last given frame forward. Where
x̂ is worse than the copy at low λ, the network has not learned to carry the given frames
forward at the noise levels where the sampler decides what the future frames hold; where it is
worse at high λ, it has not learned to denoise. The last column says whether the network uses the
motion in the given frames: the mean square change of x̂ over the predicted frames when every
given frame is replaced by the last one (a still history, the same z_t). Near 0 where the noise is
high, the network cannot know where the digit moves. Reads the EMA parameters (--raw: the raw ones).

--round_trip K,...: the run's sampler (its method and steps, no guidance) started at step K of its N
from the true predicted frames diffused to that step's logSNR, and run to the end. It says at which
noise level the sampler stops keeping what the frames hold: a network that denoises its own
predictions well returns the truth from a low noise level. The table gives the samples' mean squared
error over the predicted frames and, for the demo's moving digits (its saved ground truth), the share
of predicted frames in which the demo's classifier names the clip's digit, beside that share on the
true frames.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


class _RunClips:
    """A frame-prediction run's network (EMA or raw), its config and step, and the first `num_clips`
    clips of `split` (default: the run's evaluation split): uint8 `truth_BTHWC`, their `keys`, in
    [-1, 1] as `x_BTHWC`, and the conditioning mask `mask_BT` of the run's given frames."""

    def __init__(self, run_dir: str, *, num_clips: int, ema: bool, split: str | None):
        import jax.numpy as jnp

        from sid2video import checkpoint
        from sid2video.data import pipeline, sources
        from sid2video.diffusion import conditioning

        self.model, self.cfg, self.step = checkpoint.load_model(run_dir, ema=ema)
        self.num_cond = int(self.cfg.data.num_cond_frames)
        if not self.cfg.model.get("frame_conditioning") or self.num_cond < 1:
            raise SystemExit(f"demo_probe: {run_dir} is not a frame-prediction run (no conditioning frames)")
        self.split = split or sources.eval_split(self.cfg.data)
        it = pipeline.make_eval_iterator(self.cfg.data, batch_size=num_clips, split=self.split)
        batch = next(it)
        keep = np.asarray(batch["mask"], bool)
        self.truth_BTHWC = np.asarray(batch["video"])[keep]
        self.keys = [it.keys[i] for i in np.asarray(batch["index"])[keep]]
        del it  # its prefetch thread stops now, not at interpreter exit
        self.x_BTHWC = conditioning.to_unit(jnp.asarray(self.truth_BTHWC))
        self.mask_BT = conditioning.cond_mask(*self.x_BTHWC.shape[:2], self.num_cond)


def probe(run_dir: str, *, num_clips: int = 16, logsnrs=(-7, -5, -3, 0, 3, 6), ema: bool = True,
          seed: int = 1, split: str | None = None, clips: _RunClips | None = None) -> dict:
    """{'step', 'num_clips', 'rows': [{'logsnr', 'first', 'all', 'history'}],
    'copy_last_frame': {'first', 'all'}}. `clips`: the run and clips already loaded (then
    `num_clips`, `ema` and `split` are theirs)."""
    import jax
    import jax.numpy as jnp

    from sid2video.diffusion import parametrization

    run = clips or _RunClips(run_dir, num_clips=num_clips, ema=ema, split=split)
    model, cfg, step, c, x_BTHWC, mask_BT = run.model, run.cfg, run.step, run.num_cond, run.x_BTHWC, run.mask_BT
    b, t = x_BTHWC.shape[:2]
    given = (jnp.arange(t) < c)[None, :, None, None, None]
    eps = jax.random.normal(jax.random.PRNGKey(seed), x_BTHWC.shape)

    def errors(pred_BTHWC) -> dict:
        err_T = np.asarray(jnp.mean(jnp.square(pred_BTHWC - x_BTHWC)[:, c:], axis=(0, 2, 3, 4)), np.float64)
        return {"first": float(err_T[0]), "all": float(err_T.mean())}

    def predict_x(cond_BTHWC, noised_BTHWC, logsnr_B):
        """x̂ from one network call, the given frames of `cond_BTHWC` held clean in z_t."""
        z = jnp.where(given, cond_BTHWC, noised_BTHWC)
        out = model(z, logsnr_B, cond=cond_BTHWC, cond_mask=mask_BT)
        return parametrization.predictions(out.astype(jnp.float32), z, logsnr_B, cfg.loss.mean_type)[0]

    still_BTHWC = still_history(x_BTHWC, c)
    rows = []
    for lam in logsnrs:
        logsnr_B = jnp.full((b,), float(lam), jnp.float32)
        noised = parametrization.diffuse(x_BTHWC, eps, logsnr_B)
        x_hat = predict_x(x_BTHWC, noised, logsnr_B)
        x_hat_still = predict_x(still_BTHWC, noised, logsnr_B)
        moved = float(jnp.mean(jnp.square(x_hat - x_hat_still)[:, c:]))
        rows.append({"logsnr": float(lam), **errors(x_hat), "history": moved})
    copy = jnp.broadcast_to(x_BTHWC[:, c - 1:c], x_BTHWC.shape)
    return {"step": int(step), "num_clips": int(b), "rows": rows, "copy_last_frame": errors(copy)}


def round_trip(run_dir: str, *, num_clips: int = 16, start_steps=(4, 8, 16, 24), ema: bool = True,
               seed: int = 1, repeats: int = 2, split: str | None = None, clips: _RunClips | None = None) -> dict:
    """{'step', 'num_clips', 'split', 'method', 'num_steps', 'rows': [{'start_step', 'logsnr', 'mse',
    'recognised', 'recognised_by_frame'}], 'recognised_in_truth', 'recognised_in_truth_by_frame'}: the
    run's sampler from the true predicted frames diffused to step K's logSNR, for each K in
    `start_steps`, averaged over `repeats` noise draws. The recognised shares are None where the data
    has no saved digit classes. `clips` as for `probe`."""
    import pathlib

    import jax
    import jax.numpy as jnp

    from sid2video import demo, sample
    from sid2video.diffusion import conditioning, parametrization, samplers, schedules

    clips = clips or _RunClips(run_dir, num_clips=num_clips, ema=ema, split=split)
    model, cfg, c, x_BTHWC, mask_BT = clips.model, clips.cfg, clips.num_cond, clips.x_BTHWC, clips.mask_BT
    schedule = schedules.from_config(cfg.schedule)
    sampler = samplers.from_config(sample.sampler_settings(cfg, guidance=0.0, guidance_interval=None), schedule)
    bad = [k for k in start_steps if not 0 <= int(k) <= sampler.num_steps]
    if bad:
        raise SystemExit(f"demo_probe: --round_trip steps {bad} are outside [0, {sampler.num_steps}] "
                         "(the run's config.sampler.num_steps)")
    b = x_BTHWC.shape[0]

    def predict_x(z, logsnr_B):
        out = model(z, logsnr_B, cond=x_BTHWC, cond_mask=mask_BT)
        return parametrization.predictions(out.astype(jnp.float32), z, logsnr_B, cfg.loss.mean_type)[0]

    run = jax.jit(lambda z_init, key, k: sampler(predict_x, key, x_BTHWC.shape, cond=x_BTHWC, cond_mask=mask_BT,
                                                 z_init=z_init, start_step=k), static_argnums=2)
    clf = classes = None
    data_dir = pathlib.Path(cfg.data.data_dir)
    if (data_dir / "ground_truth" / f"{clips.split}.json").exists() and (data_dir / "ground_truth" / "train.json").exists():
        clf = demo.clip_digit_classifier(cfg.data, seed)
        classes = demo.clip_classes(data_dir, clips.split, clips.keys)
    rows = []
    for k in start_steps:
        k = int(k)
        logsnr = float(schedule(jnp.asarray(1.0 - k / sampler.num_steps, jnp.float32)))
        mse, hits = [], []
        for r in range(repeats):
            noise_key, chain_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), r))
            z = parametrization.diffuse(x_BTHWC, jax.random.normal(noise_key, x_BTHWC.shape),
                                        jnp.full((b,), logsnr, jnp.float32))
            out = run(z, chain_key, k)
            mse.append(float(jnp.mean(jnp.square(out - x_BTHWC)[:, c:])))
            if clf is not None:
                hits.append(demo.recognised(clf, np.asarray(conditioning.to_uint8(out))[:, c:], classes).mean(0))
        by_frame = np.mean(hits, axis=0) if hits else None  # [predicted frames]
        rows.append({"start_step": k, "logsnr": logsnr, "mse": float(np.mean(mse)),
                     "recognised": float(by_frame.mean()) if hits else None,
                     "recognised_by_frame": by_frame.tolist() if hits else None})
    truth_by_frame = demo.recognised(clf, clips.truth_BTHWC[:, c:], classes).mean(0) if clf is not None else None
    return {"step": int(clips.step), "num_clips": int(b), "split": clips.split, "method": sampler.method,
            "num_steps": sampler.num_steps, "rows": rows,
            "recognised_in_truth": float(truth_by_frame.mean()) if clf is not None else None,
            "recognised_in_truth_by_frame": truth_by_frame.tolist() if clf is not None else None}


def round_trip_table(result: dict) -> str:
    lines = [f"{result['method']} from the truth diffused to step K of {result['num_steps']}, step "
             f"{result['step']}, {result['num_clips']} clips of {result['split']}",
             "| K | logSNR | mean squared error | clip's digit recognised | in the first / last predicted frame |",
             "|---|---|---|---|---|"]
    share = lambda v: "n/a" if v is None else f"{v:.3f}"
    ends = lambda v: "n/a" if v is None else f"{v[0]:.3f} / {v[-1]:.3f}"
    lines += [f"| {r['start_step']} | {r['logsnr']:+.2f} | {r['mse']:.4f} | {share(r['recognised'])} | "
              f"{ends(r['recognised_by_frame'])} |" for r in result["rows"]]
    lines.append(f"| true frames | | 0 | {share(result['recognised_in_truth'])} | "
                 f"{ends(result['recognised_in_truth_by_frame'])} |")
    return "\n".join(lines)


def still_history(x_BTHWC, num_cond: int):
    """The clips with every given frame replaced by the last given one (frame num_cond − 1); the
    predicted frames are kept."""
    import jax.numpy as jnp

    last = x_BTHWC[:, num_cond - 1:num_cond]
    t = x_BTHWC.shape[1]
    before = (jnp.arange(t) < num_cond - 1)[None, :, None, None, None]
    return jnp.where(before, last, x_BTHWC)


def table(result: dict) -> str:
    copy = result["copy_last_frame"]
    lines = [f"x̂ error by logSNR, step {result['step']}, {result['num_clips']} held-out clips "
             "(mean squared error in [-1, 1])",
             "| logSNR | first predicted frame | all predicted frames | x̂ moved by the history |",
             "|---|---|---|---|"]
    lines += [f"| {r['logsnr']:+g} | {r['first']:.4f} | {r['all']:.4f} | {r['history']:.4f} |"
              for r in result["rows"]]
    lines.append(f"| copy last frame | {copy['first']:.4f} | {copy['all']:.4f} | |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--num_clips", type=int, default=16)
    parser.add_argument("--logsnr", default="-7,-5,-3,0,3,6", help="comma-separated logSNR values")
    parser.add_argument("--raw", action="store_true", help="the raw parameters instead of the EMA")
    parser.add_argument("--round_trip", default=None, metavar="K,...",
                        help="also run the sampler from the truth diffused to these of its steps")
    parser.add_argument("--split", default=None, help="the clips' split (default: the run's evaluation split)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.num_clips < 1:
        parser.error("--num_clips must be at least 1")
    try:
        logsnrs = [float(v) for v in args.logsnr.split(",")]
    except ValueError:
        parser.error(f"--logsnr {args.logsnr!r} must be comma-separated numbers")
    try:
        starts = [int(v) for v in args.round_trip.split(",")] if args.round_trip else []
    except ValueError:
        parser.error(f"--round_trip {args.round_trip!r} must be comma-separated step numbers")
    clips = _RunClips(args.run_dir, num_clips=args.num_clips, ema=not args.raw, split=args.split)
    result = probe(args.run_dir, logsnrs=logsnrs, clips=clips)
    print(table(result))
    if starts:
        result["round_trip"] = round_trip(args.run_dir, start_steps=starts, clips=clips)
        print(round_trip_table(result["round_trip"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
