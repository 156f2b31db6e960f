//===- Parser.cpp - Parse .sae source into an AST -------------------------===//
//
// Runs the ANTLR-generated lexer and parser (compiled with exceptions and
// RTTI, like this file) and converts the parse tree into the AST. ANTLR's
// default console listeners are replaced by one that reports through MLIR's
// diagnostic engine, so every syntax error gets a `file:line:col`.
//
//===----------------------------------------------------------------------===//
#include "sae/Frontend/Parser.h"
#include "sae/Frontend/Diagnostics.h"

#include "SaeLexer.h"
#include "SaeParser.h"
#include "antlr4-runtime.h"

#include "llvm/Support/ConvertUTF.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

using namespace sae;
using namespace sae::grammar;

namespace {

/// Syntax errors beyond this many are counted, not printed.
constexpr unsigned kMaxReportedErrors = 20;

class DiagnosticErrorListener : public antlr4::BaseErrorListener {
public:
  DiagnosticErrorListener(mlir::MLIRContext &ctx,
                          std::shared_ptr<std::string> file)
      : ctx(ctx), file(std::move(file)) {}

  void syntaxError(antlr4::Recognizer *, antlr4::Token *, size_t line,
                   size_t charPositionInLine, const std::string &msg,
                   std::exception_ptr) override {
    ++numErrors;
    if (numErrors > kMaxReportedErrors)
      return;
    SourceLoc loc{file, unsigned(line), unsigned(charPositionInLine + 1)};
    std::string text = msg;
    // The lexer's wording for a character that starts no token.
    const std::string lexPrefix = "token recognition error at: ";
    if (text.rfind(lexPrefix, 0) == 0)
      text = "unexpected character " + text.substr(lexPrefix.size());
    // "mismatched input '<EOF>' expecting X" reads better as end of file.
    for (const char *prefix :
         {"extraneous input '<EOF>' ", "mismatched input '<EOF>' "})
      if (text.rfind(prefix, 0) == 0)
        text = "unexpected end of file, " + text.substr(strlen(prefix));
    emitError(ctx, loc) << text;
  }

  unsigned getNumErrors() const { return numErrors; }

private:
  mlir::MLIRContext &ctx;
  std::shared_ptr<std::string> file;
  unsigned numErrors = 0;
};

/// Converts ANTLR contexts into AST nodes.
class ASTBuilder {
public:
  ASTBuilder(mlir::MLIRContext &ctx, std::shared_ptr<std::string> file)
      : ctx(ctx), file(std::move(file)) {}

  std::unique_ptr<ModelAST> build(SaeParser::ModelContext *model) {
    std::vector<DeclPtr> decls;
    for (SaeParser::StmtContext *stmt : model->stmt())
      buildStmt(stmt, decls);
    if (failed)
      return nullptr;
    return std::make_unique<ModelAST>(range(model), model->name->getText(),
                                      std::move(decls));
  }

private:
  SourceLoc loc(antlr4::Token *tok) const {
    return SourceLoc{file, unsigned(tok->getLine()),
                     unsigned(tok->getCharPositionInLine() + 1)};
  }

  SourceRange range(antlr4::ParserRuleContext *ctx) const {
    SourceLoc end = loc(ctx->getStop() ? ctx->getStop() : ctx->getStart());
    if (ctx->getStop())
      end.col += ctx->getStop()->getText().size();
    return SourceRange{loc(ctx->getStart()), end};
  }

  std::vector<DimRefAST> buildShape(SaeParser::ShapeContext *shape) {
    std::vector<DimRefAST> dims;
    for (SaeParser::DimRefContext *ref : shape->dimRef()) {
      DimRefAST dim;
      dim.loc = loc(ref->getStart());
      if (auto *named = dynamic_cast<SaeParser::NamedDimContext *>(ref))
        dim.name = named->IDENT()->getText();
      else
        dim.value = parseInt(ref->getStart());
      dims.push_back(std::move(dim));
    }
    return dims;
  }

