//===- AST.h - Abstract syntax tree of the .sae language ----------*- C++
//-*-===//
//
// The parser (Parser.cpp) builds these nodes from the ANTLR parse tree; Sema
// checks them; MLIRGen turns them into the sae dialect. Every node carries a
// source range. Nodes use LLVM-style RTTI (`classof`).
//
//===----------------------------------------------------------------------===//
#ifndef SAE_FRONTEND_AST_H
#define SAE_FRONTEND_AST_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Casting.h"
#include "llvm/Support/raw_ostream.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sae {

/// A position in a source file; line and column are 1-based.
struct SourceLoc {
  std::shared_ptr<std::string> file;
  unsigned line = 0;
  unsigned col = 0;
};

/// The half-open range [begin, end) of a construct.
struct SourceRange {
  SourceLoc begin;
  SourceLoc end;
};

//===----------------------------------------------------------------------===//
// Expressions
//===----------------------------------------------------------------------===//

class ExprAST {
public:
  enum ExprKind { Number, Name, Unary, Binary, Call, List };
  ExprAST(ExprKind kind, SourceRange range) : kind(kind), range(range) {}
  virtual ~ExprAST() = default;
  ExprKind getKind() const { return kind; }
  const SourceRange &getRange() const { return range; }
  const SourceLoc &getLoc() const { return range.begin; }

private:
  const ExprKind kind;
  SourceRange range;
};

using ExprPtr = std::unique_ptr<ExprAST>;

/// A numeric literal; `isInteger` when it was written without '.' or 'e'.
class NumberExprAST : public ExprAST {
public:
  NumberExprAST(SourceRange r, double value, bool isInteger)
      : ExprAST(Number, r), value(value), integer(isInteger) {}
  double getValue() const { return value; }
  bool isInteger() const { return integer; }
  static bool classof(const ExprAST *e) { return e->getKind() == Number; }

private:
  double value;
  bool integer;
};

/// A reference to a dimension, input, parameter, `let` or named result.
class NameExprAST : public ExprAST {
public:
  NameExprAST(SourceRange r, std::string name)
      : ExprAST(Name, r), name(std::move(name)) {}
  llvm::StringRef getName() const { return name; }
  static bool classof(const ExprAST *e) { return e->getKind() == Name; }

private:
  std::string name;
};

/// `-operand`.
class UnaryExprAST : public ExprAST {
public:
  UnaryExprAST(SourceRange r, char op, ExprPtr operand)
      : ExprAST(Unary, r), op(op), operand(std::move(operand)) {}
  char getOp() const { return op; }
  const ExprAST &getOperand() const { return *operand; }
  static bool classof(const ExprAST *e) { return e->getKind() == Unary; }

private:
  char op;
  ExprPtr operand;
};

/// `lhs op rhs` with op one of `@ * / + -`.
class BinaryExprAST : public ExprAST {
public:
  BinaryExprAST(SourceRange r, char op, SourceLoc opLoc, ExprPtr lhs,
                ExprPtr rhs)
      : ExprAST(Binary, r), op(op), opLoc(std::move(opLoc)),
        lhs(std::move(lhs)), rhs(std::move(rhs)) {}
  char getOp() const { return op; }
  const SourceLoc &getOpLoc() const { return opLoc; }
  const ExprAST &getLHS() const { return *lhs; }
  const ExprAST &getRHS() const { return *rhs; }
  static bool classof(const ExprAST *e) { return e->getKind() == Binary; }

private:
  char op;
  SourceLoc opLoc;
  ExprPtr lhs, rhs;
};

/// One argument of a call, positional or `name = value`.
struct ArgAST {
  std::optional<std::string> name;
  SourceLoc loc;
  ExprPtr value;
};

/// `callee(args...)`.
class CallExprAST : public ExprAST {
public:
  CallExprAST(SourceRange r, std::string callee, std::vector<ArgAST> args)
      : ExprAST(Call, r), callee(std::move(callee)), args(std::move(args)) {}
  llvm::StringRef getCallee() const { return callee; }
  const std::vector<ArgAST> &getArgs() const { return args; }
  static bool classof(const ExprAST *e) { return e->getKind() == Call; }

private:
  std::string callee;
  std::vector<ArgAST> args;
};

