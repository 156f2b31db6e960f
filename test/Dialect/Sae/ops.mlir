// RUN: sae-opt %s | sae-opt | FileCheck %s
// RUN: sae-opt %s --mlir-print-op-generic | sae-opt | FileCheck %s
// Tests that every sae op and the codes type round-trip through the printer
// and parser, in both the custom and the generic form.

// CHECK-LABEL: func.func @encoder
func.func @encoder(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>, %bd: tensor<16xf32>) -> !sae.codes<?x64xf32, k = 4> {
  // CHECK: %[[C:.*]] = sae.bias_sub %{{.*}}, %{{.*}} : tensor<?x16xf32>, tensor<16xf32>
  %c = sae.bias_sub %x, %bd : tensor<?x16xf32>, tensor<16xf32>
  // CHECK: %[[P:.*]] = sae.linear %[[C]], %{{.*}} : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  %p = sae.linear %c, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  // CHECK: %[[PB:.*]] = sae.bias_add %[[P]], %{{.*}} : tensor<?x64xf32>, tensor<64xf32>
  %pb = sae.bias_add %p, %b : tensor<?x64xf32>, tensor<64xf32>
  // CHECK: %[[R:.*]] = sae.relu %[[PB]] : tensor<?x64xf32>
  %r = sae.relu %pb : tensor<?x64xf32>
  // CHECK: %[[Z:.*]] = sae.topk %[[R]] : tensor<?x64xf32> -> <?x64xf32, k = 4>
  %z = sae.topk %r : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  return %z : !sae.codes<?x64xf32, k = 4>
}

// CHECK-LABEL: func.func @codes
// CHECK-SAME: !sae.codes<8x64xf32, k = 2>
func.func @codes(%v: tensor<8x2xf32>, %i: tensor<8x2xi32>, %w: tensor<64x16xf32>) -> (tensor<8x16xf32>, tensor<8x64xf32>, tensor<8x2xf32>, tensor<8x2xi32>, !sae.codes<8x64xf32, k = 2>) {
  // CHECK: sae.make_codes %{{.*}}, %{{.*}} : tensor<8x2xf32>, tensor<8x2xi32> -> <8x64xf32, k = 2>
  %z = sae.make_codes %v, %i : tensor<8x2xf32>, tensor<8x2xi32> -> !sae.codes<8x64xf32, k = 2>
  // CHECK: sae.decode %{{.*}}, %{{.*}} : <8x64xf32, k = 2>, tensor<64x16xf32> -> tensor<8x16xf32>
  %d = sae.decode %z, %w : !sae.codes<8x64xf32, k = 2>, tensor<64x16xf32> -> tensor<8x16xf32>
  // CHECK: sae.densify %{{.*}} : <8x64xf32, k = 2> -> tensor<8x64xf32>
  %dense = sae.densify %z : !sae.codes<8x64xf32, k = 2> -> tensor<8x64xf32>
  // CHECK: sae.codes_values %{{.*}} : <8x64xf32, k = 2> -> tensor<8x2xf32>
  %vv = sae.codes_values %z : !sae.codes<8x64xf32, k = 2> -> tensor<8x2xf32>
  // CHECK: sae.codes_indices %{{.*}} : <8x64xf32, k = 2> -> tensor<8x2xi32>
  %ii = sae.codes_indices %z : !sae.codes<8x64xf32, k = 2> -> tensor<8x2xi32>
  return %d, %dense, %vv, %ii, %z : tensor<8x16xf32>, tensor<8x64xf32>, tensor<8x2xf32>, tensor<8x2xi32>, !sae.codes<8x64xf32, k = 2>
}

