"""Evaluators: FVD, FID and frame metrics of a generator or of generated samples, one `run` each.

Every evaluator has `run(generator_or_samples)` and returns a dict of finite numbers (or None with
a `<name>_na` reason where a value is undefined), ready for JSON lines or TensorBoard. A generator
is any `fn(batch, rng) -> uint8 [B, T, H, W, 3]` (e.g. `sample.Generator`) fed the conditioning
frames and labels of `EvalClips`; samples are a uint8 array [N, T, H, W, 3] or what
`samples.load_samples` returns (with 'truth' for the frame metrics).

A trainer that holds a model runs them every N steps on a small held-out set like this (the
reference statistics are computed at the first call, cached under `cache_dir` if given):

    from evaluation import clips, evaluators
    held_out = clips.EvalClips(config.data, split="val", num_samples=64, batch_size=8)
    fvd = evaluators.FVD(held_out, num_cond=config.data.num_cond_frames, cache_dir=workdir / "eval_cache")
    frames = evaluators.FrameEvaluator(num_cond=config.data.num_cond_frames)
    ...
    generate = sample.Generator(model, config)          # or any fn(batch, rng) -> uint8 video
    rows = evaluators.run_all([fvd, frames], generate, clips=held_out, seed=step)   # one sampling pass
    writer.write(step, evaluators.scalars(*rows))       # {'fvd': ..., 'psnr': ..., 'ssim': ...}

Evaluation sits above the trainer in the layers, so the trainer module does not import this one:
the entry point that owns both builds the evaluators and hands the loop a callback that runs them.
`run_all` drives one pass (sampling is the expensive part) and feeds every evaluator; a single
evaluator's `run(x)` is `run_all([self], x)`. Each process feeds its own rows; the results are
merged over processes, identical on all.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from evaluation import clips as clips_lib
from evaluation import frechet, fvd, metrics

__all__ = ["Evaluator", "FVD", "FID", "FrameEvaluator", "Counter", "run_all", "scalars", "load_network",
           "evaluate_sets", "Interrupted", "Strips"]

Generator = Callable[[Mapping[str, np.ndarray], jax.Array], np.ndarray]


class Interrupted(RuntimeError):
    """`run_all` stopped at a batch boundary because `stop()` said so (e.g. on SIGTERM)."""


class Evaluator:
    """`reset()`, then `update(truth, generated, valid)` per batch, then `result()`; or `run(x)`."""

    clips: clips_lib.EvalClips | None = None
    batch_size: int = 8

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, truth_BTHWC: np.ndarray | None, generated_BTHWC: np.ndarray, valid_B: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, generator_or_samples, *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
        """The result of one pass over a generator (on `self.clips`) or over samples."""
        (out,) = run_all([self], generator_or_samples, clips=self.clips, seed=seed,
                         batch_size=self.batch_size, progress=progress)
        return out


class Counter(Evaluator):
    """How many real rows went through (over all processes)."""

    def reset(self) -> None:
        self.count = 0

    def update(self, truth_BTHWC, generated_BTHWC, valid_B) -> None:
        self.count += int(np.sum(valid_B))

    def result(self) -> dict[str, Any]:
        return {"num_samples": int(fvd.allgather_float64(np.float64(self.count)).sum())}


def load_network(metric: str, fid_weights=None):
    """I3D for FVD; the FID Inception (a clear FileNotFoundError without its weights file)."""
    if metric == "fvd":
        from evaluation import i3d

        return i3d.load()
    from evaluation import inception

    return inception.load(fid_weights)


class _Frechet(Evaluator):
    """Fréchet distance of the generated clips' features to reference statistics (SPEC §7)."""

    metric = ""

    def __init__(self, clips: clips_lib.EvalClips | None = None, *, reference: frechet.RunningStatistics | None = None,
                 cache_dir=None, batch_size: int | None = None, feature_net=None, feature_dim: int | None = None):
        self.clips = clips
        self.reference = reference
        self.cache_dir = cache_dir
        self.batch_size = int(batch_size or (clips.batch_size if clips is not None else 8))
        self.feature_net = feature_net
        self.feature_dim = feature_dim
        self._extractor = None

    def extractor(self) -> fvd.StreamingExtractor:
        """A fresh feature extractor of this protocol (the network is loaded once)."""
        raise NotImplementedError

    def reference_statistics(self) -> frechet.RunningStatistics:
        """The true clips' statistics: given, or computed once from `clips` (cached under cache_dir)."""
        if self.reference is None:
            if self.clips is None:
                raise ValueError(f"{self.metric.upper()} needs reference statistics or the clips to compute them")
            from evaluation import references

            c = self.clips
            self.reference = references.reference_statistics(
                c.data, split=c.split, num_samples=c.num_samples, extractor_factory=self.extractor,
                cache_dir=self.cache_dir, batch_size=c.batch_size, subset_seed=c.subset_seed,
                progress=c.progress)["reference"]
        return self.reference

    def reset(self) -> None:
        self._extractor = self.extractor()

    def update(self, truth_BTHWC, generated_BTHWC, valid_B) -> None:
        self._extractor.update(generated_BTHWC, valid_B)

    def statistics(self) -> frechet.RunningStatistics:
        return self._extractor.merged()

    def result(self) -> dict[str, Any]:
        """{metric: distance or None, 'num_samples'}; with fewer than 2 clips (no covariance) the
        value is None and '<metric>_na' says why. Fewer clips than feature dimensions give a
        singular covariance: the distance is finite (frechet.distance) but biased upwards."""
        stats = self.statistics()
        ref = self.reference_statistics()
        out: dict[str, Any] = {"num_samples": int(stats.count)}
        if min(stats.count, ref.count) < 2:
            out[self.metric] = None
            out[f"{self.metric}_na"] = (f"needs at least 2 clips on each side for a covariance, got "
                                        f"{stats.count} generated and {ref.count} reference")
        else:
            out[self.metric] = fvd.distance(stats, ref)
        return out


