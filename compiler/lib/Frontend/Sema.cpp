//===- Sema.cpp - Semantic analysis of .sae models ------------------------===//
//
// One pass over the declarations in source order: a name must be declared
// before it is used. Each expression is typed in a context (model code,
// a parameter's initialiser, or the decoder) and every mistake is reported
// once, at the construct that caused it; an invalid sub-expression makes its
// parents invalid silently, so one mistake yields one error.
//
//===----------------------------------------------------------------------===//
#include "sae/Frontend/Sema.h"
#include "sae/Frontend/Diagnostics.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/Format.h"

#include <cmath>

using namespace sae;

std::string ValueType::str() const {
  switch (kind) {
  case Invalid:
    return "<invalid>";
  case Scalar:
    return "a scalar";
  case Codes:
    return "sparse codes over " + std::to_string(shape[0]) +
           " latents (k = " + std::to_string(k) +
           (perBatch ? " per row on average)" : ")");
  case Tensor: {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i)
      s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
  }
  return "";
}

int64_t CheckedModel::getDim(llvm::StringRef name) const {
  for (const auto &[n, v] : dims)
    if (n == name)
      return v;
  return -1;
}

namespace {

/// A number as a user wrote it: "1", "-0.5", "1e-08".
std::string formatNumber(double v) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << llvm::format("%g", v);
  return s;
}

enum class ArgKind { Tensor, Int, Float, IntList };

struct ArgSpec {
  llvm::StringRef name;
  ArgKind kind;
  /// An optional tensor may be left out; an optional constant takes
  /// `defaultValue`.
  bool optional = false;
  double defaultValue = 0;
};

struct BuiltinSig {
  llvm::StringRef name;
  std::vector<ArgSpec> args;
  /// Initialisers take their shape from the parameter being declared.
  bool initOnly;
};

const std::vector<BuiltinSig> &builtins() {
  const ArgKind T = ArgKind::Tensor, I = ArgKind::Int, F = ArgKind::Float,
                L = ArgKind::IntList;
  static const std::vector<BuiltinSig> sigs = {
      {"relu", {{"x", T}}, false},
      {"abs", {{"x", T}}, false},
      {"exp", {{"x", T}}, false},
      {"tanh", {{"x", T}}, false},
      {"step", {{"x", T}}, false},
      {"stopgrad", {{"x", T}}, false},
      {"jump_relu", {{"x", T}, {"threshold", T}, {"bandwidth", F, true, 0.001}},
       false},
      {"topk", {{"x", T}, {"k", I}}, false},
      {"abs_topk", {{"x", T}, {"k", I}}, false},
      {"group_max", {{"x", T}, {"k", I}}, false},
      {"batch_topk", {{"x", T}, {"k", I}, {"threshold", T}}, false},
      {"mutual_choice", {{"x", T}, {"k", I}}, false},
      {"feature_choice", {{"x", T}, {"k", I}, {"zipf", F, true, 0}}, false},
      {"grad_topk",
       {{"x", T},
        {"grad", T},
        {"decoder", T},
        {"k", I},
        {"beta", F, true, 1.0}},
       false},
      {"mse", {{"input", T}, {"target", T}, {"mean", I, true, 0}}, false},
      {"bias_adapt",
       {{"x", T},
        {"bias", T},
        {"stats", T},
        {"groups", I, true, 10},
        {"p_max", F, true, 0.1},
        {"p_min", F, true, 0.001},
        {"every", F, true, 25600},
        {"gamma", F, true, 0.01}},
       false},
      {"fvu", {{"input", T}, {"target", T}}, false},
      {"l1", {{"codes", T}, {"decoder", T, true}}, false},
      {"tanh_penalty", {{"codes", T}, {"decoder", T}, {"c", F}}, false},
      {"l0", {{"x", T}, {"threshold", T}, {"bandwidth", F, true, 0.001}},
       false},
      {"matching_pursuit",
       {{"r", T}, {"decoder", T}, {"k", I}, {"nonneg", I, true, 0}},
       false},
      {"top_afa", {{"x", T}, {"decoder", T}, {"target", T}}, false},
      {"afa", {{"codes", T}, {"x", T}}, false},
      {"aux_k",
       {{"x", T},
        {"residual", T},
        {"decoder", T},
        {"since_fired", T},
        {"k_aux", I},
        {"dead_after", F, true, 10000000},
        {"bias", T, true},
        {"target", T, true}},
       false},
      {"aux_zipf",
       {{"x", T},
        {"residual", T},
        {"decoder", T},
        {"frequency", T},
        {"k_aux", I},
        {"k", I},
        {"alpha", F, true, 1.0},
        {"bias", T, true},
        {"target", T, true}},
       false},
      {"matryoshka",
       {{"codes", T}, {"decoder", T}, {"bias", T}, {"x", T}, {"widths", L}},
       false},
      {"kl_std_normal", {{"mu", T}}, false},
      {"transpose", {{"w", T}}, false},
      {"normalize_rows", {{"w", T}}, false},
      {"zeros", {}, true},
      {"ones", {}, true},
      {"constant", {{"value", F}}, true},
      {"uniform", {{"low", F}, {"high", F}}, true},
      {"kaiming_uniform", {}, true},
      {"normal", {{"mean", F}, {"std", F}}, true},
      {"data_mean", {{"x", T}}, true},
      {"geometric_median", {{"x", T}, {"iterations", I, true, 100}}, true},
      {"gaussian", {{"mu", T}}, false},
  };
  return sigs;
}

const BuiltinSig *lookupBuiltin(llvm::StringRef name) {
  for (const BuiltinSig &sig : builtins())
    if (sig.name == name)
      return &sig;
  return nullptr;
}

/// Where an expression is evaluated.
struct Scope {
  /// InitData: the data argument of a data-dependent initialiser, which may
  /// read the input.
  enum Kind { Model, Init, InitData, Decode } kind = Model;
  /// Init: the parameter being initialised.
  const TensorDeclAST *param = nullptr;
  std::vector<int64_t> paramShape;
  /// Decode: the name of the codes it decodes.
  llvm::StringRef codesName;
};

class Sema {
public:
  Sema(const ModelAST &ast, mlir::MLIRContext &ctx,
       const std::map<std::string, int64_t> &overrides)
      : ctx(ctx), overrides(overrides) {
    m.ast = &ast;
  }