  /// An integer literal; reports (and returns -1 for) one beyond int64.
  int64_t parseInt(antlr4::Token *tok) {
    std::string text = tok->getText();
    errno = 0;
    long long v = std::strtoll(text.c_str(), nullptr, 10);
    if (errno == ERANGE) {
      emitError(ctx, loc(tok))
          << "integer literal '" << text << "' does not fit in 64 bits";
      failed = true;
      return -1;
    }
    return v;
  }

  void buildStmt(SaeParser::StmtContext *stmt, std::vector<DeclPtr> &decls) {
    SourceRange r = range(stmt);
    if (auto *dims = dynamic_cast<SaeParser::DimsStmtContext *>(stmt)) {
      for (SaeParser::DimDefContext *def : dims->dimDef()) {
        int64_t v = parseInt(def->value);
        decls.push_back(std::make_unique<DimDeclAST>(
            range(def), def->name->getText(), v, v < 0));
      }
    } else if (auto *in = dynamic_cast<SaeParser::InputStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<TensorDeclAST>(
          DeclAST::Input, r, in->name->getText(), buildShape(in->shape()),
          nullptr));
    } else if (auto *p = dynamic_cast<SaeParser::ParamStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<TensorDeclAST>(
          DeclAST::Param, r, p->name->getText(), buildShape(p->shape()),
          p->init ? buildExpr(p->init) : nullptr,
          p->kind->getType() == SaeLexer::STATE));
    } else if (auto *let = dynamic_cast<SaeParser::LetStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<BindingDeclAST>(
          DeclAST::Let, r, let->name->getText(), buildExpr(let->expr())));
    } else if (auto *enc = dynamic_cast<SaeParser::EncodeStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<BindingDeclAST>(
          DeclAST::Encode, r, enc->name->getText(), buildExpr(enc->expr())));
    } else if (auto *dec = dynamic_cast<SaeParser::DecodeStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<BindingDeclAST>(
          DeclAST::Decode, r, dec->name->getText(), buildExpr(dec->expr())));
    } else if (auto *loss = dynamic_cast<SaeParser::LossStmtContext *>(stmt)) {
      decls.push_back(std::make_unique<BindingDeclAST>(
          DeclAST::Loss, r, loss->name ? loss->name->getText() : "",
          buildExpr(loss->expr())));
    } else if (auto *train = dynamic_cast<SaeParser::TrainStmtContext *>(stmt)) {
      for (SaeParser::SettingContext *s : train->setting())
        decls.push_back(std::make_unique<SettingDeclAST>(
            range(s), s->name->getText(), buildExpr(s->expr())));
    }
  }

  ExprPtr buildExpr(SaeParser::ExprContext *expr) {
    SourceRange r = range(expr);
    if (auto *neg = dynamic_cast<SaeParser::NegExprContext *>(expr))
      return std::make_unique<UnaryExprAST>(r, '-', buildExpr(neg->expr()));
    if (auto *mul = dynamic_cast<SaeParser::MulExprContext *>(expr))
      return std::make_unique<BinaryExprAST>(r, mul->op->getText()[0],
                                             loc(mul->op), buildExpr(mul->lhs),
                                             buildExpr(mul->rhs));
    if (auto *add = dynamic_cast<SaeParser::AddExprContext *>(expr))
      return std::make_unique<BinaryExprAST>(r, add->op->getText()[0],
                                             loc(add->op), buildExpr(add->lhs),
                                             buildExpr(add->rhs));
    if (auto *call = dynamic_cast<SaeParser::CallExprContext *>(expr)) {
      std::vector<ArgAST> args;
      for (SaeParser::ArgContext *a : call->arg()) {
        ArgAST arg;
        arg.loc = loc(a->getStart());
        if (a->name)
          arg.name = a->name->getText();
        arg.value = buildExpr(a->expr());
        args.push_back(std::move(arg));
      }
      return std::make_unique<CallExprAST>(r, call->callee->getText(),
                                           std::move(args));
    }
    if (auto *name = dynamic_cast<SaeParser::NameExprContext *>(expr))
      return std::make_unique<NameExprAST>(r, name->IDENT()->getText());
    if (auto *num = dynamic_cast<SaeParser::NumberExprContext *>(expr)) {
      std::string text = num->getText();
      bool isInt = num->INT() != nullptr;
      double v = std::strtod(text.c_str(), nullptr);
      return std::make_unique<NumberExprAST>(r, v, isInt);
    }
    if (auto *list = dynamic_cast<SaeParser::ListExprContext *>(expr)) {
      std::vector<ExprPtr> elements;
      for (SaeParser::ExprContext *e : list->expr())
        elements.push_back(buildExpr(e));
      return std::make_unique<ListExprAST>(r, std::move(elements));
    }
    auto *paren = dynamic_cast<SaeParser::ParenExprContext *>(expr);
    return buildExpr(paren->expr());
  }

  mlir::MLIRContext &ctx;
  std::shared_ptr<std::string> file;
  bool failed = false;
};

