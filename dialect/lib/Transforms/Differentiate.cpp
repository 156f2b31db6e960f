//===- Differentiate.cpp - Reverse-mode differentiation of sae ops --------===//
//
// Replaces every `sae.gradient %loss wrt %args` by the reverse sweep over the
// ops of its block: each op that lies between the arguments and the loss
// gets the vector-Jacobian product of its gradient rule (stated in the op's
// description in SaeOps.td).
//
// Gradients are kept as lists of contributions and summed only when a rule
// needs one value. A contribution to a dense [B, n] value may be sparse
// codes: the gradient coming back through a selection (topk, batch_topk, ...)
// has the selection's entries and nothing else. Rules that are linear in
// the incoming gradient and commute with the sparsity pattern (relu,
// bias_add/sub, linear, add, sub, scale) map each contribution on its own,
// so a k-sparse gradient reaches the encoder weights as `sae.outer` (work
// B·k·d) and no dense [B, n] gradient is ever formed.
//
//===----------------------------------------------------------------------===//
#include "sae/Dialect/Sae/IR/SaeOps.h"
#include "sae/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/JSON.h"

namespace mlir::sae {
#define GEN_PASS_DEF_DIFFERENTIATE
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;
using namespace mlir::sae;

namespace {

class Differentiator {
public:
  Differentiator(GradientOp op) : op(op), b(op) {}
  LogicalResult run();

private:
  // --- Building blocks -----------------------------------------------------
  Value scalar(Location l, double v) {
    return arith::ConstantOp::create(b, l, b.getF32FloatAttr(v));
  }
  Value neg(Location l, Value s) { return arith::NegFOp::create(b, l, s); }
  Value mulS(Location l, Value a, Value c) {
    return arith::MulFOp::create(b, l, a, c);
  }
  Value divS(Location l, Value a, Value c) {
    return arith::DivFOp::create(b, l, a, c);
  }
  /// Scales a dense tensor or the values of codes by the scalar `s`.
  Value scale(Location l, Value g, Value s) {
    if (isa<CodesType>(g.getType()))
      return mapValues(l, g, [&](Value v) {
        return ScaleOp::create(b, l, v.getType(), v, s).getResult();
      });
    return ScaleOp::create(b, l, g.getType(), g, s);
  }
  /// Codes with the entries of `c` and values fn(values of c).
  Value mapValues(Location l, Value c, function_ref<Value(Value)> fn) {
    auto type = cast<CodesType>(c.getType());
    Value vals = CodesValuesOp::create(b, l, type.getValuesType(), c);
    Value idx = CodesIndicesOp::create(b, l, type.getIndicesType(), c);
    Value rows = type.getPerBatch()
                     ? CodesRowsOp::create(b, l, type.getRowsType(), c)
                     : Value();
    return MakeCodesOp::create(b, l, type, fn(vals), idx, rows);
  }
  Value valuesOf(Location l, Value c) {
    auto type = cast<CodesType>(c.getType());
    return CodesValuesOp::create(b, l, type.getValuesType(), c);
  }
  Value densify(Location l, Value g, Type denseType) {
    if (isa<CodesType>(g.getType()))
      return DensifyOp::create(b, l, denseType, g);
    return g;
  }
  /// Σ over the rows of contributions `gs` (a bias's gradient). A product
  /// through a transposed weight (the input's gradient of `sae.linear`) is
  /// summed first: Σ_b (g_b · Wᵀ) = W · Σ_b g_b, one pass over W instead of
  /// a transpose of W and a [B, d] product; the products through the same
  /// weight (TopK's codes and AuxK's) share that pass, W · (Σ_b g_b + ...).
  Value columnSum(Location l, Type type, ArrayRef<Value> gs) {
    auto plus = [&](Value sum, Value v) -> Value {
      return sum ? AddOp::create(b, l, sum, v).getResult() : v;
    };
    Value sum;
    llvm::MapVector<Value, Value> byWeight; // W -> Σ_b g_b
    for (Value g : gs) {
      Value rows, weight;
      if (auto dec = g.getDefiningOp<DecodeOp>()) {
        rows = dec.getCodes();
        weight = dec.getWeight();
      } else if (auto lin = g.getDefiningOp<LinearOp>()) {
        rows = lin.getInput();
        weight = lin.getWeight();
      }
      auto t = weight ? weight.getDefiningOp<TransposeOp>() : TransposeOp();
      if (!t) {
        sum = plus(sum, ColumnSumOp::create(b, l, type, g));
        continue;
      }
      Value w = t.getInput();
      auto wt = cast<RankedTensorType>(w.getType());
      Value s = ColumnSumOp::create(
          b, l, RankedTensorType::get({wt.getDimSize(1)}, wt.getElementType()),
          rows);
      byWeight[w] = plus(byWeight.lookup(w), s);
    }
    for (auto [w, s] : byWeight)
      sum = plus(sum, MatVecOp::create(b, l, type, w, s));
    return sum;
  }
  /// H(x): 1 where x > 0.
  Value stepOf(Location l, Value x) { return StepOp::create(b, l, x); }