  std::optional<CheckedModel> run();

private:
  mlir::InFlightDiagnostic error(const SourceLoc &loc) {
    ++numErrors;
    return emitError(ctx, loc);
  }

  bool declare(const DeclAST &decl);
  std::optional<std::vector<int64_t>>
  resolveShape(const std::vector<DimRefAST> &shape);
  ValueType check(const ExprAST &e, const Scope &scope, bool &usesInput);
  ValueType checkName(const NameExprAST &e, const Scope &scope,
                      bool &usesInput);
  ValueType checkBinary(const BinaryExprAST &e, const Scope &scope,
                        bool &usesInput);
  ValueType checkCall(const CallExprAST &e, const Scope &scope,
                      bool &usesInput);
  std::optional<double> evalConst(const ExprAST &e);
  /// Checks what encode, decode and loss must produce; records model facts.
  bool checkBinding(const BindingDeclAST &b, const ValueType &t,
                    bool usesInput);
  /// Checks the `train { ... }` settings into m.train.
  void checkSettings();
  /// Checks for unused overrides and missing statements.
  std::optional<CheckedModel>
  finish(const llvm::StringMap<bool> &usedOverrides);

  mlir::MLIRContext &ctx;
  const std::map<std::string, int64_t> &overrides;
  CheckedModel m;
  /// The declaration whose value is being checked (a use of it is a cycle).
  const DeclAST *defining = nullptr;
  /// Bindings whose value depends on the input row.
  llvm::DenseMap<const DeclAST *, bool> dependsOnInput;
  unsigned numErrors = 0;
};

bool Sema::declare(const DeclAST &decl) {
  // A name that hides a builtin would make `zeros` mean different things
  // before and after its declaration.
  if (lookupBuiltin(decl.getName()) || decl.getName() == "true" ||
      decl.getName() == "false") {
    error(decl.getLoc()) << "'" << decl.getName()
                         << "' is reserved for a builtin; choose another name";
    return false;
  }
  auto [it, inserted] = m.symbols.try_emplace(decl.getName(), &decl);
  if (inserted)
    return true;
  mlir::InFlightDiagnostic diag = error(decl.getLoc());
  diag << "redefinition of '" << decl.getName() << "'";
  diag.attachNote(toLocation(ctx, it->second->getLoc()))
      << "previous definition is here";
  return false;
}

std::optional<std::vector<int64_t>>
Sema::resolveShape(const std::vector<DimRefAST> &shape) {
  std::vector<int64_t> dims;
  bool ok = true;
  for (const DimRefAST &ref : shape) {
    if (ref.name.empty()) {
      if (ref.value < 1) {
        error(ref.loc) << "dimension must be positive, got " << ref.value;
        ok = false;
      }
      dims.push_back(ref.value);
      continue;
    }
    auto it = m.symbols.find(ref.name);
    if (it == m.symbols.end()) {
      error(ref.loc) << "unknown dimension '" << ref.name << "'";
      ok = false;
    } else if (!llvm::isa<DimDeclAST>(it->second)) {
      error(ref.loc) << "'" << ref.name << "' is not a dimension";
      ok = false;
    } else {
      dims.push_back(m.getDim(ref.name));
    }
  }
  if (!ok)
    return std::nullopt;
  return dims;
}

std::optional<double> Sema::evalConst(const ExprAST &e) {
  if (auto *n = llvm::dyn_cast<NumberExprAST>(&e))
    return n->getValue();
  if (auto *n = llvm::dyn_cast<NameExprAST>(&e)) {
    auto it = m.symbols.find(n->getName());
    if (it != m.symbols.end() && llvm::isa<DimDeclAST>(it->second))
      return double(m.getDim(n->getName()));
    if (it == m.symbols.end() && n->getName() == "true")
      return 1.0;
    if (it == m.symbols.end() && n->getName() == "false")
      return 0.0;
    return std::nullopt;
  }
  if (auto *u = llvm::dyn_cast<UnaryExprAST>(&e)) {
    if (auto v = evalConst(u->getOperand()))
      return -*v;
    return std::nullopt;
  }
  if (auto *b = llvm::dyn_cast<BinaryExprAST>(&e)) {
    auto l = evalConst(b->getLHS()), r = evalConst(b->getRHS());
    if (!l || !r)
      return std::nullopt;
    switch (b->getOp()) {
    case '+':
      return *l + *r;
    case '-':
      return *l - *r;
    case '*':
      return *l * *r;
    case '/':
      return *l / *r;
    default:
      return std::nullopt;
    }
  }
  return std::nullopt;
}

ValueType Sema::checkName(const NameExprAST &e, const Scope &scope,
                          bool &usesInput) {
  llvm::StringRef name = e.getName();
  auto it = m.symbols.find(name);
  if (it == m.symbols.end()) {
    if (const BuiltinSig *sig = lookupBuiltin(name)) {
      if (sig->initOnly && scope.kind == Scope::Init && sig->args.empty())
        return ValueType::tensor(false, scope.paramShape);
      error(e.getLoc()) << "'" << name << "' is a function; call it as '"
                        << name << "(...)'";
      return {};
    }
    error(e.getLoc()) << "use of undeclared name '" << name << "'";
    return {};
  }
  const DeclAST *decl = it->second;
  if (decl == defining) {
    error(e.getLoc()) << "'" << name << "' is used in its own definition";
    return {};
  }
  switch (decl->getKind()) {
  case DeclAST::Dim:
    return ValueType::scalar();
  case DeclAST::Input:
    if (scope.kind == Scope::Init) {
      error(e.getLoc()) << "the initialiser of '" << scope.param->getName()
                        << "' cannot use the input '" << name
                        << "' except through data_mean or geometric_median";
      return {};
    }
    if (scope.kind == Scope::Decode) {
      error(e.getLoc()) << "decode may only use '" << scope.codesName
                        << "' and parameters, not the input '" << name << "'";
      return {};
    }
    usesInput = true;
    for (const auto &[in, dim] : m.inputs)
      if (in == decl)
        return ValueType::tensor(true, {dim});
    return {}; // its declaration had an error
  case DeclAST::Param:
    for (const auto &[p, shape] : m.params)
      if (p == decl)
        return ValueType::tensor(false, shape);
    return {}; // its declaration had an error
  case DeclAST::Let:
  case DeclAST::Encode:
  case DeclAST::Decode: {
    if (scope.kind == Scope::Init || scope.kind == Scope::InitData) {
      error(e.getLoc()) << "the initialiser of '" << scope.param->getName()
                        << "' may only use parameters, not '" << name << "'";
      return {};
    }
    bool dep = dependsOnInput.lookup(decl);
    if (scope.kind == Scope::Decode && dep && name != scope.codesName) {
      error(e.getLoc()) << "decode may only use '" << scope.codesName
                        << "' and parameters, but '" << name
                        << "' depends on the input";
      return {};
    }
    usesInput |= dep;
    auto t = m.types.find(decl);
    return t == m.types.end() ? ValueType() : t->second;
  }
  case DeclAST::Loss:
  case DeclAST::Setting: // never declared as a symbol
    break;
  }
  return {};
}