/// Line and column (1-based) of byte `offset` in `text`.
SourceLoc locOfOffset(std::shared_ptr<std::string> file, llvm::StringRef text,
                      size_t offset) {
  llvm::StringRef before = text.take_front(offset);
  unsigned line = 1 + before.count('\n');
  size_t lastNl = before.rfind('\n');
  unsigned col = lastNl == llvm::StringRef::npos ? offset + 1 : offset - lastNl;
  return SourceLoc{std::move(file), line, col};
}

} // namespace

std::unique_ptr<ModelAST> sae::parseSpec(mlir::MLIRContext &ctx,
                                         llvm::StringRef filename,
                                         llvm::StringRef text) {
  auto file = std::make_shared<std::string>(filename.str());
  // ANTLR's input stream throws on malformed UTF-8; a NUL byte means binary.
  size_t nul = text.find('\0');
  const llvm::UTF8 *begin = reinterpret_cast<const llvm::UTF8 *>(text.data());
  const llvm::UTF8 *bad = begin;
  if (nul != llvm::StringRef::npos ||
      !llvm::isLegalUTF8String(&bad, begin + text.size())) {
    size_t offset = nul != llvm::StringRef::npos ? nul : size_t(bad - begin);
    emitError(ctx, locOfOffset(file, text, offset))
        << "'" << filename << "' is not a text file: "
        << (nul != llvm::StringRef::npos ? "NUL byte" : "invalid UTF-8")
        << " at byte " << offset;
    return nullptr;
  }
  if (text.trim().empty()) {
    emitError(ctx, SourceLoc{file, 1, 1})
        << "empty spec: expected 'sae NAME { ... }'";
    return nullptr;
  }

  try {
    antlr4::ANTLRInputStream input(text.str());
    SaeLexer lexer(&input);
    DiagnosticErrorListener listener(ctx, file);
    lexer.removeErrorListeners();
    lexer.addErrorListener(&listener);
    antlr4::CommonTokenStream tokens(&lexer);
    SaeParser parser(&tokens);
    parser.removeErrorListeners();
    parser.addErrorListener(&listener);
    SaeParser::FileContext *tree = parser.file();
    if (listener.getNumErrors() > 0) {
      if (listener.getNumErrors() > kMaxReportedErrors)
        emitError(ctx, SourceLoc{file, 1, 1})
            << "too many syntax errors (" << listener.getNumErrors()
            << "); only the first " << kMaxReportedErrors << " are shown";
      return nullptr;
    }
    ASTBuilder builder(ctx, file);
    return builder.build(tree->model());
  } catch (const std::exception &e) {
    emitError(ctx, SourceLoc{file, 1, 1})
        << "internal parser failure: " << e.what();
    return nullptr;
  }
}
