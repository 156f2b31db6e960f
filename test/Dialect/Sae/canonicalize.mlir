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
