//===- Passes.td - Transformations on the sae dialect ------*- tablegen -*-===//
#ifndef SAE_TRANSFORMS_PASSES_TD
#define SAE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def EmitCABI : Pass<"sae-emit-c-abi", "ModuleOp"> {
  let summary = "Wrap the model's entry functions in the C ABI of runtime/include/sae/runtime/abi.h";
  let description = [{
    Every `func.func` carrying a `sae.entry` attribute is a tensor-level entry
    point produced by MLIRGen. This pass replaces it by a public function
    `sae_<entry>` with plain C arguments, in the order of the function's
    arguments and results: an `i64` batch size right before the first
    tensor with a dynamic (batch) dimension; scalars by value; one pointer
    per tensor argument or result; and one pointer per group — arguments
    tagged `sae.input` or `sae.param` arrive as one array of pointers,
    scalar results tagged `sae.loss` leave as one array of floats. A tensor
    tagged `sae.batch_scale = k` has `batch · k` rows. Pointers become
    row-major memrefs; inputs enter as `bufferization.to_tensor restrict`,
    results leave through `bufferization.materialize_in_destination`. It also
    emits `sae_abi_version` and `sae_model_describe` (the module's
    `sae.describe` JSON string).
  }];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::bufferization::BufferizationDialect",
    "::mlir::func::FuncDialect", "::mlir::LLVM::LLVMDialect",
    "::mlir::memref::MemRefDialect"
  ];
}

def Differentiate : Pass<"sae-differentiate", "ModuleOp"> {
  let summary = "Replace sae.gradient by the reverse sweep of its block";
  let description = [{
    Reverse-mode differentiation on the sae dialect. For every
    `sae.gradient %loss wrt %args`, the ops of its block that lie between
    the arguments and the loss are visited in reverse, each contributing the
    vector-Jacobian product of its gradient rule (see each op's
    description). Gradients flowing back through a selection stay sparse
    codes with the selection's entries, and rules that commute with
    sparsity (relu, bias_add/sub, linear, add, sub, scale) pass them on
    sparse: the encoder weight's gradient is then `sae.outer` (work B·k·d),
    never a dense [B, n] product. An op without a rule on the path from a
    parameter to the loss is an error naming the op.

    With `drop-untrainable` (what saec runs), such a model still compiles:
    the pass warns, removes the entry functions that hold a `sae.gradient`
    and records the reason in the module's `sae.describe` JSON
    ("untrainable"), dropping those entry points from its list.
  }];
  let options = [
    Option<"dropUntrainable", "drop-untrainable", "bool", /*default=*/"false",
           "Remove entry points whose gradient cannot be derived (with a "
           "warning) instead of failing">
  ];
  let dependentDialects = ["::mlir::arith::ArithDialect",
                           "::mlir::tensor::TensorDialect"];
}

def ShortenBufferLifetimes : Pass<"sae-shorten-buffer-lifetimes"> {
  let summary = "Free each buffer after its last use and allocate it at its first";
  let description = [{
    Runs after `buffer-deallocation-pipeline`, which frees every buffer at
    the end of the block that allocated it. Within each block, a
    `memref.dealloc` of a buffer allocated there (or of the base buffer of
    an `scf.if` result whose branches both yield a new allocation) moves to
    just after the last op of the block that uses the buffer or a view of
    it, and a `memref.alloc` moves to just before the first op of the block
    that uses it; uses in nested regions count for the op that holds them.
    A buffer passed to a call, yielded, returned or turned into an address
    stays where it is. The entry functions' peak memory is then the most
    their buffers are live at once, not the sum of all of them.
  }];
  let dependentDialects = ["::mlir::memref::MemRefDialect"];
}

def ParallelizeLinalg : Pass<"sae-parallelize-linalg", "func::FuncOp"> {
  let summary = "Split large buffer-level linalg ops into chunks under scf.parallel";
  let description = [{
    Runs after bufferization, on linalg ops over memrefs that are not already
    inside a parallel loop. Each op with at least `min-work` iterations
    (dynamic dimensions counted as 1024) is tiled along its first parallel
    dimension into `chunks` pieces under an `scf.parallel`, which
    `convert-scf-to-openmp` turns into an OpenMP work-sharing loop. Each
    piece is the same linalg op on a subview, later lowered to a contiguous
    loop nest that LLVM vectorises. Reduction dimensions are never split,
    so results do not depend on the number of threads.
  }];
  let options = [
    Option<"minWork", "min-work", "int64_t", /*default=*/"32768",
           "Smallest iteration count worth a parallel region">,
    Option<"chunks", "chunks", "int64_t", /*default=*/"64",
           "Number of pieces the split dimension is cut into">
  ];
  let dependentDialects = [
    "::mlir::affine::AffineDialect", "::mlir::arith::ArithDialect",
    "::mlir::memref::MemRefDialect", "::mlir::scf::SCFDialect"
  ];
}

def GuidedSchedule : Pass<"sae-guided-schedule"> {
  let summary = "Give OpenMP work-sharing loops a guided schedule";
  let description = [{
    Runs after `convert-scf-to-openmp`. Every `omp.wsloop` without a
    schedule and without reduction clauses gets `schedule(guided)`: a
    thread that is done takes the next run of iterations, runs shrinking
    towards single iterations at the end, instead of a share fixed in
    advance. On a shared machine a core slowed by a neighbour then does
    not make the others wait at the loop's end. Each iteration of the loops
    sae emits writes its own outputs in a fixed order, so results do not
    depend on which thread runs it; a loop with reduction clauses, whose
    result would, keeps its schedule.
  }];
  let dependentDialects = ["::mlir::omp::OpenMPDialect"];
}

#endif // SAE_TRANSFORMS_PASSES_TD
