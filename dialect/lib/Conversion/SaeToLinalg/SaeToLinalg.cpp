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
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Dominance.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "mlir/Transforms/CSE.h"
#include "mlir/Transforms/ControlFlowSinkUtils.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "llvm/TargetParser/Host.h"

#include <cmath>
#include <functional>
#include <limits>

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
  Value empty =
      tensor::EmptyOp::create(b, loc, type, dynamicSizes(b, loc, type, like));
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
  Value init = tensor::EmptyOp::create(b, loc, type,
                                       dynamicSizes(b, loc, type, resultLike));
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
/// `scalar` broadcast to a vector of `like`'s shape when `like` is a
/// vector (terms of sumInChunks see vectors of elements or scalars).
Value splatLike(OpBuilder &b, Location loc, Value scalar, Value like) {
  auto vt = dyn_cast<VectorType>(like.getType());
  if (!vt || isa<VectorType>(scalar.getType()))
    return scalar;
  return vector::BroadcastOp::create(
      b, loc, VectorType::get(vt.getShape(), scalar.getType()), scalar);
}

/// `v` (a float or a vector of floats) in f64.
Value toF64(OpBuilder &b, Location l, Value v) {
  Type f64 = b.getF64Type();
  if (getElementTypeOrSelf(v.getType()) == f64)
    return v;
  Type to = f64;
  if (auto vt = dyn_cast<VectorType>(v.getType()))
    to = VectorType::get(vt.getShape(), f64);
  return arith::ExtFOp::create(b, l, to, v).getResult();
}

Value squaredDiffF64(OpBuilder &b, Location loc, Value x, Value y) {
  x = toF64(b, loc, x);
  y = toF64(b, loc, y);
  x = splatLike(b, loc, x, y);
  y = splatLike(b, loc, y, x);
  Value d = arith::SubFOp::create(b, loc, x, y);
  return arith::MulFOp::create(b, loc, d, d);
}

Value floatConst(OpBuilder &b, Location l, Type t, double v) {
  return arith::ConstantOp::create(b, l, b.getFloatAttr(t, v));
}

Value rowNorms(OpBuilder &b, Location loc, Value w);
Value rowDots(OpBuilder &b, Location loc, Value x, Value y,
              AffineMap yMap = AffineMap());
Value batchRows(OpBuilder &b, Location l, Value values, int64_t k);
Value zeroBuffer(OpBuilder &b, Location loc, RankedTensorType type,
                 ValueRange dyn);
void addScaledRow(OpBuilder &b, Location l, Value dst, Value dstRow, Value src,
                  Value srcRow, Value v, int64_t width);
void forRange(OpBuilder &b, Location loc, Value lo, Value hi,
              function_ref<void(OpBuilder &, Value)> fn);
int64_t outerVecs(int64_t d, int64_t lanes);
void sumRowsByLatent(OpBuilder &b, Location l, MakeCodesOp make, Value panel,
                     Value out, Value count, int64_t lanes);

/// `v` is defined before `op` in its block (or is an argument of it).
bool definedBefore(Value v, Operation *op) {
  if (auto arg = dyn_cast<BlockArgument>(v))
    return arg.getOwner() == op->getBlock();
  Operation *def = v.getDefiningOp();
  return def->getBlock() == op->getBlock() && def->isBeforeInBlock(op);
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

/// sumToScalar for a `term` of the loaded elements alone (no linalg.index;
/// each input's map projects the loops). The first loop is cut into
/// kSumChunks fixed ranges, summed in parallel (scf.parallel), each in
/// order in a register; the partial sums are then added in order, so the
/// result does not depend on the thread count. (sumToScalar's reduction
/// into a rank-0 buffer runs on one thread, storing and reloading its
/// accumulator for every element.) With two loops or more, an innermost
/// extent that is a static multiple of kSumLanes, and every input reading
/// the innermost loop's index last (contiguously) or not at all, the
/// innermost loop goes by vectors of kSumLanes: `term` gets vectors (an
/// input that does not read it, broadcast), each lane keeps its own sum,
/// and a range's lanes are added in order at its end. (One f64 register
/// carried through every element waited out the add's latency each time.)
constexpr int64_t kSumChunks = 64;
constexpr int64_t kSumLanes = 8;
Value sumInChunks(OpBuilder &b, Location loc, ValueRange ins,
                  ArrayRef<AffineMap> inMaps, unsigned numLoops,
                  function_ref<Value(OpBuilder &, Location, ValueRange)> term) {
  Type f64 = b.getF64Type();
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, loc, v);
  };
  // Each loop's extent: a dimension of the first input that it indexes.
  SmallVector<Value> extents(numLoops), bufs;
  for (auto [in, map] : llvm::zip(ins, inMaps)) {
    bufs.push_back(toBuffer(b, loc, in));
    for (auto [pos, expr] : llvm::enumerate(map.getResults())) {
      unsigned dim = cast<AffineDimExpr>(expr).getPosition();
      if (!extents[dim])
        extents[dim] = tensor::DimOp::create(b, loc, in, pos);
    }
  }
  Value zero = arith::ConstantOp::create(b, loc, b.getF64FloatAttr(0.0));
  assert(llvm::all_of(extents, [](Value e) { return bool(e); }) &&
         "every loop indexes an input");
  unsigned last = numLoops - 1;
  std::optional<int64_t> lastExtent;
  for (auto [in, map] : llvm::zip(ins, inMaps))
    if (std::optional<unsigned> at =
            map.getResultPosition(getAffineDimExpr(last, map.getContext())))
      if (int64_t size = cast<ShapedType>(in.getType()).getDimSize(*at);
          !ShapedType::isDynamic(size))
        lastExtent = size;
  bool vectorize =
      numLoops >= 2 && lastExtent && *lastExtent % kSumLanes == 0 &&
      llvm::all_of(inMaps, [&](AffineMap map) {
        std::optional<unsigned> at =
            map.getResultPosition(getAffineDimExpr(last, map.getContext()));
        return !at || *at + 1 == map.getNumResults();
      });
  auto accType = VectorType::get({kSumLanes}, f64);
  Value accZero =
      vectorize ? vector::BroadcastOp::create(b, loc, accType, zero).getResult()
                : zero;
  Value partial =
      memref::AllocOp::create(b, loc, MemRefType::get({kSumChunks}, f64));
  Value chunk = arith::CeilDivUIOp::create(b, loc, extents[0],
                                           idx(b, kSumChunks));
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{idx(b, kSumChunks)},
      ValueRange{idx(b, 1)}, [&](OpBuilder &pb, Location, ValueRange ivs) {
        Value lo = arith::MinUIOp::create(
            pb, loc, arith::MulIOp::create(pb, loc, ivs[0], chunk),
            extents[0]);
        Value hi = arith::MinUIOp::create(
            pb, loc, arith::AddIOp::create(pb, loc, lo, chunk), extents[0]);
        // Loops 0 .. numLoops - 1 nested, the sum carried through them.
        SmallVector<Value> at(numLoops);
        std::function<Value(OpBuilder &, unsigned, Value)> nest =
            [&](OpBuilder &nb, unsigned dim, Value acc) -> Value {
          if (dim == numLoops) {
            SmallVector<Value> args;
            for (auto [buf, map] : llvm::zip(bufs, inMaps)) {
              SmallVector<Value> indices;
              bool readsLast = false;
              for (AffineExpr expr : map.getResults()) {
                unsigned d = cast<AffineDimExpr>(expr).getPosition();
                readsLast |= d == last;
                indices.push_back(at[d]);
              }
              Type elt = cast<MemRefType>(buf.getType()).getElementType();
              Value arg;
              if (vectorize && readsLast)
                arg = vector::LoadOp::create(
                    nb, loc, VectorType::get({kSumLanes}, elt), buf, indices);
              else
                arg = memref::LoadOp::create(nb, loc, buf, indices);
              if (vectorize && !readsLast)
                arg = vector::BroadcastOp::create(
                    nb, loc, VectorType::get({kSumLanes}, elt), arg);
              args.push_back(arg);
            }
            return arith::AddFOp::create(nb, loc, acc, term(nb, loc, args));
          }
          int64_t step = vectorize && dim == last ? kSumLanes : 1;
          auto loop = scf::ForOp::create(
              nb, loc, dim == 0 ? lo : idx(nb, 0), dim == 0 ? hi : extents[dim],
              idx(nb, step), ValueRange{acc},
              [&](OpBuilder &fb, Location, Value iv, ValueRange a) {
                at[dim] = iv;
                scf::YieldOp::create(fb, loc,
                                     ValueRange{nest(fb, dim + 1, a[0])});
              });
          return loop.getResult(0);
        };
        Value sum = nest(pb, 0, accZero);
        if (vectorize)
          sum = vector::ReductionOp::create(pb, loc, vector::CombiningKind::ADD,
                                            sum);
        memref::StoreOp::create(pb, loc, sum, partial, ivs[0]);
      });
  auto total = scf::ForOp::create(
      b, loc, idx(b, 0), idx(b, kSumChunks), idx(b, 1), ValueRange{zero},
      [&](OpBuilder &fb, Location, Value c, ValueRange a) {
        scf::YieldOp::create(
            fb, loc,
            ValueRange{arith::AddFOp::create(
                fb, loc, a[0], memref::LoadOp::create(fb, loc, partial, c))});
      });
  return total.getResult(0);
}

/// Replaces a selection op by codes built from the buffers it filled.
void replaceWithCodes(PatternRewriter &rewriter, Operation *op, CodesType codes,
                      Value vals, Value idxs, Value rows = Value()) {
  Location loc = op->getLoc();
  Value valsT = asTensor(rewriter, loc, codes.getValuesType(), vals);
  Value idxsT = asTensor(rewriter, loc, codes.getIndicesType(), idxs);
  Value rowsT =
      rows ? asTensor(rewriter, loc, codes.getRowsType(), rows) : Value();
  rewriter.replaceOpWithNewOp<MakeCodesOp>(op, codes, valsT, idxsT, rowsT);
}

Value negInfOf(OpBuilder &b, Location l, Type elt) {
  return arith::ConstantOp::create(
      b, l,
      b.getFloatAttr(elt, APFloat::getInf(
                              cast<FloatType>(elt).getFloatSemantics(), true)));
}

//===----------------------------------------------------------------------===//
// Row selection (the top-k of sparse codes, also in the encoder's epilogue)
//===----------------------------------------------------------------------===//

/// Runs `body` for each lane set in `mask` (a vector of i1), lowest
/// first: the mask as an integer, its trailing zeros counted, the lowest
/// set bit cleared. `init` are values carried from lane to lane (`body`
/// returns the next ones); returns them after the last lane.
SmallVector<Value>
forEachSetLane(OpBuilder &b, Location l, Value mask, ValueRange init,
               function_ref<SmallVector<Value>(OpBuilder &, Location,
                                               Value lane, ValueRange args)>
                   body) {
  int64_t lanes = cast<VectorType>(mask.getType()).getNumElements();
  Type i32 = b.getI32Type();
  Value bits = vector::ExtractOp::create(
      b, l,
      vector::BitCastOp::create(
          b, l, VectorType::get({1}, b.getIntegerType(lanes)), mask),
      ArrayRef<int64_t>{0});
  Value zero = arith::ConstantOp::create(b, l, b.getI32IntegerAttr(0));
  Value one = arith::ConstantOp::create(b, l, b.getI32IntegerAttr(1));
  SmallVector<Value> state{arith::ExtUIOp::create(b, l, i32, bits)};
  llvm::append_range(state, init);
  auto loop = scf::WhileOp::create(
      b, l, ValueRange(state).getTypes(), state,
      [&](OpBuilder &wb, Location wl, ValueRange args) {
        Value more = arith::CmpIOp::create(wb, wl, arith::CmpIPredicate::ne,
                                           args[0], zero);
        scf::ConditionOp::create(wb, wl, more, args);
      },
      [&](OpBuilder &wb, Location wl, ValueRange args) {
        Value lane = arith::IndexCastUIOp::create(
            wb, wl, wb.getIndexType(),
            math::CountTrailingZerosOp::create(wb, wl, args[0]));
        SmallVector<Value> carried = body(wb, wl, lane, args.drop_front());
        SmallVector<Value> next{arith::AndIOp::create(
            wb, wl, args[0], arith::SubIOp::create(wb, wl, args[0], one))};
        llvm::append_range(next, carried);
        scf::YieldOp::create(wb, wl, next);
      });
  return SmallVector<Value>(loop.getResults().drop_front());
}

/// One candidate of a row selection: its rank, its latent index (i32) and
/// its value (null when the rank is the value).
struct Candidate {
  Value rank, index, value;
};
using CandidateFn = function_ref<Candidate(OpBuilder &, Location, Value)>;
/// The ranks of candidates [t, t + kScreenLanes) as one vector.
using ScreenFn = function_ref<Value(OpBuilder &, Location, Value)>;
constexpr int64_t kScreenLanes = 16;

/// Selects, in row `row`, the k best of `count` candidates (candidate t
/// from `candidate`, visited with increasing latent index) into
/// ranks/idxs/vals[row, 0..k) (vals null: the ranks are the values),
/// ordered by decreasing rank, ties by increasing index; NaN ranks are never
/// selected, and slots left over hold rank -inf, index 0 and value 0.
/// The slots form a bounded min-heap keyed by (rank, -index) while the
/// candidates go by, so a candidate costs one comparison with the worst
/// kept entry, and entering costs O(log k); a heapsort orders the slots at
/// the end. With `screen`, the candidates go by in blocks of kScreenLanes
/// whose ranks are compared with the worst kept rank in one vector
/// comparison: once the heap is full of good entries, almost every block
/// has none that enters and is skipped; a block with one goes by one
/// candidate at a time as before.
/// RowTopK holds the pieces (empty slots, runs of candidates, the final
/// order) for callers whose candidates come in several runs, as the
/// encoder product's epilogue; emitRowTopK runs them in one go.
class RowTopK {
public:
  RowTopK(Location loc, int64_t k, Value ranks, Value idxs, Value vals)
      : loc(loc), k(k), ranks(ranks), idxs(idxs), vals(vals) {}

  /// Empties the slots of `row`: rank -inf, index 0, value 0.
  void init(OpBuilder &b, Value row) const {
    Type f32 = cast<MemRefType>(ranks.getType()).getElementType();
    Value negInf = negInfOf(b, loc, f32);
    Value zeroF = floatConst(b, loc, f32, 0.0);
    Value zeroI = arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(0));
    scf::ForOp::create(b, loc, idx(b, 0), idx(b, k), idx(b, 1), ValueRange{},
                       [&](OpBuilder &nb, Location nl, Value t, ValueRange) {
                         store(nb, row, negInf, ranks, t);
                         store(nb, row, zeroI, idxs, t);
                         if (vals)
                           store(nb, row, zeroF, vals, t);
                         scf::YieldOp::create(nb, nl);
                       });
  }

  /// The worst kept rank of `row`: the heap's root (-inf while a slot is
  /// empty).
  Value worst(OpBuilder &b, Value row) const {
    return load(b, row, ranks, idx(b, 0));
  }

  /// Candidates [from, to) one at a time; `worst` is the worst kept rank
  /// before them, and the result the one after. The candidates come with
  /// increasing indices (also after every earlier run), so one beats the
  /// worst kept entry exactly when its rank is higher.
  Value visit(OpBuilder &b, Value row, Value from, Value to, Value worst,
              CandidateFn candidate) const {
    return scf::ForOp::create(
               b, loc, from, to, idx(b, 1), ValueRange{worst},
               [&](OpBuilder &nb, Location nl, Value t, ValueRange w) {
                 Candidate item = candidate(nb, nl, t);
                 Value enters = arith::CmpFOp::create(
                     nb, nl, arith::CmpFPredicate::OGT, item.rank, w[0]);
                 auto next = scf::IfOp::create(
                     nb, nl, enters,
                     [&](OpBuilder &ib, Location il) {
                       siftDown(ib, row, item, idx(ib, k));
                       scf::YieldOp::create(ib, il,
                                            ValueRange{this->worst(ib, row)});
                     },
                     [&](OpBuilder &ib, Location il) {
                       scf::YieldOp::create(ib, il, w);
                     });
                 scf::YieldOp::create(nb, nl, next.getResults());
               })
        .getResult(0);
  }

  /// The candidates [t, t + L), whose ranks are the L-lane vector
  /// `blockRanks`: when some of them beat `worst` (one vector comparison),
  /// visit() those, lowest lane first (a bit mask of the comparison, its
  /// trailing zeros counted); the others cannot enter, since the worst
  /// kept rank only rises. Usually one lane of a block gets in, and the
  /// other L - 1 are not read again.
  Value screened(OpBuilder &b, Value row, Value t, Value blockRanks,
                 Value worst, CandidateFn candidate) const {
    auto vecType = cast<VectorType>(blockRanks.getType());
    Value beats = arith::CmpFOp::create(
        b, loc, arith::CmpFPredicate::OGT, blockRanks,
        vector::BroadcastOp::create(b, loc, vecType, worst));
    Value any =
        vector::ReductionOp::create(b, loc, vector::CombiningKind::OR, beats);
    auto next = scf::IfOp::create(
        b, loc, any,
        [&](OpBuilder &ib, Location il) {
          SmallVector<Value> after = forEachSetLane(
              ib, il, beats, ValueRange{worst},
              [&](OpBuilder &wb, Location wl, Value lane,
                  ValueRange args) -> SmallVector<Value> {
                Value at = arith::AddIOp::create(wb, wl, t, lane);
                return {visit(wb, row, at,
                              arith::AddIOp::create(wb, wl, at, idx(wb, 1)),
                              args[0], candidate)};
              });
          scf::YieldOp::create(ib, il, after);
        },
        [&](OpBuilder &ib, Location il) {
          scf::YieldOp::create(ib, il, ValueRange{worst});
        });
    return next.getResult(0);
  }

  /// Orders the slots of `row` by decreasing rank, ties by increasing
  /// index (heapsort: moves the worst slot to the end, k - 1 times).
  void finish(OpBuilder &b, Value row) const {
    Value cK = idx(b, k);
    scf::ForOp::create(
        b, loc, idx(b, 1), cK, idx(b, 1), ValueRange{},
        [&](OpBuilder &nb, Location nl, Value j, ValueRange) {
          Value end = arith::SubIOp::create(nb, nl, cK, j);
          Value c0 = idx(nb, 0);
          Candidate item{load(nb, row, ranks, end), load(nb, row, idxs, end),
                         vals ? load(nb, row, vals, end) : Value()};
          store(nb, row, load(nb, row, ranks, c0), ranks, end);
          store(nb, row, load(nb, row, idxs, c0), idxs, end);
          if (vals)
            store(nb, row, load(nb, row, vals, c0), vals, end);
          siftDown(nb, row, item, end);
          scf::YieldOp::create(nb, nl);
        });
  }

private:
  Value idx(OpBuilder &b, int64_t v) const {
    return arith::ConstantIndexOp::create(b, loc, v);
  }
  Value load(OpBuilder &b, Value row, Value buf, Value t) const {
    return memref::LoadOp::create(b, loc, buf, ValueRange{row, t});
  }
  void store(OpBuilder &b, Value row, Value v, Value buf, Value t) const {
    memref::StoreOp::create(b, loc, v, buf, ValueRange{row, t});
  }
  /// (rank, index) a is worse than b: lower rank, or equal rank and a
  /// higher index.
  Value worse(OpBuilder &ob, Value ar, Value ai, Value br, Value bi) const {
    Value lower =
        arith::CmpFOp::create(ob, loc, arith::CmpFPredicate::OLT, ar, br);
    Value equal =
        arith::CmpFOp::create(ob, loc, arith::CmpFPredicate::OEQ, ar, br);
    Value later =
        arith::CmpIOp::create(ob, loc, arith::CmpIPredicate::sgt, ai, bi);
    return arith::OrIOp::create(ob, loc, lower,
                                arith::AndIOp::create(ob, loc, equal, later));
  }
  // Sifts `item` down from slot 0 of the heap of `size` slots.
  void siftDown(OpBuilder &ob, Value row, Candidate item, Value size) const {
    Value c1 = idx(ob, 1), c2 = idx(ob, 2);
    Type indexType = ob.getIndexType();
    auto loop = scf::WhileOp::create(
        ob, loc, TypeRange{indexType, indexType},
        ValueRange{idx(ob, 0), idx(ob, 0)},
        [&](OpBuilder &wb, Location wl, ValueRange args) {
          Value p = args[0];
          Value left = arith::AddIOp::create(
              wb, wl, arith::MulIOp::create(wb, wl, p, c2), c1);
          Value hasLeft = arith::CmpIOp::create(
              wb, wl, arith::CmpIPredicate::ult, left, size);
          auto pick = scf::IfOp::create(
              wb, wl, hasLeft,
              [&](OpBuilder &tb, Location tl) {
                Value right = arith::AddIOp::create(tb, tl, left, c1);
                Value hasRight = arith::CmpIOp::create(
                    tb, tl, arith::CmpIPredicate::ult, right, size);
                auto child = scf::IfOp::create(
                    tb, tl, hasRight,
                    [&](OpBuilder &rb, Location rl) {
                      Value rightWorse = worse(rb, load(rb, row, ranks, right),
                                               load(rb, row, idxs, right),
                                               load(rb, row, ranks, left),
                                               load(rb, row, idxs, left));
                      scf::YieldOp::create(
                          rb, rl,
                          ValueRange{arith::SelectOp::create(rb, rl, rightWorse,
                                                             right, left)});
                    },
                    [&](OpBuilder &rb, Location rl) {
                      scf::YieldOp::create(rb, rl, ValueRange{left});
                    });
                Value c = child.getResult(0);
                Value move =
                    worse(tb, load(tb, row, ranks, c), load(tb, row, idxs, c),
                          item.rank, item.index);
                scf::YieldOp::create(tb, tl, ValueRange{move, c});
              },
              [&](OpBuilder &tb, Location tl) {
                Value no =
                    arith::ConstantOp::create(tb, tl, tb.getBoolAttr(false));
                scf::YieldOp::create(tb, tl, ValueRange{no, p});
              });
          scf::ConditionOp::create(wb, wl, pick.getResult(0),
                                   SmallVector<Value>{p, pick.getResult(1)});
        },
        [&](OpBuilder &wb, Location wl, ValueRange args) {
          Value p = args[0], c = args[1];
          store(wb, row, load(wb, row, ranks, c), ranks, p);
          store(wb, row, load(wb, row, idxs, c), idxs, p);
          if (vals)
            store(wb, row, load(wb, row, vals, c), vals, p);
          scf::YieldOp::create(wb, wl, ValueRange{c, c});
        });
    Value p = loop.getResult(0);
    store(ob, row, item.rank, ranks, p);
    store(ob, row, item.index, idxs, p);
    if (vals)
      store(ob, row, item.value, vals, p);
  }
  Location loc;
  int64_t k;
  Value ranks, idxs, vals;
};

void emitRowTopK(OpBuilder &b, Location loc, Value row, Value count, int64_t k,
                 CandidateFn candidate, Value ranks, Value idxs, Value vals,
                 ScreenFn screen = nullptr) {
  RowTopK topk(loc, k, ranks, idxs, vals);
  topk.init(b, row);
  Type f32 = cast<MemRefType>(ranks.getType()).getElementType();
  Value worst = negInfOf(b, loc, f32);
  Value from = arith::ConstantIndexOp::create(b, loc, 0);
  if (screen) {
    // Whole blocks, screened; the count mod kScreenLanes left go by one
    // at a time below.
    Value blocked = arith::SubIOp::create(
        b, loc, count,
        arith::RemUIOp::create(
            b, loc, count,
            arith::ConstantIndexOp::create(b, loc, kScreenLanes)));
    worst = scf::ForOp::create(
                b, loc, from, blocked,
                arith::ConstantIndexOp::create(b, loc, kScreenLanes),
                ValueRange{worst},
                [&](OpBuilder &sb, Location sl, Value t, ValueRange w) {
                  scf::YieldOp::create(
                      sb, sl,
                      ValueRange{topk.screened(sb, row, t, screen(sb, sl, t),
                                               w[0], candidate)});
                })
                .getResult(0);
    from = blocked;
  }
  topk.visit(b, row, from, count, worst, candidate);
  topk.finish(b, row);
}

//===----------------------------------------------------------------------===//
// Dense ops
//===----------------------------------------------------------------------===//

/// Register-blocked product C[M, N] = A[M, K] · B[K, N] on row-major
/// buffers, N a multiple of vecs·lanes. B is first packed panel by panel
/// (each panel of vecs·lanes columns contiguous [K, vecs·lanes], so that
/// walking k stays in a few pages); then, for blocks of rows of A (kept in
/// cache), every panel goes by and groups of kRows rows accumulate kRows ×
/// vecs vectors in registers over k: broadcast A[i, k], fused multiply-add
/// with the panel's row k. The m mod kRows rows left over form one smaller
/// block per panel. `vecs` is 2 with 16 vector registers (AVX2: 12
/// accumulators) and 4 with 32 (AVX-512: 24 accumulators, half the
/// broadcasts per multiply-add). The epilogue adds `bias[N]` (a buffer,
/// when given) and clamps at zero (`relu`) as the registers are stored.
constexpr int64_t kRows = 6;
/// Rows of the packed panel between a prefetch and its use: 8 rows of 64
/// floats are 2 KiB ahead, about 100 cycles of the 6 × 4 kernel. Measured
/// on a Xeon with AVX-512, one thread: 4, 8 and 16 rows each made the
/// product about 10% faster than no prefetch.
constexpr int64_t kPrefetch = 8;
/// A long K (a static K above 2·kDepth, without an epilogue) is cut into
/// chunks of about kDepth, each run over every panel before the next, the
/// partial sums stored in C and read back: a chunk of a panel (kDepth · 64
/// floats, 128 KiB) and of a row block's A (96 · kDepth floats) stay in
/// L2 (512 KiB on a Zen 3) while the row block's groups of rows take
/// turns with them. Uncut, the decode of dense codes (K = n = 16384) reads
/// a 4 MiB panel from L3 for every group of kRows rows.
constexpr int64_t kDepth = 512;

/// Where emitPanelGemm's results go besides C (when C is given). `tile`
/// takes rows [r0, r0 + rows) of the columns [col, col + vecs·lanes) (bias
/// and clamp applied) from rows [0, rows) of `buf` (the packed kernel's
/// [kRows, vecs·lanes] buffer, or a view of C in the streaming one); `begin`
/// runs for each row before its first tile and `end` after its last. With an
/// epilogue, one work item takes all the columns of its rows, and the tiles
/// of a row come with increasing columns. `tile` is emitted twice (full
/// groups of rows, and the rows left over), not once per kernel shape.
struct PanelEpilogue {
  function_ref<void(OpBuilder &, Location, Value row)> begin, end;
  function_ref<void(OpBuilder &, Location, Value buf, Value r0, Value rows,
                    Value col)>
      tile;
};

/// Products with fewer rows than this stream B instead of packing it
/// (emitStreamGemm).
constexpr int64_t kStreamRows = 32;
/// Rows of B that the streaming kernel reads side by side: one vector of
/// each is multiplied into every row of C while it is in a register.
constexpr int64_t kStreamDepth = 8;

/// C[M, N] = A[M, K] · B[K, N] for a few rows (M < kStreamRows): the
/// packed kernel below copies all of B before it uses each panel once per
/// group of kRows rows, which for one row costs four times the product
/// itself. Here every thread takes a range of columns and walks down B
/// kStreamDepth rows at a time, reading each row of its range once, in
/// order (so B streams from memory at the hardware prefetchers' pace),
/// while the range of C (M · range floats, 64 KiB at most for N = 16384)
/// stays in L1 or L2. Bias and clamp are
/// applied when the range is done; with an epilogue, the rows of C then
/// go by in tiles of kRows × cols, as from the packed kernel.
void emitStreamGemm(OpBuilder &b, Location loc, Value a, Value bm, Value c,
                    Value m, Value k, Value n, int64_t lanes, int64_t cols,
                    Value bias, bool relu, const PanelEpilogue *epilogue) {
  Type f32 = b.getF32Type();
  auto vecType = VectorType::get({lanes}, f32);
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, loc, v);
  };
  auto minU = [&](OpBuilder &ob, Value x, Value y) -> Value {
    return arith::MinUIOp::create(ob, loc, x, y);
  };
  Value zero = arith::ConstantOp::create(
      b, loc, DenseElementsAttr::get(vecType, b.getF32FloatAttr(0.0)));
  // The sums, rows one vector longer than N: with N a multiple of 1024,
  // the load of a vector of one row and the store to the same vector of
  // the row before would be 4 KiB apart, which the CPU's memory
  // disambiguation takes for the same address, and every row would wait
  // on the one before.
  Value sums = memref::AllocOp::create(
      b, loc,
      MemRefType::get({ShapedType::kDynamic, ShapedType::kDynamic}, f32),
      ValueRange{m, arith::AddIOp::create(b, loc, n, idx(b, lanes))});
  Value out = c ? c : sums;
  // Ranges of whole panels of columns, at most 32 (a few per thread).
  Value panels = arith::DivUIOp::create(b, loc, n, idx(b, cols));
  Value span = arith::MulIOp::create(
      b, loc,
      arith::MaxUIOp::create(
          b, loc, arith::CeilDivUIOp::create(b, loc, panels, idx(b, 32)),
          idx(b, 1)),
      idx(b, cols));
  // Rows [k0, k0 + depth) of B into the range's columns of the sums: one
  // vector of each row of B at a time, multiplied into every row.
  auto rowsOfB = [&](OpBuilder &ob, Location l, Value j0, Value j1, Value k0,
                     int64_t depth) {
    scf::ForOp::create(
        ob, l, j0, j1, idx(ob, lanes), ValueRange{},
        [&](OpBuilder &jb, Location jl, Value j, ValueRange) {
          SmallVector<Value> w;
          for (int64_t d = 0; d < depth; ++d)
            w.push_back(vector::LoadOp::create(
                jb, jl, vecType, bm,
                ValueRange{arith::AddIOp::create(jb, jl, k0, idx(jb, d)), j}));
          forRange(jb, jl, idx(jb, 0), m, [&](OpBuilder &rb, Value r) {
            Value acc =
                vector::LoadOp::create(rb, jl, vecType, sums, ValueRange{r, j});
            for (int64_t d = 0; d < depth; ++d) {
              Value x = memref::LoadOp::create(
                  rb, jl, a,
                  ValueRange{r, arith::AddIOp::create(rb, jl, k0, idx(rb, d))});
              acc = vector::FMAOp::create(
                  rb, jl, vector::BroadcastOp::create(rb, jl, vecType, x), w[d],
                  acc);
            }
            vector::StoreOp::create(rb, jl, acc, sums, ValueRange{r, j});
          });
          scf::YieldOp::create(jb, jl);
        });
  };
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{n}, ValueRange{span},
      [&](OpBuilder &pb, Location l, ValueRange ivs) {
        Value j0 = ivs[0];
        Value j1 = minU(pb, arith::AddIOp::create(pb, l, j0, span), n);
        auto eachVector =
            [&](OpBuilder &ob,
                function_ref<void(OpBuilder &, Value, Value)> fn) {
              forRange(ob, l, idx(ob, 0), m, [&](OpBuilder &rb, Value r) {
                scf::ForOp::create(
                    rb, l, j0, j1, idx(rb, lanes), ValueRange{},
                    [&](OpBuilder &jb, Location, Value j, ValueRange) {
                      fn(jb, r, j);
                      scf::YieldOp::create(jb, l);
                    });
              });
            };
        eachVector(pb, [&](OpBuilder &jb, Value r, Value j) {
          vector::StoreOp::create(jb, l, zero, sums, ValueRange{r, j});
        });
        Value kFull = arith::MulIOp::create(
            pb, l, arith::DivUIOp::create(pb, l, k, idx(pb, kStreamDepth)),
            idx(pb, kStreamDepth));
        scf::ForOp::create(
            pb, l, idx(pb, 0), kFull, idx(pb, kStreamDepth), ValueRange{},
            [&](OpBuilder &kb, Location kl, Value k0, ValueRange) {
              rowsOfB(kb, kl, j0, j1, k0, kStreamDepth);
              scf::YieldOp::create(kb, kl);
            });
        forRange(pb, l, kFull, k, [&](OpBuilder &kb, Value k0) {
          rowsOfB(kb, l, j0, j1, k0, 1);
        });
        if (bias || relu || out != sums)
          eachVector(pb, [&](OpBuilder &jb, Value r, Value j) {
            Value v =
                vector::LoadOp::create(jb, l, vecType, sums, ValueRange{r, j});
            if (bias)
              v = arith::AddFOp::create(
                  jb, l, v,
                  vector::LoadOp::create(jb, l, vecType, bias, ValueRange{j}));
            if (relu)
              v = arith::MaximumFOp::create(jb, l, v, zero);
            vector::StoreOp::create(jb, l, v, out, ValueRange{r, j});
          });
      });
  if (!epilogue)
    return;
  // Groups of kRows rows, each tile a view of C.
  Value groups = arith::CeilDivUIOp::create(b, loc, m, idx(b, kRows));
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{groups}, ValueRange{idx(b, 1)},
      [&](OpBuilder &gb, Location l, ValueRange ivs) {
        Value r0 = arith::MulIOp::create(gb, l, ivs[0], idx(gb, kRows));
        Value rows = arith::SubIOp::create(
            gb, l,
            minU(gb, arith::AddIOp::create(gb, l, r0, idx(gb, kRows)), m), r0);
        Value r1 = arith::AddIOp::create(gb, l, r0, rows);
        forRange(gb, l, r0, r1,
                 [&](OpBuilder &rb, Value r) { epilogue->begin(rb, l, r); });
        scf::ForOp::create(
            gb, l, idx(gb, 0), n, idx(gb, cols), ValueRange{},
            [&](OpBuilder &jb, Location jl, Value j, ValueRange) {
              Value tile = memref::SubViewOp::create(
                  jb, jl, out, ArrayRef<OpFoldResult>{r0, j},
                  ArrayRef<OpFoldResult>{rows, jb.getIndexAttr(cols)},
                  ArrayRef<OpFoldResult>{jb.getIndexAttr(1),
                                         jb.getIndexAttr(1)});
              epilogue->tile(jb, jl, tile, r0, rows, j);
              scf::YieldOp::create(jb, jl);
            });
        forRange(gb, l, r0, r1,
                 [&](OpBuilder &rb, Value r) { epilogue->end(rb, l, r); });
      });
}