class FVD(_Frechet):
    """FVD: I3D logits of the clips (resized to `resolution` first; with cond_frames_in_fvd False
    only the predicted frames), Fréchet distance to the true clips' statistics."""

    metric = "fvd"

    def __init__(self, clips=None, *, num_cond: int = 0, cond_frames_in_fvd: bool = True,
                 resolution: int | None = None, **kw):
        super().__init__(clips, **kw)
        self.num_cond = int(num_cond or 0)
        self.cond_frames_in_fvd = bool(cond_frames_in_fvd)
        self.resolution = resolution

    def extractor(self) -> fvd.FeatureExtractor:
        if self.feature_net is None:
            self.feature_net = load_network("fvd")
        kw = {} if self.feature_dim is None else {"dim": self.feature_dim}
        return fvd.FeatureExtractor(resolution=self.resolution, num_cond_frames=self.num_cond,
                                    count_cond_frames=self.cond_frames_in_fvd, net=self.feature_net,
                                    batch_size=self.batch_size, **kw)


class FID(_Frechet):
    """FID: Inception pool3 features of the images, Fréchet distance to the true images' statistics."""

    metric = "fid"

    def __init__(self, clips=None, *, weights=None, **kw):
        super().__init__(clips, **kw)
        self.weights = weights

    def extractor(self) -> fvd.StreamingExtractor:
        from evaluation import fid as fid_lib

        if self.feature_net is None:
            self.feature_net = load_network("fid", self.weights)
        kw = {} if self.feature_dim is None else {"dim": self.feature_dim}
        return fid_lib.FeatureExtractor(weights=self.weights, net=self.feature_net, batch_size=self.batch_size,
                                        **kw)


