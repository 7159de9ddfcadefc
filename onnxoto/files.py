"""Every file onnxoto reads or writes: which paths are the same file, whether an output can be
written, and writes that a kill at any instant cannot tear.

Why this is one module: losing a user's file is the worst thing a compressor can do, and the ways
to do it are all about paths (an output that resolves to an input through ``..`` or a symlink, an
output that is an input's external-data file) and about the moment between two renames. Commands
check their paths here before creating anything, and write only through here.

**Atomic writes.** Bytes go to a staging file in the destination folder, are flushed to disk,
get the mode a plain ``open()`` would give (0o666 less the umask; ``mkstemp`` alone gives 0o600),
and are renamed over the destination: readers see the old file or the new one, never a part.

**The external-data pair.** A model with external data is two files, and two renames are not one
atomic step: a kill between them would pair the old ``.onnx`` with the new ``.data``. So the
weights go to a data file whose name never existed before (``<name>.<random>.data``), written
first; the ``.onnx`` that references it is renamed into place last, and that rename is the one
commit point. Before it, the old ``.onnx`` still references its own, untouched data file; after
it, the new pair is complete. Only then is the previous data file removed (only one named
``<name>.data`` or ``<name>.<token>.data``: a data file with any other name may belong to
another model too). A kill leaves staging files (prefix ``.onnxoto-<pid>-``) and a journal that
lists the data files the write was creating and replacing; the next write into that folder sees
that the pid is gone and deletes those of them the current ``.onnx`` does not reference.

**Concurrent writers** to one path each commit a complete pair, so the last rename wins with a
consistent pair. What each run reports is measured while writing (``Written``), not read back
from a path another run may already have replaced; a finished write also deletes data files
that lost such a race (see ``_sweep_orphans``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError

PathLike = str | os.PathLike
STAGING_PREFIX = ".onnxoto-"
EXTERNAL_DATA_LIMIT = 1_800_000_000
INLINE_BYTES = 1024  # tensors smaller than this stay in the .onnx (as onnx.save does)
_STAGING = re.compile(r"^\.onnxoto-(\d+)-([0-9a-f]+)\.")


def resolved(path: PathLike) -> Path:
    """The absolute path with symlinks followed and ``..`` applied, also through parts that do
    not exist yet (``nope/../model.onnx`` is ``model.onnx`` even when ``nope`` is missing)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name one file: equal resolved paths, or hard links to one inode."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_clobber(reads: Iterable[PathLike], writes: Iterable[PathLike]) -> None:
    """Raise OnnxotoError if any file to be written (or removed) is a file that is read.

    Call it before anything is created: a folder made for the output can change what a path
    with ``..`` resolves to.
    """
    reads, writes = list(reads), list(writes)
    for out in writes:
        for source in reads:
            if same_file(out, source):
                raise OnnxotoError(
                    f"'{out}' is the same file as the input '{source}'; refusing to overwrite an "
                    f"input, choose another output path"
                )


def external_locations(path: PathLike) -> list[str]:
    """The external-data locations a model file references, in order, each once.

    Empty when the file has none or cannot be read (the loader reports unreadable models).
    Finding out means parsing the whole file, inline weights included (0.5 s on a 550 MB
    model), and one command asks several times (output checks, the written pair): a file whose
    bytes never spell ``location`` (the key every reference has) has none, and an answer is
    kept while the file's identity, size and modification time stay the same.
    """
    try:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in _LOCATIONS:
            _LOCATIONS[key] = _read_locations(path) if _mentions_location(path) else []
            while len(_LOCATIONS) > 16:
                del _LOCATIONS[next(iter(_LOCATIONS))]
        return list(_LOCATIONS[key])
    except OSError:
        return []


_LOCATIONS: dict[tuple, list[str]] = {}


def _mentions_location(path: PathLike, chunk: int = 1 << 24) -> bool:
    """Whether the file's bytes contain b"location", read in chunks (no parse, no map that
    would count the whole file as resident)."""
    word = b"location"
    with open(path, "rb") as f:
        tail = b""
        while block := f.read(chunk):
            window = tail + block
            if word in window:
                return True
            tail = window[1 - len(word):]
    return False


def _read_locations(path: PathLike) -> list[str]:
    try:
        header = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return []
    seen: dict[str, None] = {}
    for tensor in _all_tensors(header):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen[entry.value] = None
    return list(seen)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def model_files(path: PathLike) -> list[Path]:
    """The model file plus every external-data file it references (paths as given, joined)."""
    path = Path(path)
    if not path.is_file():
        return [path]
    return [path] + [path.parent / location for location in external_locations(path)]


def save_targets(path: PathLike) -> list[Path]:
    """Every file a ``save_model`` to ``path`` may replace or remove: the path itself and the
    data files of the model already there that are ours to delete (check them against inputs)."""
    path = Path(path)
    if not path.is_file():
        return [path]
    return [path] + [path.parent / loc for loc in external_locations(path)
                     if _owned_data(path, loc)]


