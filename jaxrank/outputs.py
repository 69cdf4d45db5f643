"""Writing output files and directories without ever losing what is already there.

Every file or directory jaxrank writes (tables, figures, JSONL, checkpoints, P2L models, the demo's
`runs/` files) goes through this module:

- **Checked first.** `check_output` is called before any computation: the parent folder must exist
  and accept a new file (tested by creating and removing one, so a read-only folder or file system is
  found even for root), an existing target is refused without `force`, a target of the wrong kind
  (a directory where a file is written, or the reverse) is refused, and so is a target that is, or
  contains, one of the inputs. `check_distinct` refuses two outputs naming the same path (or one
  inside the other).
- **Written aside, then renamed in.** A file is written to a temporary sibling (same folder, a unique
  hidden name `.NAME.jaxrank-tmp-XXXXXXXX...`), flushed to disk, then moved into place. A directory
  is written as a temporary sibling directory and swapped in by renames; the old one is removed only
  after the new one is complete. If writing fails midway (a full disk, Ctrl-C, an exception), the
  temporary is removed and the old file or directory is untouched.
- **Checked again, atomically, at the end.** Without `force` the final step never overwrites:
  files are linked into place (`os.link` fails if the name exists), directories are renamed with
  `renameat2(RENAME_NOREPLACE)` where the system has it and otherwise claimed with `os.mkdir`. A file
  that appeared at the target while jaxrank was computing is kept and the run fails with
  `OutputExistsError`; of two concurrent runs writing the same target, one succeeds and the other
  fails.
- **`force` replaces exactly the path named**, and only a regular file (or a symbolic link, which is
  replaced, not followed) or a directory that jaxrank wrote: every directory jaxrank writes holds a
  marker file, `MARKER` (`jaxrank-output.json`), listing what it wrote there; a directory without it,
  or with entries the marker does not list (files a user added), is never replaced, nor is a
  directory holding the current working directory.

A run that is killed outright (SIGKILL, power loss) can leave a hidden `.NAME.jaxrank-tmp-*` sibling
behind; the target itself is then either the old or the new version, never a mix.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> from jaxrank.outputs import check_output, write_table
    >>> out = check_output(pathlib.Path(tempfile.mkdtemp()) / "table.csv", label="--out")
    >>> _ = write_table(pd.DataFrame({"a": [1, 2]}), out)
    >>> out.path.read_text()
    'a\\n1\\n2\\n'
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import errno
import importlib.util
import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "FIGURE_FORMATS",
    "JOURNAL_SUFFIX",
    "Journal",
    "MARKER",
    "TABLE_FORMATS",
    "Output",
    "OutputError",
    "OutputExistsError",
    "OutputWriteError",
    "check_distinct",
    "check_folder",
    "check_output",
    "check_workdir",
    "is_jaxrank_dir",
    "append_jsonl",
    "journal_path",
    "new_file",
    "read_marker",
    "write_dir",
    "write_file",
    "write_state",
    "write_table",
    "write_text",
]

#: The marker file in every directory jaxrank writes: `--force` replaces only such directories.
MARKER = "jaxrank-output.json"
#: Table formats by suffix (`write_table`).
TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
#: Figure formats by suffix (`jaxrank.plots`).
FIGURE_FORMATS = (".png", ".pdf", ".svg")
_TMP = ".jaxrank-tmp-"


class OutputError(ValueError):
    """An output target that cannot be written (the message names it and why)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output target exists and may not be replaced (no `force`, or it appeared during the run)."""


class OutputWriteError(OutputError, OSError):
    """Writing failed midway (e.g. a full disk); the target was left as it was."""


def _call_writer(write: Callable[[pathlib.Path], Any], tmp: pathlib.Path, out: "Output") -> None:
    """`write(tmp)`; an OS error (a full disk, a quota) becomes an `OutputWriteError` naming the target."""
    try:
        write(tmp)
    except OutputError:
        raise
    except OSError as err:
        raise OutputWriteError(f"{out._name()} could not be written ({err.strerror or err}); it was left as it was") \
            from err


@dataclasses.dataclass(frozen=True)
class Output:
    """A checked output target (`check_output`); usable wherever a path is (`os.fspath(out)`).

    Attributes:
        path: the absolute path named (symbolic links are not followed: the link itself is the target).
        kind: `"file"` or `"dir"`.
        force: whether an existing target of the right kind may be replaced.
        label: how messages name the target (`"--out"`, `"checkpoint path"`).
        hint: how messages name the override (`"--force"`, `"force=True"`).
        named: the path as the caller wrote it (messages show it).
    """

    path: pathlib.Path
    kind: str = "file"
    force: bool = False
    label: str = "output"
    hint: str = "force=True"
    named: str | None = None  # the path as the caller wrote it, for messages

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def _name(self) -> str:
        return f"{self.label} {self.named if self.named is not None else self.path}"


def _absolute(path: str | os.PathLike) -> pathlib.Path:
    # `absolute`, not `resolve`: the path named is replaced, never the target of a symlink.
    return pathlib.Path(os.path.normpath(pathlib.Path(path).expanduser().absolute()))


def _same_or_inside(inner: pathlib.Path, outer: pathlib.Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (paths resolved, so links and `..` do not hide it)."""
    try:
        a, b = inner.resolve(), outer.resolve()
    except OSError:
        return False
    return a == b or b in a.parents


