//===- Passes.h - Conversions out of the sae dialect --------------*- C++
//-*-===//
#ifndef SAE_CONVERSION_PASSES_H
#define SAE_CONVERSION_PASSES_H

#include "sae/Conversion/SaeToLinalg/SaeToLinalg.h"

namespace mlir::sae {
#define GEN_PASS_REGISTRATION
#include "sae/Conversion/Passes.h.inc"
} // namespace mlir::sae

#endif // SAE_CONVERSION_PASSES_H
