"""Layout ops: they move, cut, glue or flatten channel axes without touching values."""

from __future__ import annotations

from collections import Counter

import numpy as np

from onnxoto.rules.base import (
    Edit,
    Rule,
    attrs,
    barrier,
    input_at,
    ints_from,
    normalize_axis,
    pass_through,
)
from onnxoto.spaces import Space, Tracer, node_label

Factor = tuple[int, Counter]


def _factor(dim) -> Factor | None:
    if isinstance(dim, int | np.integer):
        return int(dim), Counter()
    if isinstance(dim, str):
        return 1, Counter({dim: 1})
    return None


def _product(factors) -> Factor:
    value, symbols = 1, Counter()
    for number, names in factors:
        value, symbols = value * number, symbols + names
    return value, symbols


def _fill_unknown(factors: list[Factor | None], total: Factor) -> list[Factor] | None:
    """Solve for one unknown output dim from the element count (Reshape with -1, dynamic N)."""
    missing = [i for i, f in enumerate(factors) if f is None]
    if not missing:
        return factors
    if len(missing) > 1:
        return None
    known = _product(f for f in factors if f is not None)
    if known[0] == 0 or total[0] % known[0] or known[1] - total[1]:
        return None
    factors = list(factors)
    factors[missing[0]] = (total[0] // known[0], total[1] - known[1])
    return factors


def reshape_map(in_shape, out_shape, axis: int) -> tuple[int, int] | None:
    """Where channel axis ``axis`` of ``in_shape`` lands in ``out_shape`` (row-major reshape).

    Returns ``(out_axis, block)``: channel c owns indices [c*block, (c+1)*block) of
    ``out_axis`` (block > 1 when the channel axis merges with the axes after it, as in
    Flatten of C x H x W). None when the channel axis is split or mixed with earlier axes.
    Dims before the channel axis may be symbolic (a dynamic batch); the channel axis and the
    axes after it must be static.
    """
    aligned = _after_prefix(in_shape, out_shape, axis)
    if aligned is None:
        return None
    outs, j, channels, tail = aligned
    candidates = []  # unit dims right after the prefix make the position ambiguous
    while j < len(outs) and not outs[j][1]:
        dim = outs[j][0]
        rest = _product(outs[j + 1:])
        if dim % channels == 0 and not rest[1] and tail % (dim // channels) == 0 and \
                rest[0] == tail // (dim // channels):
            candidates.append((j, dim // channels))
        if dim != 1:
            break
        j += 1
    if not candidates:
        return None
    return next((c for c in candidates if c[0] == axis), candidates[-1])


def reshape_split(in_shape, out_shape, axis: int) -> tuple[int, tuple[int, ...]] | None:
    """Where channel axis ``axis`` splits into consecutive output axes: ``(first output axis,
    sizes)``, the channels being grouped on the second-to-last of those axes. Either an exact
    split whose axes after it keep their extent (heads x head_dim; 3 x heads x head_dim for a
    fused qkv), or (groups, C/groups) with the second part merged into the axes after it (the
    (N, G, C/G*H*W) view of a GroupNorm). None otherwise."""
    aligned = _after_prefix(in_shape, out_shape, axis)
    if aligned is None:
        return None
    outs, j, channels, tail = aligned
    while j < len(outs) and outs[j] == (1, Counter()):  # a unit dim belongs to the prefix
        j += 1
    dims: list[int] = []
    while j + len(dims) < len(outs) and not outs[j + len(dims)][1] and \
            int(np.prod(dims, dtype=np.int64)) < channels:
        dims.append(outs[j + len(dims)][0])
    rest = _product(outs[j + len(dims):])
    if len(dims) >= 2 and int(np.prod(dims, dtype=np.int64)) == channels and \
            rest == (tail, Counter()):
        return j, tuple(dims)
    if not dims or not 1 < dims[0] < channels or channels % dims[0]:
        return None
    if _product(outs[j + 1:]) != ((channels // dims[0]) * tail, Counter()):
        return None
    return j, (dims[0], channels // dims[0])


def _after_prefix(in_shape, out_shape, axis: int):
    """(output factors, first output index after the dims before the channel axis, channel
    count, static extent after the channel axis), or None when they cannot be aligned."""
    ins = [_factor(d) for d in in_shape]
    if any(f is None or f[1] for f in ins[axis:]) or any(f is None for f in ins):
        return None
    known = {d for d in in_shape if isinstance(d, str)}  # other names are inference's unknowns
    outs = _fill_unknown([_factor(d) if not isinstance(d, str) or d in known else None
                          for d in out_shape], _product(ins))
    if outs is None:
        return None
    prefix = _product(ins[:axis])
    acc, j = (1, Counter()), 0
    while j < len(outs) and acc != prefix:
        acc = _product([acc, outs[j]])
        j += 1
    if acc != prefix:
        return None
    return outs, j, ins[axis][0], _product(ins[axis + 1:])[0]


def _map_through(node, ctx: Tracer, space: Space, out_shape) -> Space | None:
    in_shape = ctx.shape(node.input[0])
    if in_shape is None or out_shape is None:
        barrier(node, ctx, "has shapes unknown before run time")
        return None
    mapping = reshape_map(in_shape, out_shape, space.axis)
    if mapping is not None:
        axis, block = mapping
        return space.repeated(block, axis) if block > 1 else space.on_axis(axis)
    split = reshape_split(in_shape, out_shape, space.axis)
    if split is not None:
        first, dims = split
        exact = tuple(out_shape[first:first + len(dims)]) == dims
        if exact and _splits_aligned(ctx, space, dims, in_shape):
            return _split_aligned(ctx, space, first, dims)
        return _split_heads(ctx, space, first, dims)
    merged = reshape_merge(in_shape, out_shape, space.axis)
    if merged is not None:
        axis, times, block = merged
        return Space(axis, np.repeat(np.tile(space.slots, times), block),
                     np.repeat(np.tile(space.dirt, times), block))
    barrier(node, ctx, "splits or mixes the channel axis with other axes (or its shapes "
                       "are not static from the channel axis on)")
    return None


def reshape_merge(in_shape, out_shape, axis: int) -> tuple[int, int, int] | None:
    """Where the channel axis lands when static axes right before it merge with it (and maybe
    axes after it): ``(out axis, times, block)``, channel c owning the indices
    (k*C + c)*block + b of the output axis for k < times, b < block. The inverse of an aligned
    split: ResNeSt's rSoftMax flattens (radix, C) back into radix*C. None otherwise."""
    for start in range(axis - 1, -1, -1):
        lead = in_shape[start:axis]
        if not all(isinstance(d, int | np.integer) for d in lead):
            return None
        times = int(np.prod(lead, dtype=np.int64))
        channels = in_shape[axis]
        if not isinstance(channels, int | np.integer):
            return None
        folded = (*in_shape[:start], times * int(channels), *in_shape[axis + 1:])
        mapping = reshape_map(folded, out_shape, start)
        if mapping is not None:
            return mapping[0], times, mapping[1]
    return None


def _splits_aligned(ctx: Tracer, space: Space, dims: tuple[int, ...], in_shape) -> bool:
    """Does a channel axis split exactly into ``dims`` keep channels aligned on the last of
    them (channel j of every leading index is one channel: a radix split, (radix, C)) rather
    than tie each head of the second-to-last (heads x head_dim)? Both are exact, so this only
    decides how much can be removed. The one the channels are already tied for costs nothing
    (ResNeSt's (radix, C) view of a conv aligned across its conv groups); else aligned only
    for a pooled channel vector (N, C, 1, 1): a gate over branches split as (radix, C)
    (ResNeSt's rSoftMax, SK-Net); heads when tokens or space remain (attention's token
    features, conv attention's (heads, d, H*W))."""
    roots = ctx.forest.roots()[space.slots]
    rows = roots.reshape(-1, dims[-1])
    if (rows == rows[:1]).all():
        return True
    heads = roots.reshape(-1, dims[-2], dims[-1]).transpose(1, 0, 2).reshape(dims[-2], -1)
    if (heads == heads[:, :1]).all():
        return False
    after = in_shape[space.axis + 1:]
    return bool(after) and int(np.prod(after, dtype=np.int64)) == 1


def _split_aligned(ctx: Tracer, space: Space, first: int, dims: tuple[int, ...]) -> Space:
    """The channels split into ``dims``, channel j of every leading index tied into one and
    kept on the last of those axes."""
    grid = space.slots.reshape(-1, dims[-1])
    ctx.forest.union(np.broadcast_to(grid[:1], grid.shape).reshape(-1), grid.reshape(-1))
    return Space(first + len(dims) - 1, grid[0].copy(),
                 _first_dirt(space.dirt.reshape(grid.shape).T))


def _split_heads(ctx: Tracer, space: Space, first: int, dims: tuple[int, ...]) -> Space:
    """The channels split over several axes (an attention head's columns are a block of
    head_dim, a fused qkv adds a leading 3): the channels stay on the second-to-last of those
    axes, one per head, and everything a head index covers is tied into one channel (q, k and
    v of a head die together anyway at the score and value products)."""
    heads = dims[-2]
    grid = space.slots.reshape(-1, heads, dims[-1])
    lead = np.broadcast_to(grid[:1, :, :1], grid.shape)
    ctx.forest.union(lead.reshape(-1), grid.reshape(-1))
    dirt = space.dirt.reshape(grid.shape).transpose(1, 0, 2).reshape(heads, -1)
    return Space(first + len(dims) - 2, grid[0, :, 0].copy(), _first_dirt(dirt))


class FlattenRule(Rule):
    """Flatten C x H x W into features: channel c owns features [c*H*W, (c+1)*H*W)."""

    op_types = ("Flatten",)

    def follow(self, node, ctx, space, rank):
        ctx.set_space(node.output[0], _map_through(node, ctx, space, ctx.shape(node.output[0])))


class ReshapeRule(Rule):
    """Reshape with a constant target: like Flatten, and the target entry is rewritten."""

    op_types = ("Reshape",)

    def follow(self, node, ctx, space, rank):
        target = ctx.const(node.input[1])
        out = _map_through(node, ctx, space, ctx.shape(node.output[0]))
        if out is None:
            return
        if target is None:
            why = _runtime_target_problem(node, ctx, space, out)
            if why:
                barrier(node, ctx, f"takes its target shape from a run-time computation that "
                                   f"{why}; export with static shapes")
                return
            ctx.set_space(node.output[0], out)
            return
        if int(target[out.axis]) == 0 and (out.axis != space.axis or out.size != space.size):
            barrier(node, ctx, "copies a moved channel dimension with 0 in its target")
            return
        ctx.set_space(node.output[0], out)

    def rewrite(self, node, edit: Edit):
        keep = edit.keep(node.output[0])
        target = edit.const(node.input[1])
        if keep is None or target is None:
            return
        axis = edit.axis(node.output[0])
        if int(target[axis]) > 0:
            target = np.array(target, copy=True)
            target[axis] = int(keep.sum())
            edit.set_input_const(1, target)


def _runtime_target_problem(node, ctx: Tracer, space: Space, out: Space) -> str | None:
    """Why a run-time Reshape target would go stale after shrinking, or None if it adapts.

    ``x.view(x.size(0), -1)`` builds its target from Shape(x) and -1 at run time: after
    channels are removed the same computation yields the new shape, so nothing needs rewriting.
    That holds when the channel entry is -1 (or x's own channel dim, unmerged) and no other
    entry carries a channel count.
    """
    entries = _shape_entries(ctx, node.input[1])
    if entries is None or len(entries) != len(ctx.shape(node.output[0]) or ()):
        return "onnxoto cannot follow"
    data = node.input[0]
    for position, entry in enumerate(entries):
        if position == out.axis:
            ok = entry == ("const", -1) or (entry == ("dim", data, space.axis) and
                                            out.size == space.size) or \
                _same_channels(ctx, entry, out)
            if not ok:
                return "fixes the channel count"
        elif entry[0] == "dim" and ctx.view.producer.get(entry[1]) is not None and \
                ctx.spaces.get(entry[1]) is not None and ctx.spaces[entry[1]].axis == entry[2]:
            return "reads a channel count into another dimension"
    return None


def _same_channels(ctx: Tracer, entry: tuple, out: Space) -> bool:
    """Is ``entry`` the size of a tensor's channel axis holding exactly ``out``'s channels (a
    GroupNorm view reshaped back to Shape(x)): after shrinking both sizes stay equal."""
    if entry[0] != "dim":
        return False
    other = ctx.spaces.get(entry[1])
    if other is None or other.axis != entry[2] or other.size != out.size:
        return False
    find = ctx.forest.find
    return all(find(a) == find(b) for a, b in zip(other.slots.tolist(), out.slots.tolist(),
                                                  strict=True))


def _shape_entries(ctx: Tracer, name: str) -> list[tuple] | None:
    """Each entry of a 1-D shape tensor as ("const", value) or ("dim", tensor, axis), following
    the Shape -> Gather/Slice -> Unsqueeze -> Concat pattern exporters emit; None otherwise."""
    value = ctx.const(name)
    if value is not None:
        return [("const", int(v)) for v in np.asarray(value).reshape(-1)]
    node = ctx.view.producer.get(name)
    if node is None:
        return None
    a = attrs(node)
    if node.op_type in ("Cast", "Unsqueeze", "Squeeze", "Identity"):
        return _shape_entries(ctx, node.input[0])
    if node.op_type == "Concat":
        parts = [_shape_entries(ctx, part) for part in node.input]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if node.op_type == "Shape":
        rank = ctx.rank(node.input[0])
        if rank is None:
            return None
        start = normalize_axis(int(a.get("start", 0)), rank)
        end = normalize_axis(int(a.get("end", rank)), rank) if "end" in a else rank
        return [("dim", node.input[0], k) for k in range(start, end)]
    if node.op_type in ("Gather", "Slice"):
        dims = _shape_entries(ctx, node.input[0])
        if dims is None:
            return None
        if node.op_type == "Gather":
            index = ctx.const(node.input[1])
            return None if index is None else [dims[int(i)] for i in np.asarray(index).reshape(-1)]
        params = _slice_params(node, ctx, 1)
        if params is None or params[3] != [1]:
            return None
        begin, stop, _ = slice(params[0][0], params[1][0]).indices(len(dims))
        return dims[begin:stop]
    return None


class TransposeRule(Rule):
    """Transpose moves the channel axis to perm.index(axis)."""

    op_types = ("Transpose",)
    needs_rank = True

    def follow(self, node, ctx, space, rank):
        perm = list(attrs(node).get("perm", reversed(range(rank))))
        ctx.set_space(node.output[0], space.on_axis(perm.index(space.axis)))


class SqueezeRule(Rule):
    """Squeeze/Unsqueeze shift the channel axis by the axes removed or inserted before it."""

    op_types = ("Squeeze", "Unsqueeze")

    def follow(self, node, ctx, space, rank):
        in_shape = ctx.shape(node.input[0])
        axes = ints_from(node, ctx, "axes", 1)
        if rank is None or (axes is None and input_at(node, 1)):
            barrier(node, ctx, "has run-time axes or unknown rank")
            return
        if node.op_type == "Squeeze":
            if axes is None:
                if in_shape is None or any(d is None for d in in_shape):
                    barrier(node, ctx, "squeezes unknown dims")
                    return
                axes = [i for i, d in enumerate(in_shape) if d == 1]
            axes = [normalize_axis(a, rank) for a in axes]
            if space.axis in axes:
                barrier(node, ctx, "squeezes the channel axis")
                return
            new_axis = space.axis - sum(1 for a in axes if a < space.axis)
        else:
            out_rank = rank + len(axes or [])
            inserted = {normalize_axis(a, out_rank) for a in axes or []}
            kept_axes = [i for i in range(out_rank) if i not in inserted]
            new_axis = kept_axes[space.axis]
        ctx.set_space(node.output[0], space.on_axis(new_axis))


class ConcatRule(Rule):
    """Concat on the channel axis lays spaces end to end; on another axis it joins them."""

    op_types = ("Concat",)

    def trace(self, node, ctx):
        names = [n for n in node.input if n]
        tracked = [ctx.space(n) for n in names if ctx.space(n)]
        rank = ctx.rank(node.output[0])
        if not tracked:
            return
        if rank is None:
            barrier(node, ctx, "has unknown rank")
            return
        axis = normalize_axis(int(attrs(node)["axis"]), rank)
        if any(s.axis != tracked[0].axis for s in tracked):
            barrier(node, ctx, "concatenates tensors whose channels sit on different axes")
            return
        if tracked[0].axis != axis:
            self._join(node, ctx, names, tracked)
            return
        pieces = []
        for name in names:
            space = ctx.space(name)
            if space is None:
                shape = ctx.shape(name)
                if shape is None or not isinstance(shape[axis], int):
                    barrier(node, ctx, f"concatenates '{name}' of unknown shape")
                    return
                space = ctx.new_space(shape[axis], axis, taint=f"{node_label(node)} "
                                      f"concatenates channels of '{name}', which onnxoto does "
                                      f"not follow")
            pieces.append(space)
        ctx.set_space(node.output[0], Space(axis, np.concatenate([p.slots for p in pieces]),
                                            np.concatenate([p.dirt for p in pieces])))

    @staticmethod
    def _join(node, ctx: Tracer, names, tracked) -> None:
        if len(tracked) != len(names) or len({s.size for s in tracked}) > 1:
            barrier(node, ctx, "concatenates along another axis with tensors whose channels "
                               "differ")
            return
        result = tracked[0]
        for other in tracked[1:]:
            result = ctx.join(result, other)
        ctx.set_space(node.output[0], result)


class SplitRule(Rule):
    """Split on the channel axis hands each output a range; split sizes are rewritten."""

    op_types = ("Split",)
    needs_rank = True

    def follow(self, node, ctx, space, rank):
        axis = normalize_axis(int(attrs(node).get("axis", 0)), rank)
        outputs = [o for o in node.output]
        if axis != space.axis:
            for out in outputs:
                ctx.set_space(out, space)
            return
        sizes = ints_from(node, ctx, "split", 1)
        if sizes is None and input_at(node, 1):
            barrier(node, ctx, "splits channels by run-time sizes")
            return
        if sizes is None:
            sizes = _even_split(space.size, len(outputs))
        if sizes is None or sum(sizes) != space.size:
            barrier(node, ctx, "splits channels unevenly without explicit sizes")
            return
        start = 0
        for out, size in zip(outputs, sizes, strict=True):
            ctx.set_space(out, space.sliced(slice(start, start + size)))
            start += size

    def rewrite(self, node, edit: Edit):
        counts = [edit.kept_count(out) for out in node.output]
        if any(c is None for c in counts) or edit.axis(node.output[0]) != _split_axis(node, edit):
            return
        sizes = np.array(counts, dtype=np.int64)
        if "split" in attrs(node):
            edit.set_attr("split", [int(c) for c in counts])
        elif input_at(node, 1):
            edit.set_input_const(1, sizes)
        elif len(set(counts)) > 1:
            edit.add_input_const(1, sizes)
            edit.drop_attr("num_outputs")


def _split_axis(node, edit: Edit) -> int:
    rank = edit.rank(node.input[0])
    return normalize_axis(int(attrs(node).get("axis", 0)), rank)


def _even_split(total: int, parts: int) -> list[int] | None:
    chunk = -(-total // parts)
    sizes = [chunk] * (parts - 1) + [total - chunk * (parts - 1)]
    return sizes if sizes[-1] > 0 else None


class SliceRule(Rule):
    """Slice on the channel axis (step 1) keeps a range; starts/ends are rewritten."""

    op_types = ("Slice",)

    def follow(self, node, ctx, space, rank):
        params = _slice_params(node, ctx, rank)
        if params is None:
            barrier(node, ctx, "slices by run-time bounds")
            return
        starts, ends, axes, steps = params
        if space.axis not in axes:
            ctx.set_space(node.output[0], space)
            return
        k = axes.index(space.axis)
        if steps[k] != 1:
            barrier(node, ctx, "slices channels with a step other than 1")
            return
        begin, stop, _ = slice(starts[k], ends[k]).indices(space.size)
        ctx.set_space(node.output[0], space.sliced(slice(begin, max(begin, stop))))

    def rewrite(self, node, edit: Edit):
        keep = edit.keep(node.input[0])
        params = _slice_params(node, edit, edit.rank(node.input[0]))
        if keep is None or params is None:
            return
        starts, ends, axes, _ = params
        axis = edit.axis(node.input[0])
        if axis not in axes:
            return
        k = axes.index(axis)
        begin, stop, _ = slice(starts[k], ends[k]).indices(keep.size)
        new_begin = int(keep[:begin].sum())
        new_stop = new_begin + int(keep[begin:max(begin, stop)].sum())
        for index, value in ((1, new_begin), (2, new_stop)):
            array = np.array(edit.const(node.input[index]), dtype=np.int64, copy=True)
            array[k] = value
            edit.set_input_const(index, array)


def _slice_params(node, ctx, rank):
    if rank is None or not input_at(node, 1):
        return None
    values = [ctx.const(input_at(node, i)) if input_at(node, i) else None for i in range(1, 5)]
    starts, ends, axes, steps = values
    if starts is None or ends is None or (input_at(node, 3) and axes is None) or \
            (input_at(node, 4) and steps is None):
        return None
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = [normalize_axis(int(a), rank) for a in axes] if axes is not None else \
        list(range(len(starts)))
    steps = [int(s) for s in steps] if steps is not None else [1] * len(starts)
    return starts, ends, axes, steps


class GatherRule(Rule):
    """Gather with constant indices along another axis picks whole slices, channels intact (a
    fused qkv's q = qkv[0], the class token x[:, 0]); along the channel axis it is a barrier."""

    op_types = ("Gather",)
    needs_rank = True

    def follow(self, node, ctx, space, rank):
        indices = ctx.const(node.input[1])
        axis = normalize_axis(int(attrs(node).get("axis", 0)), rank)
        if axis == space.axis or indices is None:
            barrier(node, ctx, "picks channels by index" if axis == space.axis else
                    "picks slices by run-time indices")
            return
        moved = space.axis if space.axis < axis else space.axis - 1 + np.ndim(indices)
        ctx.set_space(node.output[0], space.on_axis(moved))


class PadRule(Rule):
    """Pad leaves channels alone unless it pads the channel axis; a non-zero fill dirties."""

    op_types = ("Pad",)

    def follow(self, node, ctx, space, rank):
        pads = ints_from(node, ctx, "pads", 1)
        if pads is None or rank is None:
            barrier(node, ctx, "pads by run-time amounts")
            return
        axes = ints_from(node, ctx, "axes", 3) if input_at(node, 3) else list(range(rank))
        axes = [normalize_axis(a, rank) for a in axes]
        if space.axis in axes:
            k = axes.index(space.axis)
            if pads[k] or pads[k + len(axes)]:
                barrier(node, ctx, "pads the channel axis")
                return
        a = attrs(node)
        fill = a.get("value", 0.0)
        if input_at(node, 2):
            value = ctx.const(node.input[2])
            fill = None if value is None else float(np.asarray(value).reshape(-1)[0])
        constant_mode = a.get("mode", b"constant") in (b"constant", "constant")
        dirt = "pads with a non-zero value" if constant_mode and fill != 0 else None
        pass_through(node, ctx, space, dirt=dirt)


class ResizeRule(Rule):
    """Resize/Upsample interpolate within each channel; the channel scale must be 1."""

    op_types = ("Resize", "Upsample")

    def follow(self, node, ctx, space, rank):
        in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
        if in_shape is None or out_shape is None or not isinstance(out_shape[space.axis], int):
            barrier(node, ctx, "has shapes unknown before run time")
            return
        if out_shape[space.axis] != in_shape[space.axis]:
            barrier(node, ctx, "resizes the channel axis")
            return
        if len(node.input) > 3 and node.input[3]:
            barrier(node, ctx, "gives explicit output sizes; use scales")
            return
        a = attrs(node)
        crops = a.get("coordinate_transformation_mode") in (b"tf_crop_and_resize",
                                                             "tf_crop_and_resize")
        dirt = "fills outside its crop box with a non-zero value" if crops and \
            float(a.get("extrapolation_value", 0.0)) != 0 else None
        pass_through(node, ctx, space, dirt=dirt)


class ShapeOnlyRule(Rule):
    """Shape/Size read only the shape, which shrinking changes consistently at run time."""

    op_types = ("Shape", "Size", "Constant", "ConstantOfShape")

    def trace(self, node, ctx):
        for name in node.input:
            ctx.space(name)


class DepthToSpaceRule(Rule):
    """DepthToSpace / SpaceToDepth move blocks of r*r channels into space and back.

    DepthToSpace: output channel c interleaves r*r input channels (DCR: c + k*C_out, CRD:
    c*r*r + k), so those input channels are tied into one channel. SpaceToDepth: input channel
    c reappears at c + k*C for k in 0..r*r-1, each a copy of the same channel.
    """

    op_types = ("DepthToSpace", "SpaceToDepth")

    def follow(self, node, ctx, space, rank):
        if space.axis != 1:
            barrier(node, ctx, "moves axis 1 but the channels are elsewhere")
            return
        a = attrs(node)
        area = int(a["blocksize"]) ** 2
        if node.op_type == "SpaceToDepth":
            ctx.set_space(node.output[0], Space(1, np.tile(space.slots, area),
                                                np.tile(space.dirt, area)))
            return
        if space.size % area:
            barrier(node, ctx, f"has {space.size} channels, not a multiple of blocksize^2")
            return
        crd = a.get("mode", b"DCR") in (b"CRD", "CRD")
        grid = space.slots.reshape(-1, area) if crd else space.slots.reshape(area, -1).T
        dirt = space.dirt.reshape(-1, area) if crd else space.dirt.reshape(area, -1).T
        ctx.forest.union(np.repeat(grid[:, 0], area), grid.reshape(-1))
        ctx.set_space(node.output[0], Space(1, grid[:, 0].copy(), _first_dirt(dirt)))


def _first_dirt(dirt: np.ndarray) -> np.ndarray:
    """Per row, the first non-clean reason (0 if the whole row is clean)."""
    dirty = dirt != 0
    first = np.argmax(dirty, axis=1)
    return np.where(dirty.any(axis=1), dirt[np.arange(dirt.shape[0]), first], 0).astype(np.int32)