void emitPackedGemm(OpBuilder &b, Location loc, Value a, Value bm, Value c,
                    Value m, Value k, Value n, int64_t lanes, int64_t vecs,
                    Value bias, bool relu, const PanelEpilogue *epilogue) {
  Type f32 = b.getF32Type();
  auto vecType = VectorType::get({lanes}, f32);
  int64_t cols = vecs * lanes;
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, loc, v);
  };
  auto minU = [&](OpBuilder &ob, Value x, Value y) -> Value {
    return arith::MinUIOp::create(ob, loc, x, y);
  };
  auto ceilDiv = [&](OpBuilder &ob, Value x, Value y) -> Value {
    return arith::CeilDivUIOp::create(ob, loc, x, y);
  };
  // B packed panel by panel: packed[p·K + kk, :] = B[kk, p·cols : (p+1)·cols],
  // and kPrefetch rows more, so that the kernel's prefetch of row
  // kk + kPrefetch needs no clamp at the end of the last panel. Aligned to
  // a cache line for the packing's non-temporal stores.
  Value panels = arith::DivUIOp::create(b, loc, n, idx(b, cols));
  Value packedRows = arith::AddIOp::create(
      b, loc, arith::MulIOp::create(b, loc, panels, k), idx(b, kPrefetch));
  Value packed = memref::AllocOp::create(
      b, loc, MemRefType::get({ShapedType::kDynamic, cols}, f32),
      ValueRange{packedRows}, ValueRange{}, b.getI64IntegerAttr(64));
  // The same buffer as one run of floats, for the next panel's prefetch.
  Value packedFlat = memref::CollapseShapeOp::create(
      b, loc, packed, ArrayRef<ReassociationIndices>{{0, 1}});
  std::optional<int64_t> staticK = getConstantIntValue(k);
  int64_t chunks = staticK && c && !epilogue && *staticK > 2 * kDepth
                       ? (*staticK + kDepth - 1) / kDepth
                       : 1;
  // Rows [r0, r0 + rows) of the block of columns [j, j + cols) over
  // [k0, k1) of K, into C (when given) and, with an epilogue, into rows
  // [0, rows) of `tileBuf`. With chunks of K, the sums start from C's
  // (but the first chunk's), and only the last chunk's (`final`) get the
  // bias and the clamp.
  Value tileBuf;
  auto block = [&](OpBuilder &ob, Value r0, int64_t rows, Value j, Value k0,
                   Value k1, bool final) {
    Value p = arith::DivUIOp::create(ob, loc, j, idx(ob, cols));
    Value zero = arith::ConstantOp::create(
        ob, loc, DenseElementsAttr::get(vecType, ob.getF32FloatAttr(0.0)));
    SmallVector<Value> colOf;
    for (int64_t v = 0; v < vecs; ++v)
      colOf.push_back(arith::AddIOp::create(ob, loc, j, idx(ob, v * lanes)));
    SmallVector<Value> init(rows * vecs, zero);
    if (chunks > 1) {
      Value fromC = arith::CmpIOp::create(ob, loc, arith::CmpIPredicate::ne, k0,
                                          idx(ob, 0));
      init = scf::IfOp::create(
                 ob, loc, fromC,
                 [&](OpBuilder &tb, Location tl) {
                   SmallVector<Value> sums;
                   for (int64_t r = 0; r < rows; ++r) {
                     Value row = arith::AddIOp::create(tb, tl, r0, idx(tb, r));
                     for (int64_t v = 0; v < vecs; ++v)
                       sums.push_back(vector::LoadOp::create(
                           tb, tl, vecType, c, ValueRange{row, colOf[v]}));
                   }
                   scf::YieldOp::create(tb, tl, sums);
                 },
                 [&](OpBuilder &eb, Location el) {
                   scf::YieldOp::create(eb, el, init);
                 })
                 .getResults();
    }
    // The next panel comes from memory (or L3) while this one is in use:
    // each group of rows asks for 1/linesPerRow of its cache lines, group g
    // for lines [g·K, (g+1)·K), one per k, into L2.
    int64_t linesPerRow = std::max<int64_t>(cols / 16, 1);
    Value nextP = minU(ob, arith::AddIOp::create(ob, loc, p, idx(ob, 1)),
                       arith::SubIOp::create(ob, loc, panels, idx(ob, 1)));
    Value group = arith::RemUIOp::create(
        ob, loc, arith::DivUIOp::create(ob, loc, r0, idx(ob, kRows)),
        idx(ob, linesPerRow));
    Value lineBase = arith::MulIOp::create(
        ob, loc, group, arith::SubIOp::create(ob, loc, k1, k0));
    // Row kk of this panel is packed row rowBase + kk; the group's line
    // for step kk is at float nextBase + 16·kk of the flat buffer.
    Value rowBase = arith::MulIOp::create(ob, loc, p, k);
    // (nextP·K + k0)·cols + 16·(lineBase - k0).
    Value nextBase = arith::AddIOp::create(
        ob, loc,
        arith::MulIOp::create(
            ob, loc,
            arith::AddIOp::create(ob, loc,
                                  arith::MulIOp::create(ob, loc, nextP, k), k0),
            idx(ob, cols)),
        arith::MulIOp::create(ob, loc,
                              arith::SubIOp::create(ob, loc, lineBase, k0),
                              idx(ob, 16)));
    auto loop = scf::ForOp::create(
        ob, loc, k0, k1, idx(ob, 1), init,
        [&](OpBuilder &kb, Location l, Value kk, ValueRange acc) {
          Value row = arith::AddIOp::create(kb, l, rowBase, kk);
          SmallVector<Value> bv;
          for (int64_t v = 0; v < vecs; ++v)
            bv.push_back(vector::LoadOp::create(
                kb, l, vecType, packed, ValueRange{row, idx(kb, v * lanes)}));
          // The panel (K · cols floats) lives in L2; the hardware does
          // not bring it to L1 early enough, so every row kPrefetch ahead
          // is asked for (past the last panel, the padding rows).
          Value ahead = arith::AddIOp::create(kb, l, row, idx(kb, kPrefetch));
          for (int64_t v = 0; v < vecs; ++v)
            memref::PrefetchOp::create(kb, l, packed,
                                       ValueRange{ahead, idx(kb, v * lanes)},
                                       /*isWrite=*/false, /*locality=*/3,
                                       /*isDataCache=*/true);
          Value line = arith::AddIOp::create(
              kb, l, nextBase, arith::MulIOp::create(kb, l, kk, idx(kb, 16)));
          memref::PrefetchOp::create(kb, l, packedFlat, ValueRange{line},
                                     /*isWrite=*/false, /*locality=*/2,
                                     /*isDataCache=*/true);
          SmallVector<Value> next;
          for (int64_t r = 0; r < rows; ++r) {
            Value row = arith::AddIOp::create(kb, l, r0, idx(kb, r));
            Value s = memref::LoadOp::create(kb, l, a, ValueRange{row, kk});
            Value sv = vector::BroadcastOp::create(kb, l, vecType, s);
            for (int64_t v = 0; v < vecs; ++v)
              next.push_back(
                  vector::FMAOp::create(kb, l, sv, bv[v], acc[vecs * r + v]));
          }
          scf::YieldOp::create(kb, l, next);
        });
    SmallVector<Value> biasOf;
    for (int64_t v = 0; v < vecs; ++v)
      if (bias && final)
        biasOf.push_back(vector::LoadOp::create(ob, loc, vecType, bias,
                                                ValueRange{colOf[v]}));
    for (int64_t r = 0; r < rows; ++r) {
      Value row = arith::AddIOp::create(ob, loc, r0, idx(ob, r));
      for (int64_t v = 0; v < vecs; ++v) {
        Value out = loop.getResult(vecs * r + v);
        if (!biasOf.empty())
          out = arith::AddFOp::create(ob, loc, out, biasOf[v]);
        if (relu && final)
          out = arith::MaximumFOp::create(ob, loc, out, zero);
        if (epilogue)
          vector::StoreOp::create(ob, loc, out, tileBuf,
                                  ValueRange{idx(ob, r), idx(ob, v * lanes)});
        if (c)
          vector::StoreOp::create(ob, loc, out, c, ValueRange{row, colOf[v]});
      }
    }
  };
  // Pack: ranges of panels in parallel; within one, row by row of B
  // (contiguous reads of the range's columns). The stores are
  // non-temporal, of whole aligned lines (a panel row is one or more
  // lines; the buffer is 64-byte aligned): they do not read each line
  // before writing it, a third of the packing's traffic, and the panels
  // come back from memory or L3 in the product anyway. Measured on a Xeon
  // with AVX-512: the packing's share of an encode 4.1% → 2.6%, the
  // encode 0.94× to 1.01× the time in eight interleaved runs.
  // At most 64 ranges; the step is at least 1 when there is no panel.
  Value packSpan =
      arith::MaxUIOp::create(b, loc, ceilDiv(b, panels, idx(b, 64)), idx(b, 1));
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{panels}, ValueRange{packSpan},
      [&](OpBuilder &rb, Location rl, ValueRange ivs) {
        Value p0 = ivs[0];
        Value p1 =
            minU(rb, arith::AddIOp::create(rb, rl, p0, packSpan), panels);
        scf::ForOp::create(
            rb, rl, idx(rb, 0), k, idx(rb, 1), ValueRange{},
            [&](OpBuilder &kb, Location l, Value kk, ValueRange) {
              scf::ForOp::create(
                  kb, l, p0, p1, idx(kb, 1), ValueRange{},
                  [&](OpBuilder &pb, Location pl, Value p, ValueRange) {
                    Value j = arith::MulIOp::create(pb, pl, p, idx(pb, cols));
                    Value row = arith::AddIOp::create(
                        pb, pl, arith::MulIOp::create(pb, pl, p, k), kk);
                    for (int64_t v = 0; v < vecs; ++v) {
                      Value col =
                          arith::AddIOp::create(pb, pl, j, idx(pb, v * lanes));
                      Value x = vector::LoadOp::create(pb, pl, vecType, bm,
                                                       ValueRange{kk, col});
                      vector::StoreOp::create(
                          pb, pl, x, packed,
                          ValueRange{row, idx(pb, v * lanes)},
                          /*nontemporal=*/true, llvm::Align(lanes * 4));
                    }
                    scf::YieldOp::create(pb, pl);
                  });
              scf::YieldOp::create(kb, l);
            });
      });
  // Row blocks of about kRows·kBlocks rows (their A rows stay in L2 while
  // every panel goes by): the m div kRows groups of rows shared out evenly
  // (block b takes groups [b·G / blocks, (b+1)·G / blocks)), so that
  // contiguous runs of blocks, as threads take them, are as even as can be.
  // The last block also takes the m mod kRows rows left over, one smaller
  // block per panel.
  // The row blocks write disjoint rows of C: they run in parallel
  // (scf.parallel, OpenMP threads on the CPU), each output still computed
  // by one thread in one order, so results do not depend on the threads.
  // The work items are (row block, range of panels) pairs: with row
  // blocks alone, B = 1024 rows gives 11 blocks, 6 on one thread and 5 on
  // the other. Cutting the panels into kPanelParts ranges too balances the
  // threads, and every panel is still streamed once per row block. An
  // epilogue needs every column of a row in one item: there, row blocks
  // are half as high instead.
  int64_t kBlocks = epilogue ? 8 : 16;
  int64_t kPanelParts = epilogue ? 1 : 4;
  Value panelParts = arith::MaxUIOp::create(
      b, loc, minU(b, panels, idx(b, kPanelParts)), idx(b, 1));
  Value spanCols = arith::MulIOp::create(b, loc, ceilDiv(b, panels, panelParts),
                                         idx(b, cols));
  Value rem = arith::RemUIOp::create(b, loc, m, idx(b, kRows));
  Value full = arith::SubIOp::create(b, loc, m, rem);
  Value groups = arith::DivUIOp::create(b, loc, m, idx(b, kRows));
  Value rowBlocks = ceilDiv(b, m, idx(b, kRows * kBlocks));
  Value items = arith::MulIOp::create(b, loc, rowBlocks, panelParts);
  // The epilogue's tiles, one per work item.
  Value tiles;
  if (epilogue)
    tiles = memref::AllocOp::create(
        b, loc, MemRefType::get({ShapedType::kDynamic, kRows, cols}, f32),
        ValueRange{items});
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{items}, ValueRange{idx(b, 1)},
      [&](OpBuilder &ob, Location l, ValueRange ivs) {
        Value blockNo = arith::DivUIOp::create(ob, l, ivs[0], panelParts);
        Value part = arith::RemUIOp::create(ob, l, ivs[0], panelParts);
        auto groupStart = [&](Value block) -> Value {
          Value g = arith::DivUIOp::create(
              ob, l, arith::MulIOp::create(ob, l, block, groups), rowBlocks);
          return arith::MulIOp::create(ob, l, g, idx(ob, kRows));
        };
        Value i0 = groupStart(blockNo);
        Value i1 =
            groupStart(arith::AddIOp::create(ob, l, blockNo, idx(ob, 1)));
        Value last = arith::CmpIOp::create(
            ob, l, arith::CmpIPredicate::eq, blockNo,
            arith::SubIOp::create(ob, l, rowBlocks, idx(ob, 1)));
        Value rowEnd = arith::SelectOp::create(ob, l, last, m, i1);
        auto eachRow =
            [&](function_ref<void(OpBuilder &, Location, Value)> body) {
              scf::ForOp::create(
                  ob, l, i0, rowEnd, idx(ob, 1), ValueRange{},
                  [&](OpBuilder &rb, Location rl, Value r, ValueRange) {
                    body(rb, rl, r);
                    scf::YieldOp::create(rb, rl);
                  });
            };
        if (epilogue) {
          eachRow(epilogue->begin);
          tileBuf = memref::SubViewOp::create(
              ob, l, tiles,
              ArrayRef<OpFoldResult>{ivs[0], ob.getIndexAttr(0),
                                     ob.getIndexAttr(0)},
              ArrayRef<OpFoldResult>{ob.getIndexAttr(1), ob.getIndexAttr(kRows),
                                     ob.getIndexAttr(cols)},
              ArrayRef<OpFoldResult>{ob.getIndexAttr(1), ob.getIndexAttr(1),
                                     ob.getIndexAttr(1)});
          tileBuf = memref::CollapseShapeOp::create(
              ob, l, tileBuf, ArrayRef<ReassociationIndices>{{0, 1}, {2}});
        }
        Value j0 = arith::MulIOp::create(ob, l, part, spanCols);
        Value j1 = minU(ob, arith::AddIOp::create(ob, l, j0, spanCols), n);
        // The item's panels over [k0, k1) of K.
        auto panelsOver = [&](OpBuilder &kb, Value k0, Value k1, bool final) {
          scf::ForOp::create(
              kb, l, j0, j1, idx(kb, cols), ValueRange{},
              [&](OpBuilder &jb, Location jl, Value j, ValueRange) {
                scf::ForOp::create(
                    jb, jl, i0, i1, idx(jb, kRows), ValueRange{},
                    [&](OpBuilder &ib, Location il, Value i, ValueRange) {
                      block(ib, i, kRows, j, k0, k1, final);
                      if (epilogue)
                        epilogue->tile(ib, il, tileBuf, i, idx(ib, kRows), j);
                      scf::YieldOp::create(ib, il);
                    });
                for (int64_t rows = 1; rows < kRows; ++rows) {
                  Value these = arith::AndIOp::create(
                      jb, jl, last,
                      arith::CmpIOp::create(jb, jl, arith::CmpIPredicate::eq,
                                            rem, idx(jb, rows)));
                  scf::IfOp::create(jb, jl, these,
                                    [&](OpBuilder &tb, Location tl) {
                                      block(tb, full, rows, j, k0, k1, final);
                                      scf::YieldOp::create(tb, tl);
                                    });
                }
                if (epilogue) {
                  Value any = arith::AndIOp::create(
                      jb, jl, last,
                      arith::CmpIOp::create(jb, jl, arith::CmpIPredicate::ne,
                                            rem, idx(jb, 0)));
                  scf::IfOp::create(
                      jb, jl, any, [&](OpBuilder &tb, Location tl) {
                        epilogue->tile(tb, tl, tileBuf, full, rem, j);
                        scf::YieldOp::create(tb, tl);
                      });
                }
                scf::YieldOp::create(jb, jl);
              });
        };
        if (chunks == 1) {
          panelsOver(ob, idx(ob, 0), k, true);
        } else {
          int64_t depth = (*staticK + chunks - 1) / chunks;
          scf::ForOp::create(
              ob, l, idx(ob, 0), idx(ob, depth * (chunks - 1)), idx(ob, depth),
              ValueRange{}, [&](OpBuilder &kb, Location, Value k0, ValueRange) {
                panelsOver(kb, k0,
                           arith::AddIOp::create(kb, l, k0, idx(kb, depth)),
                           false);
                scf::YieldOp::create(kb, l);
              });
          panelsOver(ob, idx(ob, depth * (chunks - 1)), k, true);
        }
        if (epilogue)
          eachRow(epilogue->end);
      });
}

/// C[M, N] = A[M, K] · B[K, N] (plus bias, clamped, through `epilogue`):
/// the streaming kernel for fewer than kStreamRows rows, else the packed
/// one, chosen at run time (canonicalisation folds the choice when M is a
/// constant).
void emitPanelGemm(OpBuilder &b, Location loc, Value a, Value bm, Value c,
                   Value m, Value k, Value n, int64_t lanes, int64_t vecs,
                   Value bias, bool relu,
                   const PanelEpilogue *epilogue = nullptr) {
  Value few = arith::CmpIOp::create(
      b, loc, arith::CmpIPredicate::ult, m,
      arith::ConstantIndexOp::create(b, loc, kStreamRows));
  scf::IfOp::create(
      b, loc, few,
      [&](OpBuilder &tb, Location tl) {
        emitStreamGemm(tb, tl, a, bm, c, m, k, n, lanes, vecs * lanes, bias,
                       relu, epilogue);
        scf::YieldOp::create(tb, tl);
      },
      [&](OpBuilder &eb, Location el) {
        emitPackedGemm(eb, el, a, bm, c, m, k, n, lanes, vecs, bias, relu,
                       epilogue);
        scf::YieldOp::create(eb, el);
      });
}

/// out[i, j] = Σ_k in[i, k] · w[k, j]. f32 with a static width that is a
/// multiple of two vectors: the register-blocked kernel above, whose
/// epilogue also computes the `sae.bias_add` that takes the product as its
/// only use and the `sae.relu` that takes that sum as its only use (the
/// pre-activation and ReLU of an encoder), so that the [B, n] product is
/// not written and read again by separate passes; otherwise a
/// linalg.generic with loops (i, k, j).
struct LinearLowering : OpRewritePattern<LinearOp> {
  LinearLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx), lanes(lanes) {}
  int64_t lanes;
  LogicalResult matchAndRewrite(LinearOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    auto inType = op.getInput().getType();
    auto outType = op.getType();
    int64_t kDim = inType.getDimSize(1), nDim = outType.getDimSize(1);
    // Four vectors per row need 24 accumulators: only with 32 registers
    // (AVX-512, 16 lanes).
    int64_t vecs = lanes >= 16 && nDim % (4 * lanes) == 0 ? 4 : 2;
    if (inType.getElementType().isF32() && !ShapedType::isDynamic(nDim) &&
        nDim % (vecs * lanes) == 0) {
      // The chain op → bias_add → relu, each link the only use of the last.
      Operation *root = op;
      auto onlyUser = [](Operation *def) -> Operation * {
        return def->hasOneUse() ? *def->getUsers().begin() : nullptr;
      };
      auto biasAdd = dyn_cast_or_null<BiasAddOp>(onlyUser(op));
      if (biasAdd && biasAdd.getInput() != op.getResult())
        biasAdd = nullptr;
      ReluOp relu =
          biasAdd ? dyn_cast_or_null<ReluOp>(onlyUser(biasAdd)) : nullptr;
      if (biasAdd)
        root = relu ? relu.getOperation() : biasAdd.getOperation();
      // A top-k (without a score) of the chain's end keeps its selection
      // in the product's epilogue instead. As the only use, the [B, n]
      // matrix is then never written; with other uses (AuxK's selection
      // of dead latents), it is written but not read back for the top-k.
      // Those uses must come after the top-k, where the product is built.
      // Shape queries of the chain's end are answered from the product's
      // input and width, wherever they are.
      for (Operation *user : llvm::make_early_inc_range(root->getUsers())) {
        auto dim = dyn_cast<tensor::DimOp>(user);
        std::optional<int64_t> which =
            dim ? dim.getConstantIndex() : std::nullopt;
        if (!which)
          continue;
        rewriter.setInsertionPoint(dim);
        if (*which == 0)
          rewriter.replaceOpWithNewOp<tensor::DimOp>(dim, op.getInput(), 0);
        else
          rewriter.replaceOpWithNewOp<arith::ConstantIndexOp>(dim, nDim);
      }
      TopKOp topk;
      for (Operation *user : root->getUsers()) {
        auto candidate = dyn_cast<TopKOp>(user);
        if (candidate && !candidate.getScore()) {
          topk = candidate;
          break;
        }
      }
      // AuxK's selection reads the dead columns side by side
      // (sae.take_columns): the epilogue writes them there too, when the
      // slots are known before the top-k.
      TakeColumnsOp take;
      bool written = false;
      for (Operation *user : root->getUsers()) {
        if (!topk || user == topk)
          continue;
        auto candidate = dyn_cast<TakeColumnsOp>(user);
        if (!take && candidate && candidate.getInput() == root->getResult(0) &&
            definedBefore(candidate.getSlot(), topk) &&
            definedBefore(candidate.getWidth(), topk))
          take = candidate;
        else
          written = true;
        if (user->getBlock() != topk->getBlock() ||
            !topk->isBeforeInBlock(user))
          topk = nullptr;
      }
      if (!topk)
        take = nullptr;
      // The bias may be defined after the product: build at the end.
      rewriter.setInsertionPoint(topk ? topk.getOperation() : root);
      Value a = toBuffer(rewriter, loc, op.getInput());
      Value w = toBuffer(rewriter, loc, op.getWeight());
      Value bias =
          biasAdd ? toBuffer(rewriter, loc, biasAdd.getBias()) : Value();
      Value m = tensor::DimOp::create(rewriter, loc, op.getInput(), 0);
      SmallVector<Value> dyn;
      if (outType.isDynamicDim(0))
        dyn.push_back(m);
      // The inner dimension is dynamic in weight gradients (xᵀ · dy).
      Value k = ShapedType::isDynamic(kDim)
                    ? tensor::DimOp::create(rewriter, loc, op.getInput(), 1)
                          .getResult()
                    : arith::ConstantIndexOp::create(rewriter, loc, kDim)
                          .getResult();
      Value n = arith::ConstantIndexOp::create(rewriter, loc, nDim);
      if (topk) {
        Value out = written ? allocLike(rewriter, loc, outType, dyn) : Value();
        emitTopKGemm(rewriter, topk, take, a, w, out, m, k, n, vecs, bias,
                     bool(relu));
        if (written)
          rewriter.replaceOp(root, asTensor(rewriter, loc, outType, out));
        else
          rewriter.eraseOp(root);
      } else {
        Value out = allocLike(rewriter, loc, outType, dyn);
        emitPanelGemm(rewriter, loc, a, w, out, m, k, n, lanes, vecs, bias,
                      bool(relu));
        rewriter.replaceOp(root, asTensor(rewriter, loc, outType, out));
      }
      if (relu)
        rewriter.eraseOp(biasAdd);
      if (root != op)
        rewriter.eraseOp(op);
      return success();
    }
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

  /// The product a · w (plus bias, clamped) streamed through `topk`'s
  /// selection (RowTopK), tile by tile: a vector of a row's results that
  /// has none beating the row's worst kept rank costs one comparison.
  /// The codes are the ones TopKLowering selects from the written matrix.
  /// `out` (when given) receives the product as well, and `take` (when
  /// given) its columns: a row's are zeroed before its first tile, then
  /// each column of a tile with a slot in range copies the tile's rows to
  /// that slot, one element at a time (at 10% of the latents taken, a
  /// vector of 16 columns has 1.6 of them on average). A masked scatter of
  /// the whole vector per row instead made the product 3.5-4% slower (a
  /// TopK + AuxK step at d = 768, n = 16384 with 10% dead: 2-3%).
  void emitTopKGemm(PatternRewriter &rewriter, TopKOp topk, TakeColumnsOp take,
                    Value a, Value w, Value out, Value m, Value k, Value n,
                    int64_t vecs, Value bias, bool relu) const {
    Location loc = topk.getLoc();
    CodesType codes = topk.getType();
    bool byMagnitude = topk.getByMagnitude();
    SmallVector<Value> dyn;
    if (codes.getValuesType().isDynamicDim(0))
      dyn.push_back(m);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);
    Value ranks = byMagnitude
                      ? allocLike(rewriter, loc, codes.getValuesType(), dyn)
                      : vals;
    RowTopK select(loc, codes.getK(), ranks, idxs,
                   byMagnitude ? vals : Value());
    Value taken, slots, width;
    if (take) {
      width = take.getWidth();
      slots = toBuffer(rewriter, loc, take.getSlot());
      taken = memref::AllocOp::create(
          rewriter, loc,
          MemRefType::get({ShapedType::kDynamic, ShapedType::kDynamic},
                          rewriter.getF32Type()),
          ValueRange{m, width});
    }
    auto begin = [&](OpBuilder &b, Location l, Value row) {
      select.init(b, row);
      if (taken)
        forRange(b, l, arith::ConstantIndexOp::create(b, l, 0), width,
                 [&](OpBuilder &fb, Value c) {
                   memref::StoreOp::create(
                       fb, l, floatConst(fb, l, fb.getF32Type(), 0), taken,
                       ValueRange{row, c});
                 });
    };
    auto end = [&](OpBuilder &b, Location, Value row) {
      select.finish(b, row);
    };
    // Per row of the tile, blocks of `lanes` columns screened against the
    // worst kept rank.
    auto tile = [&](OpBuilder &b, Location l, Value buf, Value r0, Value rows,
                    Value col) {
      Value c0 = arith::ConstantIndexOp::create(b, l, 0);
      Value c1 = arith::ConstantIndexOp::create(b, l, 1);
      auto vecType = VectorType::get({lanes}, b.getF32Type());
      if (taken) {
        auto slotType = VectorType::get({lanes}, b.getI32Type());
        Value widthVec = vector::BroadcastOp::create(
            b, l, slotType,
            arith::IndexCastOp::create(b, l, b.getI32Type(), width));
        for (int64_t v = 0; v < vecs; ++v) {
          Value at = arith::ConstantIndexOp::create(b, l, v * lanes);
          Value slot = vector::LoadOp::create(
              b, l, slotType, slots,
              ValueRange{arith::AddIOp::create(b, l, col, at)});
          // Slots below 0 are huge unsigned.
          Value inRange = arith::CmpIOp::create(b, l, arith::CmpIPredicate::ult,
                                                slot, widthVec);
          forEachSetLane(
              b, l, inRange, ValueRange{},
              [&](OpBuilder &lb, Location ll, Value lane, ValueRange) {
                Value c = arith::AddIOp::create(lb, ll, lane, at);
                Value to = arith::IndexCastOp::create(
                    lb, ll, lb.getIndexType(),
                    memref::LoadOp::create(
                        lb, ll, slots,
                        ValueRange{arith::AddIOp::create(lb, ll, col, c)}));
                forRange(lb, ll, c0, rows, [&](OpBuilder &fb, Value r) {
                  memref::StoreOp::create(
                      fb, ll,
                      memref::LoadOp::create(fb, ll, buf, ValueRange{r, c}),
                      taken,
                      ValueRange{arith::AddIOp::create(fb, ll, r0, r), to});
                });
                return SmallVector<Value>{};
              });
        }
      }
      scf::ForOp::create(
          b, l, c0, rows, c1, ValueRange{},
          [&](OpBuilder &rb, Location rl, Value r, ValueRange) {
            Value row = arith::AddIOp::create(rb, rl, r0, r);
            Value worst = select.worst(rb, row);
            scf::ForOp::create(
                rb, rl, c0,
                arith::ConstantIndexOp::create(rb, rl, vecs * lanes),
                arith::ConstantIndexOp::create(rb, rl, lanes),
                ValueRange{worst},
                [&](OpBuilder &vb, Location vl, Value v, ValueRange w) {
                  Value vec = vector::LoadOp::create(vb, vl, vecType, buf,
                                                     ValueRange{r, v});
                  Value rank =
                      byMagnitude
                          ? math::AbsFOp::create(vb, vl, vec).getResult()
                          : vec;
                  Value next = select.screened(
                      vb, row, arith::AddIOp::create(vb, vl, col, v), rank,
                      w[0], [&](OpBuilder &cb, Location cl, Value t) {
                        Value x = memref::LoadOp::create(
                            cb, cl, buf,
                            ValueRange{r,
                                       arith::SubIOp::create(cb, cl, t, col)});
                        Value i = arith::IndexCastOp::create(
                            cb, cl, cb.getI32Type(), t);
                        if (!byMagnitude)
                          return Candidate{x, i, Value()};
                        return Candidate{math::AbsFOp::create(cb, cl, x), i, x};
                      });
                  scf::YieldOp::create(vb, vl, ValueRange{next});
                });
            scf::YieldOp::create(rb, rl);
          });
    };
    PanelEpilogue epilogue{begin, end, tile};
    emitPanelGemm(rewriter, loc, a, w, out, m, k, n, lanes, vecs, bias, relu,
                  &epilogue);
    replaceWithCodes(rewriter, topk, codes, vals, idxs);
    if (take)
      rewriter.replaceOp(take, asTensor(rewriter, loc, take.getType(), taken));
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

struct ShiftLowering : OpRewritePattern<ShiftOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ShiftOp op,
                                PatternRewriter &rewriter) const override {
    AffineMap id = rewriter.getMultiDimIdentityMap(op.getType().getRank());
    Value shift = op.getShift();
    rewriter.replaceOp(op, buildElementwise(
                               rewriter, op.getLoc(), op.getInput(),
                               {op.getInput()}, {id},
                               [&](OpBuilder &b, Location l, ValueRange a) {
                                 return arith::AddFOp::create(b, l, a[0], shift)
                                     .getResult();
                               }));
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

/// Tiles of 32 × 32, so that both the reads and the writes stay within a
/// few cache lines per tile (a plain generic reads a column per row).
/// Stores the transpose of the 8 × 8 block in[inRow + r, inCol + c] at
/// out[outRow + c, outCol + r]: eight row loads, three rounds of shuffles
/// (pairs of floats, pairs of pairs, halves; the x86 backend makes them
/// unpack, shufps and vperm2f128) and eight row stores (`streaming`:
/// non-temporal, 32-byte aligned, which write whole cache lines without
/// reading them first when a caller writes a line's halves in turn).
void emitTransposeBlock8(OpBuilder &b, Location loc, Value in, Value out,
                         Value inRow, Value inCol, Value outRow, Value outCol,
                         bool streaming = false) {
  auto vecType = VectorType::get({8}, b.getF32Type());
  auto at = [&](Value base, int64_t off) -> Value {
    return arith::AddIOp::create(b, loc, base,
                                 arith::ConstantIndexOp::create(b, loc, off));
  };
  SmallVector<Value> v;
  for (int64_t r = 0; r < 8; ++r)
    v.push_back(vector::LoadOp::create(b, loc, vecType, in,
                                       ValueRange{at(inRow, r), inCol}));
  // Each round combines vectors `stride` apart with two masks.
  auto round = [&](int64_t stride, ArrayRef<int64_t> lo, ArrayRef<int64_t> hi) {
    SmallVector<Value> next(8);
    for (int64_t r = 0; r < 8; ++r) {
      if (r & stride)
        continue;
      next[r] = vector::ShuffleOp::create(b, loc, v[r], v[r + stride], lo);
      next[r + stride] =
          vector::ShuffleOp::create(b, loc, v[r], v[r + stride], hi);
    }
    v = next;
  };
  round(1, {0, 8, 1, 9, 4, 12, 5, 13}, {2, 10, 3, 11, 6, 14, 7, 15});
  round(2, {0, 1, 8, 9, 4, 5, 12, 13}, {2, 3, 10, 11, 6, 7, 14, 15});
  round(4, {0, 1, 2, 3, 8, 9, 10, 11}, {4, 5, 6, 7, 12, 13, 14, 15});
  // v[r] now holds column c = (r & 1) · 2 + (r & 2) / 2 + (r & 4), i.e.
  // rounds 1 and 2 swapped the roles of bits 0 and 1.
  for (int64_t r = 0; r < 8; ++r) {
    int64_t c = ((r & 1) << 1) | ((r & 2) >> 1) | (r & 4);
    vector::StoreOp::create(
        b, loc, v[r], out, ValueRange{at(outRow, c), outCol}, streaming,
        streaming ? b.getI64IntegerAttr(32) : IntegerAttr());
  }
}

/// out[i, j] = in[j, i] for i < rows, j < cols, on buffers: by tiles of
/// 32 × 32, bands of `tile` output rows in parallel (each writes its own).
/// f32 tiles that are whole go by 8 × 8 blocks in registers; the others
/// element by element.
void emitTranspose(OpBuilder &b, Location loc, Value in, Value out, Value rows,
                   Value cols) {
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, loc, v);
  };
  constexpr int64_t tile = 32;
  bool blocks = cast<MemRefType>(in.getType()).getElementType().isF32();
  auto loop = [&](OpBuilder &ob, Value lo, Value hi, int64_t step,
                  function_ref<void(OpBuilder &, Value)> body) {
    scf::ForOp::create(ob, loc, lo, hi, idx(ob, step), ValueRange{},
                       [&](OpBuilder &nb, Location l, Value iv, ValueRange) {
                         body(nb, iv);
                         scf::YieldOp::create(nb, l);
                       });
  };
  auto end = [&](OpBuilder &ob, Value start, Value bound) -> Value {
    return arith::MinUIOp::create(
        ob, loc, arith::AddIOp::create(ob, loc, start, idx(ob, tile)), bound);
  };
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{rows}, ValueRange{idx(b, tile)},
      [&](OpBuilder &pb, Location, ValueRange ivs) {
        Value i0 = ivs[0];
        loop(pb, idx(pb, 0), cols, tile, [&](OpBuilder &b2, Value j0) {
          auto scalar = [&](OpBuilder &sb) {
            loop(sb, i0, end(sb, i0, rows), 1, [&](OpBuilder &b3, Value i) {
              loop(b3, j0, end(b3, j0, cols), 1, [&](OpBuilder &b4, Value j) {
                Value v = memref::LoadOp::create(b4, loc, in, ValueRange{j, i});
                memref::StoreOp::create(b4, loc, v, out, ValueRange{i, j});
              });
            });
          };
          if (!blocks) {
            scalar(b2);
            return;
          }
          auto whole = [&](Value start, Value bound) {
            return arith::CmpIOp::create(
                b2, loc, arith::CmpIPredicate::ule,
                arith::AddIOp::create(b2, loc, start, idx(b2, tile)), bound);
          };
          scf::IfOp::create(
              b2, loc,
              arith::AndIOp::create(b2, loc, whole(i0, rows), whole(j0, cols)),
              [&](OpBuilder &tb, Location tl) {
                for (int64_t bi = 0; bi < tile; bi += 8)
                  for (int64_t bj = 0; bj < tile; bj += 8) {
                    Value i = arith::AddIOp::create(tb, tl, i0, idx(tb, bi));
                    Value j = arith::AddIOp::create(tb, tl, j0, idx(tb, bj));
                    emitTransposeBlock8(tb, tl, in, out, j, i, i, j);
                  }
                scf::YieldOp::create(tb, tl);
              },
              [&](OpBuilder &eb, Location el) {
                scalar(eb);
                scf::YieldOp::create(eb, el);
              });
        });
      });
}

struct TransposeLowering : OpRewritePattern<TransposeOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TransposeOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    auto type = op.getType();
    // A dynamic (batch) dimension moves with the transposition.
    SmallVector<Value> dyn;
    Value rows = tensor::DimOp::create(rewriter, loc, op.getInput(), 1);
    Value cols = tensor::DimOp::create(rewriter, loc, op.getInput(), 0);
    if (type.isDynamicDim(0))
      dyn.push_back(rows);
    if (type.isDynamicDim(1))
      dyn.push_back(cols);
    Value out = allocLike(rewriter, loc, type, dyn);
    emitTranspose(rewriter, loc, toBuffer(rewriter, loc, op.getInput()), out,
                  rows, cols);
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
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
    Value sumSq = rowDots(rewriter, loc, op.getInput(), op.getInput());
    // Scaled in place (the input is the output), so that the training step
    // renormalises the decoder in its own buffer.
    Value result = buildGeneric(
        rewriter, loc, {sumSq}, op.getInput(),
        {AffineMap::get(2, 0, {i}, ctx), AffineMap::get(2, 0, {i, j}, ctx)},
        {utils::IteratorType::parallel, utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value zero = arith::ConstantOp::create(b, l, b.getFloatAttr(elt, 0));
          Value isZero = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OLE,
                                               a[0], zero);
          Value inv = math::RsqrtOp::create(b, l, a[0]);
          Value scaled = arith::MulFOp::create(b, l, a[1], inv);
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
    rewriter.replaceOp(op,
                       filledTensor(rewriter, op.getLoc(), op.getType(),
                                    Value(), op.getValue().convertToDouble()));
    return success();
  }
};

/// u in [0, 1) from splitmix64's finaliser over (seed + stream·φ + i·γ):
/// the top 24 bits. Documented in docs/language.md; tests re-implement it.
Value hashUniform(OpBuilder &b, Location l, Value seed, uint64_t stream,
                  Value counter) {
  auto c = [&](uint64_t v) -> Value {
    return arith::ConstantOp::create(
        b, l, b.getI64IntegerAttr(static_cast<int64_t>(v)));
  };
  Value z =
      arith::AddIOp::create(b, l, seed, c(stream * 0x9E3779B97F4A7C15ull));
  z = arith::AddIOp::create(
      b, l, z, arith::MulIOp::create(b, l, counter, c(0xD1B54A32D192ED03ull)));
  auto mix = [&](Value v, uint64_t shift, uint64_t mul) -> Value {
    Value sh = arith::ShRUIOp::create(b, l, v, c(shift));
    Value x = arith::XOrIOp::create(b, l, v, sh);
    return mul ? arith::MulIOp::create(b, l, x, c(mul)).getResult() : x;
  };
  z = mix(z, 30, 0xBF58476D1CE4E5B9ull);
  z = mix(z, 27, 0x94D049BB133111EBull);
  z = mix(z, 31, 0);
  Value top = arith::ShRUIOp::create(b, l, z, c(40));
  Value u = arith::UIToFPOp::create(b, l, b.getF64Type(), top);
  return arith::MulFOp::create(
      b, l, u, floatConst(b, l, b.getF64Type(), 1.0 / 16777216.0));
}

/// N(0, 1) by Box–Muller from the uniforms at counters 2i and 2i + 1.
Value hashNormal(OpBuilder &b, Location l, Value seed, uint64_t stream,
                 Value counter) {
  Type f64 = b.getF64Type();
  auto c = [&](int64_t v) -> Value {
    return arith::ConstantOp::create(b, l, b.getI64IntegerAttr(v));
  };
  Value twice = arith::MulIOp::create(b, l, counter, c(2));
  Value u1 = hashUniform(b, l, seed, stream, twice);
  Value u2 =
      hashUniform(b, l, seed, stream, arith::AddIOp::create(b, l, twice, c(1)));
  Value oneMinus = arith::SubFOp::create(b, l, floatConst(b, l, f64, 1.0), u1);
  Value radius = math::SqrtOp::create(
      b, l,
      arith::MulFOp::create(b, l, floatConst(b, l, f64, -2.0),
                            math::LogOp::create(b, l, oneMinus)));
  Value angle = arith::MulFOp::create(
      b, l, u2, floatConst(b, l, f64, 6.283185307179586476925286766559));
  return arith::MulFOp::create(b, l, radius, math::CosOp::create(b, l, angle));
}

/// The row-major linear index of the current element of a generic.
Value linearIndex(OpBuilder &b, Location l, RankedTensorType type,
                  Value dynRows = {}) {
  Type i64 = b.getI64Type();
  Value lin = arith::ConstantOp::create(b, l, b.getI64IntegerAttr(0));
  for (int64_t d = 0; d < type.getRank(); ++d) {
    Value idx =
        arith::IndexCastOp::create(b, l, i64, linalg::IndexOp::create(b, l, d));
    Value size = arith::ConstantOp::create(
        b, l, b.getI64IntegerAttr(type.getDimSize(d)));
    if (d > 0)
      lin = arith::MulIOp::create(b, l, lin, size);
    lin = arith::AddIOp::create(b, l, lin, idx);
  }
  return lin;
}

/// offset + scale · draw(seed, stream, i) at every element i of a static
/// tensor, in f64, rounded to the element type.
Value randomTensor(OpBuilder &rewriter, Location loc, RankedTensorType type,
                   Value seed, uint64_t stream, double offset, double scale,
                   Value (*draw)(OpBuilder &, Location, Value, uint64_t,
                                 Value)) {
  Value init = tensor::EmptyOp::create(rewriter, loc, type, ValueRange{});
  SmallVector<utils::IteratorType> iterators(type.getRank(),
                                             utils::IteratorType::parallel);
  return buildGeneric(
      rewriter, loc, {}, init,
      {rewriter.getMultiDimIdentityMap(type.getRank())}, iterators,
      [&](OpBuilder &b, Location l, ValueRange) {
        Value u = draw(b, l, seed, stream, linearIndex(b, l, type));
        Value v = arith::AddFOp::create(
            b, l, floatConst(b, l, b.getF64Type(), offset),
            arith::MulFOp::create(b, l, u,
                                  floatConst(b, l, b.getF64Type(), scale)));
        return arith::TruncFOp::create(b, l, type.getElementType(), v)
            .getResult();
      });
}

struct RandomUniformLowering : OpRewritePattern<RandomUniformOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RandomUniformOp op,
                                PatternRewriter &rewriter) const override {
    double low = op.getLow().convertToDouble();
    double high = op.getHigh().convertToDouble();
    rewriter.replaceOp(op, randomTensor(rewriter, op.getLoc(), op.getType(),
                                        op.getSeed(), op.getStream(), low,
                                        high - low, hashUniform));
    return success();
  }
};

struct RandomNormalLowering : OpRewritePattern<RandomNormalOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RandomNormalOp op,
                                PatternRewriter &rewriter) const override {
    rewriter.replaceOp(
        op, randomTensor(rewriter, op.getLoc(), op.getType(), op.getSeed(),
                         op.getStream(), op.getMean().convertToDouble(),
                         op.getStd().convertToDouble(), hashNormal));
    return success();
  }
};

