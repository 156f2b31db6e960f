//===- ParallelizeLinalg.cpp - Split large linalg ops into parallel tiles -===//
//
// After bufferization every elementwise or row-wise linalg op of an entry
// function (Adam, fills, scalings, row norms, bias adds, ...) would lower to
// one serial loop nest. This pass tiles each large one along its first
// parallel dimension into a fixed number of chunks, under an `scf.parallel`
// that `convert-scf-to-openmp` turns into a work-sharing loop; each chunk is
// still a linalg op, lowered later to a contiguous, vectorisable loop nest.
//
// Only parallel dimensions are split, so every output element is computed
// by the same arithmetic in the same order whatever the thread count: the
// results stay bit-identical across thread counts.
//
//===----------------------------------------------------------------------===//
#include "sae/Transforms/Passes.h"

#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Utils/Utils.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/OpenMP/OpenMPDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/PatternMatch.h"

namespace mlir::sae {
#define GEN_PASS_DEF_PARALLELIZELINALG
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;

namespace {

/// Dynamic (batch) dimensions count as this many iterations when deciding
/// whether an op is worth a parallel region.
constexpr int64_t kAssumedDynamicSize = 1024;

/// The dimension to split: the first parallel one, if any.
std::optional<unsigned> splitDim(linalg::LinalgOp op) {
  for (auto [i, it] : llvm::enumerate(op.getIteratorTypesArray()))
    if (it == utils::IteratorType::parallel)
      return i;
  return std::nullopt;
}

/// Iterations of the whole op (dynamic sizes estimated).
int64_t estimatedWork(linalg::LinalgOp op) {
  uint64_t work = 1;
  for (int64_t size : op.getStaticLoopRanges())
    work = llvm::SaturatingMultiply<uint64_t>(
        work, ShapedType::isDynamic(size) ? kAssumedDynamicSize : size);
  return std::min<uint64_t>(work, std::numeric_limits<int64_t>::max());
}

struct ParallelizeLinalgPass
    : mlir::sae::impl::ParallelizeLinalgBase<ParallelizeLinalgPass> {
  using ParallelizeLinalgBase::ParallelizeLinalgBase;

  void runOnOperation() override {
    SmallVector<linalg::LinalgOp> candidates;
    getOperation().walk([&](linalg::LinalgOp op) {
      // Ops inside a parallel loop already share its threads; nesting a
      // second parallel region there would only add fork/join overhead.
      if (!op.hasPureBufferSemantics() ||
          op->getParentOfType<scf::ParallelOp>() ||
          op->getParentOfType<omp::ParallelOp>())
        return;
      if (splitDim(op) && estimatedWork(op) >= minWork)
        candidates.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (linalg::LinalgOp op : candidates) {
      unsigned dim = *splitDim(op);
      int64_t parts = chunks;
      linalg::LinalgTilingOptions options;
      options.setLoopType(linalg::LinalgTilingLoopType::ParallelLoops);
      options.setTileSizeComputationFunction([dim, parts](OpBuilder &b,
                                                          Operation *o) {
        auto lop = cast<linalg::LinalgOp>(o);
        Location loc = o->getLoc();
        SmallVector<Range> ranges = lop.createLoopRanges(b, loc);
        Value zero = arith::ConstantIndexOp::create(b, loc, 0);
        SmallVector<Value, 4> sizes(ranges.size(), zero);
        // ceil(size / parts), at least 1.
        Value size = getValueOrCreateConstantIndexOp(b, loc, ranges[dim].size);
        Value tile = arith::CeilDivUIOp::create(
            b, loc, size, arith::ConstantIndexOp::create(b, loc, parts));
        sizes[dim] = arith::MaxUIOp::create(
            b, loc, tile, arith::ConstantIndexOp::create(b, loc, 1));
        return sizes;
      });
      rewriter.setInsertionPoint(op);
      if (failed(linalg::tileLinalgOp(rewriter, op, options)))
        continue; // leave it serial: correct, only slower
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
