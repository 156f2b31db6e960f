//===- SaeDialect.cpp - The sae dialect -----------------------------------===//
#include "sae/Dialect/Sae/IR/SaeDialect.h"
#include "sae/Dialect/Sae/IR/SaeOps.h"
#include "sae/Dialect/Sae/IR/SaeTypes.h"

#include "mlir/IR/DialectImplementation.h"
#include "mlir/Transforms/InliningUtils.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::sae;

#include "sae/Dialect/Sae/IR/SaeOpsDialect.cpp.inc"

namespace {
/// Every sae op is pure and region-free, so inlining is always legal.
struct SaeInlinerInterface : public DialectInlinerInterface {
  using DialectInlinerInterface::DialectInlinerInterface;
  bool isLegalToInline(Operation *, Region *, bool, IRMapping &) const final {
    return true;
  }
};
} // namespace

void SaeDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "sae/Dialect/Sae/IR/SaeOps.cpp.inc"
      >();
  registerTypes();
  addInterfaces<SaeInlinerInterface>();
}