ValueType Sema::checkBinary(const BinaryExprAST &e, const Scope &scope,
                            bool &usesInput) {
  ValueType l = check(e.getLHS(), scope, usesInput);
  ValueType r = check(e.getRHS(), scope, usesInput);
  if (!l.isValid() || !r.isValid())
    return {};
  char op = e.getOp();
  const SourceLoc &loc = e.getOpLoc();

  if (op == '@') {
    if (l.kind == ValueType::Scalar || r.kind == ValueType::Scalar) {
      error(loc) << "'@' needs tensor operands, got " << l.str() << " @ "
                 << r.str();
      return {};
    }
    if (r.kind != ValueType::Tensor || r.batched || r.shape.size() != 2) {
      error(loc) << "the right operand of '@' must be a parameter matrix, "
                    "got "
                 << (r.batched && r.kind == ValueType::Tensor
                         ? "a batched tensor " + r.str()
                         : r.str());
      return {};
    }
    int64_t inner = l.kind == ValueType::Codes ? l.shape[0] : l.shape.back();
    if ((l.kind == ValueType::Tensor && !l.batched && l.shape.size() != 2) ||
        inner != r.shape[0]) {
      error(loc) << "shape mismatch in '@': " << l.str() << " @ " << r.str()
                 << " (inner dimensions " << inner << " and " << r.shape[0]
                 << " differ)";
      return {};
    }
    if (l.kind == ValueType::Tensor && !l.batched)
      return ValueType::tensor(false, {l.shape[0], r.shape[1]});
    return ValueType::tensor(true, {r.shape[1]});
  }

  if (l.kind == ValueType::Codes || r.kind == ValueType::Codes) {
    error(loc) << "'" << op << "' needs dense operands, but the "
               << (l.kind == ValueType::Codes ? "left" : "right")
               << " operand is " << (l.kind == ValueType::Codes ? l : r).str()
               << "; decode them with '@' first";
    return {};
  }
  if (l.kind == ValueType::Scalar && r.kind == ValueType::Scalar)
    return ValueType::scalar();

  if (op == '+' || op == '-') {
    if (l.kind == ValueType::Scalar || r.kind == ValueType::Scalar) {
      error(loc) << "cannot " << (op == '+' ? "add" : "subtract")
                 << " a scalar and a tensor; '" << op
                 << "' needs two tensors or two scalars";
      return {};
    }
    if (l.shape != r.shape) {
      error(loc) << "shape mismatch in '" << op << "': " << l.str() << " and "
                 << r.str();
      return {};
    }
    if (l.batched != r.batched && l.shape.size() != 1) {
      error(loc) << "only a vector can be broadcast over the batch in '" << op
                 << "', got " << (l.batched ? r : l).str();
      return {};
    }
    return ValueType::tensor(l.batched || r.batched, l.shape);
  }

  // '*' and '/'.
  if (r.kind == ValueType::Scalar)
    return l;
  if (l.kind == ValueType::Scalar) {
    if (op == '/') {
      error(loc) << "cannot divide a scalar by a tensor";
      return {};
    }
    return r;
  }
  // A parameter vector scales the columns of a batch or of a matrix.
  bool rowsOfL = !r.batched && r.shape.size() == 1 &&
                 (l.batched ? l.shape.size() == 1 : l.shape.size() == 2) &&
                 l.shape.back() == r.shape[0];
  if (rowsOfL && (l.batched || l.shape.size() == 2))
    return l;
  if (l.shape != r.shape || l.batched != r.batched) {
    error(loc) << "shape mismatch in '" << op << "': " << l.str()
               << (l.batched ? " (per row)" : "") << " and " << r.str()
               << (r.batched ? " (per row)" : "");
    return {};
  }
  return l;
}

