"""Accelerator figures of the paper configs: train-step MFU, memory and compile time, sampler and
FVD throughput, as one JSON and one Markdown table (benchmarks/accelerator.sh runs it all).

    python benchmarks/accelerator.py run [--tiny] [--rows train:k600,sampler:k600,...]
        [--config.model.remat_policy=save_dots ...] --json part.json
    python benchmarks/accelerator.py merge part1.json part2.json ... --json all.json --md all.md

Rows (ROWS): the K600 small and ImageNet-512 flop-heavy train steps at the largest per-device
micro-batch that fits (throughput.find_micro_batch; gradient accumulation over 2 micro-batches
per step, the paper batch's step time extrapolated from it), K600 aDDIM-128 and ImageNet-512
guided DDPM-512 sampling, and FVD's I3D features of 16-frame 64² clips. `--tiny` (the default on
CPUs) shrinks each config after loading it (widths 8, the smallest resolution its levels allow,
at most 2 blocks per stack, 8-frame videos, 2 sampler steps, one timed train step, 9-frame FVD clips) and keeps its
structure (levels, block kinds, scan, remat, conv and attention kinds, dtype, guidance).

MFU = achieved model FLOP/s per device / the device's dense bf16 peak (sid2video.devices; on a
CPU the measured float32 matmul rate), with model FLOPs counted both ways (B.3 padded taps and
taps inside the map, multiply-add = 2). `check(report)` recomputes every derived figure from the
row's own fields. The imports avoid grain, tensorflow-datasets, decord and the I3D weights
package; configs need ml_collections (see accelerator.sh).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

K600 = "configs/kinetics600.py:small"
IN512 = "configs/imagenet512.py:flop_heavy"
# name -> (kind, config spec, label)
ROWS = {
    "train:k600": ("train", K600, "K600 small train step"),
    "train:in512": ("train", IN512, "ImageNet-512 flop heavy train step"),
    "sampler:k600": ("sampler", K600, "K600 aDDIM-128 frame prediction"),
    "sampler:in512": ("sampler", IN512, "ImageNet-512 guided DDPM-512"),
    "fvd": ("fvd", None, "FVD I3D features"),
}
# Full size (accelerators) and tiny (CPUs) settings.
FULL = dict(train_cap=64, accum=2, train_steps=5, sample_per_device=4, sample_steps=None,
            fvd_per_device=16, fvd_frames=16, fvd_resolution=64)
TINY = dict(train_cap=2, accum=2, train_steps=1, sample_per_device=1, sample_steps=2,
            fvd_per_device=1, fvd_frames=9, fvd_resolution=32)


def load_config(spec: str, overrides: dict[str, object], tiny: bool):
    """The config of `spec` (configs/file.py:variant), shrunk with `tiny`, then `overrides`."""
    from sid2video import config as config_lib

    path, _, variant = spec.partition(":")
    config = config_lib.load(str(ROOT / path), variant or None)
    if tiny:
        shrink(config)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        if name not in target:
            raise SystemExit(f"accelerator.py: --config.{key}: no such config key")
        target[name] = value
    return config


def shrink(config) -> None:
    """Widths 8, two heads, the smallest resolution the levels allow (innermost side 2), at most
    two blocks per stack, video clips of 8 frames: the config's structure at a size a CPU
    compiles in seconds."""
    m = config.model
    n = len(m.channels)
    config.data.resolution = m.patch_size * 2 ** (n - 1) * 2
    if config.data.num_frames > 8:
        config.data.num_frames = 8
    m.channels = (8,) * n
    m.num_heads = 2
    m.emb_channels = 16
    m.encoder_blocks = tuple(min(b, 2) for b in m.encoder_blocks)
    m.decoder_blocks = tuple(min(b, 2) for b in m.decoder_blocks)
    if m.dropout_from_resolution:
        m.dropout_from_resolution = 2


def run_rows(names: list[str], *, tiny: bool, overrides: dict, micro_batch: int = 0,
             log=print) -> dict:
    """Measure `names` (keys of ROWS); a failing row is recorded in `errors`, not raised."""
    import jax

    import throughput

    s = TINY if tiny else FULL
    facts = throughput.device_facts()
    rows, errors = [], []
    for name in names:
        kind, spec, label = ROWS[name]
        log(f"--- {name}: {label}")
        try:
            if kind == "train":
                row = throughput.train_row(label, load_config(spec, overrides, tiny),
                                           cap=s["train_cap"], accum=s["accum"],
                                           steps=s["train_steps"], facts=facts, log=log,
                                           micro_batch=micro_batch)
            elif kind == "sampler":
                row = throughput.sampler_row(label, load_config(spec, overrides, tiny),
                                             per_device=s["sample_per_device"],
                                             num_steps=s["sample_steps"])
            else:
                row = throughput.fvd_row(per_device=s["fvd_per_device"], frames=s["fvd_frames"],
                                         resolution=s["fvd_resolution"])
        except Exception as err:  # noqa: BLE001  (one failing row must not lose the others)
            log(traceback.format_exc())
            errors.append({"row": name, "error": f"{type(err).__name__}: {err}"[:500]})
            continue
        row.update(row=name, config=spec, num_devices=facts["num_devices"])
        rows.append(row)
        log(json.dumps(row))
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax": jax.__version__, "tiny": tiny, "overrides": {k: repr(v) for k, v in overrides.items()},
            "device": facts, "rows": rows, "errors": errors}


def merge(reports: list[dict], expect: list[str] = ()) -> dict:
    """One report from several (the same device): rows and errors concatenated, and an error
    for each expected row that is in neither (its process failed or ran out of time)."""
    if not reports:
        return {"rows": [], "errors": [{"row": "all", "error": "no part produced a report"}]}
    out = dict(reports[0], rows=[], errors=[])
    for r in reports:
        out["rows"] += r["rows"]
        out["errors"] += r["errors"]
    seen = {r["row"] for r in out["rows"]} | {e["row"] for e in out["errors"]}
    out["errors"] += [{"row": name, "error": "no result (the process failed or ran out of time)"}
                      for name in expect if name not in seen]
    return out


# --- consistency ---------------------------------------------------------------------------------


def _positive(value, zero_ok: bool) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > 0 or (zero_ok and value == 0)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)


# The measured figures of each kind of row: finite and positive (compile time may be 0).
FIGURES = {
    "train": ("compile_s", "step_s", "steps_per_s", "examples_per_s", "paper_step_s",
              "flops_per_example_b3", "flops_per_example_inside", "hw_flops_per_example",
              "achieved_flops_b3", "achieved_flops_inside", "hw_flops", "peak_flops_per_device",
              "mfu_b3", "mfu_inside", "hfu"),
    "sampler": ("compile_s", "run_s", "samples_per_s", "s_per_sample_per_device"),
    "fvd": ("compile_s", "run_s", "clips_per_s", "clips_per_s_per_device"),
}


def check(report: dict) -> list[str]:
    """Problems with a report: a measured figure that is not finite and positive, or a derived
    figure that does not follow from the row's own fields. An empty list means consistent."""
    problems = []
    peak = report["device"]["peak_flops_per_device"]
    if not (isinstance(peak, (int, float)) and math.isfinite(peak) and peak > 0):
        problems.append(f"device peak {peak!r} is not a finite positive number")
    for row in report["rows"]:
        name = row["row"]
        bad = [key for key in FIGURES[row["kind"]] if not _positive(row.get(key), key == "compile_s")]
        problems += [f"{name}: {key}={row.get(key)!r} is not a finite positive number" for key in bad]
        if bad:
            continue
        n = row["num_devices"]
        expect = {}
        if row["kind"] == "train":
            expect = {
                "steps_per_s": 1.0 / row["step_s"],
                "examples_per_s": row["micro_batch"] * n * row["accum"] / row["step_s"],
                "achieved_flops_b3": row["examples_per_s"] * row["flops_per_example_b3"] / n,
                "achieved_flops_inside": row["examples_per_s"] * row["flops_per_example_inside"] / n,
                "hw_flops": row["examples_per_s"] * row["hw_flops_per_example"] / n,
                "mfu_b3": row["achieved_flops_b3"] / peak,
                "mfu_inside": row["achieved_flops_inside"] / peak,
                "hfu": row["hw_flops"] / peak,
                "peak_flops_per_device": peak,
            }
            if row["flops_per_example_inside"] > row["flops_per_example_b3"]:
                problems.append(f"{name}: taps inside the map exceed the padded (B.3) count")
        elif row["kind"] == "sampler":
            expect = {"samples_per_s": row["batch"] / row["run_s"],
                      "s_per_sample_per_device": row["run_s"] * n / row["batch"]}
        elif row["kind"] == "fvd":
            expect = {"clips_per_s": row["batch"] / row["run_s"],
                      "clips_per_s_per_device": row["batch"] / row["run_s"] / n}
        for key, value in expect.items():
            if not _close(row[key], value):
                problems.append(f"{name}: {key}={row[key]} but its fields give {value}")
    return problems


