//===- Passes.td - Conversions out of the sae dialect ------*- tablegen -*-===//
#ifndef SAE_CONVERSION_PASSES_TD
#define SAE_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertSaeToLinalg : Pass<"convert-sae-to-linalg", "ModuleOp"> {
  let summary = "Lower sae ops to linalg, tensor, scf, memref and arith";
  let description = [{
    Dense ops become `linalg.generic` on tensors, except the products
    (`sae.linear`) whose width is a multiple of two vectors: those become a
    register-blocked kernel on buffers (a packed panel of the weight, 6 rows
    × 2 vectors of accumulators, vector FMAs; 6 × 4 with 16 lanes, where
    AVX-512's 32 registers hold 24 accumulators, when the width is a multiple
    of four vectors), with `vector-lanes` f32 lanes per vector (0: 16 when
    the host has AVX-512, else 8). Selection (`sae.topk`) becomes a per-row insertion
    into a k-slot buffer written with scf loops on memrefs; sparse codes are
    carried as their values and indices tensors, and `sae.decode` becomes a
    gather: a `linalg.generic` over `[B, k, d]` that reads decoder rows with
    `tensor.extract`, so its work is independent of the number of latents.
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::bufferization::BufferizationDialect",
    "::mlir::linalg::LinalgDialect", "::mlir::math::MathDialect",
    "::mlir::memref::MemRefDialect", "::mlir::scf::SCFDialect",
    "::mlir::tensor::TensorDialect", "::mlir::vector::VectorDialect"
  ];
  let options = [
    Option<"vectorLanes", "vector-lanes", "int64_t", /*default=*/"0",
           "f32 lanes per vector of the product kernel (0: from the host)">
  ];
}

#endif // SAE_CONVERSION_PASSES_TD
