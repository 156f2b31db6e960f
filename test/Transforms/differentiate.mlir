// RUN: sae-opt %s -split-input-file -sae-differentiate | FileCheck %s

// Tests the reverse sweep of a TopK SAE: the gradient that comes back
// through the selection stays sparse codes. The decoder's gradient is
// sae.outer, the codes' is sae.sddmm, relu masks the k entries with
// sae.gather of its own output (step(relu(x)) = step(x); the gather then
// folds to the top-k's values, and the pre-activation has the top-k as its
// only use), and the encoder weight's gradient is the transposed outer
// product with the input: no dense [B, n] gradient (sae.densify) and no
// dense product for it (sae.linear) is formed.
// CHECK-LABEL: func.func @topk
// CHECK-NOT: sae.gradient
// CHECK-NOT: sae.densify
// CHECK: %[[R:.*]] = sae.relu
// CHECK: %[[S:.*]] = sae.sddmm %[[Z:.*]], %{{.*}}, %arg2
// CHECK: sae.outer %[[Z]], %{{.*}} : {{.*}} -> tensor<256x64xf32>
// CHECK: sae.gather %[[S]], %[[R]] :
// CHECK: %[[DZ:.*]] = sae.make_codes
// CHECK: sae.column_sum %[[DZ]] : !sae.codes<?x256xf32, k = 8> -> tensor<256xf32>
// CHECK: sae.outer %[[DZ]], %{{.*}} {transposed} : {{.*}} -> tensor<64x256xf32>
// CHECK-NOT: sae.densify
// CHECK-NOT: sae.linear {{.*}} -> tensor<64x256xf32>
// CHECK: return
func.func @topk(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>, %b_enc: tensor<256xf32>) -> (tensor<64x256xf32>, tensor<256x64xf32>, tensor<256xf32>) {
  %l = sae.linear %x, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %pre = sae.bias_add %l, %b_enc : tensor<?x256xf32>, tensor<256xf32>
  %r = sae.relu %pre : tensor<?x256xf32>
  %z = sae.topk %r : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 8>
  %xhat = sae.decode %z, %W_dec : !sae.codes<?x256xf32, k = 8>, tensor<256x64xf32> -> tensor<?x64xf32>
  %loss = sae.mse %xhat, %x : tensor<?x64xf32> -> f32
  %g:3 = sae.gradient %loss wrt %W_enc, %W_dec, %b_enc : f32, tensor<64x256xf32>, tensor<256x64xf32>, tensor<256xf32> -> tensor<64x256xf32>, tensor<256x64xf32>, tensor<256xf32>
  return %g#0, %g#1, %g#2 : tensor<64x256xf32>, tensor<256x64xf32>, tensor<256xf32>
}

// -----

// Tests the gradient of b_dec subtracted before the encoder: the gradient of
// the encoder's input (a decode of the sparse code gradient through the
// transposed W_enc) is only summed over rows, so it becomes
// W_enc · column_sum(dz), a sae.matvec: neither the transposed W_enc nor
// the [B, d] product is used (they are left dead for canonicalisation).
// CHECK-LABEL: func.func @pre_bias
// CHECK: %[[DZ:.*]] = sae.sddmm
// CHECK: %[[S:.*]] = sae.column_sum %[[DZ]] : !sae.codes<?x256xf32, k = 8> -> tensor<256xf32>
// CHECK: %[[MV:.*]] = sae.matvec %arg1, %[[S]] : tensor<64x256xf32>, tensor<256xf32> -> tensor<64xf32>
// CHECK: sae.scale %[[MV]]
// CHECK: return
func.func @pre_bias(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>, %b_dec: tensor<64xf32>) -> tensor<64xf32> {
  %c = sae.bias_sub %x, %b_dec : tensor<?x64xf32>, tensor<64xf32>
  %l = sae.linear %c, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %z = sae.topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 8>
  %xhat = sae.decode %z, %W_dec : !sae.codes<?x256xf32, k = 8>, tensor<256x64xf32> -> tensor<?x64xf32>
  %loss = sae.mse %xhat, %x : tensor<?x64xf32> -> f32
  %g = sae.gradient %loss wrt %b_dec : f32, tensor<64xf32> -> tensor<64xf32>
  return %g : tensor<64xf32>
}

