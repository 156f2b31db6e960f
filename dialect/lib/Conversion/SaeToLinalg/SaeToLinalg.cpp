//===- SaeToLinalg.cpp - Lower sae to linalg, scf and memref --------------===//
//
// Dense sae ops become linalg.generic ops on tensors. Sparse codes are never
// materialised densely: sae.topk writes a [B, k] values and indices pair with
// a per-row insertion loop, and sae.decode gathers k decoder rows per row.
//
//===----------------------------------------------------------------------===//
#include "sae/Conversion/SaeToLinalg/SaeToLinalg.h"
#include "sae/Dialect/Sae/IR/SaeOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::sae {
#define GEN_PASS_DEF_CONVERTSAETOLINALG
#include "sae/Conversion/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;
using namespace mlir::sae;

namespace {

using BodyFn = function_ref<Value(OpBuilder &, Location, ValueRange)>;

/// The dynamic sizes of `type`, read from the same dimensions of `like`.
SmallVector<Value> dynamicSizes(OpBuilder &b, Location loc, ShapedType type,
                                Value like) {
  SmallVector<Value> sizes;
  for (int64_t i = 0, e = type.getRank(); i < e; ++i)
    if (type.isDynamicDim(i))
      sizes.push_back(tensor::DimOp::create(b, loc, like, i));
  return sizes;
}

/// A tensor of `type` filled with `value` (dynamic sizes from `like`).
Value filledTensor(OpBuilder &b, Location loc, RankedTensorType type,
                   Value like, double value) {
  Value empty = tensor::EmptyOp::create(b, loc, type,
                                        dynamicSizes(b, loc, type, like));
  Value cst = arith::ConstantOp::create(
      b, loc, b.getFloatAttr(type.getElementType(), value));
  return linalg::FillOp::create(b, loc, cst, empty).getResult(0);
}

/// A linalg.generic that writes `init` with `body(ins..., out)`.
Value buildGeneric(OpBuilder &b, Location loc, ValueRange ins, Value init,
                   ArrayRef<AffineMap> maps,
                   ArrayRef<utils::IteratorType> iterators, BodyFn body) {
  auto generic = linalg::GenericOp::create(
      b, loc, init.getType(), ins, init, maps, iterators,
      [&](OpBuilder &nb, Location nloc, ValueRange args) {
        linalg::YieldOp::create(nb, nloc, body(nb, nloc, args));
      });
  return generic.getResult(0);
}

/// An all-parallel elementwise generic producing a tensor like `resultLike`.
Value buildElementwise(OpBuilder &b, Location loc, Value resultLike,
                       ValueRange ins, ArrayRef<AffineMap> inMaps,
                       BodyFn body) {
  auto type = cast<RankedTensorType>(resultLike.getType());
  Value init = tensor::EmptyOp::create(
      b, loc, type, dynamicSizes(b, loc, type, resultLike));
  SmallVector<AffineMap> maps(inMaps);
  maps.push_back(b.getMultiDimIdentityMap(type.getRank()));
  SmallVector<utils::IteratorType> iterators(type.getRank(),
                                             utils::IteratorType::parallel);
  return buildGeneric(b, loc, ins, init, maps, iterators, body);
}

/// The number of rows of a batch as a floating-point value of type `ty`.
Value rowCount(OpBuilder &b, Location loc, Value batch, Type ty) {
  Value rows = tensor::DimOp::create(b, loc, batch, 0);
  Value i64 = arith::IndexCastOp::create(b, loc, b.getI64Type(), rows);
  return arith::SIToFPOp::create(b, loc, ty, i64);
}

/// Sums `term(args)` over every element of the iteration space into a rank-0
/// f64 accumulator and returns the scalar.
Value sumToScalar(OpBuilder &b, Location loc, ValueRange ins,
                  ArrayRef<AffineMap> inMaps, unsigned numLoops,
                  function_ref<Value(OpBuilder &, Location, ValueRange)> term) {
  Type f64 = b.getF64Type();
  Value empty = tensor::EmptyOp::create(b, loc, ArrayRef<int64_t>{}, f64);
  Value zero = arith::ConstantOp::create(b, loc, b.getF64FloatAttr(0.0));
  Value acc = linalg::FillOp::create(b, loc, zero, empty).getResult(0);
  SmallVector<AffineMap> maps(inMaps);
  maps.push_back(AffineMap::get(numLoops, 0, {}, b.getContext()));
  SmallVector<utils::IteratorType> iterators(numLoops,
                                             utils::IteratorType::reduction);
  Value sum = buildGeneric(
      b, loc, ins, acc, maps, iterators,
      [&](OpBuilder &nb, Location nloc, ValueRange args) {
        Value t = term(nb, nloc, args.drop_back());
        return arith::AddFOp::create(nb, nloc, args.back(), t).getResult();
      });
  return tensor::ExtractOp::create(b, loc, sum, ValueRange{});
}

/// (a - b)^2 in f64.
Value squaredDiffF64(OpBuilder &b, Location loc, Value x, Value y) {
  Type f64 = b.getF64Type();
  if (x.getType() != f64)
    x = arith::ExtFOp::create(b, loc, f64, x);
  if (y.getType() != f64)
    y = arith::ExtFOp::create(b, loc, f64, y);
  Value d = arith::SubFOp::create(b, loc, x, y);
  return arith::MulFOp::create(b, loc, d, d);
}

/// A read-only memref view of a tensor, for hand-written loops.
Value toBuffer(OpBuilder &b, Location loc, Value tensor) {
  auto type = cast<RankedTensorType>(tensor.getType());
  auto memrefType = MemRefType::get(type.getShape(), type.getElementType());
  return bufferization::ToBufferOp::create(b, loc, memrefType, tensor,
                                           /*read_only=*/true);
}

/// A fresh buffer whose tensor view is returned by `asTensor`.
Value allocLike(OpBuilder &b, Location loc, RankedTensorType type,
                ValueRange dynSizes) {
  auto memrefType = MemRefType::get(type.getShape(), type.getElementType());
  return memref::AllocOp::create(b, loc, memrefType, dynSizes);
}

Value asTensor(OpBuilder &b, Location loc, RankedTensorType type, Value buf) {
  return bufferization::ToTensorOp::create(b, loc, type, buf,
                                           /*restrict=*/true,
                                           /*writable=*/true);
}

//===----------------------------------------------------------------------===//
// Dense ops
//===----------------------------------------------------------------------===//

/// out[i, j] = Σ_k in[i, k] · w[k, j], with loops (i, k, j): the innermost
/// loop walks a row of `w` and of `out` contiguously.
struct LinearLowering : OpRewritePattern<LinearOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(LinearOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    Value init = filledTensor(rewriter, loc, op.getType(), op.getInput(), 0.0);
    AffineExpr i, k, j;
    bindDims(ctx, i, k, j);
    SmallVector<AffineMap> maps = {AffineMap::get(3, 0, {i, k}, ctx),
                                   AffineMap::get(3, 0, {k, j}, ctx),
                                   AffineMap::get(3, 0, {i, j}, ctx)};
    Value result = buildGeneric(
        rewriter, loc, {op.getInput(), op.getWeight()}, init, maps,
        {utils::IteratorType::parallel, utils::IteratorType::reduction,
         utils::IteratorType::parallel},
        [](OpBuilder &b, Location l, ValueRange a) {
          Value m = arith::MulFOp::create(b, l, a[0], a[1]);
          return arith::AddFOp::create(b, l, a[2], m).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

template <typename OpTy, typename ArithOp>
struct BiasLowering : OpRewritePattern<OpTy> {
  using OpRewritePattern<OpTy>::OpRewritePattern;
  LogicalResult matchAndRewrite(OpTy op,
                                PatternRewriter &rewriter) const override {
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(), {op.getInput(), op.getBias()},
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx)},
        [](OpBuilder &b, Location l, ValueRange a) {
          return ArithOp::create(b, l, a[0], a[1]).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

template <typename OpTy, typename ArithOp>
struct BinaryLowering : OpRewritePattern<OpTy> {
  using OpRewritePattern<OpTy>::OpRewritePattern;
  LogicalResult matchAndRewrite(OpTy op,
                                PatternRewriter &rewriter) const override {
    AffineMap id = rewriter.getMultiDimIdentityMap(op.getType().getRank());
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getLhs(), {op.getLhs(), op.getRhs()},
        {id, id}, [](OpBuilder &b, Location l, ValueRange a) {
          return ArithOp::create(b, l, a[0], a[1]).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct ScaleLowering : OpRewritePattern<ScaleOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ScaleOp op,
                                PatternRewriter &rewriter) const override {
    AffineMap id = rewriter.getMultiDimIdentityMap(op.getType().getRank());
    Value scale = op.getScale();
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(), {op.getInput()}, {id},
        [&](OpBuilder &b, Location l, ValueRange a) {
          return arith::MulFOp::create(b, l, a[0], scale).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct ReluLowering : OpRewritePattern<ReluOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ReluOp op,
                                PatternRewriter &rewriter) const override {
    AffineMap id = rewriter.getMultiDimIdentityMap(op.getType().getRank());
    Type elt = op.getType().getElementType();
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(), {op.getInput()}, {id},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value zero =
              arith::ConstantOp::create(b, l, b.getFloatAttr(elt, 0.0));
          // maximumf propagates NaN, so a NaN pre-activation stays visible.
          return arith::MaximumFOp::create(b, l, a[0], zero).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct TransposeLowering : OpRewritePattern<TransposeOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TransposeOp op,
                                PatternRewriter &rewriter) const override {
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    Value init = tensor::EmptyOp::create(rewriter, op.getLoc(), op.getType(),
                                         ValueRange{});
    Value result = buildGeneric(
        rewriter, op.getLoc(), {op.getInput()}, init,
        {AffineMap::get(2, 0, {j, i}, ctx), AffineMap::get(2, 0, {i, j}, ctx)},
        {utils::IteratorType::parallel, utils::IteratorType::parallel},
        [](OpBuilder &, Location, ValueRange a) { return a[0]; });
    rewriter.replaceOp(op, result);
    return success();
  }
};

/// Row sums of squares, then a scaling pass; zero rows stay zero.
struct NormalizeRowsLowering : OpRewritePattern<NormalizeRowsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(NormalizeRowsOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    auto type = op.getType();
    Type elt = type.getElementType();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    auto rowType = RankedTensorType::get({type.getDimSize(0)}, elt);
    Value acc = filledTensor(rewriter, loc, rowType, op.getInput(), 0.0);
    Value sumSq = buildGeneric(
        rewriter, loc, {op.getInput()}, acc,
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {i}, ctx)},
        {utils::IteratorType::parallel, utils::IteratorType::reduction},
        [](OpBuilder &b, Location l, ValueRange a) {
          Value sq = arith::MulFOp::create(b, l, a[0], a[0]);
          return arith::AddFOp::create(b, l, a[1], sq).getResult();
        });
    Value result = buildElementwise(
        rewriter, loc, op.getInput(), {op.getInput(), sumSq},
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {i}, ctx)},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value zero = arith::ConstantOp::create(b, l, b.getFloatAttr(elt, 0));
          Value isZero = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OLE,
                                               a[1], zero);
          Value inv = math::RsqrtOp::create(b, l, a[1]);
          Value scaled = arith::MulFOp::create(b, l, a[0], inv);
          return arith::SelectOp::create(b, l, isZero, zero, scaled)
              .getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

struct FillLowering : OpRewritePattern<FillOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(FillOp op,
                                PatternRewriter &rewriter) const override {
    rewriter.replaceOp(op, filledTensor(rewriter, op.getLoc(), op.getType(),
                                        Value(),
                                        op.getValue().convertToDouble()));
    return success();
  }
};

/// splitmix64's finaliser over (seed + stream·φ + i·γ); the top 24 bits give
/// u in [0, 1). Documented in docs/language.md; tests re-implement it.
struct RandomUniformLowering : OpRewritePattern<RandomUniformOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RandomUniformOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    auto type = op.getType();
    int64_t rank = type.getRank();
    Value init = tensor::EmptyOp::create(rewriter, loc, type, ValueRange{});
    double low = op.getLow().convertToDouble();
    double high = op.getHigh().convertToDouble();
    uint64_t stream = op.getStream();
    Value seed = op.getSeed();
    SmallVector<utils::IteratorType> iterators(rank,
                                               utils::IteratorType::parallel);
    Value result = buildGeneric(
        rewriter, loc, {}, init, {rewriter.getMultiDimIdentityMap(rank)},
        iterators, [&](OpBuilder &b, Location l, ValueRange) {
          Type i64 = b.getI64Type();
          auto c = [&](uint64_t v) -> Value {
            return arith::ConstantOp::create(
                b, l, b.getI64IntegerAttr(static_cast<int64_t>(v)));
          };
          // Row-major linear index of the element.
          Value lin = c(0);
          for (int64_t d = 0; d < rank; ++d) {
            Value idx = arith::IndexCastOp::create(
                b, l, i64, linalg::IndexOp::create(b, l, d));
            lin = arith::MulIOp::create(b, l, lin, c(type.getDimSize(d)));
            lin = arith::AddIOp::create(b, l, lin, idx);
          }
          Value z = arith::AddIOp::create(b, l, seed,
                                          c(stream * 0x9E3779B97F4A7C15ull));
          z = arith::AddIOp::create(
              b, l, z, arith::MulIOp::create(b, l, lin, c(0xD1B54A32D192ED03ull)));
          auto mix = [&](Value v, uint64_t shift, uint64_t mul) -> Value {
            Value s = arith::ShRUIOp::create(b, l, v, c(shift));
            Value x = arith::XOrIOp::create(b, l, v, s);
            return mul ? arith::MulIOp::create(b, l, x, c(mul)).getResult() : x;
          };
          z = mix(z, 30, 0xBF58476D1CE4E5B9ull);
          z = mix(z, 27, 0x94D049BB133111EBull);
          z = mix(z, 31, 0);
          Value top = arith::ShRUIOp::create(b, l, z, c(40));
          Value u = arith::UIToFPOp::create(b, l, b.getF64Type(), top);
          Value scale = arith::ConstantOp::create(
              b, l, b.getF64FloatAttr((high - low) / 16777216.0));
          Value lo = arith::ConstantOp::create(b, l, b.getF64FloatAttr(low));
          Value v = arith::AddFOp::create(
              b, l, lo, arith::MulFOp::create(b, l, u, scale));
          return arith::TruncFOp::create(b, l, type.getElementType(), v)
              .getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

struct MseLowering : OpRewritePattern<MseOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MseOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    AffineMap id = rewriter.getMultiDimIdentityMap(2);
    Value sum = sumToScalar(rewriter, loc, {op.getInput(), op.getTarget()},
                            {id, id}, 2,
                            [](OpBuilder &b, Location l, ValueRange a) {
                              return squaredDiffF64(b, l, a[0], a[1]);
                            });
    Value rows = rowCount(rewriter, loc, op.getInput(), rewriter.getF64Type());
    Value mean = arith::DivFOp::create(rewriter, loc, sum, rows);
    rewriter.replaceOp(
        op, arith::TruncFOp::create(rewriter, loc, op.getType(), mean));
    return success();
  }
};

/// Σ‖input − target‖² / Σ‖target − mean(target)‖², all in f64.
struct FvuLowering : OpRewritePattern<FvuOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(FvuOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    Value target = op.getTarget();
    auto type = op.getTarget().getType();
    Type f64 = rewriter.getF64Type();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
    AffineMap col = AffineMap::get(2, 0, {j}, ctx);

    // Column sums of the target, then the column means.
    auto colType = RankedTensorType::get({type.getDimSize(1)}, f64);
    Value acc = filledTensor(rewriter, loc, colType, target, 0.0);
    Value colSum = buildGeneric(
        rewriter, loc, {target}, acc, {id, col},
        {utils::IteratorType::reduction, utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value x = arith::ExtFOp::create(b, l, f64, a[0]);
          return arith::AddFOp::create(b, l, a[1], x).getResult();
        });
    Value rows = rowCount(rewriter, loc, target, f64);
    Value denom = sumToScalar(
        rewriter, loc, {target, colSum}, {id, col}, 2,
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value mean = arith::DivFOp::create(b, l, a[1], rows);
          return squaredDiffF64(b, l, a[0], mean);
        });
    Value num = sumToScalar(rewriter, loc, {op.getInput(), target}, {id, id},
                            2, [](OpBuilder &b, Location l, ValueRange a) {
                              return squaredDiffF64(b, l, a[0], a[1]);
                            });
    Value fvu = arith::DivFOp::create(rewriter, loc, num, denom);
    rewriter.replaceOp(
        op, arith::TruncFOp::create(rewriter, loc, op.getType(), fvu));
    return success();
  }
};

//===----------------------------------------------------------------------===//
// Sparse codes
//===----------------------------------------------------------------------===//

/// For every row: k slots sorted by decreasing value, initialised to -inf;
/// each entry larger than the last slot is inserted by carrying the
/// displaced entry down (branch-free selects). Strict comparisons keep the
/// lower index first among ties and never select NaN.
struct TopKLowering : OpRewritePattern<TopKOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TopKOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type elt = codes.getElementType();
    Type i32 = rewriter.getI32Type();
    int64_t k = codes.getK();
    Value input = op.getInput();

