"""The evaluation harness: FVD / FID and frame-prediction metrics of checkpoints or sample files.

    result = harness.evaluate("runs/k600", metric="fvd", protocol="kinetics600", checkpoint="all")
    sid2video evaluate --workdir runs/k600 --metric fvd --protocol kinetics600 --checkpoint all

`evaluate` resolves what is measured (the run's config, the data, the protocol: protocols.py), the
reference statistics (references.py, cached) and then runs the evaluators (evaluators.py) over
every requested checkpoint: the EMA network is restored through `checkpoint.load_model`, the
evaluation clips (clips.py: the split, or a seeded random subset of it) go through
`sample.Generator`, sharded over every device of every process, and

  * FVD (video) or FID (images) of the samples against the reference statistics of the same clips
    (or of the whole split: `reference_samples='all'`, the ImageNet convention);
  * for frame prediction, PSNR / SSIM / MSE of every predicted frame against the true one (PSNR
    under `metrics.PSNR_CONVENTION`), and the same for the copy-last-frame baseline (its FVD comes
    with the reference statistics).

`evaluate(samples=PATH)` measures already generated clips instead (samples.py), and
`evaluators.evaluate_sets(a, b)` gives the FVD of two sets of clips. Every long loop has a progress
bar; process 0 writes `result.json`, `report.md` and the PNGs (report.py). Every reported number
is finite, or None with the reason beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

import jax

from evaluation import clips as clips_lib
from evaluation import evaluators, fvd, metrics, progress, references, runs
from evaluation import samples as samples_lib
from evaluation.protocols import METRICS, PROTOCOLS, Protocol, check_metric, expectation_notes, is_preset, \
    protocol_record, resolve_protocol

log = logging.getLogger("sid2video.evaluate")

__all__ = ["evaluate", "Settings", "run"]


@dataclasses.dataclass
class Settings:
    """What `evaluate` measures and how.

    metric: 'fvd' (video), 'fid' (images) or 'frames' (PSNR/SSIM only); default from the protocol,
      else 'fvd' for video and 'fid' for images. Frame-prediction runs always get PSNR/SSIM of the
      model and of the copy-last-frame baseline as well.
    protocol: a `PROTOCOLS` preset ('kinetics600', 'imagenet') or None; split, num_samples,
      fvd_resolution, cond_frames_in_fvd and reference_samples override it. num_samples defaults to
      the whole split; fewer is a seeded uniformly random subset of it (subset_seed), the same
      clips for every checkpoint and for the reference statistics.
    reference_samples: None: the reference statistics come from the same clips as the samples;
      'all': from the whole split (the ImageNet FID convention); a number: that many random clips.
    checkpoint: None (latest), a step, a list or comma-separated steps, or 'all'.
    batch_size: rows per process per batch.
    data_dir / data: where the evaluation data lives (default: the run's config.data); `data` is a
      whole data config (needed with `samples` when there is no workdir).
    samples: a path of generated clips (`samples.load_samples`) to evaluate instead of checkpoints.
    sampler: overrides of config.sampler (method, num_steps, guidance, guidance_interval,
      logvar_interp).
    out: where result.json / report.md / PNGs go (default <workdir>/eval, or beside `samples`).
    cache_dir: reference-statistics cache (default <workdir>/eval_cache).
    baseline: also the FVD of the copy-last-frame baseline (frame prediction, FVD only).
    feature_net / feature_dim: replace the I3D / Inception network (tests).
    """

    metric: str | None = None
    protocol: str | None = None
    num_samples: int | None = None
    checkpoint: Any = None
    batch_size: int = 8
    split: str | None = None
    fvd_resolution: int | None | str = "preset"
    cond_frames_in_fvd: bool | None = None
    reference_samples: int | str | None = "preset"
    subset_seed: int = 0
    data_dir: str | None = None
    data: Mapping[str, Any] | None = None
    samples: Any = None
    num_cond_frames: int | None = None
    sampler: Mapping[str, Any] | None = None
    ema: bool = True
    seed: int = 0
    out: Any = None
    cache_dir: Any = None
    baseline: bool = True
    num_strips: int = 4
    fid_weights: Any = None
    feature_net: Any = None
    feature_dim: int | None = None
    progress: bool = True
    write: bool = True


@dataclasses.dataclass
class _Plan:
    """What one `evaluate` call measures, resolved from the settings, the run and the data."""

    workdir: pathlib.Path | None
    steps: list[int]
    config: Any
    proto: Protocol
    clips: clips_lib.EvalClips
    ref_n: int
    num_frames: int
    num_cond: int
    loaded: dict | None
    notes: list[str]


# ----------------------------------------------------------------------------------------------
# The run, its config and the data.

def _plan(workdir: pathlib.Path | None, s: Settings) -> _Plan:
    """Resolves the settings against the run and the data; every input error is raised here."""
    if s.batch_size < 1:
        raise ValueError(f"batch_size={s.batch_size} must be at least 1")
    steps, config, data = runs.run_and_data(workdir, samples=s.samples, checkpoint=s.checkpoint, sampler=s.sampler,
                                            data=s.data, data_dir=s.data_dir)
    num_frames = int(data.get("num_frames", 1) or 1)
    num_cond = int(s.num_cond_frames if s.num_cond_frames is not None else data.get("num_cond_frames", 0) or 0)
    loaded = None
    if s.samples is not None:
        loaded = samples_lib.load_samples(s.samples, num_frames=num_frames if num_frames > 1 else None)
        if s.num_cond_frames is None and "num_cond" in loaded:
            num_cond = int(loaded["num_cond"])
    default_metric = "fvd" if num_frames > 1 else "fid"
    proto = resolve_protocol(s.protocol, metric=s.metric or (None if is_preset(s.protocol) else default_metric),
                             split=s.split, num_samples=s.num_samples, fvd_resolution=s.fvd_resolution,
                             cond_frames_in_fvd=s.cond_frames_in_fvd, seed=s.seed,
                             reference_samples=s.reference_samples, subset_seed=s.subset_seed)
    check_metric(proto, num_frames, num_cond)
    if loaded is not None and proto.num_samples is None:
        proto.num_samples = len(loaded["sample"])
    clips = clips_lib.EvalClips(data, split=proto.split, num_samples=proto.num_samples, batch_size=s.batch_size,
                                subset_seed=proto.subset_seed, progress=s.progress)
    n = clips.num_samples
    ref_n = n if proto.reference_samples is None else clips_lib.check_num_samples(
        clips.data, clips.split, proto.reference_samples, total=clips.split_size)
    notes = []
    if loaded is not None:
        notes += samples_lib.check_against_data(loaded, source=s.samples, num_samples=n, num_frames=num_frames,
                                                resolution=clips.data.get("resolution", 128))
    if proto.metric in ("fvd", "fid") and min(n, ref_n) < 2:
        raise ValueError(f"{proto.metric.upper()} needs at least 2 samples (a covariance), got num_samples={n}")
    notes += expectation_notes(proto, {"num_frames": num_frames, "num_cond_frames": num_cond,
                                       "resolution": clips.data.get("resolution", 128)})
    return _Plan(workdir, steps, config, proto, clips, ref_n, num_frames, num_cond, loaded, notes)


# ----------------------------------------------------------------------------------------------
# Reference statistics and the result record.

def _frechet(plan: _Plan, s: Settings, workdir) -> tuple[evaluators.Evaluator | None, dict | None]:
    """The FVD / FID evaluator with its reference statistics (and the baseline's), or (None, None)."""
    proto = plan.proto
    if proto.metric not in ("fvd", "fid"):
        return None, None
    kw = dict(batch_size=s.batch_size, feature_net=s.feature_net, feature_dim=s.feature_dim)
    if proto.metric == "fvd":
        ev = evaluators.FVD(num_cond=plan.num_cond, cond_frames_in_fvd=proto.cond_frames_in_fvd,
                            resolution=proto.fvd_resolution, **kw)
    else:
        ev = evaluators.FID(weights=s.fid_weights, **kw)
    if ev.feature_net is None:   # loaded once, shared by every extractor
        ev.feature_net = evaluators.load_network(proto.metric, s.fid_weights)
    cache = pathlib.Path(s.cache_dir) if s.cache_dir is not None else (
        (workdir / "eval_cache") if workdir is not None else pathlib.Path(s.samples).parent / "eval_cache")
    c = plan.clips
    reference = references.reference_statistics(
        c.data, split=c.split, num_samples=plan.ref_n, extractor_factory=ev.extractor, cache_dir=cache,
        batch_size=s.batch_size, num_cond=plan.num_cond, baseline=s.baseline, subset_seed=proto.subset_seed,
        progress=s.progress)
    ev.reference = reference["reference"]
    return ev, reference


def _result_record(plan: _Plan, s: Settings, reference: dict | None) -> dict[str, Any]:
    """The result before any checkpoint: the protocol record, the reference statistics, notes."""
    from sid2video import checkpoint as ckpt
    from sid2video.data import sources

    c, proto = plan.clips, plan.proto
    record = protocol_record(
        proto, dataset=sources.dataset_name(c.data), data_dir=c.data.get("data_dir"), split=c.split,
        num_samples=c.num_samples, split_size=c.split_size,
        clips=c.description()["rule"] if plan.loaded is None else "generated samples from a file",
        reference_samples=plan.ref_n if reference is not None else None, num_frames=plan.num_frames,
        num_cond=plan.num_cond, resolution=ckpt._plain(c.data.get("resolution")),   # pylint: disable=protected-access
        frame_stride=c.data.get("frame_stride", 1), batch_size=s.batch_size, processes=jax.process_count(),
        devices=jax.device_count(), ema=s.ema)
    if reference is not None:
        record["feature_network"] = reference["key"]["protocol"]["network"]
        record["feature_network_sha256"] = reference["key"]["network"]
    if plan.config is not None:
        from sid2video import sample as sample_lib

        record["sampler"] = ckpt._plain(sample_lib.sampler_settings(plan.config))   # pylint: disable=protected-access
    result: dict[str, Any] = {"metric": proto.metric, "protocol": record, "checkpoints": [], "notes": plan.notes,
                              "quoted": proto.quoted, "conventions": {"psnr": metrics.PSNR_CONVENTION}}
    if reference is not None:
        result["reference"] = {"num_samples": int(reference["reference"].count),
                               "cache_file": reference["cache_file"], "cache_hit": reference["cache_hit"]}
    return result


# ----------------------------------------------------------------------------------------------
# The checkpoint loop.

def _measure(plan: _Plan, s: Settings, frechet, source, *, first: bool, desc: str, stop=None):
    """One pass over a generator or the loaded samples: (entry, strip, baseline frame metrics or None)."""
    paired = plan.num_cond > 0 if plan.loaded is None else plan.loaded.get("truth") is not None
    frames = evaluators.FrameEvaluator(num_cond=plan.num_cond) if plan.num_cond else None
    base = evaluators.FrameEvaluator(num_cond=plan.num_cond, baseline=True) if (first and frames) else None
    named = {"count": evaluators.Counter(), "strip": evaluators.Strips(s.num_strips, paired), "frechet": frechet,
             "frames": frames, "baseline": base}
    named = {k: v for k, v in named.items() if v is not None}
    out = dict(zip(named, evaluators.run_all(
        list(named.values()), source, clips=plan.clips, seed=plan.proto.seed, batch_size=s.batch_size,
        num_samples=plan.clips.num_samples, progress=s.progress, desc=desc, stop=stop)))
    entry = {**out["count"], **out.get("frechet", {}), **out.get("frames", {})}
    return entry, out["strip"], out.get("baseline")


def _evaluate_checkpoints(plan: _Plan, s: Settings, frechet, result: dict, strips: dict, done: progress.Progress,
                          stop) -> dict | None:
    """Every requested checkpoint not `done` yet: restore, generate, measure, record; returns the
    baseline's frame metrics (measured with the first checkpoint evaluated)."""
    from sid2video import checkpoint as ckpt

    generator, baseline = None, done.baseline
    for step in plan.steps:
        if done.done(step) is not None:
            result["checkpoints"].append(done.done(step))
            continue
        t0 = time.perf_counter()
        model, run_config, step = ckpt.load_model(plan.workdir, step, ema=s.ema)
        generator = runs.generator_for(generator, model, runs.apply_sampler(run_config, s.sampler))
        entry, strip, base = _measure(plan, s, frechet, generator, first=baseline is None, desc=f"step {step}",
                                      stop=stop)
        baseline = baseline if baseline is not None else base
        entry = {"step": int(step), **entry, "seconds": time.perf_counter() - t0}
        result["checkpoints"].append(entry)
        done.add(entry, baseline)
        if strip is not None:
            strips[f"step_{step}"] = strip
        if clips_lib.is_lead():
            log.info("step %d: %s", step, {k2: v for k2, v in entry.items() if not k2.endswith("per_frame")})
    return baseline


def _measure_all(plan: _Plan, s: Settings, frechet, result: dict, out_dir: pathlib.Path, strips: dict):
    """The checkpoints (or the samples), stopping at a batch boundary on SIGTERM / SIGINT; the
    baseline's frame metrics. A stopped run records what it finished and says how to resume."""
    done = progress.Progress(out_dir if s.write else None, result["protocol"], str(plan.workdir or s.samples))
    baseline = done.baseline
    with progress.StopOnSignal() as stop:
        try:
            if plan.loaded is not None:
                entry, strip, baseline = _measure(plan, s, frechet, plan.loaded, first=True, desc="samples",
                                                  stop=stop)
                result["checkpoints"].append({"step": None, **entry})
                if strip is not None:
                    strips["samples"] = strip
            else:
                baseline = _evaluate_checkpoints(plan, s, frechet, result, strips, done, stop)
            done.finish()
        except evaluators.Interrupted as err:
            baseline = baseline if baseline is not None else done.baseline
            result["interrupted"] = True
            result["notes"].append(f"interrupted ({err}) after {len(result['checkpoints'])} of "
                                   f"{max(1, len(plan.steps))} evaluations; the same command resumes it")
    return baseline


def evaluate(workdir=None, settings: Settings | None = None, **overrides) -> dict[str, Any]:
    """Evaluates checkpoints of a training run (or generated samples given by path); returns the result.

    settings: a `Settings`; keyword arguments replace its fields (evaluate(run, metric="fvd", ...)).
    SIGTERM / SIGINT stop it at a batch boundary: the result so far is written with
    result['interrupted'] True, and the same call again resumes (progress.py).
    """
    t_start = time.perf_counter()
    s = dataclasses.replace(settings or Settings(), **overrides)
    if workdir is None and s.samples is None:
        raise ValueError("give a training run (workdir) or generated samples (samples=PATH)")
    workdir = pathlib.Path(workdir) if workdir is not None else None
    plan = _plan(workdir, s)
    frechet, reference = _frechet(plan, s, workdir)
    result = _result_record(plan, s, reference)
    out_dir = pathlib.Path(s.out) if s.out is not None else (
        (workdir / "eval") if workdir is not None else pathlib.Path(s.samples).parent / "eval")
    strips: dict[str, Any] = {}
    baseline = _measure_all(plan, s, frechet, result, out_dir, strips)
    if plan.num_cond:
        base = {"name": "copy-last-frame", "description": "every predicted frame is the last conditioning frame"}
        base.update(baseline or {})
        if reference is not None and reference.get("baseline") is not None:
            base[plan.proto.metric] = fvd.distance(reference["baseline"], reference["reference"])
        result["baseline"] = base
    result["seconds"] = time.perf_counter() - t_start
    if s.write and clips_lib.is_lead():
        from evaluation import report

        result["files"] = report.write_report(out_dir, result, strips=strips, num_cond=plan.num_cond,
                                              title=str(workdir or s.samples))
    return result


# ----------------------------------------------------------------------------------------------
# Command line.

def _steps_arg(value: str):
    if value in ("all", "latest", "last"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--checkpoint takes a step, comma-separated steps, 'latest' or 'all', "
                                         f"got {value!r}") from err


def _resolution_arg(value: str):
    if value == "preset":   # not given: the protocol's
        return value
    if value.lower() in ("none", "native", "0"):
        return None
    return int(value)


def _reference_arg(value: str):
    if value in ("preset", "all"):
        return value
    if value == "same":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"--reference_samples takes a number, 'all' or 'same', got {value!r}") from err


def _parser() -> argparse.ArgumentParser:
    from sid2video import flags

    p = flags.Parser(
        prog="sid2video evaluate", renamed=flags.SAMPLER_STEPS,
        description="FVD / FID and frame-prediction metrics (PSNR, SSIM, copy-last-frame baseline) of a "
                    "training run's checkpoints, or of generated samples given by path.")
    p.add_argument("--workdir", help="training run directory (its checkpoints and config)")
    p.add_argument("--samples", help="generated samples to evaluate instead: .npz (sid2video sample), .npy, "
                                     "or a folder of MP4s / images")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="fvd (video), fid (images) or frames (PSNR/SSIM only); default from the protocol/data")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS) + ["none"],
                   help="published protocol preset: split, number of samples, FVD resolution")
    p.add_argument("--num_samples", type=int, default=None, help="clips to evaluate (default: protocol or split)")
    p.add_argument("--checkpoint", type=_steps_arg, default=None,
                   help="step, comma-separated steps, 'latest' (default) or 'all'")
    p.add_argument("--split", default=None, help="data split (default: protocol's, else config.data.eval_split)")
    p.add_argument("--reference_samples", default="preset",
                   help="clips behind the reference statistics: a number, 'all' (whole split) or 'same' "
                        "(the evaluated clips; default unless the protocol says otherwise)")
    p.add_argument("--subset_seed", type=int, default=0,
                   help="seed of the random subset of the split when --num_samples is below its size")
    p.add_argument("--cond_frames_in_fvd", action="store_const", const=True, default=None,
                   help="FVD sees the conditioning frames as part of each clip (the default)")
    p.add_argument("--no_cond_frames_in_fvd", action="store_const", const=False, dest="cond_frames_in_fvd",
                   help="FVD sees the predicted frames only")
    p.add_argument("--fvd_resolution", type=_resolution_arg, default="preset",
                   help="resize frames to this size before I3D (Kinetics600: 64); 'none' keeps them")
    p.add_argument("--batch_size", type=int, default=8, help="rows per process per batch")
    p.add_argument("--data_dir", default=None, help="dataset folder (default: the run's config.data.data_dir)")
    p.add_argument("--dataset", default=None, help="with --samples and no --workdir: the dataset name")
    p.add_argument("--num_frames", type=int, default=None, help="with --dataset: frames per clip")
    p.add_argument("--resolution", type=int, default=None, help="with --dataset: frame size")
    p.add_argument("--num_cond_frames", type=int, default=None, help="conditioning frames (default: config's)")
    p.add_argument("--out", default=None, help="report folder (default WORKDIR/eval)")
    p.add_argument("--cache_dir", default=None, help="reference statistics cache (default WORKDIR/eval_cache)")
    p.add_argument("--fid_weights", default=None, help="pytorch-fid's pt_inception-2015-12-05 weights file")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--raw", action="store_true", help="use the raw parameters instead of the EMA")
    p.add_argument("--no_baseline_fvd", action="store_true", help="skip the copy-last-frame baseline's FVD")
    p.add_argument("--strips", type=int, default=4, help="clips shown in the sample strips")
    flags.add_sampler_flags(p)
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    from sid2video import sharding

    sharding.add_distributed_flags(p)
    return p


