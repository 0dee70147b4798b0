"""Count the :class:`~edgeagent.devices.workload.Workload` of an ncnn ``.param`` graph.

ncnn's ``benchmark/README.md`` has the most complete set of published Raspberry Pi timings (every
Pi from the 3B+ to the 5, 1 and 4 threads, some 30 models), and the graphs it timed are the
``.param`` files next to it. Counting those graphs with the same rules as our ONNX counter
(:mod:`edgeagent.models.workload_onnx`) turns each published timing into one equation of the
device speed model: milliseconds = Σ work per class × cost per class.

The text format (``src/net.cpp``)::

    7767517
    <layer count> <blob count>
    <type> <name> <n bottoms> <n tops> <bottoms...> <tops...> <k=v ...>

A value is an int or a float; a key ``-23300 - k`` is an array ``n,v1,...,vn``. Output shapes come
from the ``-23330`` hints (see :mod:`edgeagent.devices.ncnn_shapes`, which also infers them for
the files that have none). Class rules (the module doc of :mod:`edgeagent.devices.workload`):

- ``Convolution`` (``0`` outputs, ``1``/``11`` kernel w/h, ``6`` weight count): MACs = weights ×
  output h × w; 1×1 kernel → pointwise, else conv. ``ConvolutionDepthWise`` with ``7`` group > 1
  → depthwise. ``Deconvolution*`` likewise, with the input's h × w;
- ``InnerProduct``: one input vector → ``fc_mweights`` (weights read); rows of a 2-D input →
  pointwise; ``Gemm`` and ``MultiHeadAttention`` (ViT) are matrix products too;
- ``Input``, ``Split``, ``Noop``, ``MemoryData``, ``Reshape``, ``Flatten``: free (not nodes);
- every other layer: its output elements, and one node; types outside :data:`ELEMENTWISE_TYPES`
  (detection post-processing) are also listed in ``unknown_ops``.

A ``8=`` int8 scale term on a convolution or fully connected layer marks the graph int8.

Errors: :class:`NcnnParamError` (a :class:`ValueError`) naming the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .ncnn_shapes import (
    SHAPE_PRESERVING,
    ParamValue,
    Shape,
    hinted_shapes,
    infer_shapes,
)
from .workload import Precision, Workload

__all__ = [
    "ELEMENTWISE_TYPES",
    "FREE_TYPES",
    "Layer",
    "NcnnParamError",
    "ParamCount",
    "count_param",
    "parse_param",
    "workload_from_param",
]

MAGIC = "7767517"
MAX_LAYERS = 100_000
"""A bound on the layers read: the biggest benchmark graph has a few hundred."""

FREE_TYPES = frozenset({"Input", "Split", "Noop", "MemoryData", "Reshape", "Flatten"})
"""Layers that do no work worth a node: graph plumbing, constants and views."""

ELEMENTWISE_TYPES = (SHAPE_PRESERVING - FREE_TYPES) | frozenset(
    {"BinaryOp", "Eltwise", "Concat", "Pooling", "Padding", "Interp", "Permute", "Crop", "Slice",
     "Reduction", "Softmax", "Packing", "Cast", "Quantize", "Dequantize", "Requantize"}
)  # fmt: skip
"""Layer types counted as elementwise with confidence (their cost is their output)."""

_CONV_TYPES = ("Convolution", "ConvolutionDepthWise")
_DECONV_TYPES = ("Deconvolution", "DeconvolutionDepthWise")
_INT8_SCALE_TYPES = frozenset({*_CONV_TYPES, *_DECONV_TYPES, "InnerProduct"})


class NcnnParamError(ValueError):
    """A ``.param`` text is malformed; the message names the line."""


@dataclass(frozen=True)
class Layer:
    """One layer line of a ``.param`` file."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Mapping[int, ParamValue]
    line: int

    def int_param(self, key: int, default: int) -> int:
        """An integer parameter (``default`` when absent or an array)."""
        value = self.params.get(key, default)
        return int(value) if isinstance(value, int | float) else default


@dataclass(frozen=True)
class ParamCount:
    """A counted graph: the workload, and which layers had to do without a shape hint."""

    workload: Workload
    inferred: tuple[str, ...] = ()
    """Layers without a ``-23330`` hint whose output shape was inferred."""
    unknown_shape: tuple[str, ...] = ()
    """Layers whose output shape is neither hinted nor inferable: their work is not counted."""


