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

def Sae_TopKOp : Sae_Op<"topk"> {
  let summary = "keep the k largest entries of every row as sparse codes";
  let description = [{
    Selects, in every row of `input : [B, n]`, the `k` entries with the
    largest values (k is the result type's), and returns them as
    `!sae.codes` ordered by decreasing value; ties keep the lower latent
    index first, NaN entries are never selected. The result never holds the
    other `n - k` entries: consumers (`sae.decode`) work in O(k) per row.
    Gradients (training) flow through the kept entries only.

    Example:
    ```mlir
    %z = sae.topk %f : tensor<?x16384xf32> -> !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let arguments = (ins Sae_Matrix:$input);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
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
  let results = (outs Sae_Matrix:$result);
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
  let results = (outs 2DTensorOf<[I32]>:$result);
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
  let arguments = (ins Sae_Matrix:$values, 2DTensorOf<[I32]>:$indices);
  let results = (outs Sae_CodesType:$result);
  let assemblyFormat = [{
    $values `,` $indices attr-dict `:` type($values) `,` type($indices) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

class Sae_LossOp<string mnemonic>
    : Sae_Op<mnemonic, [AllTypesMatch<["input", "target"]>]> {
  let arguments = (ins Sae_Matrix:$input, Sae_Matrix:$target);
  let results = (outs AnyFloat:$result);
  let assemblyFormat = [{
    $input `,` $target attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
}

def Sae_MseOp : Sae_LossOp<"mse"> {
  let summary = "mean over rows of the squared reconstruction error";
  let description = [{
    `mean_b Σ_j (input[b, j] − target[b, j])²`, accumulated in f64. Dense in,
    scalar out.

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

#endif // SAE_DIALECT_SAE_IR_SAEOPS_TD
