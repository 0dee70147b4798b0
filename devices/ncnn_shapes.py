"""Blob shapes of an ncnn graph: the ``-23330`` hints, or inferred where a file has none.

Most of ncnn's benchmark ``.param`` files carry a shape hint on every layer (``-23330=4,3,W,H,C``:
four numbers per output blob, dims then w, h, c), written by ``ncnnoptimize`` for a fixed input.
A few (``blazeface``, ``FastestDet``, ``vision_transformer``) have none, and their published
timings are among the calibration figures, so this module infers shapes for the layer types those
files use, following ncnn's own layer code (``src/layer/*.cpp``). A layer it cannot infer gets no
shape; the counter then reports it instead of guessing.

Pure functions of parsed layers: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

ParamValue = int | float | tuple[int | float, ...]

SHAPE_HINT_KEY = -23330
"""The array parameter that carries output shape hints (id 30, array form ``-23300 - 30``)."""

AUTO = -233
"""ncnn's "not given / infer" marker in integer parameters (Slice sizes, Reshape dims, pads)."""

SHAPE_PRESERVING = frozenset(
    {
        "ReLU", "Sigmoid", "Swish", "HardSwish", "HardSigmoid", "GELU", "TanH", "Clip", "ELU",
        "PReLU", "Mish", "Softmax", "LayerNorm", "BatchNorm", "Scale", "Bias", "LRN", "Dropout",
        "ShuffleChannel", "Split", "Noop", "Exp", "Log", "Power", "UnaryOp", "InstanceNorm",
        "GroupNorm", "Normalize", "Threshold", "Selu", "Erf",
    }
)  # fmt: skip
"""Layer types whose every output has the shape of the first input."""


@dataclass(frozen=True)
class Shape:
    """An ncnn blob shape: ``dims`` (1-3) and w, h, c (1 for the dims a blob does not have)."""

    dims: int
    w: int
    h: int = 1
    c: int = 1

    @property
    def elements(self) -> int:
        """Number of values in the blob."""
        return self.w * self.h * self.c

    def axis_len(self, axis: int) -> int:
        """Length along an ncnn axis (0 is the outermost: c for 3-D, h for 2-D, w for 1-D)."""
        return self._order()[axis]

    def with_axis(self, axis: int, length: int) -> Shape:
        """This shape with one axis (ncnn numbering) set to ``length``."""
        order = list(self._order())
        order[axis] = length
        return _from_order(self.dims, order)

    def _order(self) -> tuple[int, ...]:
        if self.dims == 3:
            return (self.c, self.h, self.w)
        if self.dims == 2:
            return (self.h, self.w)
        return (self.w,)


def _from_order(dims: int, order: Sequence[int]) -> Shape:
    if dims == 3:
        return Shape(3, w=order[2], h=order[1], c=order[0])
    if dims == 2:
        return Shape(2, w=order[1], h=order[0])
    return Shape(1, w=order[0])


def hinted_shapes(params: Mapping[int, ParamValue], n_tops: int) -> tuple[Shape, ...] | None:
    """The output shapes a ``-23330`` hint gives, or None without a (well-formed) hint."""
    hint = params.get(SHAPE_HINT_KEY)
    if not isinstance(hint, tuple) or len(hint) != 4 * n_tops:
        return None
    shapes = []
    for i in range(n_tops):
        dims, w, h, c = (int(v) for v in hint[4 * i : 4 * i + 4])
        if dims < 1 or min(w, h, c) < 1:
            return None
        shapes.append(Shape(dims, w, h if dims >= 2 else 1, c if dims >= 3 else 1))
    return tuple(shapes)


def _int(params: Mapping[int, ParamValue], key: int, default: int) -> int:
    value = params.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _ints(params: Mapping[int, ParamValue], key: int) -> tuple[int, ...]:
    value = params.get(key)
    return tuple(int(v) for v in value) if isinstance(value, tuple) else ()


def infer_shapes(
    layer_type: str,
    params: Mapping[int, ParamValue],
    inputs: Sequence[Shape],
    n_tops: int,
    input_shape: Shape | None,
) -> tuple[Shape, ...] | None:
    """The output shapes of one layer from its inputs' shapes, or None when not inferable."""
    if layer_type == "Input":
        w, h, c = _int(params, 0, 0), _int(params, 1, 0), _int(params, 2, 0)
        if min(w, h, c) > 0:
            return (Shape(3, w, h, c),)
        return (input_shape,) if input_shape is not None else None
    if layer_type == "MemoryData":
        w, h, c = _int(params, 0, 1), _int(params, 1, 0), _int(params, 2, 0)
        dims = 3 if c > 0 else 2 if h > 0 else 1
        return (Shape(dims, w, max(h, 1), max(c, 1)),)
    if not inputs:
        return None
    first = inputs[0]
    if layer_type in SHAPE_PRESERVING:
        return (first,) * n_tops
    one = _infer_one(layer_type, params, inputs)
    if one is not None:
        return (one,)
    if layer_type == "Slice":
        return _slice(params, first, n_tops)
    return None


