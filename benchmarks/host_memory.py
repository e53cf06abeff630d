"""The demo's CPU training with and without sid2video.host_memory's malloc settings.

    .venv/bin/python benchmarks/host_memory.py [--train_steps 300] [--repeats 2] [--config demo:video]

Runs `sid2video train` on a small moving-digits dataset in fresh processes, alternating
SID2VIDEO_MALLOC_TUNING=0 and 1, and prints per run the trainer's median steps/s after the
first third of the steps (compilation and warm-up left out), the process's user and system CPU
seconds and its minor page faults, then the ratio of the medians. Pin it to cores with `taskset`
to compare like with like on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(config: str, data_dir: pathlib.Path, workdir: pathlib.Path, steps: int, tuned: bool) -> dict:
    env = {**os.environ, "SID2VIDEO_MALLOC_TUNING": "1" if tuned else "0", "JAX_PLATFORMS": "cpu"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sid2video.cli", "train", "--config", config,
                    f"--config.data.data_dir={data_dir}", "--config.data.progress=False",
                    "--workdir", str(workdir), "--train_steps", str(steps)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    rates = [r["steps_per_s"] for r in rows if r["step"] > steps // 3]
    return {"tuned": tuned, "steps_per_s": statistics.median(rates), "wall_s": wall,
            "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo:video", help="a config with dataset='moving_digits'")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting (alternating)")
    args = parser.parse_args()

    from sid2video.data import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = pathlib.Path(tmp) / "data"
        synthetic.write_moving_digits(data_dir, seed=0, counts={"train": 64, "val": 8, "test": 8},
                                      height=32, width=32, digit_size=16, num_digits=1, num_frames=24,
                                      max_speed=2, progress=False)
        runs = []
        for i in range(args.repeats):
            for tuned in (False, True):
                runs.append(_run(args.config, data_dir, pathlib.Path(tmp) / f"run{i}_{int(tuned)}",
                                 args.train_steps, tuned))
                print(json.dumps(runs[-1]), flush=True)
    print(f"\n| malloc tuning | steps/s | wall s | user s | sys s | minor faults |\n|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {'on' if r['tuned'] else 'off'} | {r['steps_per_s']:.2f} | {r['wall_s']:.1f} | {r['user_s']:.1f} | "
              f"{r['sys_s']:.1f} | {r['minor_faults']:,} |")
    on = statistics.median(r["steps_per_s"] for r in runs if r["tuned"])
    off = statistics.median(r["steps_per_s"] for r in runs if not r["tuned"])
    print(f"\nsteps/s with tuning / without: {on / off:.2f} ({args.config}, {args.train_steps} steps, "
          f"{args.repeats} runs each)")


if __name__ == "__main__":
    main()
