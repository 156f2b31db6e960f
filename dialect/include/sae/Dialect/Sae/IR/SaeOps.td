//===- SaeOps.td - Operations of the sae dialect -----------*- tablegen -*-===//
//
// Every op states its sparsity contract in its description. Dense batched
// values are rank-2 tensors `[B, m]` (B usually dynamic); parameters are
// static rank-1 or rank-2 tensors.
//
//===----------------------------------------------------------------------===//

#ifndef SAE_DIALECT_SAE_IR_SAEOPS_TD
#define SAE_DIALECT_SAE_IR_SAEOPS_TD

include "sae/Dialect/Sae/IR/SaeDialect.td"
include "sae/Dialect/Sae/IR/SaeTypes.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/IR/BuiltinAttributes.td"
include "mlir/IR/OpBase.td"
include "mlir/IR/CommonTypeConstraints.td"
include "mlir/IR/CommonAttrConstraints.td"
include "mlir/Interfaces/InferTypeOpInterface.td"

class Sae_Op<string mnemonic, list<Trait> traits = []>
    : Op<Sae_Dialect, mnemonic, !listconcat([Pure], traits)>;

def Sae_FloatTensor : RankedTensorOf<[AnyFloat]>;
def Sae_Matrix : 2DTensorOf<[AnyFloat]>;
def Sae_Vector : 1DTensorOf<[AnyFloat]>;

//===----------------------------------------------------------------------===//
// Dense linear algebra
//===----------------------------------------------------------------------===//

