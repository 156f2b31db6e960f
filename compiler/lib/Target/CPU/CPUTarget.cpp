//===- CPUTarget.cpp - Host CPU code generation ---------------------------===//
#include "sae/Target/CPU/CPUTarget.h"

#include "mlir/Target/LLVMIR/Export.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Verifier.h"
#include "llvm/MC/MCSubtargetInfo.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FileUtilities.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/Target/TargetOptions.h"
#include "llvm/TargetParser/Host.h"

using namespace sae;

namespace {

#include "WorkspaceSource.inc"

/// x86 features whose absence makes generated code fault, with the names
/// __builtin_cpu_supports uses for them (LLVM's are the same here).
constexpr const char *kCheckedX86Features[] = {
    "sse4.2",   "avx",        "avx2",      "fma",      "bmi",
    "bmi2",     "avx512f",    "avx512bw",  "avx512dq", "avx512vl",
    "avx512cd", "avx512vnni", "avx512bf16"};

std::unique_ptr<llvm::TargetMachine>
createTargetMachine(const CpuTarget &t, unsigned optLevel, std::string &error) {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  llvm::Triple triple(t.triple);
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return nullptr;
  llvm::TargetOptions options;
  auto level = optLevel >= 3   ? llvm::CodeGenOptLevel::Aggressive
               : optLevel == 2 ? llvm::CodeGenOptLevel::Default
               : optLevel == 1 ? llvm::CodeGenOptLevel::Less
                               : llvm::CodeGenOptLevel::None;
  return std::unique_ptr<llvm::TargetMachine>(
      target->createTargetMachine(triple, t.cpu, t.features, options,
                                  llvm::Reloc::PIC_, std::nullopt, level));
}

} // namespace

/// 16 f32 lanes with AVX-512, else 8 (AVX2's, and what other targets'
/// vectorisers split or widen to).
static int64_t lanesFor(const CpuTarget &t) {
  return llvm::is_contained(t.requiredFeatures, "avx512f") ? 16 : 8;
}

CpuTarget sae::getHostCpuTarget() {
  CpuTarget t;
  t.triple = llvm::sys::getProcessTriple();
  t.cpu = llvm::sys::getHostCPUName().str();
  llvm::StringMap<bool> features = llvm::sys::getHostCPUFeatures();
  std::vector<std::string> enabled;
  for (const auto &f : features)
    enabled.push_back((f.second ? "+" : "-") + f.first().str());
  std::sort(enabled.begin(), enabled.end());
  t.features = llvm::join(enabled, ",");
  if (llvm::Triple(t.triple).isX86())
    for (const char *name : kCheckedX86Features) {
      auto it = features.find(name);
      if (it != features.end() && it->second)
        t.requiredFeatures.push_back(name);
    }
  t.vectorLanes = lanesFor(t);
  return t;
}

std::optional<CpuTarget> sae::getCpuTarget(llvm::StringRef cpu,
                                           std::string &error) {
  if (cpu.empty() || cpu == "host")
    return getHostCpuTarget();
  llvm::InitializeNativeTarget();
  CpuTarget t;
  t.triple = llvm::sys::getProcessTriple();
  llvm::Triple triple(t.triple);
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return std::nullopt;
  // Checked on the generic subtarget first: creating one for an unknown
  // CPU prints LLVM's own warning.
  std::unique_ptr<llvm::MCSubtargetInfo> generic(
      target->createMCSubtargetInfo(triple, "", ""));
  if (!generic || !generic->isCPUStringValid(cpu)) {
    error = ("unknown CPU '" + cpu + "' for " + t.triple +
             " (--target-cpu=help lists the known ones)")
                .str();
    return std::nullopt;
  }
  std::unique_ptr<llvm::MCSubtargetInfo> sti(
      target->createMCSubtargetInfo(triple, cpu, ""));
  // The CPU's own features: an empty feature string takes its defaults.
  t.cpu = cpu.str();
  if (triple.isX86())
    for (const char *name : kCheckedX86Features)
      if (sti->checkFeatures(std::string("+") + name))
        t.requiredFeatures.push_back(name);
  t.vectorLanes = lanesFor(t);
  return t;
}

void sae::printCpuNames(llvm::raw_ostream &os) {
  llvm::InitializeNativeTarget();
  std::string triple = llvm::sys::getProcessTriple(), error;
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(llvm::Triple(triple), error);
  if (!target) {
    os << error << "\n";
    return;
  }
  std::unique_ptr<llvm::MCSubtargetInfo> sti(
      target->createMCSubtargetInfo(llvm::Triple(triple), "", ""));
  os << "CPU names for --target-cpu on " << triple
     << " (default: host, this machine's CPU, " << llvm::sys::getHostCPUName()
     << ", with its features):\n";
  for (const llvm::SubtargetSubTypeKV &kv : sti->getAllProcessorDescriptions())
    os << "  " << kv.Key << "\n";
}

mlir::LogicalResult sae::annotateTarget(mlir::ModuleOp module,
                                        const CpuTarget &target) {
  auto attr = module->getAttrOfType<mlir::StringAttr>("sae.describe");
  if (!attr)
    return module.emitError("module has no 'sae.describe' attribute");
  llvm::Expected<llvm::json::Value> parsed = llvm::json::parse(attr.getValue());
  if (!parsed) {
    std::string msg = llvm::toString(parsed.takeError());
    return module.emitError() << "invalid 'sae.describe' JSON: " << msg;
  }
  llvm::json::Array required;
  for (const std::string &f : target.requiredFeatures)
    required.push_back(f);
  (*parsed->getAsObject())["target"] =
      llvm::json::Object{{"triple", target.triple},
                         {"cpu", target.cpu},
                         {"required_features", std::move(required)}};
  std::string text;
  llvm::raw_string_ostream os(text);
  os << *parsed;
  module->setAttr("sae.describe",
                  mlir::StringAttr::get(module.getContext(), text));
  return mlir::success();
}