    SmallVector<Value> dyn =
        dynamicSizes(rewriter, loc, codes.getValuesType(), input);
    Value in = toBuffer(rewriter, loc, input);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);

    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cK = cIdx(k);
    Value cLast = cIdx(k - 1);
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value cols = cIdx(codes.getNumLatents());
    Value negInf = arith::ConstantOp::create(
        rewriter, loc,
        rewriter.getFloatAttr(
            elt, APFloat::getInf(cast<FloatType>(elt).getFloatSemantics(),
                                 /*Negative=*/true)));
    Value zeroI = arith::ConstantOp::create(rewriter, loc,
                                            rewriter.getI32IntegerAttr(0));

    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          scf::ForOp::create(
              b, l, c0, cK, c1, ValueRange{},
              [&](OpBuilder &nb, Location nl, Value t, ValueRange) {
                memref::StoreOp::create(nb, nl, negInf, vals, {row, t});
                memref::StoreOp::create(nb, nl, zeroI, idxs, {row, t});
                scf::YieldOp::create(nb, nl);
              });
          scf::ForOp::create(
              b, l, c0, cols, c1, ValueRange{},
              [&](OpBuilder &nb, Location nl, Value col, ValueRange) {
                Value v = memref::LoadOp::create(nb, nl, in, {row, col});
                Value last = memref::LoadOp::create(nb, nl, vals, {row, cLast});
                Value better = arith::CmpFOp::create(
                    nb, nl, arith::CmpFPredicate::OGT, v, last);
                scf::IfOp::create(
                    nb, nl, better, [&](OpBuilder &ib, Location il) {
                      Value ci = arith::IndexCastOp::create(ib, il, i32, col);
                      scf::ForOp::create(
                          ib, il, c0, cK, c1, ValueRange{v, ci},
                          [&](OpBuilder &fb, Location fl, Value t,
                              ValueRange carry) {
                            Value ov =
                                memref::LoadOp::create(fb, fl, vals, {row, t});
                            Value oi =
                                memref::LoadOp::create(fb, fl, idxs, {row, t});
                            Value swap = arith::CmpFOp::create(
                                fb, fl, arith::CmpFPredicate::OGT, carry[0], ov);
                            auto sel = [&](Value a, Value c) -> Value {
                              return arith::SelectOp::create(fb, fl, swap, a, c);
                            };
                            memref::StoreOp::create(fb, fl, sel(carry[0], ov),
                                                    vals, {row, t});
                            memref::StoreOp::create(fb, fl, sel(carry[1], oi),
                                                    idxs, {row, t});
                            scf::YieldOp::create(
                                fb, fl,
                                ValueRange{sel(ov, carry[0]), sel(oi, carry[1])});
                          });
                      scf::YieldOp::create(ib, il);
                    });
                scf::YieldOp::create(nb, nl);
              });
          scf::YieldOp::create(b, l);
        });

    Value valsT = asTensor(rewriter, loc, codes.getValuesType(), vals);
    Value idxsT = asTensor(rewriter, loc, codes.getIndicesType(), idxs);
    rewriter.replaceOpWithNewOp<MakeCodesOp>(op, codes, valsT, idxsT);
    return success();
  }
};

