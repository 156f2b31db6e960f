//===- FrontendTestUtil.h - Parsing specs in unit tests ----------*- C++ -*-===//
#ifndef SAE_TEST_UNIT_FRONTEND_FRONTENDTESTUTIL_H
#define SAE_TEST_UNIT_FRONTEND_FRONTENDTESTUTIL_H

#include "sae/Frontend/Parser.h"
#include "sae/Frontend/Sema.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace saetest {

/// Parses (and optionally checks) a spec, collecting every diagnostic as
/// "line:col: message".
struct Frontend {
  mlir::MLIRContext ctx;
  std::vector<std::string> errors;
  std::unique_ptr<sae::ModelAST> ast;
  std::optional<sae::CheckedModel> model;

  explicit Frontend(const std::string &text, bool check = false,
                    std::map<std::string, int64_t> overrides = {}) {
    mlir::ScopedDiagnosticHandler handler(&ctx, [&](mlir::Diagnostic &d) {
      if (d.getSeverity() != mlir::DiagnosticSeverity::Error)
        return mlir::success();
      std::string s;
      if (auto loc = llvm::dyn_cast<mlir::FileLineColLoc>(d.getLocation()))
        s = std::to_string(loc.getLine()) + ":" +
            std::to_string(loc.getColumn()) + ": ";
      errors.push_back(s + d.str());
      return mlir::success();
    });
    ast = sae::parseSpec(ctx, "test.sae", text);
    if (ast && check)
      model = sae::analyze(*ast, ctx, overrides);
  }
};

} // namespace saetest

#endif // SAE_TEST_UNIT_FRONTEND_FRONTENDTESTUTIL_H