// -----

// Tests that the gradients of b_dec through two selections of the same
// pre-activation (TopK's codes and AuxK's) share one pass over W_enc: their
// column sums are added, then one sae.matvec, not one per selection.
// CHECK-LABEL: func.func @pre_bias_two_selections
// CHECK-NOT: sae.matvec
// CHECK: %[[SA:.*]] = sae.column_sum %{{.*}} : !sae.codes<?x256xf32, k = 16> -> tensor<256xf32>
// CHECK: %[[SZ:.*]] = sae.column_sum %{{.*}} : !sae.codes<?x256xf32, k = 8> -> tensor<256xf32>
// CHECK: %[[S:.*]] = sae.add %[[SA]], %[[SZ]] : tensor<256xf32>
// CHECK: %[[MV:.*]] = sae.matvec %arg1, %[[S]] : tensor<64x256xf32>, tensor<256xf32> -> tensor<64xf32>
// CHECK-NOT: sae.matvec
// CHECK: return
func.func @pre_bias_two_selections(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>, %b_dec: tensor<64xf32>, %since: tensor<256xf32>) -> tensor<64xf32> {
  %c = sae.bias_sub %x, %b_dec : tensor<?x64xf32>, tensor<64xf32>
  %l = sae.linear %c, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %r = sae.relu %l : tensor<?x256xf32>
  %z = sae.topk %r : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 8>
  %xhat = sae.decode %z, %W_dec : !sae.codes<?x256xf32, k = 8>, tensor<256x64xf32> -> tensor<?x64xf32>
  %loss = sae.mse %xhat, %x : tensor<?x64xf32> -> f32
  %e = sae.sub %x, %xhat : tensor<?x64xf32>
  %es = sae.stopgrad %e : tensor<?x64xf32>
  %aux = sae.aux_k %r, %es, %W_dec, %since {dead_after = 1.0e+03 : f64, k_aux = 16 : i64} : tensor<?x256xf32>, tensor<?x64xf32>, tensor<256x64xf32>, tensor<256xf32> -> f32
  %total = arith.addf %loss, %aux : f32
  %g = sae.gradient %total wrt %b_dec : f32, tensor<64xf32> -> tensor<64xf32>
  return %g : tensor<64xf32>
}

// -----

// Tests that sparse gradients of one weight from two selections are merged
// before any dense matrix is formed: the encoder weight's two transposed
// outer products (same input x) become one over the entries of both codes
// side by side (4 + 8 = 12 per row), and the decoder's two (different
// dense operands) accumulate into one matrix (`into`), not one per term
// plus their sum.
// CHECK-LABEL: func.func @two_selections
// CHECK: %[[D1:.*]] = sae.outer %{{.*}}, %{{.*}} : <?x256xf32, k = 8>, tensor<?x64xf32> -> tensor<256x64xf32>
// CHECK: tensor.concat dim(1) {{.*}} -> tensor<?x12xf32>
// CHECK: %[[C:.*]] = sae.make_codes {{.*}} -> <?x256xf32, k = 12>
// CHECK: sae.outer %[[C]], %arg0 {transposed} : <?x256xf32, k = 12>, tensor<?x64xf32> -> tensor<64x256xf32>
// CHECK: sae.outer %{{.*}}, %{{.*}} into %[[D1]] : <?x256xf32, k = 4>, tensor<?x64xf32> -> tensor<256x64xf32>
// CHECK-NOT: sae.add {{.*}} : tensor<64x256xf32>
// CHECK-NOT: sae.add {{.*}} : tensor<256x64xf32>
// CHECK: return
func.func @two_selections(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>) -> (tensor<64x256xf32>, tensor<256x64xf32>) {
  %l = sae.linear %x, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %z1 = sae.topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 4>
  %z2 = sae.topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 8>
  %y1 = sae.decode %z1, %W_dec : !sae.codes<?x256xf32, k = 4>, tensor<256x64xf32> -> tensor<?x64xf32>
  %y2 = sae.decode %z2, %W_dec : !sae.codes<?x256xf32, k = 8>, tensor<256x64xf32> -> tensor<?x64xf32>
  %l1 = sae.mse %y1, %x : tensor<?x64xf32> -> f32
  %l2 = sae.mse %y2, %x : tensor<?x64xf32> -> f32
  %loss = arith.addf %l1, %l2 : f32
  %g:2 = sae.gradient %loss wrt %W_enc, %W_dec : f32, tensor<64x256xf32>, tensor<256x64xf32> -> tensor<64x256xf32>, tensor<256x64xf32>
  return %g#0, %g#1 : tensor<64x256xf32>, tensor<256x64xf32>
}