// CHECK-LABEL: func.func @elementwise_and_losses
func.func @elementwise_and_losses(%a: tensor<?x16xf32>, %b: tensor<?x16xf32>, %s: f32) -> (f32, f32, tensor<?x16xf32>) {
  // CHECK: sae.add %{{.*}}, %{{.*}} : tensor<?x16xf32>
  %0 = sae.add %a, %b : tensor<?x16xf32>
  // CHECK: sae.sub
  %1 = sae.sub %0, %b : tensor<?x16xf32>
  // CHECK: sae.mul
  %2 = sae.mul %1, %b : tensor<?x16xf32>
  // CHECK: sae.div
  %3 = sae.div %2, %b : tensor<?x16xf32>
  // CHECK: sae.scale %{{.*}}, %{{.*}} : tensor<?x16xf32>, f32
  %4 = sae.scale %3, %s : tensor<?x16xf32>, f32
  // CHECK: sae.mse %{{.*}}, %{{.*}} : tensor<?x16xf32> -> f32
  %m = sae.mse %4, %a : tensor<?x16xf32> -> f32
  // CHECK: sae.fvu %{{.*}}, %{{.*}} : tensor<?x16xf32> -> f32
  %f = sae.fvu %4, %a : tensor<?x16xf32> -> f32
  return %m, %f, %4 : f32, f32, tensor<?x16xf32>
}

// CHECK-LABEL: func.func @initialisers
func.func @initialisers(%seed: i64) -> (tensor<16x64xf32>, tensor<64x16xf32>, tensor<64xf32>) {
  // CHECK: sae.random_uniform %{{.*}} {high = 1.000000e-01 : f64, low = -1.000000e-01 : f64, stream = 3 : i64} : tensor<16x64xf32>
  %w = sae.random_uniform %seed {low = -0.1 : f64, high = 0.1 : f64, stream = 3 : i64} : tensor<16x64xf32>
  // CHECK: sae.transpose %{{.*}} : tensor<16x64xf32> -> tensor<64x16xf32>
  %t = sae.transpose %w : tensor<16x64xf32> -> tensor<64x16xf32>
  // CHECK: sae.normalize_rows %{{.*}} : tensor<64x16xf32>
  %n = sae.normalize_rows %t : tensor<64x16xf32>
  // CHECK: sae.fill 2.500000e-01 : tensor<64xf32>
  %f = sae.fill 0.25 : tensor<64xf32>
  return %w, %n, %f : tensor<16x64xf32>, tensor<64x16xf32>, tensor<64xf32>
}

// CHECK-LABEL: func.func @catalog_ops
func.func @catalog_ops(%x: tensor<?x64xf32>, %t: tensor<64xf32>, %w: tensor<64x16xf32>, %z: !sae.codes<?x64xf32, k = 4>, %m: tensor<16x64xf32>) -> (f32, f32, f32, f32, f32, tensor<16x64xf32>) {
  // CHECK: sae.abs %{{.*}} : tensor<?x64xf32>
  %a = sae.abs %x : tensor<?x64xf32>
  // CHECK: sae.exp
  %e = sae.exp %a : tensor<?x64xf32>
  // CHECK: sae.tanh
  %th = sae.tanh %e : tensor<?x64xf32>
  // CHECK: sae.step
  %s = sae.step %th : tensor<?x64xf32>
  // CHECK: sae.stopgrad
  %sg = sae.stopgrad %s : tensor<?x64xf32>
  // CHECK: sae.jump_relu %{{.*}}, %{{.*}} : tensor<?x64xf32>, tensor<64xf32>
  %j = sae.jump_relu %sg, %t : tensor<?x64xf32>, tensor<64xf32>
  // CHECK: sae.bias_mul %{{.*}}, %{{.*}} : tensor<16x64xf32>, tensor<64xf32>
  %bm = sae.bias_mul %m, %t : tensor<16x64xf32>, tensor<64xf32>
  // CHECK: sae.l1 %{{.*}}, %{{.*}} : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> f32
  %l1 = sae.l1 %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> f32
  // CHECK: sae.l1 %{{.*}} : tensor<?x64xf32> -> f32
  %l1d = sae.l1 %j : tensor<?x64xf32> -> f32
  // CHECK: sae.tanh_penalty %{{.*}}, %{{.*}} {scale = 4.000000e+00 : f64} : tensor<?x64xf32>, tensor<64x16xf32> -> f32
  %tp = sae.tanh_penalty %j, %w {scale = 4.0 : f64} : tensor<?x64xf32>, tensor<64x16xf32> -> f32
  // CHECK: sae.l0 %{{.*}}, %{{.*}} : tensor<?x64xf32>, tensor<64xf32> -> f32
  %l0 = sae.l0 %x, %t : tensor<?x64xf32>, tensor<64xf32> -> f32
  // CHECK: sae.kl_std_normal %{{.*}} : tensor<?x64xf32> -> f32
  %kl = sae.kl_std_normal %x : tensor<?x64xf32> -> f32
  return %l1, %l1d, %tp, %l0, %kl, %bm : f32, f32, f32, f32, f32, tensor<16x64xf32>
}