  // --- Contributions -------------------------------------------------------
  void accumulate(Value v, Value g) {
    if (g && active.contains(v))
      grads[v].push_back(g);
  }
  /// The sum of the contributions to `v` as one value of v's type (dense
  /// for tensors; codes with v's entries for codes); null when none.
  Value total(Location l, Value v) {
    auto it = grads.find(v);
    if (it == grads.end() || it->second.empty())
      return {};
    SmallVector<Value, 2> &list = it->second;
    if (isa<FloatType>(v.getType())) {
      Value sum = list[0];
      for (Value g : ArrayRef(list).drop_front())
        sum = arith::AddFOp::create(b, l, sum, g);
      return sum;
    }
    if (isa<CodesType>(v.getType())) {
      if (list.size() == 1)
        return list[0];
      Value sum = valuesOf(l, list[0]);
      for (Value g : ArrayRef(list).drop_front())
        sum = AddOp::create(b, l, sum, valuesOf(l, g));
      return mapValues(l, list[0], [&](Value) { return sum; });
    }
    Value sum;
    for (Value g : mergeOuters(l, list)) {
      Value d = densify(l, g, v.getType());
      sum = sum ? AddOp::create(b, l, sum, d).getResult() : d;
    }
    // The merged contributions may be erased: keep only their sum.
    list.assign({sum});
    return sum;
  }
  /// Sparse outer products among the contributions `list` to one dense
  /// value, merged so that the sum forms one dense matrix rather than one
  /// per term plus their sum: products with the same dense operand become
  /// one product of the concatenated codes (per-batch codes, which cannot
  /// be concatenated with rows, accumulate into that product instead), and
  /// the remaining rows-layout products accumulate into each other
  /// (`sae.outer ... into`). Returns the contributions left to add.
  SmallVector<Value> mergeOuters(Location l, ArrayRef<Value> list) {
    SmallVector<Value> rest;
    SmallVector<OuterOp> outers, perBatch;
    for (Value g : list) {
      auto o = g.getDefiningOp<OuterOp>();
      if (!o || !g.use_empty() || o.getInit()) {
        rest.push_back(g);
        continue;
      }
      if (cast<CodesType>(o.getCodes().getType()).getPerBatch())
        perBatch.push_back(o);
      else
        outers.push_back(o);
    }
    // Same dense operand and layout: concatenate the codes' entries.
    SmallVector<OuterOp> merged;
    for (OuterOp o : outers) {
      auto same = llvm::find_if(merged, [&](OuterOp m) {
        return m.getRhs() == o.getRhs() &&
               m.getTransposed() == o.getTransposed();
      });
      if (same == merged.end()) {
        merged.push_back(o);
        continue;
      }
      auto outer = OuterOp::create(
          b, l, o.getType(), concatCodes(l, same->getCodes(), o.getCodes()),
          o.getRhs());
      outer.setTransposed(o.getTransposed());
      same->erase();
      o.erase();
      *same = outer;
    }
    // Transposed per-batch products (BatchTopK's encoder gradient beside
    // AuxK's): into the product with the same operand. The rows-layout
    // ones join the chain below.
    for (OuterOp o : perBatch) {
      auto same = llvm::find_if(merged, [&](OuterOp m) {
        return o.getTransposed() && m.getTransposed() &&
               m.getRhs() == o.getRhs();
      });
      if (same == merged.end()) {
        merged.push_back(o);
        continue;
      }
      auto into = OuterOp::create(b, l, o.getType(), o.getCodes(), o.getRhs(),
                                  same->getResult(), /*transposed=*/true);
      o.erase();
      *same = into;
    }
    // Rows layout, different dense operands: accumulate in one matrix.
    OuterOp chain;
    for (OuterOp o : merged) {
      if (o.getTransposed()) {
        rest.push_back(o);
        continue;
      }
      if (chain) {
        auto next = OuterOp::create(b, l, o.getType(), o.getCodes(), o.getRhs(),
                                    chain.getResult(), /*transposed=*/false);
        o.erase();
        o = next;
      }
      chain = o;
    }
    if (chain)
      rest.push_back(chain);
    return rest;
  }
  /// Rows-layout codes with the entries of `x` then those of `y` in each
  /// row (k_x + k_y per row; a latent may appear twice, its products add).
  Value concatCodes(Location l, Value x, Value y) {
    auto tx = cast<CodesType>(x.getType()), ty = cast<CodesType>(y.getType());
    auto type =
        CodesType::get(b.getContext(), tx.getBatch(), tx.getNumLatents(),
                       tx.getElementType(), tx.getK() + ty.getK());
    auto indicesOf = [&](Value c) -> Value {
      return CodesIndicesOp::create(
          b, l, cast<CodesType>(c.getType()).getIndicesType(), c);
    };
    auto concat = [&](Value a, Value c, RankedTensorType t) -> Value {
      return tensor::ConcatOp::create(b, l, t, /*dim=*/1, ValueRange{a, c});
    };
    return MakeCodesOp::create(
        b, l, type,
        concat(valuesOf(l, x), valuesOf(l, y), type.getValuesType()),
        concat(indicesOf(x), indicesOf(y), type.getIndicesType()), Value());
  }
  /// A copy: accumulating while going through them may grow `grads`,
  /// which moves its lists.
  SmallVector<Value, 2> contributions(Value v) {
    auto it = grads.find(v);
    return it == grads.end() ? SmallVector<Value, 2>() : it->second;
  }
  /// The contributions with the dense ones summed into one (after the
  /// codes, which stay apart: sparse): a rule that maps each contribution
  /// on its own then does its dense work once (ReLU+L1's two dense
  /// gradients of the codes, the penalty's and the reconstruction's, cost
  /// one product with the encoder's input instead of two). With
  /// `intoDense`, codes join a dense sum when there is one: a dense
  /// product is made anyway, and the codes' own products would each form
  /// a dense matrix to add to it (AuxK's beside ReLU+L1's gradient).
  SmallVector<Value, 2> denseSummed(Location l, Value v,
                                    bool intoDense = false) {
    SmallVector<Value, 2> codes;
    Value dense;
    for (Value g : contributions(v)) {
      if (isa<CodesType>(g.getType()))
        codes.push_back(g);
      else
        dense = dense ? AddOp::create(b, l, dense, g).getResult() : g;
    }
    if (!dense)
      return codes;
    if (intoDense) {
      for (Value g : codes)
        dense = AddOp::create(b, l, dense, densify(l, g, v.getType()));
      codes.clear();
    }
    codes.push_back(dense);
    return codes;
  }

