"""Tiny training set-ups shared by the trainer tests, and a worker for the subprocess tests.

    python tests/train_worker.py kill WORKDIR STEPS KILL_AT      train, SIGKILL itself at batch KILL_AT
    python tests/train_worker.py shard OUT                      4 steps with DP and FSDP on 4 devices
    python tests/train_worker.py dist WORKDIR STEPS PID NPROC PORT [TERM_AT]
                                                                   one process of a multi-process run
"""

from __future__ import annotations

import os
import sys

import ml_collections as mlc
import numpy as np

BATCH = 8
FRAMES, RES = 3, 8


def tiny_config(**train) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 3
    c.model = dict(num_frames=FRAMES, resolution=RES, channels=(8, 16), block_types=("resnet", "transformer"),
                   encoder_blocks=(1, 1), decoder_blocks=(1, 1), emb_channels=16, num_heads=2,
                   frame_conditioning=True, num_classes=3, dropout=0.1, dropout_from_resolution=4)
    c.schedule = dict(name="cosine_shifted", image_d=RES, noise_d=RES)
    c.loss = dict(weighting="sigmoid", bias=0.0, mean_type="v", class_drop_rate=0.2, cond_drop_rate=0.1)
    c.data = dict(num_cond_frames=1)
    c.sampler = dict(method="addim", num_steps=6, guidance=0.0)
    c.train = dict(batch_size=BATCH, num_steps=100, warmup_steps=2, learning_rate=3e-3, log_every=1,
                   checkpoint_every=4, async_checkpoint=False, ema_decay=0.9)
    c.train.update(train)
    return c


def global_batch(i: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(1000 + i)
    return {"video": r.integers(0, 256, (BATCH, FRAMES, RES, RES, 3), dtype=np.uint8),
            "label": r.integers(0, 3, (BATCH,), dtype=np.int32)}


class Batches:
    """A deterministic, restorable iterator: batch i is a function of i; process p gets its rows."""

    def __init__(self, process_index: int = 0, process_count: int = 1, hook=None):
        self.i = 0
        self.pi, self.pc = process_index, process_count
        self.hook = hook

    def __iter__(self):
        return self

    def __next__(self):
        if self.hook:
            self.hook(self.i)
        b = global_batch(self.i)
        self.i += 1
        n = BATCH // self.pc
        return {k: v[self.pi * n:(self.pi + 1) * n] for k, v in b.items()}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = int(state["i"])


def _kill(workdir: str, steps: int, kill_at: int) -> None:
    import signal

    from sid2video import train

    def hook(i):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train.fit(tiny_config(), workdir, steps=steps, data_iterator=Batches(hook=hook), progress=False)


def _shard(out: str) -> None:
    import jax

    from sid2video import sharding
    from sid2video.trainer import Trainer

    assert jax.device_count() == 4, jax.devices()
    results = {}
    for name, devices, fsdp in (("dp", jax.devices(), 1), ("fsdp", jax.devices(), 2)):
        trainer = Trainer(tiny_config(fsdp=fsdp, fsdp_min_params=1), mesh=sharding.make_mesh(fsdp, devices))
        state = trainer.init_state()
        losses = []
        for i in range(4):
            state, m = trainer.step(state, global_batch(i))
            losses.append(float(m["loss"]))
        flat = jax.tree.leaves(jax.device_get(state.params))
        results[name] = (losses, flat)
        if name == "fsdp":  # the FSDP run really splits parameters
            specs = [s.spec for s in jax.tree.leaves(trainer.state_shardings.params)]
            results["fsdp_split"] = sum("fsdp" in tuple(s) for s in specs)
    np.savez(out, **{
        f"{k}_loss": np.asarray(v[0]) for k, v in results.items() if k != "fsdp_split"
    }, **{
        f"{k}_p{j}": np.asarray(p) for k, v in results.items() if k != "fsdp_split" for j, p in enumerate(v[1])
    }, fsdp_split=results["fsdp_split"])


def _dist(workdir: str, steps: int, pid: int, nproc: int, port: int, term_at: int = -1) -> None:
    """One process of a multi-process run; with term_at >= 0 the last process alone receives a
    SIGTERM while fetching that batch (the others must stop at the same step)."""
    import signal

    from sid2video import sharding, train

    sharding.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    import jax

    assert jax.process_count() == nproc

    def hook(i):
        if pid == nproc - 1 and i == term_at:
            os.kill(os.getpid(), signal.SIGTERM)

    summary = train.fit(tiny_config(), workdir, steps=steps, data_iterator=Batches(pid, nproc, hook=hook),
                        progress=False, handle_signals=term_at >= 0)
    print(f"stopped at {summary['step']} by {summary['stopped_by']}", flush=True)


if __name__ == "__main__":
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "kill":
        _kill(args[0], int(args[1]), int(args[2]))
    elif mode == "shard":
        _shard(args[0])
    elif mode == "dist":
        _dist(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), *map(int, args[5:6]))
    else:
        raise SystemExit(f"unknown mode {mode}")
