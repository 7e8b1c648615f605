"""Convert dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``)
into an ONNX graph, using only numpy and the ``onnx`` package.

The dlib file is the serialization of the network type used by dlib's
``dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2,
        input_rgb_image_sized<150>>>>>>>>>>>>>

where every residual block is ``relu(add_prev(shortcut, affine(con(relu(affine(con(x)))))))``
and the down-sampling blocks use a 2x2/2 average pool of ``x`` as the shortcut.

Serialization layout (dlib/dnn/core.h): the loss layer comes first (version 1, then
its details), then each layer wraps the one below it: an ``add_layer`` writes its
version (2), the whole subnetwork, its own details, then bookkeeping (three bools
and three empty gradient tensors). Tag and skip layers write a bare version int 1
followed by their subnetwork and nothing else, so tag/skip identity is *not* in
the file; it is recovered from the known block pattern. The bottom layer
(version 3) writes the input layer, its details, the bookkeeping and the sample
expansion factor.

The ONNX graph takes already-normalised NCHW RGB input,
``(pixel - INPUT_MEAN_RGB) * INPUT_SCALE``, and outputs the raw (not L2-normalised)
128-d fc output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.dlib_format import DlibFormatError, DlibReader

__all__ = [
    "EMBEDDING_DIM",
    "EXPECTED_FILE_SIZE",
    "INPUT_MEAN_RGB",
    "INPUT_SCALE",
    "INPUT_SIZE",
    "ONNX_IR_VERSION",
    "ONNX_OPSET",
    "AffineSpec",
    "ConvSpec",
    "LossSpec",
    "PoolSpec",
    "ResNetSpec",
    "ResidualBlockSpec",
    "build_onnx",
    "convert_resnet",
    "parse_resnet",
]

logger = logging.getLogger(__name__)

INPUT_SIZE = 150
INPUT_MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
INPUT_SCALE = 1.0 / 256.0
EMBEDDING_DIM = 128
EXPECTED_FILE_SIZE = 22_466_066

ONNX_IR_VERSION = 8
ONNX_OPSET = 17
PRODUCER_NAME = "facepay"
PRODUCER_VERSION = "1"
GRAPH_NAME = "dlib_face_recognition_resnet_v1"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"

ProgressCallback = Callable[[int, int], None]
FloatArray = npt.NDArray[np.float32]
_T = TypeVar("_T")
_AttrValue = int | str | list[int]

# Guard against absurd nesting in corrupt files (the real network has 130 wrappers).
_MAX_WRAPPERS = 10_000

_VERSION_TAG_OR_SKIP = 1
_VERSION_ADD_LAYER = 2
_VERSION_INPUT_ADD_LAYER = 3
_VERSION_LOSS_LAYER = 1

# dlib enums
_AFFINE_CONV_MODE = 0
_FC_NO_BIAS = 1


# --------------------------------------------------------------------------- spec


def _frozen(array: npt.NDArray[np.floating], dtype: type[np.float32] = np.float32) -> FloatArray:
    out = np.ascontiguousarray(array, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """A dlib ``con_`` layer: cross-correlation, weights in ONNX OIHW order."""

    weight: FloatArray  # (out_channels, in_channels, kh, kw)
    bias: FloatArray  # (out_channels,)
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        kh, kw = self.kernel
        return (
            (size[0] + 2 * self.padding[0] - kh) // self.stride[0] + 1,
            (size[1] + 2 * self.padding[1] - kw) // self.stride[1] + 1,
        )


@dataclass(frozen=True, eq=False)
class AffineSpec:
    """A dlib ``affine_`` layer in conv mode: ``y = gamma[c] * x + beta[c]``."""

    gamma: FloatArray  # (channels,)
    beta: FloatArray  # (channels,)


@dataclass(frozen=True)
class PoolSpec:
    """A dlib ``max_pool_``/``avg_pool_``; kernel (0, 0) means a global pool."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.kernel == (0, 0)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.is_global:
            return (1, 1)
        return (
            (size[0] + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
            (size[1] + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1,
        )


@dataclass(frozen=True, eq=False)
class ResidualBlockSpec:
    """``relu(shortcut(x) + affine2(conv2(relu(affine1(conv1(x))))))``.

    ``shortcut`` is the identity, or (down-sampling blocks) an average pool of ``x``.
    Mismatched shapes are zero-padded at the end of each dimension before adding.
    """

    conv1: ConvSpec
    affine1: AffineSpec
    conv2: ConvSpec
    affine2: AffineSpec
    shortcut_pool: PoolSpec | None


@dataclass(frozen=True)
class LossSpec:
    """``loss_metric_`` parameters (training only; recorded for completeness)."""

    margin: float
    distance_threshold: float


@dataclass(frozen=True, eq=False)
class ResNetSpec:
    """Typed description of the parsed dlib face-recognition ResNet."""

    input_size: tuple[int, int]
    input_mean_rgb: tuple[float, float, float]
    stem_conv: ConvSpec
    stem_affine: AffineSpec
    stem_pool: PoolSpec
    blocks: tuple[ResidualBlockSpec, ...]
    head_pool: PoolSpec
    fc_weight: FloatArray  # (inputs, outputs): y = x @ fc_weight
    loss: LossSpec
    num_layers: int  # dlib computational layers (add_layer) in the file

    @property
    def embedding_dim(self) -> int:
        return int(self.fc_weight.shape[1])


# ------------------------------------------------------------- raw layer records


@dataclass(frozen=True)
class _Marker:
    """A tag or skip layer (indistinguishable in the file)."""


@dataclass(frozen=True)
class _Relu:
    pass


@dataclass(frozen=True)
class _AddPrev:
    pass


@dataclass(frozen=True)
class _MaxPool:
    pool: PoolSpec


@dataclass(frozen=True)
class _AvgPool:
    pool: PoolSpec


@dataclass(frozen=True, eq=False)
class _Fc:
    weight: FloatArray


@dataclass(frozen=True)
class _Input:
    mean_rgb: tuple[float, float, float]
    size: tuple[int, int]


_Layer = ConvSpec | AffineSpec | _Relu | _AddPrev | _MaxPool | _AvgPool | _Fc


# ----------------------------------------------------------------------- parsing


def _read_loss(reader: DlibReader) -> LossSpec:
    reader.expect_string("loss_metric_2")
    margin = reader.read_float()
    threshold = reader.read_float()
    return LossSpec(margin=margin, distance_threshold=threshold)


def _read_input_layer(reader: DlibReader) -> _Input:
    start = reader.pos
    name = reader.read_string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"unsupported input layer {name!r} at offset {start}")
    mean = (reader.read_float(), reader.read_float(), reader.read_float())
    rows = reader.read_int(1, 1 << 16)
    cols = reader.read_int(1, 1 << 16)
    return _Input(mean_rgb=mean, size=(rows, cols))


def _read_con(reader: DlibReader, start: int) -> ConvSpec:
    params = reader.read_tensor()
    num_filters = reader.read_int(1, 1 << 20)
    nr = reader.read_int(1, 1 << 10)
    nc = reader.read_int(1, 1 << 10)
    stride = (reader.read_int(1, 1 << 10), reader.read_int(1, 1 << 10))
    padding = (reader.read_int(0, 1 << 10), reader.read_int(0, 1 << 10))
    filters = reader.read_alias_tensor()
    biases = reader.read_alias_tensor()
    for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
        reader.read_float()
    if (filters.n, filters.nr, filters.nc) != (num_filters, nr, nc):
        raise DlibFormatError(f"con_ at {start}: filter shape {filters} does not match header")
    if biases.size not in (0, num_filters):
        raise DlibFormatError(f"con_ at {start}: bias shape {biases} does not match filters")
    if params.size != filters.size + biases.size:
        raise DlibFormatError(
            f"con_ at {start}: {params.size} parameters, expected {filters.size + biases.size}"
        )
    flat = params.reshape(-1)
    weight = flat[: filters.size].reshape(filters.n, filters.k, filters.nr, filters.nc)
    bias = flat[filters.size :] if biases.size else np.zeros(num_filters, dtype=np.float32)
    return ConvSpec(weight=_frozen(weight), bias=_frozen(bias), stride=stride, padding=padding)


def _read_affine(reader: DlibReader, start: int) -> AffineSpec:
    params = reader.read_tensor()
    gamma_shape = reader.read_alias_tensor()
    beta_shape = reader.read_alias_tensor()
    mode = reader.read_int()
    if mode != _AFFINE_CONV_MODE:
        raise DlibFormatError(f"affine_ at {start}: unsupported mode {mode} (want conv mode)")
    channels = gamma_shape.size
    if beta_shape.size != channels or params.size != 2 * channels:
        raise DlibFormatError(f"affine_ at {start}: inconsistent shapes")
    flat = params.reshape(-1)
    return AffineSpec(gamma=_frozen(flat[:channels]), beta=_frozen(flat[channels:]))


def _read_pool_fields(reader: DlibReader) -> PoolSpec:
    kernel = (reader.read_int(0, 1 << 10), reader.read_int(0, 1 << 10))
    stride = (reader.read_int(1, 1 << 10), reader.read_int(1, 1 << 10))
    padding = (reader.read_int(0, 1 << 10), reader.read_int(0, 1 << 10))
    return PoolSpec(kernel=kernel, stride=stride, padding=padding)


def _read_fc(reader: DlibReader, start: int) -> _Fc:
    num_outputs = reader.read_int(1, 1 << 20)
    num_inputs = reader.read_int(1, 1 << 20)
    params = reader.read_tensor()
    weights = reader.read_alias_tensor()
    biases = reader.read_alias_tensor()
    bias_mode = reader.read_int()
    for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
        reader.read_float()
    if bias_mode != _FC_NO_BIAS or biases.size != 0:
        raise DlibFormatError(f"fc_ at {start}: only fc_no_bias is supported")
    if (weights.n, weights.k * weights.nr * weights.nc) != (num_inputs, num_outputs):
        raise DlibFormatError(f"fc_ at {start}: weight shape {weights} does not match header")
    if params.size != num_inputs * num_outputs:
        raise DlibFormatError(f"fc_ at {start}: parameter count {params.size} is wrong")
    return _Fc(weight=_frozen(params.reshape(num_inputs, num_outputs)))


def _read_layer_details(reader: DlibReader) -> _Layer:
    start = reader.pos
    name = reader.read_string()
    if name == "con_4":
        return _read_con(reader, start)
    if name == "affine_":
        return _read_affine(reader, start)
    if name == "relu_":
        return _Relu()
    if name == "add_prev_":
        return _AddPrev()
    if name == "max_pool_2":
        return _MaxPool(_read_pool_fields(reader))
    if name == "avg_pool_2":
        return _AvgPool(_read_pool_fields(reader))
    if name == "fc_2":
        return _read_fc(reader, start)
    raise DlibFormatError(f"unsupported layer type {name!r} at offset {start}")


def _read_bookkeeping(reader: DlibReader) -> None:
    """Skip add_layer state: three bools and three (normally empty) gradient tensors."""
    for _ in range(3):
        reader.read_bool()
    for _ in range(3):
        start = reader.pos
        grad = reader.read_tensor()
        if grad.size:
            logger.debug("non-empty bookkeeping tensor %s at offset %d", grad.shape, start)


def _read_flat_network(
    reader: DlibReader, on_progress: ProgressCallback | None
) -> tuple[LossSpec, _Input, list[_Layer | _Marker], int]:
    """Read the whole file into a list of layers in execution (input-to-output) order."""
    reader.expect_int(_VERSION_LOSS_LAYER, "add_loss_layer version")
    loss = _read_loss(reader)

    wrappers: list[int] = []  # outermost first
    while True:
        start = reader.pos
        version = reader.read_int()
        if version == _VERSION_INPUT_ADD_LAYER:
            break
        if version not in (_VERSION_TAG_OR_SKIP, _VERSION_ADD_LAYER):
            raise DlibFormatError(f"unexpected layer version {version} at offset {start}")
        wrappers.append(version)
        if len(wrappers) > _MAX_WRAPPERS:
            raise DlibFormatError("layer nesting too deep")

    num_layers = 1 + sum(1 for v in wrappers if v == _VERSION_ADD_LAYER)
    done = 0

    input_layer = _read_input_layer(reader)
    layers: list[_Layer | _Marker] = [_read_layer_details(reader)]
    _read_bookkeeping(reader)
    reader.read_int(1, 1 << 20)  # sample expansion factor
    done += 1
    if on_progress is not None:
        on_progress(done, num_layers)

    for version in reversed(wrappers):
        if version == _VERSION_TAG_OR_SKIP:
            layers.append(_Marker())
            continue
        layers.append(_read_layer_details(reader))
        _read_bookkeeping(reader)
        done += 1
        if on_progress is not None:
            on_progress(done, num_layers)

    # add_loss_layer writes nothing after its subnetwork.
    reader.expect_end()
    return loss, input_layer, layers, num_layers


class _LayerStream:
    """Cursor over the flat layer list with typed 'expect' helpers."""

    def __init__(self, layers: list[_Layer | _Marker]) -> None:
        self._layers = layers
        self._index = 0

    def peek(self, offset: int = 0) -> _Layer | _Marker | None:
        index = self._index + offset
        return self._layers[index] if index < len(self._layers) else None

    def done(self) -> bool:
        return self._index >= len(self._layers)

    def _next(self, what: str) -> _Layer | _Marker:
        if self.done():
            raise DlibFormatError(f"network ends early: expected {what}")
        layer = self._layers[self._index]
        self._index += 1
        return layer

    def expect(self, kind: type[_T], what: str) -> _T:
        layer = self._next(what)
        if not isinstance(layer, kind):
            raise DlibFormatError(
                f"layer {self._index - 1}: expected {what}, found {type(layer).__name__}"
            )
        return layer


def _assemble(
    loss: LossSpec, input_layer: _Input, layers: list[_Layer | _Marker], num_layers: int
) -> ResNetSpec:
    """Recover the residual topology from the execution-order layer list.

    Block patterns (execution order; M = tag/skip marker):
      identity block:   M(tag1) con affine relu con affine add_prev relu
      down block:       M(tag1) con affine relu con affine M(tag2) M(skip1) avg_pool
                        add_prev relu
    """
    stream = _LayerStream(layers)
    stem_conv = stream.expect(ConvSpec, "stem con")
    stem_affine = stream.expect(AffineSpec, "stem affine")
    stream.expect(_Relu, "stem relu")
    stem_pool = stream.expect(_MaxPool, "stem max_pool").pool

    blocks: list[ResidualBlockSpec] = []
    while isinstance(stream.peek(), _Marker):
        stream.expect(_Marker, "block tag")
        conv1 = stream.expect(ConvSpec, "block con 1")
        affine1 = stream.expect(AffineSpec, "block affine 1")
        stream.expect(_Relu, "block relu")
        conv2 = stream.expect(ConvSpec, "block con 2")
        affine2 = stream.expect(AffineSpec, "block affine 2")
        shortcut: PoolSpec | None = None
        if isinstance(stream.peek(), _Marker):
            stream.expect(_Marker, "down block tag")
            stream.expect(_Marker, "down block skip")
            shortcut = stream.expect(_AvgPool, "down block shortcut avg_pool").pool
        stream.expect(_AddPrev, "block add_prev")
        stream.expect(_Relu, "block output relu")
        blocks.append(
            ResidualBlockSpec(
                conv1=conv1,
                affine1=affine1,
                conv2=conv2,
                affine2=affine2,
                shortcut_pool=shortcut,
            )
        )

    head_pool = stream.expect(_AvgPool, "global avg_pool").pool
    if not head_pool.is_global:
        raise DlibFormatError("expected a global average pool before the fc layer")
    fc = stream.expect(_Fc, "fc")
    if not stream.done():
        raise DlibFormatError("unexpected layers after the fc layer")

    spec = ResNetSpec(
        input_size=input_layer.size,
        input_mean_rgb=input_layer.mean_rgb,
        stem_conv=stem_conv,
        stem_affine=stem_affine,
        stem_pool=stem_pool,
        blocks=tuple(blocks),
        head_pool=head_pool,
        fc_weight=fc.weight,
        loss=loss,
        num_layers=num_layers,
    )
    _check_shapes(spec)
    return spec


def _check_shapes(spec: ResNetSpec) -> None:
    """Validate channel counts through the network (raises DlibFormatError)."""
    channels = 3
    size = spec.input_size

    def conv_affine(conv: ConvSpec, affine: AffineSpec, where: str) -> None:
        nonlocal channels, size
        if conv.in_channels != channels:
            raise DlibFormatError(
                f"{where}: conv expects {conv.in_channels} channels, has {channels}"
            )
        if affine.gamma.shape != (conv.out_channels,):
            raise DlibFormatError(f"{where}: affine size does not match conv filters")
        channels = conv.out_channels
        size = conv.output_size(size)

    conv_affine(spec.stem_conv, spec.stem_affine, "stem")
    size = spec.stem_pool.output_size(size)
    for index, block in enumerate(spec.blocks):
        in_channels, in_size = channels, size
        conv_affine(block.conv1, block.affine1, f"block {index}")
        conv_affine(block.conv2, block.affine2, f"block {index}")
        short_size = (
            in_size if block.shortcut_pool is None else block.shortcut_pool.output_size(in_size)
        )
        channels = max(channels, in_channels)
        size = (max(size[0], short_size[0]), max(size[1], short_size[1]))
        if min(size) < 1:
            raise DlibFormatError(f"block {index}: empty output")
    if spec.fc_weight.shape[0] != channels:
        raise DlibFormatError(
            f"fc expects {spec.fc_weight.shape[0]} inputs, network gives {channels}"
        )


def parse_resnet(data: bytes, on_progress: ProgressCallback | None = None) -> ResNetSpec:
    """Parse a dlib face-recognition ResNet file; every byte must be consumed."""
    reader = DlibReader(data)
    loss, input_layer, layers, num_layers = _read_flat_network(reader, on_progress)
    spec = _assemble(loss, input_layer, layers, num_layers)
    logger.debug(
        "parsed dlib ResNet: %d layers, %d residual blocks, %d bytes",
        num_layers,
        len(spec.blocks),
        len(data),
    )
    return spec


# ---------------------------------------------------------------------- building


def _fold(conv: ConvSpec, affine: AffineSpec) -> tuple[FloatArray, FloatArray]:
    """Fold ``gamma * conv(x) + beta`` into the conv's weights and bias."""
    gamma = affine.gamma.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma[:, None, None, None]
    bias = conv.bias.astype(np.float64) * gamma + affine.beta.astype(np.float64)
    return weight.astype(np.float32), bias.astype(np.float32)


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, array: npt.NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: _AttrValue) -> str:
        node = helper.make_node(op, inputs, [output], name=f"{output}/{op}")
        node.attribute.extend(helper.make_attribute(key, attrs[key]) for key in sorted(attrs))
        self.nodes.append(node)
        return output

    def conv(
        self,
        x: str,
        conv: ConvSpec,
        affine: AffineSpec,
        prefix: str,
    ) -> str:
        weight, bias = _fold(conv, affine)
        kh, kw = conv.kernel
        pad_h, pad_w = conv.padding
        return self.node(
            "Conv",
            [x, self.constant(f"{prefix}.weight", weight), self.constant(f"{prefix}.bias", bias)],
            prefix,
            kernel_shape=[kh, kw],
            strides=list(conv.stride),
            pads=[pad_h, pad_w, pad_h, pad_w],
            dilations=[1, 1],
            group=1,
        )

    def pool_as_conv(
        self, x: str, in_channels: int, out_channels: int, pool: PoolSpec, name: str
    ) -> str:
        """Unpadded average pool whose output has extra all-zero channels at the end."""
        kh, kw = pool.kernel
        weight = np.zeros((out_channels, in_channels, kh, kw), dtype=np.float32)
        weight[np.arange(in_channels), np.arange(in_channels)] = 1.0 / (kh * kw)
        return self.node(
            "Conv",
            [x, self.constant(f"{name}.weight", weight)],
            name,
            kernel_shape=[kh, kw],
            strides=list(pool.stride),
            pads=[0, 0, 0, 0],
            dilations=[1, 1],
            group=1,
        )

    def pad_end(self, x: str, pad_c: int, pad_h: int, pad_w: int, name: str) -> str:
        if pad_c == pad_h == pad_w == 0:
            return x
        pads = np.array([0, 0, 0, 0, 0, pad_c, pad_h, pad_w], dtype=np.int64)
        return self.node("Pad", [x, self.constant(f"{name}.pads", pads)], name, mode="constant")