// CHECK-LABEL: func.func @selections
func.func @selections(%x: tensor<?x64xf32>, %r: tensor<?x16xf32>, %w: tensor<64x16xf32>, %s: i64) -> (!sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4, batch>, tensor<?x64xf32>, tensor<?x64xf32>, !sae.codes<?x64xf32, k = 4>) {
  // CHECK: sae.topk %{{.*}} {by_magnitude} : tensor<?x64xf32> -> <?x64xf32, k = 4>
  %a = sae.topk %x {by_magnitude} : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  // CHECK: sae.topk %{{.*}} score %{{.*}} : tensor<?x64xf32>, tensor<?x64xf32> -> <?x64xf32, k = 4>
  %g = sae.topk %x score %x : tensor<?x64xf32>, tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  // CHECK: sae.group_max %{{.*}} : tensor<?x64xf32> -> <?x64xf32, k = 4>
  %m = sae.group_max %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  // CHECK: sae.batch_topk %{{.*}} : tensor<?x64xf32> -> <?x64xf32, k = 4, batch>
  %b = sae.batch_topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4, batch>
  // CHECK: sae.top_afa %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x64xf32>, tensor<64x16xf32>, tensor<?x16xf32> -> tensor<?x64xf32>
  %t = sae.top_afa %x, %w, %r : tensor<?x64xf32>, tensor<64x16xf32>, tensor<?x16xf32> -> tensor<?x64xf32>
  // CHECK: sae.gaussian_noise %{{.*}}, %{{.*}} {stream = 0 : i64} : tensor<?x64xf32>
  %n = sae.gaussian_noise %x, %s {stream = 0 : i64} : tensor<?x64xf32>
  // CHECK: sae.matching_pursuit %{{.*}}, %{{.*}} {nonneg} : tensor<?x16xf32>, tensor<64x16xf32> -> <?x64xf32, k = 4>
  %p = sae.matching_pursuit %r, %w {nonneg} : tensor<?x16xf32>, tensor<64x16xf32> -> !sae.codes<?x64xf32, k = 4>
  return %a, %g, %m, %b, %t, %n, %p : !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4>, !sae.codes<?x64xf32, k = 4, batch>, tensor<?x64xf32>, tensor<?x64xf32>, !sae.codes<?x64xf32, k = 4>
}

// CHECK-LABEL: func.func @batch_codes
func.func @batch_codes(%v: tensor<?xf32>, %i: tensor<?xi32>, %r: tensor<?xi32>) -> tensor<?xi32> {
  // CHECK: sae.make_codes %{{.*}}, %{{.*}}, %{{.*}} : tensor<?xf32>, tensor<?xi32>, tensor<?xi32> -> <?x64xf32, k = 4, batch>
  %z = sae.make_codes %v, %i, %r : tensor<?xf32>, tensor<?xi32>, tensor<?xi32> -> !sae.codes<?x64xf32, k = 4, batch>
  // CHECK: sae.codes_rows %{{.*}} : <?x64xf32, k = 4, batch> -> tensor<?xi32>
  %rows = sae.codes_rows %z : !sae.codes<?x64xf32, k = 4, batch> -> tensor<?xi32>
  return %rows : tensor<?xi32>
}