def _number(text: str, line: int) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise NcnnParamError(f"line {line}: {text!r} is not a number") from None


def _parse_params(items: Sequence[str], line: int) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for item in items:
        key_text, sep, value_text = item.partition("=")
        try:
            key = int(key_text)
        except ValueError:
            key = None
        if not sep or key is None:
            raise NcnnParamError(f"line {line}: parameter {item!r} is not <int>=<value>")
        if key <= -23300:
            values = [_number(v, line) for v in value_text.split(",")]
            if not values or values[0] != len(values) - 1:
                raise NcnnParamError(
                    f"line {line}: array parameter {key} says {values[0] if values else 0} values "
                    f"and has {max(len(values) - 1, 0)}"
                )
            params[key] = tuple(values[1:])
        else:
            params[key] = _number(value_text, line)
    return params


def parse_param(text: str) -> list[Layer]:
    """Parse a ``.param`` text (the plain-text form, not ``.param.bin``) into its layers."""
    lines = [(i + 1, raw.split()) for i, raw in enumerate(text.splitlines())]
    lines = [(i, words) for i, words in lines if words]
    if not lines or lines[0][1] != [MAGIC]:
        where = lines[0][0] if lines else 1
        raise NcnnParamError(f"line {where}: expected the ncnn magic {MAGIC} on the first line")
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(w.isdigit() for w in lines[1][1]):
        raise NcnnParamError(f"line {lines[1][0] if len(lines) > 1 else 2}: expected "
                             "'<layer count> <blob count>'")  # fmt: skip
    declared = int(lines[1][1][0])
    if declared > MAX_LAYERS:
        raise NcnnParamError(f"line {lines[1][0]}: {declared} layers (at most {MAX_LAYERS})")
    body = lines[2:]
    if len(body) < declared:
        raise NcnnParamError(
            f"line {lines[1][0]}: the header declares {declared} layers, the file has {len(body)}"
        )
    # Lines past the declared count are ignored, as ncnn's loader does (two benchmark files end
    # with an uncounted ``Noop Output`` line).
    return [_parse_layer(words, line) for line, words in body[:declared]]


def _parse_layer(words: list[str], line: int) -> Layer:
    if len(words) < 4 or not words[2].isdigit() or not words[3].isdigit():
        raise NcnnParamError(f"line {line}: expected '<type> <name> <n bottoms> <n tops> ...'")
    n_in, n_out = int(words[2]), int(words[3])
    if len(words) < 4 + n_in + n_out:
        raise NcnnParamError(f"line {line}: {words[1]} names fewer blobs than {n_in} + {n_out}")
    bottoms = tuple(words[4 : 4 + n_in])
    tops = tuple(words[4 + n_in : 4 + n_in + n_out])
    params = _parse_params(words[4 + n_in + n_out :], line)
    return Layer(words[0], words[1], bottoms, tops, params, line)


@dataclass
class _Tally:
    """Raw counts (MACs, weights, elements) summed while walking the graph."""

    conv: float = 0.0
    pointwise: float = 0.0
    depthwise: float = 0.0
    fc: float = 0.0
    elements: float = 0.0
    nodes: int = 0
    int8: bool = False
    unknown_ops: set[str] = field(default_factory=set)
    inferred: list[str] = field(default_factory=list)
    unknown_shape: list[str] = field(default_factory=list)