def _probe_writable(folder: pathlib.Path, out: Output) -> None:
    """Create and remove a file in `folder`: the real test (permission bits lie for root and for
    read-only mounts)."""
    probe = folder / f".{out.path.name}{_TMP}probe-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise OutputError(f"{out._name()}: cannot write in folder {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a directory jaxrank wrote (a dict), or None when `path` has none (or it is unreadable)."""
    try:
        data = json.loads((pathlib.Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "jaxrank" else None


def is_jaxrank_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory jaxrank wrote (it holds the `MARKER` file)."""
    p = pathlib.Path(path)
    return p.is_dir() and not p.is_symlink() and read_marker(p) is not None


def _check_replaceable(out: Output) -> None:
    """Raise unless the existing `out.path` may be replaced now (`force` given, right kind, jaxrank's)."""
    p = out.path
    is_dir = p.is_dir() and not p.is_symlink()
    if out.kind == "file" and is_dir:
        raise OutputError(f"{out._name()} is a directory; expected a file path")
    if out.kind == "dir" and not is_dir:
        raise OutputError(f"{out._name()} exists and is not a directory; jaxrank writes a directory there "
                          "(choose a new path)")
    if out.kind == "dir":
        marker = read_marker(p)
        if marker is None:
            raise OutputError(f"{out._name()} is a directory that jaxrank did not write (it has no {MARKER}); "
                              "jaxrank never replaces such a directory: choose a new path")
        listed = set(marker.get("entries", ())) | {MARKER}
        extra = sorted(set(os.listdir(p)) - listed)
        if extra:
            shown = ", ".join(repr(e) for e in extra[:3]) + (", ..." if len(extra) > 3 else "")
            raise OutputError(f"{out._name()} holds files jaxrank did not write ({shown}); jaxrank never replaces "
                              "it: move them out or choose a new path")
        if _same_or_inside(pathlib.Path.cwd(), p):
            raise OutputError(f"{out._name()} holds the current working directory; jaxrank does not replace it")
    if not out.force:
        raise OutputExistsError(f"{out._name()} already exists; pass {out.hint} to overwrite it")


def check_output(
    path: str | os.PathLike | Output,
    *,
    kind: str = "file",
    force: bool = False,
    label: str = "output",
    hint: str = "force=True",
    inputs: Iterable[str | os.PathLike] = (),
    suffixes: Sequence[str] | None = None,
) -> Output:
    """Check an output target before any work, and return it as an `Output`.

    Args:
        path: the target (an `Output` is re-checked with its own options).
        kind: `"file"` or `"dir"` (a directory of files, e.g. a checkpoint).
        force: an existing target of the right kind may be replaced (see the module docstring).
        label, hint: how messages name the target and the override, e.g. `"--out"`, `"--force"`.
        inputs: files or folders the run reads; the target may be none of them and contain none.
        suffixes: allowed suffixes (lower case, with the dot), e.g. `TABLE_FORMATS`.

    Returns:
        The `Output`.

    Raises:
        OutputExistsError: the target exists and `force` is not given.
        OutputError: missing or non-writable parent folder, wrong kind, a directory jaxrank did not write,
            the target is or contains an input, an unknown suffix, Parquet without pyarrow.
    """
    if isinstance(path, Output):
        out = path
    else:
        if kind not in ("file", "dir"):
            raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
        if path is None or not str(os.fspath(path)).strip():
            raise OutputError(f"{label}: the path is empty")
        out = Output(_absolute(path), kind=kind, force=bool(force), label=label, hint=hint, named=os.fspath(path))
    p = out.path
    for item in inputs:
        if item is None:
            continue
        src = _absolute(item)
        if _same_or_inside(src, p):
            what = "is" if src.resolve() == p.resolve() else "contains"
            raise OutputError(f"{out._name()} {what} the input {item}; write the output to another path")
    if suffixes is not None and out.suffix not in suffixes:
        allowed = suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
        raise OutputError(f"{out._name()}: unknown format {p.suffix or '(no suffix)'!r}; use {allowed}")
    if out.kind == "file" and out.suffix == ".parquet" and not _parquet_available():
        raise OutputError(f"{out._name()}: writing Parquet needs pyarrow: pip install 'jaxrank[parquet]'")
    parent = p.parent
    if p == parent:
        raise OutputError(f"{out._name()}: cannot write to the root folder itself")
    if not parent.exists():
        raise OutputError(f"{out._name()}: folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{out._name()}: {parent} is not a folder")
    if os.path.lexists(p):
        _check_replaceable(out)
    _probe_writable(parent, out)
    return out


def check_distinct(*outputs: Output | None) -> None:
    """Refuse two outputs naming the same path, or one inside another (it would be replaced with it)."""
    given = [o for o in outputs if o is not None]
    for i, a in enumerate(given):
        for b in given[i + 1:]:
            if a.path == b.path or _same_or_inside(a.path, b.path) or _same_or_inside(b.path, a.path):
                raise OutputError(f"{a._name()} and {b._name()} name the same path (or one holds the other); "
                                  "give each output its own path")


def _parquet_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _temp_sibling(p: pathlib.Path, *, directory: bool) -> pathlib.Path:
    """A fresh hidden name beside `p` (the file created empty, O_EXCL, mode from the umask; a directory not yet
    created). The suffix is kept so that writers that pick the format from it (matplotlib) see the real one."""
    while True:
        tmp = p.parent / f".{p.name}{_TMP}{secrets.token_hex(8)}{'' if directory else p.suffix}"
        if directory:
            if not os.path.lexists(tmp):
                return tmp
            continue
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync_path(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: pathlib.Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(pathlib.Path(folder, name))
        _fsync_path(pathlib.Path(folder))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: pathlib.Path, dst: pathlib.Path, flags: int) -> bool:
    """`renameat2(src, dst, flags)`: True when done, False when the system or file system lacks it;
    raises OSError (e.g. FileExistsError for RENAME_NOREPLACE) otherwise."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _appeared(out: Output) -> OutputExistsError:
    return OutputExistsError(f"{out._name()} appeared while jaxrank was running (another run?); it was kept and "
                             f"nothing was written; pass {out.hint} to overwrite it")


def _link_file(tmp: pathlib.Path, out: Output) -> None:
    """Put the finished `tmp` at `out.path` without ever overwriting: hard link (atomic no-clobber), else
    renameat2(RENAME_NOREPLACE), else claim the name with O_EXCL and rename over the claim."""
    try:
        os.link(tmp, out.path)
        os.unlink(tmp)
        return
    except FileExistsError:
        raise _appeared(out) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
    try:
        if _renameat2(tmp, out.path, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise _appeared(out) from None
    try:
        os.close(os.open(out.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise _appeared(out) from None
    os.replace(tmp, out.path)  # replaces our own empty claim


def _commit_file(tmp: pathlib.Path, out: Output) -> None:
    if os.path.lexists(out.path):
        if not out.force:
            raise _appeared(out)
        _check_replaceable(out)
        with contextlib.suppress(OSError):  # keep the replaced file's permissions
            if not out.path.is_symlink():
                os.chmod(tmp, out.path.stat().st_mode & 0o7777)
        os.replace(tmp, out.path)
    else:
        _link_file(tmp, out)
    _fsync_path(out.path.parent)


def _as_output(target: str | os.PathLike | Output, kind: str, force: bool, label: str) -> Output:
    if isinstance(target, Output):
        if target.kind != kind:
            raise ValueError(f"{target._name()} was checked as a {target.kind}, not a {kind}")
        return dataclasses.replace(target, force=target.force or force)
    return check_output(target, kind=kind, force=force, label=label)


def write_file(
    target: str | os.PathLike | Output,
    write: Callable[[pathlib.Path], Any],
    *,
    force: bool = False,
    label: str = "output",
) -> pathlib.Path:
    """Write one file atomically: `write(tmp)` fills a temporary sibling, which is then moved into place.

    Args:
        target: the path, or an `Output` from `check_output` (its checks, label and force are used).
        write: `write(path)` writes the whole file at `path` (a fresh empty file with the target's suffix).
        force: replace an existing file (see the module docstring for what is never replaced).
        label: how messages name the target (when `target` is a plain path).

    Returns:
        The absolute path written.

    Raises:
        OutputExistsError, OutputError: see `check_output`; also when the target appeared during the run.
        Whatever `write` raises (e.g. `OSError` for a full disk): the old file, if any, is unchanged.
    """
    out = _as_output(target, "file", force, label)
    tmp = _temp_sibling(out.path, directory=False)
    try:
        _call_writer(write, tmp, out)
        _fsync_path(tmp)
        _commit_file(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out.path


def write_text(target: str | os.PathLike | Output, text: str, *, force: bool = False, label: str = "output") -> pathlib.Path:
    """`write_file` of a UTF-8 text."""
    return write_file(target, lambda p: p.write_text(text, encoding="utf-8"), force=force, label=label)


def write_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], target: str | os.PathLike | Output, *,
               force: bool = False, label: str = "output") -> pathlib.Path:
    """`write_table` for plain rows: CSV / TSV straight through the `csv` module (the same text as pandas'
    `to_csv` for str / int / float cells; importing pandas costs ~0.3 s, a tenth of a warm CLI command), the
    other formats through a pandas DataFrame. Atomic, like every writer here."""
    out = target if isinstance(target, Output) else check_output(target, force=force, label=label,
                                                                  suffixes=TABLE_FORMATS)
    if out.suffix not in (".csv", ".tsv"):
        import pandas as pd

        return write_table(pd.DataFrame([list(r) for r in rows], columns=list(columns)), out)
    import csv

    def write(p: pathlib.Path) -> None:
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="," if out.suffix == ".csv" else "\t", lineterminator="\n")
            w.writerow(columns)
            w.writerows(rows)

    return write_file(out, write)


def write_table(frame: Any, target: str | os.PathLike | Output, *, force: bool = False, label: str = "output") -> pathlib.Path:
    """Write a pandas DataFrame atomically, in the format of the suffix (`TABLE_FORMATS`: `.csv`, `.tsv`,
    `.jsonl` one record a line, `.parquet`), without the index."""
    out = target if isinstance(target, Output) else check_output(target, force=force, label=label,
                                                                  suffixes=TABLE_FORMATS)
    suffix = out.suffix
    if suffix not in TABLE_FORMATS:
        raise OutputError(f"{out._name()}: unknown table format {out.path.suffix or '(no suffix)'!r}; use "
                          f"{', '.join(TABLE_FORMATS)}")

    def write(p: pathlib.Path) -> None:
        if suffix == ".csv":
            frame.to_csv(p, index=False)
        elif suffix == ".tsv":
            frame.to_csv(p, index=False, sep="\t")
        elif suffix == ".jsonl":
            frame.to_json(p, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(p, index=False)

    return write_file(out, write, force=force)


def _entries(folder: pathlib.Path) -> list[str]:
    return sorted(os.listdir(folder))


def _write_marker(folder: pathlib.Path, kind: str | None) -> None:
    from jaxrank import __version__

    marker = {
        "written_by": "jaxrank",
        "jaxrank_version": __version__,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "entries": [e for e in _entries(folder) if e != MARKER],
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _swap_in_dir(tmp: pathlib.Path, out: Output) -> pathlib.Path | None:
    """Swap the finished directory `tmp` with the existing jaxrank directory at `out.path`; returns the old
    one's new (temporary) path, to be removed by the caller."""
    try:
        if _renameat2(tmp, out.path, _RENAME_EXCHANGE):
            return tmp  # `tmp` now names the old directory
    except OSError:
        pass
    old = _temp_sibling(out.path, directory=True)
    os.rename(out.path, old)
    try:
        os.rename(tmp, out.path)
    except BaseException:
        os.rename(old, out.path)  # put the old one back
        raise
    return old


def _commit_dir(tmp: pathlib.Path, out: Output) -> pathlib.Path | None:
    """Move the finished `tmp` to `out.path`; returns the path the replaced directory was moved to (or None)."""
    old = None
    if os.path.lexists(out.path):
        if not out.force:
            raise _appeared(out)
        _check_replaceable(out)
        old = _swap_in_dir(tmp, out)
    else:
        try:
            done = _renameat2(tmp, out.path, _RENAME_NOREPLACE)
        except FileExistsError:
            raise _appeared(out) from None
        if not done:
            try:
                os.mkdir(out.path)  # claim the name: fails if anything is there
            except FileExistsError:
                raise _appeared(out) from None
            try:
                os.rename(tmp, out.path)  # replaces our own empty claim
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(out.path)
                raise
    _fsync_path(out.path.parent)
    return old


def write_dir(
    target: str | os.PathLike | Output,
    write: Callable[[pathlib.Path], Any],
    *,
    force: bool = False,
    label: str = "output",
    kind: str | None = None,
) -> pathlib.Path:
    """Write a directory atomically: `write(tmp)` creates and fills the temporary sibling directory `tmp`
    (it does not exist yet; e.g. orbax creates it), jaxrank adds its `MARKER`, then swaps it into place.

    Args:
        target: the path, or an `Output` from `check_output(kind="dir")`.
        write: `write(path)` writes the whole directory at `path`.
        force: replace an existing directory jaxrank wrote (only that; see the module docstring).
        label: how messages name the target (when `target` is a plain path).
        kind: recorded in the marker (e.g. `"jaxrank.p2l"`).

    Returns:
        The absolute path written.
    """
    out = _as_output(target, "dir", force, label)
    tmp = _temp_sibling(out.path, directory=True)
    committed = False
    try:
        _call_writer(write, tmp, out)
        if not tmp.is_dir():
            raise RuntimeError(f"the writer of {out._name()} did not create a directory")
        _write_marker(tmp, kind)
        _fsync_tree(tmp)
        old = _commit_dir(tmp, out)
        committed = True
    finally:
        if not committed and os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    # The old directory goes only now that the new one is in place, and only if it is jaxrank's (someone could
    # have put another directory there between the check and the swap: that one is kept).
    if old is not None and read_marker(old) is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out.path


def check_workdir(
    path: str | os.PathLike,
    *,
    label: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    outputs: Iterable[Output | None] = (),
) -> pathlib.Path:
    """Check a directory jaxrank writes into step by step (training checkpoints, a feature cache) before any
    work: if it exists it is a directory accepting new files, else its parent exists and accepts them; it is
    not an input and holds none, and it is not, does not hold and does not lie inside one of `outputs` (a
    replaced output would take it along). Nothing is created. Returns its absolute path."""
    d = _absolute(path)
    named = os.fspath(path)
    if os.path.lexists(d) and not d.is_dir():
        raise OutputError(f"{label} {named} exists and is not a directory")
    for item in inputs:
        if item is not None and (_same_or_inside(_absolute(item), d) or _same_or_inside(d, _absolute(item))):
            raise OutputError(f"{label} {named} is, holds or lies inside the input {item}; use another directory")
    for out in outputs:
        if out is not None and (_same_or_inside(d, out.path) or _same_or_inside(out.path, d)):
            raise OutputError(f"{label} {named} and {out._name()} name the same path (or one holds the other); "
                              "give each its own path")
    probe_in = d if d.is_dir() else d.parent
    if not probe_in.is_dir():
        raise OutputError(f"{label} {named}: folder {probe_in} does not exist")
    _probe_writable(probe_in, Output(d, label=label, named=named))
    return d


def check_folder(folder: str | os.PathLike, *, label: str = "output folder") -> pathlib.Path:
    """A folder new files will be written in (`new_file`): created (with its parents) if missing, and
    checked to accept a new file. Returns its absolute path."""
    d = _absolute(folder)
    if os.path.lexists(d) and not d.is_dir():
        raise OutputError(f"{label} {folder} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{label} {folder}: cannot create it ({err.strerror})") from None
    _probe_writable(d, Output(d / "new", label=label))
    return d


def new_file(folder: str | os.PathLike, stem: str, suffix: str, write: Callable[[pathlib.Path], Any],
             *, label: str = "output folder") -> pathlib.Path:
    """Write a file under `folder` at a name that did not exist (`STEM.SUFFIX`, else `STEM-1.SUFFIX`, ...),
    atomically and never overwriting (`check_folder` first: `folder` is created if missing).

    Returns:
        The path written.
    """
    d = check_folder(folder, label=label)
    i = 0
    while True:
        name = f"{stem}{'' if i == 0 else f'-{i}'}{suffix}"
        out = Output(d / name, label=label)
        if not os.path.lexists(out.path):
            try:
                return write_file(out, write)
            except OutputExistsError:
                pass  # taken meanwhile: try the next name
        i += 1


# --------------------------------------------------------------------------------------------
# State files jaxrank owns: replaced state, append-only journals
# --------------------------------------------------------------------------------------------


def write_state(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Replace a state file inside a state directory jaxrank owns (e.g. `budget next --state DIR`) atomically:
    written aside, then renamed over the old one (no `force`: the file is jaxrank's, not the user's)."""
    return write_file(path, lambda p: p.write_text(text, encoding="utf-8"), force=True, label="state file")


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as JSON lines to a log jaxrank owns, flushed and synced before returning (a crash loses
    at most a torn last line, which `Journal` readers drop)."""
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


#: The journal of an output file: `OUT` + this suffix, beside it (`journal_path`).
JOURNAL_SUFFIX = ".journal.jsonl"


def journal_path(out: str | os.PathLike | Output) -> pathlib.Path:
    """Where the journal of output `out` lives: a visible sibling `NAME.journal.jsonl`."""
    p = out.path if isinstance(out, Output) else _absolute(out)
    return p.with_name(p.name + JOURNAL_SUFFIX)


class Journal:
    """An append-only JSON Lines file of finished work, so that an interrupted run can resume.

    The first line is a header `{"jaxrank_journal": KIND, "version": 1, "settings": {...}}` (the options
    that decide the results); every further line is one record, appended and synced as soon as it is
    done (`append`). The final output is still written atomically (`write_file`); the journal is removed
    after it (`remove`). Safety rules, as for outputs:

    - a journal is opened for resuming only when its header names the same KIND and settings (a
      mismatch is refused, naming the settings that differ);
    - a file at the journal's path that is not a jaxrank journal is never written to or removed;
    - an existing journal is never restarted silently: without `resume` it is refused (`resume_hint`
      names the option that continues it);
    - a torn last line (a run killed mid-write) is dropped, and cut off before appending.
    """

    VERSION = 1

    def __init__(self, path: pathlib.Path, records: list[dict], label: str) -> None:
        self.path, self.records, self.label = path, records, label

    @classmethod
    def open(cls, path: str | os.PathLike, *, kind: str, settings: dict, resume: bool, label: str = "journal",
             resume_hint: str = "resume=True") -> Journal:
        """Create the journal, or with `resume` reopen an existing one (its records in `.records`)."""
        p = _absolute(path)
        header = {"jaxrank_journal": kind, "version": cls.VERSION, "settings": settings}
        if os.path.lexists(p):
            records, good = cls._read(p, kind, label)
            if not resume:
                raise OutputExistsError(
                    f"{label} {p} holds {len(records) - 1} finished record(s) of an interrupted run: pass {resume_hint} "
                    "to continue it, or delete it to start over")
            old = records.pop(0)["settings"]
            # Values that changed first, then settings only one side has.
            differ = sorted((k for k in set(old) | set(settings) if old.get(k) != settings.get(k)),
                            key=lambda k: (not (k in old and k in settings), k))
            if differ:
                shown = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in differ[:4])
                raise OutputError(f"{label} {p} was written by a run with other settings ({shown}); resume with "
                                  "the same options, or delete it to start over")
            if good < p.stat().st_size:
                os.truncate(p, good)  # a torn last line goes
            return cls(p, records, label)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(p.parent)
        return cls(p, [], label)

    @staticmethod
    def _read(p: pathlib.Path, kind: str, label: str) -> tuple[list[dict], int]:
        """[header, records...] and the byte length of the complete lines."""
        if p.is_symlink() or not p.is_file():
            raise OutputError(f"{label} {p} exists and is not a jaxrank journal; jaxrank never replaces it: move it")
        data = p.read_bytes()
        lines, good, pos = [], 0, 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break  # no newline: torn
            try:
                lines.append(json.loads(data[pos:end].decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                if data.find(b"\n", end + 1) >= 0 or end + 1 < len(data):
                    raise OutputError(f"{label} {p}: line {len(lines) + 1} is not JSON (the file is damaged); "
                                      "delete it to start over") from None
                break  # the last line: torn
            pos = good = end + 1
        head = lines[0] if lines else None
        if not isinstance(head, dict) or head.get("jaxrank_journal") is None:
            raise OutputError(f"{label} {p} exists and is not a jaxrank journal; jaxrank never replaces it: move it")
        if head.get("jaxrank_journal") != kind or head.get("version") != Journal.VERSION:
            raise OutputError(f"{label} {p} is a journal of {head.get('jaxrank_journal')!r} (version "
                              f"{head.get('version')}), not of {kind!r}; delete it to start over")
        if not all(isinstance(r, dict) for r in lines[1:]):
            raise OutputError(f"{label} {p}: a record is not a JSON object (the file is damaged); delete it")
        return lines, good

    def append(self, records: Sequence[dict]) -> None:
        """Append `records` and sync them to disk."""
        append_jsonl(self.path, records)
        self.records.extend(records)

    def remove(self) -> None:
        """Delete the journal (its work is in the final output now)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