struct GaussianNoiseLowering : OpRewritePattern<GaussianNoiseOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(GaussianNoiseOp op,
                                PatternRewriter &rewriter) const override {
    auto type = op.getType();
    AffineMap id = rewriter.getMultiDimIdentityMap(2);
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(), {op.getInput()}, {id},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value z = hashNormal(b, l, op.getSeed(), op.getStream(),
                               linearIndex(b, l, type));
          Value eps = arith::TruncFOp::create(b, l, type.getElementType(), z);
          return arith::AddFOp::create(b, l, a[0], eps).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

/// Σ_b x[b, :] in f64. As in sumInChunks, kSumChunks fixed ranges of rows
/// are summed in parallel, each row after row into a row of its own (so
/// the reads are contiguous), and the ranges' sums are then added in
/// order: the result does not depend on the thread count. (A reduction
/// over the rows cut along the columns read every row once for each
/// slice of a few columns.)
Value columnSumF64(OpBuilder &b, Location loc, Value x) {
  MLIRContext *ctx = b.getContext();
  auto type = cast<RankedTensorType>(x.getType());
  Type f64 = b.getF64Type();
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, loc, v);
  };
  Value in = toBuffer(b, loc, x);
  Value rows = tensor::DimOp::create(b, loc, x, 0);
  Value cols = tensor::DimOp::create(b, loc, x, 1);
  auto partsType = RankedTensorType::get({kSumChunks, type.getDimSize(1)}, f64);
  SmallVector<Value> dyn;
  if (type.isDynamicDim(1))
    dyn.push_back(cols);
  Value parts = zeroBuffer(b, loc, partsType, dyn);
  Value chunk = arith::CeilDivUIOp::create(b, loc, rows, idx(b, kSumChunks));
  scf::ParallelOp::create(
      b, loc, ValueRange{idx(b, 0)}, ValueRange{idx(b, kSumChunks)},
      ValueRange{idx(b, 1)}, [&](OpBuilder &pb, Location, ValueRange ivs) {
        Value lo = arith::MinUIOp::create(
            pb, loc, arith::MulIOp::create(pb, loc, ivs[0], chunk), rows);
        Value hi = arith::MinUIOp::create(
            pb, loc, arith::AddIOp::create(pb, loc, lo, chunk), rows);
        forRange(pb, loc, lo, hi, [&](OpBuilder &rb, Value r) {
          forRange(rb, loc, idx(rb, 0), cols, [&](OpBuilder &cb, Value c) {
            SmallVector<Value, 2> at{ivs[0], c};
            Value v = memref::LoadOp::create(cb, loc, in, ValueRange{r, c});
            Value old = memref::LoadOp::create(cb, loc, parts, at);
            memref::StoreOp::create(
                cb, loc, arith::AddFOp::create(cb, loc, old, toF64(cb, loc, v)),
                parts, at);
          });
        });
      });
  AffineExpr p, j;
  bindDims(ctx, p, j);
  // The sums' width is x's dimension 1 (filledTensor would size a dynamic
  // one from x's dimension 0).
  Value init =
      linalg::FillOp::create(
          b, loc,
          ValueRange{arith::ConstantOp::create(b, loc, b.getF64FloatAttr(0.0))},
          ValueRange{tensor::EmptyOp::create(
              b, loc, RankedTensorType::get({type.getDimSize(1)}, f64), dyn)})
          .getResult(0);
  return buildGeneric(
      b, loc, {asTensor(b, loc, partsType, parts)}, init,
      {AffineMap::get(2, 0, {p, j}, ctx), AffineMap::get(2, 0, {j}, ctx)},
      {utils::IteratorType::reduction, utils::IteratorType::parallel},
      [](OpBuilder &nb, Location l, ValueRange a) {
        return arith::AddFOp::create(nb, l, a[1], a[0]).getResult();
      });
}

/// Σ_b x[b, :] in f64, then / B.
Value columnMeanF64(OpBuilder &b, Location loc, Value x) {
  Value sum = columnSumF64(b, loc, x);
  Value rows = rowCount(b, loc, x, b.getF64Type());
  AffineMap id = b.getMultiDimIdentityMap(1);
  return buildElementwise(
      b, loc, sum, {sum}, {id}, [&](OpBuilder &nb, Location l, ValueRange a) {
        return arith::DivFOp::create(nb, l, a[0], rows).getResult();
      });
}

struct ColumnMeanLowering : OpRewritePattern<ColumnMeanOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ColumnMeanOp op,
                                PatternRewriter &rewriter) const override {
    Value mean = columnMeanF64(rewriter, op.getLoc(), op.getInput());
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    Type elt = op.getType().getElementType();
    Value init = tensor::EmptyOp::create(rewriter, op.getLoc(), op.getType(),
                                         ValueRange{});
    Value result = buildGeneric(
        rewriter, op.getLoc(), {mean}, init, {id, id},
        {utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          return arith::TruncFOp::create(b, l, elt, a[0]).getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

/// Weiszfeld iterations on memrefs, in f64, from the column mean.
struct GeometricMedianLowering : OpRewritePattern<GeometricMedianOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(GeometricMedianOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Type f64 = rewriter.getF64Type();
    Value input = op.getInput();
    auto inType = cast<RankedTensorType>(input.getType());
    int64_t d = inType.getDimSize(1);
    Value x = toBuffer(rewriter, loc, input);
    Value y = toBuffer(rewriter, loc, columnMeanF64(rewriter, loc, input));
    auto vecType = MemRefType::get({d}, f64);
    Value cur = memref::AllocOp::create(rewriter, loc, vecType);
    Value num = memref::AllocOp::create(rewriter, loc, vecType);
    memref::CopyOp::create(rewriter, loc, y, cur);
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cD = cIdx(d);
    Value iters = cIdx(op.getIterations());
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value zero = floatConst(rewriter, loc, f64, 0.0);
    Value eps = floatConst(rewriter, loc, f64, 1e-8);
    Value one = floatConst(rewriter, loc, f64, 1.0);
    scf::ForOp::create(
        rewriter, loc, c0, iters, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value, ValueRange) {
          linalg::FillOp::create(b, l, ValueRange{zero}, ValueRange{num});
          auto den = scf::ForOp::create(
              b, l, c0, rows, c1, ValueRange{zero},
              [&](OpBuilder &rb, Location rl, Value row, ValueRange acc) {
                auto dist2 = scf::ForOp::create(
                    rb, rl, c0, cD, c1, ValueRange{zero},
                    [&](OpBuilder &tb, Location tl, Value t, ValueRange s2) {
                      Value xv = toF64(
                          tb, tl, memref::LoadOp::create(tb, tl, x, {row, t}));
                      Value dv = arith::SubFOp::create(
                          tb, tl, xv, memref::LoadOp::create(tb, tl, cur, t));
                      scf::YieldOp::create(
                          tb, tl,
                          ValueRange{arith::AddFOp::create(
                              tb, tl, s2[0],
                              arith::MulFOp::create(tb, tl, dv, dv))});
                    });
                Value dist = arith::MaximumFOp::create(
                    rb, rl, math::SqrtOp::create(rb, rl, dist2.getResult(0)),
                    eps);
                Value w = arith::DivFOp::create(rb, rl, one, dist);
                scf::ForOp::create(
                    rb, rl, c0, cD, c1, ValueRange{},
                    [&](OpBuilder &tb, Location tl, Value t, ValueRange) {
                      Value xv = toF64(
                          tb, tl, memref::LoadOp::create(tb, tl, x, {row, t}));
                      Value nv = memref::LoadOp::create(tb, tl, num, t);
                      memref::StoreOp::create(
                          tb, tl,
                          arith::AddFOp::create(
                              tb, tl, nv, arith::MulFOp::create(tb, tl, w, xv)),
                          num, t);
                      scf::YieldOp::create(tb, tl);
                    });
                scf::YieldOp::create(
                    rb, rl,
                    ValueRange{arith::AddFOp::create(rb, rl, acc[0], w)});
              });
          scf::ForOp::create(
              b, l, c0, cD, c1, ValueRange{},
              [&](OpBuilder &tb, Location tl, Value t, ValueRange) {
                Value nv = memref::LoadOp::create(tb, tl, num, t);
                memref::StoreOp::create(
                    tb, tl, arith::DivFOp::create(tb, tl, nv, den.getResult(0)),
                    cur, t);
                scf::YieldOp::create(tb, tl);
              });
          scf::YieldOp::create(b, l);
        });
    // Round to the element type into a fresh buffer.
    auto outType = op.getType();
    Value out = memref::AllocOp::create(
        rewriter, loc, MemRefType::get({d}, outType.getElementType()));
    scf::ForOp::create(
        rewriter, loc, c0, cD, c1, ValueRange{},
        [&](OpBuilder &tb, Location tl, Value t, ValueRange) {
          Value v = memref::LoadOp::create(tb, tl, cur, t);
          memref::StoreOp::create(
              tb, tl,
              arith::TruncFOp::create(tb, tl, outType.getElementType(), v), out,
              t);
          scf::YieldOp::create(tb, tl);
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, outType, out));
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
    Value sum =
        sumInChunks(rewriter, loc, {op.getInput(), op.getTarget()}, {id, id}, 2,
                    [](OpBuilder &b, Location l, ValueRange a) {
                      return squaredDiffF64(b, l, a[0], a[1]);
                    });
    Value rows = rowCount(rewriter, loc, op.getInput(), rewriter.getF64Type());
    if (op.getMeanOverColumns())
      rows = arith::MulFOp::create(
          rewriter, loc, rows,
          floatConst(rewriter, loc, rewriter.getF64Type(),
                     double(op.getInput().getType().getDimSize(1))));
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
    Type f64 = rewriter.getF64Type();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
    AffineMap col = AffineMap::get(2, 0, {j}, ctx);

    // Column sums of the target, then the column means.
    Value colSum = columnSumF64(rewriter, loc, target);
    Value rows = rowCount(rewriter, loc, target, f64);
    Value denom = sumInChunks(rewriter, loc, {target, colSum}, {id, col}, 2,
                              [&](OpBuilder &b, Location l, ValueRange a) {
                                Value mean = arith::DivFOp::create(
                                    b, l, a[1], splatLike(b, l, rows, a[1]));
                                return squaredDiffF64(b, l, a[0], mean);
                              });
    Value num = sumInChunks(rewriter, loc, {op.getInput(), target}, {id, id}, 2,
                            [](OpBuilder &b, Location l, ValueRange a) {
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

/// for (i = lo; i < hi; ++i) fn(i).
void forRange(OpBuilder &b, Location loc, Value lo, Value hi,
              function_ref<void(OpBuilder &, Value)> fn) {
  scf::ForOp::create(b, loc, lo, hi, arith::ConstantIndexOp::create(b, loc, 1),
                     ValueRange{},
                     [&](OpBuilder &fb, Location fl, Value i, ValueRange) {
                       fn(fb, i);
                       scf::YieldOp::create(fb, fl);
                     });
}

/// Rows one after the other in parallel (each row's selection is written by
/// one thread, so results do not depend on the threads).
void forEachRowParallel(OpBuilder &b, Location loc, Value rows,
                        function_ref<void(OpBuilder &, Location, Value)> body) {
  Value c0 = arith::ConstantIndexOp::create(b, loc, 0);
  Value c1 = arith::ConstantIndexOp::create(b, loc, 1);
  scf::ParallelOp::create(b, loc, ValueRange{c0}, ValueRange{rows},
                          ValueRange{c1},
                          [&](OpBuilder &pb, Location pl, ValueRange ivs) {
                            body(pb, pl, ivs[0]);
                          });
}

/// Every row, in parallel: the k best entries by rank (the value, the
/// score operand, or the magnitude) with emitRowTopK.
struct TopKLowering : OpRewritePattern<TopKOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TopKOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type i32 = rewriter.getI32Type();
    int64_t k = codes.getK();
    Value input = op.getInput();
    bool byMagnitude = op.getByMagnitude();

    SmallVector<Value> dyn =
        dynamicSizes(rewriter, loc, codes.getValuesType(), input);
    Value in = toBuffer(rewriter, loc, input);
    Value score = op.getScore() ? toBuffer(rewriter, loc, op.getScore()) : in;
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);
    // The ranks of the kept entries, when they differ from the values.
    bool separateRanks = byMagnitude || op.getScore();
    Value ranks = separateRanks
                      ? allocLike(rewriter, loc, codes.getValuesType(), dyn)
                      : vals;
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value cols =
        arith::ConstantIndexOp::create(rewriter, loc, codes.getNumLatents());
    forEachRowParallel(
        rewriter, loc, rows, [&](OpBuilder &b, Location l, Value row) {
          emitRowTopK(
              b, l, row, cols, k,
              [&](OpBuilder &cb, Location cl, Value col) {
                Value r =
                    memref::LoadOp::create(cb, cl, score, ValueRange{row, col});
                if (byMagnitude)
                  r = math::AbsFOp::create(cb, cl, r);
                Value v = separateRanks ? memref::LoadOp::create(
                                              cb, cl, in, ValueRange{row, col})
                                              .getResult()
                                        : Value();
                return Candidate{
                    r, arith::IndexCastOp::create(cb, cl, i32, col), v};
              },
              ranks, idxs, separateRanks ? vals : Value(),
              [&](OpBuilder &sb, Location sl, Value col) {
                Value r = vector::LoadOp::create(
                    sb, sl,
                    VectorType::get(
                        {kScreenLanes},
                        cast<MemRefType>(score.getType()).getElementType()),
                    score, ValueRange{row, col});
                return byMagnitude ? math::AbsFOp::create(sb, sl, r).getResult()
                                   : r;
              });
        });
    replaceWithCodes(rewriter, op, codes, vals, idxs);
    return success();
  }
};

struct GroupMaxLowering : OpRewritePattern<GroupMaxOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(GroupMaxOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type elt = codes.getElementType();
    Type i32 = rewriter.getI32Type();
    int64_t k = codes.getK(), size = codes.getNumLatents() / k;
    Value input = op.getInput();
    SmallVector<Value> dyn =
        dynamicSizes(rewriter, loc, codes.getValuesType(), input);
    Value in = toBuffer(rewriter, loc, input);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cK = cIdx(k), cSize = cIdx(size);
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value negInf = negInfOf(rewriter, loc, elt);
    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          scf::ForOp::create(
              b, l, c0, cK, c1, ValueRange{},
              [&](OpBuilder &gb, Location gl, Value g, ValueRange) {
                Value first = arith::MulIOp::create(gb, gl, g, cSize);
                auto best = scf::ForOp::create(
                    gb, gl, c0, cSize, c1, ValueRange{negInf, first},
                    [&](OpBuilder &fb, Location fl, Value j, ValueRange carry) {
                      Value col = arith::AddIOp::create(fb, fl, first, j);
                      Value v = memref::LoadOp::create(fb, fl, in, {row, col});
                      Value better = arith::CmpFOp::create(
                          fb, fl, arith::CmpFPredicate::OGT, v, carry[0]);
                      scf::YieldOp::create(
                          fb, fl,
                          ValueRange{arith::SelectOp::create(fb, fl, better, v,
                                                             carry[0]),
                                     arith::SelectOp::create(fb, fl, better,
                                                             col, carry[1])});
                    });
                memref::StoreOp::create(gb, gl, best.getResult(0), vals,
                                        {row, g});
                Value ci =
                    arith::IndexCastOp::create(gb, gl, i32, best.getResult(1));
                memref::StoreOp::create(gb, gl, ci, idxs, {row, g});
                scf::YieldOp::create(gb, gl);
              });
          scf::YieldOp::create(b, l);
        });
    replaceWithCodes(rewriter, op, codes, vals, idxs);
    return success();
  }
};

/// Σ_t a[row, t] · w[col, t] over the shared width, as an f32 loop.
Value rowDot(OpBuilder &b, Location l, Value a, Value row, Value w, Value col,
             Value width, Type elt) {
  Value c0 = arith::ConstantIndexOp::create(b, l, 0);
  Value c1 = arith::ConstantIndexOp::create(b, l, 1);
  auto loop = scf::ForOp::create(
      b, l, c0, width, c1, ValueRange{floatConst(b, l, elt, 0.0)},
      [&](OpBuilder &fb, Location fl, Value t, ValueRange acc) {
        Value x = memref::LoadOp::create(fb, fl, a, {row, t});
        Value y = memref::LoadOp::create(fb, fl, w, {col, t});
        Value p = arith::MulFOp::create(fb, fl, x, y);
        scf::YieldOp::create(
            fb, fl, ValueRange{arith::AddFOp::create(fb, fl, acc[0], p)});
      });
  return loop.getResult(0);
}

/// Per row: a residual copy, k argmax scans over the atoms, merge into an
/// existing slot when an atom is chosen again, subtract v · atom.
struct MatchingPursuitLowering : OpRewritePattern<MatchingPursuitOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MatchingPursuitOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type elt = codes.getElementType();
    Type i32 = rewriter.getI32Type();
    Value input = op.getInput();
    auto inType = cast<RankedTensorType>(input.getType());
    SmallVector<Value> dyn =
        dynamicSizes(rewriter, loc, codes.getValuesType(), input);
    Value in = toBuffer(rewriter, loc, input);
    Value w = toBuffer(rewriter, loc, op.getDecoder());
    Value res = allocLike(rewriter, loc, inType,
                          dynamicSizes(rewriter, loc, inType, input));
    memref::CopyOp::create(rewriter, loc, in, res);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);
    Value zeroF = floatConst(rewriter, loc, elt, 0.0);
    Value zeroI =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI32IntegerAttr(0));
    linalg::FillOp::create(rewriter, loc, ValueRange{zeroF}, ValueRange{vals});
    linalg::FillOp::create(rewriter, loc, ValueRange{zeroI}, ValueRange{idxs});
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cK = cIdx(codes.getK());
    Value cN = cIdx(codes.getNumLatents()), cD = cIdx(inType.getDimSize(1));
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value negInf = negInfOf(rewriter, loc, elt);
    bool nonneg = op.getNonneg();

    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          scf::ForOp::create(
              b, l, c0, cK, c1, ValueRange{c0},
              [&](OpBuilder &sb, Location sl, Value, ValueRange count) {
                auto best = scf::ForOp::create(
                    sb, sl, c0, cN, c1, ValueRange{negInf, c0},
                    [&](OpBuilder &jb, Location jl, Value j, ValueRange bst) {
                      Value dot = rowDot(jb, jl, res, row, w, j, cD, elt);
                      Value better = arith::CmpFOp::create(
                          jb, jl, arith::CmpFPredicate::OGT, dot, bst[0]);
                      scf::YieldOp::create(
                          jb, jl,
                          ValueRange{arith::SelectOp::create(jb, jl, better,
                                                             dot, bst[0]),
                                     arith::SelectOp::create(jb, jl, better, j,
                                                             bst[1])});
                    });
                Value v = best.getResult(0);
                Value atom = best.getResult(1);
                if (nonneg)
                  v = arith::MaximumFOp::create(sb, sl, v, zeroF);
                Value atomI = arith::IndexCastOp::create(sb, sl, i32, atom);
                // The slot already holding this atom, else `count`.
                auto slot = scf::ForOp::create(
                    sb, sl, c0, count[0], c1, ValueRange{count[0]},
                    [&](OpBuilder &tb, Location tl, Value t, ValueRange found) {
                      Value held =
                          memref::LoadOp::create(tb, tl, idxs, {row, t});
                      Value same = arith::CmpIOp::create(
                          tb, tl, arith::CmpIPredicate::eq, held, atomI);
                      Value first = arith::CmpIOp::create(
                          tb, tl, arith::CmpIPredicate::eq, found[0], count[0]);
                      Value take = arith::AndIOp::create(tb, tl, same, first);
                      scf::YieldOp::create(tb, tl,
                                           ValueRange{arith::SelectOp::create(
                                               tb, tl, take, t, found[0])});
                    });
                Value target = slot.getResult(0);
                Value old = memref::LoadOp::create(sb, sl, vals, {row, target});
                memref::StoreOp::create(sb, sl,
                                        arith::AddFOp::create(sb, sl, old, v),
                                        vals, {row, target});
                memref::StoreOp::create(sb, sl, atomI, idxs, {row, target});
                Value isNew = arith::CmpIOp::create(
                    sb, sl, arith::CmpIPredicate::eq, target, count[0]);
                Value next = arith::SelectOp::create(
                    sb, sl, isNew, arith::AddIOp::create(sb, sl, count[0], c1),
                    count[0]);
                scf::ForOp::create(
                    sb, sl, c0, cD, c1, ValueRange{},
                    [&](OpBuilder &ub, Location ul, Value t, ValueRange) {
                      Value r = memref::LoadOp::create(ub, ul, res, {row, t});
                      Value a = memref::LoadOp::create(ub, ul, w, {atom, t});
                      Value d = arith::MulFOp::create(ub, ul, v, a);
                      memref::StoreOp::create(
                          ub, ul, arith::SubFOp::create(ub, ul, r, d), res,
                          {row, t});
                      scf::YieldOp::create(ub, ul);
                    });
                scf::YieldOp::create(sb, sl, ValueRange{next});
              });
          scf::YieldOp::create(b, l);
        });
    replaceWithCodes(rewriter, op, codes, vals, idxs);
    return success();
  }
};

/// Per row: extract the best unselected latent by (a_i n_i)² until the
/// running norm sqrt(Σ s) is as close to ‖target‖ as it will get.
struct TopAfaLowering : OpRewritePattern<TopAfaOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TopAfaOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    auto type = op.getType();
    Type elt = type.getElementType();
    Type f64 = rewriter.getF64Type();
    Value input = op.getInput();
    Value norms =
        toBuffer(rewriter, loc, rowNorms(rewriter, loc, op.getDecoder()));
    Value in = toBuffer(rewriter, loc, input);
    Value tgt = toBuffer(rewriter, loc, op.getTarget());
    SmallVector<Value> dyn = dynamicSizes(rewriter, loc, type, input);
    Value out = allocLike(rewriter, loc, type, dyn);
    auto maskType =
        RankedTensorType::get(type.getShape(), rewriter.getI8Type());
    Value mask = allocLike(rewriter, loc, maskType, dyn);
    Value zeroF = floatConst(rewriter, loc, elt, 0.0);
    Value zero8 =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI8IntegerAttr(0));
    Value one8 =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI8IntegerAttr(1));
    linalg::FillOp::create(rewriter, loc, ValueRange{zeroF}, ValueRange{out});
    linalg::FillOp::create(rewriter, loc, ValueRange{zero8}, ValueRange{mask});
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cN = cIdx(type.getDimSize(1));
    Value cD =
        cIdx(cast<RankedTensorType>(op.getTarget().getType()).getDimSize(1));
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value zero64 = floatConst(rewriter, loc, f64, 0.0);
    Value minus1 = floatConst(rewriter, loc, f64, -1.0);
    Value falseV =
        arith::ConstantOp::create(rewriter, loc, rewriter.getBoolAttr(false));
    Value trueV =
        arith::ConstantOp::create(rewriter, loc, rewriter.getBoolAttr(true));

    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          auto t2 = scf::ForOp::create(
              b, l, c0, cD, c1, ValueRange{zero64},
              [&](OpBuilder &fb, Location fl, Value t, ValueRange acc) {
                Value x = arith::ExtFOp::create(
                    fb, fl, f64,
                    memref::LoadOp::create(fb, fl, tgt, {row, t}).getResult());
                Value sq = arith::MulFOp::create(fb, fl, x, x);
                scf::YieldOp::create(
                    fb, fl,
                    ValueRange{arith::AddFOp::create(fb, fl, acc[0], sq)});
              });
          Value target = math::SqrtOp::create(b, l, t2.getResult(0));
          // iter_args: running Σ s, the previous c, done.
          scf::ForOp::create(
              b, l, c0, cN, c1, ValueRange{zero64, zero64, falseV},
              [&](OpBuilder &jb, Location jl, Value j, ValueRange st) {
                auto step = scf::IfOp::create(
                    jb, jl, TypeRange{f64, f64, jb.getI1Type()}, st[2],
                    /*withElseRegion=*/true);
                {
                  OpBuilder::InsertionGuard g(jb);
                  jb.setInsertionPointToStart(&step.getThenRegion().front());
                  scf::YieldOp::create(jb, jl, ValueRange{st[0], st[1], st[2]});
                  jb.setInsertionPointToStart(&step.getElseRegion().front());
                  // The best unselected latent (first maximum of s).
                  auto best = scf::ForOp::create(
                      jb, jl, c0, cN, c1, ValueRange{minus1, c0},
                      [&](OpBuilder &ib, Location il, Value i, ValueRange bst) {
                        Value a = arith::ExtFOp::create(
                            ib, il, f64,
                            memref::LoadOp::create(ib, il, in, {row, i})
                                .getResult());
                        Value n = arith::ExtFOp::create(
                            ib, il, f64,
                            memref::LoadOp::create(ib, il, norms, i)
                                .getResult());
                        Value an = arith::MulFOp::create(ib, il, a, n);
                        Value sc = arith::MulFOp::create(ib, il, an, an);
                        Value free = arith::CmpIOp::create(
                            ib, il, arith::CmpIPredicate::eq,
                            memref::LoadOp::create(ib, il, mask, {row, i}),
                            zero8);
                        Value gt = arith::CmpFOp::create(
                            ib, il, arith::CmpFPredicate::OGT, sc, bst[0]);
                        Value better = arith::AndIOp::create(ib, il, free, gt);
                        scf::YieldOp::create(
                            ib, il,
                            ValueRange{arith::SelectOp::create(ib, il, better,
                                                               sc, bst[0]),
                                       arith::SelectOp::create(ib, il, better,
                                                               i, bst[1])});
                      });
                  Value sBest = best.getResult(0), iBest = best.getResult(1);
                  Value cum = arith::AddFOp::create(jb, jl, st[0], sBest);
                  Value c = math::SqrtOp::create(jb, jl, cum);
                  // Taking entry j (0-based) is right unless c_{j-1} is at
                  // least as close to the target: argmin keeps the first.
                  Value dPrev = math::AbsFOp::create(
                      jb, jl, arith::SubFOp::create(jb, jl, st[1], target));
                  Value dCur = math::AbsFOp::create(
                      jb, jl, arith::SubFOp::create(jb, jl, c, target));
                  Value isFirst = arith::CmpIOp::create(
                      jb, jl, arith::CmpIPredicate::eq, j, c0);
                  Value prevBetter = arith::CmpFOp::create(
                      jb, jl, arith::CmpFPredicate::OLE, dPrev, dCur);
                  Value stopBefore = arith::AndIOp::create(
                      jb, jl, prevBetter,
                      arith::XOrIOp::create(jb, jl, isFirst, trueV));
                  Value take = arith::XOrIOp::create(jb, jl, stopBefore, trueV);
                  scf::IfOp::create(
                      jb, jl, take, [&](OpBuilder &tb, Location tl) {
                        Value a =
                            memref::LoadOp::create(tb, tl, in, {row, iBest});
                        memref::StoreOp::create(tb, tl, a, out, {row, iBest});
                        memref::StoreOp::create(tb, tl, one8, mask,
                                                {row, iBest});
                        scf::YieldOp::create(tb, tl);
                      });
                  // Past the target, c only moves away: stop.
                  Value reached = arith::CmpFOp::create(
                      jb, jl, arith::CmpFPredicate::OGE, c, target);
                  Value done =
                      arith::OrIOp::create(jb, jl, stopBefore, reached);
                  scf::YieldOp::create(jb, jl, ValueRange{cum, c, done});
                }
                scf::YieldOp::create(jb, jl, step.getResults());
              });
          scf::YieldOp::create(b, l);
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
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

/// out[b, :] = Σ_t values[b, t] · W[indices[b, t], :]: rows in parallel
/// (O(B·k·d), whatever n is). With f32 and a width of whole groups of four
/// vectors, a row is summed in registers, outerVecs vectors at a time, and
/// stored once: one load of W and one fused multiply-add per vector and
/// entry. Otherwise one vectorised row axpy per entry, into the row in
/// memory. Either way an element's sum runs over the entries in order from
/// zero.
struct DecodeLowering : OpRewritePattern<DecodeOp> {
  DecodeLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx), lanes(lanes) {}
  int64_t lanes;

  LogicalResult matchAndRewrite(DecodeOp op,
                                PatternRewriter &rewriter) const override {
    if (op.getCodes().getType().getPerBatch())
      return rewriter.notifyMatchFailure(
          op, "batch layout: see BatchCodesLowering");
    Value values, indices;
    if (failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op,
                                         "codes are not built by make_codes");
    Location loc = op.getLoc();
    auto type = cast<RankedTensorType>(op.getType());
    Value rows = tensor::DimOp::create(rewriter, loc, values, 0);
    SmallVector<Value> dyn;
    if (type.isDynamicDim(0))
      dyn.push_back(rows);
    int64_t k = op.getCodes().getType().getK();
    int64_t d = type.getDimSize(1);
    bool inRegisters = type.getElementType().isF32() &&
                       !ShapedType::isDynamic(d) && d % (4 * lanes) == 0;
    Value out = inRegisters ? allocLike(rewriter, loc, type, dyn)
                            : zeroBuffer(rewriter, loc, type, dyn);
    Value weight = toBuffer(rewriter, loc, op.getWeight());
    Value vals = toBuffer(rewriter, loc, values);
    Value idxs = toBuffer(rewriter, loc, indices);
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    // Entry t of the row: its value and its latent.
    auto entry = [&](OpBuilder &b, Location l, Value row, Value t) {
      Value v = memref::LoadOp::create(b, l, vals, ValueRange{row, t});
      Value i = arith::IndexCastOp::create(
          b, l, b.getIndexType(),
          memref::LoadOp::create(b, l, idxs, ValueRange{row, t}).getResult());
      return std::make_pair(v, i);
    };
    forEachRowParallel(
        rewriter, loc, rows, [&](OpBuilder &b, Location l, Value row) {
          if (!inRegisters) {
            forRange(b, l, idx(b, 0), idx(b, k), [&](OpBuilder &tb, Value t) {
              auto [v, i] = entry(tb, l, row, t);
              addScaledRow(tb, l, out, row, weight, i, v, d);
            });
            return;
          }
          int64_t vecs = outerVecs(d, lanes);
          auto vecType = VectorType::get({lanes}, b.getF32Type());
          Value zero = arith::ConstantOp::create(
              b, l, DenseElementsAttr::get(vecType, b.getF32FloatAttr(0.0)));
          forRange(
              b, l, idx(b, 0), idx(b, d / (vecs * lanes)),
              [&](OpBuilder &cb, Value chunk) {
                Value col0 =
                    arith::MulIOp::create(cb, l, chunk, idx(cb, vecs * lanes));
                SmallVector<Value> cols;
                for (int64_t v = 0; v < vecs; ++v)
                  cols.push_back(
                      arith::AddIOp::create(cb, l, col0, idx(cb, v * lanes)));
                auto sums = scf::ForOp::create(
                    cb, l, idx(cb, 0), idx(cb, k), idx(cb, 1),
                    SmallVector<Value>(vecs, zero),
                    [&](OpBuilder &tb, Location tl, Value t, ValueRange acc) {
                      auto [v, i] = entry(tb, tl, row, t);
                      Value s = vector::BroadcastOp::create(tb, tl, vecType, v);
                      SmallVector<Value> next;
                      for (int64_t u = 0; u < vecs; ++u)
                        next.push_back(vector::FMAOp::create(
                            tb, tl, s,
                            vector::LoadOp::create(tb, tl, vecType, weight,
                                                   ValueRange{i, cols[u]}),
                            acc[u]));
                      scf::YieldOp::create(tb, tl, next);
                    });
                for (int64_t u = 0; u < vecs; ++u)
                  vector::StoreOp::create(cb, l, sums.getResult(u), out,
                                          ValueRange{row, cols[u]});
              });
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
    return success();
  }
};

/// Zero-filled [B, n] buffer, then one store per kept entry.
/// The entries of several codes side by side (a `tensor.concat` along the
/// entries of their [B, k] values or indices, made by the differentiator
/// to merge sparse products): one generic reading each output slot from
/// its source. Bufferizing the concat itself would copy into strided
/// subviews, which the LLVM lowering turns into calls to a runtime library.
struct ConcatLowering : OpRewritePattern<tensor::ConcatOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(tensor::ConcatOp op,
                                PatternRewriter &rewriter) const override {
    auto type = op.getResultType();
    if (type.getRank() != 2 || op.getDim() != 1)
      return rewriter.notifyMatchFailure(op, "only [B, k] side by side");
    SmallVector<int64_t> widths;
    for (Value in : op.getInputs()) {
      int64_t w = cast<RankedTensorType>(in.getType()).getDimSize(1);
      if (ShapedType::isDynamic(w))
        return rewriter.notifyMatchFailure(op, "dynamic widths");
      widths.push_back(w);
    }
    Location loc = op.getLoc();
    Value init = tensor::EmptyOp::create(
        rewriter, loc, type,
        dynamicSizes(rewriter, loc, type, op.getInputs()[0]));
    auto generic = linalg::GenericOp::create(
        rewriter, loc, TypeRange{type}, ValueRange{}, ValueRange{init},
        SmallVector<AffineMap>{rewriter.getMultiDimIdentityMap(2)},
        SmallVector<utils::IteratorType>(2, utils::IteratorType::parallel),
        [&](OpBuilder &b, Location l, ValueRange) {
          Value row = linalg::IndexOp::create(b, l, 0);
          Value col = linalg::IndexOp::create(b, l, 1);
          // From the last source back: each select keeps the value of the
          // source whose range holds `col` (indices clamped in range).
          Value result;
          int64_t start = 0;
          for (auto [in, w] : llvm::zip(op.getInputs(), widths)) {
            Value lo = arith::ConstantIndexOp::create(b, l, start);
            Value last = arith::ConstantIndexOp::create(b, l, w - 1);
            Value rel = arith::MinSIOp::create(
                b, l,
                arith::MaxSIOp::create(b, l,
                                       arith::SubIOp::create(b, l, col, lo),
                                       arith::ConstantIndexOp::create(b, l, 0)),
                last);
            Value v = tensor::ExtractOp::create(b, l, in, ValueRange{row, rel});
            if (result) {
              Value here = arith::CmpIOp::create(
                  b, l, arith::CmpIPredicate::uge, col, lo);
              v = arith::SelectOp::create(b, l, here, v, result);
            }
            result = v;
            start += w;
          }
          linalg::YieldOp::create(b, l, result);
        });
    rewriter.replaceOp(op, generic.getResults());
    return success();
  }
};

struct DensifyLowering : OpRewritePattern<DensifyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(DensifyOp op,
                                PatternRewriter &rewriter) const override {
    if (op.getCodes().getType().getPerBatch())
      return rewriter.notifyMatchFailure(
          op, "batch layout: see BatchCodesLowering");
    Value values, indices;
    if (failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op,
                                         "codes are not built by make_codes");
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
    Value cK = arith::ConstantIndexOp::create(rewriter, loc,
                                              op.getCodes().getType().getK());
    Value rows = tensor::DimOp::create(rewriter, loc, values, 0);
    scf::ForOp::create(
        rewriter, loc, c0, rows, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value row, ValueRange) {
          scf::ForOp::create(
              b, l, c0, cK, c1, ValueRange{},
              [&](OpBuilder &nb, Location nl, Value t, ValueRange) {
                Value v = memref::LoadOp::create(nb, nl, vals, {row, t});
                Value i = memref::LoadOp::create(nb, nl, idxs, {row, t});
                Value col =
                    arith::IndexCastOp::create(nb, nl, nb.getIndexType(), i);
                // Entries add up: an operator may list a latent twice.
                Value old = memref::LoadOp::create(nb, nl, out, {row, col});
                Value sum = arith::AddFOp::create(nb, nl, old, v);
                memref::StoreOp::create(nb, nl, sum, out, {row, col});
                scf::YieldOp::create(nb, nl);
              });
          scf::YieldOp::create(b, l);
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
    return success();
  }
};

//===----------------------------------------------------------------------===//
// Elementwise functions
//===----------------------------------------------------------------------===//

/// result = fn(input) elementwise.
template <typename OpTy> struct UnaryLowering : OpRewritePattern<OpTy> {
  using BodyBuilder = Value (*)(OpBuilder &, Location, Value);
  UnaryLowering(MLIRContext *ctx, BodyBuilder fn)
      : OpRewritePattern<OpTy>(ctx), fn(fn) {}
  LogicalResult matchAndRewrite(OpTy op,
                                PatternRewriter &rewriter) const override {
    AffineMap id = rewriter.getMultiDimIdentityMap(op.getType().getRank());
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(), {op.getInput()}, {id},
        [&](OpBuilder &b, Location l, ValueRange a) { return fn(b, l, a[0]); });
    rewriter.replaceOp(op, result);
    return success();
  }
  BodyBuilder fn;
};

/// The forward pass of stopgrad is the identity.
struct StopGradLowering : OpRewritePattern<StopGradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(StopGradOp op,
                                PatternRewriter &rewriter) const override {
    rewriter.replaceOp(op, op.getInput());
    return success();
  }
};

/// x · H(x − θ): kept only when strictly above the threshold.
struct JumpReluLowering : OpRewritePattern<JumpReluOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(JumpReluOp op,
                                PatternRewriter &rewriter) const override {
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    Type elt = op.getType().getElementType();
    Value result = buildElementwise(
        rewriter, op.getLoc(), op.getInput(),
        {op.getInput(), op.getThreshold()},
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx)},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value above = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT,
                                              a[0], a[1]);
          return arith::SelectOp::create(b, l, above, a[0],
                                         floatConst(b, l, elt, 0.0))
              .getResult();
        });
    rewriter.replaceOp(op, result);
    return success();
  }
};

//===----------------------------------------------------------------------===//
// Penalties
//===----------------------------------------------------------------------===//

/// ‖W[i, :]‖₂ for every row of a matrix, as a vector of its element type.
/// Σ_j x[i, j] · y[yMap(i, j)] for every row i (y the same shape as x by
/// default). The adds may be reassociated, so that LLVM vectorises each
/// row's sum (one thread per row, in an order fixed at compile time).
Value rowDots(OpBuilder &b, Location loc, Value x, Value y, AffineMap yMap) {
  MLIRContext *ctx = b.getContext();
  auto type = cast<RankedTensorType>(x.getType());
  AffineExpr i, j;
  bindDims(ctx, i, j);
  auto rowType =
      RankedTensorType::get({type.getDimSize(0)}, type.getElementType());
  Value acc = filledTensor(b, loc, rowType, x, 0.0);
  auto fm = arith::FastMathFlagsAttr::get(
      ctx, arith::FastMathFlags::reassoc | arith::FastMathFlags::contract);
  AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
  return buildGeneric(
      b, loc, {x, y}, acc,
      {id, yMap ? yMap : id, AffineMap::get(2, 0, {i}, ctx)},
      {utils::IteratorType::parallel, utils::IteratorType::reduction},
      [&](OpBuilder &nb, Location l, ValueRange a) {
        Value p = arith::MulFOp::create(nb, l, a[0], a[1], fm);
        return arith::AddFOp::create(nb, l, a[2], p, fm).getResult();
      });
}

