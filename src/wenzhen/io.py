"""Atomic file output: nothing half-written is ever left under a final name."""

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from wenzhen.errors import WenzhenError


def _current_umask() -> int:
    """The process umask (reading it requires setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the permissions an ordinary open() would.
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented UTF-8 JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write one JSON object per line, atomically; return the number of lines."""
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSON Lines file; a malformed line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise WenzhenError(
                    f"{path}:{number} is not valid JSON ({exc.msg}); fix or remove that line"
                ) from None
    return rows


#: Written last into every directory `atomic_directory` builds: the names it wrote, so that `--force` later
#: replaces a folder only when it holds nothing else (a user's own files are never deleted).
OUTPUT_RECORD = ".wenzhen-output.json"


def check_apart(out_dir: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output folder that is, contains or lies inside one of `inputs` (replacing it would lose them)."""
    out = Path(out_dir).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if out == source or out in source.parents:
            raise WenzhenError(
                f"the output folder {out_dir} is or contains the input {item}; writing there would delete it, "
                "so choose an output folder outside the inputs"
            )
        if source in out.parents:
            raise WenzhenError(
                f"the output folder {out_dir} lies inside the input {item}; choose an output folder outside the "
                "inputs"
            )


def written_names(folder: Path) -> set[str] | None:
    """The names a wenzhen command recorded writing into `folder`, or None when it holds no record."""
    try:
        record = json.loads((folder / OUTPUT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = record.get("files") if isinstance(record, dict) else None
    return {str(name) for name in names} if isinstance(names, list) else None


def check_replaceable(target: Path, force: bool) -> None:
    """Refuse to replace `target` unless `force` is set and it holds only what a wenzhen command wrote there."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise WenzhenError(
            f"{target} already exists; choose another output directory or pass --force to replace it"
        )
    if not target.is_dir() or target.is_symlink():
        raise WenzhenError(f"{target} exists and is not a folder; choose another output directory")
    recorded = written_names(target)
    if recorded is None:
        raise WenzhenError(
            f"{target} was not written by wenzhen (it has no {OUTPUT_RECORD}), so --force will not delete it; "
            "choose another output directory or remove it yourself"
        )
    foreign = sorted(name for name in _names_under(target) if name not in recorded and name != OUTPUT_RECORD)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise WenzhenError(
            f"{target} holds files wenzhen did not write ({shown}), so --force will not delete it; move them "
            "out or choose another output directory"
        )


def _names_under(folder: Path) -> list[str]:
    """Every file and symlink below `folder`, as POSIX paths relative to it (folders themselves are implied)."""
    names = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        names += [(base / name).as_posix() for name in files]
        names += [(base / name).as_posix() for name in dirs if (Path(root) / name).is_symlink()]
    return names


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    replace_unrecorded: bool = False,
) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it onto `path` when the block succeeds.

    An output that is, contains or lies inside one of `inputs` is refused. An existing `path` is refused unless
    `force` is set and it holds only files an earlier wenzhen run recorded writing (`OUTPUT_RECORD`); it is then
    replaced only after the new one is complete, so an interrupted run never leaves a partial output behind.
    `replace_unrecorded` is for wenzhen's own cache folders, which no user writes into.
    """
    target = Path(path)
    check_apart(target, inputs)
    if not replace_unrecorded:
        check_replaceable(target, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc) from None
    # mkdtemp creates 0700; the finished directory gets what an ordinary mkdir would (servers may run as others).
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        write_json(staging / OUTPUT_RECORD, {"files": sorted(_names_under(staging))})
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and is_output_failure(exc, staging):
            raise output_error(target, exc) from None
        raise


# Errors that mean the output could not be written, whichever file was being written.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def is_no_room(exc: BaseException) -> bool:
    """Whether `exc` says there is no room to write: disk full, quota, file-size limit, read-only file system."""
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


def describe_no_room(exc: OSError) -> str:
    """One sentence for an `is_no_room` error, naming the file when the system named it."""
    where = f" {exc.filename}" if exc.filename else ""
    return (
        f"cannot write{where}: {exc.strerror or type(exc).__name__}; free disk space, raise the file size limit "
        "(ulimit -f) or write to another folder"
    )


def is_output_failure(exc: BaseException, folder: Path) -> bool:
    """Whether `exc` is a failure to write under `folder` (disk full, file too large, read-only, no permission)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _NO_ROOM:
        return True
    filename = Path(str(exc.filename)) if exc.filename else None
    return exc.errno in (errno.EACCES, errno.EPERM) and filename is not None and folder in filename.parents


def output_error(target: Path, exc: OSError) -> WenzhenError:
    """One sentence for a failed write of an output: the folder, the system's reason and what to do."""
    reason = exc.strerror or type(exc).__name__
    return WenzhenError(
        f"cannot write the output {target}: {reason}; free disk space, raise the file size limit or choose a "
        "writable folder with --out"
    )