def run(argv: Sequence[str]) -> int:
    """`sid2video evaluate ...`: prints the result summary; returns 0, or 2 with a message on bad input."""
    args = _parser().parse_args(list(argv))
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    from sid2video import flags, sharding

    flags.configure_logging()
    sharding.join_from_flags(args)
    sampler = flags.sampler_overrides(args)
    if "guidance_interval" in sampler and sampler["guidance_interval"] is None:
        sampler["guidance_interval"] = "none"  # evaluate() skips None overrides; 'none' turns it off
    data = None
    if args.dataset:
        data = {"dataset": args.dataset, "data_dir": args.data_dir}
        if args.num_frames:
            data["num_frames"] = args.num_frames
        if args.resolution:
            data["resolution"] = args.resolution
        if args.num_cond_frames is not None:
            data["num_cond_frames"] = args.num_cond_frames
    try:
        result = evaluate(
            args.workdir, metric=args.metric, num_samples=args.num_samples, protocol=args.protocol,
            checkpoint=args.checkpoint, batch_size=args.batch_size, split=args.split,
            fvd_resolution=args.fvd_resolution, cond_frames_in_fvd=args.cond_frames_in_fvd,
            data_dir=args.data_dir, data=data, samples=args.samples, num_cond_frames=args.num_cond_frames,
            sampler=sampler, ema=not args.raw, seed=args.seed, out=args.out, cache_dir=args.cache_dir,
            baseline=not args.no_baseline_fvd, num_strips=args.strips, fid_weights=args.fid_weights,
            reference_samples=_reference_arg(args.reference_samples), subset_seed=args.subset_seed,
            progress=not args.no_progress)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"sid2video evaluate: error: {err}", file=sys.stderr)
        return 2
    if clips_lib.is_lead():
        from evaluation import report

        print(report.summary(result))
    if result.get("interrupted"):
        print("sid2video evaluate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