Value rowNorms(OpBuilder &b, Location loc, Value w) {
  Value sumSq = rowDots(b, loc, w, w);
  AffineMap id = b.getMultiDimIdentityMap(1);
  return buildElementwise(
      b, loc, sumSq, {sumSq}, {id},
      [](OpBuilder &nb, Location l, ValueRange a) {
        return math::SqrtOp::create(nb, l, a[0]).getResult();
      });
}

/// Σ over the entries of codes (dense [B, n], or the k stored entries of
/// sparse codes) of term(value, latent index) in f64, divided by B.
Value meanOverRows(
    OpBuilder &b, Location loc, Value codes,
    function_ref<Value(OpBuilder &, Location, Value, Value)> term) {
  Value values = codes, indices;
  if (isa<CodesType>(codes.getType())) {
    if (failed(getCodeParts(codes, values, indices)))
      return {};
  }
  unsigned rank = cast<RankedTensorType>(values.getType()).getRank();
  AffineMap id = b.getMultiDimIdentityMap(rank);
  SmallVector<Value> ins = {values};
  SmallVector<AffineMap> maps = {id};
  if (indices) {
    ins.push_back(indices);
    maps.push_back(id);
  }
  Value sum = sumToScalar(
      b, loc, ins, maps, rank, [&](OpBuilder &nb, Location l, ValueRange a) {
        Value latent =
            indices ? arith::IndexCastOp::create(nb, l, nb.getIndexType(), a[1])
                          .getResult()
                    : linalg::IndexOp::create(nb, l, 1).getResult();
        return term(nb, l, a[0], latent);
      });
  Value rows;
  if (rank == 1) { // batch layout: B = (B·k) / k
    auto codesType = cast<CodesType>(codes.getType());
    Value n = arith::IndexCastOp::create(
        b, loc, b.getI64Type(), batchRows(b, loc, values, codesType.getK()));
    rows = arith::SIToFPOp::create(b, loc, b.getF64Type(), n);
  } else {
    rows = rowCount(b, loc, values, b.getF64Type());
  }
  return arith::DivFOp::create(b, loc, sum, rows);
}

/// getCodeParts fails for codes that do not come from a lowered producer.
template <typename OpTy>
LogicalResult replaceScalar(PatternRewriter &rewriter, OpTy op, Value f64) {
  if (!f64)
    return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
  rewriter.replaceOp(
      op, arith::TruncFOp::create(rewriter, op.getLoc(), op.getType(), f64));
  return success();
}

struct L1Lowering : OpRewritePattern<L1Op> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(L1Op op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Value norms =
        op.getDecoder() ? rowNorms(rewriter, loc, op.getDecoder()) : Value();
    Value v = meanOverRows(
        rewriter, loc, op.getCodes(),
        [&](OpBuilder &b, Location l, Value f, Value latent) {
          Value a = math::AbsFOp::create(b, l, f);
          if (norms)
            a = arith::MulFOp::create(
                b, l, a, tensor::ExtractOp::create(b, l, norms, latent));
          return toF64(b, l, a);
        });
    return replaceScalar(rewriter, op, v);
  }
};

struct TanhPenaltyLowering : OpRewritePattern<TanhPenaltyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TanhPenaltyOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Value norms = rowNorms(rewriter, loc, op.getDecoder());
    double scale = op.getScale().convertToDouble();
    Value v =
        meanOverRows(rewriter, loc, op.getCodes(),
                     [&](OpBuilder &b, Location l, Value f, Value latent) {
                       Value n = tensor::ExtractOp::create(b, l, norms, latent);
                       Value x = arith::MulFOp::create(
                           b, l, toF64(b, l, arith::MulFOp::create(b, l, f, n)),
                           floatConst(b, l, b.getF64Type(), scale));
                       return math::TanhOp::create(b, l, x).getResult();
                     });
    return replaceScalar(rewriter, op, v);
  }
};

struct L0Lowering : OpRewritePattern<L0Op> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(L0Op op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    Value sum = sumToScalar(
        rewriter, loc, {op.getInput(), op.getThreshold()},
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx)}, 2,
        [](OpBuilder &b, Location l, ValueRange a) {
          Value above = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT,
                                              a[0], a[1]);
          return arith::UIToFPOp::create(b, l, b.getF64Type(), above)
              .getResult();
        });
    Value rows = rowCount(rewriter, loc, op.getInput(), rewriter.getF64Type());
    return replaceScalar(rewriter, op,
                         arith::DivFOp::create(rewriter, loc, sum, rows));
  }
};

/// Per-row sums of squares of dense [B, m] values (or of codes' values), f64.
Value rowSumSq(OpBuilder &b, Location loc, Value values) {
  MLIRContext *ctx = b.getContext();
  auto type = cast<RankedTensorType>(values.getType());
  AffineExpr i, j;
  bindDims(ctx, i, j);
  auto rowType = RankedTensorType::get({type.getDimSize(0)}, b.getF64Type());
  Value acc = filledTensor(b, loc, rowType, values, 0.0);
  return buildGeneric(
      b, loc, {values}, acc,
      {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {i}, ctx)},
      {utils::IteratorType::parallel, utils::IteratorType::reduction},
      [](OpBuilder &nb, Location l, ValueRange a) {
        Value x = toF64(nb, l, a[0]);
        Value sq = arith::MulFOp::create(nb, l, x, x);
        return arith::AddFOp::create(nb, l, a[1], sq).getResult();
      });
}

struct AfaLowering : OpRewritePattern<AfaOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AfaOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Value values = op.getCodes(), indices;
    if (isa<CodesType>(values.getType()) &&
        failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op,
                                         "codes are not built by make_codes");
    Value f = rowSumSq(rewriter, loc, values);
    Value x = rowSumSq(rewriter, loc, op.getTarget());
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    Value sum =
        sumToScalar(rewriter, loc, {f, x}, {id, id}, 1,
                    [](OpBuilder &b, Location l, ValueRange a) {
                      Value d = arith::SubFOp::create(
                          b, l, math::SqrtOp::create(b, l, a[0]),
                          math::SqrtOp::create(b, l, a[1]));
                      return arith::MulFOp::create(b, l, d, d).getResult();
                    });
    Value rows = rowCount(rewriter, loc, op.getTarget(), rewriter.getF64Type());
    return replaceScalar(rewriter, op,
                         arith::DivFOp::create(rewriter, loc, sum, rows));
  }
};

struct KlStdNormalLowering : OpRewritePattern<KlStdNormalOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(KlStdNormalOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Value v = meanOverRows(rewriter, loc, op.getInput(),
                           [](OpBuilder &b, Location l, Value mu, Value) {
                             Value x = toF64(b, l, mu);
                             Value sq = arith::MulFOp::create(b, l, x, x);
                             return arith::MulFOp::create(
                                        b, l, sq,
                                        floatConst(b, l, b.getF64Type(), 0.5))
                                 .getResult();
                           });
    return replaceScalar(rewriter, op, v);
  }
};

/// For each width w: decode the entries below w (masked generic over
/// (row, entry, column)), add the bias, accumulate the squared error.
struct MatryoshkaLowering : OpRewritePattern<MatryoshkaOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MatryoshkaOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    Value values = op.getCodes(), indices;
    if (isa<CodesType>(values.getType()) &&
        failed(getCodeParts(op.getCodes(), values, indices)))
      return rewriter.notifyMatchFailure(op,
                                         "codes are not built by make_codes");
    Value w = op.getDecoder(), target = op.getTarget();
    auto outType = cast<RankedTensorType>(target.getType());
    Type elt = outType.getElementType();
    AffineExpr b, t, j;
    bindDims(ctx, b, t, j);
    SmallVector<Value> ins = {values};
    SmallVector<AffineMap> maps = {AffineMap::get(3, 0, {b, t}, ctx)};
    if (indices) {
      ins.push_back(indices);
      maps.push_back(AffineMap::get(3, 0, {b, t}, ctx));
    }
    maps.push_back(AffineMap::get(3, 0, {b, j}, ctx));
    Value total;
    for (int64_t width : op.getWidths()) {
      Value init = filledTensor(rewriter, loc, outType, target, 0.0);
      Value dec = buildGeneric(
          rewriter, loc, ins, init, maps,
          {utils::IteratorType::parallel, utils::IteratorType::reduction,
           utils::IteratorType::parallel},
          [&](OpBuilder &nb, Location l, ValueRange a) {
            Value latent =
                indices
                    ? arith::IndexCastOp::create(nb, l, nb.getIndexType(), a[1])
                          .getResult()
                    : linalg::IndexOp::create(nb, l, 1).getResult();
            Value col = linalg::IndexOp::create(nb, l, 2);
            Value inPrefix = arith::CmpIOp::create(
                nb, l, arith::CmpIPredicate::slt, latent,
                arith::ConstantIndexOp::create(nb, l, width));
            Value v = arith::SelectOp::create(nb, l, inPrefix, a[0],
                                              floatConst(nb, l, elt, 0.0));
            Value wv =
                tensor::ExtractOp::create(nb, l, w, ValueRange{latent, col});
            Value acc = a.back();
            return arith::AddFOp::create(nb, l, acc,
                                         arith::MulFOp::create(nb, l, v, wv))
                .getResult();
          });
      Value withBias =
          BiasAddOp::create(rewriter, loc, outType, dec, op.getBias());
      // Each prefix's error is accumulated in f64 by sae.mse's lowering.
      Value err = MseOp::create(rewriter, loc, op.getType(), withBias, target);
      total = total
                  ? arith::AddFOp::create(rewriter, loc, total, err).getResult()
                  : err;
    }
    rewriter.replaceOp(op, total);
    return success();
  }
};

/// 1 where a latent is dead: usage >= dead_after, or (Zipf) frequency below
/// the latent's target.
struct DeadMaskLowering : OpRewritePattern<DeadMaskOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(DeadMaskOp op,
                                PatternRewriter &rewriter) const override {
    auto type = op.getType();
    Type elt = type.getElementType();
    Type f64 = rewriter.getF64Type();
    double deadAfter = op.getDeadAfter().convertToDouble();
    std::optional<double> alpha;
    if (auto a = op.getZipfAlphaAttr())
      alpha = a.getValueAsDouble();
    double zipfScale = 0;
    if (alpha) {
      double sum = 0;
      for (int64_t t = 0; t < type.getDimSize(0); ++t)
        sum += std::pow(double(t + 1), -*alpha);
      zipfScale = double(op.getZipfK().value_or(1)) / sum;
    }
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    rewriter.replaceOp(
        op, buildElementwise(
                rewriter, op.getLoc(), op.getSinceFired(),
                {op.getSinceFired()}, {id},
                [&](OpBuilder &b, Location l, ValueRange a) {
                  Value u = a[0], dead;
                  if (!alpha) {
                    dead = arith::CmpFOp::create(
                        b, l, arith::CmpFPredicate::OGE, u,
                        floatConst(b, l, elt, deadAfter));
                  } else {
                    Value latent = linalg::IndexOp::create(b, l, 0);
                    Value rank = arith::UIToFPOp::create(
                        b, l, f64,
                        arith::AddIOp::create(
                            b, l,
                            arith::IndexCastOp::create(b, l, b.getI64Type(),
                                                       latent),
                            arith::ConstantOp::create(b, l,
                                                      b.getI64IntegerAttr(1))));
                    Value target = arith::MulFOp::create(
                        b, l, floatConst(b, l, f64, zipfScale),
                        math::PowFOp::create(b, l, rank,
                                             floatConst(b, l, f64, -*alpha)));
                    dead = arith::CmpFOp::create(
                        b, l, arith::CmpFPredicate::OLT, toF64(b, l, u),
                        target);
                  }
                  return arith::UIToFPOp::create(b, l, elt, dead).getResult();
                }));
    return success();
  }
};

/// A key of f32 `v` in [0, 2^32) (i64) that orders like the value: NaN
/// maps to 0, below every number.
Value orderedKey(OpBuilder &b, Location l, Value v) {
  Type i32 = b.getI32Type(), i64 = b.getI64Type();
  auto c64 = [&](int64_t x) -> Value {
    return arith::ConstantOp::create(b, l, b.getI64IntegerAttr(x));
  };
  Value bits =
      arith::ExtUIOp::create(b, l, i64, arith::BitcastOp::create(b, l, i32, v));
  Value neg = arith::CmpIOp::create(b, l, arith::CmpIPredicate::uge, bits,
                                    c64(0x80000000ll));
  Value flipped = arith::SelectOp::create(
      b, l, neg, arith::XOrIOp::create(b, l, bits, c64(0xFFFFFFFFll)),
      arith::XOrIOp::create(b, l, bits, c64(0x80000000ll)));
  Value isNan = arith::CmpFOp::create(b, l, arith::CmpFPredicate::UNO, v, v);
  return arith::SelectOp::create(b, l, isNan, c64(0), flipped);
}

/// orderedKey's values for a vector of f32, as i32 in the same order when
/// compared unsigned (orderedKey's keys are below 2^32).
Value orderedKeys32(OpBuilder &b, Location l, Value v) {
  auto keysType = VectorType::get(cast<VectorType>(v.getType()).getShape(),
                                  b.getI32Type());
  auto splat = [&](uint32_t x) -> Value {
    return arith::ConstantOp::create(
        b, l, DenseElementsAttr::get(keysType, APInt(32, x)));
  };
  Value bits = arith::BitcastOp::create(b, l, keysType, v);
  Value neg =
      arith::CmpIOp::create(b, l, arith::CmpIPredicate::slt, bits, splat(0));
  Value flipped = arith::SelectOp::create(
      b, l, neg, arith::XOrIOp::create(b, l, bits, splat(0xFFFFFFFFu)),
      arith::XOrIOp::create(b, l, bits, splat(0x80000000u)));
  Value isNan = arith::CmpFOp::create(b, l, arith::CmpFPredicate::UNO, v, v);
  return arith::SelectOp::create(b, l, isNan, splat(0), flipped);
}

/// The dead latents' indices are listed once, where the mask is; their
/// columns are taken side by side (sae.take_columns, which an encoder
/// product's epilogue writes when it comes before the selection); then
/// every row, in parallel, selects among those columns only, so the cost
/// is O(B · n_dead) rather than O(B · n), read contiguously. k_aux is
/// large (512), so a row does not keep a heap: the
/// keys of its dead columns are copied out, the k-th largest key is found
/// bit by bit from the top (32 counting passes over the copy, which LLVM
/// vectorises), and one last pass keeps, in increasing latent order, the
/// keys above it and the first ties. NaN and -inf are never kept; slots
/// left over hold value 0 and a live latent's index.
///
/// When the model is f32 with a decoder width that the register-blocked
/// kernel takes, the products with these codes (sae.decode, sae.sddmm and
/// sae.outer, the aux loss and its gradient) are built twice, and the
/// number of dead latents picks one at run time:
/// - dense products over the dead latents alone: the codes as a dense
///   [B, n_dead] matrix and the decoder's dead rows gathered into
///   [n_dead, d] (n_dead rounded up to whole panels with zeros), while
///   n_dead ≤ kDenseDeadRatio · k_aux;
/// - grouped sparse products over the k_aux entries of each row, with
///   more dead latents (DeadTopKLowering::denseProducts says how).
/// Each product costs 2·B·n_dead·d dense, 2·B·k_aux·d sparse; measured
/// in a TopK + AuxK step at d = 768, n = 16384, k_aux = 512 on a Zen 4
/// (bench/train_step.py --aux-curve, and both forced side by side), the
/// two cost the same between 2 and 3 times k_aux dead latents, and the
/// dense ones run about 2.5 times as many multiply-adds per second.
constexpr int64_t kDenseDeadRatio = 3;
/// The grouped products' groups of consecutive dead latents: each row has
/// about kGroupEntries entries in a group, with at least kMinGroup and at
/// most kMaxGroup latents (a group's panel rows, up to 512 · 192 floats,
/// stay in L2 while the rows go by; fewer entries per visit of a row would
/// spend the time loading and storing its sums). Blocks of kRowBlock rows
/// are taken in parallel: each block reads all the panels, so fewer
/// blocks read less (at B = 1024 and 50% dead, blocks of 512 rows took
/// 235 ms a step, of 256 244 ms and of 128 251 ms), but a block is a
/// thread's work: 256 keeps four threads busy at B = 1024.
constexpr int64_t kGroupEntries = 32, kMinGroup = 128, kMaxGroup = 512;
constexpr int64_t kRowBlock = 256;