/// Codes reach their consumers through sae.make_codes once their producer is
/// lowered; a consumer of codes from anywhere else cannot be lowered.
LogicalResult getCodeParts(Value codes, Value &values, Value &indices) {
  auto make = codes.getDefiningOp<MakeCodesOp>();
  if (!make)
    return failure();
  values = make.getValues();
  indices = make.getIndices();
  return success();
}

/// out[b, j] = Σ_t values[b, t] · W[indices[b, t], j]; loops (b, t, j).
struct DecodeLowering : OpRewritePattern<DecodeOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(DecodeOp op,
                                PatternRewriter &rewriter) const override {
    Value values, indices;
    if (failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    Value weight = op.getWeight();
    Value init = filledTensor(rewriter, loc, op.getType(), values, 0.0);
    AffineExpr b, t, j;
    bindDims(ctx, b, t, j);
    Value result = buildGeneric(
        rewriter, loc, {values, indices}, init,
        {AffineMap::get(3, 0, {b, t}, ctx), AffineMap::get(3, 0, {b, t}, ctx),
         AffineMap::get(3, 0, {b, j}, ctx)},
        {utils::IteratorType::parallel, utils::IteratorType::reduction,
         utils::IteratorType::parallel},
        [&](OpBuilder &nb, Location l, ValueRange a) {
          Value row = arith::IndexCastOp::create(nb, l, nb.getIndexType(), a[1]);
          Value colIdx = linalg::IndexOp::create(nb, l, 2);
          Value w = tensor::ExtractOp::create(nb, l, weight,
                                              ValueRange{row, colIdx});
          Value m = arith::MulFOp::create(nb, l, a[0], w);
          return arith::AddFOp::create(nb, l, a[2], m).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

/// Zero-filled [B, n] buffer, then one store per kept entry.
struct DensifyLowering : OpRewritePattern<DensifyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(DensifyOp op,
                                PatternRewriter &rewriter) const override {
    Value values, indices;
    if (failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    Location loc = op.getLoc();
    auto type = op.getType();
    // A fresh buffer that the loops below own and write.
    Value out = allocLike(rewriter, loc, type,
                          dynamicSizes(rewriter, loc, type, values));
    Value zero = arith::ConstantOp::create(
        rewriter, loc, rewriter.getFloatAttr(type.getElementType(), 0.0));
    linalg::FillOp::create(rewriter, loc, ValueRange{zero}, ValueRange{out});
    Value vals = toBuffer(rewriter, loc, values);
    Value idxs = toBuffer(rewriter, loc, indices);
    Value c0 = arith::ConstantIndexOp::create(rewriter, loc, 0);
    Value c1 = arith::ConstantIndexOp::create(rewriter, loc, 1);
    Value cK = arith::ConstantIndexOp::create(
        rewriter, loc, op.getCodes().getType().getK());
    Value rows = tensor::DimOp::create(rewriter, loc, values, 0);
    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          scf::ForOp::create(
              b, l, c0, cK, c1, ValueRange{},
              [&](OpBuilder &nb, Location nl, Value t, ValueRange) {
                Value v = memref::LoadOp::create(nb, nl, vals, {row, t});
                Value i = memref::LoadOp::create(nb, nl, idxs, {row, t});
                Value col = arith::IndexCastOp::create(nb, nl,
                                                       nb.getIndexType(), i);
                memref::StoreOp::create(nb, nl, v, out, {row, col});
                scf::YieldOp::create(nb, nl);
              });
          scf::YieldOp::create(b, l);
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
    return success();
  }
};

struct ConvertSaeToLinalgPass
    : public sae::impl::ConvertSaeToLinalgBase<ConvertSaeToLinalgPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateSaeToLinalgPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
    // Whatever sae op is left could not be lowered (e.g. codes that arrive
    // as a function argument instead of from a sparsity operator).
    WalkResult result = getOperation()->walk([](Operation *op) {
      if (!isa<SaeDialect>(op->getDialect()))
        return WalkResult::advance();
      op->emitError() << "'" << op->getName()
                      << "' could not be lowered to linalg";
      return WalkResult::interrupt();
    });
    if (result.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace

void mlir::sae::populateSaeToLinalgPatterns(RewritePatternSet &patterns) {
  patterns.add<LinearLowering, BiasLowering<BiasAddOp, arith::AddFOp>,
               BiasLowering<BiasSubOp, arith::SubFOp>,
               BinaryLowering<AddOp, arith::AddFOp>,
               BinaryLowering<SubOp, arith::SubFOp>,
               BinaryLowering<MulOp, arith::MulFOp>,
               BinaryLowering<DivOp, arith::DivFOp>, ScaleLowering,
               ReluLowering, TransposeLowering, NormalizeRowsLowering,
               FillLowering, RandomUniformLowering, MseLowering, FvuLowering,
               TopKLowering, DecodeLowering, DensifyLowering>(
      patterns.getContext());
}
