//===- Diagnostics.h - Front-end diagnostics through MLIR ---------*- C++
//-*-===//
//
// The front end reports every error through MLIR's diagnostic engine, so
// syntax, semantic and IR errors share one format and `--verify-diagnostics`.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_FRONTEND_DIAGNOSTICS_H
#define SAE_FRONTEND_DIAGNOSTICS_H

#include "sae/Frontend/AST.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Location.h"

namespace sae {

/// The MLIR location of a source position.
inline mlir::Location toLocation(mlir::MLIRContext &ctx, const SourceLoc &loc) {
  return mlir::FileLineColLoc::get(&ctx, loc.file ? *loc.file : "<unknown>",
                                   loc.line, loc.col);
}

inline mlir::InFlightDiagnostic emitError(mlir::MLIRContext &ctx,
                                          const SourceLoc &loc) {
  return mlir::emitError(toLocation(ctx, loc));
}

} // namespace sae

#endif // SAE_FRONTEND_DIAGNOSTICS_H