Params = Mapping[int, ParamValue]
_Rule = Callable[[Params, Sequence[Shape]], "Shape | None"]


def _padding(params: Params, inputs: Sequence[Shape]) -> Shape | None:
    x = inputs[0]
    top, bottom, left, right = (_int(params, k, 0) for k in (0, 1, 2, 3))
    c = x.c + _int(params, 7, 0) + _int(params, 8, 0)
    return Shape(x.dims, x.w + left + right, x.h + top + bottom, c)


def _concat(params: Params, inputs: Sequence[Shape]) -> Shape | None:
    first = inputs[0]
    axis = _int(params, 0, 0)
    axis = axis + first.dims if axis < 0 else axis
    if any(s.dims != first.dims for s in inputs) or not 0 <= axis < first.dims:
        return None
    return first.with_axis(axis, sum(s.axis_len(axis) for s in inputs))


def _interp(params: Params, inputs: Sequence[Shape]) -> Shape | None:
    x = inputs[0]
    out_h, out_w = _int(params, 3, 0), _int(params, 4, 0)
    if out_h <= 0 or out_w <= 0:
        h_scale, w_scale = params.get(1, 1.0), params.get(2, 1.0)
        if not isinstance(h_scale, int | float) or not isinstance(w_scale, int | float):
            return None
        out_h, out_w = int(x.h * h_scale), int(x.w * w_scale)
    return Shape(x.dims, out_w, out_h, x.c)


def _permute(params: Params, inputs: Sequence[Shape]) -> Shape | None:
    x, order = inputs[0], _int(params, 0, 0)
    if x.dims == 2 and order == 1:
        return Shape(2, w=x.h, h=x.w)
    return x if order == 0 else None


def _inner_product(params: Params, inputs: Sequence[Shape]) -> Shape | None:
    x, out = inputs[0], _int(params, 0, 0)
    return Shape(2, out, x.h) if x.dims == 2 and x.h > 1 else Shape(1, out)


_RULES: dict[str, _Rule] = {
    "Convolution": lambda p, xs: _conv(p, xs[0]) if xs[0].dims == 3 else None,
    "ConvolutionDepthWise": lambda p, xs: _conv(p, xs[0]) if xs[0].dims == 3 else None,
    "Pooling": lambda p, xs: _pooling(p, xs[0]) if xs[0].dims == 3 else None,
    "Padding": _padding,
    "BinaryOp": lambda p, xs: max(xs, key=lambda s: (s.elements, s.dims)),  # broadcast
    "Eltwise": lambda p, xs: max(xs, key=lambda s: (s.elements, s.dims)),
    "Concat": _concat,
    "Interp": _interp,
    "Reshape": lambda p, xs: _reshape(p, xs[0]),
    "Permute": _permute,
    "Crop": lambda p, xs: _crop(p, xs[0]),
    "Flatten": lambda p, xs: Shape(1, xs[0].elements),
    "InnerProduct": _inner_product,
    "Gemm": lambda p, xs: _gemm(p, xs),
    "MultiHeadAttention": lambda p, xs: xs[0],  # the output has the query's shape
}
"""One-output layer types whose output shape follows from their inputs and parameters."""


def _infer_one(layer_type: str, params: Params, inputs: Sequence[Shape]) -> Shape | None:
    rule = _RULES.get(layer_type)
    return rule(params, inputs) if rule is not None else None


