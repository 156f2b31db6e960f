//===- Passes.h - Transformations on the sae dialect --------------*- C++
//-*-===//
#ifndef SAE_TRANSFORMS_PASSES_H
#define SAE_TRANSFORMS_PASSES_H

#include "mlir/Pass/Pass.h"

namespace mlir::sae {
#define GEN_PASS_DECL
#include "sae/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

#endif // SAE_TRANSFORMS_PASSES_H
