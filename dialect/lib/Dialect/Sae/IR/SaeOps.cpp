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
    return op->emitOpError() << what << " mismatch: " << dimStr(a) << " vs "
                             << dimStr(b);
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
    return op->emitOpError() << "bias of size " << dimStr(bias.getDimSize(0))
                             << " does not match rows of width "
                             << dimStr(in.getDimSize(1));
  return verifySameElementType(op, in.getElementType(), bias.getElementType());
}

LogicalResult BiasAddOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}
LogicalResult BiasSubOp::verify() {
  return verifyBias(*this, getInput().getType(), getBias().getType());
}

LogicalResult ScaleOp::verify() {
  return verifySameElementType(*this, getInput().getType().getElementType(),
                               getScale().getType());
}

LogicalResult TransposeOp::verify() {
  auto in = getInput().getType(), out = getResult().getType();
  if (in.getDimSize(0) != out.getDimSize(1) ||
      in.getDimSize(1) != out.getDimSize(0))
    return emitOpError() << "result shape must be the transposed input shape";
  return verifySameElementType(*this, in.getElementType(),
                               out.getElementType());
}

LogicalResult TopKOp::verify() {
  auto in = getInput().getType();
  CodesType codes = getResult().getType();
  if (failed(verifySameDim(*this, in.getDimSize(0), codes.getBatch(),
                           "batch size")))
    return failure();
  if (in.getDimSize(1) != codes.getNumLatents())
    return emitOpError() << "input has " << dimStr(in.getDimSize(1))
                         << " latents but the codes have "
                         << codes.getNumLatents();
  return verifySameElementType(*this, in.getElementType(),
                               codes.getElementType());
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
  return verifySameElementType(*this, w.getElementType(),
                               out.getElementType());
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

#define GET_OP_CLASSES
#include "sae/Dialect/Sae/IR/SaeOps.cpp.inc"