def check_output_path(path: PathLike, *, kind: str = "file") -> None:
    """Refuse, with one line, an output path that cannot be written.

    ``kind`` is "file" or "folder". Refused: an existing folder given as a file output (and an
    existing file given as a folder), a parent that is a file, a folder where files cannot be
    created (read-only folder or file system; tested by creating and removing a real file,
    since permission bits do not tell about read-only mounts, ACLs or root).
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise OnnxotoError(f"'{path}': is a folder; give a file name for the output")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OnnxotoError(f"'{path}': is a file; give a folder for the output")
    for ancestor in [path.parent, *path.parent.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise OnnxotoError(f"'{path}': '{ancestor}' is a file, not a folder; choose "
                               f"another output path")
    existing = path if kind == "folder" else path.parent
    while not existing.exists():
        existing = existing.parent
    _check_writable(path, existing)


def _check_writable(path: Path, folder: Path) -> None:
    try:
        handle = open(folder / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.probe",
                      "xb")
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else exc.strerror
        raise OnnxotoError(f"'{path}': cannot write in '{folder}' ({why}); choose another "
                           f"output path") from exc
    handle.close()
    os.remove(handle.name)


@dataclass
class Written:
    """What one atomic write put on disk, measured before the rename: under concurrent writers
    the path may already hold another run's file when the caller reports."""

    path: Path
    bytes: int
    sha256: str
    files: list[Path] = field(default_factory=list)
    data_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """The file and its external data together."""
        return self.bytes + self.data_bytes

    def to_dict(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "data_bytes": self.data_bytes,
                "sha256": self.sha256, "files": [str(f) for f in self.files]}


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _Sink:
    """A staging file that hashes and counts what it is given; fsynced and chmodded on close."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.handle = open(path, "xb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.mode = mode

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        self.handle.flush()
        os.fchmod(self.handle.fileno(), self.mode)
        os.fsync(self.handle.fileno())
        self.handle.close()


class _Staging:
    """Staging names of one write: ``.onnxoto-<pid>-<token>.<suffix>`` in the target folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.token = secrets.token_hex(6)
        self.stem = f"{STAGING_PREFIX}{os.getpid()}-{self.token}"

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.stem}.{suffix}"

    def remove_all(self) -> None:
        for item in self.folder.glob(f"{self.stem}.*"):
            with contextlib.suppress(FileNotFoundError):
                item.unlink()


def _prepare_folder(path: Path) -> Path:
    """Check the (resolved) output path, create its folder and clean what killed writes left
    there."""
    check_output_path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxotoError(f"'{path}': cannot create folder '{folder}' ({exc.strerror})") from exc
    clean_staging(folder)
    return folder


def write_bytes_atomic(path: PathLike, data: bytes, *, mode: int | None = None) -> Written:
    """Write ``data`` to ``path`` through a staging file and one rename. Defaults to the mode a
    plain ``open()`` gives (0o666 less the umask)."""
    target = resolved(path)
    staging = _Staging(_prepare_folder(target))
    try:
        sink = _Sink(staging.path("tmp"), file_mode() if mode is None else mode)
        sink.write(data)
        sink.close()
        os.replace(sink.path, target)
        _sync_folder(target.parent)
    finally:
        staging.remove_all()
    return Written(path=Path(path), bytes=sink.size, sha256=sink.digest.hexdigest(), files=[path])


def save_model(model: onnx.ModelProto, path: PathLike, *,
               external: bool | None = None) -> Written:
    """Write ``model`` to ``path`` atomically, the external-data pair included (see the module
    docstring for the scheme and why).

    ``external``: store tensors of 1 KiB and more in ``<name>.<token>.data`` beside the model;
    defaults to doing so only when the model is over ~1.8 GB (protobuf cannot hold 2 GB). The
    model proto is not modified. Returns the size and sha256 of the ``.onnx`` written.
    """
    shown, path = Path(path), resolved(path)
    if external is None:
        external = model.ByteSize() > EXTERNAL_DATA_LIMIT
    folder = _prepare_folder(path)
    staging = _Staging(folder)
    old_data = [folder / loc for loc in external_locations(path) if _owned_data(path, loc)]
    new_location = _fresh_data_name(path) if external else None
    journal = staging.path("journal")
    record = {"target": path.name, "new": new_location, "old": [p.name for p in old_data],
              "committed": False}
    _write_journal(staging, record)
    mode = file_mode()
    try:
        files = [shown]
        if external:
            header, data_sink = _write_split(model, staging, new_location, mode)
            files.append(shown.parent / new_location)
        else:
            header, data_sink = model, None
        sink = _Sink(staging.path("onnx"), mode)
        sink.write(header.SerializeToString())
        sink.close()
        if data_sink is not None:
            os.replace(data_sink.path, folder / new_location)
        os.replace(sink.path, path)  # the commit point
        _sync_folder(folder)
        _write_journal(staging, {**record, "committed": True})
        for old in old_data:
            if old.name != new_location:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        _sweep_orphans(path, own=journal)
    finally:
        staging.remove_all()
    return Written(path=shown, bytes=sink.size, sha256=sink.digest.hexdigest(), files=files,
                   data_bytes=0 if data_sink is None else data_sink.size)