// -----

// Tests that per-batch codes (BatchTopK's), which cannot be concatenated
// with rows-layout codes, still share one matrix with them: the encoder
// weight's transposed product of the batch codes accumulates into that of
// the rows-layout codes with the same input (`into ... {transposed}`), and
// the decoder's joins the chain, with no dense sum of two matrices.
// CHECK-LABEL: func.func @batch_beside_rows
// CHECK: %[[D1:.*]] = sae.outer %{{.*}}, %{{.*}} : <?x256xf32, k = 8>, tensor<?x64xf32> -> tensor<256x64xf32>
// CHECK: %[[E1:.*]] = sae.outer %{{.*}}, %arg0 {transposed} : <?x256xf32, k = 8>, tensor<?x64xf32> -> tensor<64x256xf32>
// CHECK: sae.outer %{{.*}}, %arg0 into %[[E1]] {transposed} : <?x256xf32, k = 4, batch>, tensor<?x64xf32> -> tensor<64x256xf32>
// CHECK: sae.outer %{{.*}}, %{{.*}} into %[[D1]] : <?x256xf32, k = 4, batch>, tensor<?x64xf32> -> tensor<256x64xf32>
// CHECK-NOT: sae.add {{.*}} : tensor<64x256xf32>
// CHECK-NOT: sae.add {{.*}} : tensor<256x64xf32>
// CHECK: return
func.func @batch_beside_rows(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>) -> (tensor<64x256xf32>, tensor<256x64xf32>) {
  %l = sae.linear %x, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %z1 = sae.batch_topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 4, batch>
  %z2 = sae.topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 8>
  %y1 = sae.decode %z1, %W_dec : !sae.codes<?x256xf32, k = 4, batch>, tensor<256x64xf32> -> tensor<?x64xf32>
  %y2 = sae.decode %z2, %W_dec : !sae.codes<?x256xf32, k = 8>, tensor<256x64xf32> -> tensor<?x64xf32>
  %l1 = sae.mse %y1, %x : tensor<?x64xf32> -> f32
  %l2 = sae.mse %y2, %x : tensor<?x64xf32> -> f32
  %loss = arith.addf %l1, %l2 : f32
  %g:2 = sae.gradient %loss wrt %W_enc, %W_dec : f32, tensor<64x256xf32>, tensor<256x64xf32> -> tensor<64x256xf32>, tensor<256x64xf32>
  return %g#0, %g#1 : tensor<64x256xf32>, tensor<256x64xf32>
}

// -----

// Tests that dense contributions are summed before a rule's dense work:
// ReLU+L1's codes get two dense gradients (the penalty's and the
// reconstruction's); they are added once and masked once by relu. The
// pre-activation gets that and a second penalty's: the encoder weight's
// gradient is one product of their sum with the input, not two plus their
// sum.
// CHECK-LABEL: func.func @dense_penalty
// CHECK: %[[SUM:.*]] = sae.add %{{.*}}, %{{.*}} : tensor<?x256xf32>
// CHECK: %[[MASKED:.*]] = sae.mul %[[SUM]], %{{.*}} : tensor<?x256xf32>
// CHECK: %[[ALL:.*]] = sae.add %{{.*}}, %[[MASKED]] : tensor<?x256xf32>
// CHECK: sae.linear %{{.*}}, %[[ALL]] : tensor<64x?xf32>, tensor<?x256xf32> -> tensor<64x256xf32>
// CHECK-NOT: sae.linear {{.*}} -> tensor<64x256xf32>
// CHECK-NOT: sae.add {{.*}} : tensor<64x256xf32>
// CHECK: return
func.func @dense_penalty(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>) -> tensor<64x256xf32> {
  %l = sae.linear %x, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %z = sae.relu %l : tensor<?x256xf32>
  %y = sae.linear %z, %W_dec : tensor<?x256xf32>, tensor<256x64xf32> -> tensor<?x64xf32>
  %rec = sae.mse %y, %x : tensor<?x64xf32> -> f32
  %pen = sae.l1 %z : tensor<?x256xf32> -> f32
  %pen2 = sae.l1 %l : tensor<?x256xf32> -> f32
  %terms = arith.addf %rec, %pen : f32
  %loss = arith.addf %terms, %pen2 : f32
  %g = sae.gradient %loss wrt %W_enc : f32, tensor<64x256xf32> -> tensor<64x256xf32>
  return %g : tensor<64x256xf32>
}

