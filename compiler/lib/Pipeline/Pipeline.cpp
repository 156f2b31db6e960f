//===- Pipeline.cpp - Named lowering pipelines ----------------------------===//
#include "sae/Pipeline/Pipeline.h"
#include "sae/Conversion/Passes.h"
#include "sae/Transforms/Passes.h"

#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

namespace sae {

std::string getCpuPipelineText(int64_t vectorLanes) {
  // One stage per line; docs/design.md ("The CPU pipeline") says why each
  // is where it is.
  std::string lanes = vectorLanes > 0
                          ? "{vector-lanes=" + std::to_string(vectorLanes) + "}"
                          : "";
  return "sae-differentiate{drop-untrainable=true},"
         "sae-emit-c-abi,"
         "convert-sae-to-linalg" +
         lanes +
         ","
         "canonicalize,cse,"
         "func.func(linalg-fuse-elementwise-ops),"
         "one-shot-bufferize,"
         "buffer-deallocation-pipeline,"
         "sae-shorten-buffer-lifetimes,"
         "func.func(sae-parallelize-linalg),"
         "convert-linalg-to-loops,"
         "scf-forall-to-parallel,"
         "convert-scf-to-openmp,"
         "sae-guided-schedule,"
         "expand-strided-metadata,"
         "lower-affine,"
         "finalize-memref-to-llvm{use-generic-functions=true},"
         "convert-scf-to-cf,"
         "convert-math-to-llvm,"
         "convert-vector-to-llvm,"
         "convert-to-llvm,"
         "reconcile-unrealized-casts,"
         "canonicalize";
}

LogicalResult buildCpuPipeline(OpPassManager &pm, llvm::raw_ostream &errs,
                               int64_t vectorLanes) {
  // Parse into the (module-anchored) pass manager directly: wrapping the text
  // in builtin.module(...) would nest it and run nothing on the top module.
  return parsePassPipeline(getCpuPipelineText(vectorLanes), pm, errs);
}

void registerSaePassesAndPipelines() {
  mlir::sae::registerSaeConversionPasses();
  mlir::sae::registerSaeTransformsPasses();
  PassPipelineRegistration<>("sae-cpu-pipeline",
                             "Lower sae entry functions to the LLVM dialect "
                             "for a CPU (what saec runs)",
                             [](OpPassManager &pm) {
                               if (failed(buildCpuPipeline(pm, llvm::errs())))
                                 llvm::report_fatal_error(
                                     "invalid built-in CPU pipeline");
                             });
}

} // namespace sae
