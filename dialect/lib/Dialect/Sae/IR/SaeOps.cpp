//===- SaeOps.cpp - Operations of the sae dialect -------------------------===//
//
// Verifiers for the invariants that the ODS type constraints cannot state:
// matching inner dimensions, batch sizes, element types and sparsity k.
//
//===----------------------------------------------------------------------===//
#include "sae/Dialect/Sae/IR/SaeOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/Support/Format.h"

using namespace mlir;
using namespace mlir::sae;

/// Prints a dimension the way MLIR types do ('?' when dynamic).
static std::string dimStr(int64_t d) {
  return ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d);
}

/// A number as a user would write it ("1", "-0.5").
static std::string numberStr(double v) {
  std::string s;
  llvm::raw_string_ostream(s) << llvm::format("%g", v);
  return s;
}

/// Checks that two batch dimensions are identical (both dynamic or equal).
static LogicalResult verifySameDim(Operation *op, int64_t a, int64_t b,
                                   StringRef what) {
  if (a != b)
    return op->emitOpError()
           << what << " mismatch: " << dimStr(a) << " vs " << dimStr(b);
  return success();
}

static LogicalResult verifySameElementType(Operation *op, Type a, Type b) {
  if (a != b)
    return op->emitOpError() << "element type mismatch: " << a << " vs " << b;
  return success();
}

LogicalResult LinearOp::verify() {
  auto in = getInput().getType(), w = getWeight().getType(),
       out = getResult().getType();
  if (in.getDimSize(1) != w.getDimSize(0))
    return emitOpError() << "inner dimensions do not match: input has "
                         << dimStr(in.getDimSize(1)) << " columns, weight has "
                         << dimStr(w.getDimSize(0)) << " rows";
  if (failed(verifySameElementType(*this, in.getElementType(),
                                   w.getElementType())) ||
      failed(verifySameElementType(*this, in.getElementType(),
                                   out.getElementType())))
    return failure();
  if (failed(verifySameDim(*this, in.getDimSize(0), out.getDimSize(0),
                           "batch size")))
    return failure();
  return verifySameDim(*this, w.getDimSize(1), out.getDimSize(1),
                       "result width");
}

/// Shared by bias_add and bias_sub.
static LogicalResult verifyBias(Operation *op, RankedTensorType in,
                                RankedTensorType bias) {
  if (bias.getDimSize(0) != in.getDimSize(1))
    return op->emitOpError()
           << "bias of size " << dimStr(bias.getDimSize(0))
           << " does not match rows of width " << dimStr(in.getDimSize(1));
  return verifySameElementType(op, in.getElementType(), bias.getElementType());
}

LogicalResult BiasAddOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}
LogicalResult BiasSubOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}

LogicalResult BiasMulOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}
LogicalResult BiasDivOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}
LogicalResult JumpReluOp::verify() {
  return verifyBias(*this, getInput().getType(), getThreshold().getType());
}

/// The batch size, number of latents and element type of dense codes
/// [B, n] or of sparse codes.
static void codesShape(Type t, int64_t &batch, int64_t &latents, Type &elt) {
  if (auto codes = dyn_cast<CodesType>(t)) {
    batch = codes.getBatch();
    latents = codes.getNumLatents();
    elt = codes.getElementType();
    return;
  }
  auto dense = cast<RankedTensorType>(t);
  batch = dense.getDimSize(0);
  latents = dense.getDimSize(1);
  elt = dense.getElementType();
}

/// Codes (dense or sparse) against a decoder [n, d] and a scalar result.
static LogicalResult verifyCodesLoss(Operation *op, Type codes, Value decoder,
                                     Type result) {
  int64_t batch, latents;
  Type elt;
  codesShape(codes, batch, latents, elt);
  if (decoder) {
    auto w = cast<RankedTensorType>(decoder.getType());
    if (w.getDimSize(0) != latents)
      return op->emitOpError()
             << "decoder has " << dimStr(w.getDimSize(0))
             << " rows but the codes have " << latents << " latents";
    if (failed(verifySameElementType(op, elt, w.getElementType())))
      return failure();
  }
  return verifySameElementType(op, elt, result);
}

