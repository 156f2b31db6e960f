//===- AST.cpp - Printing the AST (saec --emit=ast) -----------------------===//
#include "sae/Frontend/AST.h"

#include "llvm/Support/Format.h"

using namespace sae;

namespace {

void printRange(const SourceRange &r, llvm::raw_ostream &os) {
  os << " <" << r.begin.line << ":" << r.begin.col << "-" << r.end.line << ":"
     << r.end.col << ">";
}

void dumpExpr(const ExprAST &e, unsigned indent, llvm::raw_ostream &os) {
  os.indent(indent);
  if (auto *n = llvm::dyn_cast<NumberExprAST>(&e)) {
    os << "Number ";
    if (n->isInteger())
      os << int64_t(n->getValue());
    else
      os << llvm::format("%g", n->getValue());
  } else if (auto *n = llvm::dyn_cast<NameExprAST>(&e)) {
    os << "Name '" << n->getName() << "'";
  } else if (auto *u = llvm::dyn_cast<UnaryExprAST>(&e)) {
    os << "Unary '" << u->getOp() << "'";
    printRange(e.getRange(), os);
    os << "\n";
    dumpExpr(u->getOperand(), indent + 2, os);
    return;
  } else if (auto *b = llvm::dyn_cast<BinaryExprAST>(&e)) {
    os << "Binary '" << b->getOp() << "'";
    printRange(e.getRange(), os);
    os << "\n";
    dumpExpr(b->getLHS(), indent + 2, os);
    dumpExpr(b->getRHS(), indent + 2, os);
    return;
  } else if (auto *list = llvm::dyn_cast<ListExprAST>(&e)) {
    os << "List";
    printRange(e.getRange(), os);
    os << "\n";
    for (const ExprPtr &el : list->getElements())
      dumpExpr(*el, indent + 2, os);
    return;
  } else if (auto *c = llvm::dyn_cast<CallExprAST>(&e)) {
    os << "Call '" << c->getCallee() << "'";
    printRange(e.getRange(), os);
    os << "\n";
    for (const ArgAST &arg : c->getArgs()) {
      if (arg.name) {
        os.indent(indent + 2) << "Arg '" << *arg.name << "'\n";
        dumpExpr(*arg.value, indent + 4, os);
      } else {
        dumpExpr(*arg.value, indent + 2, os);
      }
    }
    return;
  }
  printRange(e.getRange(), os);
  os << "\n";
}

void dumpShape(const std::vector<DimRefAST> &shape, llvm::raw_ostream &os) {
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i)
      os << ", ";
    if (shape[i].name.empty())
      os << shape[i].value;
    else
      os << shape[i].name;
  }
  os << "]";
}

const char *declKeyword(DeclAST::DeclKind kind) {
  switch (kind) {
  case DeclAST::Dim:
    return "Dim";
  case DeclAST::Input:
    return "Input";
  case DeclAST::Param:
    return "Param";
  case DeclAST::Let:
    return "Let";
  case DeclAST::Encode:
    return "Encode";
  case DeclAST::Decode:
    return "Decode";
  case DeclAST::Loss:
    return "Loss";
  case DeclAST::Setting:
    return "Train";
  }
  return "?";
}

} // namespace

void sae::dump(const ModelAST &model, llvm::raw_ostream &os) {
  os << "Model '" << model.getName() << "'";
  printRange(model.getRange(), os);
  os << "\n";
  for (const DeclPtr &decl : model.getDecls()) {
    auto *tensorDecl = llvm::dyn_cast<TensorDeclAST>(decl.get());
    os.indent(2) << (tensorDecl && tensorDecl->isState()
                         ? "State"
                         : declKeyword(decl->getKind()));
    if (!decl->getName().empty())
      os << " '" << decl->getName() << "'";
    if (auto *dim = llvm::dyn_cast<DimDeclAST>(decl.get()))
      os << " = " << dim->getValue();
    if (auto *t = llvm::dyn_cast<TensorDeclAST>(decl.get())) {
      os << " : ";
      dumpShape(t->getShape(), os);
    }
    printRange(decl->getRange(), os);
    os << "\n";
    if (auto *t = llvm::dyn_cast<TensorDeclAST>(decl.get()))
      if (t->getInit())
        dumpExpr(*t->getInit(), 4, os);
    if (auto *b = llvm::dyn_cast<BindingDeclAST>(decl.get()))
      dumpExpr(b->getValue(), 4, os);
    if (auto *s = llvm::dyn_cast<SettingDeclAST>(decl.get()))
      dumpExpr(s->getValue(), 4, os);
  }
}