struct DeadTopKLowering : OpRewritePattern<DeadTopKOp> {
  DeadTopKLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx), lanes(lanes) {}
  int64_t lanes;

  LogicalResult matchAndRewrite(DeadTopKOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type i32 = rewriter.getI32Type();
    Type elt = codes.getElementType();
    Type indexType = rewriter.getIndexType();
    Value input = op.getInput();
    SmallVector<Value> dyn =
        dynamicSizes(rewriter, loc, codes.getValuesType(), input);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), dyn);
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), dyn);
    int64_t n = codes.getNumLatents(), k = codes.getK();
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    auto cI32 = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
    };
    // The users whose products go dense, and what they need.
    int64_t d = 0;
    SmallVector<Operation *> dense;
    if (elt.isF32())
      for (Operation *user : op->getUsers()) {
        Value w;
        if (auto decode = dyn_cast<DecodeOp>(user))
          w = decode.getWeight();
        else if (auto sddmm = dyn_cast<SddmmOp>(user))
          w = sddmm.getWeight();
        else if (auto outer = dyn_cast<OuterOp>(user);
                 outer && !outer.getTransposed())
          w = outer.getRhs();
        if (!w || user->getBlock() != op->getBlock())
          continue;
        int64_t width = cast<RankedTensorType>(w.getType()).getDimSize(1);
        if (ShapedType::isDynamic(width) || width % (2 * lanes) != 0 ||
            (d && width != d))
          continue;
        // Decoder rows are gathered where the selection is: the weight
        // must be there already (a parameter).
        if (!isa<OuterOp>(user) && !definedBefore(w, op))
          continue;
        d = width;
        dense.push_back(user);
      }
    // Transposed outer products (the encoder's gradient, Xᵀ · dz) of codes
    // with these entries, alone or beside others': that part goes dense
    // too.
    SmallVector<std::pair<OuterOp, int64_t>> encoderGrads;
    if (!dense.empty())
      for (Operation &o : *op->getBlock())
        if (auto outer = dyn_cast<OuterOp>(&o))
          if (std::optional<int64_t> part = deadPart(op, outer);
              part && outer.getRhs().getType().getDimSize(1) % (2 * lanes) == 0)
            encoderGrads.push_back({outer, *part});
    // Gathers of the input at these entries (ReLU's gradient, through
    // later codes with the same entries): a slot's value is the input at
    // its latent, kept by the selection, except where the slot was left
    // over (the filler's index). Only those read the input, in one column,
    // instead of B·k random reads of the [B, n] matrix.
    SmallVector<GatherOp> inputGathers;
    for (Operation &o : *op->getBlock())
      if (auto gather = dyn_cast<GatherOp>(&o);
          gather && gather.getSource() == input && gather.getType() == codes &&
          entriesSource(gather.getCodes()) == op.getResult())
        inputGathers.push_back(gather);
    // The dead list, built where the mask is: an encoder product before
    // the selection can then write the dead columns side by side as it
    // goes (sae.take_columns) instead of its whole [B, n] result.
    // dead[0, count) = the latents whose mask is positive, in order;
    // slotOf[j] = latent j's place in that list (-1: alive), by which the
    // outer products are placed at their latents.
    Value dead, slotOf, count, filler, colSlot, width, fillerCol;
    {
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPointAfterValue(op.getMask());
      Value mask = toBuffer(rewriter, loc, op.getMask());
      slotOf =
          memref::AllocOp::create(rewriter, loc, MemRefType::get({n}, i32));
      dead = memref::AllocOp::create(rewriter, loc,
                                     MemRefType::get({n}, indexType));
      Value zero = floatConst(rewriter, loc, elt, 0.0);
      // alive: the first latent that is not dead (n when all are).
      auto list = scf::ForOp::create(
          rewriter, loc, idx(rewriter, 0), idx(rewriter, n), idx(rewriter, 1),
          ValueRange{idx(rewriter, 0), idx(rewriter, n)},
          [&](OpBuilder &b, Location l, Value j, ValueRange acc) {
            Value m = memref::LoadOp::create(b, l, mask, ValueRange{j});
            Value isDead =
                arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT, m, zero);
            Value next = arith::AddIOp::create(
                b, l, acc[0],
                arith::IndexCastUIOp::create(b, l, indexType, isDead));
            // Written at every j; only a dead latent's write is kept.
            memref::StoreOp::create(b, l, j, dead, ValueRange{acc[0]});
            memref::StoreOp::create(
                b, l,
                arith::SelectOp::create(
                    b, l, isDead, arith::IndexCastOp::create(b, l, i32, acc[0]),
                    cI32(b, -1)),
                slotOf, ValueRange{j});
            Value firstAlive = arith::AndIOp::create(
                b, l,
                arith::CmpIOp::create(b, l, arith::CmpIPredicate::eq, acc[1],
                                      idx(b, n)),
                arith::XOrIOp::create(
                    b, l, isDead,
                    arith::ConstantOp::create(b, l, b.getBoolAttr(true))));
            scf::YieldOp::create(
                b, l,
                ValueRange{next, arith::SelectOp::create(b, l, firstAlive, j,
                                                         acc[1])});
          });
      count = list.getResult(0);
      Value alive = list.getResult(1);
      Value allDead = arith::CmpIOp::create(
          rewriter, loc, arith::CmpIPredicate::eq, alive, idx(rewriter, n));
      // Slots left over (a row has fewer valid dead entries than k) point
      // at a live latent with value 0: the gradient that flows back to the
      // input through them is masked off with the live latent (a dead one
      // would receive it a second time). With every latent dead, no row
      // has fewer than k dead entries unless some are NaN or -inf.
      filler = arith::IndexCastOp::create(
          rewriter, loc, i32,
          arith::SelectOp::create(rewriter, loc, allDead, idx(rewriter, 0),
                                  alive));
      // The columns the selection reads: the dead ones in list order, then
      // the filler's (which ReLU's gradient reads at slots left over);
      // with every latent dead, the filler is latent 0, column 0.
      colSlot =
          memref::AllocOp::create(rewriter, loc, MemRefType::get({n}, i32));
      memref::CopyOp::create(rewriter, loc, slotOf, colSlot);
      Value anyAlive = arith::XOrIOp::create(
          rewriter, loc, allDead,
          arith::ConstantOp::create(rewriter, loc, rewriter.getBoolAttr(true)));
      scf::IfOp::create(
          rewriter, loc, anyAlive, [&](OpBuilder &tb, Location tl) {
            memref::StoreOp::create(
                tb, tl, arith::IndexCastOp::create(tb, tl, i32, count), colSlot,
                ValueRange{alive});
            scf::YieldOp::create(tb, tl);
          });
      fillerCol = arith::SelectOp::create(rewriter, loc, allDead,
                                          idx(rewriter, 0), count);
      width = arith::AddIOp::create(
          rewriter, loc, count,
          arith::IndexCastUIOp::create(rewriter, loc, indexType, anyAlive));
      colSlot =
          asTensor(rewriter, loc, RankedTensorType::get({n}, i32), colSlot);
    }
    auto inType = cast<RankedTensorType>(input.getType());
    Value in =
        toBuffer(rewriter, loc,
                 TakeColumnsOp::create(
                     rewriter, loc,
                     RankedTensorType::get(
                         {inType.getDimSize(0), ShapedType::kDynamic}, elt),
                     input, colSlot, width));
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);

    // pos[row, slot]: the slot's place in the dead list (-1: unfilled).
    Value pos;
    if (!dense.empty())
      pos = allocLike(
          rewriter, loc,
          RankedTensorType::get(codes.getValuesType().getShape(), i32), dyn);

    forEachRowParallel(
        rewriter, loc, rows, [&](OpBuilder &b, Location l, Value row) {
          Value keys = memref::AllocOp::create(
              b, l, MemRefType::get({ShapedType::kDynamic}, i32),
              ValueRange{count});
          Value negInf = negInfOf(b, l, elt);
          auto forDead = [&](OpBuilder &ob, ValueRange init,
                             function_ref<SmallVector<Value>(
                                 OpBuilder &, Location, Value, ValueRange)>
                                 body) {
            return scf::ForOp::create(
                       ob, l, idx(ob, 0), count, idx(ob, 1), init,
                       [&](OpBuilder &fb, Location fl, Value t,
                           ValueRange acc) {
                         scf::YieldOp::create(fb, fl, body(fb, fl, t, acc));
                       })
                .getResults();
          };
          auto valueAt = [&](OpBuilder &ob, Location ol, Value t) {
            return memref::LoadOp::create(ob, ol, in, ValueRange{row, t})
                .getResult();
          };
          // keys[t]: the key of dead column t, 0 for NaN and -inf.
          forDead(b, {}, [&](OpBuilder &fb, Location fl, Value t, ValueRange) {
            Value v = valueAt(fb, fl, t);
            Value isNegInf = arith::CmpFOp::create(
                fb, fl, arith::CmpFPredicate::OEQ, v, negInf);
            Value key =
                arith::TruncIOp::create(fb, fl, i32, orderedKey(fb, fl, v));
            key = arith::SelectOp::create(fb, fl, isNegInf, cI32(fb, 0), key);
            memref::StoreOp::create(fb, fl, key, keys, ValueRange{t});
            return SmallVector<Value>{};
          });
          // The number of keys at or above (pred uge) / above (ugt) `t`.
          auto countKeys = [&](OpBuilder &ob, Value t,
                               arith::CmpIPredicate pred) {
            return forDead(
                ob, {cI32(ob, 0)},
                [&](OpBuilder &fb, Location fl, Value s, ValueRange acc) {
                  Value key =
                      memref::LoadOp::create(fb, fl, keys, ValueRange{s});
                  Value hit = arith::CmpIOp::create(fb, fl, pred, key, t);
                  return SmallVector<Value>{arith::AddIOp::create(
                      fb, fl, acc[0],
                      arith::ExtUIOp::create(fb, fl, i32, hit))};
                })[0];
          };
          // threshold: the largest key with at least k keys at or above it,
          // built from the top bit down; 1 when fewer than k keys are valid.
          Value cK = cI32(b, k);
          Value threshold =
              scf::ForOp::create(
                  b, l, idx(b, 0), idx(b, 32), idx(b, 1),
                  ValueRange{cI32(b, 0)},
                  [&](OpBuilder &fb, Location fl, Value i, ValueRange acc) {
                    Value bit = arith::ShLIOp::create(
                        fb, fl, cI32(fb, 1),
                        arith::SubIOp::create(
                            fb, fl, cI32(fb, 31),
                            arith::IndexCastOp::create(fb, fl, i32, i)));
                    Value cand = arith::OrIOp::create(fb, fl, acc[0], bit);
                    Value enough = arith::CmpIOp::create(
                        fb, fl, arith::CmpIPredicate::uge,
                        countKeys(fb, cand, arith::CmpIPredicate::uge), cK);
                    scf::YieldOp::create(fb, fl,
                                         ValueRange{arith::SelectOp::create(
                                             fb, fl, enough, cand, acc[0])});
                  })
                  .getResult(0);
          threshold = arith::MaxUIOp::create(b, l, threshold, cI32(b, 1));
          Value ties = arith::SubIOp::create(
              b, l, cK, countKeys(b, threshold, arith::CmpIPredicate::ugt));
          // Keep the keys above the threshold and the first `ties` equal to
          // it. Without a branch (about a third of the keys are kept, at no
          // pattern): every entry is written at the next free place of a
          // row of k + 1 on the stack, and only a kept one moves it on.
          auto scratchOf = [&](Type t) -> Value {
            return memref::AllocaOp::create(b, l, MemRefType::get({k + 1}, t));
          };
          Value keptVals = scratchOf(elt), keptIdxs = scratchOf(i32);
          Value keptPos = pos ? scratchOf(i32) : Value();
          Value filled = forDead(
              b, {idx(b, 0), cI32(b, 0)},
              [&](OpBuilder &fb, Location fl, Value t, ValueRange acc) {
                Value key = memref::LoadOp::create(fb, fl, keys, ValueRange{t});
                Value above = arith::CmpIOp::create(
                    fb, fl, arith::CmpIPredicate::ugt, key, threshold);
                Value tie = arith::AndIOp::create(
                    fb, fl,
                    arith::CmpIOp::create(fb, fl, arith::CmpIPredicate::eq, key,
                                          threshold),
                    arith::CmpIOp::create(fb, fl, arith::CmpIPredicate::ult,
                                          acc[1], ties));
                Value keep = arith::OrIOp::create(fb, fl, above, tie);
                Value v = valueAt(fb, fl, t);
                Value col = memref::LoadOp::create(fb, fl, dead, ValueRange{t});
                memref::StoreOp::create(fb, fl, v, keptVals, acc[0]);
                memref::StoreOp::create(
                    fb, fl, arith::IndexCastOp::create(fb, fl, i32, col),
                    keptIdxs, acc[0]);
                if (keptPos)
                  memref::StoreOp::create(
                      fb, fl, arith::IndexCastOp::create(fb, fl, i32, t),
                      keptPos, acc[0]);
                return SmallVector<Value>{
                    arith::AddIOp::create(
                        fb, fl, acc[0],
                        arith::IndexCastUIOp::create(fb, fl, indexType, keep)),
                    arith::AddIOp::create(
                        fb, fl, acc[1],
                        arith::ExtUIOp::create(fb, fl, i32, tie))};
              })[0];
          forRange(b, l, idx(b, 0), filled, [&](OpBuilder &fb, Value s) {
            SmallVector<Value, 2> at{row, s};
            memref::StoreOp::create(
                fb, l, memref::LoadOp::create(fb, l, keptVals, s), vals, at);
            memref::StoreOp::create(
                fb, l, memref::LoadOp::create(fb, l, keptIdxs, s), idxs, at);
            if (pos)
              memref::StoreOp::create(
                  fb, l, memref::LoadOp::create(fb, l, keptPos, s), pos, at);
          });
          scf::ForOp::create(
              b, l, filled, idx(b, k), idx(b, 1), ValueRange{},
              [&](OpBuilder &fb, Location fl, Value s, ValueRange) {
                SmallVector<Value, 2> at{row, s};
                memref::StoreOp::create(fb, fl, floatConst(fb, fl, elt, 0.0),
                                        vals, at);
                memref::StoreOp::create(fb, fl, filler, idxs, at);
                if (pos)
                  memref::StoreOp::create(fb, fl, cI32(fb, -1), pos, at);
                scf::YieldOp::create(fb, fl);
              });
        });
    if (!dense.empty())
      denseProducts(rewriter, op, dense, encoderGrads, d, dead, count, rows,
                    vals, idxs, pos, slotOf);
    for (GatherOp gather : inputGathers) {
      rewriter.setInsertionPoint(gather);
      Location l = gather.getLoc();
      Value out = allocLike(rewriter, l, codes.getValuesType(), dyn);
      forEachRowParallel(
          rewriter, l, rows, [&](OpBuilder &b, Location bl, Value row) {
            Value atFiller =
                memref::LoadOp::create(b, bl, in, ValueRange{row, fillerCol});
            forRange(b, bl, idx(b, 0), idx(b, k), [&](OpBuilder &fb, Value s) {
              SmallVector<Value, 2> at{row, s};
              Value isFiller = arith::CmpIOp::create(
                  fb, bl, arith::CmpIPredicate::eq,
                  memref::LoadOp::create(fb, bl, idxs, at), filler);
              memref::StoreOp::create(
                  fb, bl,
                  arith::SelectOp::create(
                      fb, bl, isFiller, atFiller,
                      memref::LoadOp::create(fb, bl, vals, at)),
                  out, at);
            });
          });
      Value indices = CodesIndicesOp::create(
          rewriter, l, codes.getIndicesType(), gather.getCodes());
      rewriter.replaceOpWithNewOp<MakeCodesOp>(
          gather, codes, asTensor(rewriter, l, codes.getValuesType(), out),
          indices, Value());
    }
    rewriter.setInsertionPoint(op);
    replaceWithCodes(rewriter, op, codes, vals, idxs);
    return success();
  }

  /// When `outer` is a transposed outer product without an init of codes
  /// with `selection`'s entries, or of codes that put them beside others
  /// (a tensor.concat of values and of indices along the entries, as the
  /// differentiator merges products): -1 in the first case, else the
  /// place of `selection`'s part among the concat's operands.
  static std::optional<int64_t> deadPart(DeadTopKOp selection, OuterOp outer) {
    if (!outer.getTransposed() || outer.getInit())
      return std::nullopt;
    if (entriesSource(outer.getCodes()) == selection.getResult())
      return -1;
    auto make = outer.getCodes().getDefiningOp<MakeCodesOp>();
    if (!make || make.getRows())
      return std::nullopt;
    auto vals = make.getValues().getDefiningOp<tensor::ConcatOp>();
    auto idxs = make.getIndices().getDefiningOp<tensor::ConcatOp>();
    if (!vals || !idxs || vals.getDim() != 1 || idxs.getDim() != 1 ||
        vals.getInputs().size() != idxs.getInputs().size())
      return std::nullopt;
    int64_t k = selection.getType().getK();
    for (auto [i, in] : llvm::enumerate(idxs.getInputs())) {
      auto parts = in.getDefiningOp<CodesIndicesOp>();
      if (parts && entriesSource(parts.getCodes()) == selection.getResult() &&
          cast<RankedTensorType>(vals.getInputs()[i].getType()).getDimSize(1) ==
              k)
        return int64_t(i);
    }
    return std::nullopt;
  }

  /// Rewrites `users` (decode, sddmm and outer of op's codes, width d) as
  /// dense products over the `count` dead latents listed in `dead`.
  void denseProducts(PatternRewriter &rewriter, DeadTopKOp op,
                     ArrayRef<Operation *> users,
                     ArrayRef<std::pair<OuterOp, int64_t>> encoderGrads,
                     int64_t d, Value dead, Value count, Value rows, Value vals,
                     Value idxs, Value pos, Value slotOf) const {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type f32 = rewriter.getF32Type();
    int64_t k = codes.getK();
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    auto vecsFor = [&](int64_t width) {
      return lanes >= 16 && width % (4 * lanes) == 0 ? 4 : 2;
    };
    int64_t padCols = (lanes >= 16 ? 4 : 2) * lanes;
    // padded = count rounded up to whole panels of the [B, n_dead]
    // product (sddmm); the extra rows and columns are zero.
    Value padded =
        arith::MulIOp::create(rewriter, loc,
                              arith::CeilDivUIOp::create(
                                  rewriter, loc, count, idx(rewriter, padCols)),
                              idx(rewriter, padCols));
    // Dense products cost 2·B·n_dead·d each, the grouped ones 2·B·k·d at
    // a lower speed: with many more dead latents than k (a run that lost
    // many), the grouped ones are cheaper. Both are built; this picks one.
    Value useDense =
        arith::CmpIOp::create(rewriter, loc, arith::CmpIPredicate::ule, count,
                              idx(rewriter, kDenseDeadRatio * k));
    // The dense products' buffers have no rows or columns for dead latents
    // while the grouped ones run.
    Value denseDead = arith::SelectOp::create(rewriter, loc, useDense, padded,
                                              idx(rewriter, 0));
    auto ifDense = [&](OpBuilder &b, function_ref<void(OpBuilder &)> fn) {
      scf::IfOp::create(b, loc, useDense, [&](OpBuilder &tb, Location tl) {
        fn(tb);
        scf::YieldOp::create(tb, tl);
      });
    };
    auto matrix = [&](OpBuilder &b, Value r, int64_t c) {
      return memref::AllocOp::create(
          b, loc, MemRefType::get({ShapedType::kDynamic, c}, f32),
          ValueRange{r});
    };
    auto dynMatrix = [&](OpBuilder &b, Value r, Value c) {
      return memref::AllocOp::create(
          b, loc,
          MemRefType::get({ShapedType::kDynamic, ShapedType::kDynamic}, f32),
          ValueRange{r, c});
    };
    auto fillZero = [&](OpBuilder &b, Value buf) {
      linalg::FillOp::create(b, loc, ValueRange{floatConst(b, loc, f32, 0.0)},
                             ValueRange{buf});
    };
    // Every filled slot of a row, with its place in the dead list.
    auto forFilled = [&](OpBuilder &b, Location l, Value row,
                         function_ref<void(OpBuilder &, Location, Value slot,
                                           Value p)>
                             fn) {
      scf::ForOp::create(
          b, l, idx(b, 0), idx(b, k), idx(b, 1), ValueRange{},
          [&](OpBuilder &fb, Location fl, Value s, ValueRange) {
            Value p = memref::LoadOp::create(fb, fl, pos, ValueRange{row, s});
            Value isFilled = arith::CmpIOp::create(
                fb, fl, arith::CmpIPredicate::sge, p,
                arith::ConstantOp::create(fb, fl, fb.getI32IntegerAttr(0)));
            scf::IfOp::create(
                fb, fl, isFilled, [&](OpBuilder &ib, Location il) {
                  fn(ib, il, s,
                     arith::IndexCastOp::create(ib, il, ib.getIndexType(), p));
                  scf::YieldOp::create(ib, il);
                });
            scf::YieldOp::create(fb, fl);
          });
    };
    // Built once, at the selection, when a user first needs them.
    Value za, zaT;
    llvm::SmallDenseMap<Value, std::pair<Value, Value>> gathered;
    auto denseCodes = [&]() {
      if (za)
        return;
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPoint(op);
      za = dynMatrix(rewriter, rows, denseDead);
      ifDense(rewriter, [&](OpBuilder &ib) {
        fillZero(ib, za);
        forEachRowParallel(
            ib, loc, rows, [&](OpBuilder &b, Location l, Value row) {
              forFilled(
                  b, l, row, [&](OpBuilder &fb, Location fl, Value s, Value p) {
                    Value v = memref::LoadOp::create(fb, fl, vals,
                                                     ValueRange{row, s});
                    memref::StoreOp::create(fb, fl, v, za, ValueRange{row, p});
                  });
            });
      });
    };
    auto transposedCodes = [&]() {
      if (zaT)
        return;
      denseCodes();
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPoint(op);
      zaT = dynMatrix(rewriter, denseDead, rows);
      ifDense(rewriter, [&](OpBuilder &ib) {
        emitTranspose(ib, loc, za, zaT, padded, rows);
      });
    };
    // Wd [padded, d] = the dead rows of w, and its transpose [d, padded].
    auto decoderRows = [&](Value w) {
      auto it = gathered.find(w);
      if (it != gathered.end())
        return it->second;
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPoint(op);
      Value wBuf = toBuffer(rewriter, loc, w);
      Value wd = matrix(rewriter, denseDead, d);
      Value wdT = dynMatrix(rewriter, idx(rewriter, d), denseDead);
      ifDense(rewriter, [&](OpBuilder &ib) {
        forEachRowParallel(
            ib, loc, padded, [&](OpBuilder &b, Location l, Value s) {
              Value live = arith::CmpIOp::create(
                  b, l, arith::CmpIPredicate::ult, s, count);
              Value src =
                  memref::LoadOp::create(b, l, dead,
                                         ValueRange{arith::SelectOp::create(
                                             b, l, live, s, idx(b, 0))});
              scf::ForOp::create(
                  b, l, idx(b, 0), idx(b, d), idx(b, 1), ValueRange{},
                  [&](OpBuilder &fb, Location fl, Value c, ValueRange) {
                    Value x = memref::LoadOp::create(fb, fl, wBuf,
                                                     ValueRange{src, c});
                    memref::StoreOp::create(
                        fb, fl,
                        arith::SelectOp::create(fb, fl, live, x,
                                                floatConst(fb, fl, f32, 0.0)),
                        wd, ValueRange{s, c});
                    scf::YieldOp::create(fb, fl);
                  });
            });
        emitTranspose(ib, loc, wd, wdT, idx(ib, d), padded);
      });
      return gathered[w] = {wd, wdT};
    };

    // Rows [count, w] of the dead latents placed at their latents: [n, w].
    auto placeAtSlots = [&](Location l, Value deadRows, int64_t w) -> Value {
      int64_t n = codes.getNumLatents();
      return PlaceRowsOp::create(
          rewriter, l, RankedTensorType::get({n, w}, f32), deadRows,
          asTensor(rewriter, l,
                   RankedTensorType::get({n}, rewriter.getI32Type()), slotOf));
    };

    // Grouped sparse products, with many dead latents. A row's filled
    // slots are in dead-list order, so its entries among a group of
    // groupSize consecutive dead latents are the slots [first[row, g],
    // first[row, g + 1]). The decoder's dead rows are packed as panels
    // [chunk, place, column] of `chunkOf(width)` columns. The decode and
    // the sddmm take blocks of kRowBlock rows in parallel and, chunk by
    // chunk and group by group, visit each row's entries in the group, so
    // the group's panel rows stay in cache while the rows go by. The outer
    // products sort the entries by place and sum each place's in
    // registers, chunk by chunk, from panels of their right-hand side. Every
    // sum runs in an order fixed by the entries, whatever the threads.
    Type indexType = rewriter.getIndexType();
    auto chunkOf = [&](int64_t width) {
      for (int64_t vecs : {12, 8, 4})
        if (width % (vecs * lanes) == 0)
          return vecs * lanes;
      return 2 * lanes; // the widths taken here are multiples of it
    };
    auto vecType = VectorType::get({lanes}, f32);
    auto ifSparse = [&](OpBuilder &b, function_ref<void(OpBuilder &)> fn) {
      scf::IfOp::create(
          b, loc, useDense,
          [&](OpBuilder &tb, Location tl) { scf::YieldOp::create(tb, tl); },
          [&](OpBuilder &eb, Location el) {
            fn(eb);
            scf::YieldOp::create(eb, el);
          });
    };
    auto index = [&](OpBuilder &b, Value buf, ValueRange at) -> Value {
      return arith::IndexCastOp::create(
          b, loc, indexType, memref::LoadOp::create(b, loc, buf, at));
    };
    Value groupSize, groups, first;
    auto groupStarts = [&]() {
      if (first)
        return;
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPoint(op);
      groupSize = arith::MinUIOp::create(
          rewriter, loc,
          arith::MaxUIOp::create(
              rewriter, loc,
              arith::CeilDivUIOp::create(
                  rewriter, loc,
                  arith::MulIOp::create(rewriter, loc, count,
                                        idx(rewriter, kGroupEntries)),
                  idx(rewriter, k)),
              idx(rewriter, kMinGroup)),
          idx(rewriter, kMaxGroup));
      groups = arith::CeilDivUIOp::create(rewriter, loc, count, groupSize);
      Value cols =
          arith::AddIOp::create(rewriter, loc, groups, idx(rewriter, 1));
      first = memref::AllocOp::create(
          rewriter, loc,
          MemRefType::get({ShapedType::kDynamic, ShapedType::kDynamic},
                          indexType),
          ValueRange{rows, cols});
      ifSparse(rewriter, [&](OpBuilder &ib) {
        forEachRowParallel(
            ib, loc, rows, [&](OpBuilder &b, Location l, Value row) {
              // Count each group's entries one place on, then sum up.
              forRange(b, l, idx(b, 0), cols, [&](OpBuilder &fb, Value g) {
                memref::StoreOp::create(fb, l, idx(fb, 0), first,
                                        ValueRange{row, g});
              });
              forFilled(
                  b, l, row, [&](OpBuilder &fb, Location fl, Value, Value p) {
                    SmallVector<Value, 2> at{
                        row, arith::AddIOp::create(
                                 fb, fl,
                                 arith::DivUIOp::create(fb, fl, p, groupSize),
                                 idx(fb, 1))};
                    Value c = memref::LoadOp::create(fb, fl, first, at);
                    memref::StoreOp::create(
                        fb, fl, arith::AddIOp::create(fb, fl, c, idx(fb, 1)),
                        first, at);
                  });
              forRange(b, l, idx(b, 1), cols, [&](OpBuilder &fb, Value g) {
                Value below = memref::LoadOp::create(
                    fb, l, first,
                    ValueRange{row,
                               arith::SubIOp::create(fb, l, g, idx(fb, 1))});
                Value here =
                    memref::LoadOp::create(fb, l, first, ValueRange{row, g});
                memref::StoreOp::create(
                    fb, l, arith::AddIOp::create(fb, l, below, here), first,
                    ValueRange{row, g});
              });
            });
      });
    };
    // panel[c, r, :] = columns [c·chunk, (c + 1)·chunk) of buf's row
    // rowOf(r), for r < panelRows.
    auto packPanels =
        [&](OpBuilder &b, Value buf, int64_t width, int64_t chunk,
            Value panelRows,
            function_ref<Value(OpBuilder &, Location, Value)> rowOf) -> Value {
      Value panel = memref::AllocOp::create(
          b, loc,
          MemRefType::get({width / chunk, ShapedType::kDynamic, chunk}, f32),
          ValueRange{panelRows});
      forEachRowParallel(
          b, loc, panelRows, [&](OpBuilder &pb, Location l, Value r) {
            Value src = rowOf(pb, l, r);
            for (int64_t c = 0; c < width; c += lanes) {
              Value v = vector::LoadOp::create(pb, l, vecType, buf,
                                               ValueRange{src, idx(pb, c)});
              vector::StoreOp::create(
                  pb, l, v, panel,
                  ValueRange{idx(pb, c / chunk), r, idx(pb, c % chunk)});
            }
          });
      return panel;
    };
    // The dead rows of decoder w as panels, built at the selection.
    llvm::SmallDenseMap<Value, Value> panelsOf;
    auto deadPanels = [&](Value w, int64_t chunk) {
      if (Value p = panelsOf.lookup(w))
        return p;
      groupStarts();
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPoint(op);
      Value wBuf = toBuffer(rewriter, loc, w);
      int64_t width = cast<MemRefType>(wBuf.getType()).getDimSize(1);
      // No rows while the products are dense.
      Value panelRows = arith::SelectOp::create(rewriter, loc, useDense,
                                                idx(rewriter, 0), count);
      Value panel =
          packPanels(rewriter, wBuf, width, chunk, panelRows,
                     [&](OpBuilder &b, Location l, Value r) -> Value {
                       return memref::LoadOp::create(b, l, dead, ValueRange{r});
                     });
      return panelsOf[w] = panel;
    };
    // Zeroes `out`, then calls body(b, l, panel, c, col, row, t0, t1) for
    // each chunk c of decoder w's dead rows (panel[c], its first column
    // col), group g and row, the row's entries in g being the slots
    // [t0, t1): blocks of rows in parallel, then chunks, groups and the
    // block's rows in order.
    auto forGroupedRows = [&](OpBuilder &b, Value w, int64_t width, Value out,
                              function_ref<void(OpBuilder &, Location,
                                                Value panel, Value c, Value col,
                                                Value row, Value t0, Value t1)>
                                  body) {
      int64_t chunk = chunkOf(width);
      Value panel = deadPanels(w, chunk);
      fillZero(b, out);
      Value blocks =
          arith::CeilDivUIOp::create(b, loc, rows, idx(b, kRowBlock));
      forEachRowParallel(
          b, loc, blocks, [&](OpBuilder &pb, Location l, Value blk) {
            Value r0 = arith::MulIOp::create(pb, l, blk, idx(pb, kRowBlock));
            Value r1 = arith::MinUIOp::create(
                pb, l, rows,
                arith::AddIOp::create(pb, l, r0, idx(pb, kRowBlock)));
            forRange(
                pb, l, idx(pb, 0), idx(pb, width / chunk),
                [&](OpBuilder &cb, Value c) {
                  Value col = arith::MulIOp::create(cb, l, c, idx(cb, chunk));
                  forRange(
                      cb, l, idx(cb, 0), groups, [&](OpBuilder &gb, Value g) {
                        Value next =
                            arith::AddIOp::create(gb, l, g, idx(gb, 1));
                        forRange(gb, l, r0, r1, [&](OpBuilder &rb, Value row) {
                          body(rb, l, panel, c, col, row,
                               memref::LoadOp::create(rb, l, first,
                                                      ValueRange{row, g}),
                               memref::LoadOp::create(rb, l, first,
                                                      ValueRange{row, next}));
                        });
                      });
                });
          });
    };
    auto vecLoads = [&](OpBuilder &b, Location l, Value buf, ValueRange at,
                        int64_t n) {
      SmallVector<Value> vs;
      SmallVector<Value, 3> where(at.begin(), at.end());
      for (int64_t u = 0; u < n; ++u) {
        where.back() =
            arith::AddIOp::create(b, l, at.back(), idx(b, u * lanes));
        vs.push_back(vector::LoadOp::create(b, l, vecType, buf, where));
      }
      return vs;
    };
    auto vecStores = [&](OpBuilder &b, Location l, ValueRange vs, Value buf,
                         ValueRange at) {
      SmallVector<Value, 3> where(at.begin(), at.end());
      for (auto [u, v] : llvm::enumerate(vs)) {
        where.back() =
            arith::AddIOp::create(b, l, at.back(), idx(b, u * lanes));
        vector::StoreOp::create(b, l, v, buf, where);
      }
    };
    // out[row, :] = Σ vals[row, t] · Wd[pos[row, t], :].
    auto groupedDecode = [&](OpBuilder &b, Value w, int64_t width) {
      int64_t vecs = chunkOf(width) / lanes;
      Value out = matrix(b, rows, width);
      forGroupedRows(
          b, w, width, out,
          [&](OpBuilder &rb, Location l, Value panel, Value c, Value col,
              Value row, Value t0, Value t1) {
            SmallVector<Value> acc = vecLoads(rb, l, out, {row, col}, vecs);
            auto loop = scf::ForOp::create(
                rb, l, t0, t1, idx(rb, 1), acc,
                [&](OpBuilder &eb, Location, Value t, ValueRange a) {
                  Value v = vector::BroadcastOp::create(
                      eb, l, vecType,
                      memref::LoadOp::create(eb, l, vals, ValueRange{row, t}));
                  SmallVector<Value> w =
                      vecLoads(eb, l, panel,
                               {c, index(eb, pos, {row, t}), idx(eb, 0)}, vecs);
                  SmallVector<Value> next;
                  for (int64_t u = 0; u < vecs; ++u)
                    next.push_back(vector::FMAOp::create(eb, l, v, w[u], a[u]));
                  scf::YieldOp::create(eb, l, next);
                });
            vecStores(rb, l, loop.getResults(), out, {row, col});
          });
      return out;
    };
    // out[row, t] = ⟨lhs[row, :], Wd[pos[row, t], :]⟩ at filled slots, 0 at
    // the others.
    auto groupedSddmm = [&](OpBuilder &b, Value lhs, Value w, int64_t width) {
      int64_t vecs = chunkOf(width) / lanes;
      auto valsType = codes.getValuesType();
      Value out = allocLike(b, loc, valsType,
                            dynamicSizes(b, loc, valsType, op.getInput()));
      forGroupedRows(
          b, w, width, out,
          [&](OpBuilder &rb, Location l, Value panel, Value c, Value col,
              Value row, Value t0, Value t1) {
            SmallVector<Value> x = vecLoads(rb, l, lhs, {row, col}, vecs);
            forRange(rb, l, t0, t1, [&](OpBuilder &eb, Value t) {
              SmallVector<Value> w =
                  vecLoads(eb, l, panel,
                           {c, index(eb, pos, {row, t}), idx(eb, 0)}, vecs);
              // Four chains of multiply-adds, then their sum, then the
              // lanes'.
              SmallVector<Value, 4> part;
              for (int64_t u = 0; u < vecs; ++u)
                if (u < 4)
                  part.push_back(arith::MulFOp::create(eb, l, x[u], w[u]));
                else
                  part[u % 4] =
                      vector::FMAOp::create(eb, l, x[u], w[u], part[u % 4]);
              while (part.size() > 1) {
                part[0] = arith::AddFOp::create(eb, l, part[0], part.back());
                part.pop_back();
                if (part.size() > 1) {
                  part[1] = arith::AddFOp::create(eb, l, part[1], part.back());
                  part.pop_back();
                }
              }
              Value dot = vector::ReductionOp::create(
                  eb, l, vector::CombiningKind::ADD, part[0],
                  arith::FastMathFlags::reassoc);
              SmallVector<Value, 2> at{row, t};
              memref::StoreOp::create(
                  eb, l,
                  arith::AddFOp::create(
                      eb, l, memref::LoadOp::create(eb, l, out, at), dot),
                  out, at);
            });
          });
      return out;
    };
    // out[p, :] = Σ over the filled slots t at place p: values[row, t] ·
    // rhs[row, :] (rows [count, width]). The entries are sorted by place
    // (LatentEntries, with the places as latents; zero values are left
    // out), then, chunk by chunk, each place's sum is taken in registers
    // over its entries in row order, reading the chunk of rhs from panels
    // that stay in L2.
    auto groupedOuter = [&](OpBuilder &b, Location l, Value values,
                            Value rhs) -> Value {
      Value rhsBuf = toBuffer(b, l, rhs);
      int64_t width = cast<MemRefType>(rhsBuf.getType()).getDimSize(1);
      int64_t chunk = chunkOf(width);
      Value panel =
          packPanels(b, rhsBuf, width, chunk, rows,
                     [](OpBuilder &, Location, Value r) { return r; });
      auto byPlace = MakeCodesOp::create(
          b, l, codes, values, asTensor(b, l, codes.getIndicesType(), pos),
          Value());
      Value out = matrix(b, count, width);
      sumRowsByLatent(b, l, byPlace, panel, out, count, lanes);
      return out;
    };

    for (Operation *user : users) {
      rewriter.setInsertionPoint(user);
      Location l = user->getLoc();
      // The result in each case: dense (then) or grouped (else).
      auto choose = [&](function_ref<Value(OpBuilder &)> dense,
                        function_ref<Value(OpBuilder &)> sparse) {
        auto choice = scf::IfOp::create(
            rewriter, l, useDense,
            [&](OpBuilder &tb, Location tl) {
              scf::YieldOp::create(tb, tl, dense(tb));
            },
            [&](OpBuilder &eb, Location el) {
              scf::YieldOp::create(eb, el, sparse(eb));
            });
        return choice.getResult(0);
      };
      if (auto decode = dyn_cast<DecodeOp>(user)) {
        // recon[B, d] = Za · Wd.
        denseCodes();
        Value wd = decoderRows(decode.getWeight()).first;
        auto type = cast<RankedTensorType>(decode.getType());
        rewriter.replaceOp(
            user,
            choose(
                [&](OpBuilder &tb) {
                  Value out = matrix(tb, rows, d);
                  emitPanelGemm(tb, l, za, wd, out, rows, padded, idx(tb, d),
                                lanes, vecsFor(d), Value(), false);
                  return asTensor(tb, l, type, out);
                },
                [&](OpBuilder &eb) {
                  return asTensor(eb, l, type,
                                  groupedDecode(eb, decode.getWeight(), d));
                }));
      } else if (auto sddmm = dyn_cast<SddmmOp>(user)) {
        // S[B, n_dead] = lhs · Wdᵀ, read at each filled slot.
        Value wdT = decoderRows(sddmm.getWeight()).second;
        auto valsType = codes.getValuesType();
        Value values = choose(
            [&](OpBuilder &tb) {
              Value s = dynMatrix(tb, rows, padded);
              emitPanelGemm(tb, l, toBuffer(tb, l, sddmm.getLhs()), wdT, s,
                            rows, idx(tb, d), padded, lanes, padCols / lanes,
                            Value(), false);
              Value out =
                  allocLike(tb, l, valsType,
                            dynamicSizes(tb, l, valsType, op.getInput()));
              fillZero(tb, out);
              forEachRowParallel(
                  tb, l, rows, [&](OpBuilder &b, Location bl, Value row) {
                    forFilled(
                        b, bl, row,
                        [&](OpBuilder &fb, Location fl, Value slot, Value p) {
                          Value v = memref::LoadOp::create(fb, fl, s,
                                                           ValueRange{row, p});
                          memref::StoreOp::create(fb, fl, v, out,
                                                  ValueRange{row, slot});
                        });
                  });
              return asTensor(tb, l, valsType, out);
            },
            [&](OpBuilder &eb) {
              return asTensor(eb, l, valsType,
                              groupedSddmm(eb, toBuffer(eb, l, sddmm.getLhs()),
                                           sddmm.getWeight(), d));
            });
        rewriter.replaceOpWithNewOp<MakeCodesOp>(
            user, codes, values,
            asTensor(rewriter, l, codes.getIndicesType(), idxs), Value());
      } else {
        // Only the dead latents' rows are nonzero: they are computed as
        // rows [count, d] and placed at their latents by sae.place_rows
        // (an update reads them through it; nothing writes [n, d] for
        // them). Dense: the panel product Zaᵀ · rhs. Grouped: each place's
        // sum over its entries.
        auto outer = cast<OuterOp>(user);
        transposedCodes();
        auto deadRowsType =
            RankedTensorType::get({ShapedType::kDynamic, d}, f32);
        auto deadRows = scf::IfOp::create(
            rewriter, l, useDense,
            [&](OpBuilder &tb, Location tl) {
              Value g = matrix(tb, padded, d);
              emitPanelGemm(tb, l, zaT, toBuffer(tb, l, outer.getRhs()), g,
                            padded, rows, idx(tb, d), lanes, vecsFor(d),
                            Value(), false);
              scf::YieldOp::create(tb, tl, asTensor(tb, l, deadRowsType, g));
            },
            [&](OpBuilder &eb, Location el) {
              scf::YieldOp::create(
                  eb, el,
                  asTensor(
                      eb, l, deadRowsType,
                      groupedOuter(eb, l,
                                   asTensor(eb, l, codes.getValuesType(), vals),
                                   outer.getRhs())));
            });
        Value placed = placeAtSlots(l, deadRows.getResult(0), d);
        if (outer.getInit())
          placed = AddOp::create(rewriter, l, outer.getInit(), placed);
        rewriter.replaceOp(user, placed);
      }
    }

    // The encoder's gradient: the dead latents' part, dz_deadᵀ · X, is
    // computed as rows [count, w] and placed at their latents by slotOf,
    // and the product of the other parts accumulates into its transpose
    // (the update reads the rows through it). Dense: dz_dead as a
    // [padded, B] matrix (its transpose, written directly), then a panel
    // product. Sparse: the outer product of the part with each entry at
    // its place in the dead list.
    for (auto [outer, part] : encoderGrads) {
      rewriter.setInsertionPoint(outer);
      Location l = outer.getLoc();
      auto type = outer.getType();
      auto make = outer.getCodes().getDefiningOp<MakeCodesOp>();
      auto valsType = codes.getValuesType();
      Value deadVals = part < 0 ? CodesValuesOp::create(rewriter, l, valsType,
                                                        outer.getCodes())
                                      .getResult()
                                : make.getValues()
                                      .getDefiningOp<tensor::ConcatOp>()
                                      .getInputs()[part];
      Value x = outer.getRhs();
      int64_t w = type.getDimSize(0);
      auto deadRowsType = RankedTensorType::get({ShapedType::kDynamic, w}, f32);
      auto deadRows = scf::IfOp::create(
          rewriter, l, useDense,
          [&](OpBuilder &tb, Location tl) {
            Value dzT = dynMatrix(tb, padded, rows);
            fillZero(tb, dzT);
            Value dz = toBuffer(tb, l, deadVals);
            forEachRowParallel(
                tb, l, rows, [&](OpBuilder &b, Location bl, Value row) {
                  forFilled(b, bl, row,
                            [&](OpBuilder &fb, Location fl, Value s, Value p) {
                              Value v = memref::LoadOp::create(
                                  fb, fl, dz, ValueRange{row, s});
                              memref::StoreOp::create(fb, fl, v, dzT,
                                                      ValueRange{p, row});
                            });
                });
            Value g = matrix(tb, padded, w);
            emitPanelGemm(tb, l, dzT, toBuffer(tb, l, x), g, padded, rows,
                          idx(tb, w), lanes, vecsFor(w), Value(), false);
            scf::YieldOp::create(tb, tl, asTensor(tb, l, deadRowsType, g));
          },
          [&](OpBuilder &eb, Location el) {
            // Unfilled slots (place -1) count for nothing, whatever their
            // value.
            Value posT = asTensor(eb, l, codes.getIndicesType(), pos);
            AffineMap id = eb.getMultiDimIdentityMap(2);
            Value kept = buildGeneric(
                eb, l, {deadVals, posT},
                tensor::EmptyOp::create(
                    eb, l, valsType, dynamicSizes(eb, l, valsType, deadVals)),
                {id, id, id},
                {utils::IteratorType::parallel, utils::IteratorType::parallel},
                [&](OpBuilder &bb, Location bl, ValueRange a) {
                  Value filled = arith::CmpIOp::create(
                      bb, bl, arith::CmpIPredicate::sge, a[1],
                      arith::ConstantOp::create(bb, bl,
                                                bb.getI32IntegerAttr(0)));
                  return arith::SelectOp::create(bb, bl, filled, a[0],
                                                 floatConst(bb, bl, f32, 0.0))
                      .getResult();
                });
            scf::YieldOp::create(
                eb, el,
                asTensor(eb, l, deadRowsType, groupedOuter(eb, l, kept, x)));
          });
      Value placed = placeAtSlots(l, deadRows.getResult(0), w);
      Value init = TransposeOp::create(rewriter, l, type, placed);
      // The other parts, side by side as before.
      SmallVector<Value> restVals, restIdxs;
      if (part >= 0) {
        auto vals = make.getValues().getDefiningOp<tensor::ConcatOp>();
        auto idxsIn = make.getIndices().getDefiningOp<tensor::ConcatOp>();
        for (auto [i, v] : llvm::enumerate(vals.getInputs()))
          if (int64_t(i) != part) {
            restVals.push_back(v);
            restIdxs.push_back(idxsIn.getInputs()[i]);
          }
      }
      if (restVals.empty()) {
        rewriter.replaceOp(outer, init);
        continue;
      }
      int64_t restK = 0;
      for (Value v : restVals)
        restK += cast<RankedTensorType>(v.getType()).getDimSize(1);
      auto outerCodes = cast<CodesType>(outer.getCodes().getType());
      auto restType = CodesType::get(
          rewriter.getContext(), outerCodes.getBatch(),
          outerCodes.getNumLatents(), outerCodes.getElementType(), restK);
      auto side = [&](ArrayRef<Value> in, RankedTensorType t) -> Value {
        if (in.size() == 1)
          return in.front();
        return tensor::ConcatOp::create(rewriter, l, t, /*dim=*/1, in);
      };
      Value rest = MakeCodesOp::create(
          rewriter, l, restType, side(restVals, restType.getValuesType()),
          side(restIdxs, restType.getIndicesType()), Value());
      rewriter.replaceOpWithNewOp<OuterOp>(outer, type, rest, x, init,
                                           /*transposed=*/true);
    }
  }
};

/// Rewritten into sae ops that the same pass lowers next (dead_mask,
/// dead_topk, decode) and f64 sums: scale · Σ‖recon − e‖² / norm.
struct AuxKLowering : OpRewritePattern<AuxKOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AuxKOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    auto inType = op.getInput().getType();
    Type elt = inType.getElementType();
    Type f64 = rewriter.getF64Type();
    int64_t kAux = op.getKAux();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    // The mask as early as its state allows (CSE keeps this one for the
    // backward pass's too): the dead list is built there, and an encoder
    // product before the selection writes the dead columns through it.
    Value mask;
    {
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPointAfterValue(op.getSinceFired());
      mask = DeadMaskOp::create(rewriter, loc, op.getSinceFired().getType(),
                                op.getSinceFired(), op.getDeadAfterAttr(),
                                op.getZipfAlphaAttr(), op.getZipfKAttr());
    }
    auto codesType = CodesType::get(ctx, inType.getDimSize(0),
                                    inType.getDimSize(1), elt, kAux);
    Value kept = DeadTopKOp::create(rewriter, loc, codesType, op.getInput(), mask);
    auto resType = op.getResidual().getType();
    Value recon =
        DecodeOp::create(rewriter, loc, resType, kept, op.getDecoder());
    if (op.getBias())
      recon = BiasAddOp::create(rewriter, loc, resType, recon, op.getBias());
    AffineMap id = rewriter.getMultiDimIdentityMap(2);
    // Σ‖recon − e‖² (f64).
    Value err = sumInChunks(rewriter, loc, {recon, op.getResidual()}, {id, id},
                            2, [](OpBuilder &b, Location l, ValueRange a) {
                              return squaredDiffF64(b, l, a[0], a[1]);
                            });
    // norm: Σ_b ‖v − mean_b v‖², v = target or residual.
    Value v = op.getTarget() ? op.getTarget() : op.getResidual();
    Value mean = columnMeanF64(rewriter, loc, v);
    Value norm = sumInChunks(
        rewriter, loc, {v, mean},
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx)}, 2,
        [](OpBuilder &b, Location l, ValueRange a) {
          return squaredDiffF64(b, l, a[0], a[1]);
        });
    // scale = min(n_dead / k_aux, 1).
    Value nDead = sumInChunks(rewriter, loc, {mask},
                              {rewriter.getMultiDimIdentityMap(1)}, 1,
                              [&](OpBuilder &b, Location l, ValueRange a) {
                                return toF64(b, l, a[0]);
                              });
    Value scale = arith::MinimumFOp::create(
        rewriter, loc,
        arith::DivFOp::create(rewriter, loc, nDead,
                              floatConst(rewriter, loc, f64, double(kAux))),
        floatConst(rewriter, loc, f64, 1.0));
    Value loss = arith::DivFOp::create(
        rewriter, loc, arith::MulFOp::create(rewriter, loc, scale, err), norm);
    rewriter.replaceOp(
        op, arith::TruncFOp::create(rewriter, loc, op.getType(), loss));
    return success();
  }
};

//===----------------------------------------------------------------------===//
// Batch-layout codes
//===----------------------------------------------------------------------===//

/// The number of rows B of batch-layout storage [B·k].
Value batchRows(OpBuilder &b, Location l, Value values, int64_t k) {
  Value n = tensor::DimOp::create(b, l, values, 0);
  return arith::DivUIOp::create(b, l, n,
                                arith::ConstantIndexOp::create(b, l, k));
}

/// dst[dstRow, :width] += v · src[srcRow, :width] on buffers (a row axpy:
/// decoding an entry, or its outer product with a row): in vectors of
/// kAxpyLanes, the remainder element by element. Each element is one
/// multiply-add in the same order as the scalar loop, so the result does
/// not depend on the split.
constexpr int64_t kAxpyLanes = 8;

void addScaledRow(OpBuilder &b, Location l, Value dst, Value dstRow, Value src,
                  Value srcRow, Value v, int64_t width) {
  auto idx = [&](int64_t x) -> Value {
    return arith::ConstantIndexOp::create(b, l, x);
  };
  int64_t vectorEnd = width - width % kAxpyLanes;
  if (vectorEnd > 0) {
    auto vecType = VectorType::get({kAxpyLanes}, v.getType());
    Value vv = vector::BroadcastOp::create(b, l, vecType, v);
    scf::ForOp::create(
        b, l, idx(0), idx(vectorEnd), idx(kAxpyLanes), ValueRange{},
        [&](OpBuilder &jb, Location jl, Value j, ValueRange) {
          Value a = vector::LoadOp::create(jb, jl, vecType, src,
                                           ValueRange{srcRow, j});
          Value old = vector::LoadOp::create(jb, jl, vecType, dst,
                                             ValueRange{dstRow, j});
          Value sum = arith::AddFOp::create(
              jb, jl, old, arith::MulFOp::create(jb, jl, vv, a));
          vector::StoreOp::create(jb, jl, sum, dst, ValueRange{dstRow, j});
          scf::YieldOp::create(jb, jl);
        });
  }
  if (vectorEnd == width)
    return;
  scf::ForOp::create(
      b, l, idx(vectorEnd), idx(width), idx(1), ValueRange{},
      [&](OpBuilder &jb, Location jl, Value j, ValueRange) {
        Value a = memref::LoadOp::create(jb, jl, src, {srcRow, j});
        Value old = memref::LoadOp::create(jb, jl, dst, {dstRow, j});
        Value sum =
            arith::AddFOp::create(jb, jl, old, arith::MulFOp::create(jb, jl, v, a));
        memref::StoreOp::create(jb, jl, sum, dst, {dstRow, j});
        scf::YieldOp::create(jb, jl);
      });
}

/// Decoding (out[row] += v · W[index]) and densifying (out[row, index] += v)
/// of batch-layout codes: one pass over the B·k entries.
template <typename OpTy> struct BatchCodesLowering : OpRewritePattern<OpTy> {
  using OpRewritePattern<OpTy>::OpRewritePattern;
  LogicalResult matchAndRewrite(OpTy op,
                                PatternRewriter &rewriter) const override {
    CodesType codes = op.getCodes().getType();
    if (!codes.getPerBatch())
      return failure();
    auto make = op.getCodes().template getDefiningOp<MakeCodesOp>();
    if (!make)
      return rewriter.notifyMatchFailure(op,
                                         "codes are not built by make_codes");
    Location loc = op.getLoc();
    auto type = cast<RankedTensorType>(op.getType());
    Value rowsN = batchRows(rewriter, loc, make.getValues(), codes.getK());
    SmallVector<Value> dyn;
    if (type.isDynamicDim(0))
      dyn.push_back(rowsN);
    Value out = allocLike(rewriter, loc, type, dyn);
    Value zero = floatConst(rewriter, loc, type.getElementType(), 0.0);
    linalg::FillOp::create(rewriter, loc, ValueRange{zero}, ValueRange{out});
    Value vals = toBuffer(rewriter, loc, make.getValues());
    Value idxs = toBuffer(rewriter, loc, make.getIndices());
    Value rows = toBuffer(rewriter, loc, make.getRows());
    Value w;
    if constexpr (std::is_same_v<OpTy, DecodeOp>)
      w = toBuffer(rewriter, loc, op.getWeight());
    Value c0 = arith::ConstantIndexOp::create(rewriter, loc, 0);
    Value c1 = arith::ConstantIndexOp::create(rewriter, loc, 1);
    Value entries = tensor::DimOp::create(rewriter, loc, make.getValues(), 0);
    scf::ForOp::create(
        rewriter, loc, c0, entries, c1, ValueRange{},
        [&](OpBuilder &b, Location l, Value e, ValueRange) {
          Value v = memref::LoadOp::create(b, l, vals, e);
          Value i = arith::IndexCastOp::create(
              b, l, b.getIndexType(),
              memref::LoadOp::create(b, l, idxs, e).getResult());
          Value r = arith::IndexCastOp::create(
              b, l, b.getIndexType(),
              memref::LoadOp::create(b, l, rows, e).getResult());
          if (!w) {
            Value old = memref::LoadOp::create(b, l, out, {r, i});
            memref::StoreOp::create(b, l, arith::AddFOp::create(b, l, old, v),
                                    out, {r, i});
          } else {
            addScaledRow(b, l, out, r, w, i, v, type.getDimSize(1));
          }
          scf::YieldOp::create(b, l);
        });
    rewriter.replaceOp(op, asTensor(rewriter, loc, type, out));
    return success();
  }
};

/// Collects, row by row, the entries of `in : [B, n]` for which `take`
/// holds into `vals`, `idxs` and `rowOf` (so they are sorted by row), then
/// insertion-sorts each row's segment by decreasing value (strict
/// comparison: column order on ties). `take` threads one i64 of state
/// through the row-major scan. With `screen` (i1: may block [col, col +
/// kScreenWidth) of the row hold an entry to take?), blocks it rules out
/// are skipped whole: the kept entries are a small fraction of the batch.
/// Returns the number of entries written.
constexpr int64_t kScreenWidth = 16;
Value collectRows(
    OpBuilder &builder, Location loc, Value in, Value rows, Value cols,
    Value vals, Value idxs, Value rowOf, Value state,
    function_ref<std::pair<Value, Value>(OpBuilder &, Location, Value, Value,
                                         Value)>
        take,
    function_ref<Value(OpBuilder &, Location, Value, Value)> screen = nullptr) {
  Type i32 = builder.getI32Type();
  Value c0 = arith::ConstantIndexOp::create(builder, loc, 0);
  Value c1 = arith::ConstantIndexOp::create(builder, loc, 1);
  auto outer = scf::ForOp::create(
      builder, loc, c0, rows, c1, ValueRange{c0, state},
      [&](OpBuilder &b, Location l, Value row, ValueRange st) {
        Value rowI = arith::IndexCastOp::create(b, l, i32, row);
        // Columns [from, to), one at a time: the (position, state) after.
        auto scan = [&](OpBuilder &sb, Value from, Value to,
                        ValueRange at) -> ValueRange {
          return scf::ForOp::create(
                     sb, l, from, to, c1, at,
                     [&](OpBuilder &jb, Location jl, Value col,
                         ValueRange pos) {
              auto [keep, next] = take(jb, jl, row, col, pos[1]);
              scf::IfOp::create(jb, jl, keep, [&](OpBuilder &tb, Location tl) {
                Value v = memref::LoadOp::create(tb, tl, in, {row, col});
                memref::StoreOp::create(tb, tl, v, vals, pos[0]);
                memref::StoreOp::create(
                    tb, tl, arith::IndexCastOp::create(tb, tl, i32, col), idxs,
                    pos[0]);
                memref::StoreOp::create(tb, tl, rowI, rowOf, pos[0]);
                scf::YieldOp::create(tb, tl);
              });
              Value at = arith::SelectOp::create(
                  jb, jl, keep, arith::AddIOp::create(jb, jl, pos[0], c1),
                  pos[0]);
              scf::YieldOp::create(jb, jl, ValueRange{at, next});
            })
              .getResults();
        };
        ValueRange collected;
        if (!screen) {
          collected = scan(b, c0, cols, st);
        } else {
          Value width = arith::ConstantIndexOp::create(b, l, kScreenWidth);
          Value blocks = arith::DivUIOp::create(b, l, cols, width);
          auto blocked = scf::ForOp::create(
              b, l, c0, blocks, c1, st,
              [&](OpBuilder &kb, Location, Value blk, ValueRange pos) {
                Value col = arith::MulIOp::create(kb, l, blk, width);
                auto maybe = scf::IfOp::create(
                    kb, l, pos.getTypes(), screen(kb, l, row, col),
                    /*withElseRegion=*/true);
                OpBuilder::InsertionGuard guard(kb);
                kb.setInsertionPointToStart(maybe.thenBlock());
                scf::YieldOp::create(
                    kb, l,
                    scan(kb, col, arith::AddIOp::create(kb, l, col, width),
                         pos));
                kb.setInsertionPointToStart(maybe.elseBlock());
                scf::YieldOp::create(kb, l, pos);
                kb.setInsertionPointAfter(maybe);
                scf::YieldOp::create(kb, l, maybe.getResults());
              });
          collected =
              scan(b, arith::MulIOp::create(b, l, blocks, width), cols,
                   blocked.getResults());
        }
        Value start = st[0], end = collected[0];
        scf::ForOp::create(
            b, l, start, end, c1, ValueRange{},
            [&](OpBuilder &ib, Location il, Value i, ValueRange) {
              Value v0 = memref::LoadOp::create(ib, il, vals, i);
              Value x0 = memref::LoadOp::create(ib, il, idxs, i);
              auto carry = scf::ForOp::create(
                  ib, il, start, i, c1, ValueRange{v0, x0},
                  [&](OpBuilder &fb, Location fl, Value p, ValueRange cur) {
                    Value pv = memref::LoadOp::create(fb, fl, vals, p);
                    Value px = memref::LoadOp::create(fb, fl, idxs, p);
                    Value swap = arith::CmpFOp::create(
                        fb, fl, arith::CmpFPredicate::OGT, cur[0], pv);
                    auto sel = [&](Value a, Value c) -> Value {
                      return arith::SelectOp::create(fb, fl, swap, a, c);
                    };
                    memref::StoreOp::create(fb, fl, sel(cur[0], pv), vals, p);
                    memref::StoreOp::create(fb, fl, sel(cur[1], px), idxs, p);
                    scf::YieldOp::create(
                        fb, fl, ValueRange{sel(pv, cur[0]), sel(px, cur[1])});
                  });
              memref::StoreOp::create(ib, il, carry.getResult(0), vals, i);
              memref::StoreOp::create(ib, il, carry.getResult(1), idxs, i);
              scf::YieldOp::create(ib, il);
            });
        scf::YieldOp::create(b, l, collected);
      });
  return outer.getResult(0);
}

