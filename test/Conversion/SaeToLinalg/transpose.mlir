// RUN: sae-opt %s -convert-sae-to-linalg | FileCheck %s

// Tests that an f32 transpose goes by 32 × 32 tiles, bands of rows in
// parallel; a whole tile by sixteen 8 × 8 blocks, each eight row loads,
// three rounds of eight shuffles and eight row stores; a partial tile
// element by element. (Integration tests check the values: check-init
// compares W_dec = transpose(W_enc), with whole and partial tiles, with
// NumPy.)
// CHECK-LABEL: func.func @transpose
// CHECK: scf.parallel
// CHECK: scf.if
// CHECK-COUNT-8: vector.load {{.*}} : memref<?x64xf32>, vector<8xf32>
// CHECK-COUNT-4: vector.shuffle {{.*}} [0, 8, 1, 9, 4, 12, 5, 13]
// CHECK-COUNT-4: vector.shuffle {{.*}} [0, 1, 8, 9, 4, 5, 12, 13]
// CHECK-COUNT-4: vector.shuffle {{.*}} [0, 1, 2, 3, 8, 9, 10, 11]
// CHECK-COUNT-8: vector.store {{.*}} : memref<64x?xf32>, vector<8xf32>
// CHECK: } else {
// CHECK: memref.load {{.*}} : memref<?x64xf32>
// CHECK: memref.store {{.*}} : memref<64x?xf32>
func.func @transpose(%x: tensor<?x64xf32>) -> tensor<64x?xf32> {
  %0 = sae.transpose %x : tensor<?x64xf32> -> tensor<64x?xf32>
  return %0 : tensor<64x?xf32>
}