def conv_padding(params: Mapping[int, ParamValue]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a Convolution/Pooling-style layer (4, 15, 14, 16)."""
    left = _int(params, 4, 0)
    top = _int(params, 14, left)
    return left, _int(params, 15, left), top, _int(params, 16, top)


def _conv(params: Mapping[int, ParamValue], x: Shape) -> Shape | None:
    out_c, kw = _int(params, 0, 0), _int(params, 1, 0)
    kh = _int(params, 11, kw)
    dw = _int(params, 2, 1)
    dh, sw = _int(params, 12, dw), _int(params, 3, 1)
    sh = _int(params, 13, sw)
    left, right, top, bottom = conv_padding(params)
    if left in (AUTO, AUTO - 1):  # SAME_UPPER / SAME_LOWER: output is ceil(input / stride)
        return Shape(3, -(-x.w // sw), -(-x.h // sh), out_c)
    if min(out_c, kw, kh, sw, sh) < 1:
        return None
    out_w = (x.w + left + right - (dw * (kw - 1) + 1)) // sw + 1
    out_h = (x.h + top + bottom - (dh * (kh - 1) + 1)) // sh + 1
    return Shape(3, out_w, out_h, out_c) if out_w > 0 and out_h > 0 else None


def _pooling(params: Mapping[int, ParamValue], x: Shape) -> Shape | None:
    if _int(params, 4, 0):  # global pooling: one value per channel
        return Shape(1, x.c)
    if _int(params, 7, 0):  # adaptive pooling to a fixed output
        out_w = _int(params, 8, 0)
        return Shape(3, out_w, _int(params, 18, out_w), x.c)
    kw, sw = _int(params, 1, 0), _int(params, 2, 1)
    kh, sh = _int(params, 11, kw), _int(params, 12, sw)
    left = _int(params, 3, 0)
    top, right = _int(params, 13, left), _int(params, 14, left)
    bottom, mode = _int(params, 15, top), _int(params, 5, 0)
    if min(kw, kh, sw, sh) < 1:
        return None
    if mode == 0:  # "full" padding: ncnn pads the tail so the last window fits
        tail_w, tail_h = (x.w + left + right - kw) % sw, (x.h + top + bottom - kh) % sh
        right += sw - tail_w if tail_w else 0
        bottom += sh - tail_h if tail_h else 0
    elif mode in (2, 3):  # SAME_UPPER / SAME_LOWER
        return Shape(3, -(-x.w // sw), -(-x.h // sh), x.c)
    out_w = (x.w + left + right - kw) // sw + 1
    out_h = (x.h + top + bottom - kh) // sh + 1
    return Shape(3, out_w, out_h, x.c) if out_w > 0 and out_h > 0 else None


def _slice(params: Mapping[int, ParamValue], x: Shape, n_tops: int) -> tuple[Shape, ...] | None:
    sizes, axis = _ints(params, -23300), _int(params, 1, 0)
    axis = axis + x.dims if axis < 0 else axis
    if len(sizes) != n_tops or not 0 <= axis < x.dims:
        return None
    total = x.axis_len(axis)
    fixed = sum(s for s in sizes if s != AUTO)
    auto = sum(1 for s in sizes if s == AUTO)
    share = (total - fixed) // auto if auto else 0
    return tuple(x.with_axis(axis, share if s == AUTO else s) for s in sizes)


def _reshape(params: Mapping[int, ParamValue], x: Shape) -> Shape | None:
    w, h, c = _int(params, 0, AUTO), _int(params, 1, AUTO), _int(params, 2, AUTO)
    dims = 3 if c != AUTO else 2 if h != AUTO else 1
    sizes = ((w, x.w), (h, x.h), (c, x.c))[:dims]
    given = [old if v == 0 else v for v, old in sizes]  # 0: keep the input's size
    known = 1
    for v in given:
        known *= v if v > 0 else 1
    if known <= 0 or x.elements % known:
        return None
    filled = [x.elements // known if v == -1 else v for v in given]
    if min(filled) < 1:
        return None
    return Shape(dims, *filled)


def _crop(params: Mapping[int, ParamValue], x: Shape) -> Shape | None:
    starts, ends, axes = _ints(params, -23309), _ints(params, -23310), _ints(params, -23311)
    if not starts or len(starts) != len(ends):
        return None
    axes = axes or tuple(range(len(starts)))
    out = x
    for start, end, axis in zip(starts, ends, axes, strict=False):
        axis = axis + x.dims if axis < 0 else axis
        if not 0 <= axis < x.dims:
            return None
        length = x.axis_len(axis)
        stop = length + end if end < 0 else min(end, length)
        out = out.with_axis(axis, max(stop - start, 0))
    return out


def _gemm(params: Mapping[int, ParamValue], inputs: Sequence[Shape]) -> Shape | None:
    a = inputs[0]
    if a.dims != 2 and a.dims != 1:
        return None
    m = a.w if _int(params, 2, 0) else a.h
    n = _int(params, 8, 0)
    if n <= 0 and len(inputs) > 1:
        b = inputs[1]
        n = b.h if _int(params, 3, 0) else b.w
    return Shape(2, n, m) if n > 0 else None