LogicalResult L1Op::verify() {
  return verifyCodesLoss(*this, getCodes().getType(), getDecoder(),
                         getResult().getType());
}
LogicalResult TanhPenaltyOp::verify() {
  return verifyCodesLoss(*this, getCodes().getType(), getDecoder(),
                         getResult().getType());
}
LogicalResult L0Op::verify() {
  if (failed(verifyBias(*this, getInput().getType(), getThreshold().getType())))
    return failure();
  return verifySameElementType(*this, getInput().getType().getElementType(),
                               getResult().getType());
}
LogicalResult AfaOp::verify() {
  int64_t batch, latents;
  Type elt;
  codesShape(getCodes().getType(), batch, latents, elt);
  if (failed(verifySameDim(*this, batch, getTarget().getType().getDimSize(0),
                           "batch size")))
    return failure();
  return verifySameElementType(*this, elt, getResult().getType());
}

LogicalResult AuxKOp::verify() {
  auto in = getInput().getType(), w = getDecoder().getType(),
       e = getResidual().getType();
  int64_t n = in.getDimSize(1);
  if (w.getDimSize(0) != n || getSinceFired().getType().getDimSize(0) != n)
    return emitOpError() << "decoder rows and since_fired must have one entry "
                            "per latent ("
                         << n << ")";
  if (w.getDimSize(1) != e.getDimSize(1))
    return emitOpError() << "the residual's width does not match the decoder's";
  if (getKAux() < 1 || int64_t(getKAux()) > n)
    return emitOpError() << "k_aux must lie in [1, " << n << "]";
  if (getTarget() && getTarget().getType() != e)
    return emitOpError() << "target must have the residual's type";
  return verifySameElementType(*this, in.getElementType(),
                               getResult().getType());
}

LogicalResult MatryoshkaOp::verify() {
  int64_t batch, latents;
  Type elt;
  codesShape(getCodes().getType(), batch, latents, elt);
  if (auto codes = dyn_cast<CodesType>(getCodes().getType()))
    if (codes.getPerBatch())
      return emitOpError() << "needs per-row or dense codes";
  ArrayRef<int64_t> widths = getWidths();
  if (widths.empty())
    return emitOpError() << "needs at least one width";
  for (size_t i = 0; i < widths.size(); ++i) {
    if (widths[i] < 1 || widths[i] > latents)
      return emitOpError() << "width " << widths[i] << " is not in [1, "
                           << latents << "]";
    if (i > 0 && widths[i] <= widths[i - 1])
      return emitOpError() << "widths must increase";
  }
  return verifyCodesLoss(*this, getCodes().getType(), getDecoder(),
                         getResult().getType());
}

LogicalResult ScaleOp::verify() {
  return verifySameElementType(*this, getInput().getType().getElementType(),
                               getScale().getType());
}

OpFoldResult TransposeOp::fold(FoldAdaptor) {
  if (auto inner = getInput().getDefiningOp<TransposeOp>())
    if (inner.getInput().getType() == getType())
      return inner.getInput();
  return {};
}

LogicalResult TransposeOp::verify() {
  auto in = getInput().getType(), out = getResult().getType();
  if (in.getDimSize(0) != out.getDimSize(1) ||
      in.getDimSize(1) != out.getDimSize(0))
    return emitOpError() << "result shape must be the transposed input shape";
  return verifySameElementType(*this, in.getElementType(),
                               out.getElementType());
}

/// A selection from `in : [B, n]` into `codes`.
static LogicalResult verifySelection(Operation *op, RankedTensorType in,
                                     CodesType codes) {
  if (failed(
          verifySameDim(op, in.getDimSize(0), codes.getBatch(), "batch size")))
    return failure();
  if (in.getDimSize(1) != codes.getNumLatents())
    return op->emitOpError()
           << "input has " << dimStr(in.getDimSize(1))
           << " latents but the codes have " << codes.getNumLatents();
  return verifySameElementType(op, in.getElementType(), codes.getElementType());
}

LogicalResult TopKOp::verify() {
  if (getScore() && getScore().getType() != getInput().getType())
    return emitOpError() << "score must have the input's type "
                         << getInput().getType();
  return verifySelection(*this, getInput().getType(), getResult().getType());
}

