//===- saec.cpp - The saec compiler driver --------------------------------===//
//
// saec SPEC.sae -o LIB.so: parse, check, generate the sae dialect, lower it
// for the host CPU (or --target-cpu) and link a shared library implementing
// runtime/include/sae/runtime/abi.h. `--emit=` stops at any stage (Toy's
// ladder): ast, mlir, lowered (LLVM dialect), llvm (LLVM IR), lib.
// `--target-cpu=NAME` generates code for another CPU of the host's
// architecture than the host's own.
//
//===----------------------------------------------------------------------===//
#include "sae/Dialect/Sae/IR/SaeDialect.h"
#include "sae/Frontend/AST.h"
#include "sae/Frontend/Parser.h"
#include "sae/Frontend/Sema.h"
#include "sae/MLIRGen/MLIRGen.h"
#include "sae/Pipeline/Pipeline.h"
#include "sae/Target/CPU/CPUTarget.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"

#include <map>

namespace cl = llvm::cl;

static cl::OptionCategory saecCategory("saec options");

static cl::opt<std::string> inputFilename(cl::Positional,
                                          cl::desc("<spec.sae>"),
                                          cl::cat(saecCategory));

static cl::opt<std::string>
    outputFilename("o",
                   cl::desc("Output file (default: lib<model>.so for "
                            "--emit=lib, standard output otherwise)"),
                   cl::value_desc("file"), cl::init(""), cl::cat(saecCategory));

namespace {
enum class Emit { AST, MLIR, Lowered, LLVMIR, Lib };
} // namespace

static cl::opt<Emit> emitAction(
    "emit", cl::desc("What to produce"), cl::init(Emit::Lib),
    cl::values(clEnumValN(Emit::AST, "ast", "the syntax tree with ranges"),
               clEnumValN(Emit::MLIR, "mlir", "the sae dialect (MLIRGen)"),
               clEnumValN(Emit::Lowered, "lowered",
                          "the LLVM dialect after the CPU pipeline"),
               clEnumValN(Emit::LLVMIR, "llvm", "optimised LLVM IR"),
               clEnumValN(Emit::Lib, "lib", "a shared library (default)")),
    cl::cat(saecCategory));

static cl::opt<bool> verifyDiagnostics(
    "verify-diagnostics",
    cl::desc("Check the diagnostics against expected-error {{...}} comments "
             "in the spec instead of printing them"),
    cl::init(false), cl::cat(saecCategory));

static cl::list<std::string>
    defines("D", cl::desc("Override a dimension: -D n=4096"),
            cl::value_desc("name=value"), cl::Prefix, cl::cat(saecCategory));

static cl::opt<unsigned> optLevel("O", cl::desc("LLVM optimisation level 0-3"),
                                  cl::init(3), cl::Prefix,
                                  cl::cat(saecCategory));

static cl::opt<std::string> targetCpu(
    "target-cpu",
    cl::desc("The CPU to generate code for: host (the default, this "
             "machine's CPU and features) or an LLVM CPU name of the host's "
             "architecture, such as haswell (AVX2) or skylake-avx512; "
             "--target-cpu=help lists them. The library records the "
             "features it needs and refuses to load where they are missing"),
    cl::value_desc("cpu"), cl::init("host"), cl::cat(saecCategory));

