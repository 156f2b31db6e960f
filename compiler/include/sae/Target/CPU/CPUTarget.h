//===- CPUTarget.h - Host CPU code generation ---------------------*- C++
//-*-===//
//
// From the LLVM dialect to a shared library for the CPU saec runs on: LLVM IR,
// the O3 pipeline tuned for the host CPU's name and features, an object file,
// and the system linker. Never a fixed CPU: the library records the features
// it needs and the runtime refuses to load it on a CPU that lacks them.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_TARGET_CPU_CPUTARGET_H
#define SAE_TARGET_CPU_CPUTARGET_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/Module.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sae {

struct CpuTarget {
  std::string triple;
  std::string cpu;
  std::string features; // LLVM feature string, "+avx2,+fma,..."
  /// Features the generated code may use, named as __builtin_cpu_supports
  /// names them (checked by the runtime when loading the library).
  std::vector<std::string> requiredFeatures;
  /// f32 lanes per vector in the product kernels (convert-sae-to-linalg's
  /// vector-lanes): 16 with AVX-512, else 8.
  int64_t vectorLanes = 8;
};

/// The host's triple, CPU name and features.
CpuTarget getHostCpuTarget();

/// The target for `cpu`, an LLVM CPU name (`haswell`, `x86-64-v4`, ...) on
/// the host's architecture, with that CPU's features; "host" or "" is
/// getHostCpuTarget(). An unknown name sets `error` and returns nullopt.
std::optional<CpuTarget> getCpuTarget(llvm::StringRef cpu, std::string &error);

/// Lists the CPU names getCpuTarget knows, one per line.
void printCpuNames(llvm::raw_ostream &os);

/// Adds the "target" object to the module's `sae.describe` JSON.
mlir::LogicalResult annotateTarget(mlir::ModuleOp module,
                                   const CpuTarget &target);

/// Translates an LLVM-dialect module to LLVM IR and optimises it at `optLevel`
/// (0-3) for `target`. Reports errors through the module's context.
std::unique_ptr<llvm::Module> translateAndOptimize(mlir::ModuleOp module,
                                                   llvm::LLVMContext &llvmCtx,
                                                   const CpuTarget &target,
                                                   unsigned optLevel);

/// Writes `llvmModule` as an object file, then links it into the shared
/// library `outputPath` with the system C compiler driver (`cc`, or $CC).
/// On failure, `error` says why.
bool emitSharedLibrary(llvm::Module &llvmModule, const CpuTarget &target,
                       llvm::StringRef outputPath, std::string &error);

} // namespace sae

#endif // SAE_TARGET_CPU_CPUTARGET_H
