//===- Parser.h - Parse .sae source into an AST ------------------*- C++
//-*-===//
#ifndef SAE_FRONTEND_PARSER_H
#define SAE_FRONTEND_PARSER_H

#include "sae/Frontend/AST.h"

namespace mlir {
class MLIRContext;
} // namespace mlir

namespace sae {

/// Parses `text` (the contents of `filename`). Every syntax error is reported
/// through `ctx`'s diagnostic engine at its `file:line:col`; returns null if
/// there was any.
std::unique_ptr<ModelAST> parseSpec(mlir::MLIRContext &ctx,
                                    llvm::StringRef filename,
                                    llvm::StringRef text);

} // namespace sae

#endif // SAE_FRONTEND_PARSER_H
