// RUN: sae-opt %s -convert-sae-to-linalg=vector-lanes=16 | FileCheck %s

// Tests that with 16 lanes (AVX-512: 32 vector registers) a product whose
// width is a multiple of four vectors gets the 6 × 4 kernel: panels of 64
// columns packed one after the other (2 panels of K = 32 rows, and 8 rows
// more), 24 accumulators, one broadcast per four FMAs, the panel's row 8
// ahead prefetched (no clamp: the 8 rows more are there for the last
// panel), and one cache line of the next panel per step, from the flat
// view of the packed buffer; the rows left over get blocks of 1 to 5 rows
// of four vectors. The packing writes whole aligned lines with
// non-temporal stores.
// CHECK-LABEL: func.func @linear_wide
// CHECK: %[[PACKED:.*]] = memref.alloc(%c72) {alignment = 64 : i64} : memref<?x64xf32>
// CHECK: %[[FLAT:.*]] = memref.collapse_shape %[[PACKED]] {{\[\[}}0, 1]] : memref<?x64xf32> into memref<?xf32>
// CHECK-COUNT-4: vector.store %{{.*}}, %[[PACKED]][%{{.*}}, %{{.*}}] {alignment = 64 : i64, nontemporal = true} : memref<?x64xf32>, vector<16xf32>
// CHECK: scf.for %{{.*}} = %{{.*}} to %{{.*}} step %c64
// CHECK: arith.minui
// CHECK: scf.for %[[K:[^ ]*]] = {{.*}} -> (vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>)
// CHECK: %[[ROW:.*]] = arith.addi %{{.*}}, %[[K]] : index
// CHECK-COUNT-4: vector.load %[[PACKED]][%[[ROW]], %{{.*}}] : memref<?x64xf32>, vector<16xf32>
// CHECK: %[[AHEAD:.*]] = arith.addi %[[ROW]], %c8 : index
// CHECK-COUNT-4: memref.prefetch %[[PACKED]][%[[AHEAD]], %{{.*}}], read, locality<3>, data
// CHECK: %[[STEP:.*]] = arith.muli %[[K]], %c16 : index
// CHECK: %[[LINE:.*]] = arith.addi %{{.*}}, %[[STEP]] : index
// CHECK: memref.prefetch %[[FLAT]][%[[LINE]]], read, locality<2>, data
// CHECK: vector.broadcast
// CHECK-COUNT-4: vector.fma
// CHECK: vector.broadcast
// CHECK: scf.if
// CHECK: scf.for {{.*}} -> (vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>)
func.func @linear_wide(%x: tensor<?x32xf32>, %w: tensor<32x128xf32>) -> tensor<?x128xf32> {
  %0 = sae.linear %x, %w : tensor<?x32xf32>, tensor<32x128xf32> -> tensor<?x128xf32>
  return %0 : tensor<?x128xf32>
}

// Tests that a width of two vectors but not four keeps the 6 × 2 kernel.
// CHECK-LABEL: func.func @linear_narrow
// CHECK: memref.alloc(%c104) {alignment = 64 : i64} : memref<?x32xf32>
// CHECK: scf.for {{.*}} -> (vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>)
// CHECK-NOT: vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>, vector<16xf32>
func.func @linear_narrow(%x: tensor<?x32xf32>, %w: tensor<32x96xf32>) -> tensor<?x96xf32> {
  %0 = sae.linear %x, %w : tensor<?x32xf32>, tensor<32x96xf32> -> tensor<?x96xf32>
  return %0 : tensor<?x96xf32>
}

// Tests that the bias add and relu of an encoder (each the only use of the
// op before it) are the kernel's epilogue: added to the registers as they
// are stored, with no separate pass over the [B, n] product.
// CHECK-LABEL: func.func @linear_bias_relu
// CHECK-SAME: (%{{.*}}: tensor<?x32xf32>, %{{.*}}: tensor<32x128xf32>, %[[B:.*]]: tensor<128xf32>)
// CHECK: %[[BIAS:.*]] = bufferization.to_buffer %[[B]]
// CHECK: scf.for {{.*}} -> (vector<16xf32>
// CHECK: %[[BV:.*]] = vector.load %[[BIAS]]
// CHECK: %[[SUM:.*]] = arith.addf %{{.*}}, %[[BV]] : vector<16xf32>
// CHECK: %[[POS:.*]] = arith.maximumf %[[SUM]], %{{.*}} : vector<16xf32>
// CHECK: vector.store %[[POS]]
// CHECK-NOT: linalg.generic
// CHECK-NOT: sae.
// CHECK: return
func.func @linear_bias_relu(%x: tensor<?x32xf32>, %w: tensor<32x128xf32>, %b: tensor<128xf32>) -> tensor<?x128xf32> {
  %0 = sae.linear %x, %w : tensor<?x32xf32>, tensor<32x128xf32> -> tensor<?x128xf32>
  %1 = sae.bias_add %0, %b : tensor<?x128xf32>, tensor<128xf32>
  %2 = sae.relu %1 : tensor<?x128xf32>
  return %2 : tensor<?x128xf32>
}

// Tests that a product with a second use keeps its own pass for the bias.
// CHECK-LABEL: func.func @linear_two_uses
// CHECK: scf.for {{.*}} -> (vector<16xf32>
// CHECK-NOT: arith.addf %{{.*}} : vector<16xf32>
// CHECK: vector.store
// CHECK: linalg.generic
// CHECK: arith.addf
func.func @linear_two_uses(%x: tensor<?x32xf32>, %w: tensor<32x128xf32>, %b: tensor<128xf32>) -> (tensor<?x128xf32>, tensor<?x128xf32>) {
  %0 = sae.linear %x, %w : tensor<?x32xf32>, tensor<32x128xf32> -> tensor<?x128xf32>
  %1 = sae.bias_add %0, %b : tensor<?x128xf32>, tensor<128xf32>
  return %0, %1 : tensor<?x128xf32>, tensor<?x128xf32>
}
