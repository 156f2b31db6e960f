//===- MLIRGen.cpp - Generate the sae dialect from a checked model --------===//
//
// Each entry point is a function over tensors whose leading dimension is the
// (dynamic) batch. Bindings are generated on demand inside each function, so
// a function only contains what it needs: decode_sparse never computes the
// encoder, and the encoder's codes stay sparse unless dense codes are asked.
//
//===----------------------------------------------------------------------===//
#include "sae/MLIRGen/MLIRGen.h"
#include "sae/Dialect/Sae/IR/SaeOps.h"
#include "sae/Frontend/Diagnostics.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/JSON.h"

#include <cmath>

using namespace sae;
using namespace mlir;
/// The dialect's namespace; `sae` alone is the compiler's.
namespace saedl = ::mlir::sae;

namespace {

/// Prints an expression back as source text (for the library description).
std::string exprText(const ExprAST &e) {
  std::string s;
  llvm::raw_string_ostream os(s);
  if (auto *n = llvm::dyn_cast<NumberExprAST>(&e)) {
    os << n->getValue();
  } else if (auto *n = llvm::dyn_cast<NameExprAST>(&e)) {
    os << n->getName();
  } else if (auto *u = llvm::dyn_cast<UnaryExprAST>(&e)) {
    os << "-" << exprText(u->getOperand());
  } else if (auto *b = llvm::dyn_cast<BinaryExprAST>(&e)) {
    os << "(" << exprText(b->getLHS()) << " " << b->getOp() << " "
       << exprText(b->getRHS()) << ")";
  } else if (auto *list = llvm::dyn_cast<ListExprAST>(&e)) {
    os << "[";
    for (size_t i = 0; i < list->getElements().size(); ++i)
      os << (i ? ", " : "") << exprText(*list->getElements()[i]);
    os << "]";
  } else if (auto *c = llvm::dyn_cast<CallExprAST>(&e)) {
    os << c->getCallee() << "(";
    for (size_t i = 0; i < c->getArgs().size(); ++i) {
      const ArgAST &a = c->getArgs()[i];
      os << (i ? ", " : "") << (a.name ? *a.name + " = " : "")
         << exprText(*a.value);
    }
    os << ")";
  }
  return s;
}

class MLIRGenImpl {
public:
  MLIRGenImpl(MLIRContext &ctx, const CheckedModel &model)
      : ctx(ctx), model(model), builder(&ctx) {}

  OwningOpRef<ModuleOp> generate(StringRef sourceName);

private:
  /// Values of declarations inside the function being generated.
  using Env = llvm::DenseMap<const DeclAST *, Value>;

  Location loc(const SourceLoc &l) { return toLocation(ctx, l); }
  Type f32() { return builder.getF32Type(); }
  int64_t numLatents() const {
    return model.codesType.kind == ValueType::Codes
               ? model.codesType.shape[0]
               : model.codesType.shape.back();
  }
  /// The encoder's inference form gives sparse codes (batch_topk infers
  /// with a threshold: dense).
  bool sparse() const {
    return model.codesType.kind == ValueType::Codes &&
           model.encoderOp != "batch_topk";
  }
  bool perBatch() const { return sparse() && model.codesType.perBatch; }

  RankedTensorType batchTensor(int64_t width) {
    return RankedTensorType::get({ShapedType::kDynamic, width}, f32());
  }
  RankedTensorType paramTensor(const std::vector<int64_t> &shape) {
    return RankedTensorType::get(shape, f32());
  }
  saedl::CodesType codesType() {
    return saedl::CodesType::get(&ctx, ShapedType::kDynamic, numLatents(),
                                 f32(), model.codesType.k, perBatch());
  }

  /// Creates entry point `name` with arguments `leading`, then the model's
  /// inputs (tagged sae.input) if `withInputs`, then its parameters (tagged
  /// sae.param) if `withParams`, then `trailing`; binds inputs and
  /// parameters in `env`.
  func::FuncOp beginEntry(StringRef name, ArrayRef<Type> leading,
                          bool withInputs, bool withParams,
                          ArrayRef<Type> trailing, ArrayRef<Type> results,
                          Env &env);

  Value gen(const ExprAST &e, Env &env);
  Value genDecl(const DeclAST *decl, Env &env);
  Value genBinary(const BinaryExprAST &e, Env &env);
  Value genCall(const CallExprAST &e, Env &env);
  Value scalar(Location l, double v) {
    return arith::ConstantOp::create(builder, l, builder.getF32FloatAttr(v));
  }

  void genInit();
  /// The training form's losses: the total (unweighted) and the terms.
  SmallVector<Value> genLosses(Env &env);
  void genGradient();
  void genTrainStep();
  /// The trainable parameters (not `state`), in ABI order.
  SmallVector<std::pair<const TensorDeclAST *, std::vector<int64_t>>>
  trainable() const {
    SmallVector<std::pair<const TensorDeclAST *, std::vector<int64_t>>> out;
    for (const auto &p : model.params)
      if (!p.first->isState())
        out.push_back(p);
    return out;
  }
  std::string describe(StringRef sourceName);