def build_onnx(spec: ResNetSpec, on_progress: ProgressCallback | None = None) -> onnx.ModelProto:
    """Build a deterministic ONNX model computing the raw 128-d embedding."""
    g = _GraphBuilder()
    total = len(spec.blocks) + 2
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    x = g.conv(INPUT_NAME, spec.stem_conv, spec.stem_affine, "stem.conv")
    x = g.node("Relu", [x], "stem.relu")
    pool = spec.stem_pool
    x = g.node(
        "MaxPool",
        [x],
        "stem.pool",
        kernel_shape=list(pool.kernel),
        strides=list(pool.stride),
        pads=[pool.padding[0], pool.padding[1], pool.padding[0], pool.padding[1]],
    )
    channels = spec.stem_conv.out_channels
    size = spec.stem_pool.output_size(spec.stem_conv.output_size(spec.input_size))
    step()

    for index, block in enumerate(spec.blocks):
        p = f"block{index:02d}"
        block_in, in_channels, in_size = x, channels, size
        y = g.conv(block_in, block.conv1, block.affine1, f"{p}.conv1")
        y = g.node("Relu", [y], f"{p}.relu1")
        y = g.conv(y, block.conv2, block.affine2, f"{p}.conv2")
        main_size = block.conv2.output_size(block.conv1.output_size(in_size))
        main_channels = block.conv2.out_channels

        # dlib's add_prev zero-pads each operand at the end of every dimension.
        out_channels = max(main_channels, in_channels)
        short, short_channels, short_size = block_in, in_channels, in_size
        if block.shortcut_pool is not None:
            sp = block.shortcut_pool
            if sp.padding != (0, 0) or sp.is_global:
                # dlib's padded average pool does not match ONNX semantics exactly.
                raise DlibFormatError(f"{p}: unsupported shortcut average pool {sp}")
            short_size = sp.output_size(in_size)
            if out_channels > in_channels:
                # Average pool + zero channels as one conv: keeps onnxruntime's blocked
                # (NCHWc) layout through the residual path, unlike a Pad on channels.
                short = g.pool_as_conv(block_in, in_channels, out_channels, sp, f"{p}.shortcut")
                short_channels = out_channels
            else:
                short = g.node(
                    "AveragePool",
                    [block_in],
                    f"{p}.shortcut",
                    kernel_shape=list(sp.kernel),
                    strides=list(sp.stride),
                )

        out_size = (max(main_size[0], short_size[0]), max(main_size[1], short_size[1]))
        y = g.pad_end(
            y,
            out_channels - main_channels,
            out_size[0] - main_size[0],
            out_size[1] - main_size[1],
            f"{p}.conv2.pad",
        )
        short = g.pad_end(
            short,
            out_channels - short_channels,
            out_size[0] - short_size[0],
            out_size[1] - short_size[1],
            f"{p}.shortcut.pad",
        )
        x = g.node("Add", [y, short], f"{p}.add")
        x = g.node("Relu", [x], f"{p}.relu2")
        channels, size = out_channels, out_size
        logger.debug("%s: %d channels, %dx%d", p, channels, size[0], size[1])
        step()

    x = g.node("GlobalAveragePool", [x], "head.pool")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    g.node("MatMul", [x, g.constant("head.fc.weight", spec.fc_weight)], OUTPUT_NAME)
    step()

    graph = helper.make_graph(
        g.nodes,
        GRAPH_NAME,
        inputs=[
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", 3, spec.input_size[0], spec.input_size[1]]
            )
        ],
        outputs=[
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", spec.embedding_dim]
            )
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
    )
    model.ir_version = ONNX_IR_VERSION
    model.doc_string = (
        "dlib_face_recognition_resnet_model_v1 (CC0) converted by facepay. "
        "Input: NCHW RGB, (pixel - mean_rgb) / 256. Output: raw 128-d embedding "
        "(not L2-normalised)."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def convert_resnet(data: bytes, on_progress: ProgressCallback | None = None) -> bytes:
    """Parse dlib's ResNet file bytes and return the serialized ONNX model bytes.

    ``on_progress(done, total)`` is called as layers are parsed and the graph is
    built; ``total`` is constant and ``done`` increases up to ``total``.
    """
    parse_total = 0

    def parse_progress(done: int, total: int) -> None:
        nonlocal parse_total
        parse_total = total
        if on_progress is not None:
            on_progress(done, 2 * total)

    spec = parse_resnet(data, on_progress=parse_progress)

    def build_progress(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(parse_total + (parse_total * done) // total, 2 * parse_total)

    model = build_onnx(spec, on_progress=build_progress)
    result: bytes = model.SerializeToString()
    logger.info("converted dlib ResNet (%d bytes) to ONNX (%d bytes)", len(data), len(result))
    return result
