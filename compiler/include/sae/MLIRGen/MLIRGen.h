//===- MLIRGen.h - Generate the sae dialect from a checked model --*- C++
//-*-===//
#ifndef SAE_MLIRGEN_MLIRGEN_H
#define SAE_MLIRGEN_MLIRGEN_H

#include "sae/Frontend/Sema.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace sae {

/// Builds a module of tensor-level entry functions (`init`, `encode_dense`,
/// `encode_sparse`, `decode_dense`, `decode_sparse`, `forward`; the sparse
/// ones only for models with sparse codes), each tagged `sae.entry`, and the
/// module attribute `sae.describe` (the JSON of abi.h without "target").
/// Returns null (after reporting) if the module fails to verify.
mlir::OwningOpRef<mlir::ModuleOp> mlirGen(mlir::MLIRContext &ctx,
                                          const CheckedModel &model,
                                          llvm::StringRef sourceName);

} // namespace sae

#endif // SAE_MLIRGEN_MLIRGEN_H