/// Feature Choice: per latent, m_j passes of "best row not yet taken" over
/// the batch mark a [B, n] mask; then the marked entries are collected row
/// by row like batch_topk's, and capped budgets leave zero entries at the
/// last row.
struct FeatureChoiceLowering : OpRewritePattern<FeatureChoiceOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(FeatureChoiceOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Type elt = codes.getElementType();
    Type i64 = rewriter.getI64Type(), f64 = rewriter.getF64Type();
    Value input = op.getInput();
    int64_t n = codes.getNumLatents(), k = codes.getK();
    double zipf = op.getZipf().convertToDouble();
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    auto c64 = [&](OpBuilder &b, Location l, int64_t v) -> Value {
      return arith::ConstantOp::create(b, l, b.getI64IntegerAttr(v));
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cN = cIdx(n);
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value total = arith::MulIOp::create(rewriter, loc, rows, cIdx(k));
    Value in = toBuffer(rewriter, loc, input);
    auto maskType = RankedTensorType::get(
        cast<RankedTensorType>(input.getType()).getShape(),
        rewriter.getI8Type());
    Value mask = allocLike(rewriter, loc, maskType, {rows});
    Value zero8 =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI8IntegerAttr(0));
    Value one8 =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI8IntegerAttr(1));
    linalg::FillOp::create(rewriter, loc, ValueRange{zero8}, ValueRange{mask});
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), {total});
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), {total});
    Value rowOf = allocLike(rewriter, loc, codes.getRowsType(), {total});
    Value totalI = arith::IndexCastOp::create(rewriter, loc, i64, total);
    Value rowsI = arith::IndexCastOp::create(rewriter, loc, i64, rows);

    // C = Σ_j (j + 1)^(−zipf), for the Zipf budgets.
    double cTotal = 0;
    for (int64_t j = 0; j < n; ++j)
      cTotal += std::pow(double(j + 1), -zipf);
    Value negInf = negInfOf(rewriter, loc, elt);
    // iter_args: the previous cumulative budget ⌊B·k·C_{j−1}/C⌋, C_{j−1}.
    scf::ForOp::create(
        rewriter, loc, c0, cN, c1,
        ValueRange{c64(rewriter, loc, 0), floatConst(rewriter, loc, f64, 0.0)},
        [&](OpBuilder &b, Location l, Value j, ValueRange st) {
          Value jI = arith::IndexCastOp::create(b, l, i64, j);
          Value jPlus1 = arith::AddIOp::create(b, l, jI, c64(b, l, 1));
          Value cum, cumW = st[1];
          if (zipf == 0) { // exact: ⌊B·k·(j + 1) / n⌋
            cum = arith::DivUIOp::create(
                b, l, arith::MulIOp::create(b, l, totalI, jPlus1),
                c64(b, l, n));
          } else {
            Value w = math::PowFOp::create(
                b, l, arith::UIToFPOp::create(b, l, f64, jPlus1),
                floatConst(b, l, f64, -zipf));
            cumW = arith::AddFOp::create(b, l, st[1], w);
            Value frac = arith::DivFOp::create(b, l, cumW,
                                               floatConst(b, l, f64, cTotal));
            Value c = arith::FPToUIOp::create(
                b, l, i64,
                arith::MulFOp::create(
                    b, l, frac, arith::UIToFPOp::create(b, l, f64, totalI)));
            // The last latent closes the budget exactly.
            Value last = arith::CmpIOp::create(b, l, arith::CmpIPredicate::eq,
                                               jPlus1, c64(b, l, n));
            cum = arith::SelectOp::create(
                b, l, last, totalI, arith::MinUIOp::create(b, l, c, totalI));
          }
          Value budget = arith::MinUIOp::create(
              b, l, arith::SubIOp::create(b, l, cum, st[0]), rowsI);
          Value budgetIdx =
              arith::IndexCastOp::create(b, l, b.getIndexType(), budget);
          scf::ForOp::create(
              b, l, c0, budgetIdx, c1, ValueRange{},
              [&](OpBuilder &tb, Location tl, Value, ValueRange) {
                auto best = scf::ForOp::create(
                    tb, tl, c0, rows, c1, ValueRange{negInf, c0, zero8},
                    [&](OpBuilder &rb, Location rl, Value row, ValueRange bst) {
                      Value v = memref::LoadOp::create(rb, rl, in, {row, j});
                      Value free = arith::CmpIOp::create(
                          rb, rl, arith::CmpIPredicate::eq,
                          memref::LoadOp::create(rb, rl, mask, {row, j}),
                          zero8);
                      Value gt = arith::CmpFOp::create(
                          rb, rl, arith::CmpFPredicate::OGT, v, bst[0]);
                      // A −inf entry is still a choice when nothing beats it.
                      Value none = arith::CmpIOp::create(
                          rb, rl, arith::CmpIPredicate::eq, bst[2], zero8);
                      Value notNan = arith::CmpFOp::create(
                          rb, rl, arith::CmpFPredicate::ORD, v, v);
                      Value better = arith::AndIOp::create(
                          rb, rl, free,
                          arith::AndIOp::create(
                              rb, rl, notNan,
                              arith::OrIOp::create(rb, rl, gt, none)));
                      scf::YieldOp::create(
                          rb, rl,
                          ValueRange{arith::SelectOp::create(rb, rl, better, v,
                                                             bst[0]),
                                     arith::SelectOp::create(rb, rl, better,
                                                             row, bst[1]),
                                     arith::SelectOp::create(rb, rl, better,
                                                             one8, bst[2])});
                    });
                Value found = arith::CmpIOp::create(
                    tb, tl, arith::CmpIPredicate::ne, best.getResult(2), zero8);
                scf::IfOp::create(
                    tb, tl, found, [&](OpBuilder &fb, Location fl) {
                      memref::StoreOp::create(fb, fl, one8, mask,
                                              {best.getResult(1), j});
                      scf::YieldOp::create(fb, fl);
                    });
                scf::YieldOp::create(tb, tl);
              });
          scf::YieldOp::create(b, l, ValueRange{cum, cumW});
        });

    Value written = collectRows(
        rewriter, loc, in, rows, cN, vals, idxs, rowOf, c64(rewriter, loc, 0),
        [&](OpBuilder &b, Location l, Value row, Value col,
            Value st) -> std::pair<Value, Value> {
          Value m = memref::LoadOp::create(b, l, mask, {row, col});
          return {
              arith::CmpIOp::create(b, l, arith::CmpIPredicate::ne, m, zero8),
              st};
        });
    // Budgets capped at B leave slots: zero entries at the last row.
    Value lastRow = arith::IndexCastOp::create(
        rewriter, loc, rewriter.getI32Type(),
        arith::SubIOp::create(rewriter, loc, rows, c1));
    Value zeroF = floatConst(rewriter, loc, elt, 0.0);
    Value zeroI =
        arith::ConstantOp::create(rewriter, loc, rewriter.getI32IntegerAttr(0));
    scf::ForOp::create(rewriter, loc, written, total, c1, ValueRange{},
                       [&](OpBuilder &b, Location l, Value e, ValueRange) {
                         memref::StoreOp::create(b, l, zeroF, vals, e);
                         memref::StoreOp::create(b, l, zeroI, idxs, e);
                         memref::StoreOp::create(b, l, lastRow, rowOf, e);
                         scf::YieldOp::create(b, l);
                       });
    replaceWithCodes(rewriter, op, codes, vals, idxs, rowOf);
    return success();
  }
};

/// The B·k largest entries of the batch. The threshold key is found by a
/// binary search over order-preserving 32-bit keys (count(key >= t) >= B·k);
/// every entry above it and the first ties in row-major order are kept, row
/// by row, and each row's entries are insertion-sorted by decreasing value.
struct BatchTopKLowering : OpRewritePattern<BatchTopKOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(BatchTopKOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    CodesType codes = op.getType();
    Value input = op.getInput();
    if (!cast<FloatType>(codes.getElementType()).isF32())
      return rewriter.notifyMatchFailure(op, "keys are defined for f32");
    Type i64 = rewriter.getI64Type();
    auto cIdx = [&](int64_t v) -> Value {
      return arith::ConstantIndexOp::create(rewriter, loc, v);
    };
    auto c64 = [&](OpBuilder &b, Location l, int64_t v) -> Value {
      return arith::ConstantOp::create(b, l, b.getI64IntegerAttr(v));
    };
    Value c0 = cIdx(0), c1 = cIdx(1), cN = cIdx(codes.getNumLatents());
    Value rows = tensor::DimOp::create(rewriter, loc, input, 0);
    Value total =
        arith::MulIOp::create(rewriter, loc, rows, cIdx(codes.getK()));
    Value in = toBuffer(rewriter, loc, input);
    Value vals = allocLike(rewriter, loc, codes.getValuesType(), {total});
    Value idxs = allocLike(rewriter, loc, codes.getIndicesType(), {total});
    Value rowOf = allocLike(rewriter, loc, codes.getRowsType(), {total});

    // NaN maps to 0 and is never kept.
    auto key = [&](OpBuilder &b, Location l, Value row, Value col) -> Value {
      return orderedKey(b, l, memref::LoadOp::create(b, l, in, {row, col}));
    };
    // count of keys satisfying pred against t.
    auto count = [&](OpBuilder &b, Location l, Value t,
                     arith::CmpIPredicate pred) -> Value {
      auto outer = scf::ForOp::create(
          b, l, c0, rows, c1, ValueRange{c64(b, l, 0)},
          [&](OpBuilder &rb, Location rl, Value row, ValueRange acc) {
            auto inner = scf::ForOp::create(
                rb, rl, c0, cN, c1, ValueRange{acc[0]},
                [&](OpBuilder &jb, Location jl, Value col, ValueRange a2) {
                  Value hit = arith::CmpIOp::create(jb, jl, pred,
                                                    key(jb, jl, row, col), t);
                  Value inc = arith::ExtUIOp::create(jb, jl, i64, hit);
                  scf::YieldOp::create(
                      jb, jl,
                      ValueRange{arith::AddIOp::create(jb, jl, a2[0], inc)});
                });
            scf::YieldOp::create(rb, rl, inner.getResults());
          });
      return outer.getResult(0);
    };
    Value want = arith::IndexCastOp::create(rewriter, loc, i64, total);
    // t = the want-th largest key, by radix selection: three passes, each
    // counting the next bits of the keys that share the prefix chosen so
    // far (11, 11 and 10 bits: histograms of up to 2048 bins), then taking
    // the bin where the count from the top reaches what is still wanted.
    // The first pass's bins are the sign, the exponent and two bits of
    // mantissa (a quarter of an octave), so few keys share the chosen one
    // and the later passes, which count only those, mostly just read.
    // One histogram per range of rows (ranges in parallel); integer counts,
    // so their sum does not depend on the threads. Each range keeps
    // kCopies histograms, column c counting into copy c mod kCopies:
    // neighbouring keys often share a bin, and one histogram would chain
    // every count's load on the store before it; two copies of 2048 bins
    // still fit in L1. Keys go by in blocks of kScreenWidth, their bins
    // computed as one vector; after the first pass only the lanes with the
    // chosen prefix count (one vector comparison; most blocks have none),
    // each visited by its bit of the comparison's mask.
    constexpr int64_t kParts = 16, kCopies = 2, kMaxBins = 2048;
    struct RadixPass {
      int64_t shift, bits;
    };
    constexpr RadixPass kPasses[] = {{21, 11}, {10, 11}, {0, 10}};
    Value hist = memref::AllocOp::create(
        rewriter, loc, MemRefType::get({kParts * kCopies, kMaxBins}, i64));
    Value span = arith::CeilDivUIOp::create(rewriter, loc, rows, cIdx(kParts));
    Value prefix = c64(rewriter, loc, 0), remaining = want;
    for (auto [shift, bits] : kPasses) {
      const int64_t numBins = int64_t(1) << bits, top = shift + bits;
      Value pre = prefix;
      scf::ParallelOp::create(
          rewriter, loc, ValueRange{c0}, ValueRange{cIdx(kParts)},
          ValueRange{c1}, [&](OpBuilder &pb, Location pl, ValueRange ivs) {
            Value part = ivs[0];
            Value first = arith::MulIOp::create(pb, pl, part, cIdx(kCopies));
            forRange(pb, pl, first,
                     arith::AddIOp::create(pb, pl, first, cIdx(kCopies)),
                     [&](OpBuilder &hb, Value copy) {
                       forRange(
                           hb, pl, c0, cIdx(numBins),
                           [&](OpBuilder &b, Value bin) {
                             memref::StoreOp::create(b, pl, c64(b, pl, 0), hist,
                                                     ValueRange{copy, bin});
                           });
                     });
            Value r0 = arith::MinUIOp::create(
                pb, pl, arith::MulIOp::create(pb, pl, part, span), rows);
            Value r1 = arith::MinUIOp::create(
                pb, pl, arith::AddIOp::create(pb, pl, r0, span), rows);
            // Adds `amount` to `bin` in the copy of the key at `pos`
            // (its column or lane).
            auto bump = [&](OpBuilder &b, Location l, Value pos, Value bin,
                            Value amount) {
              Value copy = arith::AddIOp::create(
                  b, l, first,
                  arith::RemUIOp::create(b, l, pos, cIdx(kCopies)));
              Value old =
                  memref::LoadOp::create(b, l, hist, ValueRange{copy, bin});
              memref::StoreOp::create(b, l,
                                      arith::AddIOp::create(b, l, old, amount),
                                      hist, ValueRange{copy, bin});
            };
            // Counts the keys of columns [from, to) of `row` that have
            // the prefix.
            auto countCols = [&](OpBuilder &cb, Value row, Value from,
                                 Value to) {
              forRange(cb, pl, from, to, [&](OpBuilder &b, Value col) {
                Location l = pl;
                Value k = key(b, l, row, col);
                Value high = arith::ShRUIOp::create(b, l, k, c64(b, l, top));
                Value match = arith::CmpIOp::create(
                    b, l, arith::CmpIPredicate::eq, high, pre);
                Value bin = arith::IndexCastOp::create(
                    b, l, b.getIndexType(),
                    arith::AndIOp::create(
                        b, l, arith::ShRUIOp::create(b, l, k, c64(b, l, shift)),
                        c64(b, l, numBins - 1)));
                bump(b, l, col, bin, arith::ExtUIOp::create(b, l, i64, match));
              });
            };
            // Whole blocks of kScreenWidth keys: their bins and prefixes
            // as vectors; each key with the prefix (every key in the
            // first pass) adds one to its bin, in its lane's copy.
            auto i32Vec =
                VectorType::get({kScreenWidth}, rewriter.getI32Type());
            auto splat32 = [&](OpBuilder &b, uint32_t v) -> Value {
              return arith::ConstantOp::create(
                  b, pl, DenseElementsAttr::get(i32Vec, APInt(32, v)));
            };
            auto countBlock = [&](OpBuilder &bb, Value row, Value col) {
              Value keys = orderedKeys32(
                  bb, pl,
                  vector::LoadOp::create(
                      bb, pl,
                      VectorType::get({kScreenWidth}, rewriter.getF32Type()),
                      in, ValueRange{row, col}));
              Value bins = arith::AndIOp::create(
                  bb, pl,
                  arith::ShRUIOp::create(bb, pl, keys, splat32(bb, shift)),
                  splat32(bb, numBins - 1));
              auto add = [&](OpBuilder &b, Location l, Value lane) {
                Value bin = arith::IndexCastUIOp::create(
                    b, l, b.getIndexType(),
                    vector::ExtractOp::create(b, l, bins, OpFoldResult(lane)));
                bump(b, l, lane, bin, c64(b, l, 1));
              };
              // Adds the keys of the lanes set in `mask`, one by one.
              auto addLanes = [&](OpBuilder &b, Location l, Value mask) {
                forEachSetLane(b, l, mask, ValueRange{},
                               [&](OpBuilder &wb, Location wl, Value lane,
                                   ValueRange) -> SmallVector<Value> {
                                 add(wb, wl, lane);
                                 return {};
                               });
              };
              if (top == 32) {
                // Exact zeros (a ReLU's inactive latents: half of them at
                // initialisation, nearly all once trained) share one bin;
                // counted there one by one, every count would wait on the
                // store before it. They go in as the number of set bits of
                // one comparison; the other keys one by one.
                constexpr uint32_t kZeroKey = 0x80000000u;
                Value zero =
                    arith::CmpIOp::create(bb, pl, arith::CmpIPredicate::eq,
                                          keys, splat32(bb, kZeroKey));
                Value laneBits = vector::ExtractOp::create(
                    bb, pl,
                    vector::BitCastOp::create(
                        bb, pl,
                        VectorType::get({1}, bb.getIntegerType(kScreenWidth)),
                        zero),
                    ArrayRef<int64_t>{0});
                Value zeros = arith::ExtUIOp::create(
                    bb, pl, i64, math::CtPopOp::create(bb, pl, laneBits));
                bump(bb, pl, c0, cIdx((kZeroKey >> shift) & (numBins - 1)),
                     zeros);
                Value other = arith::XOrIOp::create(
                    bb, pl, zero,
                    arith::ConstantOp::create(
                        bb, pl,
                        DenseElementsAttr::get(
                            VectorType::get({kScreenWidth}, bb.getI1Type()),
                            true)));
                addLanes(bb, pl, other);
                return;
              }
              Value match = arith::CmpIOp::create(
                  bb, pl, arith::CmpIPredicate::eq,
                  arith::ShRUIOp::create(bb, pl, keys, splat32(bb, top)),
                  vector::BroadcastOp::create(
                      bb, pl, i32Vec,
                      arith::TruncIOp::create(bb, pl, bb.getI32Type(), pre)));
              Value any = vector::ReductionOp::create(
                  bb, pl, vector::CombiningKind::OR, match);
              scf::IfOp::create(bb, pl, any, [&](OpBuilder &tb, Location tl) {
                addLanes(tb, tl, match);
                scf::YieldOp::create(tb, tl);
              });
            };
            int64_t blocks = codes.getNumLatents() / kScreenWidth;
            forRange(pb, pl, r0, r1, [&](OpBuilder &rb, Value row) {
              forRange(rb, pl, c0, cIdx(blocks), [&](OpBuilder &kb, Value blk) {
                countBlock(
                    kb, row,
                    arith::MulIOp::create(kb, pl, blk, cIdx(kScreenWidth)));
              });
              countCols(rb, row, cIdx(blocks * kScreenWidth), cN);
            });
          });
      // From the top bin down: the first bin where the running count reaches
      // `remaining`; the keys in higher bins are all kept.
      Value none = c64(rewriter, loc, -1);
      auto scan = scf::ForOp::create(
          rewriter, loc, c0, cIdx(numBins), c1,
          ValueRange{none, c64(rewriter, loc, 0), c64(rewriter, loc, 0)},
          [&](OpBuilder &b, Location l, Value i, ValueRange st) {
            Value bin = arith::SubIOp::create(b, l, cIdx(numBins - 1), i);
            auto binCount = scf::ForOp::create(
                b, l, c0, cIdx(kParts * kCopies), c1, ValueRange{st[2]},
                [&](OpBuilder &hb, Location hl, Value part, ValueRange sum) {
                  Value c = memref::LoadOp::create(hb, hl, hist,
                                                   ValueRange{part, bin});
                  scf::YieldOp::create(
                      hb, hl,
                      ValueRange{arith::AddIOp::create(hb, hl, sum[0], c)});
                });
            Value acc = binCount.getResult(0);
            Value here = arith::AndIOp::create(
                b, l,
                arith::CmpIOp::create(b, l, arith::CmpIPredicate::eq, st[0],
                                      none),
                arith::CmpIOp::create(b, l, arith::CmpIPredicate::sge, acc,
                                      remaining));
            Value binI64 = arith::IndexCastOp::create(b, l, i64, bin);
            scf::YieldOp::create(
                b, l,
                ValueRange{arith::SelectOp::create(b, l, here, binI64, st[0]),
                           arith::SelectOp::create(b, l, here, st[2], st[1]),
                           acc});
          });
      prefix =
          arith::OrIOp::create(rewriter, loc,
                               arith::ShLIOp::create(rewriter, loc, prefix,
                                                     c64(rewriter, loc, bits)),
                               scan.getResult(0));
      remaining =
          arith::SubIOp::create(rewriter, loc, remaining, scan.getResult(1));
    }
    // What is still wanted is the number of keys equal to t to keep (the
    // keys above t were subtracted bin by bin). Key 0 is NaN, never a
    // threshold: when the selection lands there (fewer than `want` other
    // keys), t = 1 and the ties are counted again, so that every non-NaN
    // key is kept.
    Value t =
        arith::MaxUIOp::create(rewriter, loc, prefix, c64(rewriter, loc, 1));
    Value nanThreshold = arith::CmpIOp::create(
        rewriter, loc, arith::CmpIPredicate::eq, prefix, c64(rewriter, loc, 0));
    auto tiesIf = scf::IfOp::create(rewriter, loc, TypeRange{i64}, nanThreshold,
                                    /*withElseRegion=*/true);
    {
      OpBuilder::InsertionGuard guard(rewriter);
      rewriter.setInsertionPointToStart(tiesIf.thenBlock());
      scf::YieldOp::create(
          rewriter, loc,
          ValueRange{arith::SubIOp::create(
              rewriter, loc, want,
              count(rewriter, loc, t, arith::CmpIPredicate::ugt))});
      rewriter.setInsertionPointToStart(tiesIf.elseBlock());
      scf::YieldOp::create(rewriter, loc, ValueRange{remaining});
    }
    Value ties = tiesIf.getResult(0);

    // Everything above t, and the first ties in row-major order.
    collectRows(
        rewriter, loc, in, rows, cN, vals, idxs, rowOf, ties,
        [&](OpBuilder &jb, Location jl, Value row, Value col,
            Value tiesLeft) -> std::pair<Value, Value> {
          Value kv = key(jb, jl, row, col);
          Value above =
              arith::CmpIOp::create(jb, jl, arith::CmpIPredicate::ugt, kv, t);
          Value atT =
              arith::CmpIOp::create(jb, jl, arith::CmpIPredicate::eq, kv, t);
          Value positive = arith::CmpIOp::create(
              jb, jl, arith::CmpIPredicate::sgt, tiesLeft, c64(jb, jl, 0));
          Value tie = arith::AndIOp::create(jb, jl, atT, positive);
          Value left = arith::SelectOp::create(
              jb, jl, tie,
              arith::SubIOp::create(jb, jl, tiesLeft, c64(jb, jl, 1)),
              tiesLeft);
          return {arith::OrIOp::create(jb, jl, above, tie), left};
        },
        // A block holds a candidate only if one of its keys is >= t.
        [&](OpBuilder &sb, Location sl, Value row, Value col) -> Value {
          auto vecType = VectorType::get({kScreenWidth}, rewriter.getF32Type());
          Value keys = orderedKeys32(
              sb, sl,
              vector::LoadOp::create(sb, sl, vecType, in, ValueRange{row, col}));
          Value t32 = vector::BroadcastOp::create(
              sb, sl, keys.getType(),
              arith::TruncIOp::create(sb, sl, sb.getI32Type(), t));
          Value hit = arith::CmpIOp::create(sb, sl, arith::CmpIPredicate::uge,
                                            keys, t32);
          return vector::ReductionOp::create(sb, sl, vector::CombiningKind::OR,
                                             hit);
        });
    replaceWithCodes(rewriter, op, codes, vals, idxs, rowOf);
    return success();
  }
};


//===----------------------------------------------------------------------===//
// Gradients and training
//===----------------------------------------------------------------------===//

using EntryFn = function_ref<void(OpBuilder &, Location, ValueRange pos,
                                  Value value, Value latent, Value row)>;

/// The buffers of codes built by `make`, and their outer range: rows of k
/// entries, or entries (the batch layout, with a row per entry).
struct EntryBuffers {
  Value vals, idxs, rows, outer;
  EntryBuffers(OpBuilder &b, Location loc, MakeCodesOp make)
      : vals(toBuffer(b, loc, make.getValues())),
        idxs(toBuffer(b, loc, make.getIndices())),
        rows(make.getRows() ? toBuffer(b, loc, make.getRows()) : Value()),
        outer(tensor::DimOp::create(b, loc, make.getValues(), 0)) {}

  /// Calls `body` for the entries at outer index `r`: `pos` indexes the
  /// values buffer ({row, slot} per row, {entry} in the batch layout),
  /// `latent` and `row` are indices.
  void visit(OpBuilder &b, Location loc, Value r, EntryFn body) const {
    auto at = [&](OpBuilder &nb, Location l, ValueRange pos, Value row) {
      Value v = memref::LoadOp::create(nb, l, vals, pos);
      Value i = arith::IndexCastOp::create(
          nb, l, nb.getIndexType(),
          memref::LoadOp::create(nb, l, idxs, pos).getResult());
      if (!row)
        row = arith::IndexCastOp::create(
            nb, l, nb.getIndexType(),
            memref::LoadOp::create(nb, l, rows, pos).getResult());
      body(nb, l, pos, v, i, row);
    };
    if (rows) {
      at(b, loc, r, Value());
      return;
    }
    Value k = memref::DimOp::create(b, loc, vals, 1);
    forRange(b, loc, arith::ConstantIndexOp::create(b, loc, 0), k,
             [&](OpBuilder &nb, Value t) {
               at(nb, loc, ValueRange{r, t}, r);
             });
  }
};

/// Calls `body` for every stored entry of codes built by `make` (see
/// EntryBuffers::visit), in order; with `parallel`, the outer range runs
/// as an scf.parallel (the bodies must touch disjoint memory).
void forEachEntry(OpBuilder &b, Location loc, MakeCodesOp make, EntryFn body,
                  bool parallel = false) {
  EntryBuffers entries(b, loc, make);
  Value c0 = arith::ConstantIndexOp::create(b, loc, 0);
  if (parallel) {
    forEachRowParallel(b, loc, entries.outer,
                       [&](OpBuilder &pb, Location pl, Value r) {
                         entries.visit(pb, pl, r, body);
                       });
    return;
  }
  forRange(b, loc, c0, entries.outer,
           [&](OpBuilder &nb, Value r) { entries.visit(nb, loc, r, body); });
}

/// Entries are also visited in kEntryParts parts of the outer range, the
/// parts in parallel and each in order. Sums that a part keeps in its own
/// buffer and that are then combined in part order do not depend on the
/// number of threads.
constexpr int64_t kEntryParts = 8;

/// forEachEntry by parts: `body` also gets its entry's part (an index).
void forEachEntryByPart(OpBuilder &b, Location loc, MakeCodesOp make,
                        function_ref<void(OpBuilder &, Location, Value part,
                                          Value value, Value latent, Value row)>
                            body) {
  EntryBuffers entries(b, loc, make);
  Value per = arith::CeilDivUIOp::create(
      b, loc, entries.outer,
      arith::ConstantIndexOp::create(b, loc, kEntryParts));
  forEachRowParallel(
      b, loc, arith::ConstantIndexOp::create(b, loc, kEntryParts),
      [&](OpBuilder &pb, Location pl, Value part) {
        Value lo = arith::MinUIOp::create(
            pb, pl, arith::MulIOp::create(pb, pl, part, per), entries.outer);
        Value hi = arith::MinUIOp::create(
            pb, pl, arith::AddIOp::create(pb, pl, lo, per), entries.outer);
        forRange(pb, pl, lo, hi, [&](OpBuilder &nb, Value r) {
          entries.visit(nb, pl, r,
                        [&](OpBuilder &eb, Location el, ValueRange, Value v,
                            Value latent,
                            Value row) { body(eb, el, part, v, latent, row); });
        });
      });
}

/// A zero-filled fresh buffer of `type` (dynamic sizes given).
Value zeroBuffer(OpBuilder &b, Location loc, RankedTensorType type,
                 ValueRange dyn) {
  Value out = allocLike(b, loc, type, dyn);
  linalg::FillOp::create(b, loc,
                         ValueRange{floatConst(b, loc, type.getElementType(), 0)},
                         ValueRange{out});
  return out;
}

/// Codes with `make`'s entries whose values are computed entry by entry.
template <typename OpTy>
LogicalResult replaceEntryValues(
    PatternRewriter &rewriter, OpTy op, Value codes,
    function_ref<Value(OpBuilder &, Location, Value value, Value latent,
                       Value row)>
        fn) {
  auto make = codes.getDefiningOp<MakeCodesOp>();
  if (!make)
    return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
  Location loc = op.getLoc();
  auto valsType = cast<RankedTensorType>(make.getValues().getType());
  Value out = allocLike(rewriter, loc, valsType,
                        dynamicSizes(rewriter, loc, valsType, make.getValues()));
  // Each entry writes its own slot: the entries run in parallel.
  forEachEntry(
      rewriter, loc, make,
      [&](OpBuilder &b, Location l, ValueRange pos, Value v, Value latent,
          Value row) {
        memref::StoreOp::create(b, l, fn(b, l, v, latent, row), out, pos);
      },
      /*parallel=*/true);
  rewriter.replaceOpWithNewOp<MakeCodesOp>(
      op, codes.getType(), asTensor(rewriter, loc, valsType, out),
      make.getIndices(), make.getRows());
  return success();
}

struct GatherLowering : OpRewritePattern<GatherOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(GatherOp op,
                                PatternRewriter &rewriter) const override {
    Value source = op.getSource();
    bool vector = op.getSource().getType().getRank() == 1;
    return replaceEntryValues(
        rewriter, op, op.getCodes(),
        [&](OpBuilder &b, Location l, Value, Value latent, Value row) {
          return vector ? tensor::ExtractOp::create(b, l, source, latent)
                              .getResult()
                        : tensor::ExtractOp::create(b, l, source,
                                                    ValueRange{row, latent})
                              .getResult();
        });
  }
};

struct SddmmLowering : OpRewritePattern<SddmmOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SddmmOp op,
                                PatternRewriter &rewriter) const override {
    Value lhs = op.getLhs(), w = op.getWeight();
    int64_t d = op.getLhs().getType().getDimSize(1);
    Type elt = op.getLhs().getType().getElementType();
    return replaceEntryValues(
        rewriter, op, op.getCodes(),
        [&](OpBuilder &b, Location l, Value, Value latent, Value row) {
          Value c0 = arith::ConstantIndexOp::create(b, l, 0);
          Value c1 = arith::ConstantIndexOp::create(b, l, 1);
          Value cd = arith::ConstantIndexOp::create(b, l, d);
          auto loop = scf::ForOp::create(
              b, l, c0, cd, c1, ValueRange{floatConst(b, l, elt, 0.0)},
              [&](OpBuilder &jb, Location jl, Value j, ValueRange acc) {
                Value a = tensor::ExtractOp::create(jb, jl, lhs,
                                                    ValueRange{row, j});
                Value c = tensor::ExtractOp::create(jb, jl, w,
                                                    ValueRange{latent, j});
                // Reassociable, so LLVM vectorises the dot product.
                auto fm = arith::FastMathFlagsAttr::get(
                    jb.getContext(), arith::FastMathFlags::reassoc |
                                         arith::FastMathFlags::contract);
                Value s = arith::AddFOp::create(
                    jb, jl, acc[0], arith::MulFOp::create(jb, jl, a, c), fm);
                scf::YieldOp::create(jb, jl, s);
              });
          return loop.getResult(0);
        });
  }
};

/// out[latent, :] = init[latent, :] + Σ value · rhs[row, :] over the
/// latent's entries. The entries are sorted by latent (a stable counting
/// sort); then every latent's row is summed in registers, chunk by chunk,
/// and written once: one load of rhs per multiply-add, instead of a load
/// and a store of `out`'s row (from L3: the gradient is [n, d]) per entry
/// and the row-major zero fill before. The transposed layout goes through
/// tiles (scattering into columns directly would touch a cache line per
/// element).
/// A chunk is `outerVecs` vectors: 12 where the width allows (AuxK's dead
/// latents have hundreds of entries each, and 4 accumulators wait on the
/// adds' latency: 12 took 27% fewer samples of the encoder gradient's
/// kernel in a TopK + AuxK step on a Zen 3), else 8, else 4.
int64_t outerVecs(int64_t d, int64_t lanes) {
  for (int64_t vecs : {12, 8})
    if (d % (vecs * lanes) == 0)
      return vecs;
  return 4;
}

/// The rows a latent's sums start from: none (zero), row j of `buf`, or,
/// with `slot` (a sae.place_rows), row slot[j] of `buf`, zero where
/// slot[j] < 0.
struct StartRows {
  Value buf, slot;
  StartRows() = default;
  StartRows(OpBuilder &b, Location l, Value init) {
    if (!init)
      return;
    if (auto place = init.getDefiningOp<PlaceRowsOp>()) {
      buf = toBuffer(b, l, place.getRows());
      slot = toBuffer(b, l, place.getSlot());
      return;
    }
    buf = toBuffer(b, l, init);
  }
};

/// The entries of codes over n latents, sorted by latent, stably (a
/// counting sort): latent j's entries are [start[j - 1], start[j]) (from 0
/// for j = 0) of rowOf (their rows) and valOf (their values). Entries whose
/// value is 0 add nothing and are left out: gradients through a ReLU that
/// did not fire, AuxK's slots left over. What the outer product Σ value ·
/// rhs[row] is summed from, latent by latent, wherever it is needed.
struct LatentEntries {
  Value start, rowOf, valOf;

  /// The sort runs by parts of the entries (forEachEntryByPart), without
  /// a branch: a part counts its entries per latent, the counts become
  /// places (latent by latent, part by part, so the order is the serial
  /// one), and each part moves its entries to their places. A part's zero
  /// entries all go to one place of its own, after every latent's.
  LatentEntries(OpBuilder &b, Location l, MakeCodesOp make, int64_t n) {
    Type f32 = make.getValues().getType().getElementType();
    Type indexType = b.getIndexType();
    auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(ob, l, v);
    };
    // at[part, j]: first the part's number of entries of latent j, then
    // where its next one goes (j = n: where its zero entries go).
    Value at = memref::AllocOp::create(
        b, l, MemRefType::get({kEntryParts, n + 1}, indexType));
    linalg::FillOp::create(b, l, ValueRange{idx(b, 0)}, ValueRange{at});
    // Returns at[part, j] for the entry's latent (n for a zero entry), and
    // moves it on by one for a nonzero entry.
    auto bump = [&](OpBuilder &ob, Location bl, Value part, Value v,
                    Value latent) {
      Value nonZero = arith::CmpFOp::create(ob, bl, arith::CmpFPredicate::UNE,
                                            v, floatConst(ob, bl, f32, 0.0));
      SmallVector<Value, 2> pj{
          part, arith::SelectOp::create(ob, bl, nonZero, latent, idx(ob, n))};
      Value old = memref::LoadOp::create(ob, bl, at, pj);
      memref::StoreOp::create(
          ob, bl,
          arith::AddIOp::create(
              ob, bl, old,
              arith::IndexCastUIOp::create(ob, bl, indexType, nonZero)),
          at, pj);
      return old;
    };
    forEachEntryByPart(b, l, make,
                       [&](OpBuilder &eb, Location bl, Value part, Value v,
                           Value latent,
                           Value) { bump(eb, bl, part, v, latent); });
    // Latent j's entries begin where j - 1's end; the parts' follow each
    // other. start[j] = the end of latent j's; start[n] = the number of
    // nonzero entries.
    start = memref::AllocOp::create(b, l, MemRefType::get({n + 1}, indexType));
    Value nonZeros =
        scf::ForOp::create(
            b, l, idx(b, 0), idx(b, n), idx(b, 1), ValueRange{idx(b, 0)},
            [&](OpBuilder &fb, Location fl, Value j, ValueRange acc) {
              Value end =
                  scf::ForOp::create(
                      fb, fl, idx(fb, 0), idx(fb, kEntryParts), idx(fb, 1), acc,
                      [&](OpBuilder &pb, Location pl, Value part,
                          ValueRange from) {
                        SmallVector<Value, 2> pj{part, j};
                        Value count = memref::LoadOp::create(pb, pl, at, pj);
                        memref::StoreOp::create(pb, pl, from[0], at, pj);
                        scf::YieldOp::create(pb, pl,
                                             ValueRange{arith::AddIOp::create(
                                                 pb, pl, from[0], count)});
                      })
                      .getResult(0);
              memref::StoreOp::create(fb, fl, end, start, j);
              scf::YieldOp::create(fb, fl, ValueRange{end});
            })
            .getResult(0);
    memref::StoreOp::create(b, l, nonZeros, start, idx(b, n));
    // The parts' places for zero entries are 128 bytes apart: threads that
    // write to one cache line would take it from each other at every entry.
    constexpr int64_t kApart = 16;
    forRange(b, l, idx(b, 0), idx(b, kEntryParts),
             [&](OpBuilder &fb, Value part) {
               memref::StoreOp::create(
                   fb, l,
                   arith::AddIOp::create(
                       fb, l, nonZeros,
                       arith::MulIOp::create(fb, l, part, idx(fb, kApart))),
                   at, ValueRange{part, idx(fb, n)});
             });
    Value all =
        arith::AddIOp::create(b, l, nonZeros, idx(b, kApart * kEntryParts));
    rowOf = memref::AllocOp::create(
        b, l, MemRefType::get({ShapedType::kDynamic}, indexType),
        ValueRange{all});
    valOf = memref::AllocOp::create(
        b, l, MemRefType::get({ShapedType::kDynamic}, f32), ValueRange{all});
    forEachEntryByPart(b, l, make,
                       [&](OpBuilder &eb, Location bl, Value part, Value v,
                           Value latent, Value row) {
                         Value p = bump(eb, bl, part, v, latent);
                         memref::StoreOp::create(eb, bl, row, rowOf, p);
                         memref::StoreOp::create(eb, bl, v, valOf, p);
                       });
  }

  /// Latent j's entries: [start[j - 1], start[j]) (from 0 for j = 0).
  std::pair<Value, Value> range(OpBuilder &b, Location l, Value j) const {
    Value zero = arith::ConstantIndexOp::create(b, l, 0);
    Value first =
        arith::CmpIOp::create(b, l, arith::CmpIPredicate::eq, j, zero);
    Value below = arith::SelectOp::create(
        b, l, first, j,
        arith::SubIOp::create(b, l, j,
                              arith::ConstantIndexOp::create(b, l, 1)));
    return {arith::SelectOp::create(b, l, first, zero,
                                    memref::LoadOp::create(b, l, start, below)),
            memref::LoadOp::create(b, l, start, j)};
  }

  /// Latent j's sums over columns [c, c + width·vecs) of rhs, as `vecs`
  /// values of `width` lanes (width 1: scalars): from init's row for j
  /// through the latent's entries in order, the same multiply-adds in the
  /// same order as adding each entry's row to the result in turn.
  SmallVector<Value> sum(OpBuilder &b, Location l, Value rhs,
                         const StartRows &init, Value j, Value c, int64_t width,
                         int64_t vecs) const {
    auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(ob, l, v);
    };
    Type f32 = cast<MemRefType>(valOf.getType()).getElementType();
    auto [s0, s1] = range(b, l, j);
    Type t = width == 1 ? f32 : Type(VectorType::get({width}, f32));
    auto load = [&](OpBuilder &ob, Value buf, Value r, Value col) {
      return width == 1
                 ? memref::LoadOp::create(ob, l, buf, ValueRange{r, col})
                       .getResult()
                 : vector::LoadOp::create(ob, l, t, buf, ValueRange{r, col})
                       .getResult();
    };
    SmallVector<Value> col, zeros, acc;
    for (int64_t u = 0; u < vecs; ++u) {
      col.push_back(arith::AddIOp::create(b, l, c, idx(b, u * width)));
      zeros.push_back(
          arith::ConstantOp::create(b, l, cast<TypedAttr>(b.getZeroAttr(t))));
    }
    auto rowOfInit = [&](OpBuilder &ob, Value r) {
      SmallVector<Value> rowSums;
      for (int64_t u = 0; u < vecs; ++u)
        rowSums.push_back(load(ob, init.buf, r, col[u]));
      return rowSums;
    };
    if (!init.buf) {
      acc = zeros;
    } else if (!init.slot) {
      acc = rowOfInit(b, j);
    } else {
      Value s = memref::LoadOp::create(b, l, init.slot, j);
      Value placed = arith::CmpIOp::create(
          b, l, arith::CmpIPredicate::sge, s,
          arith::ConstantOp::create(b, l, b.getI32IntegerAttr(0)));
      acc = scf::IfOp::create(
                b, l, placed,
                [&](OpBuilder &tb, Location tl) {
                  scf::YieldOp::create(
                      tb, tl,
                      rowOfInit(tb, arith::IndexCastOp::create(
                                        tb, tl, tb.getIndexType(), s)));
                },
                [&](OpBuilder &eb, Location el) {
                  scf::YieldOp::create(eb, el, zeros);
                })
                .getResults();
    }
    auto loop = scf::ForOp::create(
        b, l, s0, s1, idx(b, 1), acc,
        [&](OpBuilder &eb, Location, Value e, ValueRange a) {
          Value r = memref::LoadOp::create(eb, l, rowOf, e);
          Value v = memref::LoadOp::create(eb, l, valOf, e);
          if (width > 1)
            v = vector::BroadcastOp::create(eb, l, t, v);
          SmallVector<Value> next;
          for (int64_t u = 0; u < vecs; ++u)
            next.push_back(arith::AddFOp::create(
                eb, l, a[u],
                arith::MulFOp::create(eb, l, v, load(eb, rhs, r, col[u]))));
          scf::YieldOp::create(eb, l, next);
        });
    return loop.getResults();
  }
};

