// RUN: sae-opt %s -convert-sae-to-linalg=vector-lanes=16 | FileCheck %s

// Tests that AuxK's products with the dead latents' codes (decode, sddmm
// and outer) get register-blocked dense products over the dead latents
// when the width is a multiple of two vectors: the codes as a dense
// [B, n_dead] matrix (rounded up to panels of 64) and its transpose, the
// decoder's dead rows [n_dead, 64] and their transpose, then three packed
// panel products: the decode (K = n_dead), the sddmm (N = n_dead, so a
// dynamic number of panels) and the outer (M = n_dead, K = B), whose rows
// are added into the dead latents' rows of a zeroed [n, d] gradient.
// Each is used while n_dead <= 8 k (here 64); with more dead latents the
// sparse product (the op itself, lowered in the else branch) is cheaper.
// CHECK-LABEL: func.func @aux_dense
// CHECK: memref.alloc(%{{.*}}) : memref<?x8xi32>
// CHECK: scf.parallel
// CHECK: memref.alloc(%{{.*}}) : memref<?xi32>
// CHECK: %[[DENSE:.*]] = arith.cmpi ule, %{{.*}}, %c64 : index
// CHECK: %[[ZA:.*]] = memref.alloc(%[[B:.*]], %[[PAD:.*]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[ZA]] : memref<?x?xf32>)
// CHECK: %[[ZAT:.*]] = memref.alloc(%[[PAD]], %[[B]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: %[[WD:.*]] = memref.alloc(%[[PAD]]) : memref<?x64xf32>
// CHECK: %[[WDT:.*]] = memref.alloc(%c64, %[[PAD]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: scf.if %[[DENSE]] -> (tensor<?x64xf32>) {
// CHECK: memref.alloc(%[[PAD]]) : memref<1x?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: scf.if %[[DENSE]] -> (tensor<?x8xf32>) {
// CHECK: memref.alloc(%{{.*}}, %c64) : memref<?x?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: scf.if %[[DENSE]] -> (tensor<128x64xf32>) {
// CHECK: memref.alloc(%{{.*}}) : memref<1x?x64xf32>
// CHECK: vector.fma
// CHECK: %[[GRAD:.*]] = memref.alloc() : memref<128x64xf32>
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[GRAD]] : memref<128x64xf32>)
// CHECK: } else {
// CHECK: return
func.func @aux_dense(%pre: tensor<?x128xf32>, %mask: tensor<128xf32>, %w: tensor<128x64xf32>, %g: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?x8xf32>, tensor<128x64xf32>) {
  %c = sae.dead_topk %pre, %mask : tensor<?x128xf32>, tensor<128xf32> -> !sae.codes<?x128xf32, k = 8>
  %r = sae.decode %c, %w : !sae.codes<?x128xf32, k = 8>, tensor<128x64xf32> -> tensor<?x64xf32>
  %s = sae.sddmm %c, %g, %w : !sae.codes<?x128xf32, k = 8>, tensor<?x64xf32>, tensor<128x64xf32>
  %v = sae.codes_values %s : !sae.codes<?x128xf32, k = 8> -> tensor<?x8xf32>
  %o = sae.outer %c, %g : !sae.codes<?x128xf32, k = 8>, tensor<?x64xf32> -> tensor<128x64xf32>
  return %r, %v, %o : tensor<?x64xf32>, tensor<?x8xf32>, tensor<128x64xf32>
}

// Tests that a width that is not a multiple of two vectors keeps the
// sparse products (no dense codes, no kernel).
// CHECK-LABEL: func.func @aux_sparse
// CHECK-NOT: memref<?x?xf32>
// CHECK-NOT: vector.fma
// CHECK: return
func.func @aux_sparse(%pre: tensor<?x128xf32>, %mask: tensor<128xf32>, %w: tensor<128x24xf32>, %g: tensor<?x24xf32>) -> (tensor<?x24xf32>, tensor<128x24xf32>) {
  %c = sae.dead_topk %pre, %mask : tensor<?x128xf32>, tensor<128xf32> -> !sae.codes<?x128xf32, k = 8>
  %r = sae.decode %c, %w : !sae.codes<?x128xf32, k = 8>, tensor<128x24xf32> -> tensor<?x24xf32>
  %o = sae.outer %c, %g : !sae.codes<?x128xf32, k = 8>, tensor<?x24xf32> -> tensor<128x24xf32>
  return %r, %o : tensor<?x24xf32>, tensor<128x24xf32>
}