LogicalResult GroupMaxOp::verify() {
  CodesType codes = getResult().getType();
  if (codes.getNumLatents() % codes.getK() != 0)
    return emitOpError() << "k = " << codes.getK() << " does not divide the "
                         << codes.getNumLatents()
                         << " latents into equal groups";
  return verifySelection(*this, getInput().getType(), codes);
}

LogicalResult MatchingPursuitOp::verify() {
  CodesType codes = getResult().getType();
  auto in = getInput().getType(), w = getDecoder().getType();
  if (w.getDimSize(0) != codes.getNumLatents())
    return emitOpError() << "decoder has " << dimStr(w.getDimSize(0))
                         << " atoms but the codes have "
                         << codes.getNumLatents() << " latents";
  if (w.getDimSize(1) != in.getDimSize(1))
    return emitOpError() << "atoms of width " << dimStr(w.getDimSize(1))
                         << " do not match rows of width "
                         << dimStr(in.getDimSize(1));
  if (failed(verifySameDim(*this, in.getDimSize(0), codes.getBatch(),
                           "batch size")))
    return failure();
  return verifySameElementType(*this, in.getElementType(),
                               codes.getElementType());
}

LogicalResult TopAfaOp::verify() {
  auto in = getInput().getType(), w = getDecoder().getType(),
       t = getTarget().getType();
  if (getResult().getType() != in)
    return emitOpError() << "result must have the input's type " << in;
  if (w.getDimSize(0) != in.getDimSize(1))
    return emitOpError() << "decoder has " << dimStr(w.getDimSize(0))
                         << " rows but the input has "
                         << dimStr(in.getDimSize(1)) << " latents";
  if (w.getDimSize(1) != t.getDimSize(1))
    return emitOpError() << "target rows of width " << dimStr(t.getDimSize(1))
                         << " do not match the decoder's "
                         << dimStr(w.getDimSize(1));
  return verifySameDim(*this, in.getDimSize(0), t.getDimSize(0), "batch size");
}

LogicalResult DecodeOp::verify() {
  CodesType codes = getCodes().getType();
  auto w = getWeight().getType(), out = getResult().getType();
  if (w.getDimSize(0) != codes.getNumLatents())
    return emitOpError() << "decoder has " << dimStr(w.getDimSize(0))
                         << " rows but the codes have " << codes.getNumLatents()
                         << " latents";
  if (failed(verifySameDim(*this, codes.getBatch(), out.getDimSize(0),
                           "batch size")) ||
      failed(verifySameDim(*this, w.getDimSize(1), out.getDimSize(1),
                           "result width")))
    return failure();
  if (failed(verifySameElementType(*this, codes.getElementType(),
                                   w.getElementType())))
    return failure();
  return verifySameElementType(*this, w.getElementType(), out.getElementType());
}

LogicalResult DensifyOp::verify() {
  if (getResult().getType() != getCodes().getType().getDenseType())
    return emitOpError() << "result must be "
                         << getCodes().getType().getDenseType();
  return success();
}

LogicalResult CodesValuesOp::verify() {
  if (getResult().getType() != getCodes().getType().getValuesType())
    return emitOpError() << "result must be "
                         << getCodes().getType().getValuesType();
  return success();
}

LogicalResult CodesIndicesOp::verify() {
  if (getResult().getType() != getCodes().getType().getIndicesType())
    return emitOpError() << "result must be "
                         << getCodes().getType().getIndicesType();
  return success();
}

LogicalResult CodesRowsOp::verify() {
  CodesType codes = getCodes().getType();
  if (!codes.getPerBatch())
    return emitOpError() << "codes in the per-row layout have no rows";
  if (getResult().getType() != codes.getRowsType())
    return emitOpError() << "result must be " << codes.getRowsType();
  return success();
}

OpFoldResult CodesRowsOp::fold(FoldAdaptor) {
  if (auto make = getCodes().getDefiningOp<MakeCodesOp>())
    return make.getRows();
  return {};
}

LogicalResult BatchTopKOp::verify() {
  if (!getResult().getType().getPerBatch())
    return emitOpError() << "batch-level selection produces codes in the "
                            "batch layout";
  return verifySelection(*this, getInput().getType(), getResult().getType());
}