  MLIRContext &ctx;
  const CheckedModel &model;
  OpBuilder builder;
  ModuleOp module;
  /// In `init`: the parameter being initialised and its RNG stream.
  const TensorDeclAST *initParam = nullptr;
  Value seed;
  int64_t stream = 0;
  /// In `forward`: the seed of stochastic operators, and the stream of the
  /// next one.
  Value noiseSeed;
  int64_t noiseStream = 0;
  /// In the training form: batch_topk selections whose threshold is a
  /// `state` (tracked by sae.threshold_ema in train_step).
  SmallVector<std::pair<const TensorDeclAST *, Value>> thresholdRules;
  /// In the training form: bias_adapt calls (Group Bias Adaptation).
  SmallVector<const CallExprAST *> biasRules;
};

func::FuncOp MLIRGenImpl::beginEntry(StringRef name, ArrayRef<Type> leading,
                                     bool withInputs, bool withParams,
                                     ArrayRef<Type> trailing,
                                     ArrayRef<Type> results, Env &env) {
  // Arguments: leading..., inputs..., params..., trailing...
  SmallVector<Type> argTypes(leading);
  if (withInputs)
    for (const auto &[decl, dim] : model.inputs)
      argTypes.push_back(batchTensor(dim));
  if (withParams)
    for (const auto &[decl, shape] : model.params)
      argTypes.push_back(paramTensor(shape));
  argTypes.append(trailing.begin(), trailing.end());
  builder.setInsertionPointToEnd(module.getBody());
  auto func =
      func::FuncOp::create(builder, loc(model.ast->getRange().begin), name,
                           builder.getFunctionType(argTypes, results));
  func->setAttr("sae.entry", builder.getStringAttr(name));
  Block *block = func.addEntryBlock();
  unsigned argNo = leading.size();
  if (withInputs) {
    for (const auto &[decl, dim] : model.inputs) {
      func.setArgAttr(argNo, "sae.input",
                      builder.getStringAttr(decl->getName()));
      env[decl] = block->getArgument(argNo++);
    }
  }
  if (withParams) {
    for (const auto &[decl, shape] : model.params) {
      func.setArgAttr(argNo, "sae.param",
                      builder.getStringAttr(decl->getName()));
      env[decl] = block->getArgument(argNo++);
    }
  }
  builder.setInsertionPointToStart(block);
  return func;
}

Value MLIRGenImpl::genDecl(const DeclAST *decl, Env &env) {
  if (Value v = env.lookup(decl))
    return v;
  auto *binding = llvm::dyn_cast<BindingDeclAST>(decl);
  assert(binding && "Sema admitted a name without a value in this function");
  Value v = gen(binding->getValue(), env);
  env[decl] = v;
  return v;
}

Value MLIRGenImpl::gen(const ExprAST &e, Env &env) {
  Location l = loc(e.getLoc());
  switch (e.getKind()) {
  case ExprAST::Number:
    return scalar(l, llvm::cast<NumberExprAST>(e).getValue());
  case ExprAST::Name: {
    StringRef name = llvm::cast<NameExprAST>(e).getName();
    auto it = model.symbols.find(name);
    if (it == model.symbols.end()) {
      // A bare initialiser such as `zeros` (Sema admitted it in `init`).
      return genCall(CallExprAST(e.getRange(), name.str(), {}), env);
    }
    if (auto *dim = llvm::dyn_cast<DimDeclAST>(it->second))
      return scalar(l, double(model.getDim(dim->getName())));
    return genDecl(it->second, env);
  }
  case ExprAST::Unary: {
    Value v = gen(llvm::cast<UnaryExprAST>(e).getOperand(), env);
    if (isa<FloatType>(v.getType()))
      return arith::NegFOp::create(builder, l, v);
    return saedl::ScaleOp::create(builder, l, v.getType(), v, scalar(l, -1.0));
  }
  case ExprAST::Binary:
    return genBinary(llvm::cast<BinaryExprAST>(e), env);
  case ExprAST::Call:
    return genCall(llvm::cast<CallExprAST>(e), env);
  case ExprAST::List:
    break;
  }
  llvm_unreachable("Sema admits lists only as constant arguments");
}

Value MLIRGenImpl::genBinary(const BinaryExprAST &e, Env &env) {
  Location l = loc(e.getOpLoc());
  Value lhs = gen(e.getLHS(), env);
  Value rhs = gen(e.getRHS(), env);
  bool lScalar = isa<FloatType>(lhs.getType());
  bool rScalar = isa<FloatType>(rhs.getType());
  char op = e.getOp();

  if (op == '@') {
    auto w = cast<RankedTensorType>(rhs.getType());
    if (auto codes = dyn_cast<saedl::CodesType>(lhs.getType()))
      return saedl::DecodeOp::create(builder, l, batchTensor(w.getDimSize(1)),
                                     lhs, rhs);
    auto in = cast<RankedTensorType>(lhs.getType());
    auto type =
        RankedTensorType::get({in.getDimSize(0), w.getDimSize(1)}, f32());
    return saedl::LinearOp::create(builder, l, type, lhs, rhs);
  }

  if (lScalar && rScalar) {
    switch (op) {
    case '+':
      return arith::AddFOp::create(builder, l, lhs, rhs);
    case '-':
      return arith::SubFOp::create(builder, l, lhs, rhs);
    case '*':
      return arith::MulFOp::create(builder, l, lhs, rhs);
    default:
      return arith::DivFOp::create(builder, l, lhs, rhs);
    }
  }

  if (op == '*' || op == '/') {
    if (lScalar || rScalar) {
      Value t = lScalar ? rhs : lhs;
      Value s = lScalar ? lhs : rhs;
      if (op == '/')
        s = arith::DivFOp::create(builder, l, scalar(l, 1.0), s);
      return saedl::ScaleOp::create(builder, l, t.getType(), t, s);
    }
    if (lhs.getType() != rhs.getType()) { // a vector over columns
      if (op == '*')
        return saedl::BiasMulOp::create(builder, l, lhs.getType(), lhs, rhs);
      return saedl::BiasDivOp::create(builder, l, lhs.getType(), lhs, rhs);
    }
    if (op == '*')
      return saedl::MulOp::create(builder, l, lhs, rhs);
    return saedl::DivOp::create(builder, l, lhs, rhs);
  }

  // '+' and '-' on tensors: same type, or a vector broadcast over a batch.
  auto lt = cast<RankedTensorType>(lhs.getType());
  auto rt = cast<RankedTensorType>(rhs.getType());
  if (lt == rt) {
    if (op == '+')
      return saedl::AddOp::create(builder, l, lhs, rhs);
    return saedl::SubOp::create(builder, l, lhs, rhs);
  }
  if (lt.getRank() == 2) {
    if (op == '+')
      return saedl::BiasAddOp::create(builder, l, lt, lhs, rhs);
    return saedl::BiasSubOp::create(builder, l, lt, lhs, rhs);
  }
  // vector ± batch.
  if (op == '+')
    return saedl::BiasAddOp::create(builder, l, rt, rhs, lhs);
  Value diff = saedl::BiasSubOp::create(builder, l, rt, rhs, lhs);
  return saedl::ScaleOp::create(builder, l, rt, diff, scalar(l, -1.0));
}

Value MLIRGenImpl::genCall(const CallExprAST &e, Env &env) {
  Location l = loc(e.getLoc());
  StringRef name = e.getCallee();
  static const std::vector<const ExprAST *> none;
  auto it = model.boundArgs.find(&e);
  const std::vector<const ExprAST *> &args =
      it == model.boundArgs.end() ? none : it->second;
  auto cit = model.callConstants.find(&e);
  auto constant = [&](size_t i) {
    return cit == model.callConstants.end() ? 0.0 : cit->second[i];
  };

  if (name == "relu")
    return saedl::ReluOp::create(builder, l, gen(*args[0], env));
  if (name == "abs")
    return saedl::AbsOp::create(builder, l, gen(*args[0], env));
  if (name == "exp")
    return saedl::ExpOp::create(builder, l, gen(*args[0], env));
  if (name == "tanh")
    return saedl::TanhOp::create(builder, l, gen(*args[0], env));
  if (name == "step")
    return saedl::StepOp::create(builder, l, gen(*args[0], env));
  if (name == "stopgrad")
    return saedl::StopGradOp::create(builder, l, gen(*args[0], env));
  if (name == "bias_adapt") {
    // The identity on the forward pass; train_step applies the rule.
    if (noiseSeed)
      biasRules.push_back(&e);
    return gen(*args[0], env);
  }
  if (name == "jump_relu") {
    Value x = gen(*args[0], env);
    return saedl::JumpReluOp::create(builder, l, x.getType(), x,
                                     gen(*args[1], env),
                                     builder.getF64FloatAttr(constant(2)));
  }
  if (name == "gaussian") {
    Value mu = gen(*args[0], env);
    // Sampling belongs to the training form (forward); encoding uses μ.
    if (!noiseSeed)
      return mu;
    return saedl::GaussianNoiseOp::create(
        builder, l, mu, noiseSeed, builder.getI64IntegerAttr(noiseStream++));
  }
  if (name == "matching_pursuit") {
    Value r = gen(*args[0], env), w = gen(*args[1], env);
    auto wt = cast<RankedTensorType>(w.getType());
    auto in = cast<RankedTensorType>(r.getType());
    auto type = saedl::CodesType::get(&ctx, in.getDimSize(0), wt.getDimSize(0),
                                      f32(), int64_t(constant(2)));
    auto mp = saedl::MatchingPursuitOp::create(builder, l, type, r, w);
    if (constant(3) != 0)
      mp.setNonneg(true);
    return mp;
  }
  if (name == "top_afa") {
    Value a = gen(*args[0], env);
    return saedl::TopAfaOp::create(builder, l, a.getType(), a,
                                   gen(*args[1], env), gen(*args[2], env));
  }
  if (name == "l0")
    return saedl::L0Op::create(builder, l, f32(), gen(*args[0], env),
                               gen(*args[1], env),
                               builder.getF64FloatAttr(constant(2)));
  if (name == "l1") {
    Value z = gen(*args[0], env);
    Value w = args[1] ? gen(*args[1], env) : Value();
    return saedl::L1Op::create(builder, l, f32(), z, w);
  }
  if (name == "tanh_penalty")
    return saedl::TanhPenaltyOp::create(builder, l, f32(), gen(*args[0], env),
                                        gen(*args[1], env),
                                        builder.getF64FloatAttr(constant(2)));
  if (name == "afa")
    return saedl::AfaOp::create(builder, l, f32(), gen(*args[0], env),
                                gen(*args[1], env));
  if (name == "aux_k" || name == "aux_zipf") {
    bool zipf = name == "aux_zipf";
    size_t biasArg = zipf ? 7 : 6;
    Value bias = args[biasArg] ? gen(*args[biasArg], env) : Value();
    Value target = args[biasArg + 1] ? gen(*args[biasArg + 1], env) : Value();
    auto aux = saedl::AuxKOp::create(
        builder, l, f32(), gen(*args[0], env), gen(*args[1], env),
        gen(*args[2], env), gen(*args[3], env), bias, target,
        builder.getI64IntegerAttr(int64_t(constant(4))),
        builder.getF64FloatAttr(zipf ? 0.0 : constant(5)), FloatAttr(),
        IntegerAttr());
    if (zipf) {
      aux.setZipfAlphaAttr(builder.getF64FloatAttr(constant(6)));
      aux.setZipfKAttr(builder.getI64IntegerAttr(int64_t(constant(5))));
    }
    return aux;
  }
  if (name == "matryoshka") {
    auto it = model.listArgs.find({&e, 4u});
    return saedl::MatryoshkaOp::create(
        builder, l, f32(), gen(*args[0], env), gen(*args[1], env),
        gen(*args[2], env), gen(*args[3], env),
        builder.getDenseI64ArrayAttr(it->second));
  }
  if (name == "kl_std_normal")
    return saedl::KlStdNormalOp::create(builder, l, f32(), gen(*args[0], env));
  if (name == "feature_choice") {
    Value x = gen(*args[0], env);
    auto in = cast<RankedTensorType>(x.getType());
    auto type = saedl::CodesType::get(&ctx, in.getDimSize(0), in.getDimSize(1),
                                      f32(), int64_t(constant(1)), true);
    return saedl::FeatureChoiceOp::create(builder, l, type, x,
                                          builder.getF64FloatAttr(constant(2)));
  }
  if (name == "batch_topk" || name == "mutual_choice") {
    Value x = gen(*args[0], env);
    auto in = cast<RankedTensorType>(x.getType());
    // BatchTopK trains with batch-level selection and infers with a
    // per-latent threshold (SAELens' JumpReLU form).
    if (name == "batch_topk" && !noiseSeed)
      return saedl::JumpReluOp::create(builder, l, in, x, gen(*args[2], env),
                                       builder.getF64FloatAttr(0.001));
    auto type = saedl::CodesType::get(&ctx, in.getDimSize(0), in.getDimSize(1),
                                      f32(), int64_t(constant(1)), true);
    Value z = saedl::BatchTopKOp::create(builder, l, type, x);
    if (name == "batch_topk")
      if (auto *ref = llvm::dyn_cast<NameExprAST>(args[2]))
        if (auto *decl = llvm::dyn_cast_or_null<TensorDeclAST>(
                model.symbols.lookup(ref->getName())))
          if (decl->isState())
            thresholdRules.push_back({decl, z});
    return z;
  }
  if (name == "topk" || name == "abs_topk" || name == "group_max" ||
      name == "grad_topk") {
    Value x = gen(*args[0], env);
    auto in = cast<RankedTensorType>(x.getType());
    int64_t k = int64_t(constant(name == "grad_topk" ? 3 : 1));
    auto type = saedl::CodesType::get(&ctx, in.getDimSize(0), in.getDimSize(1),
                                      f32(), k);
    if (name == "group_max")
      return saedl::GroupMaxOp::create(builder, l, type, x);
    Value score;
    if (name == "grad_topk") {
      // g-SAE: s = x + β · x ⊙ |g · W_decᵀ|, selecting by s, keeping x.
      Value g = gen(*args[1], env), w = gen(*args[2], env);
      auto wt = cast<RankedTensorType>(w.getType());
      Value wT = saedl::TransposeOp::create(
          builder, l, paramTensor({wt.getDimSize(1), wt.getDimSize(0)}), w);
      Value gw = saedl::LinearOp::create(builder, l, in, g, wT);
      Value mag = saedl::AbsOp::create(builder, l, gw);
      Value prod = saedl::MulOp::create(builder, l, x, mag);
      Value scaled =
          saedl::ScaleOp::create(builder, l, in, prod, scalar(l, constant(4)));
      score = saedl::AddOp::create(builder, l, x, scaled);
    }
    auto topk = saedl::TopKOp::create(builder, l, type, x, score);
    if (name == "abs_topk")
      topk.setByMagnitude(true);
    return topk;
  }
  if (name == "mse" || name == "fvu") {
    Value a = gen(*args[0], env), b = gen(*args[1], env);
    if (name == "mse") {
      auto mse = saedl::MseOp::create(builder, l, f32(), a, b);
      if (constant(2) != 0)
        mse.setMeanOverColumns(true);
      return mse;
    }
    return saedl::FvuOp::create(builder, l, f32(), a, b);
  }
  if (name == "transpose") {
    Value w = gen(*args[0], env);
    auto t = cast<RankedTensorType>(w.getType());
    return saedl::TransposeOp::create(
        builder, l, paramTensor({t.getDimSize(1), t.getDimSize(0)}), w);
  }
  if (name == "normalize_rows")
    return saedl::NormalizeRowsOp::create(builder, l, gen(*args[0], env));

  // Initialisers take the shape of the parameter being initialised.
  assert(initParam && "Sema admitted an initialiser outside a param");
  const std::vector<int64_t> *shape = nullptr;
  for (const auto &[p, s] : model.params)
    if (p == initParam)
      shape = &s;
  RankedTensorType type = paramTensor(*shape);
  auto fill = [&](double v) {
    return saedl::FillOp::create(builder, l, type, builder.getF64FloatAttr(v));
  };
  auto uniform = [&](double lo, double hi) {
    return saedl::RandomUniformOp::create(
        builder, l, type, seed, builder.getF64FloatAttr(lo),
        builder.getF64FloatAttr(hi), builder.getI64IntegerAttr(stream));
  };
  if (name == "data_mean" || name == "geometric_median") {
    Value x = gen(*args[0], env);
    if (name == "data_mean")
      return saedl::ColumnMeanOp::create(builder, l, type, x);
    return saedl::GeometricMedianOp::create(
        builder, l, type, x, builder.getI64IntegerAttr(int64_t(constant(1))));
  }
  if (name == "normal")
    return saedl::RandomNormalOp::create(builder, l, type, seed,
                                         builder.getF64FloatAttr(constant(0)),
                                         builder.getF64FloatAttr(constant(1)),
                                         builder.getI64IntegerAttr(stream));
  if (name == "zeros")
    return fill(0.0);
  if (name == "ones")
    return fill(1.0);
  if (name == "constant")
    return fill(constant(0));
  if (name == "uniform")
    return uniform(constant(0), constant(1));
  assert(name == "kaiming_uniform" && "unknown builtin admitted by Sema");
  // He et al.: U(-b, b), b = sqrt(6 / fan_in); fan_in is the dimension that
  // `x @ W` contracts, i.e. the first.
  double bound = std::sqrt(6.0 / double((*shape)[0]));
  return uniform(-bound, bound);
}

void MLIRGenImpl::genInit() {
  SmallVector<Type> results;
  for (const auto &[decl, shape] : model.params)
    results.push_back(paramTensor(shape));
  Env env;
  // init(seed, x): data-dependent initialisers read the sample x.
  func::FuncOp func =
      beginEntry("init", {builder.getI64Type(), batchTensor(model.inputDim)},
                 false, false, {}, results, env);
  seed = func.getArgument(0);
  env[model.input] = func.getArgument(1);
  SmallVector<Value> values;
  for (auto [i, p] : llvm::enumerate(model.params)) {
    initParam = p.first;
    stream = int64_t(i);
    Value v;
    if (const ExprAST *init = p.first->getInit())
      v = gen(*init, env);
    else
      v = saedl::FillOp::create(builder, loc(p.first->getLoc()),
                                paramTensor(p.second),
                                builder.getF64FloatAttr(0.0));
    env[p.first] = v;
    values.push_back(v);
    func.setResultAttr(i, "sae.param",
                       builder.getStringAttr(p.first->getName()));
  }
  initParam = nullptr;
  func::ReturnOp::create(builder, func.getLoc(), values);
}

SmallVector<Value> MLIRGenImpl::genLosses(Env &env) {
  if (model.loss)
    return {genDecl(model.loss, env)};
  SmallVector<Value> outs = {Value()};
  for (const BindingDeclAST *term : model.lossTerms) {
    Value v = genDecl(term, env);
    outs[0] = outs[0] ? arith::AddFOp::create(builder, v.getLoc(), outs[0], v)
                            .getResult()
                      : v;
    outs.push_back(v);
  }
  return outs;
}

void MLIRGenImpl::genGradient() {
  // gradient(inputs, params, seed) -> grads of the trainable params, losses
  Env env;
  auto params = trainable();
  SmallVector<Type> results;
  for (const auto &[decl, shape] : params)
    results.push_back(paramTensor(shape));
  results.push_back(f32());
  results.append(model.lossTerms.size(), f32());
  func::FuncOp f = beginEntry("gradient", {}, true, true,
                              {builder.getI64Type()}, results, env);
  noiseSeed = f.getArguments().back();
  noiseStream = 0;
  genDecl(model.decode, env);
  SmallVector<Value> losses = genLosses(env);
  SmallVector<Value> wrt;
  for (const auto &[decl, shape] : params)
    wrt.push_back(env.lookup(decl));
  auto grad = saedl::GradientOp::create(builder, f.getLoc(), losses[0], wrt);
  SmallVector<Value> outs(grad.getResults());
  llvm::append_range(outs, losses);
  for (auto [i, p] : llvm::enumerate(params))
    f.setResultAttr(i, "sae.grad", builder.getStringAttr(p.first->getName()));
  for (size_t i = 0; i < losses.size(); ++i)
    f.setResultAttr(params.size() + i, "sae.loss",
                    builder.getStringAttr(
                        i ? model.lossTerms[i - 1]->getName() : "total"));
  func::ReturnOp::create(builder, f.getLoc(), outs);
  noiseSeed = Value();
}

void MLIRGenImpl::genTrainStep() {
  // train_step(inputs, params, adam_m, adam_v, hyper[8], seed)
  //   -> params', adam_m', adam_v', losses, metrics[3], fired[n]
  // (abi.h: sae_train_step_fn; params and moments are updated in place.)
  Env env;
  auto params = trainable();
  int64_t n = numLatents();
  SmallVector<Type> moments;
  for (const auto &[decl, shape] : params)
    moments.push_back(paramTensor(shape));
  SmallVector<Type> trailing(moments);
  trailing.append(moments.begin(), moments.end());
  constexpr unsigned kHyper = 8;
  trailing.append(kHyper, f32());
  trailing.push_back(builder.getI64Type());
  SmallVector<Type> results;
  for (const auto &[decl, shape] : model.params)
    results.push_back(paramTensor(shape));
  results.append(moments.begin(), moments.end());
  results.append(moments.begin(), moments.end());
  results.append(1 + model.lossTerms.size() + 3, f32());
  results.push_back(paramTensor({n}));
  func::FuncOp f =
      beginEntry("train_step", {}, true, true, trailing, results, env);
  unsigned firstM = model.inputs.size() + model.params.size();
  unsigned firstV = firstM + params.size();
  unsigned firstHyper = firstV + params.size();
  for (unsigned i = 0; i < params.size(); ++i) {
    StringAttr name = builder.getStringAttr(params[i].first->getName());
    f.setArgAttr(firstM + i, "sae.adam_m", name);
    f.setArgAttr(firstV + i, "sae.adam_v", name);
  }
  for (unsigned i = 0; i < kHyper; ++i)
    f.setArgAttr(firstHyper + i, "sae.hyper", builder.getI64IntegerAttr(i));
  auto hyper = [&](unsigned i) { return f.getArgument(firstHyper + i); };
  Location l = f.getLoc();
  noiseSeed = f.getArguments().back();
  noiseStream = 0;
  thresholdRules.clear();
  biasRules.clear();

  Value x = env.lookup(model.input);
  Value xhat = genDecl(model.decode, env);
  Value z = genDecl(model.encode, env);
  SmallVector<Value> losses = genLosses(env);
  // Every term after the first is weighted by the sparsity warm-up factor.
  Value objective = losses[0];
  if (losses.size() > 2) {
    Value rest = losses[2];
    for (Value t : ArrayRef(losses).drop_front(3))
      rest = arith::AddFOp::create(builder, l, rest, t);
    objective = arith::AddFOp::create(
        builder, l, losses[1],
        arith::MulFOp::create(builder, l, hyper(7), rest));
  }
  SmallVector<Value> wrt;
  for (const auto &[decl, shape] : params)
    wrt.push_back(env.lookup(decl));
  auto gradOp = saedl::GradientOp::create(builder, l, objective, wrt);
  SmallVector<Value> grads(gradOp.getResults());

  // The unit-norm rule: no gradient along a decoder row. Built where it is
  // used (here and, again, in the clipping branch), so that each use has
  // its own and the one feeding Adam fuses into Adam's pass.
  const TensorDeclAST *unit = model.train.unitNorm;
  auto projected = [&](unsigned i) -> Value {
    if (params[i].first != unit)
      return grads[i];
    return saedl::ProjectRowsOp::create(builder, l, grads[i], wrt[i]);
  };
  // Global norm clipping (torch.nn.utils.clip_grad_norm_) when clip > 0;
  // the gradients' norm is only computed then (two passes over every
  // parameter that an unclipped step does not pay).
  {
    Value clip = hyper(6);
    Value clipping = arith::CmpFOp::create(
        builder, l, arith::CmpFPredicate::OGT, clip, scalar(l, 0.0));
    auto ifOp = scf::IfOp::create(builder, l, TypeRange{f32()}, clipping,
                                  /*withElseRegion=*/true);
    {
      OpBuilder::InsertionGuard guard(builder);
      builder.setInsertionPointToStart(ifOp.thenBlock());
      Value sq;
      for (unsigned i = 0; i < grads.size(); ++i) {
        auto s = saedl::SumOp::create(builder, l, f32(), projected(i));
        s.setSquares(true);
        sq = sq ? arith::AddFOp::create(builder, l, sq, s).getResult()
                : s.getResult();
      }
      Value norm = math::SqrtOp::create(builder, l, sq);
      Value coef = arith::DivFOp::create(
          builder, l, clip,
          arith::AddFOp::create(builder, l, norm, scalar(l, 1e-6)));
      Value below = arith::CmpFOp::create(builder, l, arith::CmpFPredicate::OLT,
                                          coef, scalar(l, 1.0));
      scf::YieldOp::create(
          builder, l,
          arith::SelectOp::create(builder, l, below, coef, scalar(l, 1))
              .getResult());
      builder.setInsertionPointToStart(ifOp.elseBlock());
      scf::YieldOp::create(builder, l, scalar(l, 1));
    }
    Value factor = ifOp.getResult(0);
    for (unsigned i = 0; i < grads.size(); ++i)
      grads[i] = saedl::ScaleOp::create(builder, l, grads[i].getType(),
                                        projected(i), factor);
  }

  // Adam, then the unit-norm rule's renormalisation.
  llvm::DenseMap<const TensorDeclAST *, Value> updated;
  SmallVector<Value> newM, newV;
  for (auto [i, p] : llvm::enumerate(params)) {
    auto adam = saedl::AdamOp::create(
        builder, l, wrt[i].getType(), wrt[i].getType(), wrt[i].getType(),
        wrt[i], grads[i], f.getArgument(firstM + i),
        f.getArgument(firstV + i), hyper(0), hyper(1), hyper(2), hyper(3),
        hyper(4), hyper(5));
    Value np = adam.getNewParam();
    if (p.first == unit)
      np = saedl::NormalizeRowsOp::create(builder, l, np);
    updated[p.first] = np;
    newM.push_back(adam.getNewM());
    newV.push_back(adam.getNewV());
  }

  // Metrics, firing counts and the state rules.
  Value fired = saedl::ColumnSumOp::create(builder, l, paramTensor({n}), z);
  cast<saedl::ColumnSumOp>(fired.getDefiningOp()).setCountNonzero(true);
  for (Operation &o : f.getBody().front()) {
    auto aux = dyn_cast<saedl::AuxKOp>(&o);
    if (!aux)
      continue;
    Value counter = aux.getSinceFired();
    for (const auto &[decl, shape] : model.params) {
      if (!decl->isState() || env.lookup(decl) != counter)
        continue;
      if (!aux.getZipfAlpha()) {
        updated[decl] = saedl::SinceFiredOp::create(
            builder, l, counter.getType(), counter, fired, x);
        continue;
      }
      // aux_zipf: firing frequencies, an EMA (0.99) of fired / B.
      Value rate = arith::DivFOp::create(
          builder, l, scalar(l, 0.01),
          saedl::NumRowsOp::create(builder, l, f32(), x));
      updated[decl] = saedl::AddOp::create(
          builder, l,
          saedl::ScaleOp::create(builder, l, counter.getType(), counter,
                                 scalar(l, 0.99)),
          saedl::ScaleOp::create(builder, l, counter.getType(), fired, rate));
    }
  }
  for (const CallExprAST *call : biasRules) {
    const std::vector<const ExprAST *> &args = model.boundArgs.lookup(call);
    const std::vector<double> &c = model.callConstants.lookup(call);
    auto declOf = [&](const ExprAST *a) {
      return llvm::cast<TensorDeclAST>(
          model.symbols.lookup(llvm::cast<NameExprAST>(a)->getName()));
    };
    const TensorDeclAST *bias = declOf(args[1]), *stats = declOf(args[2]);
    auto rule = saedl::BiasAdaptOp::create(
        builder, l, env.lookup(bias).getType(), env.lookup(stats).getType(),
        gen(*args[0], env), env.lookup(bias), env.lookup(stats),
        builder.getI64IntegerAttr(int64_t(c[3])), builder.getF64FloatAttr(c[4]),
        builder.getF64FloatAttr(c[5]), builder.getI64IntegerAttr(int64_t(c[6])),
        builder.getF64FloatAttr(c[7]));
    updated[bias] = rule.getNewBias();
    updated[stats] = rule.getNewStats();
  }
  for (auto [decl, codes] : thresholdRules)
    updated[decl] = saedl::ThresholdEmaOp::create(
        builder, l, env.lookup(decl).getType(), env.lookup(decl), codes,
        builder.getF64FloatAttr(0.999));
  SmallVector<Value> outs;
  for (const auto &[decl, shape] : model.params)
    outs.push_back(updated.count(decl) ? updated[decl] : env.lookup(decl));
  llvm::append_range(outs, newM);
  llvm::append_range(outs, newV);
  llvm::append_range(outs, losses);
  auto sum = [&](Value v, bool squares) {
    auto s = saedl::SumOp::create(builder, l, f32(), v);
    if (squares)
      s.setSquares(true);
    return s.getResult();
  };
  int64_t d = model.inputDim;
  Value mean = saedl::ColumnMeanOp::create(builder, l, paramTensor({d}), x);
  outs.push_back(sum(saedl::SubOp::create(builder, l, xhat, x), true));
  outs.push_back(sum(
      saedl::BiasSubOp::create(builder, l, x.getType(), x, mean), true));
  outs.push_back(sum(fired, false));
  outs.push_back(fired);

  unsigned r = 0;
  for (const auto &[decl, shape] : model.params)
    f.setResultAttr(r++, "sae.param", builder.getStringAttr(decl->getName()));
  for (const auto &[decl, shape] : params)
    f.setResultAttr(r++, "sae.adam_m", builder.getStringAttr(decl->getName()));
  for (const auto &[decl, shape] : params)
    f.setResultAttr(r++, "sae.adam_v", builder.getStringAttr(decl->getName()));
  for (size_t i = 0; i < losses.size(); ++i)
    f.setResultAttr(r++, "sae.loss",
                    builder.getStringAttr(
                        i ? model.lossTerms[i - 1]->getName() : "total"));
  for (unsigned i = 0; i < 3; ++i)
    f.setResultAttr(r++, "sae.metric", builder.getI64IntegerAttr(i));
  func::ReturnOp::create(builder, l, outs);
  noiseSeed = Value();
}

std::string MLIRGenImpl::describe(StringRef sourceName) {
  namespace json = llvm::json;
  json::Object dims;
  for (const auto &[name, value] : model.dims)
    dims[name] = value;
  json::Array params;
  for (const auto &[decl, shape] : model.params) {
    json::Array s;
    for (int64_t d : shape)
      s.push_back(d);
    params.push_back(json::Object{
        {"name", decl->getName()},
        {"shape", std::move(s)},
        {"dtype", "float32"},
        {"init", decl->getInit() ? exprText(*decl->getInit()) : "zeros"},
        {"trainable", !decl->isState()}});
  }
  json::Object codes{{"kind", sparse() ? "sparse" : "dense"}};
  if (sparse()) {
    codes["layout"] = perBatch() ? "batch" : "rows";
    codes["k"] = model.codesType.k;
  }
  json::Array inputs;
  for (const auto &[decl, dim] : model.inputs)
    inputs.push_back(json::Object{{"name", decl->getName()}, {"dim", dim}});
  json::Array terms;
  for (const BindingDeclAST *term : model.lossTerms)
    terms.push_back(term->getName());
  json::Object encoder{{"op", model.encoderOp}};
  for (const auto &[k, v] : model.encoderParams)
    encoder[k] = v;
  json::Array entries{"sae_init",    "sae_encode_dense",
                      "sae_decode_dense", "sae_forward",
                      "sae_gradient", "sae_train_step"};
  const TrainConfig &t = model.train;
  json::Object train{
      {"lr", t.lr},
      {"beta1", t.beta1},
      {"beta2", t.beta2},
      {"eps", t.eps},
      {"clip", t.clip},
      {"lr_warmup", t.lrWarmup},
      {"lr_decay", t.lrDecay},
      {"sparsity_warmup", t.sparsityWarmup},
      {"unit_norm", t.unitNorm ? json::Value(t.unitNorm->getName())
                               : json::Value(nullptr)},
      {"batch", t.batch},
      {"normalize", t.normalize}};
  if (sparse()) {
    entries.push_back(perBatch() ? "sae_encode_batch" : "sae_encode_sparse");
    entries.push_back(perBatch() ? "sae_decode_batch" : "sae_decode_sparse");
  }
  // SAELens' cfg.json fields, written next to the weights.
  // SAELens' architecture names where it has the architecture.
  std::string arch = llvm::StringSwitch<std::string>(model.encoderOp)
                         .Case("relu", "standard")
                         .Case("jump_relu", "jumprelu")
                         .Case("batch_topk", "batchtopk")
                         .Default(model.encoderOp);
  json::Object cfg{{"architecture", arch},
                   {"d_in", model.inputDim},
                   {"d_sae", numLatents()},
                   {"dtype", "float32"},
                   {"normalize_activations", "none"}};
  if (model.codesType.kind == ValueType::Codes)
    cfg["k"] = model.codesType.k;
  json::Object root{{"abi_version", 3},
                    {"name", model.ast->getName()},
                    {"source", sourceName},
                    {"dims", std::move(dims)},
                    {"input", json::Object{{"name", model.input->getName()},
                                           {"dim", model.inputDim}}},
                    {"inputs", std::move(inputs)},
                    {"latents", numLatents()},
                    {"codes", std::move(codes)},
                    {"encoder", std::move(encoder)},
                    {"loss", model.lossKind},
                    {"loss_terms", std::move(terms)},
                    {"init_needs_data", model.initNeedsData},
                    {"stochastic", model.stochastic},
                    {"params", std::move(params)},
                    {"entry_points", std::move(entries)},
                    {"train", std::move(train)},
                    {"cfg", std::move(cfg)}};
  std::string s;
  llvm::raw_string_ostream os(s);
  os << json::Value(std::move(root));
  return s;
}

OwningOpRef<ModuleOp> MLIRGenImpl::generate(StringRef sourceName) {
  module =
      ModuleOp::create(loc(model.ast->getRange().begin), model.ast->getName());
  module->setAttr("sae.describe", builder.getStringAttr(describe(sourceName)));
  int64_t d = model.inputDim, n = numLatents();
  const DeclAST *encodeDecl = model.encode;

  genInit();

  { // encode_dense(inputs, params) -> codes [B, n]
    Env env;
    func::FuncOp f =
        beginEntry("encode_dense", {}, true, true, {}, {batchTensor(n)}, env);
    Value z = genDecl(encodeDecl, env);
    if (isa<saedl::CodesType>(z.getType()))
      z = saedl::DensifyOp::create(builder, z.getLoc(), batchTensor(n), z);
    func::ReturnOp::create(builder, f.getLoc(), z);
  }
  if (sparse()) { // encode_sparse / encode_batch(inputs, params) -> parts
    Env env;
    saedl::CodesType ct = codesType();
    SmallVector<Type> parts = {ct.getValuesType(), ct.getIndicesType()};
    if (perBatch())
      parts.push_back(ct.getRowsType());
    func::FuncOp f = beginEntry(perBatch() ? "encode_batch" : "encode_sparse",
                                {}, true, true, {}, parts, env);
    Value z = genDecl(encodeDecl, env);
    Location zl = z.getLoc();
    SmallVector<Value> outs = {
        saedl::CodesValuesOp::create(builder, zl, ct.getValuesType(), z),
        saedl::CodesIndicesOp::create(builder, zl, ct.getIndicesType(), z)};
    if (perBatch()) {
      outs.push_back(
          saedl::CodesRowsOp::create(builder, zl, ct.getRowsType(), z));
      for (unsigned i = 0; i < 3; ++i)
        f.setResultAttr(i, "sae.batch_scale",
                        builder.getI64IntegerAttr(ct.getK()));
    }
    func::ReturnOp::create(builder, f.getLoc(), outs);
  }
  { // decode_dense(z, params) -> xhat
    Env env;
    func::FuncOp f = beginEntry("decode_dense", {batchTensor(n)}, false, true,
                                {}, {batchTensor(d)}, env);
    env[encodeDecl] = f.getArgument(0);
    Value xhat = genDecl(model.decode, env);
    func::ReturnOp::create(builder, f.getLoc(), xhat);
  }
  if (sparse()) { // decode_sparse / decode_batch(parts, params) -> xhat
    Env env;
    saedl::CodesType ct = codesType();
    SmallVector<Type> parts = {ct.getValuesType(), ct.getIndicesType()};
    if (perBatch())
      parts.push_back(ct.getRowsType());
    func::FuncOp f = beginEntry(perBatch() ? "decode_batch" : "decode_sparse",
                                parts, false, true, {}, {batchTensor(d)}, env);
    Value rows;
    if (perBatch()) {
      rows = f.getArgument(2);
      for (unsigned i = 0; i < 3; ++i)
        f.setArgAttr(i, "sae.batch_scale",
                     builder.getI64IntegerAttr(ct.getK()));
    }
    env[encodeDecl] = saedl::MakeCodesOp::create(
        builder, f.getLoc(), ct, f.getArgument(0), f.getArgument(1), rows);
    Value xhat = genDecl(model.decode, env);
    func::ReturnOp::create(builder, f.getLoc(), xhat);
  }
  { // forward(inputs, params, seed) -> xhat, total loss, loss terms...
    Env env;
    SmallVector<Type> results = {batchTensor(d), f32()};
    results.append(model.lossTerms.size(), f32());
    func::FuncOp f = beginEntry("forward", {}, true, true,
                                {builder.getI64Type()}, results, env);
    noiseSeed = f.getArguments().back();
    noiseStream = 0;
    SmallVector<Value> outs = {genDecl(model.decode, env)};
    llvm::append_range(outs, genLosses(env));
    f.setResultAttr(1, "sae.loss", builder.getStringAttr("total"));
    for (auto [i, term] : llvm::enumerate(model.lossTerms))
      f.setResultAttr(2 + i, "sae.loss",
                      builder.getStringAttr(term->getName()));
    func::ReturnOp::create(builder, f.getLoc(), outs);
    noiseSeed = Value();
  }
  genGradient();
  genTrainStep();

  if (failed(verify(module))) {
    module.emitError("internal error: generated IR failed to verify");
    module.erase();
    return nullptr;
  }
  return module;
}

} // namespace

namespace sae {
OwningOpRef<ModuleOp> mlirGen(MLIRContext &ctx, const CheckedModel &model,
                              StringRef sourceName) {
  ctx.loadDialect<saedl::SaeDialect, func::FuncDialect, arith::ArithDialect,
                  math::MathDialect, scf::SCFDialect>();
  return MLIRGenImpl(ctx, model).generate(sourceName);
}
} // namespace sae