ValueType Sema::checkCall(const CallExprAST &e, const Scope &scope,
                          bool &usesInput) {
  llvm::StringRef name = e.getCallee();
  const BuiltinSig *sig = lookupBuiltin(name);
  if (!sig) {
    error(e.getLoc()) << "unknown function '" << name << "'";
    return {};
  }
  if (sig->initOnly && scope.kind != Scope::Init) {
    if (scope.kind == Scope::InitData) {
      error(e.getLoc()) << "'" << name << "' cannot be nested in a data "
                        << "initialiser's argument";
      return {};
    }
    error(e.getLoc()) << "'" << name
                      << "' is an initialiser; it can only be used after '=' "
                         "in a param declaration";
    return {};
  }

  // Bind positional arguments, then named ones.
  std::vector<const ArgAST *> bound(sig->args.size(), nullptr);
  bool ok = true;
  size_t positional = 0;
  for (const ArgAST &arg : e.getArgs()) {
    if (!arg.name) {
      if (positional >= sig->args.size()) {
        error(arg.loc) << "'" << name << "' takes " << sig->args.size()
                       << " argument" << (sig->args.size() == 1 ? "" : "s")
                       << " but " << e.getArgs().size() << " were given";
        return {};
      }
      bound[positional++] = &arg;
      continue;
    }
    auto it = llvm::find_if(
        sig->args, [&](const ArgSpec &a) { return a.name == *arg.name; });
    if (it == sig->args.end()) {
      error(arg.loc) << "'" << name << "' has no argument named '" << *arg.name
                     << "'";
      return {};
    }
    size_t i = it - sig->args.begin();
    if (bound[i]) {
      error(arg.loc) << "argument '" << *arg.name << "' of '" << name
                     << "' is given twice";
      return {};
    }
    bound[i] = &arg;
  }
  for (size_t i = 0; i < bound.size(); ++i) {
    if (!bound[i] && !sig->args[i].optional) {
      error(e.getLoc()) << "missing argument '" << sig->args[i].name
                        << "' in call to '" << name << "'";
      ok = false;
    }
  }
  if (!ok)
    return {};

  std::vector<ValueType> types;
  std::vector<const ExprAST *> &argExprs = m.boundArgs[&e];
  std::vector<double> &consts = m.callConstants[&e];
  for (size_t i = 0; i < bound.size(); ++i) {
    const ArgSpec &spec = sig->args[i];
    consts.push_back(spec.defaultValue);
    if (!bound[i]) { // an optional argument left out
      argExprs.push_back(nullptr);
      types.push_back({});
      continue;
    }
    const ExprAST &value = *bound[i]->value;
    argExprs.push_back(&value);
    if (spec.kind == ArgKind::Tensor) {
      bool dataArg = name == "data_mean" || name == "geometric_median";
      Scope argScope = scope;
      if (dataArg)
        argScope.kind = Scope::InitData;
      types.push_back(check(value, argScope, usesInput));
      if (!types.back().isValid())
        ok = false;
      continue;
    }
    if (spec.kind == ArgKind::IntList) {
      auto *list = llvm::dyn_cast<ListExprAST>(&value);
      std::vector<int64_t> items;
      bool good = list != nullptr;
      if (list)
        for (const ExprPtr &el : list->getElements()) {
          std::optional<double> c = evalConst(*el);
          if (!c || *c != std::floor(*c) || std::isinf(*c)) {
            good = false;
            break;
          }
          items.push_back(int64_t(*c));
        }
      if (!good || items.empty()) {
        error(bound[i]->loc) << "argument '" << spec.name << "' of '" << name
                             << "' must be a non-empty list of integer "
                                "constants, e.g. [1024, 4096]";
        ok = false;
        types.push_back({});
        continue;
      }
      m.listArgs[{&e, unsigned(i)}] = items;
      types.push_back(ValueType::scalar());
      continue;
    }
    std::optional<double> c = evalConst(value);
    bool wantInt = spec.kind == ArgKind::Int;
    if (!c || (wantInt && (*c != std::floor(*c) || std::isinf(*c)))) {
      error(bound[i]->loc) << "argument '" << spec.name << "' of '" << name
                           << "' must be "
                           << (wantInt ? "an integer" : "a numeric")
                           << " constant";
      ok = false;
      types.push_back({});
      continue;
    }
    consts.back() = *c;
    types.push_back(ValueType::scalar());
  }
  if (!ok)
    return {};

  auto needDense = [&](size_t i, bool batched) -> bool {
    const ValueType &t = types[i];
    if (t.kind == ValueType::Tensor && (!batched || t.batched))
      return true;
    error(bound[i]->loc) << "'" << name << "' expects "
                         << (batched ? "a batched dense tensor"
                                     : "a dense tensor")
                         << " for '" << sig->args[i].name << "', got "
                         << (t.kind == ValueType::Tensor && !t.batched
                                 ? "the parameter-shaped tensor " + t.str()
                                 : t.str());
    return false;
  };
  auto needMatrix = [&](size_t i) -> bool {
    const ValueType &t = types[i];
    if (t.kind == ValueType::Tensor && !t.batched && t.shape.size() == 2)
      return true;
    error(bound[i]->loc) << "'" << name << "' expects a matrix parameter, got "
                         << t.str();
    return false;
  };

  // A batched vector per row, or sparse codes: what penalties accept.
  auto needCodes = [&](size_t i) -> bool {
    const ValueType &t = types[i];
    if (t.kind == ValueType::Codes ||
        (t.kind == ValueType::Tensor && t.batched && t.shape.size() == 1))
      return true;
    error(bound[i]->loc) << "'" << name << "' expects codes (sparse, or one "
                         << "dense vector per row) for '" << sig->args[i].name
                         << "', got " << t.str();
    return false;
  };
  auto latentsOf = [](const ValueType &t) { return t.shape[0]; };
  // A parameter vector with one entry per column of argument `of`.
  auto needThreshold = [&](size_t i, size_t of) -> bool {
    const ValueType &t = types[i];
    int64_t n = latentsOf(types[of]);
    if (t.kind == ValueType::Tensor && !t.batched && t.shape.size() == 1 &&
        t.shape[0] == n)
      return true;
    error(bound[i]->loc) << "'" << name << "' expects a parameter vector [" << n
                         << "] for '" << sig->args[i].name << "', got "
                         << t.str();
    return false;
  };
  // A decoder [n, d] matching the codes in argument `of`.
  auto needDecoder = [&](size_t i, size_t of) -> bool {
    if (!needMatrix(i))
      return false;
    int64_t n = latentsOf(types[of]);
    if (types[i].shape[0] == n)
      return true;
    error(bound[i]->loc) << "'" << name << "' expects a decoder with " << n
                         << " rows for '" << sig->args[i].name << "', got "
                         << types[i].str();
    return false;
  };

  if (name == "relu" || name == "abs" || name == "exp" || name == "tanh" ||
      name == "step" || name == "stopgrad")
    return needDense(0, false) ? types[0] : ValueType();
  if ((name == "jump_relu" || name == "l0") && bound.size() > 2 &&
      bound[2] && !(consts[2] > 0)) {
    error(bound[2]->loc) << "bandwidth = " << formatNumber(consts[2])
                         << " must be > 0";
    return {};
  }
  if (name == "bias_adapt") {
    // bias_adapt(pre, b_enc, stats, ...): pre itself; training moves the
    // state b_enc by Group Bias Adaptation, with statistics in `stats`.
    if (!needDense(0, true) || types[0].shape.size() != 1)
      return {};
    int64_t n = types[0].shape[0];
    auto isState = [&](size_t i) {
      auto *ref = llvm::dyn_cast<NameExprAST>(bound[i]->value.get());
      auto it = ref ? m.symbols.find(ref->getName()) : m.symbols.end();
      auto *decl = it == m.symbols.end()
                       ? nullptr
                       : llvm::dyn_cast<TensorDeclAST>(it->second);
      return decl && decl->isState();
    };
    if (!isState(1) || types[1].batched ||
        types[1].shape != std::vector<int64_t>{n}) {
      error(bound[1]->loc) << "'bias_adapt' moves a bias: a `state` of shape ["
                           << n << "], got " << types[1].str();
      return {};
    }
    if (!isState(2) || types[2].batched ||
        types[2].shape != std::vector<int64_t>{3, n}) {
      error(bound[2]->loc) << "'bias_adapt' keeps its statistics in a `state` "
                              "of shape [3, "
                           << n << "], got " << types[2].str();
      return {};
    }
    double groups = consts[3], pMax = consts[4], pMin = consts[5];
    if (groups < 1 || groups > double(n)) {
      error(e.getLoc()) << "'bias_adapt' needs 1 <= groups <= " << n;
      return {};
    }
    if (!(pMin > 0 && pMin <= pMax && pMax <= 1)) {
      error(e.getLoc()) << "'bias_adapt' needs 0 < p_min <= p_max <= 1, got "
                        << formatNumber(pMin) << " and " << formatNumber(pMax);
      return {};
    }
    if (!(consts[6] >= 1) || !(consts[7] > 0)) {
      error(e.getLoc()) << "'bias_adapt' needs every >= 1 and gamma > 0";
      return {};
    }
    return types[0];
  }
  if (name == "jump_relu") {
    if (!needDense(0, true) || types[0].shape.size() != 1 ||
        !needThreshold(1, 0))
      return {};
    return types[0];
  }
  if (name == "matching_pursuit") {
    if (!needDense(0, true) || !needMatrix(1))
      return {};
    int64_t n = types[1].shape[0], d = types[1].shape[1];
    if (types[0].shape != std::vector<int64_t>{d}) {
      error(bound[0]->loc) << "'matching_pursuit' expects residual rows of the "
                              "decoder's width ["
                           << d << "], got " << types[0].str();
      return {};
    }
    double k = consts[2];
    if (k < 1 || k > double(n)) {
      error(bound[2]->loc) << "k = " << int64_t(k) << " is out of range: '"
                           << name << "' needs 1 <= k <= " << n;
      return {};
    }
    return ValueType::codes(n, int64_t(k));
  }
  if (name == "top_afa") {
    if (!needDense(0, true) || types[0].shape.size() != 1 ||
        !needDecoder(1, 0) || !needDense(2, true))
      return {};
    if (types[2].shape != std::vector<int64_t>{types[1].shape[1]}) {
      error(bound[2]->loc) << "'top_afa' expects target rows of the decoder's "
                              "width ["
                           << types[1].shape[1] << "], got " << types[2].str();
      return {};
    }
    return types[0];
  }
  if (name == "l0") {
    if (!needDense(0, true) || !needThreshold(1, 0))
      return {};
    return ValueType::scalar();
  }
  if (name == "l1") {
    if (!needCodes(0) || (bound[1] && !needDecoder(1, 0)))
      return {};
    return ValueType::scalar();
  }
  if (name == "tanh_penalty") {
    if (!needCodes(0) || !needDecoder(1, 0))
      return {};
    return ValueType::scalar();
  }
  if (name == "afa") {
    if (!needCodes(0) || !needDense(1, true))
      return {};
    if (types[0].perBatch) {
      error(bound[0]->loc) << "'afa' needs per-row codes; batch-level "
                              "selections have no fixed rows";
      return {};
    }
    return ValueType::scalar();
  }
  if (name == "aux_k" || name == "aux_zipf") {
    // aux_zipf's extra constants sit between k_aux and the optional tensors.
    size_t biasArg = name == "aux_k" ? 6 : 7, targetArg = biasArg + 1;
    if (name == "aux_zipf" && (consts[5] < 1 || !(consts[6] >= 0))) {
      error(e.getLoc()) << "'aux_zipf' needs k >= 1 and alpha >= 0";
      return {};
    }
    if (!needDense(0, true) || types[0].shape.size() != 1 ||
        !needDense(1, true) || !needDecoder(2, 0) || !needThreshold(3, 0))
      return {};
    int64_t n = types[0].shape[0], d = types[2].shape[1];
    if (types[1].shape != std::vector<int64_t>{d}) {
      error(bound[1]->loc) << "'aux_k' expects residual rows [" << d
                           << "], got " << types[1].str();
      return {};
    }
    if (consts[4] < 1 || consts[4] > double(n)) {
      error(bound[4]->loc) << "k_aux = " << int64_t(consts[4])
                           << " is out of range: '" << name
                           << "' needs 1 <= k_aux <= " << n;
      return {};
    }
    if (bound[biasArg] &&
        (types[biasArg].kind != ValueType::Tensor || types[biasArg].batched ||
         types[biasArg].shape != std::vector<int64_t>{d})) {
      error(bound[biasArg]->loc) << "'" << name << "' expects a bias vector ["
                                 << d << "], got " << types[biasArg].str();
      return {};
    }
    if (bound[targetArg] &&
        (types[targetArg].kind != ValueType::Tensor ||
         !types[targetArg].batched ||
         types[targetArg].shape != std::vector<int64_t>{d})) {
      error(bound[targetArg]->loc) << "'" << name << "' expects target rows ["
                                   << d << "], got " << types[targetArg].str();
      return {};
    }
    return ValueType::scalar();
  }
  if (name == "matryoshka") {
    if (!needCodes(0) || !needDecoder(1, 0) || !needDense(3, true))
      return {};
    if (types[0].perBatch) {
      error(bound[0]->loc) << "'matryoshka' needs per-row or dense codes";
      return {};
    }
    int64_t n = types[0].shape[0], d = types[1].shape[1];
    const ValueType &bias = types[2];
    if (bias.kind != ValueType::Tensor || bias.batched ||
        bias.shape != std::vector<int64_t>{d}) {
      error(bound[2]->loc) << "'matryoshka' expects a bias vector [" << d
                           << "], got " << bias.str();
      return {};
    }
    if (types[3].shape != std::vector<int64_t>{d}) {
      error(bound[3]->loc) << "'matryoshka' expects input rows [" << d
                           << "], got " << types[3].str();
      return {};
    }
    const std::vector<int64_t> &widths = m.listArgs[{&e, 4u}];
    for (size_t w = 0; w < widths.size(); ++w) {
      if (widths[w] < 1 || widths[w] > n) {
        error(bound[4]->loc) << "width " << widths[w]
                             << " is out of range: 'matryoshka' needs widths "
                                "in [1, "
                             << n << "]";
        return {};
      }
      if (w > 0 && widths[w] <= widths[w - 1]) {
        error(bound[4]->loc)
            << "widths of 'matryoshka' must increase: " << widths[w]
            << " follows " << widths[w - 1];
        return {};
      }
    }
    return ValueType::scalar();
  }
  if (name == "kl_std_normal")
    return needDense(0, true) ? ValueType::scalar() : ValueType();
  if (name == "topk" || name == "abs_topk" || name == "group_max" ||
      name == "grad_topk" || name == "batch_topk" || name == "mutual_choice" ||
      name == "feature_choice") {
    if (!needDense(0, true))
      return {};
    if (types[0].shape.size() != 1) {
      error(bound[0]->loc) << "'" << name
                           << "' expects one vector per row, got "
                           << types[0].str();
      return {};
    }
    int64_t n = types[0].shape[0];
    size_t kArg = name == "grad_topk" ? 3 : 1;
    double k = consts[kArg];
    if (k < 1 || k > double(n)) {
      error(bound[kArg]->loc) << "k = " << int64_t(k) << " is out of range: '"
                              << name << "' needs 1 <= k <= " << n;
      return {};
    }
    if (name == "group_max" && n % int64_t(k) != 0) {
      error(bound[kArg]->loc) << "k = " << int64_t(k) << " does not divide the "
                              << n << " latents into equal groups";
      return {};
    }
    if (name == "grad_topk") {
      // The downstream gradient has the input's width; the decoder maps the
      // n latents to it.
      if (!needDense(1, true) || !needDecoder(2, 0))
        return {};
      if (types[1].shape != std::vector<int64_t>{types[2].shape[1]}) {
        error(bound[1]->loc)
            << "'grad_topk' expects a gradient of shape [" << types[2].shape[1]
            << "] per row, got " << types[1].str();
        return {};
      }
    }
    if (name == "batch_topk" && !needThreshold(2, 0))
      return {};
    if (name == "feature_choice" && !(consts[2] >= 0)) {
      error(bound[2]->loc) << "'feature_choice' needs zipf >= 0, got "
                           << formatNumber(consts[2]);
      return {};
    }
    return ValueType::codes(n, int64_t(k),
                            name == "batch_topk" || name == "mutual_choice" ||
                                name == "feature_choice");
  }
  if (name == "mse" || name == "fvu") {
    if (!needDense(0, true) || !needDense(1, true))
      return {};
    if (types[0].shape != types[1].shape) {
      error(e.getLoc()) << "'" << name << "' compares tensors of different "
                        << "shapes: " << types[0].str() << " and "
                        << types[1].str();
      return {};
    }
    return ValueType::scalar();
  }
  if (name == "transpose") {
    if (!needMatrix(0))
      return {};
    return ValueType::tensor(false, {types[0].shape[1], types[0].shape[0]});
  }
  if (name == "normalize_rows")
    return needMatrix(0) ? types[0] : ValueType();
  if (name == "data_mean" || name == "geometric_median") {
    const ValueType &t = types[0];
    if (t.kind != ValueType::Tensor || !t.batched || t.shape.size() != 1) {
      error(bound[0]->loc) << "'" << name << "' expects the input rows, got "
                           << t.str();
      return {};
    }
    if (consts.size() > 1 && consts[1] < 0) {
      error(bound[1]->loc) << "iterations must be non-negative";
      return {};
    }
    m.initNeedsData = true;
    return ValueType::tensor(false, t.shape);
  }
  if (name == "normal" && !(consts[1] >= 0)) {
    error(e.getLoc()) << "'normal' needs std >= 0, got "
                      << formatNumber(consts[1]);
    return {};
  }
  if (name == "gaussian") {
    if (!needDense(0, true))
      return {};
    m.stochastic = true;
    return types[0];
  }
  if (name == "uniform") {
    double lo = consts[0];
    double hi = consts[1];
    if (!(lo < hi)) {
      error(e.getLoc()) << "'uniform' needs low < high, got "
                        << formatNumber(lo) << " and " << formatNumber(hi);
      return {};
    }
  }
  // Initialisers: the shape of the parameter being declared.
  return ValueType::tensor(false, scope.paramShape);
}

