// RUN: sae-opt --convert-scf-to-openmp --sae-guided-schedule %s | FileCheck %s

// Tests that a work-sharing loop gets schedule(guided), so that threads
// take the next iterations as they come free.
// CHECK-LABEL: func.func @plain
// CHECK: omp.parallel
// CHECK-NEXT: omp.wsloop schedule(guided) {
func.func @plain(%a: memref<64xf32>, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %one = arith.constant 1.0 : f32
  scf.parallel (%i) = (%c0) to (%n) step (%c1) {
    memref.store %one, %a[%i] : memref<64xf32>
    scf.reduce
  }
  return
}

// Tests that a loop with a reduction clause keeps the static schedule: its
// per-thread partial sums would otherwise depend on which thread took
// which iterations.
// CHECK-LABEL: func.func @sum
// CHECK: omp.wsloop reduction(
// CHECK-NOT: schedule
// CHECK: return
func.func @sum(%a: memref<64xf32>, %n: index) -> f32 {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %zero = arith.constant 0.0 : f32
  %s = scf.parallel (%i) = (%c0) to (%n) step (%c1) init (%zero) -> f32 {
    %x = memref.load %a[%i] : memref<64xf32>
    scf.reduce(%x : f32) {
    ^bb0(%l: f32, %r: f32):
      %y = arith.addf %l, %r : f32
      scf.reduce.return %y : f32
    }
  }
  return %s : f32
}

// Tests that a schedule already given is kept.
// CHECK-LABEL: func.func @given
// CHECK: omp.wsloop schedule(static) {
func.func @given(%a: memref<64xf32>, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %one = arith.constant 1.0 : f32
  omp.parallel {
    omp.wsloop schedule(static) {
      omp.loop_nest (%i) : index = (%c0) to (%n) step (%c1) {
        memref.store %one, %a[%i] : memref<64xf32>
        omp.yield
      }
    }
    omp.terminator
  }
  return
}