LogicalResult FeatureChoiceOp::verify() {
  if (!getResult().getType().getPerBatch())
    return emitOpError() << "batch-level selection produces codes in the "
                            "batch layout";
  if (!(getZipf().convertToDouble() >= 0))
    return emitOpError() << "zipf exponent must be non-negative";
  return verifySelection(*this, getInput().getType(), getResult().getType());
}

OpFoldResult CodesValuesOp::fold(FoldAdaptor) {
  if (auto make = getCodes().getDefiningOp<MakeCodesOp>())
    return make.getValues();
  return {};
}

OpFoldResult CodesIndicesOp::fold(FoldAdaptor) {
  if (auto make = getCodes().getDefiningOp<MakeCodesOp>())
    return make.getIndices();
  return {};
}

LogicalResult MakeCodesOp::verify() {
  CodesType codes = getResult().getType();
  if (getValues().getType() != codes.getValuesType())
    return emitOpError() << "values must be " << codes.getValuesType();
  if (getIndices().getType() != codes.getIndicesType())
    return emitOpError() << "indices must be " << codes.getIndicesType();
  if (codes.getPerBatch() != bool(getRows()))
    return emitOpError() << (codes.getPerBatch()
                                 ? "batch-layout codes need rows"
                                 : "per-row codes take no rows");
  if (getRows() && getRows().getType() != codes.getRowsType())
    return emitOpError() << "rows must be " << codes.getRowsType();
  return success();
}

/// Shared by the loss ops: the scalar has the inputs' element type.
static LogicalResult verifyLoss(Operation *op, RankedTensorType in, Type out) {
  return verifySameElementType(op, in.getElementType(), out);
}

LogicalResult MseOp::verify() {
  return verifyLoss(*this, getInput().getType(), getResult().getType());
}
LogicalResult FvuOp::verify() {
  return verifyLoss(*this, getInput().getType(), getResult().getType());
}

/// Initialisers produce parameters: their shapes must be static.
static LogicalResult verifyStatic(Operation *op, RankedTensorType t) {
  if (!t.hasStaticShape())
    return op->emitOpError() << "result must have a static shape, got " << t;
  return success();
}

LogicalResult FillOp::verify() {
  return verifyStatic(*this, getResult().getType());
}

LogicalResult RandomUniformOp::verify() {
  if (!(getLow().convertToDouble() < getHigh().convertToDouble()))
    return emitOpError() << "low (" << numberStr(getLow().convertToDouble())
                         << ") must be less than high ("
                         << numberStr(getHigh().convertToDouble()) << ")";
  return verifyStatic(*this, getResult().getType());
}

LogicalResult RandomNormalOp::verify() {
  if (!(getStd().convertToDouble() >= 0))
    return emitOpError() << "std must be non-negative, got "
                         << numberStr(getStd().convertToDouble());
  return verifyStatic(*this, getResult().getType());
}

/// A vector with one entry per column of `in`.
static LogicalResult verifyColumns(Operation *op, RankedTensorType in,
                                   RankedTensorType out) {
  if (out.getDimSize(0) != in.getDimSize(1))
    return op->emitOpError()
           << "result of size " << dimStr(out.getDimSize(0))
           << " does not match rows of width " << dimStr(in.getDimSize(1));
  return verifySameElementType(op, in.getElementType(), out.getElementType());
}

LogicalResult ColumnMeanOp::verify() {
  return verifyColumns(*this, getInput().getType(), getResult().getType());
}
LogicalResult GeometricMedianOp::verify() {
  return verifyColumns(*this, getInput().getType(), getResult().getType());
}

#define GET_OP_CLASSES
#include "sae/Dialect/Sae/IR/SaeOps.cpp.inc"

//===----------------------------------------------------------------------===//
// Gradients and training
//===----------------------------------------------------------------------===//

LogicalResult GradientOp::verify() {
  for (auto [w, g] : llvm::zip(getWrt(), getGrads()))
    if (w.getType() != g.getType())
      return emitOpError() << "gradient type " << g.getType()
                           << " differs from its argument's " << w.getType();
  return success();
}

/// The number of columns of a dense batch, or of latents of codes.
static int64_t columnsOf(Type t) {
  if (auto codes = dyn_cast<CodesType>(t))
    return codes.getNumLatents();
  return cast<RankedTensorType>(t).getDimSize(1);
}

