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
    A batch of B rows of codes over `n` latents, in one of two layouts:
    - per row (the default): each row holds exactly `k` entries (some may be
      zero), stored as `values : tensor<B x k x elementType>` and
      `indices : tensor<B x k x i32>`;
    - `batch`: the batch holds `B·k` entries in all, a variable number per
      row (batch-level selection), stored as `values : tensor<(B·k) x
      elementType>`, `indices` and `rows : tensor<(B·k) x i32>`, sorted by
      row then by decreasing value.
    See `sae.codes_values`, `sae.codes_indices`, `sae.codes_rows`,
    `sae.make_codes`. `B` may be dynamic (`?`); `1 <= k <= n`. Both layouts
    decode by gathering one decoder row per entry.

    Example:
    ```mlir
    !sae.codes<?x16384xf32, k = 32>
    !sae.codes<?x16384xf32, k = 32, batch>
    ```
  }];
  let parameters = (ins "int64_t":$batch, "int64_t":$numLatents,
                        "::mlir::Type":$elementType, "int64_t":$k,
                        DefaultValuedParameter<"bool", "false">:$perBatch);
  let builders = [
    TypeBuilder<(ins "int64_t":$batch, "int64_t":$numLatents,
                     "::mlir::Type":$elementType, "int64_t":$k), [{
      return $_get($_ctxt, batch, numLatents, elementType, k, false);
    }]>
  ];
  let skipDefaultBuilders = 0;
  let hasCustomAssemblyFormat = 1;
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// The dense tensor type `[B, k]` that holds the values.
    ::mlir::RankedTensorType getValuesType() const;
    /// The dense tensor type `[B, k]` of i32 that holds the latent indices.
    ::mlir::RankedTensorType getIndicesType() const;
    /// The i32 tensor type `[B·k]` of row numbers (batch layout only).
    ::mlir::RankedTensorType getRowsType() const;
    /// The dense tensor type `[B, n]` these codes densify to.
    ::mlir::RankedTensorType getDenseType() const;
  }];
}

#endif // SAE_DIALECT_SAE_IR_SAETYPES_TD