/// out[j, :] = Σ value · rhs[row, :] over the entries of `make` at latent
/// j < count (rows [count, width]), rhs given as panels [chunk, row,
/// column] (chunks of `chunk` columns, read chunk by chunk so that one
/// stays in L2). The entries are sorted by latent (LatentEntries), then
/// each latent's sum is taken in registers in row order, in parallel over
/// latents: the order of the adds does not depend on the threads.
void sumRowsByLatent(OpBuilder &b, Location l, MakeCodesOp make, Value panel,
                     Value out, Value count, int64_t lanes) {
  auto panelType = cast<MemRefType>(panel.getType());
  int64_t chunks = panelType.getDimSize(0), chunk = panelType.getDimSize(2);
  auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(ob, l, v);
  };
  auto vecType = VectorType::get({lanes}, panelType.getElementType());
  LatentEntries entries(b, l, make,
                        cast<CodesType>(make.getType()).getNumLatents());
  forRange(b, l, idx(b, 0), idx(b, chunks), [&](OpBuilder &cb, Value c) {
    Value col = arith::MulIOp::create(cb, l, c, idx(cb, chunk));
    forEachRowParallel(cb, l, count, [&](OpBuilder &pb, Location, Value j) {
      auto [s0, s1] = entries.range(pb, l, j);
      SmallVector<Value> zeros(
          chunk / lanes, arith::ConstantOp::create(
                             pb, l, cast<TypedAttr>(pb.getZeroAttr(vecType))));
      auto loop = scf::ForOp::create(
          pb, l, s0, s1, idx(pb, 1), zeros,
          [&](OpBuilder &eb, Location, Value e, ValueRange a) {
            Value row = memref::LoadOp::create(eb, l, entries.rowOf, e);
            Value v = vector::BroadcastOp::create(
                eb, l, vecType,
                memref::LoadOp::create(eb, l, entries.valOf, e));
            SmallVector<Value> next;
            for (auto [u, sum] : llvm::enumerate(a)) {
              Value x = vector::LoadOp::create(
                  eb, l, vecType, panel,
                  ValueRange{c, row, idx(eb, u * lanes)});
              next.push_back(vector::FMAOp::create(eb, l, v, x, sum));
            }
            scf::YieldOp::create(eb, l, next);
          });
      for (auto [u, sum] : llvm::enumerate(loop.getResults()))
        vector::StoreOp::create(
            pb, l, sum, out,
            ValueRange{j,
                       arith::AddIOp::create(pb, l, col, idx(pb, u * lanes))});
    });
  });
}

struct OuterLowering : OpRewritePattern<OuterOp> {
  OuterLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx), lanes(lanes) {}
  int64_t lanes;
  LogicalResult matchAndRewrite(OuterOp op,
                                PatternRewriter &rewriter) const override {
    auto make = op.getCodes().getDefiningOp<MakeCodesOp>();
    if (!make)
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    if (op.getType().isDynamicDim(0) || op.getType().isDynamicDim(1))
      return rewriter.notifyMatchFailure(op, "the gradient's shape is dynamic");
    Location loc = op.getLoc();
    auto type = op.getType();
    // The transposed result [d, n] is written through tiles of 16 rows
    // when its shapes suit them (a tile, 64·d bytes on the stack, up to
    // 256 KiB); otherwise as rows [n, d], then transposed.
    bool transposedOut =
        op.getTransposed() && !op.getInit() && type.getElementType().isF32() &&
        type.getDimSize(1) % 16 == 0 && type.getDimSize(0) % (lanes * 4) == 0 &&
        type.getDimSize(0) <= 4096;
    if (op.getTransposed() && !transposedOut) {
      auto rowsType = RankedTensorType::get(
          {type.getDimSize(1), type.getDimSize(0)}, type.getElementType());
      Value init =
          op.getInit()
              ? rewriter.createOrFold<TransposeOp>(loc, rowsType, op.getInit())
              : Value();
      Value rows = OuterOp::create(rewriter, loc, rowsType, op.getCodes(),
                                   op.getRhs(), init, /*transposed=*/false);
      rewriter.replaceOpWithNewOp<TransposeOp>(op, type, rows);
      return success();
    }
    Location l = loc;
    Type f32 = type.getElementType();
    auto idx = [&](OpBuilder &ob, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(ob, l, v);
    };
    int64_t n = type.getDimSize(transposedOut ? 1 : 0),
            d = type.getDimSize(transposedOut ? 0 : 1);
    LatentEntries entries(rewriter, l, make, n);
    Value rhs = toBuffer(rewriter, l, op.getRhs());
    StartRows init(rewriter, l, op.getInit());
    // Transposed, 64-byte aligned: the tiles' streaming stores need 32.
    Value out = transposedOut
                    ? memref::AllocOp::create(
                          rewriter, l, MemRefType::get(type.getShape(), f32),
                          ValueRange{}, rewriter.getI64IntegerAttr(64))
                          .getResult()
                    : allocLike(rewriter, l, type, {});
    auto latentChunk = [&](OpBuilder &pb, Value j, Value c, int64_t width,
                           int64_t vecs) {
      return entries.sum(pb, l, rhs, init, j, c, width, vecs);
    };
    int64_t wideVecs = outerVecs(d, lanes), wide = lanes * wideVecs;
    if (transposedOut) {
      // out[:, j0 : j0 + 16] for blocks of 16 latents in parallel: their
      // rows go to a tile (16 × d, in L2), then to the result's columns by
      // 8 × 8 blocks in registers, each 64-byte line of a row of `out`
      // written whole by two streaming stores (rows of `out` are 4·n bytes
      // apart, all in one cache set: lines written by halves would be
      // read and evicted twice). No [n, d] intermediate is written and
      // transposed.
      scf::ParallelOp::create(
          rewriter, l, ValueRange{idx(rewriter, 0)},
          ValueRange{idx(rewriter, n)}, ValueRange{idx(rewriter, 16)},
          [&](OpBuilder &pb, Location, ValueRange ivs) {
            Value j0 = ivs[0];
            Value tile =
                memref::AllocaOp::create(pb, l, MemRefType::get({16, d}, f32));
            forRange(
                pb, l, idx(pb, 0), idx(pb, 16), [&](OpBuilder &rb, Value r) {
                  Value j = arith::AddIOp::create(rb, l, j0, r);
                  forRange(
                      rb, l, idx(rb, 0), idx(rb, d / wide),
                      [&](OpBuilder &cb, Value ci) {
                        Value c =
                            arith::MulIOp::create(cb, l, ci, idx(cb, wide));
                        SmallVector<Value> sums =
                            latentChunk(cb, j, c, lanes, wideVecs);
                        for (int64_t u = 0; u < wideVecs; ++u)
                          vector::StoreOp::create(
                              cb, l, sums[u], tile,
                              ValueRange{r, arith::AddIOp::create(
                                                cb, l, c, idx(cb, u * lanes))});
                      });
                });
            forRange(pb, l, idx(pb, 0), idx(pb, d / 8),
                     [&](OpBuilder &gb, Value gi) {
                       Value g = arith::MulIOp::create(gb, l, gi, idx(gb, 8));
                       for (int64_t half = 0; half < 16; half += 8)
                         emitTransposeBlock8(
                             gb, l, tile, out, idx(gb, half), g, g,
                             arith::AddIOp::create(gb, l, j0, idx(gb, half)),
                             /*streaming=*/true);
                     });
          });
      rewriter.replaceOp(op, asTensor(rewriter, l, type, out));
      return success();
    }
    // Latents in parallel, each row written once, chunk by chunk.
    int64_t wideEnd = d - d % wide, laneEnd = d - d % lanes;
    scf::ParallelOp::create(
        rewriter, l, ValueRange{idx(rewriter, 0)}, ValueRange{idx(rewriter, n)},
        ValueRange{idx(rewriter, 1)},
        [&](OpBuilder &pb, Location, ValueRange ivs) {
          Value j = ivs[0];
          auto chunks = [&](int64_t from, int64_t to, int64_t width,
                            int64_t vecs) {
            if (from >= to)
              return;
            forRange(
                pb, l, idx(pb, from / (width * vecs)),
                idx(pb, to / (width * vecs)), [&](OpBuilder &cb, Value ci) {
                  Value c =
                      arith::MulIOp::create(cb, l, ci, idx(cb, width * vecs));
                  SmallVector<Value> sums = latentChunk(cb, j, c, width, vecs);
                  for (int64_t u = 0; u < vecs; ++u) {
                    Value col =
                        arith::AddIOp::create(cb, l, c, idx(cb, u * width));
                    if (width == 1)
                      memref::StoreOp::create(cb, l, sums[u], out,
                                              ValueRange{j, col});
                    else
                      vector::StoreOp::create(cb, l, sums[u], out,
                                              ValueRange{j, col});
                  }
                });
          };
          chunks(0, wideEnd, lanes, wideVecs);
          chunks(wideEnd, laneEnd, lanes, 1);
          chunks(laneEnd, d, 1, 1);
        });
    rewriter.replaceOp(op, asTensor(rewriter, l, type, out));
    return success();
  }
};

/// W · v: the row dot products of the weight with the vector broadcast to
/// every row (rowDots, so each row's sum is vectorised).
struct MatVecLowering : OpRewritePattern<MatVecOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MatVecOp op,
                                PatternRewriter &rewriter) const override {
    MLIRContext *ctx = op.getContext();
    AffineExpr j = getAffineDimExpr(1, ctx);
    rewriter.replaceOp(op,
                       rowDots(rewriter, op.getLoc(), op.getWeight(),
                               op.getVector(), AffineMap::get(2, 0, {j}, ctx)));
    return success();
  }
};

/// Σ over rows per column (dense: a reduction; codes: a scatter).
struct ColumnSumLowering : OpRewritePattern<ColumnSumOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ColumnSumOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    auto type = op.getType();
    Type elt = type.getElementType();
    bool count = op.getCountNonzero();
    auto term = [&](OpBuilder &b, Location l, Value v) -> Value {
      if (!count)
        return v;
      Value nz = arith::CmpFOp::create(b, l, arith::CmpFPredicate::UNE, v,
                                       floatConst(b, l, v.getType(), 0.0));
      return arith::UIToFPOp::create(b, l, elt, nz);
    };
    if (!isa<CodesType>(op.getInput().getType())) {
      MLIRContext *ctx = op.getContext();
      AffineExpr i, j;
      bindDims(ctx, i, j);
      Value acc = filledTensor(rewriter, loc, type, op.getInput(), 0.0);
      Value sum = buildGeneric(
          rewriter, loc, {op.getInput()}, acc,
          {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx)},
          {utils::IteratorType::reduction, utils::IteratorType::parallel},
          [&](OpBuilder &b, Location l, ValueRange a) {
            return arith::AddFOp::create(b, l, a[1], term(b, l, a[0]))
                .getResult();
          });
      rewriter.replaceOp(op, sum);
      return success();
    }
    auto make = op.getInput().getDefiningOp<MakeCodesOp>();
    if (!make)
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    // Each part of the entries sums into its own row of `parts`; the rows
    // are then added in order. A zero term is skipped: the sums start at
    // +0 and never become -0, so adding ±0 changes nothing; and AuxK's
    // slots left over (value 0, all at one latent, at the end of each row)
    // would otherwise make a chain of adds to one place, each waiting for
    // the last (4 ms of a step at n = 4096 with 1% of the latents dead).
    int64_t n = type.getDimSize(0);
    auto partsType = RankedTensorType::get({kEntryParts, n}, elt);
    Value parts = zeroBuffer(rewriter, loc, partsType, {});
    forEachEntryByPart(
        rewriter, loc, make,
        [&](OpBuilder &b, Location l, Value part, Value v, Value latent,
            Value) {
          SmallVector<Value, 2> at{part, latent};
          Value t = term(b, l, v);
          Value nonZero = arith::CmpFOp::create(b, l, arith::CmpFPredicate::UNE,
                                                t, floatConst(b, l, elt, 0.0));
          scf::IfOp::create(b, l, nonZero, [&](OpBuilder &tb, Location tl) {
            Value old = memref::LoadOp::create(tb, tl, parts, at);
            memref::StoreOp::create(
                tb, tl, arith::AddFOp::create(tb, tl, old, t), parts, at);
            scf::YieldOp::create(tb, tl);
          });
        });
    MLIRContext *ctx = op.getContext();
    AffineExpr p, j;
    bindDims(ctx, p, j);
    Value sum = buildGeneric(
        rewriter, loc, {asTensor(rewriter, loc, partsType, parts)},
        filledTensor(rewriter, loc, type, Value(), 0.0),
        {AffineMap::get(2, 0, {p, j}, ctx), AffineMap::get(2, 0, {j}, ctx)},
        {utils::IteratorType::reduction, utils::IteratorType::parallel},
        [](OpBuilder &b, Location l, ValueRange a) {
          return arith::AddFOp::create(b, l, a[1], a[0]).getResult();
        });
    rewriter.replaceOp(op, sum);
    return success();
  }
};

struct NumRowsLowering : OpRewritePattern<NumRowsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(NumRowsOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Value in = op.getInput();
    if (auto codes = dyn_cast<CodesType>(in.getType())) {
      auto make = in.getDefiningOp<MakeCodesOp>();
      if (!make)
        return rewriter.notifyMatchFailure(op,
                                           "codes are not built by make_codes");
      if (codes.getPerBatch()) {
        Value n = arith::IndexCastOp::create(
            rewriter, loc, rewriter.getI64Type(),
            batchRows(rewriter, loc, make.getValues(), codes.getK()));
        rewriter.replaceOpWithNewOp<arith::SIToFPOp>(op, op.getType(), n);
        return success();
      }
      in = make.getValues();
    }
    rewriter.replaceOp(op, rowCount(rewriter, loc, in, op.getType()));
    return success();
  }
};

struct SumLowering : OpRewritePattern<SumOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SumOp op,
                                PatternRewriter &rewriter) const override {
    unsigned rank = op.getInput().getType().getRank();
    bool squares = op.getSquares();
    Value sum = sumInChunks(
        rewriter, op.getLoc(), {op.getInput()},
        {rewriter.getMultiDimIdentityMap(rank)}, rank,
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value x = toF64(b, l, a[0]);
          return squares ? arith::MulFOp::create(b, l, x, x).getResult() : x;
        });
    rewriter.replaceOpWithNewOp<arith::TruncFOp>(op, op.getType(), sum);
    return success();
  }
};

struct RowNormsLowering : OpRewritePattern<RowNormsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RowNormsOp op,
                                PatternRewriter &rewriter) const override {
    rewriter.replaceOp(op, rowNorms(rewriter, op.getLoc(), op.getInput()));
    return success();
  }
};

struct ScaleRowsLowering : OpRewritePattern<ScaleRowsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ScaleRowsOp op,
                                PatternRewriter &rewriter) const override {
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    rewriter.replaceOp(
        op, buildElementwise(
                rewriter, op.getLoc(), op.getInput(),
                {op.getInput(), op.getScale()},
                {AffineMap::get(2, 0, {i, j}, ctx),
                 AffineMap::get(2, 0, {i}, ctx)},
                [](OpBuilder &b, Location l, ValueRange a) {
                  return arith::MulFOp::create(b, l, a[0], a[1]).getResult();
                }));
    return success();
  }
};

/// rect((x − θ)/ε) as 0 or 1 in `elt`: 1 when −ε/2 < x − θ < ε/2.
Value rectangle(OpBuilder &b, Location l, Value x, Value theta, double eps) {
  Type elt = x.getType();
  Value u = arith::DivFOp::create(b, l, arith::SubFOp::create(b, l, x, theta),
                                  floatConst(b, l, elt, eps));
  Value above = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT, u,
                                      floatConst(b, l, elt, -0.5));
  Value below = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OLT, u,
                                      floatConst(b, l, elt, 0.5));
  return arith::UIToFPOp::create(b, l, elt,
                                 arith::AndIOp::create(b, l, above, below));
}

struct JumpReluGradLowering : OpRewritePattern<JumpReluGradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(JumpReluGradOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
    AffineMap col = AffineMap::get(2, 0, {j}, ctx);
    double eps = op.getBandwidth().convertToDouble();
    Type elt = op.getInput().getType().getElementType();
    Value dx = buildElementwise(
        rewriter, loc, op.getInput(),
        {op.getGrad(), op.getInput(), op.getThreshold()}, {id, id, col},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value above = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT,
                                              a[1], a[2]);
          return arith::SelectOp::create(b, l, above, a[0],
                                         floatConst(b, l, elt, 0.0))
              .getResult();
        });
    Value acc = filledTensor(rewriter, loc, op.getThreshold().getType(),
                             op.getThreshold(), 0.0);
    Value dt = buildGeneric(
        rewriter, loc, {op.getGrad(), op.getInput(), op.getThreshold()}, acc,
        {id, id, col, col},
        {utils::IteratorType::reduction, utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value r = rectangle(b, l, a[1], a[2], eps);
          Value f = arith::MulFOp::create(
              b, l, a[2], floatConst(b, l, elt, -1.0 / eps));
          Value t = arith::MulFOp::create(
              b, l, a[0], arith::MulFOp::create(b, l, f, r));
          return arith::AddFOp::create(b, l, a[3], t).getResult();
        });
    rewriter.replaceOp(op, {dx, dt});
    return success();
  }
};

struct L0GradLowering : OpRewritePattern<L0GradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(L0GradOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    double eps = op.getBandwidth().convertToDouble();
    Type elt = op.getType().getElementType();
    Value acc = filledTensor(rewriter, loc, op.getType(), op.getThreshold(), 0);
    Value count = buildGeneric(
        rewriter, loc, {op.getInput(), op.getThreshold()}, acc,
        {AffineMap::get(2, 0, {i, j}, ctx), AffineMap::get(2, 0, {j}, ctx),
         AffineMap::get(2, 0, {j}, ctx)},
        {utils::IteratorType::reduction, utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          return arith::AddFOp::create(b, l, a[2],
                                       rectangle(b, l, a[0], a[1], eps))
              .getResult();
        });
    // × −grad / (ε·B)
    Value rows = rowCount(rewriter, loc, op.getInput(), elt);
    Value f = arith::DivFOp::create(
        rewriter, loc, op.getGrad(),
        arith::MulFOp::create(rewriter, loc, rows,
                              floatConst(rewriter, loc, elt, -eps)));
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    rewriter.replaceOp(op, buildElementwise(
                               rewriter, loc, count, {count}, {id},
                               [&](OpBuilder &b, Location l, ValueRange a) {
                                 return arith::MulFOp::create(b, l, a[0], f)
                                     .getResult();
                               }));
    return success();
  }
};

struct ProjectRowsLowering : OpRewritePattern<ProjectRowsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ProjectRowsOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
    AffineMap row = AffineMap::get(2, 0, {i}, ctx);
    Value dots = rowDots(rewriter, loc, op.getGrad(), op.getWeight());
    rewriter.replaceOp(
        op, buildElementwise(
                rewriter, loc, op.getGrad(),
                {op.getGrad(), op.getWeight(), dots}, {id, id, row},
                [](OpBuilder &b, Location l, ValueRange a) {
                  return arith::SubFOp::create(
                             b, l, a[0], arith::MulFOp::create(b, l, a[2], a[1]))
                      .getResult();
                }));
    return success();
  }
};

/// The [n, d] matrix written whole, a row per latent in parallel: its
/// slot's row, or zeros.
struct PlaceRowsLowering : OpRewritePattern<PlaceRowsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(PlaceRowsOp op,
                                PatternRewriter &rewriter) const override {
    auto type = op.getType();
    if (!type.hasStaticShape())
      return rewriter.notifyMatchFailure(op, "the result's shape is dynamic");
    Location l = op.getLoc();
    Value rows = toBuffer(rewriter, l, op.getRows());
    Value slot = toBuffer(rewriter, l, op.getSlot());
    Value out = allocLike(rewriter, l, type, {});
    Type elt = type.getElementType();
    Value zero = floatConst(rewriter, l, elt, 0.0);
    Value c0 = arith::ConstantIndexOp::create(rewriter, l, 0);
    Value width =
        arith::ConstantIndexOp::create(rewriter, l, type.getDimSize(1));
    forEachRowParallel(
        rewriter, l,
        arith::ConstantIndexOp::create(rewriter, l, type.getDimSize(0)),
        [&](OpBuilder &b, Location, Value j) {
          Value s = memref::LoadOp::create(b, l, slot, j);
          Value placed = arith::CmpIOp::create(
              b, l, arith::CmpIPredicate::sge, s,
              arith::ConstantOp::create(b, l, b.getI32IntegerAttr(0)));
          Value src = arith::IndexCastOp::create(b, l, b.getIndexType(), s);
          scf::IfOp::create(
              b, l, placed,
              [&](OpBuilder &tb, Location) {
                forRange(tb, l, c0, width, [&](OpBuilder &fb, Value c) {
                  memref::StoreOp::create(
                      fb, l,
                      memref::LoadOp::create(fb, l, rows, ValueRange{src, c}),
                      out, ValueRange{j, c});
                });
                scf::YieldOp::create(tb, l);
              },
              [&](OpBuilder &eb, Location) {
                forRange(eb, l, c0, width, [&](OpBuilder &fb, Value c) {
                  memref::StoreOp::create(fb, l, zero, out, ValueRange{j, c});
                });
                scf::YieldOp::create(eb, l);
              });
        });
    rewriter.replaceOp(op, asTensor(rewriter, l, type, out));
    return success();
  }
};

/// The source of each result column first (src[t]: the last column with
/// slot t, -1 for none), in column order; then rows in parallel, each
/// result column read from its source without a branch.
struct TakeColumnsLowering : OpRewritePattern<TakeColumnsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(TakeColumnsOp op,
                                PatternRewriter &rewriter) const override {
    Location l = op.getLoc();
    auto type = op.getType();
    Type i32 = rewriter.getI32Type();
    Value in = toBuffer(rewriter, l, op.getInput());
    Value slot = toBuffer(rewriter, l, op.getSlot());
    Value rows = tensor::DimOp::create(rewriter, l, op.getInput(), 0);
    Value width = op.getWidth();
    Value c0 = arith::ConstantIndexOp::create(rewriter, l, 0);
    Value none =
        arith::ConstantOp::create(rewriter, l, rewriter.getI32IntegerAttr(-1));
    Value src = memref::AllocOp::create(
        rewriter, l, MemRefType::get({ShapedType::kDynamic}, i32), width);
    linalg::FillOp::create(rewriter, l, ValueRange{none}, ValueRange{src});
    Value widthI32 = arith::IndexCastOp::create(rewriter, l, i32, width);
    Value n = arith::ConstantIndexOp::create(
        rewriter, l, op.getSlot().getType().getDimSize(0));
    forRange(rewriter, l, c0, n, [&](OpBuilder &b, Value j) {
      Value s = memref::LoadOp::create(b, l, slot, j);
      // Slots below 0 are huge unsigned.
      Value inRange =
          arith::CmpIOp::create(b, l, arith::CmpIPredicate::ult, s, widthI32);
      scf::IfOp::create(b, l, inRange, [&](OpBuilder &tb, Location) {
        memref::StoreOp::create(tb, l,
                                arith::IndexCastOp::create(tb, l, i32, j), src,
                                ValueRange{arith::IndexCastUIOp::create(
                                    tb, l, tb.getIndexType(), s)});
        scf::YieldOp::create(tb, l);
      });
    });
    SmallVector<Value> dyn;
    if (type.isDynamicDim(0))
      dyn.push_back(rows);
    if (type.isDynamicDim(1))
      dyn.push_back(width);
    Value out = allocLike(rewriter, l, type, dyn);
    Value zero = floatConst(rewriter, l, type.getElementType(), 0.0);
    forEachRowParallel(
        rewriter, l, rows, [&](OpBuilder &b, Location, Value row) {
          forRange(b, l, c0, width, [&](OpBuilder &fb, Value t) {
            Value j = memref::LoadOp::create(fb, l, src, t);
            Value named = arith::CmpIOp::create(
                fb, l, arith::CmpIPredicate::sge, j,
                arith::ConstantOp::create(fb, l, fb.getI32IntegerAttr(0)));
            Value at = arith::IndexCastOp::create(
                fb, l, fb.getIndexType(),
                arith::MaxSIOp::create(
                    fb, l, j,
                    arith::ConstantOp::create(fb, l, fb.getI32IntegerAttr(0))));
            Value v = memref::LoadOp::create(fb, l, in, ValueRange{row, at});
            memref::StoreOp::create(
                fb, l, arith::SelectOp::create(fb, l, named, v, zero), out,
                ValueRange{row, t});
          });
        });
    rewriter.replaceOp(op, asTensor(rewriter, l, type, out));
    return success();
  }
};

/// Adam's per-step coefficients (scalars, or splatted into vectors by
/// `map`): β1, β2, 1 − β1, 1 − β2, lr / bc1, 1 / √bc2 and ε.
struct AdamTerms {
  Value b1, b2, c1, c2, step, invSqrtBc2, eps;
  AdamTerms map(function_ref<Value(Value)> f) const {
    return {f(b1), f(b2), f(c1), f(c2), f(step), f(invSqrtBc2), f(eps)};
  }
};

AdamTerms adamTerms(OpBuilder &b, Location loc, AdamOp op) {
  Value one = floatConst(b, loc, op.getLr().getType(), 1.0);
  return {op.getBeta1(),
          op.getBeta2(),
          arith::SubFOp::create(b, loc, one, op.getBeta1()),
          arith::SubFOp::create(b, loc, one, op.getBeta2()),
          arith::DivFOp::create(b, loc, op.getLr(), op.getBc1()),
          arith::DivFOp::create(b, loc, one,
                                math::SqrtOp::create(b, loc, op.getBc2())),
          op.getEps()};
}

/// One element's (or vector's) Adam update: the new parameter, m and v.
/// √v' / √bc2 is a product with the reciprocal, computed once: a vector
/// division or square root occupies the one divider for about 10 cycles,
/// and with two divisions and a root per vector Adam's pass waited on the
/// divider. The product is within an ulp of the quotient.
std::array<Value, 3> adamUpdate(OpBuilder &b, Location l, const AdamTerms &t,
                                Value g, Value p, Value m, Value v) {
  Value m2 = arith::AddFOp::create(b, l, arith::MulFOp::create(b, l, t.b1, m),
                                   arith::MulFOp::create(b, l, t.c1, g));
  Value gg = arith::MulFOp::create(b, l, g, g);
  Value v2 = arith::AddFOp::create(b, l, arith::MulFOp::create(b, l, t.b2, v),
                                   arith::MulFOp::create(b, l, t.c2, gg));
  Value denom = arith::AddFOp::create(
      b, l,
      arith::MulFOp::create(b, l, math::SqrtOp::create(b, l, v2), t.invSqrtBc2),
      t.eps);
  Value upd = arith::MulFOp::create(b, l, t.step,
                                    arith::DivFOp::create(b, l, m2, denom));
  return {arith::SubFOp::create(b, l, p, upd), m2, v2};
}

/// One generic over the parameter, updating p, m and v.
struct AdamLowering : OpRewritePattern<AdamOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AdamOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    auto type = cast<RankedTensorType>(op.getParam().getType());
    unsigned rank = type.getRank();
    AffineMap id = rewriter.getMultiDimIdentityMap(rank);
    AdamTerms terms = adamTerms(rewriter, loc, op);
    // The parameter and moments are the outputs themselves (read, then
    // overwritten), so that bufferization can update them in place.
    auto generic = linalg::GenericOp::create(
        rewriter, loc, TypeRange{type, type, type}, ValueRange{op.getGrad()},
        ValueRange{op.getParam(), op.getM(), op.getV()},
        SmallVector<AffineMap>(4, id),
        SmallVector<utils::IteratorType>(rank, utils::IteratorType::parallel),
        [&](OpBuilder &b, Location l, ValueRange a) {
          linalg::YieldOp::create(
              b, l, adamUpdate(b, l, terms, a[0], a[1], a[2], a[3]));
        });
    rewriter.replaceOp(op, generic.getResults());
    return success();
  }
};

/// Clipping's factor when the gradient g is scaled by an f32 (g becomes
/// what it scales), else null.
Value peelClipFactor(Value &g) {
  auto scale = g.getDefiningOp<ScaleOp>();
  if (!scale || !scale.getScale().getType().isF32())
    return Value();
  g = scale.getInput();
  return scale.getScale();
}

/// A block of an scf.forall's shared outputs (matrices): their slices,
/// taken at the start of an item's body, and their new values put back at
/// its end (tensor.parallel_insert_slice), which bufferization turns into
/// updates in place.
struct SharedBlock {
  SmallVector<OpFoldResult> offsets, sizes, strides;
  SharedBlock(OpBuilder &b, OpFoldResult row, OpFoldResult col,
              OpFoldResult rows, OpFoldResult cols)
      : offsets{row, col}, sizes{rows, cols},
        strides(2, b.getIndexAttr(1)) {}
  SmallVector<Value> extract(OpBuilder &b, Location l, ValueRange outs) const {
    SmallVector<Value> slices;
    for (Value out : outs)
      slices.push_back(tensor::ExtractSliceOp::create(b, l, out, offsets,
                                                      sizes, strides));
    return slices;
  }
  void insert(OpBuilder &b, Location l, ValueRange results,
              ValueRange outs) const {
    auto inParallel = scf::InParallelOp::create(b, l);
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(inParallel.getBody());
    for (auto [res, out] : llvm::zip(results, outs))
      tensor::ParallelInsertSliceOp::create(b, l, res, out, offsets, sizes,
                                            strides);
  }
};

/// The decoder's update under the unit-norm rule, in one pass over its rows:
/// normalize_rows(adam(W, scale(project_rows(G, W), c), M, V, ...)) (the
/// scale and the projection each optional). Separately these are a pass
/// for the rows' dot products G·W, Adam's pass, one for the new rows' norms
/// and one to scale them; here each row (d floats, in L1) is read once from
/// memory: its dot product, then its Adam update (with the sum of squares
/// of the new row on the way), then the scaling. Rows are shared out in
/// blocks among threads (scf.forall), each row computed by one thread in
/// one order. W, M and V are the forall's shared outputs, which
/// bufferization updates in place, as it does Adam's linalg outputs.
/// When G is an outer product of codes (dzᵀ · r: the decoder's gradient
/// under TopK), each row of G is summed from its latent's entries into a
/// row on the stack as the row's update begins: the [n, d] gradient is
/// never stored, and it is not read back from memory. An outer product
/// `into` placed rows (AuxK's dead latents, sae.place_rows) starts each
/// row from its slot's row, or from zero (StartRows).
constexpr int64_t kUpdateRows = 64;
struct UnitNormAdamLowering : OpRewritePattern<NormalizeRowsOp> {
  UnitNormAdamLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx, /*benefit=*/2), lanes(lanes) {}
  int64_t lanes;
  LogicalResult matchAndRewrite(NormalizeRowsOp op,
                                PatternRewriter &rewriter) const override {
    auto adam = op.getInput().getDefiningOp<AdamOp>();
    if (!adam || !adam.getNewParam().hasOneUse())
      return rewriter.notifyMatchFailure(op, "not the update of an Adam step");
    auto type = cast<RankedTensorType>(op.getType());
    int64_t d = type.getDimSize(1);
    if (!type.getElementType().isF32() || type.isDynamicDim(0) ||
        ShapedType::isDynamic(d) || d % lanes != 0)
      return rewriter.notifyMatchFailure(op, "not f32 rows of whole vectors");
    Value w = adam.getParam(), g = adam.getGrad();
    Value clip = peelClipFactor(g);
    Value projectOnto;
    if (auto project = g.getDefiningOp<ProjectRowsOp>();
        project && project.getWeight() == w) {
      projectOnto = w;
      g = project.getGrad();
    }
    Location loc = op.getLoc();
    std::optional<LatentEntries> entries;
    Value outerRhs;
    StartRows outerInit;
    if (auto outer = g.getDefiningOp<OuterOp>();
        outer && !outer.getTransposed())
      if (auto make = outer.getCodes().getDefiningOp<MakeCodesOp>()) {
        entries.emplace(rewriter, loc, make, type.getDimSize(0));
        outerRhs = toBuffer(rewriter, loc, outer.getRhs());
        outerInit = StartRows(rewriter, loc, outer.getInit());
      }
    Type f32 = rewriter.getF32Type();
    auto vecType = VectorType::get({lanes}, f32);
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    auto splat = [&](OpBuilder &b, Value s) -> Value {
      return vector::BroadcastOp::create(b, loc, vecType, s);
    };
    AdamTerms terms = adamTerms(rewriter, loc, adam);
    int64_t n = type.getDimSize(0);
    int64_t blocks = (n + kUpdateRows - 1) / kUpdateRows;
    Value zeroF = floatConst(rewriter, loc, f32, 0.0);
    auto forall = scf::ForallOp::create(
        rewriter, loc, ArrayRef<OpFoldResult>{rewriter.getIndexAttr(blocks)},
        ValueRange{w, adam.getM(), adam.getV()}, std::nullopt,
        [&](OpBuilder &b, Location l, ValueRange args) {
          Value blk = args[0];
          Value r0 = arith::MulIOp::create(b, l, blk, idx(b, kUpdateRows));
          Value rows = arith::MinUIOp::create(
              b, l, idx(b, kUpdateRows),
              arith::SubIOp::create(b, l, idx(b, n), r0));
          SharedBlock block(b, r0, b.getIndexAttr(0), rows, b.getIndexAttr(d));
          SmallVector<Value> slices = block.extract(b, l, args.drop_front());
          AdamTerms vTerms =
              terms.map([&](Value t) -> Value { return splat(b, t); });
          Value vZero = splat(b, zeroF);
          Value vClip = clip ? splat(b, clip) : Value();
          auto read = [&](OpBuilder &ob, Value t, Value r, Value c) -> Value {
            return vector::TransferReadOp::create(ob, l, vecType, t,
                                                  ValueRange{r, c}, zeroF,
                                                  ArrayRef<bool>{true});
          };
          auto write = [&](OpBuilder &ob, Value v, Value t, Value r,
                           Value c) -> Value {
            return vector::TransferWriteOp::create(
                       ob, l, v, t, ValueRange{r, c}, ArrayRef<bool>{true})
                .getResult();
          };
          auto sumOf = [&](OpBuilder &ob, Value v) -> Value {
            return vector::ReductionOp::create(ob, l,
                                               vector::CombiningKind::ADD, v);
          };
          // The gradient's row, summed from the entries (wide chunks of
          // outerVecs vectors, then single vectors).
          Value gRow =
              entries
                  ? memref::AllocaOp::create(b, l, MemRefType::get({d}, f32))
                        .getResult()
                  : Value();
          int64_t vecs = outerVecs(d, lanes), wideEnd = d - d % (vecs * lanes);
          auto sumRow = [&](OpBuilder &rb, Value row) {
            auto chunks = [&](int64_t from, int64_t to, int64_t chunkVecs) {
              if (from >= to)
                return;
              int64_t width = chunkVecs * lanes;
              forRange(rb, l, idx(rb, from / width), idx(rb, to / width),
                       [&](OpBuilder &cb, Value ci) {
                         Value c =
                             arith::MulIOp::create(cb, l, ci, idx(cb, width));
                         SmallVector<Value> sums =
                             entries->sum(cb, l, outerRhs, outerInit, row, c,
                                          lanes, chunkVecs);
                         for (int64_t u = 0; u < chunkVecs; ++u)
                           vector::StoreOp::create(
                               cb, l, sums[u], gRow,
                               ValueRange{arith::AddIOp::create(
                                   cb, l, c, idx(cb, u * lanes))});
                       });
            };
            chunks(0, wideEnd, vecs);
            chunks(wideEnd, d, 1);
          };
          auto readG = [&](OpBuilder &ob, Value row, Value c) -> Value {
            return gRow ? vector::LoadOp::create(ob, l, vecType, gRow,
                                                 ValueRange{c})
                              .getResult()
                        : read(ob, g, row, c);
          };
          auto eachRow = scf::ForOp::create(
              b, l, idx(b, 0), rows, idx(b, 1), slices,
              [&](OpBuilder &rb, Location, Value i, ValueRange rowArgs) {
                Value row = arith::AddIOp::create(rb, l, r0, i);
                Value pS = rowArgs[0], mS = rowArgs[1], vS = rowArgs[2];
                if (gRow)
                  sumRow(rb, row);
                // g · w, for the projection.
                Value dot;
                if (projectOnto) {
                  auto dots = scf::ForOp::create(
                      rb, l, idx(rb, 0), idx(rb, d), idx(rb, lanes),
                      ValueRange{vZero},
                      [&](OpBuilder &cb, Location, Value c, ValueRange acc) {
                        Value prod = arith::MulFOp::create(
                            cb, l, readG(cb, row, c), read(cb, pS, i, c));
                        scf::YieldOp::create(cb, l,
                                             ValueRange{arith::AddFOp::create(
                                                 cb, l, acc[0], prod)});
                      });
                  dot = splat(rb, sumOf(rb, dots.getResult(0)));
                }
                // Adam, and the new row's sum of squares.
                auto update = scf::ForOp::create(
                    rb, l, idx(rb, 0), idx(rb, d), idx(rb, lanes),
                    ValueRange{pS, mS, vS, vZero},
                    [&](OpBuilder &cb, Location, Value c, ValueRange acc) {
                      Value gv = readG(cb, row, c);
                      Value pv = read(cb, acc[0], i, c);
                      if (dot)
                        gv = arith::SubFOp::create(
                            cb, l, gv, arith::MulFOp::create(cb, l, dot, pv));
                      if (vClip)
                        gv = arith::MulFOp::create(cb, l, gv, vClip);
                      auto [p2, m2, v2] = adamUpdate(cb, l, vTerms, gv, pv,
                                                     read(cb, acc[1], i, c),
                                                     read(cb, acc[2], i, c));
                      Value ss = arith::AddFOp::create(
                          cb, l, acc[3], arith::MulFOp::create(cb, l, p2, p2));
                      scf::YieldOp::create(
                          cb, l,
                          ValueRange{write(cb, p2, acc[0], i, c),
                                     write(cb, m2, acc[1], i, c),
                                     write(cb, v2, acc[2], i, c), ss});
                    });
                // The row scaled to unit norm (a zero row stays zero: its
                // sum of squares is 0 only when every element is).
                Value ss = sumOf(rb, update.getResult(3));
                Value isZero = arith::CmpFOp::create(
                    rb, l, arith::CmpFPredicate::OLE, ss, zeroF);
                Value inv = splat(rb, arith::SelectOp::create(
                                          rb, l, isZero, zeroF,
                                          math::RsqrtOp::create(rb, l, ss)));
                auto scaled = scf::ForOp::create(
                    rb, l, idx(rb, 0), idx(rb, d), idx(rb, lanes),
                    ValueRange{update.getResult(0)},
                    [&](OpBuilder &cb, Location, Value c, ValueRange acc) {
                      Value pv = arith::MulFOp::create(
                          cb, l, read(cb, acc[0], i, c), inv);
                      scf::YieldOp::create(
                          cb, l, ValueRange{write(cb, pv, acc[0], i, c)});
                    });
                scf::YieldOp::create(rb, l,
                                     ValueRange{scaled.getResult(0),
                                                update.getResult(1),
                                                update.getResult(2)});
              });
          block.insert(b, l, eachRow.getResults(), args.drop_front());
        });
    rewriter.replaceAllUsesWith(adam.getNewM(), forall.getResult(1));
    rewriter.replaceAllUsesWith(adam.getNewV(), forall.getResult(2));
    rewriter.replaceOp(op, forall.getResult(0));
    rewriter.eraseOp(adam);
    return success();
  }
};