LogicalResult MatVecOp::verify() {
  auto w = getWeight().getType();
  if (failed(verifySameDim(*this, w.getDimSize(1),
                           getVector().getType().getDimSize(0),
                           "weight column count and vector length")))
    return failure();
  return verifySameDim(*this, w.getDimSize(0),
                       getResult().getType().getDimSize(0), "row count");
}

LogicalResult ColumnSumOp::verify() {
  return verifySameDim(*this, columnsOf(getInput().getType()),
                       getResult().getType().getDimSize(0), "column count");
}

Value mlir::sae::entriesSource(Value codes) {
  while (true) {
    if (auto sddmm = codes.getDefiningOp<SddmmOp>()) {
      codes = sddmm.getCodes();
      continue;
    }
    auto make = codes.getDefiningOp<MakeCodesOp>();
    auto indices =
        make ? make.getIndices().getDefiningOp<CodesIndicesOp>() : nullptr;
    if (!indices || make.getRows())
      return codes;
    codes = indices.getCodes();
  }
}

OpFoldResult GatherOp::fold(FoldAdaptor) {
  auto topk = entriesSource(getCodes()).getDefiningOp<TopKOp>();
  if (topk && topk.getInput() == getSource() && topk.getType() == getType())
    return topk.getResult();
  return {};
}

LogicalResult GatherOp::verify() {
  CodesType codes = getCodes().getType();
  auto source = getSource().getType();
  if (source.getRank() == 1)
    return verifySameDim(*this, codes.getNumLatents(), source.getDimSize(0),
                         "latent count");
  if (source.getRank() != 2)
    return emitOpError() << "source must be [B, n] or [n], got " << source;
  if (failed(verifySameDim(*this, codes.getNumLatents(), source.getDimSize(1),
                           "latent count")))
    return failure();
  return verifySameDim(*this, codes.getBatch(), source.getDimSize(0),
                       "batch size");
}

LogicalResult SddmmOp::verify() {
  CodesType codes = getCodes().getType();
  auto lhs = getLhs().getType(), w = getWeight().getType();
  if (failed(verifySameDim(*this, codes.getBatch(), lhs.getDimSize(0),
                           "batch size")) ||
      failed(verifySameDim(*this, codes.getNumLatents(), w.getDimSize(0),
                           "latent count")))
    return failure();
  return verifySameDim(*this, lhs.getDimSize(1), w.getDimSize(1), "width");
}

LogicalResult OuterOp::verify() {
  CodesType codes = getCodes().getType();
  auto rhs = getRhs().getType(), out = getResult().getType();
  if (failed(verifySameDim(*this, codes.getBatch(), rhs.getDimSize(0),
                           "batch size")))
    return failure();
  unsigned latentDim = getTransposed() ? 1 : 0;
  if (failed(verifySameDim(*this, codes.getNumLatents(),
                           out.getDimSize(latentDim), "latent count")))
    return failure();
  return verifySameDim(*this, rhs.getDimSize(1), out.getDimSize(1 - latentDim),
                       "width");
}

LogicalResult PlaceRowsOp::verify() {
  auto rows = getRows().getType(), out = getResult().getType();
  if (failed(verifySameElementType(*this, rows.getElementType(),
                                   out.getElementType())) ||
      failed(verifySameDim(*this, getSlot().getType().getDimSize(0),
                           out.getDimSize(0), "row count")))
    return failure();
  return verifySameDim(*this, rows.getDimSize(1), out.getDimSize(1), "width");
}

LogicalResult TakeColumnsOp::verify() {
  auto in = getInput().getType(), out = getResult().getType();
  if (failed(verifySameElementType(*this, in.getElementType(),
                                   out.getElementType())) ||
      failed(verifySameDim(*this, in.getDimSize(0), out.getDimSize(0),
                           "row count")))
    return failure();
  return verifySameDim(*this, getSlot().getType().getDimSize(0),
                       in.getDimSize(1), "column count");
}

LogicalResult RowNormsOp::verify() {
  return verifySameDim(*this, getInput().getType().getDimSize(0),
                       getResult().getType().getDimSize(0), "row count");
}

LogicalResult ScaleRowsOp::verify() {
  return verifySameDim(*this, getInput().getType().getDimSize(0),
                       getScale().getType().getDimSize(0), "row count");
}