def Sae_LinearOp : Sae_Op<"linear"> {
  let summary = "dense linear map of a batch: result = input · weight";
  let description = [{
    Multiplies a dense batch `input : [B, d]` by a weight matrix
    `weight : [d, n]`, giving `[B, n]`. Dense in, dense out; this is the
    encoder product whose `2·B·d·n` FLOPs are the only irreducible dense work
    of a TopK SAE. Products of sparse codes are `sae.decode` instead.

    Example:
    ```mlir
    %pre = sae.linear %x, %W_enc : tensor<?x768xf32>, tensor<768x16384xf32> -> tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$weight);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` type($input) `,` type($weight) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_MatVecOp : Sae_Op<"matvec"> {
  let summary = "matrix-vector product: result = weight · vector";
  let description = [{
    `result[i] = Σ_j weight[i, j] · vector[j]` for `weight : [d, n]` and
    `vector : [n]`, giving `[d]`: one pass over the weight, each row a
    contiguous dot product. The backward pass uses it for the bias gradient
    behind a linear map, `Σ_b (dy_b · Wᵀ) = W · Σ_b dy_b`, which needs neither
    the transposed weight nor the `[B, d]` product.

    Example:
    ```mlir
    %db = sae.matvec %W_enc, %s : tensor<768x16384xf32>, tensor<16384xf32> -> tensor<768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$weight, Sae_Vector:$vector);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = [{
    $weight `,` $vector attr-dict `:` type($weight) `,` type($vector) `->` type($result)
  }];
  let hasVerifier = 1;
}

class Sae_BiasOp<string mnemonic, string what>
    : Sae_Op<mnemonic, [AllTypesMatch<["input", "result"]>]> {
  let summary = "broadcast " # what # " of a bias vector to every row of a batch";
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$bias);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $bias attr-dict `:` type($input) `,` type($bias)
  }];
  let hasVerifier = 1;
}

def Sae_BiasAddOp : Sae_BiasOp<"bias_add", "addition"> {
  let description = [{
    `result[b, j] = input[b, j] + bias[j]` for a batch `[B, m]` and a bias
    `[m]`. Dense in, dense out.

    Example:
    ```mlir
    %y = sae.bias_add %pre, %b_enc : tensor<?x16384xf32>, tensor<16384xf32>
    ```
  }];
}

def Sae_BiasSubOp : Sae_BiasOp<"bias_sub", "subtraction"> {
  let description = [{
    `result[b, j] = input[b, j] - bias[j]` for a batch `[B, m]` and a bias
    `[m]` (e.g. centring the input by `b_dec`). Dense in, dense out.

    Example:
    ```mlir
    %xc = sae.bias_sub %x, %b_dec : tensor<?x768xf32>, tensor<768xf32>
    ```
  }];
}

def Sae_BiasMulOp : Sae_BiasOp<"bias_mul", "multiplication"> {
  let description = [{
    `result[r, j] = input[r, j] * bias[j]`: scales every column of a batch or
    a parameter matrix (e.g. `W_enc ⊙ exp(r_mag)` in a gated SAE). Dense in,
    dense out.

    Example:
    ```mlir
    %m = sae.bias_mul %W_enc, %scale : tensor<768x16384xf32>, tensor<16384xf32>
    ```
  }];
}

def Sae_BiasDivOp : Sae_BiasOp<"bias_div", "division"> {
  let description = [{
    `result[r, j] = input[r, j] / bias[j]`. Dense in, dense out.

    Example:
    ```mlir
    %m = sae.bias_div %x, %s : tensor<?x768xf32>, tensor<768xf32>
    ```
  }];
}

class Sae_ElementwiseBinaryOp<string mnemonic, string sym>
    : Sae_Op<mnemonic, [SameOperandsAndResultType]> {
  let summary = "elementwise `" # sym # "` of two tensors of the same type";
  let description = [{
    `result[i] = lhs[i] }] # sym # [{ rhs[i]` for tensors of identical type.
    Dense in, dense out.

    Example:
    ```mlir
    %r = sae.}] # mnemonic # [{ %a, %b : tensor<?x768xf32>
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$lhs, Sae_FloatTensor:$rhs);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def Sae_AddOp : Sae_ElementwiseBinaryOp<"add", "+">;
def Sae_SubOp : Sae_ElementwiseBinaryOp<"sub", "-">;
def Sae_MulOp : Sae_ElementwiseBinaryOp<"mul", "*">;
def Sae_DivOp : Sae_ElementwiseBinaryOp<"div", "/">;

def Sae_ScaleOp : Sae_Op<"scale", [AllTypesMatch<["input", "result"]>]> {
  let summary = "multiply every element of a tensor by a scalar";
  let description = [{
    `result[i] = input[i] * scale`; the scalar has the tensor's element type.
    Dense in, dense out.

    Example:
    ```mlir
    %r = sae.scale %t, %c : tensor<?x768xf32>, f32
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$input, AnyFloat:$scale);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$input `,` $scale attr-dict `:` type($input) `,` type($scale)";
  let hasVerifier = 1;
}

def Sae_ShiftOp : Sae_Op<"shift", [AllTypesMatch<["input", "result"]>]> {
  let summary = "add a scalar to every element";
  let description = [{
    `result = input + shift`. Gradient: the identity for `input`.

    Example:
    ```mlir
    %y = sae.shift %x, %s : tensor<?x32xf32>, f32
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$input, AnyFloat:$shift);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $shift attr-dict `:` type($input) `,` type($shift)
  }];
}

def Sae_TransposeOp : Sae_Op<"transpose"> {
  let summary = "transpose of a matrix";
  let description = [{
    `result[j, i] = input[i, j]`, used e.g. for tied initialisation
    `W_dec = W_encᵀ`. Dense in, dense out.

    Example:
    ```mlir
    %t = sae.transpose %W_enc : tensor<768x16384xf32> -> tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

def Sae_NormalizeRowsOp : Sae_Op<"normalize_rows", [SameOperandsAndResultType]> {
  let summary = "scale every row of a matrix to unit Euclidean norm";
  let description = [{
    `result[i, :] = input[i, :] / ‖input[i, :]‖₂`; an all-zero row stays zero.
    Used for unit-norm decoder rows. Dense in, dense out.

    Example:
    ```mlir
    %u = sae.normalize_rows %w : tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

//===----------------------------------------------------------------------===//
// Sparsity operators and sparse codes
//===----------------------------------------------------------------------===//

def Sae_ReluOp : Sae_Op<"relu", [SameOperandsAndResultType]> {
  let summary = "rectified linear unit, max(x, 0)";
  let description = [{
    `result[i] = max(input[i], 0)`. The result is dense: a ReLU SAE's codes
    have no static bound on the number of active latents per row. NaN inputs
    give NaN.

    Example:
    ```mlir
    %f = sae.relu %pre : tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$input);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

class Sae_UnaryOp<string mnemonic, string formula, string extra = "">
    : Sae_Op<mnemonic, [SameOperandsAndResultType]> {
  let summary = "elementwise " # formula;
  let description = [{
    `result[i] = }] # formula # [{`. }] # extra # [{ Dense in, dense out.

    Example:
    ```mlir
    %r = sae.}] # mnemonic # [{ %t : tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$input);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def Sae_AbsOp : Sae_UnaryOp<"abs", "|input[i]|">;
def Sae_ExpOp : Sae_UnaryOp<"exp", "exp(input[i])">;
def Sae_TanhOp : Sae_UnaryOp<"tanh", "tanh(input[i])">;
def Sae_StepOp : Sae_UnaryOp<"step", "H(input[i]): 1 if input[i] > 0, else 0",
    "The Heaviside step (gates of gated SAEs); its gradient is zero.">;
def Sae_StopGradOp : Sae_UnaryOp<"stopgrad", "input[i]",
    "The identity in the forward pass; gradients do not flow through it.">;

def Sae_JumpReluOp : Sae_Op<"jump_relu", [AllTypesMatch<["input", "result"]>]> {
  let summary = "JumpReLU: keep an entry only when it exceeds its latent's threshold";
  let description = [{
    `result[b, i] = input[b, i] * H(input[b, i] − threshold[i])` with a
    learned per-latent threshold (Rajamanoharan et al. 2024, Gemma Scope).
    The number of active latents per row is data-dependent and unbounded, so
    the result is a dense `[B, n]` tensor whose zeros are structural.
    Gradient (training, `sae.jump_relu_grad`): ∂/∂input = H(input − θ);
    ∂/∂θ = −(θ/ε)·rect((input − θ)/ε), the straight-through estimator with
    bandwidth ε (`rect(u)` = 1 on (−½, ½)).

    Example:
    ```mlir
    %f = sae.jump_relu %pre, %threshold : tensor<?x16384xf32>, tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$threshold,
                       DefaultValuedAttr<F64Attr, "0.001">:$bandwidth);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $threshold attr-dict `:` type($input) `,` type($threshold)
  }];
  let hasVerifier = 1;
}

def Sae_TopKOp : Sae_Op<"topk"> {
  let summary = "keep the k best-ranked entries of every row as sparse codes";
  let description = [{
    Selects, in every row of `input : [B, n]`, the `k` entries ranked
    highest (k is the result type's) and returns their values as
    `!sae.codes`, ordered by decreasing rank; ties keep the lower latent
    index first, NaN entries are never selected. The rank of an entry is
    its value, or with `score` the matching entry of that tensor (g-SAE's
    gradient-weighted selection), and with `by_magnitude` its absolute
    value (AbsTopK: signed values are kept). The result never holds the
    other `n - k` entries: consumers (`sae.decode`) work in O(k) per row.
    Gradients (training) flow through the kept values only.

    Example:
    ```mlir
    %z = sae.topk %f : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32>
    %a = sae.topk %pre {by_magnitude} : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32>
    %g = sae.topk %pre score %s : tensor<?x16384xf32>, tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Optional<Sae_Matrix>:$score,
                       UnitAttr:$by_magnitude);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $input (`score` $score^)? attr-dict `:` type($input) (`,` type($score)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_BatchTopKOp : Sae_Op<"batch_topk"> {
  let summary = "keep the B·k largest entries of the whole batch";
  let description = [{
    Selects the `B·k` largest entries of `input : [B, n]` over the whole
    batch (BatchTopK, Bussmann et al. 2024; Mutual Choice, Ayonrinde 2024),
    so rows keep a variable number of latents averaging k. Ties at the
    threshold are taken in row-major order; NaN is never selected. The
    result is batch-layout codes: `B·k` (value, index, row) entries sorted by
    row, then by decreasing value. Decoding gathers one decoder row per
    entry (work B·k·d). Gradients (training) flow through the kept entries.

    Example:
    ```mlir
    %z = sae.batch_topk %f : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32, batch>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_FeatureChoiceOp : Sae_Op<"feature_choice"> {
  let summary = "each latent keeps its best rows of the batch, B·k entries in all";
  let description = [{
    Feature Choice (Ayonrinde 2024): latent `j` keeps the `m_j` rows of the
    batch where its value is largest (ties: the lower row; NaN never), with
    budgets summing to `B·k`:
    `m_j = ⌊B·k·C_j / C⌋ − ⌊B·k·C_{j−1} / C⌋`, `C_j = Σ_{i≤j} (i + 1)^(−zipf)`,
    `C = C_{n−1}` (uniform for `zipf = 0`, computed exactly in integers;
    Zipf-shaped otherwise), each capped at B. The result is batch-layout
    codes sorted by row, then by decreasing value; slots left by capped
    budgets are zero entries at the last row.

    Example:
    ```mlir
    %z = sae.feature_choice %f {zipf = 0.0 : f64} : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32, batch>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, F64Attr:$zipf);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_GroupMaxOp : Sae_Op<"group_max"> {
  let summary = "the largest entry of each of k contiguous groups of latents";
  let description = [{
    Splits the `n` latents of every row into `k` contiguous groups of `n/k`
    (k is the result type's; it divides n) and keeps the largest entry of
    each group (ties: the lower index), in group order (EleutherAI
    sparsify's GroupMax). Exactly k entries per row; decoding gathers them.

    Example:
    ```mlir
    %z = sae.group_max %f : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_MatchingPursuitOp : Sae_Op<"matching_pursuit"> {
  let summary = "k steps of matching pursuit over unit-norm decoder atoms";
  let description = [{
    For every row, starting from the residual `r = input[b]`, repeats k
    times (k is the result type's): `i = argmax_j ⟨r, decoder[j]⟩` (the first
    maximum), `v = ⟨r, decoder[i]⟩` (clamped at 0 with `nonneg`),
    `f_i += v`, `r −= v · decoder[i]` (MP-SAE, "From Flat to Hierarchical").
    An atom chosen again adds to its entry, leaving an unused slot of value 0
    at the end of the row; entries are in selection order. Work per row is
    `k · n · d`; the result decodes by gather like any codes. Gradients
    (training) flow through the selected inner products only.

    Example:
    ```mlir
    %z = sae.matching_pursuit %r, %W_dec : tensor<?x768xf32>, tensor<16384x768xf32> -> !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$decoder,
                       UnitAttr:$nonneg);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $input `,` $decoder attr-dict `:` type($input) `,` type($decoder) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_TopAfaOp : Sae_Op<"top_afa"> {
  let summary = "keep the k*(x) latents whose decoded norms best match ‖x‖";
  let description = [{
    Top-AFA ("Evaluating and Designing SAEs by Approximating
    Quasi-Orthogonality"): for every row, latents are ordered by
    `s_i = (input[b, i] · ‖decoder[i]‖)²` (descending, ties by lower index),
    `c_j = sqrt(s_(1) + … + s_(j))`, and the first
    `k* = argmin_j |c_j − ‖target[b]‖| + 1` of them are kept (at least one).
    The count varies per row and is not bounded, so the result is a dense
    `[B, n]` tensor whose zeros are structural. Work per row is `k* · n`.

    Example:
    ```mlir
    %f = sae.top_afa %a, %W_dec, %xc : tensor<?x16384xf32>, tensor<16384x768xf32>, tensor<?x768xf32> -> tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$decoder,
                       Sae_Matrix:$target);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $decoder `,` $target attr-dict `:` type($input) `,` type($decoder) `,` type($target) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_DecodeOp : Sae_Op<"decode"> {
  let summary = "decode sparse codes by gathering decoder rows";
  let description = [{
    `result[b, :] = Σ_t values[b, t] · weight[indices[b, t], :]` for codes
    over `n` latents and a decoder `weight : [n, d]`. Sparse in, dense out;
    the work is `B·k·d`, independent of `n`. Indices must lie in `[0, n)`.

    Example:
    ```mlir
    %xhat = sae.decode %z, %W_dec : !sae.codes<?x16384xf32, k = 32>, tensor<16384x768xf32> -> tensor<?x768xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes, Sae_Matrix:$weight);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $codes `,` $weight attr-dict `:` type($codes) `,` type($weight) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_DensifyOp : Sae_Op<"densify"> {
  let summary = "scatter sparse codes into a dense [B, n] tensor";
  let description = [{
    `result[b, indices[b, t]] = values[b, t]`, zero elsewhere. Sparse in,
    dense out: only for callers that ask for dense codes.

    Example:
    ```mlir
    %d = sae.densify %z : !sae.codes<?x16384xf32, k = 32> -> tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = "$codes attr-dict `:` type($codes) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_CodesValuesOp : Sae_Op<"codes_values"> {
  let summary = "the [B, k] values tensor of sparse codes";
  let description = [{
    Returns the stored values of the codes, row by row in decreasing order.

    Example:
    ```mlir
    %v = sae.codes_values %z : !sae.codes<?x16384xf32, k = 32> -> tensor<?x32xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes);
  let results = (outs RankedTensorOf<[AnyFloat]>:$result);
  let assemblyFormat = "$codes attr-dict `:` type($codes) `->` type($result)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

def Sae_CodesIndicesOp : Sae_Op<"codes_indices"> {
  let summary = "the [B, k] latent-index tensor of sparse codes";
  let description = [{
    Returns the latent index (in `[0, n)`) of every stored value.

    Example:
    ```mlir
    %i = sae.codes_indices %z : !sae.codes<?x16384xf32, k = 32> -> tensor<?x32xi32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes);
  let results = (outs RankedTensorOf<[I32]>:$result);
  let assemblyFormat = "$codes attr-dict `:` type($codes) `->` type($result)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

def Sae_CodesRowsOp : Sae_Op<"codes_rows"> {
  let summary = "the [B·k] row numbers of batch-layout sparse codes";
  let description = [{
    Returns the row (in `[0, B)`) of every stored entry of codes in the
    `batch` layout; entries are sorted by row.

    Example:
    ```mlir
    %r = sae.codes_rows %z : !sae.codes<?x16384xf32, k = 32, batch> -> tensor<?xi32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes);
  let results = (outs RankedTensorOf<[I32]>:$result);
  let assemblyFormat = "$codes attr-dict `:` type($codes) `->` type($result)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

def Sae_MakeCodesOp : Sae_Op<"make_codes"> {
  let summary = "build sparse codes from values and indices tensors";
  let description = [{
    The inverse of `sae.codes_values` / `sae.codes_indices`. The caller
    guarantees that indices lie in `[0, n)`.

    Example:
    ```mlir
    %z = sae.make_codes %v, %i : tensor<?x32xf32>, tensor<?x32xi32> -> !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[AnyFloat]>:$values,
                       RankedTensorOf<[I32]>:$indices,
                       Optional<RankedTensorOf<[I32]>>:$rows);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $values `,` $indices (`,` $rows^)? attr-dict `:` type($values) `,` type($indices) (`,` type($rows)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

class Sae_LossOp<string mnemonic>
    : Sae_Op<mnemonic, [AllTypesMatch<["input", "target"]>]> {
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$target,
                       UnitAttr:$mean_over_columns);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $input `,` $target attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_MseOp : Sae_LossOp<"mse"> {
  let summary = "mean over rows of the squared reconstruction error";
  let description = [{
    `mean_b Σ_j (input[b, j] − target[b, j])²`, accumulated in f64; with
    `mean_over_columns`, the mean over j too. Dense in, scalar out.

    Example:
    ```mlir
    %l = sae.mse %xhat, %x : tensor<?x768xf32> -> f32
    ```
  }];
}

def Sae_FvuOp : Sae_LossOp<"fvu"> {
  let summary = "fraction of variance unexplained";
  let description = [{
    `Σ_b ‖input[b] − target[b]‖² / Σ_b ‖target[b] − mean_b(target)‖²`,
    accumulated in f64 (sparsify's training loss; 1 − explained variance).
    A batch with zero variance gives inf or NaN. Dense in, scalar out.

    Example:
    ```mlir
    %l = sae.fvu %xhat, %x : tensor<?x768xf32> -> f32
    ```
  }];
}

def Sae_CodesOrDense : AnyTypeOf<[Sae_Matrix, Sae_CodesType]>;

def Sae_L1Op : Sae_Op<"l1"> {
  let summary = "mean over rows of the L1 norm of the codes, optionally weighted by decoder row norms";
  let description = [{
    `mean_b Σ_i |f[b, i]| · n_i` with `n_i = ‖decoder[i, :]‖₂` when a decoder
    is given, else `n_i = 1`. Sparse codes are summed over their k stored
    entries only (work B·k plus n·d for the norms). Accumulated in f64.

    Example:
    ```mlir
    %l = sae.l1 %z, %W_dec : !sae.codes<?x16384xf32, k = 32>, tensor<16384x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$codes, Optional<Sae_Matrix>:$decoder);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $codes (`,` $decoder^)? attr-dict `:` type($codes) (`,` type($decoder)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_TanhPenaltyOp : Sae_Op<"tanh_penalty"> {
  let summary = "mean over rows of Σ tanh(c · f_i · n_i)";
  let description = [{
    Anthropic's saturating sparsity penalty:
    `mean_b Σ_i tanh(scale · f[b, i] · n_i)`, `n_i = ‖decoder[i, :]‖₂`.
    Sparse codes contribute only their stored entries (tanh(0) = 0).

    Example:
    ```mlir
    %l = sae.tanh_penalty %z, %W_dec {scale = 4.0 : f64} : tensor<?x16384xf32>, tensor<16384x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$codes, Sae_Matrix:$decoder,
                       F64Attr:$scale);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $codes `,` $decoder attr-dict `:` type($codes) `,` type($decoder) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_L0Op : Sae_Op<"l0"> {
  let summary = "mean over rows of the number of entries above their threshold";
  let description = [{
    `mean_b Σ_i H(input[b, i] − threshold[i])`: JumpReLU's L0 penalty. Its
    gradient (training) uses the straight-through estimator with bandwidth ε
    (`sae.l0_grad`): none to `input`, and to θ_i
    `−(1/ε)·mean_b rect((input[b, i] − θ_i)/ε)`.

    Example:
    ```mlir
    %l = sae.l0 %pre, %threshold : tensor<?x16384xf32>, tensor<16384xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$threshold,
                       DefaultValuedAttr<F64Attr, "0.001">:$bandwidth);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $input `,` $threshold attr-dict `:` type($input) `,` type($threshold) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_AfaOp : Sae_Op<"afa"> {
  let summary = "mean over rows of (‖f‖₂ − ‖x‖₂)²";
  let description = [{
    The top-AFA auxiliary loss `mean_b (‖codes[b]‖₂ − ‖target[b]‖₂)²`.
    Sparse codes use their stored entries. Accumulated in f64.

    Example:
    ```mlir
    %l = sae.afa %z, %x : tensor<?x16384xf32>, tensor<?x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$codes, Sae_Matrix:$target);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $codes `,` $target attr-dict `:` type($codes) `,` type($target) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_MatryoshkaOp : Sae_Op<"matryoshka"> {
  let summary = "reconstruction losses of nested prefixes of the latents";
  let description = [{
    Matryoshka SAEs (Bussmann et al. 2025; Nabeshima 2024):
    `Σ_w mean_b ‖f[b, :w] · decoder[:w] + bias − target[b]‖²` over the
    increasing `widths`, so that every prefix of the dictionary is a usable
    SAE on its own. Per-row sparse codes decode each prefix by gathering
    only their entries below w (work B·k·d per width); dense codes mask the
    latents at or above w. Accumulated in f64.

    Example:
    ```mlir
    %l = sae.matryoshka %z, %W_dec, %b_dec, %x {widths = array<i64: 1024, 4096, 16384>} : !sae.codes<?x16384xf32, k = 32>, tensor<16384x768xf32>, tensor<768xf32>, tensor<?x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$codes, Sae_Matrix:$decoder,
                       Sae_Vector:$bias, Sae_Matrix:$target,
                       DenseI64ArrayAttr:$widths);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $codes `,` $decoder `,` $bias `,` $target attr-dict `:` type($codes) `,` type($decoder) `,` type($bias) `,` type($target) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_AuxKOp : Sae_Op<"aux_k", [AttrSizedOperandSegments]> {
  let summary = "AuxK: dead latents reconstruct the residual";
  let description = [{
    Gao et al. 2024's auxiliary loss. A latent is dead when
    `since_fired[i] >= dead_after` (tokens since it last fired, maintained
    by training). Each row keeps the top `min(k_aux, n_dead)` entries of
    `input` among dead latents, decodes them by gather (adding `bias` when
    given), and the loss is
    `scale · Σ_b ‖decode(a) − residual[b]‖² / norm` with
    `scale = min(n_dead / k_aux, 1)` and `norm = Σ_b ‖v[b] − mean_b(v)‖²`,
    `v` = `target` when given (the input's variance), else the residual's.
    Zero when no latent is dead. Accumulated in f64.

    With `zipf_alpha` (aux_zipf, a generalisation of AuxK to under-used
    latents), `since_fired` holds firing frequencies instead, and latent i
    counts as dead when its frequency is below its Zipf target
    `t_i = zipf_k · (i + 1)^(−α) / Σ_j (j + 1)^(−α)` (the targets add up to
    `zipf_k`, the expected active latents per token).

    Example:
    ```mlir
    %l = sae.aux_k %pre, %e, %W_dec, %since {k_aux = 512 : i64, dead_after = 10000000.0 : f64} : tensor<?x16384xf32>, tensor<?x768xf32>, tensor<16384x768xf32>, tensor<16384xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$residual,
                       Sae_Matrix:$decoder, Sae_Vector:$since_fired,
                       Optional<Sae_Vector>:$bias, Optional<Sae_Matrix>:$target,
                       I64Attr:$k_aux, F64Attr:$dead_after,
                       OptionalAttr<F64Attr>:$zipf_alpha,
                       OptionalAttr<I64Attr>:$zipf_k);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $input `,` $residual `,` $decoder `,` $since_fired (`bias` $bias^)? (`target` $target^)? attr-dict `:` type($input) `,` type($residual) `,` type($decoder) `,` type($since_fired) (`,` type($bias)^)? (`,` type($target)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_KlStdNormalOp : Sae_Op<"kl_std_normal"> {
  let summary = "KL divergence of N(μ, 1) from N(0, 1), mean over rows";
  let description = [{
    `mean_b ½ Σ_i μ[b, i]²` (σ fixed at 1), the variational SAE's prior term.

    Example:
    ```mlir
    %l = sae.kl_std_normal %mu : tensor<?x16384xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
}

//===----------------------------------------------------------------------===//
// Initialisers
//===----------------------------------------------------------------------===//

def Sae_FillOp : Sae_Op<"fill"> {
  let summary = "a tensor with every element equal to a constant";
  let description = [{
    Example:
    ```mlir
    %z = sae.fill 0.0 : tensor<16384xf32>
    ```
  }];
  let arguments = (ins F64Attr:$value);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$value attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Sae_RandomUniformOp : Sae_Op<"random_uniform"> {
  let summary = "seeded uniform random tensor in [low, high)";
  let description = [{
    Element `i` (row-major linear index) is `low + (high − low)·u` where `u`
    takes the top 24 bits of `splitmix64(seed + stream·φ + i·γ)` (φ, γ odd
    64-bit constants; see docs/language.md) as a fraction in [0, 1). The
    result depends only on (seed, stream, i): it is reproducible, and
    independent of how the computation is tiled or threaded.

    Example:
    ```mlir
    %w = sae.random_uniform %seed {low = -0.1 : f64, high = 0.1 : f64, stream = 0 : i64} : tensor<768x16384xf32>
    ```
  }];
  let arguments = (ins I64:$seed, F64Attr:$low, F64Attr:$high, I64Attr:$stream);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$seed attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Sae_RandomNormalOp : Sae_Op<"random_normal"> {
  let summary = "seeded normal random tensor N(mean, std²)";
  let description = [{
    Element `i` (row-major linear index) is `mean + std · z` with
    `z = sqrt(−2 ln(1 − u₁)) · cos(2π u₂)` (Box–Muller), where u₁ and u₂ are
    the uniforms of `sae.random_uniform` at counters 2i and 2i + 1 of the same
    (seed, stream). Reproducible and independent of tiling or threads.

    Example:
    ```mlir
    %w = sae.random_normal %seed {mean = 0.0 : f64, std = 0.02 : f64, stream = 0 : i64} : tensor<768x16384xf32>
    ```
  }];
  let arguments = (ins I64:$seed, F64Attr:$mean, F64Attr:$std, I64Attr:$stream);
  let results = (outs Sae_FloatTensor:$result);
  let assemblyFormat = "$seed attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Sae_GaussianNoiseOp : Sae_Op<"gaussian_noise", [AllTypesMatch<["input", "result"]>]> {
  let summary = "reparameterised sample μ + ε, ε ~ N(0, I), from a seed";
  let description = [{
    The variational SAE's sampling step: `result[b, j] = input[b, j] + ε`
    where ε is the Box–Muller normal of `sae.random_normal` at element
    `b·n + j` of (seed, stream). Gradients (training) flow to μ unchanged.

    Example:
    ```mlir
    %z = sae.gaussian_noise %mu, %seed {stream = 0 : i64} : tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, I64:$seed, I64Attr:$stream);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = "$input `,` $seed attr-dict `:` type($input)";
}

def Sae_ColumnMeanOp : Sae_Op<"column_mean"> {
  let summary = "the mean of the rows of a batch (data-dependent initialiser)";
  let description = [{
    `result[j] = mean_b input[b, j]`, accumulated in f64: initialises `b_dec`
    to the mean of a data sample.

    Example:
    ```mlir
    %m = sae.column_mean %x : tensor<?x768xf32> -> tensor<768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_GeometricMedianOp : Sae_Op<"geometric_median"> {
  let summary = "the geometric median of the rows of a batch (Weiszfeld)";
  let description = [{
    Starting from the mean, `iterations` Weiszfeld steps
    `y ← Σ_b w_b x_b / Σ_b w_b`, `w_b = 1 / max(‖x_b − y‖, 1e-8)`, in f64:
    the point minimising the sum of distances to the rows (the `b_dec`
    initialisation of Towards Monosemanticity and SAELens).

    Example:
    ```mlir
    %m = sae.geometric_median %x {iterations = 100 : i64} : tensor<?x768xf32> -> tensor<768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, I64Attr:$iterations);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Gradients and training
//
// `sae.gradient` is what the differentiation pass (sae-differentiate)
// replaces; the other ops are the building blocks of the gradients it
// derives and of the optimiser step. Gradients of sparse codes are codes
// with the same indices: they stay O(B·k).
//===----------------------------------------------------------------------===//

def Sae_GradientOp : Sae_Op<"gradient"> {
  let summary = "the gradient of a scalar loss with respect to tensors";
  let description = [{
    `grads[i] = ∂loss/∂wrt[i]`, for `wrt` values (function arguments) that
    the loss depends on through ops of the same block. `sae-differentiate`
    replaces the op by the reverse sweep built from each op's gradient rule
    (stated in its description); a value the loss does not depend on gets a
    zero gradient.

    Example:
    ```mlir
    %g:2 = sae.gradient %loss wrt %W_enc, %b_enc : f32, tensor<768x16384xf32>, tensor<16384xf32> -> tensor<768x16384xf32>, tensor<16384xf32>
    ```
  }];
  let arguments = (ins AnyFloat:$loss, Variadic<Sae_FloatTensor>:$wrt);
  let results = (outs Variadic<Sae_FloatTensor>:$grads);
  let assemblyFormat = [{
    $loss `wrt` $wrt attr-dict `:` type($loss) `,` type($wrt) `->` type($grads)
  }];
  let builders = [OpBuilder<(ins "::mlir::Value":$loss, "::mlir::ValueRange":$wrt), [{
    build($_builder, $_state, wrt.getTypes(), loss, wrt);
  }]>];
  let hasVerifier = 1;
}

def Sae_ColumnSumOp : Sae_Op<"column_sum"> {
  let summary = "sum over the rows of a batch, per column (or count nonzeros)";
  let description = [{
    `result[j] = Σ_b input[b, j]`; for sparse codes, each entry adds its
    value to its latent's slot (work O(B·k), never a dense `[B, n]`). With
    `count_nonzero`, each nonzero entry adds 1 instead (latent firing
    counts). The gradient of a bias broadcast over a batch.

    Example:
    ```mlir
    %db = sae.column_sum %dz : !sae.codes<?x16384xf32, k = 32> -> tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$input, UnitAttr:$count_nonzero);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_GatherOp : Sae_Op<"gather", [AllTypesMatch<["codes", "result"]>]> {
  let summary = "codes with the same entries, valued from a dense tensor";
  let description = [{
    For every entry `(b, i)` of `codes`, the result's value is
    `source[b, i]` (a `[B, n]` source) or `source[i]` (an `[n]` source).
    Sparse in, sparse out: the gradient of `sae.densify`, and masks of
    elementwise gradients applied to sparse gradients.

    Example:
    ```mlir
    %g = sae.gather %z, %pre : !sae.codes<?x16384xf32, k = 32>, tensor<?x16384xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes, Sae_FloatTensor:$source);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $codes `,` $source attr-dict `:` type($codes) `,` type($source)
  }];
  let hasVerifier = 1;
  // Folds to `sae.topk %source` when `codes` has that selection's entries
  // (it, or codes made from its indices): its values are the source's.
  let hasFolder = 1;
}

def Sae_SddmmOp : Sae_Op<"sddmm", [AllTypesMatch<["codes", "result"]>]> {
  let summary = "row-by-row products sampled at the entries of sparse codes";
  let description = [{
    For every entry `(b, i)` of `codes`: `⟨lhs[b, :], weight[i, :]⟩`, with
    `lhs : [B, d]` and `weight : [n, d]` (sampled dense-dense matrix
    product). The gradient of `sae.decode` with respect to the codes'
    values: work B·k·d, independent of n.

    Example:
    ```mlir
    %dz = sae.sddmm %z, %dxhat, %W_dec : !sae.codes<?x16384xf32, k = 32>, tensor<?x768xf32>, tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes, Sae_Matrix:$lhs,
                       Sae_Matrix:$weight);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $codes `,` $lhs `,` $weight attr-dict `:` type($codes) `,` type($lhs) `,` type($weight)
  }];
  let hasVerifier = 1;
}

def Sae_OuterOp : Sae_Op<"outer", [
    OptionalTypesMatchWith<"init has the result's type", "result", "init",
                           "$_self">]> {
  let summary = "transposed sparse codes times a dense batch: codesᵀ · rhs";
  let description = [{
    `result[i, :] = Σ over entries (b, i) of value · rhs[b, :]` for
    `rhs : [B, d]`: an `[n, d]` matrix (or `[d, n]` with `transposed`) that
    only the entries' rows (columns) receive. The gradient of `sae.decode`
    with respect to the decoder (and of `sae.linear` with respect to its
    weight when the output gradient is sparse): work B·k·d. With `into
    %init` (of the result's type, in either layout), the products are added
    to `init` instead of zeros: a sum of several sparse gradients of one
    weight (TopK's and AuxK's) forms one dense matrix, not one per term.

    Example:
    ```mlir
    %dW = sae.outer %z, %dxhat : !sae.codes<?x16384xf32, k = 32>, tensor<?x768xf32> -> tensor<16384x768xf32>
    %dW2 = sae.outer %aux, %e into %dW : !sae.codes<?x16384xf32, k = 512>, tensor<?x768xf32> -> tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_CodesType:$codes, Sae_Matrix:$rhs,
                       Optional<Sae_Matrix>:$init, UnitAttr:$transposed);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $codes `,` $rhs (`into` $init^)? attr-dict `:` type($codes) `,` type($rhs) `->` type($result)
  }];
  let builders = [
    OpBuilder<(ins "::mlir::Type":$result, "::mlir::Value":$codes,
                   "::mlir::Value":$rhs), [{
      build($_builder, $_state, result, codes, rhs, ::mlir::Value(),
            /*transposed=*/false);
    }]>
  ];
  let hasVerifier = 1;
}

def Sae_NumRowsOp : Sae_Op<"num_rows"> {
  let summary = "the batch size B of a batched tensor or codes, as a float";
  let description = [{
    For batch-layout codes, `B` is the number of entries over k.

    Example:
    ```mlir
    %b = sae.num_rows %x : tensor<?x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$input);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
}

def Sae_SumOp : Sae_Op<"sum"> {
  let summary = "the sum of every element of a tensor (accumulated in f64)";
  let description = [{
    With `squares`, the sum of squares. Used for gradient norms and the
    training metrics.

    Example:
    ```mlir
    %s = sae.sum %g {squares} : tensor<16384x768xf32> -> f32
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$input, UnitAttr:$squares);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
}

def Sae_RowNormsOp : Sae_Op<"row_norms"> {
  let summary = "the Euclidean norm of every row of a matrix";
  let description = [{
    `result[i] = ‖input[i, :]‖₂` (decoder row norms `n_i`).

    Example:
    ```mlir
    %n = sae.row_norms %W_dec : tensor<16384x768xf32> -> tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Sae_ScaleRowsOp : Sae_Op<"scale_rows", [AllTypesMatch<["input", "result"]>]> {
  let summary = "multiply every row of a matrix by its own factor";
  let description = [{
    `result[i, :] = input[i, :] · scale[i]`.

    Example:
    ```mlir
    %r = sae.scale_rows %W_dec, %s : tensor<16384x768xf32>, tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$scale);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $scale attr-dict `:` type($input) `,` type($scale)
  }];
  let hasVerifier = 1;
}

def Sae_JumpReluGradOp : Sae_Op<"jump_relu_grad",
    [AllTypesMatch<["grad", "input", "input_grad"]>,
     AllTypesMatch<["threshold", "threshold_grad"]>]> {
  let summary = "the straight-through gradient of sae.jump_relu";
  let description = [{
    For `y = jump_relu(x, θ)` and an upstream gradient `grad = ∂L/∂y`:
    `input_grad = grad · H(x − θ)` and
    `threshold_grad[i] = Σ_b grad[b, i] · (−θ_i/ε) · rect((x[b, i] − θ_i)/ε)`
    with `rect(u) = 1` for `−½ < u < ½`, else 0 (SAELens' JumpReLU).

    Example:
    ```mlir
    %dx, %dt = sae.jump_relu_grad %dy, %x, %t {bandwidth = 1.0e-03 : f64} : tensor<?x16384xf32>, tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$grad, Sae_Matrix:$input,
                       Sae_Vector:$threshold, F64Attr:$bandwidth);
  let results = (outs Sae_Matrix:$input_grad, Sae_Vector:$threshold_grad);
  let assemblyFormat = [{
    $grad `,` $input `,` $threshold attr-dict `:` type($input) `,` type($threshold)
  }];
}

def Sae_L0GradOp : Sae_Op<"l0_grad", [AllTypesMatch<["threshold", "result"]>]> {
  let summary = "the straight-through gradient of sae.l0 w.r.t. the threshold";
  let description = [{
    For `s = l0(x, θ)` and `grad = ∂L/∂s`:
    `result[i] = grad · (−1/ε) · mean_b rect((x[b, i] − θ_i)/ε)` (SAELens'
    Step function; the input gets no gradient).

    Example:
    ```mlir
    %dt = sae.l0_grad %x, %t, %ds {bandwidth = 1.0e-03 : f64} : tensor<?x16384xf32>, tensor<16384xf32>, f32
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$threshold,
                       AnyFloat:$grad, F64Attr:$bandwidth);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = [{
    $input `,` $threshold `,` $grad attr-dict `:` type($input) `,` type($threshold) `,` type($grad)
  }];
}

def Sae_ProjectRowsOp : Sae_Op<"project_rows", [AllTypesMatch<["grad", "weight", "result"]>]> {
  let summary = "remove from each gradient row its component along the weight row";
  let description = [{
    `result[i, :] = grad[i, :] − ⟨grad[i, :], weight[i, :]⟩ · weight[i, :]`:
    the decoder unit-norm rule's projection, for unit-norm weight rows.

    Example:
    ```mlir
    %g2 = sae.project_rows %g, %W_dec : tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$grad, Sae_Matrix:$weight);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = "$grad `,` $weight attr-dict `:` type($grad)";
}

def Sae_AdamOp : Sae_Op<"adam",
    [AllTypesMatch<["param", "grad", "m", "v", "new_param", "new_m", "new_v"]>]> {
  let summary = "one Adam update of a parameter and its moments";
  let description = [{
    As torch.optim.Adam: `m' = β₁m + (1−β₁)g`, `v' = β₂v + (1−β₂)g²`,
    `p' = p − (lr/bc1) · m' / (sqrt(v')/sqrt(bc2) + ε)`, where `bc1 = 1 − β₁ᵗ`
    and `bc2 = 1 − β₂ᵗ` are the bias corrections of step t. One pass over the
    parameter.

    Example:
    ```mlir
    %p2, %m2, %v2 = sae.adam %p, %g, %m, %v, %lr, %b1, %b2, %eps, %bc1, %bc2 : tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_FloatTensor:$param, Sae_FloatTensor:$grad,
                       Sae_FloatTensor:$m, Sae_FloatTensor:$v, F32:$lr,
                       F32:$beta1, F32:$beta2, F32:$eps, F32:$bc1, F32:$bc2);
  let results = (outs Sae_FloatTensor:$new_param, Sae_FloatTensor:$new_m,
                      Sae_FloatTensor:$new_v);
  let assemblyFormat = [{
    $param `,` $grad `,` $m `,` $v `,` $lr `,` $beta1 `,` $beta2 `,` $eps `,` $bc1 `,` $bc2 attr-dict `:` type($param)
  }];
}

def Sae_SinceFiredOp : Sae_Op<"since_fired", [AllTypesMatch<["counter", "fired", "result"]>]> {
  let summary = "advance per-latent tokens-since-fired counters by one batch";
  let description = [{
    `result[i] = fired[i] > 0 ? 0 : counter[i] + B` where B is the batch
    size of `batch`: the training rule of a `state` used as aux_k's
    `since_fired`.

    Example:
    ```mlir
    %s2 = sae.since_fired %s, %fired, %x : tensor<16384xf32>, tensor<?x768xf32>
    ```
  }];
  let arguments = (ins Sae_Vector:$counter, Sae_Vector:$fired,
                       Sae_Matrix:$batch);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = [{
    $counter `,` $fired `,` $batch attr-dict `:` type($counter) `,` type($batch)
  }];
}

def Sae_ThresholdEmaOp : Sae_Op<"threshold_ema", [AllTypesMatch<["threshold", "result"]>]> {
  let summary = "track BatchTopK's inference threshold (the rule of its `state`)";
  let description = [{
    With `m` the smallest positive value among the entries of `codes` (the
    batch's selection), `result[i] = β·threshold[i] + (1 − β)·m`, or `m` where
    `threshold[i] <= 0` (the first step); unchanged when no entry is
    positive (dictionary_learning's BatchTopK trainer, β = 0.999).

    Example:
    ```mlir
    %t2 = sae.threshold_ema %t, %z {beta = 0.999 : f64} : tensor<16384xf32>, !sae.codes<?x16384xf32, k = 32, batch>
    ```
  }];
  let arguments = (ins Sae_Vector:$threshold, Sae_CodesType:$codes,
                       F64Attr:$beta);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = [{
    $threshold `,` $codes attr-dict `:` type($threshold) `,` type($codes)
  }];
}

def Sae_BiasAdaptOp : Sae_Op<"bias_adapt",
    [AllTypesMatch<["bias", "new_bias"]>, AllTypesMatch<["stats", "new_stats"]>]> {
  let summary = "Group Bias Adaptation: the training rule of a bias `state`";
  let description = [{
    Chen et al. 2025 ("Taming Polysemanticity"). `stats : [3, n]` holds, per
    latent since the last update, the rows where `input > 0` (row 0), the
    largest `input` (row 1), and the rows seen (row 2). The batch's are
    added; once at least `every` rows are in, with `p̂_i` = firing frequency,
    `r_i` = largest pre-activation, latents in `groups` contiguous groups of
    `n/groups` whose target frequencies fall geometrically from `p_max` to
    `p_min`, and `s̄_g` the mean of the positive `r_i` of group g:
    `b_i ← max(b_i − γ·r_i, −1)` if `p̂_i > p_g`;
    `b_i ← min(b_i + γ·s̄_g, 0)` if `p̂_i < 1e-6` (dead); else unchanged;
    then the statistics restart from zero.

    Example:
    ```mlir
    %b2, %s2 = sae.bias_adapt %pre, %b, %s {groups = 10 : i64, p_max = 0.1 : f64, p_min = 0.001 : f64, every = 25600 : i64, gamma = 0.01 : f64} : tensor<?x16384xf32>, tensor<16384xf32>, tensor<3x16384xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$bias, Sae_Matrix:$stats,
                       I64Attr:$groups, F64Attr:$p_max, F64Attr:$p_min,
                       I64Attr:$every, F64Attr:$gamma);
  let results = (outs Sae_Vector:$new_bias, Sae_Matrix:$new_stats);
  let assemblyFormat = [{
    $input `,` $bias `,` $stats attr-dict `:` type($input) `,` type($bias) `,` type($stats)
  }];
}

def Sae_MatchingPursuitGradOp : Sae_Op<"matching_pursuit_grad",
    [AllTypesMatch<["input", "input_grad"]>, AllTypesMatch<["decoder", "decoder_grad"]>,
     AllTypesMatch<["codes", "grad"]>]> {
  let summary = "the gradient of sae.matching_pursuit through its inner products";
  let description = [{
    For `codes = matching_pursuit(input, decoder)` and `grad`, the gradient
    of the codes (same entries): the pursuit is replayed per row (the same
    atoms), then swept backwards with the atoms fixed. Step t chose atom
    `a_t` with `v_t = ⟨r_{t−1}, w_{a_t}⟩` (clamped at 0 with `nonneg`) and
    `r_t = r_{t−1} − v_t w_{a_t}`; with `g_r` the gradient of the residual
    (0 after the last step) and `g_t` the codes' gradient at `a_t`'s slot:
    `g_v = g_t − ⟨g_r, w_{a_t}⟩` (0 where the clamp was active),
    `∂w_{a_t} += g_v r_{t−1} − v_t g_r`, `g_r += g_v w_{a_t}`; the input's
    gradient is the final `g_r`.

    Example:
    ```mlir
    %dr, %dw = sae.matching_pursuit_grad %r, %w, %z, %g {nonneg} : tensor<?x768xf32>, tensor<16384x768xf32>, !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$decoder,
                       Sae_CodesType:$codes, Sae_CodesType:$grad,
                       UnitAttr:$nonneg);
  let results = (outs Sae_Matrix:$input_grad, Sae_Matrix:$decoder_grad);
  let assemblyFormat = [{
    $input `,` $decoder `,` $codes `,` $grad attr-dict `:` type($input) `,` type($decoder) `,` type($codes)
  }];
}

def Sae_DeadMaskOp : Sae_Op<"dead_mask", [AllTypesMatch<["since_fired", "result"]>]> {
  let summary = "1 for every dead latent, 0 for the others (AuxK's rule)";
  let description = [{
    `result[i] = 1` when `since_fired[i] >= dead_after`, or, with
    `zipf_alpha`, when the frequency `since_fired[i]` is below its Zipf
    target (see `sae.aux_k`); else 0.

    Example:
    ```mlir
    %d = sae.dead_mask %since {dead_after = 1.0e+07 : f64} : tensor<16384xf32>
    ```
  }];
  let arguments = (ins Sae_Vector:$since_fired, F64Attr:$dead_after,
                       OptionalAttr<F64Attr>:$zipf_alpha,
                       OptionalAttr<I64Attr>:$zipf_k);
  let results = (outs Sae_Vector:$result);
  let assemblyFormat = "$since_fired attr-dict `:` type($since_fired)";
}

def Sae_DeadTopKOp : Sae_Op<"dead_topk"> {
  let summary = "the top entries of each row among dead latents (AuxK)";
  let description = [{
    Per row, the `k` largest entries of `input` among the latents where
    `mask` (a `sae.dead_mask`) is 1; slots left over when a row has fewer
    dead latents hold value 0. Gradient (training): the kept entries of
    dead latents.

    Example:
    ```mlir
    %a = sae.dead_topk %pre, %dead : tensor<?x16384xf32>, tensor<16384xf32> -> !sae.codes<?x16384xf32, k = 512>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, Sae_Vector:$mask);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $input `,` $mask attr-dict `:` type($input) `,` type($mask) `->` type($result)
  }];
}

def Sae_PlaceRowsOp : Sae_Op<"place_rows"> {
  let summary = "a few rows placed among zero rows";
  let description = [{
    `result[j, :] = rows[slot[j], :]` where `slot[j] >= 0`, else 0, for
    `rows : [m, d]` and `slot : [n]` (i32), giving `[n, d]`. A gradient
    that is zero outside a few rows (AuxK's decoder gradient, over the dead
    latents) kept as those rows: an update that reads the gradient row by
    row reads `rows` through `slot`, and the `[n, d]` matrix is only
    written where something needs it whole.

    Example:
    ```mlir
    %g = sae.place_rows %rows, %slot : tensor<?x768xf32>, tensor<16384xi32> -> tensor<16384x768xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$rows, 1DTensorOf<[I32]>:$slot);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $rows `,` $slot attr-dict `:` type($rows) `,` type($slot) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_TakeColumnsOp : Sae_Op<"take_columns"> {
  let summary = "a few columns of a matrix, side by side";
  let description = [{
    Column `j` of `input : [B, n]` becomes column `slot[j]` of the
    `[B, width]` result, for every `j` with `0 <= slot[j] < width`
    (`slot : [n]`, i32); where two columns share a slot, the later one is
    kept; result columns that no slot names are 0. The counterpart of
    `sae.place_rows` for columns: AuxK's selection reads the dead latents'
    columns of the pre-activation from it, side by side, and an encoder
    product whose epilogue writes them there need not write its `[B, n]`
    result at all.

    Example:
    ```mlir
    %c = sae.take_columns %pre, %slot, %width : tensor<?x16384xf32>, tensor<16384xi32> -> tensor<?x?xf32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input, 1DTensorOf<[I32]>:$slot,
                       Index:$width);
  let results = (outs Sae_Matrix:$result);
  let assemblyFormat = [{
    $input `,` $slot `,` $width attr-dict `:` type($input) `,` type($slot)
    `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_PrefixOp : Sae_Op<"prefix", [AllTypesMatch<["input", "result"]>]> {
  let summary = "zero every code of a latent at or above a width";
  let description = [{
    Keeps the entries of latents `i < width` (Matryoshka prefixes); dense
    codes or sparse codes (whose entries stay, valued 0). Its gradient is
    the same mask.

    Example:
    ```mlir
    %p = sae.prefix %z {width = 1024 : i64} : !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_CodesOrDense:$input, I64Attr:$width);
  let results = (outs Sae_CodesOrDense:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

#endif // SAE_DIALECT_SAE_IR_SAEOPS_TD
