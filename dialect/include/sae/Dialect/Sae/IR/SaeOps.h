//===- SaeOps.h - Operations of the sae dialect -------------------*- C++
//-*-===//
#ifndef SAE_DIALECT_SAE_IR_SAEOPS_H
#define SAE_DIALECT_SAE_IR_SAEOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "sae/Dialect/Sae/IR/SaeDialect.h"
#include "sae/Dialect/Sae/IR/SaeTypes.h"

#define GET_OP_CLASSES
#include "sae/Dialect/Sae/IR/SaeOps.h.inc"

namespace mlir::sae {
/// The codes whose entries (rows and latents) `codes` has: back through
/// sae.sddmm (sampled at its codes' entries) and sae.make_codes built from
/// another's indices; `codes` itself when neither.
Value entriesSource(Value codes);
} // namespace mlir::sae

#endif // SAE_DIALECT_SAE_IR_SAEOPS_H