class FrameEvaluator(Evaluator):
    """PSNR / SSIM / MSE of the predicted frames against the true ones (`metrics.FrameMetrics`; PSNR
    under `metrics.PSNR_CONVENTION`). baseline=True measures copy-last-frame of the truth instead
    of the generated clips. Batches without truth (samples with no 'truth') are skipped."""

    def __init__(self, *, num_cond: int, clips: clips_lib.EvalClips | None = None, baseline: bool = False,
                 batch_size: int | None = None):
        if num_cond < 1:
            raise ValueError("frame metrics (PSNR/SSIM) need a frame-prediction model (num_cond_frames > 0)")
        self.num_cond = int(num_cond)
        self.clips = clips
        self.baseline = baseline
        self.batch_size = int(batch_size or (clips.batch_size if clips is not None else 8))
        self.reset()

    def reset(self) -> None:
        self._acc = metrics.FrameMetrics(self.num_cond)
        self._seen = False

    def update(self, truth_BTHWC, generated_BTHWC, valid_B) -> None:
        if truth_BTHWC is None:
            return
        self._seen = True
        if self._acc.num_pred is None:
            self._acc.num_pred = truth_BTHWC.shape[1] - self.num_cond
        pred = metrics.copy_last_frame(truth_BTHWC, self.num_cond) if self.baseline else generated_BTHWC
        self._acc.update(pred, truth_BTHWC, valid_B)

    def result(self) -> dict[str, Any]:
        if not self._seen:
            return {}
        r = self._acc.merged().result()
        out = {k: r[k] for k in ("psnr", "ssim", "mse", "psnr_per_frame", "ssim_per_frame", "mse_per_frame",
                                 "exact_frames")}
        if r["count"] and r["ssim"] is None:
            out["ssim_na"] = f"frames smaller than SSIM's {metrics.SSIM_WINDOW}×{metrics.SSIM_WINDOW} window"
        return out


class Strips(Evaluator):
    """The first `num` real rows as (truth [n, T, H, W, C] or None, generated [n, T, H, W, C]), for
    sample strips; truth is dropped when not `paired` (e.g. image models, whose truth is unrelated)."""

    def __init__(self, num: int, paired: bool):
        self.num, self.paired = num, paired
        self.reset()

    def reset(self) -> None:
        self.rows: list[tuple[np.ndarray | None, np.ndarray]] = []

    def update(self, truth_BTHWC, generated_BTHWC, valid_B) -> None:
        for r in np.flatnonzero(valid_B)[:max(0, self.num - len(self.rows))]:
            truth = truth_BTHWC[r] if (self.paired and truth_BTHWC is not None) else None
            self.rows.append((truth, generated_BTHWC[r]))

    def result(self):
        if not self.rows:
            return None
        truth = None if self.rows[0][0] is None else np.stack([t for t, _ in self.rows])
        return truth, np.stack([g for _, g in self.rows])


# ----------------------------------------------------------------------------------------------
# One pass over a generator or over samples.

def _generated(generator: Generator, clips: clips_lib.EvalClips, seed: int, desc: str):
    """(truth, generated, valid) per batch of the clips; the rng of batch i is fold_in(key(seed), i)."""
    for i, batch, valid in clips.batches(desc):
        video_BTHWC = np.asarray(batch["video"])
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        out_BTHWC = generator({"video": video_BTHWC, "label": np.asarray(batch["label"])}, rng)
        yield video_BTHWC, np.asarray(out_BTHWC), valid


def _from_samples(samples, num_samples: int | None, batch_size: int, progress: bool, desc: str):
    """(truth or None, sample, valid) per batch; process p takes rows p, p + P, ...; every process
    runs the same number of batches, the last padded with row 0 (valid False)."""
    loaded = samples if isinstance(samples, Mapping) else {"sample": samples}
    sample = np.asarray(loaded["sample"])
    if sample.ndim == 4:
        sample = sample[:, None]
    n = len(sample) if num_samples is None else int(num_samples)
    if n > len(sample):
        raise ValueError(f"num_samples={n} is larger than the set, which has {len(sample)} clips")
    truth = loaded.get("truth")
    truth = None if truth is None else np.asarray(truth)[:n]
    if truth is not None and truth.shape != sample[:n].shape:
        raise ValueError(f"'truth' has shape {truth.shape}, 'sample' {sample[:n].shape}")
    pi, pc = jax.process_index(), jax.process_count()
    rows = np.arange(pi, n, pc)
    num_batches = -(-(-(-n // pc)) // batch_size)
    bar = clips_lib.progress_bar(num_batches, desc, progress)
    for b in range(num_batches):
        idx = rows[b * batch_size:(b + 1) * batch_size]
        valid = np.ones(len(idx), bool)
        if len(idx) < batch_size:
            valid = np.concatenate([valid, np.zeros(batch_size - len(idx), bool)])
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), int)])
        yield (None if truth is None else truth[idx]), sample[idx], valid
        bar.update(1)
    bar.close()


