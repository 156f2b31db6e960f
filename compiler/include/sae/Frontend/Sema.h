//===- Sema.h - Semantic analysis of .sae models ------------------*- C++
//-*-===//
//
// Resolves names, dimensions and shapes, checks every operator's arguments
// and records the type of every binding. MLIRGen only runs on a model that
// Sema accepted.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_FRONTEND_SEMA_H
#define SAE_FRONTEND_SEMA_H

#include "sae/Frontend/AST.h"

#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringMap.h"

#include <map>
#include <optional>

namespace mlir {
class MLIRContext;
} // namespace mlir

namespace sae {

/// The type of a value in the language. Tensors are "batched" when they hold
/// one row per input row (their leading batch dimension is implicit).
struct ValueType {
  enum Kind { Invalid, Scalar, Tensor, Codes };
  Kind kind = Invalid;
  bool batched = false;
  std::vector<int64_t> shape; // per row when batched; {n} for codes
  int64_t k = 0;              // codes only
  bool perBatch = false;      // codes: B·k entries over the batch

  static ValueType scalar() { return {Scalar, false, {}, 0}; }
  static ValueType tensor(bool batched, std::vector<int64_t> shape) {
    return {Tensor, batched, std::move(shape), 0};
  }
  static ValueType codes(int64_t n, int64_t k, bool perBatch = false) {
    return {Codes, true, {n}, k, perBatch};
  }
  bool isValid() const { return kind != Invalid; }
  /// "[768]", "[768, 16384]", "sparse codes over 16384 latents (k = 32)"...
  std::string str() const;
};

/// The `train { ... }` section with its defaults (docs/language.md).
struct TrainConfig {
  double lr = 2e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  /// Maximum global gradient norm; 0 disables clipping.
  double clip = 0;
  int64_t lrWarmup = 0, sparsityWarmup = 0, batch = 4096;
  std::string lrDecay = "none";      // none | linear | cosine
  std::string normalize = "none";    // none | expected_norm
  /// The parameter whose rows the unit-norm rule keeps at norm 1, or null.
  const TensorDeclAST *unitNorm = nullptr;
};

/// A model that passed semantic analysis, with everything MLIRGen needs.
struct CheckedModel {
  const ModelAST *ast = nullptr;
  /// Dimensions after command-line overrides, in declaration order.
  std::vector<std::pair<std::string, int64_t>> dims;
  /// The first input: what the model reconstructs.
  const TensorDeclAST *input = nullptr;
  int64_t inputDim = 0;
  /// Every input in declaration order (the ABI's order) with its dimension.
  std::vector<std::pair<const TensorDeclAST *, int64_t>> inputs;
  /// Parameters in declaration order (the ABI's order) with their shapes.
  std::vector<std::pair<const TensorDeclAST *, std::vector<int64_t>>> params;
  const BindingDeclAST *encode = nullptr;
  const BindingDeclAST *decode = nullptr;
  /// `loss = expr;`, or null when the loss is a sum of named terms.
  const BindingDeclAST *loss = nullptr;
  /// `loss NAME = expr;` terms, in order; the total is their sum.
  std::vector<const BindingDeclAST *> lossTerms;
  /// Every declaration by name.
  llvm::StringMap<const DeclAST *> symbols;
  /// The checked type of every let/encode/decode/loss binding.
  llvm::DenseMap<const DeclAST *, ValueType> types;
  /// The type of `encode`'s result: Codes (sparse) or a batched tensor.
  ValueType codesType;
  /// The sparsity operator at the root of `encode` ("topk", "relu", ...) and
  /// its integer hyperparameters, for the library's description.
  std::string encoderOp;
  std::map<std::string, int64_t> encoderParams;
  /// The root function of `loss` ("fvu", "mse", ...), "expression", or
  /// "sum" for named terms.
  std::string lossKind;
  /// Some initialiser reads a data sample (data_mean, geometric_median).
  bool initNeedsData = false;
  /// The forward pass samples noise (gaussian).
  bool stochastic = false;
  /// Arguments of every call, in the order of the callee's signature (null
  /// for an optional argument left out).
  llvm::DenseMap<const CallExprAST *, std::vector<const ExprAST *>> boundArgs;
  /// Per call and argument position: integer list arguments.
  std::map<std::pair<const CallExprAST *, unsigned>, std::vector<int64_t>>
      listArgs;
  /// Per call and argument position: the value of integer and numeric
  /// constant arguments (or their defaults).
  llvm::DenseMap<const CallExprAST *, std::vector<double>> callConstants;

  TrainConfig train;

  int64_t getDim(llvm::StringRef name) const;
};

/// Checks `model`; `overrides` replace the values of named dimensions
/// (`saec -D n=4096`). Every error is reported through `ctx`; returns
/// std::nullopt if there was any.
std::optional<CheckedModel>
analyze(const ModelAST &model, mlir::MLIRContext &ctx,
        const std::map<std::string, int64_t> &overrides = {});

} // namespace sae

#endif // SAE_FRONTEND_SEMA_H
