"""Files written so that an interrupted writer never leaves something a reader takes for data.

Every dataset writer (`sid2video prepare ...`) follows three rules:

* Each file is written under a temporary name (`part_path`: `x.mp4` -> `x.mp4.part.mp4`) and
  renamed when complete; JSON goes through `write_json_atomic`. Readers skip temporary names
  (`is_temporary`), so a file cut off by an interruption is never read.
* `begin(root, command)` writes the marker `sid2video_prepared.json` with `complete: false`
  before the first data file, naming the command that writes (or finishes) the dataset;
  `finish(root)` sets `complete: true` after the last one.
* Readers call `require_complete(root)`: a dataset whose marker says incomplete is refused with
  an `IncompleteDatasetError` naming that command. A folder without any marker (a dataset written
  by other tools, e.g. a Kinetics download) is read as it is.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

from sid2video.errors import UserError

MARKER = "sid2video_prepared.json"
# The temporary names written here: `<name><.ext>.part<.ext>`, `.<name>.<pid>.tmp`, `<name>.incomplete`.
_TEMPORARY = re.compile(r"^(.+(\.[^./]+)\.part\2|\..+\.\d+\.tmp|.+\.incomplete)$")


class IncompleteDatasetError(UserError, ValueError):
    """A dataset whose writer did not finish (its completion marker says incomplete)."""


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as JSON to a temporary file beside `path`, then renames it over `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def part_path(path: str | os.PathLike) -> pathlib.Path:
    """The temporary name `path` is written under: `<name>.part<suffix>` (the suffix kept, so that
    encoders that go by it still know the format)."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}.part{path.suffix}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of the temporary names written here (never data to read)."""
    return _TEMPORARY.match(name) is not None


def begin(root: str | os.PathLike, command: str) -> None:
    """Marks `root` as being written by `command` (written before any data file)."""
    write_json_atomic(pathlib.Path(root) / MARKER, {"complete": False, "command": command})


def finish(root: str | os.PathLike, **details: Any) -> None:
    """Marks `root` complete (written after the last data file)."""
    path = pathlib.Path(root) / MARKER
    marker = json.loads(path.read_text()) if path.exists() else {}
    write_json_atomic(path, {**marker, **details, "complete": True})


def require_complete(root: str | os.PathLike) -> None:
    """Raises IncompleteDatasetError when `root` holds a marker that says incomplete."""
    path = pathlib.Path(root) / MARKER
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        raise IncompleteDatasetError(f"{path} cannot be read ({err}); write the dataset again") from err
    if not marker.get("complete"):
        raise IncompleteDatasetError(
            f"{root} is an unfinished dataset (its writer was interrupted); finish it with "
            f"`{marker.get('command', 'sid2video prepare ...')}`"
        )