/// Adam on a [d, n] weight whose gradient is a transposed outer product of
/// codes (the encoder's: Xᵀ · dz, dz k-sparse), optionally scaled by an
/// f32 (gradient clipping): adam(W, scale(outer(dz, X){transposed}, c), M,
/// V). Separately, the product writes d·n floats that Adam reads back; here
/// the gradient is never stored. Blocks of R rows × C columns of W go in
/// parallel (scf.forall; W, M and V are its shared outputs, updated in
/// place), each in three steps on the stack: its C latents' gradient rows,
/// cut to its R rows, summed from their entries into a C × R tile (the
/// same multiply-adds in the same order as the product's lowering), from
/// the init's rows when the product has one (`into transpose(P)`, P [n, d]
/// or a sae.place_rows: AuxK's dead latents' rows); the
/// tile transposed into an R × C block by 8 × 8 blocks in registers; Adam
/// along the block's R rows, C contiguous floats each.
struct OuterAdamLowering : OpRewritePattern<AdamOp> {
  OuterAdamLowering(MLIRContext *ctx, int64_t lanes)
      : OpRewritePattern(ctx, /*benefit=*/2), lanes(lanes) {}
  int64_t lanes;
  LogicalResult matchAndRewrite(AdamOp adam,
                                PatternRewriter &rewriter) const override {
    auto type = dyn_cast<RankedTensorType>(adam.getParam().getType());
    if (!type || type.getRank() != 2 || !type.hasStaticShape() ||
        !type.getElementType().isF32())
      return rewriter.notifyMatchFailure(adam, "not a static f32 matrix");
    Value g = adam.getGrad();
    Value clip = peelClipFactor(g);
    auto outer = g.getDefiningOp<OuterOp>();
    if (!outer || !outer.getTransposed())
      return rewriter.notifyMatchFailure(
          adam, "the gradient is not a transposed outer product");
    // An init is read by rows of its transpose (the rows layout).
    auto initT = outer.getInit() ? outer.getInit().getDefiningOp<TransposeOp>()
                                 : TransposeOp();
    if (outer.getInit() && !initT)
      return rewriter.notifyMatchFailure(
          adam, "the init is not the transpose of an [n, d] matrix");
    auto make = outer.getCodes().getDefiningOp<MakeCodesOp>();
    if (!make)
      return rewriter.notifyMatchFailure(adam, "codes not built by make_codes");
    int64_t d = type.getDimSize(0), n = type.getDimSize(1);
    auto largestDividing = [](int64_t x, ArrayRef<int64_t> sizes) -> int64_t {
      for (int64_t size : sizes)
        if (x % size == 0)
          return size;
      return 0;
    };
    // A tile and a block of 32 KiB each at most.
    int64_t R = largestDividing(d, {32, 16, 8});
    int64_t C = largestDividing(n, {256, 128, 64, 32, 16, 8});
    if (!R || !C)
      return rewriter.notifyMatchFailure(adam, "not blocks of 8 × 8");
    Location l = adam.getLoc();
    Type f32 = rewriter.getF32Type();
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, l, v);
    };
    LatentEntries entries(rewriter, l, make, n);
    Value rhs = toBuffer(rewriter, l, outer.getRhs());
    StartRows init(rewriter, l, initT ? initT.getInput() : Value());
    AdamTerms terms = adamTerms(rewriter, l, adam);
    int64_t rowWidth = std::min(lanes, R), colWidth = std::min(lanes, C);
    auto colType = VectorType::get({colWidth}, f32);
    Value zeroF = floatConst(rewriter, l, f32, 0.0);
    int64_t colBlocks = n / C;
    auto forall = scf::ForallOp::create(
        rewriter, l,
        ArrayRef<OpFoldResult>{rewriter.getIndexAttr(d / R * colBlocks)},
        ValueRange{adam.getParam(), adam.getM(), adam.getV()}, std::nullopt,
        [&](OpBuilder &b, Location, ValueRange args) {
          Value item = args[0];
          Value r0 = arith::MulIOp::create(
              b, l, arith::DivUIOp::create(b, l, item, idx(b, colBlocks)),
              idx(b, R));
          Value c0 = arith::MulIOp::create(
              b, l, arith::RemUIOp::create(b, l, item, idx(b, colBlocks)),
              idx(b, C));
          // 1. tile[jj, :] = latent c0 + jj's gradient, rows [r0, r0 + R).
          Value tile =
              memref::AllocaOp::create(b, l, MemRefType::get({C, R}, f32));
          forRange(b, l, idx(b, 0), idx(b, C), [&](OpBuilder &jb, Value jj) {
            SmallVector<Value> sums = entries.sum(
                jb, l, rhs, init, arith::AddIOp::create(jb, l, c0, jj), r0,
                rowWidth, R / rowWidth);
            for (auto [u, sum] : llvm::enumerate(sums))
              vector::StoreOp::create(
                  jb, l, sum, tile,
                  ValueRange{jj, idx(jb, int64_t(u) * rowWidth)});
          });
          // 2. block = tileᵀ.
          Value block =
              memref::AllocaOp::create(b, l, MemRefType::get({R, C}, f32));
          forRange(b, l, idx(b, 0), idx(b, C / 8),
                   [&](OpBuilder &tb, Value jb) {
                     Value j = arith::MulIOp::create(tb, l, jb, idx(tb, 8));
                     for (int64_t r = 0; r < R; r += 8)
                       emitTransposeBlock8(tb, l, tile, block, j, idx(tb, r),
                                           idx(tb, r), j);
                   });
          // 3. Adam along the block's rows.
          SharedBlock shared(b, r0, c0, b.getIndexAttr(R), b.getIndexAttr(C));
          SmallVector<Value> slices = shared.extract(b, l, args.drop_front());
          AdamTerms vTerms = terms.map([&](Value t) -> Value {
            return vector::BroadcastOp::create(b, l, colType, t);
          });
          Value vClip =
              clip
                  ? vector::BroadcastOp::create(b, l, colType, clip).getResult()
                  : Value();
          auto eachRow = scf::ForOp::create(
              b, l, idx(b, 0), idx(b, R), idx(b, 1), slices,
              [&](OpBuilder &rb, Location, Value i, ValueRange rowArgs) {
                auto eachCol = scf::ForOp::create(
                    rb, l, idx(rb, 0), idx(rb, C), idx(rb, colWidth), rowArgs,
                    [&](OpBuilder &cb, Location, Value c, ValueRange acc) {
                      auto read = [&](Value t) -> Value {
                        return vector::TransferReadOp::create(
                            cb, l, colType, t, ValueRange{i, c}, zeroF,
                            ArrayRef<bool>{true});
                      };
                      Value gv = vector::LoadOp::create(cb, l, colType, block,
                                                        ValueRange{i, c});
                      if (vClip)
                        gv = arith::MulFOp::create(cb, l, gv, vClip);
                      auto updated = adamUpdate(cb, l, vTerms, gv, read(acc[0]),
                                                read(acc[1]), read(acc[2]));
                      SmallVector<Value> next;
                      for (auto [v, t] : llvm::zip(updated, acc))
                        next.push_back(vector::TransferWriteOp::create(
                                           cb, l, v, t, ValueRange{i, c},
                                           ArrayRef<bool>{true})
                                           .getResult());
                      scf::YieldOp::create(cb, l, next);
                    });
                scf::YieldOp::create(rb, l, eachCol.getResults());
              });
          shared.insert(b, l, eachRow.getResults(), args.drop_front());
        });
    rewriter.replaceOp(adam, forall.getResults());
    return success();
  }
};

struct SinceFiredLowering : OpRewritePattern<SinceFiredOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SinceFiredOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    Type elt = op.getType().getElementType();
    Value rows = rowCount(rewriter, loc, op.getBatch(), elt);
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    rewriter.replaceOp(
        op, buildElementwise(
                rewriter, loc, op.getCounter(),
                {op.getCounter(), op.getFired()}, {id, id},
                [&](OpBuilder &b, Location l, ValueRange a) {
                  Value fired = arith::CmpFOp::create(
                      b, l, arith::CmpFPredicate::OGT, a[1],
                      floatConst(b, l, elt, 0.0));
                  return arith::SelectOp::create(
                             b, l, fired, floatConst(b, l, elt, 0.0),
                             arith::AddFOp::create(b, l, a[0], rows))
                      .getResult();
                }));
    return success();
  }
};

/// Entries (or columns) of latents at or above the width become 0.
struct PrefixLowering : OpRewritePattern<PrefixOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(PrefixOp op,
                                PatternRewriter &rewriter) const override {
    int64_t width = op.getWidth();
    auto keep = [&](OpBuilder &b, Location l, Value v, Value latent) {
      Value in = arith::CmpIOp::create(
          b, l, arith::CmpIPredicate::slt, latent,
          arith::ConstantIndexOp::create(b, l, width));
      return arith::SelectOp::create(b, l, in, v,
                                     floatConst(b, l, v.getType(), 0.0))
          .getResult();
    };
    if (isa<CodesType>(op.getInput().getType()))
      return replaceEntryValues(
          rewriter, op, op.getInput(),
          [&](OpBuilder &b, Location l, Value v, Value latent, Value) {
            return keep(b, l, v, latent);
          });
    AffineMap id = rewriter.getMultiDimIdentityMap(2);
    rewriter.replaceOp(
        op, buildElementwise(rewriter, op.getLoc(), op.getInput(),
                             {op.getInput()}, {id},
                             [&](OpBuilder &b, Location l, ValueRange a) {
                               return keep(b, l, a[0],
                                           linalg::IndexOp::create(b, l, 1));
                             }));
    return success();
  }
};

struct ThresholdEmaLowering : OpRewritePattern<ThresholdEmaOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ThresholdEmaOp op,
                                PatternRewriter &rewriter) const override {
    auto make = op.getCodes().getDefiningOp<MakeCodesOp>();
    if (!make)
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    Location loc = op.getLoc();
    Value values = make.getValues();
    auto vt = cast<RankedTensorType>(values.getType());
    Type elt = vt.getElementType();
    Value inf = arith::ConstantOp::create(
        rewriter, loc,
        rewriter.getFloatAttr(
            elt, APFloat::getInf(cast<FloatType>(elt).getFloatSemantics())));
    Value empty =
        tensor::EmptyOp::create(rewriter, loc, ArrayRef<int64_t>{}, elt);
    Value acc = linalg::FillOp::create(rewriter, loc, inf, empty).getResult(0);
    unsigned rank = vt.getRank();
    SmallVector<AffineMap> maps = {rewriter.getMultiDimIdentityMap(rank),
                                   AffineMap::get(rank, 0, {}, getContext())};
    Value minT = buildGeneric(
        rewriter, loc, {values}, acc, maps,
        SmallVector<utils::IteratorType>(rank, utils::IteratorType::reduction),
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value pos = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT,
                                            a[0], floatConst(b, l, elt, 0.0));
          Value v = arith::SelectOp::create(b, l, pos, a[0], inf);
          return arith::MinimumFOp::create(b, l, a[1], v).getResult();
        });
    Value m = tensor::ExtractOp::create(rewriter, loc, minT, ValueRange{});
    double beta = op.getBeta().convertToDouble();
    AffineMap id = rewriter.getMultiDimIdentityMap(1);
    rewriter.replaceOp(
        op, buildElementwise(
                rewriter, loc, op.getThreshold(), {op.getThreshold()}, {id},
                [&](OpBuilder &b, Location l, ValueRange a) {
                  Value ema = arith::AddFOp::create(
                      b, l,
                      arith::MulFOp::create(b, l, a[0],
                                            floatConst(b, l, elt, beta)),
                      arith::MulFOp::create(b, l, m,
                                            floatConst(b, l, elt, 1 - beta)));
                  Value first = arith::CmpFOp::create(
                      b, l, arith::CmpFPredicate::OLE, a[0],
                      floatConst(b, l, elt, 0.0));
                  Value next = arith::SelectOp::create(b, l, first, m, ema);
                  Value none = arith::CmpFOp::create(
                      b, l, arith::CmpFPredicate::OEQ, m, inf);
                  return arith::SelectOp::create(b, l, none, a[0], next)
                      .getResult();
                }));
    return success();
  }
};

/// The batch's firing counts and maxima per latent (one reduction over the
/// rows), then scf loops over the n latents on buffers.
struct BiasAdaptLowering : OpRewritePattern<BiasAdaptOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(BiasAdaptOp op,
                                PatternRewriter &rewriter) const override {
    Location loc = op.getLoc();
    MLIRContext *ctx = op.getContext();
    auto vecType = op.getBias().getType();
    Type elt = vecType.getElementType();
    int64_t n = vecType.getDimSize(0), groups = op.getGroups();
    AffineExpr i, j;
    bindDims(ctx, i, j);
    AffineMap id = AffineMap::get(2, 0, {i, j}, ctx);
    AffineMap col = AffineMap::get(2, 0, {j}, ctx);
    Value count0 = filledTensor(rewriter, loc, vecType, op.getBias(), 0.0);
    Value max0 = filledTensor(rewriter, loc, vecType, op.getBias(), -1e30);
    auto red = linalg::GenericOp::create(
        rewriter, loc, TypeRange{vecType, vecType}, ValueRange{op.getInput()},
        ValueRange{count0, max0}, ArrayRef<AffineMap>{id, col, col},
        ArrayRef<utils::IteratorType>{utils::IteratorType::reduction,
                                      utils::IteratorType::parallel},
        [&](OpBuilder &b, Location l, ValueRange a) {
          Value pos = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT,
                                            a[0], floatConst(b, l, elt, 0.0));
          Value c = arith::AddFOp::create(
              b, l, a[1], arith::UIToFPOp::create(b, l, elt, pos));
          Value m = arith::MaximumFOp::create(b, l, a[2], a[0]);
          linalg::YieldOp::create(b, l, ValueRange{c, m});
        });
    Value cnt = toBuffer(rewriter, loc, red.getResult(0));
    Value mx = toBuffer(rewriter, loc, red.getResult(1));
    Value bias = toBuffer(rewriter, loc, op.getBias());
    Value stats = toBuffer(rewriter, loc, op.getStats());
    Value newBias = allocLike(rewriter, loc, vecType, {});
    auto statsType = op.getStats().getType();
    Value newStats = allocLike(rewriter, loc, statsType, {});
    auto groupType = MemRefType::get({groups}, elt);
    Value gSum = memref::AllocOp::create(rewriter, loc, groupType);
    Value gNum = memref::AllocOp::create(rewriter, loc, groupType);
    Value zero = floatConst(rewriter, loc, elt, 0.0);
    linalg::FillOp::create(rewriter, loc, ValueRange{zero}, ValueRange{gSum});
    linalg::FillOp::create(rewriter, loc, ValueRange{zero}, ValueRange{gNum});
    auto idx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    auto f = [&](OpBuilder &b, double v) { return floatConst(b, loc, elt, v); };
    auto loopN = [&](function_ref<void(OpBuilder &, Value)> body) {
      scf::ForOp::create(rewriter, loc, idx(rewriter, 0), idx(rewriter, n),
                         idx(rewriter, 1), ValueRange{},
                         [&](OpBuilder &b, Location l, Value iv, ValueRange) {
                           body(b, iv);
                           scf::YieldOp::create(b, l);
                         });
    };
    auto groupOf = [&](OpBuilder &b, Value iv) -> Value {
      // g = i · groups / n (contiguous groups)
      return arith::DivUIOp::create(
          b, loc, arith::MulIOp::create(b, loc, iv, idx(b, groups)),
          idx(b, n));
    };
    Value rows = rowCount(rewriter, loc, op.getInput(), elt);
    Value seen = arith::AddFOp::create(
        rewriter, loc,
        memref::LoadOp::create(rewriter, loc, stats,
                               ValueRange{idx(rewriter, 2), idx(rewriter, 0)}),
        rows);
    Value update = arith::CmpFOp::create(rewriter, loc,
                                         arith::CmpFPredicate::OGE, seen,
                                         f(rewriter, double(op.getEvery())));
    // Accumulated statistics, and the groups' mean positive maxima.
    loopN([&](OpBuilder &b, Value iv) {
      Value c = arith::AddFOp::create(
          b, loc, memref::LoadOp::create(b, loc, cnt, iv),
          memref::LoadOp::create(b, loc, stats, ValueRange{idx(b, 0), iv}));
      Value m = arith::MaximumFOp::create(
          b, loc, memref::LoadOp::create(b, loc, mx, iv),
          memref::LoadOp::create(b, loc, stats, ValueRange{idx(b, 1), iv}));
      memref::StoreOp::create(b, loc, c, newStats, ValueRange{idx(b, 0), iv});
      memref::StoreOp::create(b, loc, m, newStats, ValueRange{idx(b, 1), iv});
      memref::StoreOp::create(b, loc, seen, newStats, ValueRange{idx(b, 2), iv});
      Value g = groupOf(b, iv);
      Value pos = arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT, m,
                                        f(b, 0.0));
      Value add = arith::SelectOp::create(b, loc, pos, m, f(b, 0.0));
      Value one = arith::SelectOp::create(b, loc, pos, f(b, 1.0), f(b, 0.0));
      memref::StoreOp::create(
          b, loc,
          arith::AddFOp::create(b, loc, memref::LoadOp::create(b, loc, gSum, g),
                                add),
          gSum, g);
      memref::StoreOp::create(
          b, loc,
          arith::AddFOp::create(b, loc, memref::LoadOp::create(b, loc, gNum, g),
                                one),
          gNum, g);
    });
    double pMax = op.getPMax().convertToDouble();
    double pMin = op.getPMin().convertToDouble();
    double gamma = op.getGamma().convertToDouble();
    double ratio = groups > 1 ? std::log(pMin / pMax) / double(groups - 1) : 0;
    loopN([&](OpBuilder &b, Value iv) {
      Value c = memref::LoadOp::create(b, loc, newStats, ValueRange{idx(b, 0), iv});
      Value m = memref::LoadOp::create(b, loc, newStats, ValueRange{idx(b, 1), iv});
      Value bi = memref::LoadOp::create(b, loc, bias, iv);
      Value g = groupOf(b, iv);
      Value freq = arith::DivFOp::create(b, loc, c, seen);
      // p_g = p_max · exp(g · ln(p_min/p_max)/(groups − 1))
      Value gf = arith::UIToFPOp::create(
          b, loc, elt, arith::IndexCastOp::create(b, loc, b.getI64Type(), g));
      Value target = arith::MulFOp::create(
          b, loc, f(b, pMax),
          math::ExpOp::create(b, loc,
                              arith::MulFOp::create(b, loc, gf, f(b, ratio))));
      Value num = memref::LoadOp::create(b, loc, gNum, g);
      Value meanMax = arith::DivFOp::create(
          b, loc, memref::LoadOp::create(b, loc, gSum, g),
          arith::MaximumFOp::create(b, loc, num, f(b, 1.0)));
      Value down = arith::MaximumFOp::create(
          b, loc,
          arith::SubFOp::create(
              b, loc, bi,
              arith::MulFOp::create(b, loc, f(b, gamma),
                                    arith::MaximumFOp::create(b, loc, m, f(b, 0.0)))),
          f(b, -1.0));
      Value up = arith::MinimumFOp::create(
          b, loc,
          arith::AddFOp::create(b, loc, bi,
                                arith::MulFOp::create(b, loc, f(b, gamma), meanMax)),
          f(b, 0.0));
      Value tooHigh = arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OGT,
                                            freq, target);
      Value dead = arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OLT,
                                         freq, f(b, 1e-6));
      Value adapted = arith::SelectOp::create(
          b, loc, tooHigh, down, arith::SelectOp::create(b, loc, dead, up, bi));
      memref::StoreOp::create(
          b, loc, arith::SelectOp::create(b, loc, update, adapted, bi), newBias,
          iv);
      // After an update the statistics restart.
      for (int64_t r = 0; r < 3; ++r) {
        Value old = memref::LoadOp::create(b, loc, newStats, ValueRange{idx(b, r), iv});
        Value reset = f(b, 0.0);
        memref::StoreOp::create(b, loc,
                                arith::SelectOp::create(b, loc, update, reset, old),
                                newStats, ValueRange{idx(b, r), iv});
      }
    });
    rewriter.replaceOp(op, {asTensor(rewriter, loc, vecType, newBias),
                            asTensor(rewriter, loc, statsType, newStats)});
    return success();
  }
};

/// Per row: replay the pursuit (argmax scans, as the forward lowering),
/// keeping each step's atom, value, clamp and residual, then sweep back.
struct MatchingPursuitGradLowering : OpRewritePattern<MatchingPursuitGradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MatchingPursuitGradOp op,
                                PatternRewriter &rewriter) const override {
    Value codeVals, codeIdx, gradVals, gradIdx;
    if (failed(getCodeParts(op.getCodes(), codeVals, codeIdx)) ||
        failed(getCodeParts(op.getGrad(), gradVals, gradIdx)))
      return rewriter.notifyMatchFailure(op, "codes are not built by make_codes");
    Location loc = op.getLoc();
    CodesType codes = op.getCodes().getType();
    Type elt = codes.getElementType();
    Type i32 = rewriter.getI32Type();
    auto inType = op.getInput().getType();
    auto wType = op.getDecoder().getType();
    int64_t k = codes.getK(), n = codes.getNumLatents(), d = inType.getDimSize(1);
    Value in = toBuffer(rewriter, loc, op.getInput());
    Value w = toBuffer(rewriter, loc, op.getDecoder());
    Value idxs = toBuffer(rewriter, loc, codeIdx);
    Value gv = toBuffer(rewriter, loc, gradVals);
    Value dr = allocLike(rewriter, loc, inType,
                         dynamicSizes(rewriter, loc, inType, op.getInput()));
    Value dw = zeroBuffer(rewriter, loc, wType, {});
    // Per-row scratch: residuals before each step [k + 1, d], atoms, values,
    // clamps, and the residual's gradient.
    Value hist = memref::AllocOp::create(rewriter, loc,
                                         MemRefType::get({k + 1, d}, elt));
    Value atoms = memref::AllocOp::create(rewriter, loc,
                                          MemRefType::get({k}, rewriter.getIndexType()));
    Value vs = memref::AllocOp::create(rewriter, loc, MemRefType::get({k}, elt));
    Value live = memref::AllocOp::create(rewriter, loc, MemRefType::get({k}, elt));
    Value gr = memref::AllocOp::create(rewriter, loc, MemRefType::get({d}, elt));
    auto cIdx = [&](OpBuilder &b, int64_t v) -> Value {
      return arith::ConstantIndexOp::create(b, loc, v);
    };
    auto f = [&](OpBuilder &b, double v) { return floatConst(b, loc, elt, v); };
    bool nonneg = op.getNonneg();
    auto forN = [&](OpBuilder &b, Value lo, Value hi, ValueRange init,
                    function_ref<SmallVector<Value>(OpBuilder &, Value, ValueRange)> body) {
      return scf::ForOp::create(
          b, loc, lo, hi, cIdx(b, 1), init,
          [&](OpBuilder &nb, Location l, Value iv, ValueRange args) {
            scf::YieldOp::create(nb, l, body(nb, iv, args));
          });
    };
    auto dotWith = [&](OpBuilder &b, Value buf, Value bufRow, Value atom) {
      // ⟨buf[bufRow, :], w[atom, :]⟩ (bufRow null: a vector buffer)
      return forN(b, cIdx(b, 0), cIdx(b, d), ValueRange{f(b, 0.0)},
                  [&](OpBuilder &tb, Value t, ValueRange acc) {
                    Value x = bufRow ? memref::LoadOp::create(tb, loc, buf, ValueRange{bufRow, t}).getResult()
                                     : memref::LoadOp::create(tb, loc, buf, ValueRange{t}).getResult();
                    Value y = memref::LoadOp::create(tb, loc, w, ValueRange{atom, t});
                    return SmallVector<Value>{arith::AddFOp::create(
                        tb, loc, acc[0], arith::MulFOp::create(tb, loc, x, y))};
                  })
          .getResult(0);
    };
    Value rows = tensor::DimOp::create(rewriter, loc, op.getInput(), 0);
    forN(rewriter, cIdx(rewriter, 0), rows, {}, [&](OpBuilder &b, Value row, ValueRange) {
      // hist[0] = input row
      forN(b, cIdx(b, 0), cIdx(b, d), {}, [&](OpBuilder &tb, Value t, ValueRange) {
        memref::StoreOp::create(tb, loc,
                                memref::LoadOp::create(tb, loc, in, ValueRange{row, t}),
                                hist, ValueRange{cIdx(tb, 0), t});
        return SmallVector<Value>{};
      });
      // Replay.
      forN(b, cIdx(b, 0), cIdx(b, k), {}, [&](OpBuilder &sb, Value s, ValueRange) {
        auto best = forN(sb, cIdx(sb, 0), cIdx(sb, n),
                         ValueRange{negInfOf(sb, loc, elt), cIdx(sb, 0)},
                         [&](OpBuilder &jb, Value j, ValueRange bst) {
                           Value dot = dotWith(jb, hist, s, j);
                           Value better = arith::CmpFOp::create(
                               jb, loc, arith::CmpFPredicate::OGT, dot, bst[0]);
                           return SmallVector<Value>{
                               arith::SelectOp::create(jb, loc, better, dot, bst[0]),
                               arith::SelectOp::create(jb, loc, better, j, bst[1])};
                         });
        Value p = best.getResult(0), atom = best.getResult(1);
        Value v = nonneg ? arith::MaximumFOp::create(sb, loc, p, f(sb, 0.0)).getResult() : p;
        Value on = nonneg ? arith::UIToFPOp::create(
                                sb, loc, elt,
                                arith::CmpFOp::create(sb, loc, arith::CmpFPredicate::OGT,
                                                      p, f(sb, 0.0)))
                                .getResult()
                          : f(sb, 1.0);
        memref::StoreOp::create(sb, loc, atom, atoms, s);
        memref::StoreOp::create(sb, loc, v, vs, s);
        memref::StoreOp::create(sb, loc, on, live, s);
        Value next = arith::AddIOp::create(sb, loc, s, cIdx(sb, 1));
        forN(sb, cIdx(sb, 0), cIdx(sb, d), {}, [&](OpBuilder &tb, Value t, ValueRange) {
          Value r = memref::LoadOp::create(tb, loc, hist, ValueRange{s, t});
          Value a = memref::LoadOp::create(tb, loc, w, ValueRange{atom, t});
          memref::StoreOp::create(tb, loc,
                                  arith::SubFOp::create(tb, loc, r,
                                                        arith::MulFOp::create(tb, loc, v, a)),
                                  hist, ValueRange{next, t});
          return SmallVector<Value>{};
        });
        return SmallVector<Value>{};
      });
      // Sweep back.
      linalg::FillOp::create(b, loc, ValueRange{f(b, 0.0)}, ValueRange{gr});
      forN(b, cIdx(b, 0), cIdx(b, k), {}, [&](OpBuilder &sb, Value s, ValueRange) {
        Value t0 = arith::SubIOp::create(sb, loc, cIdx(sb, k - 1), s); // step k-1-s
        Value atom = memref::LoadOp::create(sb, loc, atoms, t0);
        Value atomI = arith::IndexCastOp::create(sb, loc, i32, atom);
        // The codes' gradient at this atom's slot (its first slot).
        auto slot = forN(sb, cIdx(sb, 0), cIdx(sb, k), ValueRange{cIdx(sb, k)},
                         [&](OpBuilder &jb, Value j, ValueRange found) {
                           Value held = memref::LoadOp::create(jb, loc, idxs, ValueRange{row, j});
                           Value same = arith::CmpIOp::create(jb, loc, arith::CmpIPredicate::eq, held, atomI);
                           Value first = arith::CmpIOp::create(jb, loc, arith::CmpIPredicate::eq, found[0], cIdx(jb, k));
                           return SmallVector<Value>{arith::SelectOp::create(
                               jb, loc, arith::AndIOp::create(jb, loc, same, first), j, found[0])};
                         });
        Value sl = arith::MinUIOp::create(sb, loc, slot.getResult(0), cIdx(sb, k - 1));
        Value gt = memref::LoadOp::create(sb, loc, gv, ValueRange{row, sl});
        Value gvp = arith::MulFOp::create(
            sb, loc, memref::LoadOp::create(sb, loc, live, t0),
            arith::SubFOp::create(sb, loc, gt, dotWith(sb, gr, Value(), atom)));
        Value v = memref::LoadOp::create(sb, loc, vs, t0);
        forN(sb, cIdx(sb, 0), cIdx(sb, d), {}, [&](OpBuilder &tb, Value t, ValueRange) {
          Value g = memref::LoadOp::create(tb, loc, gr, ValueRange{t});
          Value r = memref::LoadOp::create(tb, loc, hist, ValueRange{t0, t});
          Value old = memref::LoadOp::create(tb, loc, dw, ValueRange{atom, t});
          Value upd = arith::SubFOp::create(tb, loc, arith::MulFOp::create(tb, loc, gvp, r),
                                            arith::MulFOp::create(tb, loc, v, g));
          memref::StoreOp::create(tb, loc, arith::AddFOp::create(tb, loc, old, upd), dw,
                                  ValueRange{atom, t});
          Value a = memref::LoadOp::create(tb, loc, w, ValueRange{atom, t});
          memref::StoreOp::create(tb, loc,
                                  arith::AddFOp::create(tb, loc, g,
                                                        arith::MulFOp::create(tb, loc, gvp, a)),
                                  gr, ValueRange{t});
          return SmallVector<Value>{};
        });
        return SmallVector<Value>{};
      });
      forN(b, cIdx(b, 0), cIdx(b, d), {}, [&](OpBuilder &tb, Value t, ValueRange) {
        memref::StoreOp::create(tb, loc, memref::LoadOp::create(tb, loc, gr, ValueRange{t}),
                                dr, ValueRange{row, t});
        return SmallVector<Value>{};
      });
      return SmallVector<Value>{};
    });
    rewriter.replaceOp(op, {asTensor(rewriter, loc, inType, dr),
                            asTensor(rewriter, loc, wType, dw)});
    return success();
  }
};

struct ConvertSaeToLinalgPass
    : public sae::impl::ConvertSaeToLinalgBase<ConvertSaeToLinalgPass> {
  using ConvertSaeToLinalgBase::ConvertSaeToLinalgBase;
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    int64_t lanes = vectorLanes;
    if (lanes <= 0) {
      llvm::StringMap<bool> features = llvm::sys::getHostCPUFeatures();
      lanes = features.lookup("avx512f") ? 16 : 8;
    }
    // Composite losses first become the sae ops they are made of; CSE then
    // merges those with the same ops of the backward pass (aux_k's dead
    // latent selection and its decode, computed once per step, not twice).
    {
      RewritePatternSet decompose(&getContext());
      decompose.add<AuxKLowering>(&getContext());
      if (failed(applyPatternsGreedily(getOperation(), std::move(decompose))))
        return signalPassFailure();
      IRRewriter rewriter(&getContext());
      DominanceInfo dominance;
      eliminateCommonSubExpressions(rewriter, dominance, getOperation());
    }
    // AuxK's selections next: each reads the dead columns side by side
    // (sae.take_columns), which the encoder product below then writes from
    // its epilogue instead of its [B, n] result.
    {
      RewritePatternSet selections(&getContext());
      selections.add<DeadTopKLowering>(&getContext(), lanes);
      if (failed(applyPatternsGreedily(getOperation(), std::move(selections))))
        return signalPassFailure();
    }
    // Products next, before the bias adds and relus that their kernel's
    // epilogue computes are lowered on their own; batch_topk with them, so
    // that its codes too are make_codes for the updates below.
    {
      RewritePatternSet products(&getContext());
      products.add<LinearLowering>(&getContext(), lanes);
      products.add<BatchTopKLowering>(&getContext());
      if (failed(applyPatternsGreedily(getOperation(), std::move(products))))
        return signalPassFailure();
    }
    // Then the parameter updates, which read a gradient that is an outer
    // product of codes from the codes' entries (TopK's and BatchTopK's
    // codes are make_codes by now) instead of from a stored matrix. Such a product may still be used by the gradient norm, only
    // when clipping is on: it moves into that branch (scf.if).
    {
      RewritePatternSet updates(&getContext());
      updates.add<UnitNormAdamLowering, OuterAdamLowering>(&getContext(),
                                                           lanes);
      if (failed(applyPatternsGreedily(getOperation(), std::move(updates))))
        return signalPassFailure();
      DominanceInfo dominance;
      getOperation()->walk([&](RegionBranchOpInterface branch) {
        SmallVector<Region *> regions;
        getSinglyExecutedRegionsToSink(branch, regions);
        controlFlowSink(
            regions, dominance,
            [](Operation *op, Region *) { return isMemoryEffectFree(op); },
            [](Operation *op, Region *region) {
              op->moveBefore(&region->front(), region->front().begin());
            });
      });
    }
    populateSaeToLinalgPatterns(patterns, lanes);
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

void mlir::sae::populateSaeToLinalgPatterns(RewritePatternSet &patterns,
                                            int64_t vectorLanes) {
  patterns.add<LinearLowering, DeadTopKLowering, OuterLowering, DecodeLowering>(
      patterns.getContext(), vectorLanes);
  patterns.add<
      BiasLowering<BiasAddOp, arith::AddFOp>,
      BiasLowering<BiasSubOp, arith::SubFOp>,
      BinaryLowering<AddOp, arith::AddFOp>,
      BinaryLowering<SubOp, arith::SubFOp>,
      BinaryLowering<MulOp, arith::MulFOp>,
      BinaryLowering<DivOp, arith::DivFOp>, ScaleLowering, ReluLowering,
      TransposeLowering, NormalizeRowsLowering, FillLowering,
      RandomUniformLowering, MseLowering, FvuLowering, TopKLowering,
      GroupMaxLowering, MatchingPursuitLowering, TopAfaLowering,
      DensifyLowering, BatchCodesLowering<DecodeOp>,
      BatchCodesLowering<DensifyOp>, BatchTopKLowering, FeatureChoiceLowering,
      MatryoshkaLowering, AuxKLowering, BiasLowering<BiasMulOp, arith::MulFOp>,
      BiasLowering<BiasDivOp, arith::DivFOp>, StopGradLowering,
      JumpReluLowering, L1Lowering, TanhPenaltyLowering, L0Lowering,
      AfaLowering, KlStdNormalLowering, RandomNormalLowering,
      GaussianNoiseLowering, ColumnMeanLowering, GeometricMedianLowering,
      GatherLowering, SddmmLowering, ColumnSumLowering, MatVecLowering,
      ConcatLowering, NumRowsLowering, SumLowering, RowNormsLowering,
      ScaleRowsLowering, JumpReluGradLowering, L0GradLowering,
      ProjectRowsLowering, PlaceRowsLowering, TakeColumnsLowering, AdamLowering,
      SinceFiredLowering, DeadMaskLowering, PrefixLowering, ShiftLowering,
      ThresholdEmaLowering, BiasAdaptLowering, MatchingPursuitGradLowering>(
      patterns.getContext());
  MLIRContext *ctx = patterns.getContext();
  patterns.add<UnaryLowering<AbsOp>>(
      ctx, [](OpBuilder &b, Location l, Value x) {
        return math::AbsFOp::create(b, l, x).getResult();
      });
  patterns.add<UnaryLowering<ExpOp>>(
      ctx, [](OpBuilder &b, Location l, Value x) {
        return math::ExpOp::create(b, l, x).getResult();
      });
  patterns.add<UnaryLowering<TanhOp>>(
      ctx, [](OpBuilder &b, Location l, Value x) {
        return math::TanhOp::create(b, l, x).getResult();
      });
  patterns.add<UnaryLowering<StepOp>>(
      ctx, [](OpBuilder &b, Location l, Value x) {
        Value zero = floatConst(b, l, x.getType(), 0.0);
        Value above =
            arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT, x, zero);
        return arith::SelectOp::create(b, l, above,
                                       floatConst(b, l, x.getType(), 1.0), zero)
            .getResult();
      });
}
