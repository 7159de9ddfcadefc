"""The group model: which slices of which initializers form one zero-invariant group.

Plain data, no ONNX and no torch, so shrink, trainers and reports all read the same objects.
Channel ``c`` of a group owns, along a member's axis, the indices
``offset + c*step + k*stride`` for ``k`` in ``0..block-1`` (see DESIGN section 3).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxoto.errors import OnnxotoError, one_line

FORMAT = "onnxoto.partition/2"
# Version 1 stored a group's reasons as one "; "-joined string; still read, as a one-item list.
READ_FORMATS = ("onnxoto.partition/1", FORMAT)
ROLES = ("producer", "attached", "consumer")


@dataclass(frozen=True)
class IndexMap:
    """Maps group channels to indices along one axis of an initializer (and back)."""

    offset: int = 0
    block: int = 1
    stride: int = 1
    step: int | None = None

    def __post_init__(self) -> None:
        if self.step == self.block * self.stride:
            object.__setattr__(self, "step", None)  # one canonical form, so equal maps compare

    @property
    def channel_step(self) -> int:
        return self.block * self.stride if self.step is None else self.step

    def indices(self, channels: Iterable[int] | np.ndarray) -> np.ndarray:
        """Axis indices owned by ``channels``, channel-major (all of channel 0's block first)."""
        chans = np.asarray(list(channels) if not isinstance(channels, np.ndarray) else channels)
        chans = chans.astype(np.int64).reshape(-1, 1)
        ks = np.arange(self.block, dtype=np.int64).reshape(1, -1)
        return (self.offset + chans * self.channel_step + ks * self.stride).reshape(-1)

    def span(self, size: int) -> slice | np.ndarray:
        """The indices of all ``size`` channels, as a slice where they are evenly spaced (a
        plain or offset map): indexing with a slice costs no index array."""
        step = self.channel_step
        if self.block == 1 and step > 0:
            return slice(self.offset, self.offset + size * step, step)
        if self.stride == 1 and step == self.block:
            return slice(self.offset, self.offset + size * step)
        return self.indices(np.arange(size))

    def channel_of(self, index: int, size: int) -> int | None:
        """The channel (of ``size``) owning ``index``, or None if no channel owns it."""
        step = self.channel_step
        for k in range(self.block):
            rest = index - self.offset - k * self.stride
            if rest < 0 or (step and rest % step):
                continue
            channel = rest // step if step else 0
            if channel < size:
                return channel
        return None

    @classmethod
    def fit(cls, rows: np.ndarray) -> IndexMap | None:
        """The map whose indices for channel c equal ``rows[c]`` (channels x block), if any."""
        rows = np.asarray(rows, dtype=np.int64)
        channels, block = rows.shape
        if block == 0:
            return None
        first = rows[0]
        stride = int(first[1] - first[0]) if block > 1 else 1
        step = int(rows[1, 0] - first[0]) if channels > 1 else block * stride
        if stride <= 0 or step <= 0:
            return None
        candidate = cls(offset=int(first[0]), block=block, stride=stride,
                        step=None if step == block * stride else step)
        expected = candidate.indices(np.arange(channels)).reshape(channels, block)
        return candidate if np.array_equal(expected, rows) else None


@dataclass(frozen=True)
class Member:
    """One initializer slice in a group: along ``axis``, indices given by ``index_map``."""

    initializer: str
    axis: int
    role: str
    index_map: IndexMap = field(default_factory=IndexMap)
    node: str = ""

    def to_dict(self) -> dict:
        out = {"initializer": self.initializer, "axis": self.axis, "role": self.role}
        out.update(asdict(self.index_map))
        out["step"] = self.index_map.channel_step
        if self.node:
            out["node"] = self.node
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Member:
        index_map = IndexMap(
            offset=int(data.get("offset", 0)),
            block=int(data.get("block", 1)),
            stride=int(data.get("stride", 1)),
            step=int(data["step"]) if data.get("step") is not None else None,
        )
        return cls(
            initializer=data["initializer"],
            axis=int(data["axis"]),
            role=data["role"],
            index_map=index_map,
            node=data.get("node", ""),
        )


@dataclass(init=False)
class Group:
    """Channels that live or die together; prunable only if deleting them provably is safe.

    ``reasons`` lists why not, one line per kind of reason (a list, so tools count and filter
    them without splitting prose). ``reason=`` (keyword) is the version-1 string, whose lines were
    joined by "; ", split back into the list so version-1 files and older callers keep working.
    """

    id: int
    size: int
    prunable: bool
    reasons: list[str]
    members: list[Member]

    def __init__(self, id: int, size: int, prunable: bool,
                 reasons: Iterable[str] | str | None = None, members: Iterable[Member] = (),
                 *, reason: str | None = None) -> None:
        if isinstance(reasons, str):
            reasons = [reasons]
        self.id, self.size, self.prunable = id, size, prunable
        self.reasons = list(reasons or (reason.split("; ") if reason else []))
        self.members = list(members)

    @property
    def reason(self) -> str | None:
        """The reasons as one line (for messages), None when there are none."""
        return "; ".join(self.reasons) or None

    def by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "size": self.size,
            "prunable": self.prunable,
            "reasons": list(self.reasons),
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Group:
        """Reads both formats: version 2's ``reasons`` list and version 1's ``reason`` string."""
        return cls(
            id=int(data["id"]),
            size=int(data["size"]),
            prunable=bool(data["prunable"]),
            reasons=data.get("reasons"),
            reason=data.get("reason"),
            members=[Member.from_dict(m) for m in data["members"]],
        )


def params_covered(groups: list[Group], sizes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of initializers that some group's members would slice, each counted once."""
    covered: dict[str, dict[int, np.ndarray]] = {}
    for group in groups:
        for m in group.members:
            if m.initializer not in sizes:
                continue
            axes = covered.setdefault(m.initializer, {})
            if m.axis not in axes:
                axes[m.axis] = np.zeros(sizes[m.initializer][m.axis], dtype=bool)
            axes[m.axis][m.index_map.span(group.size)] = True
    total = 0
    for name, axes in covered.items():
        shape = sizes[name]
        untouched = 1
        for axis, dim in enumerate(shape):
            untouched *= dim - (int(np.count_nonzero(axes[axis])) if axis in axes else 0)
        total += math.prod(shape) - untouched
    return total


def summarize(groups: list[Group], sizes: Mapping[str, tuple[int, ...]]) -> dict:
    """Counts for the partition.json summary and the CLI table."""
    total_params = sum(math.prod(s) for s in sizes.values())
    prunable = [g for g in groups if g.prunable]
    in_groups = params_covered(prunable, sizes)
    reasons: dict[str, int] = {}
    for group in groups:
        if not group.prunable and group.reasons:
            key = group.reasons[0]
            reasons[key] = reasons.get(key, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {
        "groups": len(groups),
        "prunable": len(prunable),
        "channels": sum(g.size for g in groups),
        "prunable_channels": sum(g.size for g in prunable),
        "params": total_params,
        "params_in_groups": in_groups,
        "params_in_groups_share": (in_groups / total_params) if total_params else 0.0,
        "top_reasons": [{"reason": r, "groups": n} for r, n in top],
    }


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes through a staging file in the same folder, then rename: never a half file."""
    from onnxoto.files import write_bytes_atomic

    write_bytes_atomic(path, data)


def partition_to_json(groups: list[Group], model: Mapping, summary: Mapping) -> str:
    doc = {
        "format": FORMAT,
        "model": dict(model),
        "groups": [g.to_dict() for g in groups],
        "summary": dict(summary),
    }
    return json.dumps(doc, indent=1)


def groups_from_json(text: str, *, source: str = "partition.json") -> tuple[list[Group], dict]:
    """Parse partition.json; returns the groups and the model record (path, sha256)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxotoError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if doc.get("format") not in READ_FORMATS:
        raise OnnxotoError(f"{source}: format is {doc.get('format')!r}, expected {FORMAT!r} "
                           f"(or version 1); re-run `onnxoto partition` with this onnxoto")
    return [Group.from_dict(g) for g in doc["groups"]], dict(doc.get("model", {}))


SHA_KEY = "model_sha256"


def save_masks(path: str | os.PathLike, masks: Mapping[int, np.ndarray], *,
               model_sha256: str | None = None) -> None:
    """masks.npz: key ``g<id>``, boolean keep vector of the group's size; optionally the
    sha256 of the model the masks were made for (key ``model_sha256``)."""
    import io

    arrays = {f"g{gid}": np.asarray(keep, dtype=bool) for gid, keep in masks.items()}
    if model_sha256:
        arrays[SHA_KEY] = np.array(model_sha256)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def read_masks_file(path: str | os.PathLike, groups: list[Group] | None = None,
                    ) -> tuple[dict[str, np.ndarray], str | None]:
    """Raw arrays of a masks.npz and the model sha256 it records (None if absent).

    Every array's header is read and checked before any array is loaded (against ``groups`` when
    given), so a small zip declaring billions of elements, or pickled objects, costs nothing.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise OnnxotoError(f"'{where}': no such mask file")
    by_id = None if groups is None else {g.id: g for g in groups}
    try:
        archive = zipfile.ZipFile(where)
    except (zipfile.BadZipFile, OSError) as exc:
        raise OnnxotoError(f"'{where}': not a readable .npz mask file (not a zip archive); "
                           f"write masks with `onnxoto mask` or numpy.savez") from exc
    with archive:
        entries = _npz_entries(archive, where)
        for key, (shape, dtype) in entries.items():
            if key == SHA_KEY:
                if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * 128:
                    raise OnnxotoError(f"'{where}': '{SHA_KEY}' must be a sha256 string")
            else:
                _check_declared(key, shape, dtype, by_id, where)
        try:
            raw = {key: _read_npy(archive, f"{key}.npy") for key in entries}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise OnnxotoError(f"'{where}': not a readable .npz mask file ({one_line(exc)})") \
                from exc
    sha = raw.pop(SHA_KEY, None)
    return raw, None if sha is None else str(sha)


def _npz_entries(archive: zipfile.ZipFile, where: str) -> dict[str, tuple[tuple, np.dtype]]:
    """Declared shape and dtype of every array, from the .npy headers alone."""
    entries = {}
    for name in archive.namelist():
        if not name.endswith(".npy"):
            raise OnnxotoError(f"'{where}': holds '{name}', not a numpy array; a mask file holds "
                               f"only arrays g<id>")
        try:
            with archive.open(name) as handle:
                version = np.lib.format.read_magic(handle)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = reader(handle)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise OnnxotoError(f"'{where}': '{name}' is not a readable numpy array "
                               f"({one_line(exc)})") from exc
        if dtype.hasobject:
            raise OnnxotoError(f"'{where}': '{name[:-4]}' holds Python objects (pickled); masks "
                               f"are plain bool arrays, refusing to load it")
        entries[name[:-4]] = (tuple(shape), dtype)
    return entries


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(name) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


# A group has at most this many channels; bounds what a mask read without groups may declare.
MAX_MASK_LENGTH = 1 << 24


def _check_declared(key: str, shape: tuple, dtype: np.dtype, by_id: dict[int, Group] | None,
                    source: str) -> Group | None:
    """One mask array's key, dtype and shape against its group (or sanity bounds without one)."""
    group = None
    if by_id is not None:
        if not (key.startswith("g") and key[1:].isdigit()) or int(key[1:]) not in by_id:
            last = max(by_id, default=-1)
            raise OnnxotoError(f"{source}: unknown group key '{key}' (the partition has g0..g"
                               f"{last}); was the mask made for another model?")
        group = by_id[int(key[1:])]
    if dtype != np.bool_:
        raise OnnxotoError(f"{source}: '{key}' has dtype {dtype}, expected bool (True = keep)")
    if group is not None and shape != (group.size,):
        raise OnnxotoError(f"{source}: '{key}' has shape {shape}, group {group.id} has "
                           f"{group.size} channels")
    if group is None and (len(shape) != 1 or shape[0] > MAX_MASK_LENGTH):
        raise OnnxotoError(f"{source}: '{key}' has shape {shape}, expected one bool per channel")
    return group


def mask_file_sha(path: str | os.PathLike) -> str | None:
    """The model sha256 a masks.npz records, or None (unreadable files say so when loaded)."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            if f"{SHA_KEY}.npy" not in archive.namelist():
                return None
            shape, dtype = _npz_entries(archive, os.fspath(path))[SHA_KEY]
            if dtype.kind != "U" or shape != ():
                return None
            return str(_read_npy(archive, f"{SHA_KEY}.npy"))
    except (OSError, zipfile.BadZipFile, ValueError, OnnxotoError):
        return None


def load_masks(path: str | os.PathLike, groups: list[Group], *,
               model_sha256: str | None = None) -> dict[int, np.ndarray]:
    """Read and check masks.npz against the groups; every problem is one clear line, which says
    so when the file records another model (``model_sha256``: the model's own)."""
    try:
        raw, _ = read_masks_file(path, groups)
        return check_masks(raw, groups, source=f"'{os.fspath(path)}'")
    except OnnxotoError as exc:
        recorded = mask_file_sha(path) if model_sha256 else None
        if recorded and recorded != model_sha256:
            raise OnnxotoError(f"'{os.fspath(path)}' was made for another model (sha256 "
                               f"{recorded[:12]}..., this one {model_sha256[:12]}...) and does "
                               f"not fit it: {exc}") from exc
        raise


def check_masks(
    raw: Mapping[str, np.ndarray], groups: list[Group], *, source: str = "masks"
) -> dict[int, np.ndarray]:
    by_id = {g.id: g for g in groups}
    masks: dict[int, np.ndarray] = {}
    for key, value in raw.items():
        value = np.asarray(value)
        group = _check_declared(key, value.shape, value.dtype, by_id, source)
        if value.all():
            continue
        if not group.prunable:
            raise OnnxotoError(f"{source}: '{key}' removes channels of non-prunable group "
                               f"{group.id}: {group.reason}")
        if not value.any():
            raise OnnxotoError(f"{source}: '{key}' removes every channel of group {group.id}; "
                               f"keep at least one")
        masks[group.id] = value
    return masks