/// `[a, b, ...]`: a list of constants (e.g. matryoshka widths).
class ListExprAST : public ExprAST {
public:
  ListExprAST(SourceRange r, std::vector<ExprPtr> elements)
      : ExprAST(List, r), elements(std::move(elements)) {}
  const std::vector<ExprPtr> &getElements() const { return elements; }
  static bool classof(const ExprAST *e) { return e->getKind() == List; }

private:
  std::vector<ExprPtr> elements;
};

//===----------------------------------------------------------------------===//
// Declarations
//===----------------------------------------------------------------------===//

/// One entry of a shape: a dimension name or an integer literal.
struct DimRefAST {
  SourceLoc loc;
  std::string name; // empty for a literal
  int64_t value = 0;
};

class DeclAST {
public:
  enum DeclKind { Dim, Input, Param, Let, Encode, Decode, Loss, Setting };
  DeclAST(DeclKind kind, SourceRange range, std::string name)
      : kind(kind), range(range), name(std::move(name)) {}
  virtual ~DeclAST() = default;
  DeclKind getKind() const { return kind; }
  const SourceRange &getRange() const { return range; }
  const SourceLoc &getLoc() const { return range.begin; }
  /// The declared name (empty for `loss`).
  llvm::StringRef getName() const { return name; }

private:
  const DeclKind kind;
  SourceRange range;
  std::string name;
};

using DeclPtr = std::unique_ptr<DeclAST>;

/// `dims d = 768` (one per name in a `dims` statement).
class DimDeclAST : public DeclAST {
public:
  DimDeclAST(SourceRange r, std::string name, int64_t value, bool overflow)
      : DeclAST(Dim, r, std::move(name)), value(value), overflow(overflow) {}
  int64_t getValue() const { return value; }
  /// True when the literal does not fit in 64 bits.
  bool hasOverflow() const { return overflow; }
  static bool classof(const DeclAST *d) { return d->getKind() == Dim; }

private:
  int64_t value;
  bool overflow;
};

/// `input x : [d]` and `param W : [d, n] = init`.
class TensorDeclAST : public DeclAST {
public:
  TensorDeclAST(DeclKind kind, SourceRange r, std::string name,
                std::vector<DimRefAST> shape, ExprPtr init, bool state = false)
      : DeclAST(kind, r, std::move(name)), shape(std::move(shape)),
        init(std::move(init)), state(state) {}
  /// `state` declarations: parameters that training maintains by rule
  /// (counters, thresholds), never by gradient.
  bool isState() const { return state; }
  const std::vector<DimRefAST> &getShape() const { return shape; }
  /// The initialiser of a parameter; null when omitted (zeros).
  const ExprAST *getInit() const { return init.get(); }
  static bool classof(const DeclAST *d) {
    return d->getKind() == Input || d->getKind() == Param;
  }

private:
  std::vector<DimRefAST> shape;
  ExprPtr init;
  bool state;
};

/// `let`, `encode`, `decode` and `loss`: a name bound to an expression.
class BindingDeclAST : public DeclAST {
public:
  BindingDeclAST(DeclKind kind, SourceRange r, std::string name, ExprPtr value)
      : DeclAST(kind, r, std::move(name)), value(std::move(value)) {}
  const ExprAST &getValue() const { return *value; }
  static bool classof(const DeclAST *d) {
    return d->getKind() >= Let && d->getKind() <= Loss;
  }

private:
  ExprPtr value;
};

/// `key = value;` inside `train { ... }`: a training hyperparameter.
class SettingDeclAST : public DeclAST {
public:
  SettingDeclAST(SourceRange r, std::string key, ExprPtr value)
      : DeclAST(Setting, r, std::move(key)), value(std::move(value)) {}
  const ExprAST &getValue() const { return *value; }
  static bool classof(const DeclAST *d) { return d->getKind() == Setting; }

private:
  ExprPtr value;
};

/// `sae NAME { decls... }`.
class ModelAST {
public:
  ModelAST(SourceRange r, std::string name, std::vector<DeclPtr> decls)
      : range(r), name(std::move(name)), decls(std::move(decls)) {}
  const SourceRange &getRange() const { return range; }
  llvm::StringRef getName() const { return name; }
  const std::vector<DeclPtr> &getDecls() const { return decls; }

private:
  SourceRange range;
  std::string name;
  std::vector<DeclPtr> decls;
};

/// Prints the AST as an indented tree with source ranges (`saec --emit=ast`).
void dump(const ModelAST &model, llvm::raw_ostream &os);

} // namespace sae

#endif // SAE_FRONTEND_AST_H