ValueType Sema::check(const ExprAST &e, const Scope &scope, bool &usesInput) {
  switch (e.getKind()) {
  case ExprAST::Number:
    return ValueType::scalar();
  case ExprAST::Name:
    return checkName(llvm::cast<NameExprAST>(e), scope, usesInput);
  case ExprAST::Unary: {
    ValueType t =
        check(llvm::cast<UnaryExprAST>(e).getOperand(), scope, usesInput);
    if (t.kind == ValueType::Codes) {
      error(e.getLoc()) << "cannot negate " << t.str();
      return {};
    }
    return t;
  }
  case ExprAST::Binary:
    return checkBinary(llvm::cast<BinaryExprAST>(e), scope, usesInput);
  case ExprAST::Call:
    return checkCall(llvm::cast<CallExprAST>(e), scope, usesInput);
  case ExprAST::List:
    error(e.getLoc()) << "a list is only allowed as a constant argument, "
                         "e.g. widths = [1024, 4096]";
    return {};
  }
  return {};
}

/// The root call of an expression, looking through nothing else.
const CallExprAST *rootCall(const ExprAST &e) {
  return llvm::dyn_cast<CallExprAST>(&e);
}

std::optional<CheckedModel> Sema::run() {
  const ModelAST &ast = *m.ast;
  llvm::StringMap<bool> usedOverrides;

  for (const DeclPtr &declPtr : ast.getDecls()) {
    const DeclAST &decl = *declPtr;
    switch (decl.getKind()) {
    case DeclAST::Setting:
      break; // after every declaration: see checkSettings()
    case DeclAST::Dim: {
      auto &dim = llvm::cast<DimDeclAST>(decl);
      if (!declare(decl))
        break;
      int64_t v = dim.getValue();
      auto o = overrides.find(dim.getName().str());
      if (o != overrides.end()) {
        v = o->second;
        usedOverrides[dim.getName()] = true;
      }
      if (!dim.hasOverflow() && v < 1)
        error(decl.getLoc()) << "dimension '" << dim.getName()
                             << "' must be positive, got " << v;
      m.dims.emplace_back(dim.getName().str(), v);
      break;
    }
    case DeclAST::Input: {
      auto &in = llvm::cast<TensorDeclAST>(decl);
      if (!declare(decl))
        break;
      auto shape = resolveShape(in.getShape());
      if (!shape)
        break;
      if (shape->size() != 1) {
        error(decl.getLoc()) << "input '" << in.getName()
                             << "' must be a vector [d] (one row of the "
                                "batch), got rank "
                             << shape->size();
        break;
      }
      if (!m.input) {
        m.input = &in;
        m.inputDim = (*shape)[0];
      }
      m.inputs.emplace_back(&in, (*shape)[0]);
      break;
    }
    case DeclAST::Param: {
      auto &p = llvm::cast<TensorDeclAST>(decl);
      if (!declare(decl))
        break;
      auto shape = resolveShape(p.getShape());
      if (!shape)
        break;
      if (shape->empty() || shape->size() > 2) {
        error(decl.getLoc())
            << "parameter '" << p.getName()
            << "' must be a vector or a matrix, got rank " << shape->size();
        break;
      }
      if (const ExprAST *init = p.getInit()) {
        Scope scope{Scope::Init, &p, *shape, {}};
        bool usesInput = false;
        defining = &decl;
        ValueType t = check(*init, scope, usesInput);
        defining = nullptr;
        if (!t.isValid())
          break;
        if (t.kind != ValueType::Tensor || t.shape != *shape) {
          error(init->getLoc())
              << "the initialiser of '" << p.getName() << "' has "
              << (t.kind == ValueType::Tensor ? "shape " : "") << t.str()
              << ", expected " << ValueType::tensor(false, *shape).str();
          break;
        }
      }
      m.params.emplace_back(&p, *shape);
      break;
    }
    case DeclAST::Let:
    case DeclAST::Encode:
    case DeclAST::Decode:
    case DeclAST::Loss: {
      auto &b = llvm::cast<BindingDeclAST>(decl);
      bool namedTerm =
          decl.getKind() == DeclAST::Loss && !decl.getName().empty();
      const BindingDeclAST **slot =
          decl.getKind() == DeclAST::Encode               ? &m.encode
          : decl.getKind() == DeclAST::Decode             ? &m.decode
          : decl.getKind() == DeclAST::Loss && !namedTerm ? &m.loss
                                                          : nullptr;
      const char *keyword = decl.getKind() == DeclAST::Encode   ? "encode"
                            : decl.getKind() == DeclAST::Decode ? "decode"
                                                                : "loss";
      if (slot && *slot) {
        mlir::InFlightDiagnostic diag = error(decl.getLoc());
        diag << "a model has exactly one '" << keyword << "' statement";
        diag.attachNote(toLocation(ctx, (*slot)->getLoc()))
            << "the first one is here";
        break;
      }
      if (decl.getKind() == DeclAST::Loss) {
        const DeclAST *other = m.loss                 ? m.loss
                               : !m.lossTerms.empty() ? m.lossTerms.front()
                                                      : nullptr;
        if (other && (!namedTerm || other == m.loss)) {
          mlir::InFlightDiagnostic diag = error(decl.getLoc());
          diag << "a loss is either one unnamed 'loss = ...' or named terms "
                  "'loss NAME = ...' that add up";
          diag.attachNote(toLocation(ctx, other->getLoc()))
              << "the first loss statement is here";
          break;
        }
        if (namedTerm) {
          auto dup = llvm::find_if(m.lossTerms, [&](const DeclAST *t) {
            return t->getName() == decl.getName();
          });
          if (dup != m.lossTerms.end()) {
            mlir::InFlightDiagnostic diag = error(decl.getLoc());
            diag << "redefinition of loss term '" << decl.getName() << "'";
            diag.attachNote(toLocation(ctx, (*dup)->getLoc()))
                << "previous definition is here";
            break;
          }
          m.lossTerms.push_back(&b);
        }
      } else if (!declare(decl)) {
        break;
      }
      if (slot)
        *slot = &b;
      Scope scope;
      if (decl.getKind() == DeclAST::Decode) {
        if (!m.encode) {
          error(decl.getLoc()) << "'decode' must come after 'encode'";
          break;
        }
        scope.kind = Scope::Decode;
        scope.codesName = m.encode->getName();
      }
      bool usesInput = false;
      defining = &decl;
      ValueType t = check(b.getValue(), scope, usesInput);
      defining = nullptr;
      if (!t.isValid())
        break;
      dependsOnInput[&decl] = usesInput || decl.getKind() == DeclAST::Encode;
      if (!checkBinding(b, t, usesInput))
        break;
      m.types[&decl] = t;
      break;
    }
    }
  }
  checkSettings();
  return finish(usedOverrides);
}

