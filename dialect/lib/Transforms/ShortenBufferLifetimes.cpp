//===- ShortenBufferLifetimes.cpp - Free buffers after their last use -----===//
//
// `buffer-deallocation-pipeline` frees every buffer at the end of the block
// that allocated it, and `one-shot-bufferize` allocates where the tensor
// was created, which may be long before it is first written. In a training
// step, one block (the entry function's body) holds dozens of [B, n] and
// [n, d] buffers, so all of them were live at once at its end: at
// d = 768, n = 16384, B = 1024 the work buffers of a ReLU + L1 + AuxK step
// peaked at about 700 MiB, most of it buffers no longer read.
//
// This pass moves, within each block:
//  - a `memref.dealloc` of a buffer allocated in that block (or of the base
//    of a buffer that ops of the block produced) up to just after the last
//    op of the block that uses the buffer or a view of it;
//  - a `memref.alloc` down to just before the first op of the block that
//    uses it.
// Uses inside nested regions count for the op of the block that holds them.
// A buffer that may escape in a way this pass does not follow (passed to a
// call, returned, yielded, carried by a loop, turned into an integer
// address) keeps its place. Only where buffers live changes, never what
// the code computes.
//
//===----------------------------------------------------------------------===//
#include "sae/Transforms/Passes.h"

#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Interfaces/CallInterfaces.h"
#include "mlir/Interfaces/ViewLikeInterface.h"

namespace mlir::sae {
#define GEN_PASS_DEF_SHORTENBUFFERLIFETIMES
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;

namespace {

/// The last op of `block` that uses `root` or a view of it, apart from the
/// ops in `ignored` (null if there is none); failure where the buffer may
/// escape the uses followed here.
FailureOr<Operation *> lastUser(Value root, Block *block,
                                ArrayRef<Operation *> ignored) {
  Operation *last = nullptr;
  SmallVector<Value> worklist = {root};
  while (!worklist.empty()) {
    Value value = worklist.pop_back_val();
    for (OpOperand &use : value.getUses()) {
      Operation *user = use.getOwner();
      if (llvm::is_contained(ignored, user))
        continue;
      Operation *inBlock = block->findAncestorOpInBlock(*user);
      if (!inBlock)
        return failure(); // used outside the block
      if (isa<memref::ExtractAlignedPointerAsIndexOp, CallOpInterface>(user) ||
          user->hasTrait<OpTrait::IsTerminator>())
        return failure();
      bool view =
          isa<ViewLikeOpInterface, memref::ExtractStridedMetadataOp>(user);
      for (Value result : user->getResults()) {
        if (!isa<BaseMemRefType>(result.getType()))
          continue;
        if (!view)
          return failure(); // a memref from an op that is not a view
        worklist.push_back(result);
      }
      if (!last || last->isBeforeInBlock(inBlock))
        last = inBlock;
    }
  }
  return last;
}

/// Whether `value` is a result of an `scf.if` of `block` whose branches
/// both yield a buffer made inside them: a buffer nothing else refers to.
bool madeByBranches(Value value, Block *block) {
  auto result = dyn_cast<OpResult>(value);
  auto branch = result ? dyn_cast<scf::IfOp>(result.getOwner()) : nullptr;
  if (!branch || branch->getBlock() != block || branch.getElseRegion().empty())
    return false;
  for (Region *region : {&branch.getThenRegion(), &branch.getElseRegion()}) {
    Value yielded =
        region->front().getTerminator()->getOperand(result.getResultNumber());
    if (!yielded.getDefiningOp<memref::AllocOp>() ||
        yielded.getParentRegion() != region)
      return false;
  }
  return true;
}

/// Moves `dealloc` to just after the last use of its buffer in its block.
void freeEarly(memref::DeallocOp dealloc) {
  Block *block = dealloc->getBlock();
  Value memref = dealloc.getMemref();
  Operation *def = memref.getDefiningOp();
  if (!def || def->getBlock() != block)
    return;
  // The buffer whose uses count: the allocation itself, or the source of
  // the metadata op that gave the dealloc its base buffer (a buffer that a
  // region op of the block produced).
  Value root = memref;
  auto metadata = dyn_cast<memref::ExtractStridedMetadataOp>(def);
  if (metadata) {
    root = metadata.getSource();
    if (!madeByBranches(root, block))
      return;
    // The metadata op must serve the dealloc alone to move along with it.
    if (!metadata.getBaseBuffer().hasOneUse())
      return;
    for (Value result : metadata->getResults().drop_front())
      if (!result.use_empty())
        return;
  } else if (!isa<memref::AllocOp>(def)) {
    return;
  }
  FailureOr<Operation *> user =
      lastUser(root, block, {dealloc.getOperation(), metadata});
  if (failed(user))
    return;
  // A buffer never used is freed where it is made.
  Operation *last = *user ? *user : root.getDefiningOp();
  if (!last->isBeforeInBlock(dealloc))
    return;
  if (metadata) {
    metadata->moveAfter(last);
    last = metadata;
  }
  dealloc->moveAfter(last);
}

/// Moves `alloc` to just before the first op of its block that uses it.
void allocLate(memref::AllocOp alloc) {
  Block *block = alloc->getBlock();
  Operation *first = nullptr;
  for (Operation *user : alloc->getUsers()) {
    Operation *inBlock = block->findAncestorOpInBlock(*user);
    if (!inBlock)
      return;
    if (!first || inBlock->isBeforeInBlock(first))
      first = inBlock;
  }
  if (first && alloc->isBeforeInBlock(first))
    alloc->moveBefore(first);
}

struct ShortenBufferLifetimesPass
    : mlir::sae::impl::ShortenBufferLifetimesBase<ShortenBufferLifetimesPass> {
  void runOnOperation() override {
    SmallVector<memref::AllocOp> allocs;
    SmallVector<memref::DeallocOp> deallocs;
    getOperation()->walk([&](Operation *op) {
      if (auto alloc = dyn_cast<memref::AllocOp>(op))
        allocs.push_back(alloc);
      else if (auto dealloc = dyn_cast<memref::DeallocOp>(op))
        deallocs.push_back(dealloc);
    });
    for (memref::AllocOp alloc : allocs)
      allocLate(alloc);
    for (memref::DeallocOp dealloc : deallocs)
      freeEarly(dealloc);
  }
};

} // namespace
