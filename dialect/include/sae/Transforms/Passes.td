//===- Passes.td - Transformations on the sae dialect ------*- tablegen -*-===//
#ifndef SAE_TRANSFORMS_PASSES_TD
#define SAE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def EmitCABI : Pass<"sae-emit-c-abi", "ModuleOp"> {
  let summary = "Wrap the model's entry functions in the C ABI of runtime/include/sae/runtime/abi.h";
  let description = [{
    Every `func.func` carrying a `sae.entry` attribute is a tensor-level entry
    point produced by MLIRGen. This pass replaces it by a public function
    `sae_<entry>` with plain C arguments: an `i64` batch size when a data
    tensor has a dynamic dimension, then one pointer per data tensor, one
    pointer to the array of parameter pointers (arguments marked
    `sae.param`), and one pointer per result; scalar integer arguments are
    passed by value. Pointers are turned into memrefs (row-major), inputs
    into tensors with `bufferization.to_tensor restrict`, and results are
    written with `bufferization.materialize_in_destination`. It also emits
    `sae_abi_version` and `sae_model_describe` (the module's `sae.describe`
    JSON string).
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::bufferization::BufferizationDialect",
    "::mlir::func::FuncDialect", "::mlir::LLVM::LLVMDialect",
    "::mlir::memref::MemRefDialect"
  ];
}

#endif // SAE_TRANSFORMS_PASSES_TD