void Sema::checkSettings() {
  static const char *const keys[] = {
      "lr",    "beta1",           "beta2",           "eps",
      "clip",  "lr_warmup",       "lr_decay",        "sparsity_warmup",
      "batch", "unit_norm",       "normalize"};
  llvm::StringMap<const DeclAST *> seen;
  TrainConfig &t = m.train;
  for (const DeclPtr &declPtr : m.ast->getDecls()) {
    auto *s = llvm::dyn_cast<SettingDeclAST>(declPtr.get());
    if (!s)
      continue;
    llvm::StringRef key = s->getName();
    const ExprAST &value = s->getValue();
    if (!llvm::is_contained(keys, key)) {
      std::string list;
      for (const char *k : keys)
        list += (list.empty() ? "" : ", ") + std::string(k);
      error(s->getLoc()) << "unknown train setting '" << key
                         << "'; the settings are " << list;
      continue;
    }
    auto [it, inserted] = seen.try_emplace(key, s);
    if (!inserted) {
      mlir::InFlightDiagnostic diag = error(s->getLoc());
      diag << "train setting '" << key << "' is set twice";
      diag.attachNote(toLocation(ctx, it->second->getLoc()))
          << "the first setting is here";
      continue;
    }
    // Settings that name something: a choice or a parameter.
    if (key == "lr_decay" || key == "normalize" || key == "unit_norm") {
      auto *name = llvm::dyn_cast<NameExprAST>(&value);
      std::vector<llvm::StringRef> choices =
          key == "lr_decay"    ? std::vector<llvm::StringRef>{"none", "linear",
                                                        "cosine"}
          : key == "normalize" ? std::vector<llvm::StringRef>{"none",
                                                        "expected_norm"}
                               : std::vector<llvm::StringRef>{"none"};
      if (name && llvm::is_contained(choices, name->getName())) {
        (key == "lr_decay" ? t.lrDecay : t.normalize) = name->getName().str();
        continue;
      }
      if (key != "unit_norm") {
        std::string list;
        for (llvm::StringRef c : choices)
          list += (list.empty() ? "" : ", ") + c.str();
        error(value.getLoc())
            << "train setting '" << key << "' is one of " << list;
        continue;
      }
      auto found = name ? m.symbols.find(name->getName()) : m.symbols.end();
      auto *param = found == m.symbols.end()
                        ? nullptr
                        : llvm::dyn_cast<TensorDeclAST>(found->second);
      if (!param || param->getKind() != DeclAST::Param || param->isState() ||
          param->getShape().size() != 2) {
        error(value.getLoc()) << "'unit_norm' names a trainable matrix "
                                 "parameter (the decoder) or none";
        continue;
      }
      t.unitNorm = param;
      continue;
    }
    std::optional<double> v = evalConst(value);
    if (!v) {
      error(value.getLoc())
          << "train setting '" << key << "' must be a constant number";
      continue;
    }
    bool integral = key == "lr_warmup" || key == "sparsity_warmup" ||
                    key == "batch";
    if (integral) {
      double lo = key == "batch" ? 1 : 0;
      if (*v != std::floor(*v) || *v < lo || *v > 1e15) {
        error(value.getLoc()) << "train setting '" << key << "' must be an "
                              << (lo ? "integer >= 1" : "integer >= 0")
                              << ", got " << formatNumber(*v);
        continue;
      }
      (key == "batch" ? t.batch
       : key == "lr_warmup" ? t.lrWarmup
                            : t.sparsityWarmup) = int64_t(*v);
      continue;
    }
    bool beta = key == "beta1" || key == "beta2";
    bool ok = beta ? (*v >= 0 && *v < 1)
              : key == "clip" ? *v >= 0
                              : *v > 0; // lr, eps
    if (!ok || !std::isfinite(*v)) {
      error(value.getLoc()) << "train setting '" << key << "' must be "
                            << (beta          ? "in [0, 1)"
                                : key == "clip" ? ">= 0 (0: no clipping)"
                                                : "> 0")
                            << ", got " << formatNumber(*v);
      continue;
    }
    (key == "lr"      ? t.lr
     : key == "beta1" ? t.beta1
     : key == "beta2" ? t.beta2
     : key == "eps"   ? t.eps
                      : t.clip) = *v;
  }
}