namespace {

/// Runs every stage up to `emitAction`; diagnostics go to the installed
/// handler. Returns failure after the first stage that reports an error.
mlir::LogicalResult compile(mlir::MLIRContext &ctx, llvm::SourceMgr &srcMgr,
                            const std::map<std::string, int64_t> &overrides,
                            const sae::CpuTarget &target,
                            llvm::raw_ostream &out, std::string &libPath) {
  const llvm::MemoryBuffer *buf = srcMgr.getMemoryBuffer(1);
  std::unique_ptr<sae::ModelAST> ast =
      sae::parseSpec(ctx, inputFilename, buf->getBuffer());
  if (!ast)
    return mlir::failure();
  if (emitAction == Emit::AST) {
    sae::dump(*ast, out);
    return mlir::success();
  }
  std::optional<sae::CheckedModel> model = sae::analyze(*ast, ctx, overrides);
  if (!model)
    return mlir::failure();
  mlir::OwningOpRef<mlir::ModuleOp> module =
      sae::mlirGen(ctx, *model, inputFilename);
  if (!module)
    return mlir::failure();
  if (emitAction == Emit::MLIR) {
    module->print(out);
    return mlir::success();
  }

  if (mlir::failed(sae::annotateTarget(*module, target)))
    return mlir::failure();
  mlir::PassManager pm(&ctx);
  if (mlir::failed(mlir::applyPassManagerCLOptions(pm)))
    return mlir::failure();
  std::string pipelineErr;
  llvm::raw_string_ostream errs(pipelineErr);
  if (mlir::failed(sae::buildCpuPipeline(pm, errs, target.vectorLanes))) {
    mlir::emitError(mlir::UnknownLoc::get(&ctx))
        << "invalid CPU pipeline: " << pipelineErr;
    return mlir::failure();
  }
  if (mlir::failed(pm.run(*module)))
    return mlir::failure();
  if (emitAction == Emit::Lowered) {
    module->print(out);
    return mlir::success();
  }

  llvm::LLVMContext llvmCtx;
  std::unique_ptr<llvm::Module> llvmModule =
      sae::translateAndOptimize(*module, llvmCtx, target, optLevel);
  if (!llvmModule)
    return mlir::failure();
  if (emitAction == Emit::LLVMIR) {
    llvmModule->print(out, nullptr);
    return mlir::success();
  }
  std::string error;
  if (!sae::emitSharedLibrary(*llvmModule, target, libPath, error)) {
    mlir::emitError(mlir::UnknownLoc::get(&ctx)) << error;
    return mlir::failure();
  }
  return mlir::success();
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM y(argc, argv);
  mlir::registerAsmPrinterCLOptions();
  mlir::registerMLIRContextCLOptions();
  mlir::registerPassManagerCLOptions();
  cl::HideUnrelatedOptions(saecCategory);
  cl::ParseCommandLineOptions(
      argc, argv,
      "saec: compile a sparse autoencoder spec (.sae) into a shared library\n\n"
      "  saec examples/topk.sae -o libtopk.so\n"
      "  saec examples/topk.sae --emit=mlir\n");

  if (targetCpu == "help") {
    sae::printCpuNames(llvm::outs());
    return 0;
  }
  if (inputFilename.empty()) {
    llvm::errs() << "saec: error: no spec file given (saec --help)\n";
    return 1;
  }
  std::string targetError;
  std::optional<sae::CpuTarget> target =
      sae::getCpuTarget(targetCpu, targetError);
  if (!target) {
    llvm::errs() << "saec: error: --target-cpu: " << targetError << "\n";
    return 1;
  }
  if (optLevel > 3) {
    llvm::errs() << "saec: error: -O" << optLevel
                 << " is not an optimisation level; use -O0 to -O3\n";
    return 1;
  }
  std::map<std::string, int64_t> overrides;
  for (const std::string &d : defines) {
    llvm::StringRef name, value;
    std::tie(name, value) = llvm::StringRef(d).split('=');
    long long v;
    if (name.empty() || value.getAsInteger(10, v)) {
      llvm::errs() << "saec: error: -D expects name=integer, got '" << d
                   << "'\n";
      return 1;
    }
    overrides[name.str()] = v;
  }

  std::string errorMessage;
  std::unique_ptr<llvm::MemoryBuffer> input =
      mlir::openInputFile(inputFilename, &errorMessage);
  if (!input) {
    llvm::errs() << "saec: error: " << errorMessage << "\n";
    return 1;
  }

  mlir::DialectRegistry registry;
  registry.insert<mlir::sae::SaeDialect>();
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::registerAllToLLVMIRTranslations(registry);
  mlir::registerAllPasses();
  sae::registerSaePassesAndPipelines();
  mlir::MLIRContext ctx(registry);
  ctx.loadAllAvailableDialects();

  llvm::SourceMgr srcMgr;
  srcMgr.AddNewSourceBuffer(std::move(input), llvm::SMLoc());

  std::string libPath = outputFilename;
  if (emitAction == Emit::Lib && libPath.empty()) {
    llvm::StringRef stem = llvm::sys::path::stem(inputFilename);
    libPath = ("lib" + stem + ".so").str();
  }
  bool toStdout = emitAction != Emit::Lib;
  std::unique_ptr<llvm::ToolOutputFile> outFile;
  if (toStdout && !outputFilename.empty() && outputFilename != "-") {
    outFile = mlir::openOutputFile(outputFilename, &errorMessage);
    if (!outFile) {
      llvm::errs() << "saec: error: " << errorMessage << "\n";
      return 1;
    }
  }
  llvm::raw_ostream &out = outFile ? outFile->os() : llvm::outs();

  if (verifyDiagnostics) {
    mlir::SourceMgrDiagnosticVerifierHandler handler(srcMgr, &ctx);
    (void)compile(ctx, srcMgr, overrides, *target, out, libPath);
    return mlir::failed(handler.verify()) ? 1 : 0;
  }
  mlir::SourceMgrDiagnosticHandler handler(srcMgr, &ctx);
  if (mlir::failed(compile(ctx, srcMgr, overrides, *target, out, libPath)))
    return 1;
  if (outFile)
    outFile->keep();
  return 0;
}