def count_param(
    text: str,
    *,
    precision: Precision | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> ParamCount:
    """Count a ``.param`` text at batch 1.

    ``input_shape`` (w, h, c) is used where the ``Input`` layer names no size (benchncnn feeds
    each model a fixed size, e.g. 384×384×3 for ``vision_transformer``). ``precision`` overrides
    the one read from the graph (fp16 is a runtime choice the graph cannot show).
    """
    layers = parse_param(text)
    shapes: dict[str, Shape] = {}
    start = Shape(3, *input_shape) if input_shape is not None else None
    tally = _Tally()
    for layer in layers:
        inputs = [shapes[b] for b in layer.bottoms if b in shapes]
        outs = hinted_shapes(layer.params, len(layer.tops))
        if outs is None:
            complete = len(inputs) == len(layer.bottoms)
            outs = (
                infer_shapes(layer.type, layer.params, inputs, len(layer.tops), start)
                if complete
                else None
            )
            if layer.type not in FREE_TYPES or layer.type == "Input":
                (tally.inferred if outs is not None else tally.unknown_shape).append(layer.name)
        if outs is not None:
            shapes.update(zip(layer.tops, outs, strict=True))
        _count_layer(layer, inputs, outs, tally)
    work = Workload.counted(
        conv=tally.conv,
        pointwise=tally.pointwise,
        depthwise=tally.depthwise,
        fc=tally.fc,
        elements=tally.elements,
        nodes=tally.nodes,
        precision=precision or ("int8" if tally.int8 else "fp32"),
        unknown_ops=tally.unknown_ops,
    )
    return ParamCount(work, tuple(tally.inferred), tuple(tally.unknown_shape))


def workload_from_param(
    text: str,
    *,
    precision: Precision | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Workload:
    """The :class:`Workload` of a ``.param`` text (see :func:`count_param`)."""
    return count_param(text, precision=precision, input_shape=input_shape).workload


def _count_layer(
    layer: Layer, inputs: Sequence[Shape], outs: Sequence[Shape] | None, tally: _Tally
) -> None:
    kind = layer.type
    if kind in FREE_TYPES:
        return
    tally.nodes += 1
    if kind in _INT8_SCALE_TYPES and layer.int_param(8, 0) != 0:
        tally.int8 = True
    out = outs[0] if outs else None
    if kind in _CONV_TYPES or kind in _DECONV_TYPES:
        _count_conv(layer, inputs[0] if inputs else None, out, tally)
    elif kind == "InnerProduct":
        weights = layer.int_param(2, 0)
        rows = inputs[0].h if inputs and inputs[0].dims == 2 else 1
        if rows > 1:
            tally.pointwise += weights * rows
        else:
            tally.fc += weights
    elif kind == "Gemm":
        _count_gemm(layer, inputs, out, tally)
    elif kind == "MultiHeadAttention":
        _count_attention(layer, inputs, tally)
    else:
        if kind not in ELEMENTWISE_TYPES:
            tally.unknown_ops.add(kind)
        tally.elements += sum(s.elements for s in outs) if outs else 0


def _count_conv(layer: Layer, x: Shape | None, out: Shape | None, tally: _Tally) -> None:
    weights = layer.int_param(6, 0)
    deconv = layer.type in _DECONV_TYPES
    spatial = x if deconv else out  # a deconvolution spreads each input pixel over the kernel
    if spatial is None:
        return
    macs = weights * spatial.w * spatial.h
    kw = layer.int_param(1, 0)
    if layer.type.endswith("DepthWise") and layer.int_param(7, 1) > 1:
        tally.depthwise += macs
    elif not deconv and kw == 1 and layer.int_param(11, kw) == 1:
        if spatial.w * spatial.h == 1:  # one position: a matrix-vector product (SE blocks)
            tally.fc += macs
        else:
            tally.pointwise += macs
    else:
        tally.conv += macs


def _count_gemm(layer: Layer, inputs: Sequence[Shape], out: Shape | None, tally: _Tally) -> None:
    if out is None or not inputs:
        return
    a = inputs[0]
    k = layer.int_param(9, 0) or (a.h if layer.int_param(2, 0) else a.w)
    m, n = out.h if out.dims >= 2 else 1, out.w
    if m == 1:
        tally.fc += k * n
    else:
        tally.pointwise += m * k * n


def _count_attention(layer: Layer, inputs: Sequence[Shape], tally: _Tally) -> None:
    """Q, K, V and output projections plus the two attention products: all GEMMs."""
    if len(inputs) < 1:
        return
    q = inputs[0]
    kv = inputs[1] if len(inputs) > 1 else q
    embed, heads = layer.int_param(0, 0), max(layer.int_param(1, 1), 1)
    kdim, vdim = layer.int_param(3, embed), layer.int_param(4, embed)
    seq_q, seq_kv = q.h, kv.h
    projections = seq_q * embed * embed * 2 + seq_kv * (kdim + vdim) * embed
    attention = 2 * seq_q * seq_kv * embed
    tally.pointwise += projections + attention
    tally.elements += heads * seq_q * seq_kv  # the softmax over the attention scores
