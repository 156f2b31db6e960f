// RUN: sae-opt %s -split-input-file -canonicalize | FileCheck %s

// Tests that taking codes apart right after building them folds away.
// CHECK-LABEL: func.func @fold_parts
// CHECK-SAME: (%[[V:.*]]: tensor<?x4xf32>, %[[I:.*]]: tensor<?x4xi32>)
// CHECK-NOT: sae.
// CHECK: return %[[V]], %[[I]]
func.func @fold_parts(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>) -> (tensor<?x4xf32>, tensor<?x4xi32>) {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %vv = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %ii = sae.codes_indices %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xi32>
  return %vv, %ii : tensor<?x4xf32>, tensor<?x4xi32>
}

// -----

// Tests that parts of codes from a sparsity operator do not fold.
// CHECK-LABEL: func.func @no_fold
// CHECK: sae.topk
// CHECK: sae.codes_values
func.func @no_fold(%x: tensor<?x64xf32>) -> tensor<?x4xf32> {
  %z = sae.topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  return %v : tensor<?x4xf32>
}

// -----

// Tests that gathering a top-k's input at that top-k's entries is the
// top-k itself: directly, through sddmm (same entries) and through codes
// rebuilt from its indices (a masked gradient).
// CHECK-LABEL: func.func @gather_topk
// CHECK: %[[Z:.*]] = sae.topk %arg0
// CHECK-NOT: sae.gather
// CHECK: return %[[Z]], %[[Z]], %[[Z]]
func.func @gather_topk(%x: tensor<?x64xf32>, %dy: tensor<?x16xf32>, %w: tensor<64x16xf32>) -> (!sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>) {
  %z = sae.topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %g0 = sae.gather %z, %x : !sae.codes<?x64xf32, k = 4>, tensor<?x64xf32>
  %s = sae.sddmm %z, %dy, %w : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32>, tensor<64x16xf32>
  %g1 = sae.gather %s, %x : !sae.codes<?x64xf32, k = 4>, tensor<?x64xf32>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %i = sae.codes_indices %s : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xi32>
  %m = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %g2 = sae.gather %m, %x : !sae.codes<?x64xf32, k = 4>, tensor<?x64xf32>
  return %g0, %g1, %g2 : !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>
}

// -----

// Tests that a gather does not fold when the source is not the top-k's
// input, or the entries are another selection's.
// CHECK-LABEL: func.func @gather_other
// CHECK-COUNT-2: sae.gather
func.func @gather_other(%x: tensor<?x64xf32>, %y: tensor<?x64xf32>) -> (!sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>) {
  %z = sae.topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %g0 = sae.gather %z, %y : !sae.codes<?x64xf32, k = 4>, tensor<?x64xf32>
  %z2 = sae.topk %y : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %g1 = sae.gather %z2, %x : !sae.codes<?x64xf32, k = 4>, tensor<?x64xf32>
  return %g0, %g1 : !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>
}

// -----

// Tests that a transpose of a transpose folds to the matrix itself.
// CHECK-LABEL: func.func @transpose_twice
// CHECK-SAME: (%[[W:.*]]: tensor<16x64xf32>)
// CHECK-NOT: sae.transpose
// CHECK: return %[[W]]
func.func @transpose_twice(%w: tensor<16x64xf32>) -> tensor<16x64xf32> {
  %t = sae.transpose %w : tensor<16x64xf32> -> tensor<64x16xf32>
  %tt = sae.transpose %t : tensor<64x16xf32> -> tensor<16x64xf32>
  return %tt : tensor<16x64xf32>
}
