//===- sae-opt.cpp - The sae dialect's optimizer driver -------------------===//
//
// mlir-opt with the sae dialect, its passes and saec's named pipelines, for
// lit tests of every lowering step.
//
//===----------------------------------------------------------------------===//
#include "sae/Dialect/Sae/IR/SaeDialect.h"
#include "sae/Pipeline/Pipeline.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  sae::registerSaePassesAndPipelines();
  mlir::DialectRegistry registry;
  registry.insert<mlir::sae::SaeDialect>();
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::registerAllToLLVMIRTranslations(registry);
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "sae optimizer driver\n", registry));
}