def run_all(evaluators: Sequence[Evaluator], generator_or_samples, *, clips: clips_lib.EvalClips | None = None,
            seed: int = 0, batch_size: int | None = None, num_samples: int | None = None, progress: bool = False,
            desc: str = "samples", stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Feeds one pass over a generator (on `clips`) or over samples to every evaluator; their results.

    num_samples: with samples, how many of them (default all). stop: read after every batch; when it
    returns True the pass ends there with `Interrupted` (every process must get the same answer).
    """
    for ev in evaluators:
        ev.reset()
    if callable(generator_or_samples):
        if clips is None:
            raise ValueError("a generator needs the clips whose conditioning frames or labels it is fed")
        stream: Iterator = _generated(generator_or_samples, clips, seed, desc)
    else:
        size = batch_size or (clips.batch_size if clips is not None else 8)
        stream = _from_samples(generator_or_samples, num_samples, size, progress, desc)
    for i, (truth, generated, valid) in enumerate(stream):
        for ev in evaluators:
            ev.update(truth, generated, valid)
        if stop is not None and stop():
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            raise Interrupted(f"stopped after batch {i + 1} of {desc}")
    return [ev.result() for ev in evaluators]


def scalars(*results: Mapping[str, Any]) -> dict[str, float]:
    """The defined scalar values of evaluator results (for JSON lines and TensorBoard)."""
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)})
    return out


# ----------------------------------------------------------------------------------------------
# Two sets of clips.

def _set_statistics(source, ev: _Frechet, num_samples, batch_size, desc, progress,
                    subset_seed: int = 0) -> frechet.RunningStatistics:
    ev.reset()
    if isinstance(source, Mapping) or hasattr(source, "to_dict"):
        data = clips_lib.data_config(source)
        c = clips_lib.EvalClips(data, split=data.get("split"), num_samples=num_samples, batch_size=batch_size,
                                subset_seed=subset_seed, progress=progress)
        for _, batch, valid in c.batches(desc):
            ev.update(None, np.asarray(batch["video"]), valid)
    else:
        for truth, sample, valid in _from_samples(source, num_samples, batch_size, progress, desc):
            ev.update(truth, sample, valid)
    return ev.statistics()


def evaluate_sets(videos_a, videos_b, *, metric: str = "fvd", fvd_resolution: int | None = None,
                  num_cond_frames: int = 0, cond_frames_in_fvd: bool = True, num_samples: int | None = None,
                  batch_size: int = 8, feature_net=None, feature_dim: int | None = None, fid_weights=None,
                  subset_seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The FVD (or FID) between two sets of clips, e.g. test clips against training clips.

    Each set is a uint8 array [N, T, H, W, 3] (images: [N, H, W, 3]) or a data config (a mapping
    with dataset, data_dir, split, num_frames, resolution, ...) whose `split` is read in order.
    num_samples: how many of each set (default: all of each): the first ones of an array, a seeded
    random subset (`clips.subset_positions`) of a split.
    """
    kw = dict(batch_size=batch_size, feature_net=feature_net, feature_dim=feature_dim)
    if metric == "fvd":
        ev: _Frechet = FVD(num_cond=num_cond_frames, cond_frames_in_fvd=cond_frames_in_fvd,
                           resolution=None if fvd_resolution in (None, 0) else int(fvd_resolution), **kw)
    elif metric == "fid":
        ev = FID(weights=fid_weights, **kw)
    else:
        raise ValueError(f"evaluate_sets measures 'fvd' or 'fid', got {metric!r}")
    stats = [_set_statistics(s, ev, num_samples, batch_size, f"set {name}", progress, subset_seed)
             for name, s in (("a", videos_a), ("b", videos_b))]
    return {metric: fvd.distance(*stats), "num_samples_a": int(stats[0].count),
            "num_samples_b": int(stats[1].count), "protocol": ev.extractor().protocol()}