# --- the table -----------------------------------------------------------------------------------


def _g(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _gib(x) -> str:
    return "–" if not x else f"{x / 2**30:.1f}"


def markdown(report: dict) -> str:
    d = report["device"]
    lines = [f"**{d['num_devices']} × {d['device_model']}** (`{d['device_kind']}`), jax "
             f"{report.get('jax', '?')}, {report['date']}{', tiny configs' if report.get('tiny') else ''}; "
             f"peak {d['peak_flops_per_device'] / 1e12:.4g} TFLOP/s per device ({d['peak_source']})",
             ""]
    if report.get("overrides"):
        lines += [f"overrides: {report['overrides']}", ""]
    train = [r for r in report["rows"] if r["kind"] == "train"]
    if train:
        lines += ["| train step | micro-batch × accum (tried) | compile s | steps/s | examples/s | "
                  "TFLOP/s (taps inside) | MFU inside | MFU B.3 | HFU | program GiB | peak GiB | "
                  "unused | paper-batch step s | remat, conv, attention |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in train:
            unused = r.get("memory_unused_fraction")
            lines.append(
                f"| {r['name']} | {r['micro_batch']} × {r['accum']} ({r['micro_batches_tried']}) | "
                f"{r['compile_s']:.1f} | {_g(r['steps_per_s'])} | {_g(r['examples_per_s'])} | "
                f"{r['achieved_flops_inside'] / 1e12:.3g} | {r['mfu_inside']:.1%} | {r['mfu_b3']:.1%} | "
                f"{r['hfu']:.1%} | {_gib(r['program_bytes'])} | {_gib(r['peak_bytes_in_use'])} | "
                f"{'–' if unused is None else f'{unused:.0%}'} | {_g(r['paper_step_s'])} | "
                f"{r['remat_policy'] if r['remat'] else 'none'}, {r['conv']}/{r['conv_impl']}, "
                f"{r['attention_impl']} |")
        lines.append("")
    other = [r for r in report["rows"] if r["kind"] != "train"]
    if other:
        lines += ["| sampling / features | batch | steps | compile s | per second | "
                  "s per sample per device |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in other:
            if r["kind"] == "sampler":
                lines.append(f"| {r['name']} ({r['method']}, guidance {r['guidance']:g}, {r['frames']}×"
                             f"{r['resolution']}²) | {r['batch']} | {r['num_steps']} | "
                             f"{r['compile_s']:.1f} | "
                             f"{_g(r['samples_per_s'])} samples | {_g(r['s_per_sample_per_device'])} |")
            else:
                lines.append(f"| {r['name']} ({r['frames']}×{r['resolution']}² clips → 224²) | "
                             f"{r['batch']} | – | {r['compile_s']:.1f} | {_g(r['clips_per_s'])} clips | "
                             f"{_g(1 / r['clips_per_s_per_device'])} |")
        lines.append("")
    for e in report["errors"]:
        lines.append(f"- **{e['row']} failed**: {e['error']}")
    return "\n".join(lines).rstrip() + "\n"


# --- command line --------------------------------------------------------------------------------


def _overrides(extra: list[str]) -> dict[str, object]:
    import ast

    out = {}
    for item in extra:
        if not item.startswith("--config.") or "=" not in item:
            raise SystemExit(f"accelerator.py: unknown argument {item!r} (overrides look like "
                             "--config.model.remat_policy=save_dots)")
        key, _, text = item[len("--config."):].partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure rows and write a report")
    run.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {list(ROWS)}")
    run.add_argument("--tiny", action="store_true", help="tiny configs (the default on CPUs)")
    run.add_argument("--micro-batch", type=int, default=0,
                     help="per-device train micro-batch (default 0: the largest that fits)")
    run.add_argument("--json", required=True)
    run.add_argument("--md")
    mrg = sub.add_parser("merge", help="merge reports, check them and write JSON and Markdown")
    mrg.add_argument("parts", nargs="*")
    mrg.add_argument("--expect", default="", help="comma-separated rows that must be there")
    mrg.add_argument("--json", required=True)
    mrg.add_argument("--md", required=True)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        import jax

        names = [n for n in args.rows.split(",") if n]
        unknown = sorted(set(names) - set(ROWS))
        if unknown:
            raise SystemExit(f"accelerator.py: unknown rows {unknown}; known: {list(ROWS)}")
        tiny = args.tiny or jax.default_backend() == "cpu"
        report = run_rows(names, tiny=tiny, overrides=_overrides(extra),
                          micro_batch=args.micro_batch)
    else:
        if extra:
            raise SystemExit(f"accelerator.py merge: unknown arguments {extra}")
        parts = [json.loads(pathlib.Path(p).read_text()) for p in args.parts
                 if pathlib.Path(p).exists()]
        report = merge(parts, [n for n in args.expect.split(",") if n])
    report["problems"] = check(report) if report["rows"] else []
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    if args.md:
        pathlib.Path(args.md).write_text(markdown(report))
        print(markdown(report))
    for p in report["problems"]:
        print("PROBLEM:", p)
    return 1 if report["problems"] or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