// CHECK-LABEL: func.func @data_initialisers
func.func @data_initialisers(%x: tensor<?x16xf32>, %s: i64) -> (tensor<16xf32>, tensor<16xf32>, tensor<4x16xf32>) {
  // CHECK: sae.column_mean %{{.*}} : tensor<?x16xf32> -> tensor<16xf32>
  %m = sae.column_mean %x : tensor<?x16xf32> -> tensor<16xf32>
  // CHECK: sae.geometric_median %{{.*}} {iterations = 10 : i64} : tensor<?x16xf32> -> tensor<16xf32>
  %g = sae.geometric_median %x {iterations = 10 : i64} : tensor<?x16xf32> -> tensor<16xf32>
  // CHECK: sae.random_normal %{{.*}} {mean = 0.000000e+00 : f64, std = 2.000000e-02 : f64, stream = 1 : i64} : tensor<4x16xf32>
  %n = sae.random_normal %s {mean = 0.0 : f64, std = 0.02 : f64, stream = 1 : i64} : tensor<4x16xf32>
  return %m, %g, %n : tensor<16xf32>, tensor<16xf32>, tensor<4x16xf32>
}

// CHECK-LABEL: func.func @products
func.func @products(%z: !sae.codes<?x64xf32, k = 4>, %a: !sae.codes<?x64xf32, k = 8>, %x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %v: tensor<64xf32>) -> (tensor<64x16xf32>, tensor<16xf32>) {
  // CHECK: %[[O:.*]] = sae.outer %{{.*}}, %{{.*}} : <?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<64x16xf32>
  %o = sae.outer %z, %x : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<64x16xf32>
  // CHECK: sae.outer %{{.*}}, %{{.*}} into %[[O]] : <?x64xf32, k = 8>, tensor<?x16xf32> -> tensor<64x16xf32>
  %o2 = sae.outer %a, %x into %o : !sae.codes<?x64xf32, k = 8>, tensor<?x16xf32> -> tensor<64x16xf32>
  // CHECK: sae.outer %{{.*}}, %{{.*}} into %{{.*}} {transposed} : <?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<16x64xf32>
  %o3 = sae.outer %z, %x into %w {transposed} : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<16x64xf32>
  // CHECK: sae.matvec %{{.*}}, %{{.*}} : tensor<16x64xf32>, tensor<64xf32> -> tensor<16xf32>
  %m = sae.matvec %w, %v : tensor<16x64xf32>, tensor<64xf32> -> tensor<16xf32>
  return %o2, %m : tensor<64x16xf32>, tensor<16xf32>
}

// CHECK-LABEL: func.func @take_columns
func.func @take_columns(%x: tensor<?x64xf32>, %slot: tensor<64xi32>, %width: index) -> tensor<?x?xf32> {
  // CHECK: sae.take_columns %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x64xf32>, tensor<64xi32> -> tensor<?x?xf32>
  %t = sae.take_columns %x, %slot, %width : tensor<?x64xf32>, tensor<64xi32> -> tensor<?x?xf32>
  return %t : tensor<?x?xf32>
}

// CHECK-LABEL: func.func @place_rows
func.func @place_rows(%rows: tensor<?x16xf32>, %slot: tensor<64xi32>) -> tensor<64x16xf32> {
  // CHECK: sae.place_rows %{{.*}}, %{{.*}} : tensor<?x16xf32>, tensor<64xi32> -> tensor<64x16xf32>
  %p = sae.place_rows %rows, %slot : tensor<?x16xf32>, tensor<64xi32> -> tensor<64x16xf32>
  return %p : tensor<64x16xf32>
}