bool Sema::checkBinding(const BindingDeclAST &b, const ValueType &t,
                        bool usesInput) {
  switch (b.getKind()) {
  case DeclAST::Encode:
    if (!usesInput) {
      error(b.getLoc()) << "encode does not use the input";
      return false;
    }
    if (t.kind == ValueType::Scalar ||
        (t.kind == ValueType::Tensor && (!t.batched || t.shape.size() != 1))) {
      error(b.getValue().getLoc())
          << "encode must produce one code vector per row, got " << t.str();
      return false;
    }
    m.codesType = t;
    if (const CallExprAST *call = rootCall(b.getValue()))
      m.encoderOp = call->getCallee().str();
    else
      m.encoderOp = "expression";
    if (t.kind == ValueType::Codes)
      m.encoderParams["k"] = t.k;
    return true;
  case DeclAST::Decode:
    if (t.kind != ValueType::Tensor || !t.batched ||
        t.shape != std::vector<int64_t>{m.inputDim}) {
      error(b.getValue().getLoc())
          << "decode must produce the input's shape [" << m.inputDim
          << "] per row, but produces "
          << (t.kind == ValueType::Tensor && !t.batched
                  ? "the parameter-shaped tensor " + t.str()
                  : t.str());
      return false;
    }
    return true;
  case DeclAST::Loss: {
    if (t.kind != ValueType::Scalar) {
      error(b.getValue().getLoc()) << "loss must be a scalar, got " << t.str();
      return false;
    }
    if (!b.getName().empty()) {
      m.lossKind = "sum";
      return true;
    }
    const CallExprAST *call = rootCall(b.getValue());
    m.lossKind = call ? call->getCallee().str() : "expression";
    return true;
  }
  default:
    return true;
  }
}