  LogicalResult backward(Operation *o);
  LogicalResult unsupported(Operation *o, StringRef why = "") {
    llvm::raw_string_ostream os(failureText);
    os << "'" << o->getName() << "' has no gradient rule yet, but the loss "
       << "depends on trainable parameters through it";
    if (!why.empty())
      os << " (" << why << ")";
    failureOp = o;
    return mlir::failure();
  }

public:
  /// Why run() failed, and the op at fault.
  std::string failureText;
  Operation *failureOp = nullptr;

private:

  GradientOp op;
  OpBuilder b;
  llvm::DenseSet<Value> active;
  llvm::DenseMap<Value, SmallVector<Value, 2>> grads;
};

LogicalResult Differentiator::run() {
  Block *block = op->getBlock();
  for (Value w : op.getWrt())
    active.insert(w);
  // Forward: the values that depend on an argument of the gradient.
  SmallVector<Operation *> ops;
  for (Operation &o : *block) {
    if (&o == op.getOperation())
      break;
    if (llvm::any_of(o.getOperands(),
                     [&](Value v) { return active.contains(v); })) {
      for (Value r : o.getResults())
        active.insert(r);
      ops.push_back(&o);
    }
  }
  // Backward: seed ∂loss/∂loss = 1 and sweep in reverse program order.
  Location loc = op.getLoc();
  if (!active.contains(op.getLoss()))
    ops.clear();
  else
    grads[op.getLoss()].push_back(scalar(loc, 1.0));
  for (Operation *o : llvm::reverse(ops)) {
    if (llvm::none_of(o->getResults(),
                      [&](Value r) { return !contributions(r).empty(); }))
      continue;
    b.setInsertionPoint(op);
    if (failed(backward(o)))
      return failure();
  }
  b.setInsertionPoint(op);
  SmallVector<Value> results;
  for (Value w : op.getWrt()) {
    Value g = total(loc, w);
    if (!g)
      g = FillOp::create(b, loc, w.getType(), b.getF64FloatAttr(0.0));
    results.push_back(g);
  }
  op->replaceAllUsesWith(results);
  op->erase();
  return success();
}

LogicalResult Differentiator::backward(Operation *o) {
  Location l = o->getLoc();
  // Scalar arithmetic (loss terms and their weights).
  if (isa<arith::AddFOp, arith::SubFOp, arith::MulFOp, arith::DivFOp,
          arith::NegFOp>(o)) {
    Value ds = total(l, o->getResult(0));
    Value x = o->getOperand(0);
    if (isa<arith::NegFOp>(o)) {
      accumulate(x, neg(l, ds));
      return success();
    }
    Value y = o->getOperand(1);
    if (isa<arith::AddFOp>(o)) {
      accumulate(x, ds);
      accumulate(y, ds);
    } else if (isa<arith::SubFOp>(o)) {
      accumulate(x, ds);
      accumulate(y, neg(l, ds));
    } else if (isa<arith::MulFOp>(o)) {
      accumulate(x, mulS(l, ds, y));
      accumulate(y, mulS(l, ds, x));
    } else {
      accumulate(x, divS(l, ds, y));
      accumulate(y, neg(l, divS(l, mulS(l, ds, o->getResult(0)), y)));
    }
    return success();
  }

  return llvm::TypeSwitch<Operation *, LogicalResult>(o)
      // --- Rules that map each contribution on its own -------------------
      .Case([&](LinearOp lin) {
        Value x = lin.getInput(), w = lin.getWeight();
        auto wt = cast<RankedTensorType>(w.getType());
        auto wT = RankedTensorType::get({wt.getDimSize(1), wt.getDimSize(0)},
                                        wt.getElementType());
        Value wTransposed;
        for (Value g : denseSummed(l, lin, /*intoDense=*/true)) {
          if (active.contains(x)) {
            if (!wTransposed)
              wTransposed = TransposeOp::create(b, l, wT, w);
            if (isa<CodesType>(g.getType()))
              accumulate(x, DecodeOp::create(b, l, x.getType(), g, wTransposed));
            else
              accumulate(x, LinearOp::create(b, l, x.getType(), g, wTransposed));
          }
          if (active.contains(w)) {
            if (isa<CodesType>(g.getType())) {
              auto outer = OuterOp::create(b, l, wt, g, x);
              outer.setTransposed(true);
              accumulate(w, outer);
            } else {
              auto xt = cast<RankedTensorType>(x.getType());
              Value xT = TransposeOp::create(
                  b, l,
                  RankedTensorType::get({xt.getDimSize(1), xt.getDimSize(0)},
                                        xt.getElementType()),
                  x);
              accumulate(w, LinearOp::create(b, l, wt, xT, g));
            }
          }
        }
        return success();
      })
      .Case<BiasAddOp, BiasSubOp>([&](auto bias) {
        bool sub = isa<BiasSubOp>(bias.getOperation());
        SmallVector<Value, 2> gs = contributions(bias.getResult());
        for (Value g : gs)
          accumulate(bias.getInput(), g);
        if (!gs.empty() && active.contains(bias.getBias())) {
          Value s = columnSum(l, bias.getBias().getType(), gs);
          accumulate(bias.getBias(), sub ? scale(l, s, scalar(l, -1.0)) : s);
        }
        return success();
      })
      .Case<AddOp, SubOp>([&](auto add) {
        bool sub = isa<SubOp>(add.getOperation());
        for (Value g : contributions(add.getResult())) {
          accumulate(add.getLhs(), g);
          accumulate(add.getRhs(), sub ? scale(l, g, scalar(l, -1.0)) : g);
        }
        return success();
      })
      .Case([&](ScaleOp s) {
        if (active.contains(s.getScale()))
          return unsupported(o, "a scale factor that depends on parameters");
        for (Value g : contributions(s))
          accumulate(s.getInput(), scale(l, g, s.getScale()));
        return success();
      })
      .Case([&](ReluOp r) {
        // The mask is step(relu(x)), equal to step(x) (NaN included): the
        // input is then no longer needed, and a sparse gradient's mask is
        // the selection's own values when relu feeds a top-k (the gather
        // folds).
        for (Value g : denseSummed(l, r)) {
          if (isa<CodesType>(g.getType())) {
            Value at = GatherOp::create(b, l, g, r.getResult());
            Value mask = stepOf(l, valuesOf(l, at));
            accumulate(r.getInput(), mapValues(l, g, [&](Value v) {
                         return MulOp::create(b, l, v, mask).getResult();
                       }));
          } else {
            accumulate(r.getInput(),
                       MulOp::create(b, l, g, stepOf(l, r.getResult())));
          }
        }
        return success();
      })
      .Case([&](GaussianNoiseOp n) {
        for (Value g : contributions(n))
          accumulate(n.getInput(), g);
        return success();
      })
      .Case([&](ShiftOp sh) {
        if (active.contains(sh.getShift()))
          return unsupported(o, "a shift that depends on parameters");
        for (Value g : contributions(sh))
          accumulate(sh.getInput(), g);
        return success();
      })
      .Case([&](PrefixOp p) {
        for (Value g : contributions(p)) {
          if (isa<CodesType>(g.getType()) != isa<CodesType>(p.getType()))
            g = densify(l, g, p.getType());
          accumulate(p.getInput(), PrefixOp::create(b, l, g.getType(), g,
                                                    p.getWidthAttr()));
        }
        return success();
      })
      .Case<StopGradOp, StepOp>([&](auto) { return success(); })
      // --- Selections: the gradient of the kept entries ------------------
      .Case<TopKOp, BatchTopKOp, FeatureChoiceOp, GroupMaxOp>([&](auto sel) {
        Value g = total(l, sel.getResult());
        accumulate(sel.getInput(), g);
        return success();
      })
      .Case([&](DecodeOp d) {
        Value dy = total(l, d.getResult());
        if (active.contains(d.getCodes()))
          accumulate(d.getCodes(),
                     SddmmOp::create(b, l, d.getCodes(), dy, d.getWeight()));
        if (active.contains(d.getWeight()))
          accumulate(d.getWeight(), OuterOp::create(b, l, d.getWeight().getType(),
                                                    d.getCodes(), dy));
        return success();
      })
      .Case([&](DensifyOp d) {
        Value dy = total(l, d.getResult());
        accumulate(d.getCodes(), GatherOp::create(b, l, d.getCodes(), dy));
        return success();
      })
      // --- Dense elementwise rules ----------------------------------------
      .Case([&](MulOp m) {
        Value dy = total(l, m.getResult());
        accumulate(m.getLhs(), MulOp::create(b, l, dy, m.getRhs()));
        accumulate(m.getRhs(), MulOp::create(b, l, dy, m.getLhs()));
        return success();
      })
      .Case([&](DivOp dv) {
        Value dy = total(l, dv.getResult());
        accumulate(dv.getLhs(), DivOp::create(b, l, dy, dv.getRhs()));
        if (active.contains(dv.getRhs())) {
          Value t = DivOp::create(b, l, MulOp::create(b, l, dy, dv.getResult()),
                                  dv.getRhs());
          accumulate(dv.getRhs(), scale(l, t, scalar(l, -1.0)));
        }
        return success();
      })
      .Case<BiasMulOp, BiasDivOp>([&](auto bm) {
        bool div = isa<BiasDivOp>(bm.getOperation());
        Value dy = total(l, bm.getResult());
        Type t = bm.getInput().getType();
        if (div)
          accumulate(bm.getInput(), BiasDivOp::create(b, l, t, dy, bm.getBias()));
        else
          accumulate(bm.getInput(), BiasMulOp::create(b, l, t, dy, bm.getBias()));
        if (active.contains(bm.getBias())) {
          // mul: Σ_b dy·x; div: −Σ_b dy·y / bias.
          Value prod = MulOp::create(b, l, dy,
                                     div ? bm.getResult() : bm.getInput());
          Value s = ColumnSumOp::create(b, l, bm.getBias().getType(), prod);
          if (div)
            s = scale(l, DivOp::create(b, l, s, bm.getBias()), scalar(l, -1.0));
          accumulate(bm.getBias(), s);
        }
        return success();
      })
      .Case([&](AbsOp a) {
        Value dy = total(l, a.getResult());
        Value x = a.getInput();
        Value sign = SubOp::create(
            b, l, stepOf(l, x),
            stepOf(l, ScaleOp::create(b, l, x.getType(), x, scalar(l, -1.0))));
        accumulate(x, MulOp::create(b, l, dy, sign));
        return success();
      })
      .Case([&](ExpOp e) {
        Value dy = total(l, e.getResult());
        accumulate(e.getInput(), MulOp::create(b, l, dy, e.getResult()));
        return success();
      })
      .Case([&](TanhOp t) {
        // dy·(1 − y²) = dy − dy·y·y
        Value dy = total(l, t.getResult());
        Value y = t.getResult();
        Value dyy = MulOp::create(b, l, MulOp::create(b, l, dy, y), y);
        accumulate(t.getInput(), SubOp::create(b, l, dy, dyy));
        return success();
      })
      .Case([&](TransposeOp t) {
        Value dy = total(l, t.getResult());
        accumulate(t.getInput(),
                   TransposeOp::create(b, l, t.getInput().getType(), dy));
        return success();
      })
      .Case([&](JumpReluOp j) {
        Value dy = total(l, j.getResult());
        auto grad = JumpReluGradOp::create(
            b, l, j.getInput().getType(), j.getThreshold().getType(), dy,
            j.getInput(), j.getThreshold(), j.getBandwidthAttr());
        accumulate(j.getInput(), grad.getInputGrad());
        accumulate(j.getThreshold(), grad.getThresholdGrad());
        return success();
      })
      .Case([&](TopAfaOp t) {
        // Kept entries pass the gradient; the rest (zeros) do not.
        Value dy = total(l, t.getResult());
        Value kept = stepOf(l, AbsOp::create(b, l, t.getResult()));
        accumulate(t.getInput(), MulOp::create(b, l, dy, kept));
        return success();
      })
      // --- Losses -----------------------------------------------------------
      .Case<MseOp, FvuOp>([&](auto loss) {
        Value ds = total(l, loss.getResult());
        if (active.contains(loss.getTarget()))
          return unsupported(o, "the target depends on parameters");
        Value x = loss.getInput(), t = loss.getTarget();
        Value denom;
        if (isa<FvuOp>(loss.getOperation())) {
          auto vt = RankedTensorType::get(
              {cast<RankedTensorType>(t.getType()).getDimSize(1)},
              cast<RankedTensorType>(t.getType()).getElementType());
          Value mean = ColumnMeanOp::create(b, l, vt, t);
          Value centred = BiasSubOp::create(b, l, t.getType(), t, mean);
          auto sum = SumOp::create(b, l, b.getF32Type(), centred);
          sum.setSquares(true);
          denom = sum;
        } else {
          denom = NumRowsOp::create(b, l, b.getF32Type(), x);
          if (cast<MseOp>(loss.getOperation()).getMeanOverColumns())
            denom = mulS(l, denom,
                         scalar(l, double(cast<RankedTensorType>(x.getType())
                                              .getDimSize(1))));
        }
        Value s = divS(l, mulS(l, scalar(l, 2.0), ds), denom);
        accumulate(x, scale(l, SubOp::create(b, l, x, t), s));
        return success();
      })
      .Case([&](L1Op l1) {
        Value ds = total(l, l1.getResult());
        Value z = l1.getCodes(), w = l1.getDecoder();
        Value s = divS(l, ds, NumRowsOp::create(b, l, b.getF32Type(), z));
        Value norms;
        if (w)
          norms = RowNormsOp::create(
              b, l,
              RankedTensorType::get(
                  {cast<RankedTensorType>(w.getType()).getDimSize(0)},
                  b.getF32Type()),
              w);
        auto signOf = [&](Value v) {
          return SubOp::create(
              b, l, stepOf(l, v),
              stepOf(l, ScaleOp::create(b, l, v.getType(), v, scalar(l, -1.0))));
        };
        if (active.contains(z)) {
          if (isa<CodesType>(z.getType())) {
            Value nAt = norms ? valuesOf(l, GatherOp::create(b, l, z, norms))
                              : Value();
            accumulate(z, mapValues(l, z, [&](Value v) {
                         Value g = ScaleOp::create(b, l, v.getType(), signOf(v), s);
                         return nAt ? MulOp::create(b, l, g, nAt).getResult() : g;
                       }));
          } else {
            Value g = ScaleOp::create(b, l, z.getType(), signOf(z), s);
            if (norms)
              g = BiasMulOp::create(b, l, z.getType(), g, norms);
            accumulate(z, g);
          }
        }
        if (w && active.contains(w)) {
          // ∂/∂W_i = s · Σ_b |z_bi| · W_i / n_i
          Value absZ =
              isa<CodesType>(z.getType())
                  ? mapValues(l, z,
                              [&](Value v) {
                                return AbsOp::create(b, l, v).getResult();
                              })
                  : AbsOp::create(b, l, z).getResult();
          Value colAbs = ColumnSumOp::create(b, l, norms.getType(), absZ);
          Value perRow = ScaleOp::create(b, l, norms.getType(),
                                         DivOp::create(b, l, colAbs, norms), s);
          accumulate(w, ScaleRowsOp::create(b, l, w, perRow));
        }
        return success();
      })
      .Case([&](L0Op l0) {
        Value ds = total(l, l0.getResult());
        accumulate(l0.getThreshold(),
                   L0GradOp::create(b, l, l0.getThreshold().getType(),
                                    l0.getInput(), l0.getThreshold(), ds,
                                    l0.getBandwidthAttr()));
        return success();
      })
      .Case([&](KlStdNormalOp kl) {
        // mean_b ½ Σ μ²  →  μ / B
        Value ds = total(l, kl.getResult());
        Value mu = kl.getInput();
        Value s = divS(l, ds, NumRowsOp::create(b, l, b.getF32Type(), mu));
        accumulate(mu, ScaleOp::create(b, l, mu.getType(), mu, s));
        return success();
      })
      .Case([&](AuxKOp aux) {
        // Recomputes the selection (dead_mask, dead_topk, decode: the ops
        // AuxK lowers to, so CSE shares them with the forward pass) and
        // back-propagates  scale · Σ‖recon − e‖² / norm.
        if (aux.getTarget() && active.contains(aux.getTarget()))
          return unsupported(o, "the normalising target depends on parameters");
        Value ds = total(l, aux.getResult());
        Value in = aux.getInput(), w = aux.getDecoder(), e = aux.getResidual();
        auto inType = cast<RankedTensorType>(in.getType());
        Value mask = DeadMaskOp::create(
            b, l, aux.getSinceFired().getType(), aux.getSinceFired(),
            aux.getDeadAfterAttr(), aux.getZipfAlphaAttr(), aux.getZipfKAttr());
        auto codesType =
            CodesType::get(b.getContext(), inType.getDimSize(0),
                           inType.getDimSize(1), inType.getElementType(),
                           aux.getKAux());
        Value kept = DeadTopKOp::create(b, l, codesType, in, mask);
        Value recon = DecodeOp::create(b, l, e.getType(), kept, w);
        if (aux.getBias())
          recon = BiasAddOp::create(b, l, e.getType(), recon, aux.getBias());
        Value v = aux.getTarget() ? aux.getTarget() : e;
        auto vecType = RankedTensorType::get(
            {cast<RankedTensorType>(v.getType()).getDimSize(1)},
            b.getF32Type());
        Value centred = BiasSubOp::create(b, l, v.getType(), v,
                                          ColumnMeanOp::create(b, l, vecType, v));
        auto norm = SumOp::create(b, l, b.getF32Type(), centred);
        norm.setSquares(true);
        Value nDead = SumOp::create(b, l, b.getF32Type(), mask);
        Value scaleF = arith::MinimumFOp::create(
            b, l, divS(l, nDead, scalar(l, double(aux.getKAux()))),
            scalar(l, 1.0));
        Value coef =
            divS(l, mulS(l, mulS(l, scalar(l, 2.0), ds), scaleF), norm);
        Value dRecon = scale(l, SubOp::create(b, l, recon, e), coef);
        if (active.contains(in)) {
          Value dv = SddmmOp::create(b, l, kept, dRecon, w);
          // Only dead latents' entries were selected from the input.
          Value deadAt = valuesOf(l, GatherOp::create(b, l, kept, mask));
          accumulate(in, mapValues(l, dv, [&](Value vals) {
                       return MulOp::create(b, l, vals, deadAt).getResult();
                     }));
        }
        if (active.contains(w))
          accumulate(w, OuterOp::create(b, l, w.getType(), kept, dRecon));
        if (aux.getBias() && active.contains(aux.getBias()))
          accumulate(aux.getBias(),
                     ColumnSumOp::create(b, l, aux.getBias().getType(), dRecon));
        if (active.contains(e))
          accumulate(e, scale(l, dRecon, scalar(l, -1.0)));
        return success();
      })
      .Case([&](MatryoshkaOp mat) {
        // Σ_w mean_b ‖prefix_w(z)·W + b − x‖²: per width, the rules of
        // decode (or linear), bias_add and mse on the prefix.
        if (active.contains(mat.getTarget()))
          return unsupported(o, "the target depends on parameters");
        Value ds = total(l, mat.getResult());
        Value z = mat.getCodes(), w = mat.getDecoder(), bias = mat.getBias();
        Value x = mat.getTarget();
        bool sparse = isa<CodesType>(z.getType());
        Value coef = divS(l, mulS(l, scalar(l, 2.0), ds),
                          NumRowsOp::create(b, l, b.getF32Type(), x));
        auto wt = cast<RankedTensorType>(w.getType());
        Value wT;
        for (int64_t width : mat.getWidths()) {
          Value zw = PrefixOp::create(b, l, z.getType(), z,
                                      b.getI64IntegerAttr(width));
          Value recon =
              sparse ? DecodeOp::create(b, l, x.getType(), zw, w).getResult()
                     : LinearOp::create(b, l, x.getType(), zw, w).getResult();
          recon = BiasAddOp::create(b, l, x.getType(), recon, bias);
          Value dR = scale(l, SubOp::create(b, l, recon, x), coef);
          if (active.contains(z)) {
            Value dz;
            if (sparse) {
              dz = SddmmOp::create(b, l, z, dR, w);
            } else {
              if (!wT)
                wT = TransposeOp::create(
                    b, l,
                    RankedTensorType::get({wt.getDimSize(1), wt.getDimSize(0)},
                                          wt.getElementType()),
                    w);
              dz = LinearOp::create(b, l, z.getType(), dR, wT);
            }
            accumulate(z, PrefixOp::create(b, l, z.getType(), dz,
                                           b.getI64IntegerAttr(width)));
          }
          if (active.contains(w)) {
            if (sparse) {
              accumulate(w, OuterOp::create(b, l, wt, zw, dR));
            } else {
              auto zt = cast<RankedTensorType>(z.getType());
              Value zT = TransposeOp::create(
                  b, l,
                  RankedTensorType::get({zt.getDimSize(1), zt.getDimSize(0)},
                                        zt.getElementType()),
                  zw);
              accumulate(w, LinearOp::create(b, l, wt, zT, dR));
            }
          }
          if (active.contains(bias))
            accumulate(bias, ColumnSumOp::create(b, l, bias.getType(), dR));
        }
        return success();
      })
      .Case([&](TanhPenaltyOp tp) {
        // mean_b Σ tanh(c·f·n):  ∂/∂f = c·n·(1 − t²)/B,
        // ∂/∂W_i = Σ_b c·f·(1 − t²)/B · W_i / n_i.
        Value ds = total(l, tp.getResult());
        Value z = tp.getCodes(), w = tp.getDecoder();
        if (!isa<CodesType>(z.getType()))
          return unsupported(o, "dense codes");
        double c = tp.getScale().convertToDouble();
        Value s = divS(l, ds, NumRowsOp::create(b, l, b.getF32Type(), z));
        auto wt = cast<RankedTensorType>(w.getType());
        Value norms = RowNormsOp::create(
            b, l, RankedTensorType::get({wt.getDimSize(0)}, b.getF32Type()), w);
        Value nAt = valuesOf(l, GatherOp::create(b, l, z, norms));
        Value vals = valuesOf(l, z);
        Value arg = ScaleOp::create(b, l, vals.getType(),
                                    MulOp::create(b, l, vals, nAt),
                                    scalar(l, c));
        Value t = TanhOp::create(b, l, arg);
        // c·s·(1 − t²) = c·s − c·s·t²
        Value cs = mulS(l, s, scalar(l, c));
        Value factor = ShiftOp::create(
            b, l, vals.getType(),
            ScaleOp::create(b, l, vals.getType(), MulOp::create(b, l, t, t),
                            neg(l, cs)),
            cs);
        if (active.contains(z))
          accumulate(z, mapValues(l, z, [&](Value) {
                       return MulOp::create(b, l, factor, nAt).getResult();
                     }));
        if (active.contains(w)) {
          Value perEntry = mapValues(l, z, [&](Value v) {
            return MulOp::create(b, l, factor, v).getResult();
          });
          Value col = ColumnSumOp::create(b, l, norms.getType(), perEntry);
          accumulate(w, ScaleRowsOp::create(b, l, w,
                                            DivOp::create(b, l, col, norms)));
        }
        return success();
      })
      .Case([&](NormalizeRowsOp nr) {
        // y = W / ‖W‖ per row:  ∂W_i = (dy_i − ⟨dy_i, y_i⟩ y_i) / ‖W_i‖
        // (zero rows, which stay zero, pass nothing).
        Value dy = total(l, nr.getResult());
        Value w = nr.getInput();
        auto wt = cast<RankedTensorType>(w.getType());
        auto vt = RankedTensorType::get({wt.getDimSize(0)}, wt.getElementType());
        Value norms = RowNormsOp::create(b, l, vt, w);
        Value inv = DivOp::create(b, l, stepOf(l, norms),
                                  ShiftOp::create(b, l, vt, norms, scalar(l, 1e-30)));
        Value proj = ProjectRowsOp::create(b, l, dy, nr.getResult());
        accumulate(w, ScaleRowsOp::create(b, l, proj, inv));
        return success();
      })
      .Case([&](MatchingPursuitOp mp) {
        Value g = total(l, mp.getResult());
        auto grad = MatchingPursuitGradOp::create(
            b, l, mp.getInput().getType(), mp.getDecoder().getType(),
            mp.getInput(), mp.getDecoder(), mp.getResult(), g,
            mp.getNonnegAttr());
        accumulate(mp.getInput(), grad.getInputGrad());
        accumulate(mp.getDecoder(), grad.getDecoderGrad());
        return success();
      })
      .Case([&](AfaOp afa) {
        // mean_b (‖f_b‖ − ‖x_b‖)²:  ∂/∂f_b = 2/B · (‖f_b‖ − ‖x_b‖)/‖f_b‖ · f_b
        // (a zero row gets zero: its norm is shifted by 1e-20).
        Value ds = total(l, afa.getResult());
        Value z = afa.getCodes(), x = afa.getTarget();
        if (active.contains(x))
          return unsupported(o, "the target depends on parameters");
        auto codes = dyn_cast<CodesType>(z.getType());
        if (codes && codes.getPerBatch())
          return unsupported(o, "batch-layout codes");
        Value f = codes ? valuesOf(l, z) : z;
        auto rowsOf = [&](Value m) {
          auto t = cast<RankedTensorType>(m.getType());
          return RowNormsOp::create(
              b, l, RankedTensorType::get({t.getDimSize(0)}, t.getElementType()),
              m);
        };
        Value nf = rowsOf(f), nx = rowsOf(x);
        Value ratio = DivOp::create(b, l, SubOp::create(b, l, nf, nx),
                                    ShiftOp::create(b, l, nf.getType(), nf,
                                                    scalar(l, 1e-20)));
        Value s = divS(l, mulS(l, scalar(l, 2.0), ds),
                       NumRowsOp::create(b, l, b.getF32Type(), x));
        Value g = ScaleOp::create(b, l, f.getType(),
                                  ScaleRowsOp::create(b, l, f, ratio), s);
        accumulate(z, codes ? mapValues(l, z, [&](Value) { return g; }) : g);
        return success();
      })
      .Default([&](Operation *other) { return unsupported(other); });
}

struct DifferentiatePass
    : public mlir::sae::impl::DifferentiateBase<DifferentiatePass> {
  using DifferentiateBase::DifferentiateBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<GradientOp> ops;
    module->walk([&](GradientOp g) { ops.push_back(g); });
    std::string reason;
    SmallVector<func::FuncOp> dropped;
    for (GradientOp g : ops) {
      auto func = g->getParentOfType<func::FuncOp>();
      if (llvm::is_contained(dropped, func))
        continue;
      Differentiator d(g);
      if (succeeded(d.run()))
        continue;
      if (!dropUntrainable) {
        d.failureOp->emitError() << d.failureText;
        return signalPassFailure();
      }
      if (reason.empty()) {
        reason = d.failureText;
        d.failureOp->emitWarning()
            << "the model cannot be trained: " << d.failureText
            << "; the library gets no training entry points";
      }
      dropped.push_back(func);
    }
    if (dropped.empty())
      return;
    auto describe = module->getAttrOfType<StringAttr>("sae.describe");
    llvm::Expected<llvm::json::Value> json =
        describe ? llvm::json::parse(describe.getValue())
                 : llvm::Expected<llvm::json::Value>(llvm::json::Object());
    if (!json) {
      llvm::consumeError(json.takeError());
      module.emitError("the sae.describe attribute is not valid JSON");
      return signalPassFailure();
    }
    llvm::json::Object &root = *json->getAsObject();
    for (func::FuncOp f : dropped) {
      auto entry = f->getAttrOfType<StringAttr>("sae.entry");
      if (llvm::json::Array *entries = root.getArray("entry_points")) {
        llvm::json::Array kept;
        for (llvm::json::Value &v : *entries) {
          std::optional<StringRef> s = v.getAsString();
          if (!entry || !s || *s != ("sae_" + entry.getValue()).str())
            kept.push_back(std::move(v));
        }
        *entries = std::move(kept);
      }
      f.erase();
    }
    root["untrainable"] = reason;
    std::string text;
    llvm::raw_string_ostream os(text);
    os << llvm::json::Value(std::move(root));
    module->setAttr("sae.describe", StringAttr::get(module.getContext(), text));
  }
};

} // namespace
