//===- GuidedSchedule.cpp - Share OpenMP loops out as threads come free ---===//
//
// `convert-scf-to-openmp` gives every work-sharing loop the default (static)
// schedule: thread t takes the t-th contiguous share of the iterations up
// front. On a machine whose cores do not run at the same speed (a shared
// VM, a neighbour on the sibling hyperthread, a core at a lower clock) the
// fast threads then wait at the loop's end for the slow one. A guided
// schedule hands out shrinking runs of iterations to whichever thread is
// free: large runs first (few dispatches), single iterations at the end.
//
// Results stay bit-identical across runs and thread counts: every loop sae
// emits computes each iteration's outputs within that iteration, in a fixed
// order, whichever thread runs it. A loop with reduction clauses would
// combine per-thread partial results, which depend on the iterations each
// thread took; those keep their schedule.
//
//===----------------------------------------------------------------------===//
#include "sae/Transforms/Passes.h"

#include "mlir/Dialect/OpenMP/OpenMPDialect.h"

namespace mlir::sae {
#define GEN_PASS_DEF_GUIDEDSCHEDULE
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;

namespace {

struct GuidedSchedulePass
    : mlir::sae::impl::GuidedScheduleBase<GuidedSchedulePass> {
  void runOnOperation() override {
    MLIRContext *ctx = &getContext();
    getOperation()->walk([&](omp::WsloopOp loop) {
      if (loop.getScheduleKindAttr() || !loop.getReductionVars().empty())
        return;
      loop.setScheduleKindAttr(omp::ClauseScheduleKindAttr::get(
          ctx, omp::ClauseScheduleKind::Guided));
    });
  }
};

} // namespace