std::unique_ptr<llvm::Module>
sae::translateAndOptimize(mlir::ModuleOp module, llvm::LLVMContext &llvmCtx,
                          const CpuTarget &target, unsigned optLevel) {
  std::unique_ptr<llvm::Module> llvmModule =
      mlir::translateModuleToLLVMIR(module, llvmCtx);
  if (!llvmModule) {
    module.emitError("failed to translate the LLVM dialect to LLVM IR");
    return nullptr;
  }
  std::string error;
  std::unique_ptr<llvm::TargetMachine> tm =
      createTargetMachine(target, optLevel, error);
  if (!tm) {
    module.emitError() << "no code generator for '" << target.triple
                       << "': " << error;
    return nullptr;
  }
  llvmModule->setTargetTriple(llvm::Triple(target.triple));
  llvmModule->setDataLayout(tm->createDataLayout());
  // Let the vectoriser and the code generator use the host's features.
  for (llvm::Function &f : *llvmModule) {
    if (f.isDeclaration())
      continue;
    f.addFnAttr("target-cpu", target.cpu);
    if (!target.features.empty())
      f.addFnAttr("target-features", target.features);
  }
  if (optLevel == 0)
    return llvmModule;

  llvm::LoopAnalysisManager lam;
  llvm::FunctionAnalysisManager fam;
  llvm::CGSCCAnalysisManager cgam;
  llvm::ModuleAnalysisManager mam;
  llvm::PipelineTuningOptions tuning;
  tuning.LoopVectorization = true;
  tuning.SLPVectorization = true;
  llvm::PassBuilder pb(tm.get(), tuning);
  pb.registerModuleAnalyses(mam);
  pb.registerCGSCCAnalyses(cgam);
  pb.registerFunctionAnalyses(fam);
  pb.registerLoopAnalyses(lam);
  pb.crossRegisterProxies(lam, fam, cgam, mam);
  llvm::OptimizationLevel level = optLevel >= 3   ? llvm::OptimizationLevel::O3
                                  : optLevel == 2 ? llvm::OptimizationLevel::O2
                                                  : llvm::OptimizationLevel::O1;
  llvm::ModulePassManager mpm = pb.buildPerModuleDefaultPipeline(level);
  mpm.run(*llvmModule, mam);
  return llvmModule;
}

bool sae::emitSharedLibrary(llvm::Module &llvmModule, const CpuTarget &target,
                            llvm::StringRef outputPath, std::string &error) {
  std::unique_ptr<llvm::TargetMachine> tm =
      createTargetMachine(target, 3, error);
  if (!tm)
    return false;

  llvm::SmallString<128> objPath;
  int fd;
  if (std::error_code ec =
          llvm::sys::fs::createTemporaryFile("saec", "o", fd, objPath)) {
    error = "cannot create a temporary object file: " + ec.message();
    return false;
  }
  llvm::FileRemover removeObj(objPath);
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    llvm::legacy::PassManager pm;
    if (tm->addPassesToEmitFile(pm, os, nullptr,
                                llvm::CodeGenFileType::ObjectFile)) {
      error = "the code generator cannot emit an object file";
      return false;
    }
    pm.run(llvmModule);
    os.flush();
    if (os.has_error()) {
      error = "cannot write '" + objPath.str().str() + "'";
      return false;
    }
  }

  // The heap that the generated code allocates its work buffers from
  // (runtime/src/cpu/workspace.c), compiled in the same driver call.
  llvm::SmallString<128> wsPath;
  if (std::error_code ec = llvm::sys::fs::createTemporaryFile(
          "saec-workspace", "c", fd, wsPath)) {
    error = "cannot create a temporary source file: " + ec.message();
    return false;
  }
  llvm::FileRemover removeWs(wsPath);
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    os << kWorkspaceSource;
    os.flush();
    if (os.has_error()) {
      error = "cannot write '" + wsPath.str().str() + "'";
      return false;
    }
  }

  const char *ccEnv = std::getenv("CC");
  std::string ccName = ccEnv && *ccEnv ? ccEnv : "cc";
  llvm::ErrorOr<std::string> cc = llvm::sys::findProgramByName(ccName);
  if (!cc) {
    error = "cannot find the C compiler driver '" + ccName +
            "' to link with (install gcc or set CC)";
    return false;
  }
  // Link into a temporary file first, then rename: a failed or interrupted
  // link never leaves a truncated library behind.
  std::string tmpOut = (outputPath + ".tmp").str();
  // Parallel loops call LLVM's OpenMP runtime (Debian's libomp-22-dev).
  llvm::SmallVector<llvm::StringRef> args = {*cc, "-shared", "-o", tmpOut,
                                             objPath};
  args.append({"-O2", "-fPIC", "-pthread", wsPath});
  args.append({"-lm", "-L" SAE_LLVM_LIBDIR, "-lomp",
               "-Wl,-rpath," SAE_LLVM_LIBDIR, "-Wl,-z,noexecstack"});
  std::string linkErr;
  int rc =
      llvm::sys::ExecuteAndWait(*cc, args, std::nullopt, {}, 0, 0, &linkErr);
  if (rc != 0) {
    llvm::sys::fs::remove(tmpOut);
    error = "linking '" + outputPath.str() + "' failed" +
            (linkErr.empty() ? "" : ": " + linkErr);
    return false;
  }
  if (std::error_code ec = llvm::sys::fs::rename(tmpOut, outputPath)) {
    llvm::sys::fs::remove(tmpOut);
    error = "cannot write '" + outputPath.str() + "': " + ec.message();
    return false;
  }
  return true;
}
