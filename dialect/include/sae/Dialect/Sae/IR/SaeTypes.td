//===- SaeTypes.td - Types of the sae dialect --------------*- tablegen -*-===//

#ifndef SAE_DIALECT_SAE_IR_SAETYPES_TD
#define SAE_DIALECT_SAE_IR_SAETYPES_TD

include "sae/Dialect/Sae/IR/SaeDialect.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/BuiltinTypeInterfaces.td"

def Sae_CodesType : TypeDef<Sae_Dialect, "Codes"> {
  let mnemonic = "codes";
  let summary = "k-sparse codes of a batch: k (value, latent index) pairs per row";
  let description = [{
    A batch of B rows of codes over `n` latents in which each row holds
    exactly `k` entries (some may be zero). The storage is a pair of dense
    tensors, `values : tensor<B x k x elementType>` and
    `indices : tensor<B x k x i32>` (see `sae.codes_values`,
    `sae.codes_indices`, `sae.make_codes`); entries of a row are ordered by
    decreasing value. `B` may be dynamic (`?`); `1 <= k <= n`.

    Example:
    ```mlir
    !sae.codes<?x16384xf32, k = 32>
    ```
  }];
  let parameters = (ins "int64_t":$batch, "int64_t":$numLatents,
                        "::mlir::Type":$elementType, "int64_t":$k);
  let hasCustomAssemblyFormat = 1;
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// The dense tensor type `[B, k]` that holds the values.
    ::mlir::RankedTensorType getValuesType() const;
    /// The dense tensor type `[B, k]` of i32 that holds the latent indices.
    ::mlir::RankedTensorType getIndicesType() const;
    /// The dense tensor type `[B, n]` these codes densify to.
    ::mlir::RankedTensorType getDenseType() const;
  }];
}

#endif // SAE_DIALECT_SAE_IR_SAETYPES_TD
