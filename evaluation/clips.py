"""The clips an evaluation reads: a data config's split, a seeded subset of it, and its batches.

    clips = EvalClips(config.data, split="val", num_samples=64, batch_size=8)
    for i, batch, valid in clips.batches("step 100"):   # this process's share, padded batches
        ...

Splits are stored in class order (label folders), so `num_samples` below the split's size is a
uniformly random subset of its positions (`subset_positions`, seeded), never its first records.
The batches come from the data pipeline's evaluation iterator (centre clips, no flips); every
process gets the same number of batches and rows whose `valid` is False (padding) never count.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import numpy as np

__all__ = ["DataError", "EvalClips", "data_config", "default_split", "split_size", "check_num_samples",
           "subset_positions", "subset_description", "is_lead", "progress_bar"]


class DataError(FileNotFoundError):
    """The evaluation data cannot be found or read."""


def is_lead() -> bool:
    """Whether this process writes files and prints (process 0)."""
    return jax.process_index() == 0


def progress_bar(total: int | None, desc: str, progress: bool):
    """A tqdm bar on process 0 (disabled elsewhere or when progress is False)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not (progress and is_lead()), dynamic_ncols=True,
                leave=False)


def data_config(config_data: Any, data_dir: str | None = None) -> dict[str, Any]:
    """config.data as a plain dict, `data_dir` put in; a clear error without dataset or folder."""
    from sid2video import checkpoint
    from sid2video.data import sources

    data = dict(checkpoint._plain(config_data) or {})   # pylint: disable=protected-access
    if data_dir:
        data["data_dir"] = str(data_dir)
    if not sources.dataset_name(data):
        raise ValueError("the config names no dataset (config.data.dataset); pass a data config")
    if not data.get("data_dir"):
        raise DataError(f"config.data.data_dir is not set for dataset {sources.dataset_name(data)!r}; "
                        "pass --data_dir DIR")
    return data


def default_split(data: Mapping[str, Any]) -> str:
    from sid2video.data import sources

    return sources.eval_split(data)


def split_size(data: Mapping[str, Any], split: str) -> int:
    """How many clips (images) the split has; DataError when it cannot be read."""
    from sid2video.data import sources

    try:
        return sources.split_size(data, split)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"cannot read the {split!r} split of {sources.dataset_name(data)!r} in "
                        f"{data.get('data_dir')}: {err} (pass --data_dir to point at the dataset)") from err


def check_num_samples(data: Mapping[str, Any], split: str, num_samples: int | str | None, *,
                      total: int | None = None) -> int:
    """num_samples as a count of the split (None or 'all': the whole split of `total` records, read
    when not given); too many is an error."""
    from sid2video.data import sources

    n = split_size(data, split) if total is None else int(total)
    if num_samples in (None, "all"):
        return n
    if int(num_samples) > n:
        raise ValueError(f"num_samples={num_samples} is larger than the {split!r} split of "
                         f"{sources.dataset_name(data)!r} in {data.get('data_dir')}, which has {n} "
                         f"{'clips' if int(data.get('num_frames', 1) or 1) > 1 else 'images'}; "
                         f"use --num_samples {n} or fewer")
    return int(num_samples)


def subset_positions(total: int, num_samples: int, seed: int = 0) -> np.ndarray | None:
    """Which positions of a split of `total` records are evaluated: all of them (None) when
    num_samples == total, else a uniformly random subset without replacement, seeded, sorted."""
    if not 0 < num_samples <= total:
        raise ValueError(f"num_samples={num_samples} must be in [1, {total}]")
    if num_samples == total:
        return None
    rng = np.random.default_rng([int(seed), int(total), int(num_samples)])
    return np.sort(rng.choice(total, size=num_samples, replace=False))


def subset_description(total: int, num_samples: int, seed: int) -> dict:
    if num_samples == total:
        return {"rule": "whole split, in order", "split_size": total}
    return {"rule": "uniform random subset without replacement (numpy default_rng([seed, split_size, n]))",
            "seed": int(seed), "split_size": total}


class EvalClips:
    """`num_samples` clips of a split (None / 'all': the whole split), read in batches of `batch_size`
    rows per process. The same arguments give the same clips (for the samples and the reference)."""

    def __init__(self, data: Any, *, split: str | None = None, num_samples: int | str | None = None,
                 batch_size: int = 8, subset_seed: int = 0, progress: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.data = data_config(data)
        self.split = split or default_split(self.data)
        self.split_size = split_size(self.data, self.split)
        self.num_samples = check_num_samples(self.data, self.split, num_samples, total=self.split_size)
        self.batch_size = int(batch_size)
        self.subset_seed = int(subset_seed)
        self.progress = progress

    @property
    def num_batches(self) -> int:
        pc = jax.process_count()
        return -(-(-(-self.num_samples // pc)) // self.batch_size)

    def description(self) -> dict:
        return subset_description(self.split_size, self.num_samples, self.subset_seed)

    def batches(self, desc: str = "clips") -> Iterator[tuple[int, dict, np.ndarray]]:
        """(batch index, batch, valid rows [B] bool) over this process's share of the clips."""
        from sid2video.data import pipeline

        positions = subset_positions(self.split_size, self.num_samples, self.subset_seed)
        it = pipeline.make_eval_iterator(self.data, batch_size=self.batch_size, split=self.split,
                                         positions=positions)
        bar = progress_bar(self.num_batches, desc, self.progress)
        try:
            for i, batch in enumerate(it):
                yield i, batch, np.asarray(batch["mask"], bool)
                bar.update(1)
        finally:
            bar.close()
            close = getattr(it, "close", None)
            if close is not None:
                close()
