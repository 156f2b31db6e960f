//===- Pipeline.h - Named lowering pipelines ----------------------*- C++
//-*-===//
//
// The pass pipelines that saec runs, registered by name so that a lit test can
// run exactly what saec runs: `sae-opt --sae-cpu-pipeline`.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_PIPELINE_PIPELINE_H
#define SAE_PIPELINE_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <string>

namespace sae {

/// The textual pipeline from the sae dialect (tensor-level entry functions)
/// to the LLVM dialect for a CPU: C ABI wrappers, sae -> linalg,
/// bufferization, loops, LLVM. `vectorLanes`: f32 lanes per vector of the
/// product kernels (0: from the host's features).
std::string getCpuPipelineText(int64_t vectorLanes = 0);

/// Adds the CPU pipeline to `pm` (anchored on builtin.module).
mlir::LogicalResult buildCpuPipeline(mlir::OpPassManager &pm,
                                     llvm::raw_ostream &errs,
                                     int64_t vectorLanes = 0);

/// Registers the sae dialect's passes and the named pipelines.
void registerSaePassesAndPipelines();

} // namespace sae

#endif // SAE_PIPELINE_PIPELINE_H
