"""Shared test set-up: CPU only, a persistent compilation cache, absl flags parsed."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import absl.flags  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# grain's worker processes refuse to start unless absl flags have been parsed.
absl.flags.FLAGS.mark_as_parsed()

# Repeated runs of the suite skip recompiling the same functions.
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _reference_dir() -> pathlib.Path | None:
    """The shared reference data (real clips with known answers), if this checkout has it."""
    candidates = [os.environ.get("SID2VIDEO_REFERENCE"), ROOT.parent / "shared" / "reference"]
    for c in candidates:
        if c and pathlib.Path(c).is_dir():
            return pathlib.Path(c)
    return None


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    path = _reference_dir()
    if path is None:
        pytest.skip("reference data not found: set SID2VIDEO_REFERENCE or place shared/ beside the repo")
    return path
