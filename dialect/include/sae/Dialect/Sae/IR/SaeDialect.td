//===- SaeDialect.td - The sae dialect ---------------------*- tablegen -*-===//
//
// The dialect in which saec represents a sparse autoencoder: linear maps,
// sparsity operators producing k-sparse codes, decoding and losses.
//
//===----------------------------------------------------------------------===//

#ifndef SAE_DIALECT_SAE_IR_SAEDIALECT_TD
#define SAE_DIALECT_SAE_IR_SAEDIALECT_TD

include "mlir/IR/OpBase.td"

def Sae_Dialect : Dialect {
  let name = "sae";
  let summary = "Sparse autoencoders: encoders, sparsity operators, decoders, losses";
  let description = [{
    The `sae` dialect models the forward computation of a sparse autoencoder
    on batches of rows. Dense values are ranked tensors whose leading
    dimension is the batch (usually dynamic). The result of a sparsity
    operator such as `sae.topk` is a value of type `!sae.codes`, which
    carries the number of latents `n` and the static number `k` of entries
    kept per row; it is stored as a values tensor `[B, k]` and an indices
    tensor `[B, k]`, so decoding is a gather of k decoder rows per row and
    never touches the other `n - k` latents.
  }];
  let cppNamespace = "::mlir::sae";
  let useDefaultTypePrinterParser = 1;
  let extraClassDeclaration = [{
    /// Registers the types; defined next to their storage in SaeTypes.cpp.
    void registerTypes();
  }];
  let dependentDialects = ["::mlir::arith::ArithDialect",
                           "::mlir::tensor::TensorDialect"];
}

#endif // SAE_DIALECT_SAE_IR_SAEDIALECT_TD
