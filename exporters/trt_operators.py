"""onnx-tensorrt's operator support matrix (``docs/operators.md``) as data.

Source: the ``docs/operators.md`` of onnx/onnx-tensorrt for **TensorRT 10.15** (the 10.15 GA
release, 2026-02-02: "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset
24"), the newest version of the document that could be read when this table was written (the copy
read carried no commit id; its version line identifies it). One row per operator, as the document
lists them: whether the parser supports it, the element types it lists for it (its *data* operand,
see ``TYPE_INPUTS``) and its restrictions, shortened.

Two deliberate departures, where the document is narrower than the code:

* ``Clip``: the document lists FP32, FP16, BF16; the parser's importer (``onnxOpImporters.cpp``,
  releases 10.1 to 10.6) also takes INT32 and INT64 inputs
  (it lowers them to element-wise max/min), which a runtime keep rate uses (``exporters.runtime_keep``).
* ``TopK``: the document says ``K`` "must be less than 3840"; ``NvInfer.h`` (``ITopKLayer``) says
  values up to 3840 are supported and larger ones fail at run time. The lint uses ``K <= 3840``.

``OPERATORS[op]`` is an ``OpSupport``; ``SUPPORTED`` the operators marked ``Y``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The document version this table follows.
DOC_VERSION = "TensorRT 10.15"
DOC_SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 GA release (2026-02-02), opsets 9 to 24"
OPSET_RANGE = (9, 24)

#: ONNX element type (``onnx.TensorProto`` value) -> the document's name for it.
ONNX_TO_DOC = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    16: "BF16",
    17: "FP8",  # FLOAT8E4M3FN
    22: "INT4",
    23: "FP4",  # FLOAT4E2M1
}
#: Types TensorRT has at all ("TensorRT supports the following ONNX data types"); DOUBLE is cast down.
DOC_TYPES = frozenset(ONNX_TO_DOC.values())
#: "INT8, INT4, FP8 and FP4 are treated as Quantized Types ... only through quantization".
QUANTIZED_TYPES = frozenset({"INT8", "INT4", "FP8", "FP4"})


@dataclass(frozen=True)
class OpSupport:
    """One row of the matrix: ``supported`` (Y/N), the listed ``types``, ``notes`` (restrictions)."""

    op: str
    supported: bool
    types: tuple[str, ...]
    notes: str = ""


# Operator | Y/N | supported types | restrictions (shortened). Kept in the document's order.
_TABLE = """
Abs | Y | FP32 FP16 BF16 INT32 INT64 |
Acos | Y | FP32 FP16 BF16 |
Acosh | Y | FP32 FP16 BF16 |
Add | Y | FP32 FP16 BF16 INT32 INT64 |
AffineGrid | N | |
And | Y | BOOL |
ArgMax | Y | FP32 FP16 BF16 INT32 INT64 |
ArgMin | Y | FP32 FP16 BF16 INT32 INT64 |
Asin | Y | FP32 FP16 BF16 |
Asinh | Y | FP32 FP16 BF16 |
Atan | Y | FP32 FP16 BF16 |
Atanh | Y | FP32 FP16 BF16 |
Attention | Y | FP32 FP16 BF16 INT8 FP8 | Q, K, V and attn_mask 4-D; no past_key, past_value, nonpad_kv_seqlen inputs; no present_key, present_value, qk_matmul_output outputs; no qk_matmul_output_mode or softcap
AveragePool | Y | FP32 FP16 BF16 | 2-D or 3-D pooling only; dilations empty or all ones
BatchNormalization | Y | FP32 FP16 BF16 |
Bernoulli | N | |
BitShift | N | |
BitwiseAnd | N | |
BitwiseNot | N | |
BitwiseOr | N | |
BitwiseXor | N | |
BlackmanWindow | Y | FP32 FP16 |
Cast | Y | FP32 FP16 BF16 INT32 INT64 UINT8 BOOL |
CastLike | Y | FP32 FP16 BF16 INT32 INT64 UINT8 BOOL |
Ceil | Y | FP32 FP16 BF16 |
Col2Im | N | |
Celu | Y | FP32 FP16 BF16 |
CenterCropPad | N | |
Clip | Y | FP32 FP16 BF16 INT32 INT64 | INT32/INT64 from the parser's source (the document lists the float types only)
Compress | N | |
Concat | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
ConcatFromSequence | N | |
Constant | Y | FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL | sparse_value, value_string and value_strings unsupported
ConstantOfShape | Y | FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL |
Conv | Y | FP32 FP16 BF16 |
ConvInteger | N | |
ConvTranspose | Y | FP32 FP16 BF16 |
Cos | Y | FP32 FP16 BF16 |
Cosh | Y | FP32 FP16 BF16 |
CumSum | Y | FP32 FP16 BF16 | axis a build-time constant
DFT | N | |
DeformConv | Y | FP32 FP16 | 1-D or 2-D spatial input; equal begin and end pads per axis
DepthToSpace | Y | FP32 FP16 BF16 INT32 INT64 |
DequantizeLinear | Y | INT8 FP8 FP4 INT4 | x_zero_point must be zero
Det | N | |
Div | Y | FP32 FP16 BF16 INT32 INT64 |
Dropout | Y | FP32 FP16 BF16 | is_training an initializer that is False
DynamicQuantizeLinear | N | | not supported (IDynamicQuantize is reachable through a model-local function)
Einsum | Y | FP32 FP16 BF16 |
Elu | Y | FP32 FP16 BF16 |
Equal | Y | FP32 FP16 BF16 INT32 INT64 |
Erf | Y | FP32 FP16 BF16 |
Exp | Y | FP32 FP16 BF16 |
Expand | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
EyeLike | Y | FP32 FP16 BF16 INT32 INT64 BOOL | input of static dimensions
Flatten | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Floor | Y | FP32 FP16 BF16 |
Gather | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
GatherElements | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
GatherND | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Gelu | Y | FP32 FP16 BF16 INT8 INT32 INT64 |
Gemm | Y | FP32 FP16 BF16 |
GlobalAveragePool | Y | FP32 FP16 BF16 |
GlobalLpPool | Y | FP32 FP16 BF16 |
GlobalMaxPool | Y | FP32 FP16 BF16 |
Greater | Y | FP32 FP16 BF16 INT32 INT64 |
GreaterOrEqual | Y | FP32 FP16 BF16 INT32 INT64 |
GridSample | Y | FP32 FP16 | 4-D input
GroupNormalization | Y | FP32 FP16 BF16 |
GRU | Y | FP32 FP16 BF16 | bidirectional: same activations both ways
HammingWindow | Y | FP32 FP16 |
HannWindow | Y | FP32 FP16 |
HardSigmoid | Y | FP32 FP16 BF16 |
HardSwish | Y | FP32 FP16 BF16 |
Hardmax | Y | FP32 FP16 BF16 | the axis dimension a build-time constant
Identity | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
If | Y | FP32 FP16 BF16 INT32 INT64 BOOL | branch outputs of equal rank and different names
ImageScaler | Y | FP32 FP16 BF16 |
ImageDecoder | N | |
InstanceNormalization | Y | FP32 FP16 BF16 |
IsInf | Y | FP32 FP16 BF16 |
IsNaN | Y | FP32 FP16 BF16 INT32 INT64 |
LayerNormalization | Y | FP32 FP16 BF16 | only the first output Y
LeakyRelu | Y | FP32 FP16 BF16 |
Less | Y | FP32 FP16 BF16 INT32 INT64 |
LessOrEqual | Y | FP32 FP16 BF16 INT32 INT64 |
Log | Y | FP32 FP16 BF16 |
LogSoftmax | Y | FP32 FP16 BF16 |
Loop | Y | FP32 FP16 BF16 INT32 INT64 BOOL | static scan-output length; loop-carried shapes constant across iterations
LRN | Y | FP32 FP16 BF16 |
LSTM | Y | FP32 FP16 BF16 | bidirectional: same activations both ways; input_forget 0; layout 0
LpNormalization | Y | FP32 FP16 BF16 |
LpPool | Y | FP32 FP16 BF16 | dilations empty or all ones
MatMul | Y | FP32 FP16 BF16 |
MatMulInteger | N | |
Max | Y | FP32 FP16 BF16 INT32 INT64 |
MaxPool | Y | FP32 FP16 BF16 | 2-D or 3-D pooling only; no Indices output; dilations empty or all ones
MaxRoiPool | N | |
MaxUnpool | N | |
Mean | Y | FP32 FP16 BF16 FP8 INT32 INT64 |
MeanVarianceNormalization | Y | FP32 FP16 BF16 |
MelWeightMatrix | N | |
Min | Y | FP32 FP16 BF16 INT32 INT64 |
Mish | Y | FP32 FP16 |
Mod | Y | FP32 FP16 BF16 INT32 INT64 |
Mul | Y | FP32 FP16 BF16 INT32 INT64 |
Multinomial | N | |
Neg | Y | FP32 FP16 BF16 INT32 INT64 |
NegativeLogLikelihoodLoss | N | |
NonMaxSuppression | Y | FP32 FP16 |
NonZero | Y | FP32 FP16 |
Not | Y | BOOL |
OneHot | Y | FP32 FP16 BF16 INT32 INT64 BOOL | depth a build-time constant
Optional | N | |
OptionalGetElement | N | |
OptionalHasElement | N | |
Or | Y | BOOL |
Pad | Y | FP32 FP16 BF16 INT32 INT64 |
ParametricSoftplus | Y | FP32 FP16 BF16 |
Pow | Y | FP32 FP16 BF16 INT32 INT64 |
PRelu | Y | FP32 FP16 BF16 |
QLinearConv | N | |
QLinearMatMul | N | |
QuantizeLinear | Y | FP32 FP16 BF16 | y_zero_point must be 0
RandomNormal | Y | FP32 FP16 BF16 | seed ignored
RandomNormalLike | Y | FP32 FP16 BF16 | seed ignored
RandomUniform | Y | FP32 FP16 BF16 | seed ignored
RandomUniformLike | Y | FP32 FP16 BF16 | seed ignored
Range | Y | FP32 FP16 BF16 INT32 INT64 |
Reciprocal | Y | FP32 FP16 BF16 |
ReduceL1 | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceL2 | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceLogSum | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceLogSumExp | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceMax | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceMean | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceMin | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceProd | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceSum | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
ReduceSumSquare | Y | FP32 FP16 BF16 INT32 INT64 | axes an initializer
RegexFullMatch | N | |
Relu | Y | FP32 FP16 BF16 INT32 INT64 |
Reshape | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Resize | Y | FP32 FP16 BF16 | coordinate transformation half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners; mode nearest, linear; nearest_mode floor, ceil, round_prefer_floor, round_prefer_ceil; aspect ratio policy stretch; with tensor scales, axes an iota of length rank(input); no antialiasing
ReverseSequence | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
RMSNormalization | Y | FP32 FP16 BF16 |
RNN | Y | FP32 FP16 BF16 | bidirectional: same activations both ways
RoiAlign | Y | FP32 FP16 |
RotaryEmbedding | Y | FP32 FP16 BF16 | position_ids INT64
Round | Y | FP32 FP16 BF16 |
STFT | Y | FP32 | frame_step and window initializers; real-valued input
ScaledTanh | Y | FP32 FP16 BF16 |
Scan | Y | FP32 FP16 BF16 |
Scatter | Y | FP32 FP16 BF16 INT32 INT64 |
ScatterElements | Y | FP32 FP16 BF16 INT32 INT64 |
ScatterND | Y | FP32 FP16 BF16 INT32 INT64 | reduction must be none
Selu | Y | FP32 FP16 BF16 |
SequenceAt | N | |
SequenceConstruct | N | |
SequenceEmpty | N | |
SequenceErase | N | |
SequenceInsert | N | |
SequenceLength | N | |
SequenceMap | N | |
Shape | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Shrink | Y | FP32 FP16 BF16 INT32 INT64 |
Sigmoid | Y | FP32 FP16 BF16 |
Sign | Y | FP32 FP16 BF16 INT32 INT64 |
Sin | Y | FP32 FP16 BF16 |
Sinh | Y | FP32 FP16 BF16 |
Size | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Slice | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Softmax | Y | FP32 FP16 BF16 |
SoftmaxCrossEntropyLoss | N | |
Softplus | Y | FP32 FP16 BF16 |
Softsign | Y | FP32 FP16 BF16 |
SpaceToDepth | Y | FP32 FP16 BF16 INT32 INT64 |
Split | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
SplitToSequence | N | |
Sqrt | Y | FP32 FP16 BF16 |
Squeeze | Y | FP32 FP16 BF16 INT32 INT64 BOOL | axes resolvable to a constant
StringConcat | N | |
StringNormalizer | N | |
StringSplit | N | |
Sub | Y | FP32 FP16 BF16 INT32 INT64 |
Sum | Y | FP32 FP16 BF16 INT32 INT64 |
Tan | Y | FP32 FP16 BF16 |
Tanh | Y | FP32 FP16 BF16 |
TensorScatter | Y | FP32 FP16 BF16 INT32 | past_cache and update 4-D; axis -2
TfIdfVectorizer | N | |
ThresholdedRelu | Y | FP32 FP16 BF16 |
Tile | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
TopK | Y | FP32 FP16 BF16 INT32 INT64 | sorted must be 1; K at most 3840 (the document: less than 3840; NvInfer.h: up to 3840)
Transpose | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Trilu | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Unique | N | |
Unsqueeze | Y | FP32 FP16 BF16 INT32 INT64 BOOL | axes resolvable to a constant
Upsample | Y | FP32 FP16 BF16 |
Where | Y | FP32 FP16 BF16 INT32 INT64 BOOL |
Xor | Y | BOOL |
"""


def _rows(text: str) -> dict[str, OpSupport]:
    out = {}
    for line in text.strip().splitlines():
        op, flag, types, notes = (part.strip() for part in line.split("|", 3))
        out[op] = OpSupport(op, flag == "Y", tuple(types.split()), notes)
    return out


OPERATORS: dict[str, OpSupport] = _rows(_TABLE)
SUPPORTED: frozenset[str] = frozenset(op for op, row in OPERATORS.items() if row.supported)

#: Inputs (by position) the lint holds to the "Supported Types" column, where not the first one:
#: ``Where``'s condition is BOOL by definition, its data operands are inputs 1 and 2; a
#: ``DequantizeLinear``'s input has its zero point's type, which the lint's Q/DQ rule checks.
TYPE_INPUTS: dict[str, tuple[int, ...]] = {"Where": (1, 2), "DequantizeLinear": ()}
