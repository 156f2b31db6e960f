//===- SaeToLinalg.h - Lower sae to linalg ------------------------*- C++
//-*-===//
#ifndef SAE_CONVERSION_SAETOLINALG_SAETOLINALG_H
#define SAE_CONVERSION_SAETOLINALG_SAETOLINALG_H

#include "mlir/Pass/Pass.h"

namespace mlir {
class RewritePatternSet;
namespace sae {

#define GEN_PASS_DECL_CONVERTSAETOLINALG
#include "sae/Conversion/Passes.h.inc"

/// Adds the patterns that rewrite every sae op into linalg, tensor, scf,
/// memref, bufferization, math and arith ops.
/// `vectorLanes`: f32 lanes per vector in the product kernel (8 or 16).
void populateSaeToLinalgPatterns(RewritePatternSet &patterns,
                                 int64_t vectorLanes = 8);

} // namespace sae
} // namespace mlir

#endif // SAE_CONVERSION_SAETOLINALG_SAETOLINALG_H
