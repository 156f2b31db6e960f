// RUN: sae-opt --pass-pipeline='builtin.module(func.func(sae-parallelize-linalg))' %s | FileCheck %s
// RUN: sae-opt --pass-pipeline='builtin.module(func.func(sae-parallelize-linalg{min-work=1000000}))' %s | FileCheck %s --check-prefix=LARGE

// Tests that a large elementwise op is split along its first dimension into
// 64 chunks (ceil(256 / 64) = 4 rows each) under scf.parallel, each chunk
// the same op on a subview.
// CHECK-LABEL: func.func @elementwise
// CHECK: %[[C256:.*]] = arith.constant 256 : index
// CHECK: %[[T:.*]] = arith.ceildivui %[[C256]], %{{.*}}
// CHECK: %[[STEP:.*]] = arith.maxui %[[T]], %{{.*}}
// CHECK: scf.parallel (%[[I:.*]]) = (%{{.*}}) to (%{{.*}}) step (%[[STEP]])
// CHECK: memref.subview %{{.*}}[%[[I]], 0] [%{{.*}}, 512] [1, 1] : memref<256x512xf32>
// CHECK: linalg.generic
// CHECK: arith.mulf
// CHECK: scf.reduce
// LARGE-LABEL: func.func @elementwise
// LARGE-NOT: scf.parallel
func.func @elementwise(%a: memref<256x512xf32>, %out: memref<256x512xf32>) {
  linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                  iterator_types = ["parallel", "parallel"]}
      ins(%a : memref<256x512xf32>) outs(%out : memref<256x512xf32>) {
  ^bb0(%x: f32, %o: f32):
    %y = arith.mulf %x, %x : f32
    linalg.yield %y : f32
  }
  return
}

// Tests that a column sum (reduction over rows) is split along its columns,
// the parallel dimension, never along the reduction.
// CHECK-LABEL: func.func @column_sum
// LARGE-LABEL: func.func @column_sum
// CHECK: scf.parallel (%[[J:.*]]) =
// CHECK: memref.subview %{{.*}}[0, %[[J]]] [1024, %{{.*}}] [1, 1] : memref<1024x768xf32>
// CHECK: iterator_types = ["reduction", "parallel"]
func.func @column_sum(%a: memref<1024x768xf32>, %out: memref<768xf32>) {
  linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (j)>],
                  iterator_types = ["reduction", "parallel"]}
      ins(%a : memref<1024x768xf32>) outs(%out : memref<768xf32>) {
  ^bb0(%x: f32, %o: f32):
    %y = arith.addf %x, %o : f32
    linalg.yield %y : f32
  }
  return
}

// Tests what stays as it is: a full reduction (no parallel dimension), a
// small op, and an op already inside a parallel loop.
// CHECK-LABEL: func.func @unchanged
// CHECK-NOT: memref.subview
// CHECK: iterator_types = ["reduction", "reduction"]
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : memref<16x16xf32>)
// CHECK: scf.parallel
// CHECK-NEXT: linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : memref<512x512xf32>)
// CHECK-NOT: scf.parallel
func.func @unchanged(%a: memref<1024x768xf32>, %s: memref<f32>, %small: memref<16x16xf32>,
                     %big: memref<512x512xf32>) {
  linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> ()>],
                  iterator_types = ["reduction", "reduction"]}
      ins(%a : memref<1024x768xf32>) outs(%s : memref<f32>) {
  ^bb0(%x: f32, %o: f32):
    %y = arith.addf %x, %o : f32
    linalg.yield %y : f32
  }
  %zero = arith.constant 0.0 : f32
  linalg.fill ins(%zero : f32) outs(%small : memref<16x16xf32>)
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  scf.parallel (%i) = (%c0) to (%c4) step (%c1) {
    linalg.fill ins(%zero : f32) outs(%big : memref<512x512xf32>)
    scf.reduce
  }
  return
}