def _write_journal(staging: _Staging, record: dict) -> None:
    """Replace the journal in one rename, so a concurrent sweep never reads half of one."""
    tmp = staging.path("journal.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, staging.path("journal"))


def _write_split(model: onnx.ModelProto, staging: _Staging, location: str,
                 mode: int) -> tuple[onnx.ModelProto, _Sink]:
    """Stream large tensors into a staged data file; return the small header that points at
    them. Builds the header around references instead of copying the proto (a copy doubles
    memory for a 2 GB model)."""
    header = without_initializers(model)
    sink = _Sink(staging.path("data"), mode)
    for tensor in model.graph.initializer:
        ref = header.graph.initializer.add()
        raw = _raw_bytes(tensor)
        if raw is None or len(raw) < INLINE_BYTES:
            ref.CopyFrom(tensor)
            continue
        ref.name = tensor.name
        ref.data_type = tensor.data_type
        ref.dims.extend(tensor.dims)
        ref.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", sink.size),
                           ("length", len(raw))):
            entry = ref.external_data.add()
            entry.key, entry.value = key, str(value)
        sink.write(raw)
    sink.close()
    return header, sink


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with an empty initializer list, built field by field around them:
    copying the whole proto and then clearing them doubles memory for a big model."""
    out = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _set_field(out, descriptor, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name != "initializer":
            _set_field(out.graph, descriptor, value)
    return out


def _set_field(target, descriptor, value) -> None:
    if descriptor.is_repeated:
        getattr(target, descriptor.name).extend(value)
    elif descriptor.message_type is not None:
        getattr(target, descriptor.name).CopyFrom(value)
    else:
        setattr(target, descriptor.name, value)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """Little-endian bytes of a tensor, or None for strings (they cannot be external)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    if tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.HasField("raw_data"):
        raise OnnxotoError(f"initializer '{tensor.name}' still points at external data that was "
                           f"not loaded; load the model with onnxoto.load_model first")
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _fresh_data_name(path: Path) -> str:
    while True:
        name = f"{path.name}.{secrets.token_hex(6)}.data"
        if not (path.parent / name).exists():
            return name


def _owned_data(path: Path, location: str) -> bool:
    """Whether an old output's data file is ours to delete: beside it and named after it."""
    name = Path(location)
    if name.parent != Path("."):
        return False
    return name.name == f"{path.name}.data" or re.fullmatch(
        re.escape(path.name) + r"\.[0-9a-f]{12}\.data", name.name) is not None


def _sweep_orphans(path: Path, *, own: Path) -> None:
    """Delete ``<name>.<token>.data`` files nothing references any more.

    Two concurrent writers can both read the same old ``.onnx``; the one that commits first
    then has its data file replaced by the other's commit, and neither deletes it. Such a file
    is garbage unless a live writer that has not committed yet names it in its journal
    (journals are written before data files, and data files are listed here before journals
    are read, so a write in progress is always seen). A writer marks its journal committed
    before its own sweep, so of two racing writers the later sweep sees the other's file as
    garbage. An unreadable journal stops the sweep: better a stray file than a lost one.
    """
    folder = path.parent
    ours = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.data")
    candidates = [p for p in folder.iterdir() if ours.fullmatch(p.name)]
    if not candidates:
        return
    busy: set[str] = set()
    for journal in folder.glob(f"{STAGING_PREFIX}*.journal"):
        match = _STAGING.match(journal.name)
        if journal == own or match is None or not _alive(int(match.group(1))):
            continue
        try:
            record = json.loads(journal.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return
        if record.get("target") == path.name and record.get("new") and \
                not record.get("committed"):
            busy.add(record["new"])
    referenced = set(external_locations(path))
    for candidate in candidates:
        if candidate.name not in busy and candidate.name not in referenced:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


def uses_external_data(path: PathLike) -> bool:
    """Whether a model file keeps any tensor in external data."""
    return bool(external_locations(path))


def clean_staging(folder: PathLike) -> list[Path]:
    """Delete what killed writes left in ``folder``: their staging files, and the data files
    their journals name that the current model file does not reference. Files of live
    processes are left alone. Returns the paths removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    dead: dict[str, list[Path]] = {}
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match and not _alive(int(match.group(1))):
            dead.setdefault(f"{match.group(1)}-{match.group(2)}", []).append(entry)
    for items in dead.values():
        for item in items:
            if item.name.endswith(".journal"):
                removed += _undo_journal(folder, item)
        for item in items:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
                removed.append(item)
    return removed


def _undo_journal(folder: Path, journal: Path) -> list[Path]:
    try:
        record = json.loads(journal.read_text())
        target = folder / record["target"]
        names = [n for n in [record.get("new"), *record.get("old", [])] if n]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    referenced = set(external_locations(target)) if target.exists() else set()
    removed = []
    for name in names:
        if name in referenced or not _owned_data(target, name):
            continue
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
            removed.append(folder / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sync_folder(folder: Path) -> None:
    """Make the renames durable (a power cut right after must not undo them)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
