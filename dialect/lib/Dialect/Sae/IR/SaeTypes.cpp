//===- SaeTypes.cpp - Types of the sae dialect ----------------------------===//
#include "sae/Dialect/Sae/IR/SaeTypes.h"
#include "sae/Dialect/Sae/IR/SaeDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::sae;

#define GET_TYPEDEF_CLASSES
#include "sae/Dialect/Sae/IR/SaeOpsTypes.cpp.inc"

void SaeDialect::registerTypes() {
  addTypes<
#define GET_TYPEDEF_LIST
#include "sae/Dialect/Sae/IR/SaeOpsTypes.cpp.inc"
      >();
}

// Syntax: `!sae.codes<` dim `x` n `x` element-type `,` `k` `=` k `>`.
Type CodesType::parse(AsmParser &parser) {
  SmallVector<int64_t, 2> shape;
  Type elementType;
  int64_t k = 0;
  SMLoc loc = parser.getCurrentLocation();
  if (parser.parseLess() ||
      parser.parseDimensionList(shape, /*allowDynamic=*/true,
                                /*withTrailingX=*/true) ||
      parser.parseType(elementType) || parser.parseComma() ||
      parser.parseKeyword("k") || parser.parseEqual() || parser.parseInteger(k))
    return {};
  bool perBatch = false;
  if (succeeded(parser.parseOptionalComma())) {
    if (parser.parseKeyword("batch"))
      return {};
    perBatch = true;
  }
  if (parser.parseGreater())
    return {};
  if (shape.size() != 2) {
    parser.emitError(loc, "expected a [batch x latents] shape in sparse codes");
    return {};
  }
  return CodesType::getChecked([&] { return parser.emitError(loc); },
                               parser.getContext(), shape[0], shape[1],
                               elementType, k, perBatch);
}

void CodesType::print(AsmPrinter &printer) const {
  printer << '<';
  if (ShapedType::isDynamic(getBatch()))
    printer << '?';
  else
    printer << getBatch();
  printer << 'x' << getNumLatents() << 'x' << getElementType()
          << ", k = " << getK();
  if (getPerBatch())
    printer << ", batch";
  printer << '>';
}

LogicalResult CodesType::verify(function_ref<InFlightDiagnostic()> emitError,
                                int64_t batch, int64_t numLatents,
                                Type elementType, int64_t k, bool perBatch) {
  if (!ShapedType::isDynamic(batch) && batch < 0)
    return emitError() << "batch size must be non-negative, got " << batch;
  if (numLatents <= 0 || ShapedType::isDynamic(numLatents))
    return emitError() << "number of latents must be static and positive";
  if (!isa<FloatType>(elementType))
    return emitError() << "sparse codes need a float element type, got "
                       << elementType;
  if (k < 1 || k > numLatents)
    return emitError() << "k must lie in [1, " << numLatents << "], got " << k;
  return success();
}

/// [B, k] per row, or [B·k] per batch.
static SmallVector<int64_t, 2> storageShape(const CodesType &t) {
  if (!t.getPerBatch())
    return {t.getBatch(), t.getK()};
  return {ShapedType::isDynamic(t.getBatch()) ? ShapedType::kDynamic
                                              : t.getBatch() * t.getK()};
}

RankedTensorType CodesType::getValuesType() const {
  return RankedTensorType::get(storageShape(*this), getElementType());
}

RankedTensorType CodesType::getIndicesType() const {
  return RankedTensorType::get(storageShape(*this),
                               IntegerType::get(getContext(), 32));
}

RankedTensorType CodesType::getRowsType() const {
  return RankedTensorType::get(storageShape(*this),
                               IntegerType::get(getContext(), 32));
}

RankedTensorType CodesType::getDenseType() const {
  return RankedTensorType::get({getBatch(), getNumLatents()}, getElementType());
}