std::optional<CheckedModel>
Sema::finish(const llvm::StringMap<bool> &usedOverrides) {
  const ModelAST &ast = *m.ast;
  for (const auto &[name, value] : overrides)
    if (!usedOverrides.count(name))
      error(SourceLoc{ast.getRange().begin.file, ast.getRange().begin.line,
                      ast.getRange().begin.col})
          << "-D " << name << "=" << value << ": model '" << ast.getName()
          << "' has no dimension named '" << name << "'";

  SourceLoc modelLoc = ast.getRange().begin;
  if (numErrors == 0) {
    if (!m.input)
      error(modelLoc) << "model '" << ast.getName() << "' declares no 'input'";
    if (!m.encode)
      error(modelLoc) << "model '" << ast.getName()
                      << "' has no 'encode' statement";
    if (!m.decode)
      error(modelLoc) << "model '" << ast.getName()
                      << "' has no 'decode' statement";
    if (!m.loss && m.lossTerms.empty())
      error(modelLoc) << "model '" << ast.getName()
                      << "' has no 'loss' statement";
  }
  if (numErrors)
    return std::nullopt;
  return std::move(m);
}

} // namespace

std::optional<CheckedModel>
sae::analyze(const ModelAST &model, mlir::MLIRContext &ctx,
             const std::map<std::string, int64_t> &overrides) {
  Sema sema(model, ctx, overrides);
  return sema.run();
}
