"""Loader throughput: clips/s of the folder and prepared (array_record) paths, 0/1/2 workers.

    .venv/bin/python benchmarks/loader.py [--clips 48] [--resolution 128] [--batch_size 8]
        [--num_frames 16] [--batches 12] [--workers 0 1 2] [--train_steps_per_s S]

Writes a moving-digits dataset (H.264, yuv420p, crf 18, like downloaded video; 25% wider than
tall so that the short-side resize and the random crop both run) into a temporary folder,
prepares it as array_record, and times training batches after a warm-up (worker start-up is not
counted). Prints a table.

HOOK (train-step consumption): pass `--train_steps_per_s` with the train step rate of the config
you care about (from benchmarks of the trainer), and `--train_batch_size` with its per-process
batch; the table then gets the ratio supply / demand = loader clips/s / (steps/s * batch).
Below 1 the loader starves the trainer.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time

import absl.flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sid2video.data import convert_videos, pipeline, synthetic  # noqa: E402


def _measure(cfg: dict, *, workers: int, batch_size: int, batches: int, warmup: int) -> tuple[float, float]:
    it = pipeline.make_train_iterator(cfg, batch_size=batch_size, seed=0, process_index=0, process_count=1,
                                      worker_count=workers)
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            next(it)
        t1 = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        t2 = time.perf_counter()
        assert batch["video"].shape[0] == batch_size
    finally:
        it.close()
    return batches * batch_size / (t2 - t1), t1 - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--video_frames", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    # HOOK: train-step consumption of the config being fed (see the module docstring).
    parser.add_argument("--train_steps_per_s", type=float, default=None)
    parser.add_argument("--train_batch_size", type=int, default=None)
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.workdir or tmp)
        res = args.resolution
        height, width = res + res // 8, res + res // 8 + res // 4  # e.g. 144 x 176 for 128
        height, width = height + height % 2, width + width % 2
        t0 = time.perf_counter()
        synthetic.write_moving_digits(
            work / "videos", seed=0, counts={"train": args.clips}, num_frames=args.video_frames, height=height,
            width=width, digit_size=res // 3, crf=18, pix_fmt="yuv420p", progress=False,
        )
        t1 = time.perf_counter()
        convert_videos.prepare_videos(work / "videos", work / "prepared", name="moving_digits", progress=False)
        t2 = time.perf_counter()
        print(f"dataset: {args.clips} clips of {args.video_frames} frames at {height}x{width} "
              f"(written in {t1 - t0:.1f} s, prepared in {t2 - t1:.1f} s); batches of {args.batch_size} clips of "
              f"{args.num_frames} frames at {res}x{res}, {args.batches} timed after {args.warmup} warm-up")
        base = dict(dataset="moving_digits", num_frames=args.num_frames, frame_stride=1, resolution=res, progress=False)
        rows = []
        for name, cfg in [
            ("folder", dict(base, data_dir=str(work / "videos"), format="folder")),
            ("prepared", dict(base, data_dir=str(work / "prepared"), format="prepared")),
        ]:
            for w in args.workers:
                rate, startup = _measure(cfg, workers=w, batch_size=args.batch_size, batches=args.batches,
                                         warmup=args.warmup)
                rows.append((name, w, rate, startup))

    demand = None
    if args.train_steps_per_s:
        demand = args.train_steps_per_s * (args.train_batch_size or args.batch_size)
    header = "| path     | workers | clips/s | frames/s | warm-up s |" + (" supply/demand |" if demand else "")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, w, rate, startup in rows:
        line = f"| {name:<8} | {w:>7} | {rate:>7.1f} | {rate * args.num_frames:>8.0f} | {startup:>9.1f} |"
        if demand:
            line += f" {rate / demand:>13.2f} |"
        print(line)
    if demand is None:
        print("(pass --train_steps_per_s and --train_batch_size to compare with the trainer's consumption)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