// -----

// Tests that codes join a dense gradient of a product's output when there
// is one (AuxK's beside ReLU+L1's): the encoder weight's gradient is one
// dense product, with no sparse outer product and no sum of two [64, 256]
// matrices.
// CHECK-LABEL: func.func @codes_into_dense
// CHECK: %[[D:.*]] = sae.densify %{{.*}} : <?x256xf32, k = 4> -> tensor<?x256xf32>
// CHECK: %[[ALL:.*]] = sae.add %{{.*}}, %[[D]] : tensor<?x256xf32>
// CHECK: sae.linear %{{.*}}, %[[ALL]] : tensor<64x?xf32>, tensor<?x256xf32> -> tensor<64x256xf32>
// CHECK-NOT: sae.outer
// CHECK-NOT: sae.add {{.*}} : tensor<64x256xf32>
// CHECK: return
func.func @codes_into_dense(%x: tensor<?x64xf32>, %W_enc: tensor<64x256xf32>, %W_dec: tensor<256x64xf32>) -> tensor<64x256xf32> {
  %l = sae.linear %x, %W_enc : tensor<?x64xf32>, tensor<64x256xf32> -> tensor<?x256xf32>
  %z = sae.relu %l : tensor<?x256xf32>
  %c = sae.topk %l : tensor<?x256xf32> -> !sae.codes<?x256xf32, k = 4>
  %y = sae.linear %z, %W_dec : tensor<?x256xf32>, tensor<256x64xf32> -> tensor<?x64xf32>
  %yc = sae.decode %c, %W_dec : !sae.codes<?x256xf32, k = 4>, tensor<256x64xf32> -> tensor<?x64xf32>
  %l1 = sae.mse %y, %x : tensor<?x64xf32> -> f32
  %l2 = sae.mse %yc, %x : tensor<?x64xf32> -> f32
  %loss = arith.addf %l1, %l2 : f32
  %g = sae.gradient %loss wrt %W_enc : f32, tensor<64x256xf32> -> tensor<64x256xf32>
  return %g : tensor<64x256xf32>
}

// -----

// Tests scalar rules (a weighted sum of terms), stopgrad, and a parameter
// the loss does not depend on: its gradient is zeros.
// CHECK-LABEL: func.func @terms
// CHECK: %[[ONE:.*]] = arith.constant 1.0
// CHECK: arith.mulf %[[ONE]], %{{.*}} : f32
// CHECK: %[[ZERO:.*]] = sae.fill 0.0{{.*}} : tensor<4xf32>
// CHECK: return %{{.*}}, %[[ZERO]]
func.func @terms(%x: tensor<?x4xf32>, %w: tensor<4x4xf32>, %unused: tensor<4xf32>) -> (tensor<4x4xf32>, tensor<4xf32>) {
  %y = sae.linear %x, %w : tensor<?x4xf32>, tensor<4x4xf32> -> tensor<?x4xf32>
  %s = sae.stopgrad %y : tensor<?x4xf32>
  %a = sae.mse %y, %x : tensor<?x4xf32> -> f32
  %b = sae.mse %s, %x : tensor<?x4xf32> -> f32
  %c = arith.constant 0.5 : f32
  %bw = arith.mulf %c, %b : f32
  %t = arith.addf %a, %bw : f32
  %g:2 = sae.gradient %t wrt %w, %unused : f32, tensor<4x4xf32>, tensor<4xf32> -> tensor<4x4xf32>, tensor<4xf32>
  return %g#0, %g#1 : tensor<4x4xf32>, tensor<4xf32>
}
