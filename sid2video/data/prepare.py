"""`sid2video prepare`: the command that writes datasets.

    kinetics600    Kinetics-layout video folders -> TFDS array_record (convert_videos.py)
    index          the cached folder index of a Kinetics-layout split, ahead of a multi-host run
                   (so that hosts do not all probe every video at start-up; kinetics.py)
    image_folder   `<split>/<class>/<image>` folders -> TFDS array_record (convert_images.py)
    moving_digits, digit_images   the embedded datasets (synthetic.py)

Every writer writes its files under temporary names, renames them when complete and writes the
completion marker last (files.py); an interrupted `kinetics600` or `image_folder` run resumes
with its first unfinished shard (tfds_writer.py). Prepared datasets are read by prepared.py.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from sid2video import flags
from sid2video.data import convert_images, convert_videos, kinetics, prepared, synthetic


def _parser() -> argparse.ArgumentParser:
    p = flags.Parser(prog="sid2video prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)

    k = sub.add_parser("kinetics600", help="Kinetics-layout video folders -> array_record (MP4 bytes per video)")
    k.add_argument("--src", required=True, help="root holding train/ val/ test/ and annotations/")
    k.add_argument("--out", required=True, help="TFDS data_dir to write <name>/1.0.0 into")
    k.add_argument("--split", action="append", help="split to prepare (repeatable); default: all found")
    k.add_argument("--name", default="kinetics600", help="dataset name (default kinetics600)")
    k.add_argument("--videos_per_shard", type=int, default=256)
    k.add_argument("--workers", type=int, default=4, help="threads reading and probing videos")
    k.add_argument("--restart", action="store_true", help="discard an interrupted run's shards")
    k.add_argument("--no_progress", action="store_true")

    ix = sub.add_parser("index", help="build (or refresh) the cached folder index of a Kinetics-layout split")
    ix.add_argument("--src", required=True)
    ix.add_argument("--split", action="append", help="default: all of train/val/test found")
    ix.add_argument("--cache_dir", default=None, help="where to cache it when --src is read-only")
    ix.add_argument("--workers", type=int, default=None, help="threads probing videos")
    ix.add_argument("--refresh", action="store_true")
    ix.add_argument("--no_progress", action="store_true")

    im = sub.add_parser("image_folder", help="<split>/<class>/<image> folders -> array_record")
    im.add_argument("--src", required=True)
    im.add_argument("--out", required=True)
    im.add_argument("--name", required=True, help="dataset name, e.g. imagenet2012 or digits")
    im.add_argument("--split", action="append")
    im.add_argument("--version", default=prepared.VERSION)
    im.add_argument("--images_per_shard", type=int, default=1024)
    im.add_argument("--workers", type=int, default=4)
    im.add_argument("--restart", action="store_true")
    im.add_argument("--no_progress", action="store_true")

    synthetic.add_commands(sub)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sid2video prepare ...` (argv: the arguments after `prepare`)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    flags.configure_logging()
    progress = not args.no_progress
    if args.what == "kinetics600":
        out = convert_videos.prepare_videos(
            args.src, args.out, splits=args.split, name=args.name, videos_per_shard=args.videos_per_shard,
            workers=args.workers, restart=args.restart, progress=progress,
        )
    elif args.what == "index":
        splits = args.split or [x for x in ("train", "val", "validation", "test") if (pathlib.Path(args.src) / x).is_dir()]
        if not splits:
            raise FileNotFoundError(f"--src {args.src}: no train/val/validation/test folders found")
        for split in splits:
            index = kinetics.build_index(args.src, split, cache_dir=args.cache_dir, probe_workers=args.workers,
                                         refresh=args.refresh, progress=progress)
            print(f"{split}: {len(index.entries)} readable videos, {len(index.unreadable)} unreadable; "
                  f"index at {index.cache_path}")
        return 0
    elif args.what == "image_folder":
        out = convert_images.prepare_image_folder(
            args.src, args.out, name=args.name, splits=args.split, images_per_shard=args.images_per_shard,
            workers=args.workers, restart=args.restart, progress=progress, version=args.version,
        )
    else:
        out = synthetic.run_command(args)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
