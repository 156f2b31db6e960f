// RUN: sae-opt %s -split-input-file -sae-emit-c-abi | FileCheck %s

// Tests that an entry point with a dynamic batch gets the C signature
// (i64 batch, data pointers, the parameter array, result pointers), builds
// row-major descriptors, reads parameters through the array, inlines the
// tensor body and writes results in place.
module attributes {sae.describe = "{\"abi_version\":1}"} {
  func.func @decode_sparse(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %w: tensor<64x16xf32> {sae.param = "W_dec"}, %b: tensor<16xf32> {sae.param = "b_dec"}) -> tensor<?x16xf32> attributes {sae.entry = "decode_sparse"} {
    %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
    %d = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> tensor<?x16xf32>
    %r = sae.bias_add %d, %b : tensor<?x16xf32>, tensor<16xf32>
    return %r : tensor<?x16xf32>
  }
}
// CHECK-LABEL: func.func @sae_decode_sparse(
// CHECK-SAME:    %[[B:.*]]: i64, %[[VP:.*]]: !llvm.ptr, %[[IP:.*]]: !llvm.ptr, %[[PARAMS:.*]]: !llvm.ptr, %[[OUTP:.*]]: !llvm.ptr) -> i32
// CHECK-NOT:   func.func @decode_sparse
// CHECK:         llvm.insertvalue %[[VP]], %{{.*}}[0]
// CHECK:         llvm.insertvalue %[[B]], %{{.*}}[3, 0]
// CHECK:         %[[VM:.*]] = builtin.unrealized_conversion_cast %{{.*}} : !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)> to memref<?x4xf32>
// CHECK:         %[[VT:.*]] = bufferization.to_tensor %[[VM]] restrict : memref<?x4xf32> to tensor<?x4xf32>
// CHECK:         %[[IM:.*]] = builtin.unrealized_conversion_cast %{{.*}} to memref<?x4xi32>
// CHECK:         %[[SLOT0:.*]] = llvm.getelementptr %[[PARAMS]][0] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr
// CHECK:         llvm.load %[[SLOT0]] : !llvm.ptr -> !llvm.ptr
// CHECK:         to memref<64x16xf32>
// CHECK:         %[[SLOT1:.*]] = llvm.getelementptr %[[PARAMS]][1]
// CHECK:         to memref<16xf32>
// CHECK:         sae.make_codes
// CHECK:         sae.decode
// CHECK:         %[[R:.*]] = sae.bias_add
// CHECK:         %[[OUT:.*]] = builtin.unrealized_conversion_cast %{{.*}} to memref<?x16xf32>
// CHECK:         bufferization.materialize_in_destination %[[R]] in restrict writable %[[OUT]]
// CHECK:         %[[OK:.*]] = arith.constant 0 : i32
// CHECK:         return %[[OK]] : i32
// CHECK-LABEL: llvm.mlir.global internal constant @__sae_model_describe("{\22abi_version\22:1}\00")
// CHECK-LABEL: func.func @sae_model_describe() -> !llvm.ptr
// CHECK:         llvm.mlir.addressof @__sae_model_describe
// CHECK-LABEL: func.func @sae_abi_version() -> i32
// CHECK:         arith.constant 3 : i32

// -----

// Tests that init takes the seed by value and writes parameters through the
// array, and that a scalar result is stored through its pointer.
module attributes {sae.describe = "{}"} {
  func.func @init(%seed: i64) -> (tensor<4xf32> {sae.param = "b"}) attributes {sae.entry = "init"} {
    %0 = sae.fill 0.0 : tensor<4xf32>
    return %0 : tensor<4xf32>
  }
  func.func @loss(%x: tensor<?x4xf32>) -> f32 attributes {sae.entry = "loss"} {
    %0 = sae.mse %x, %x : tensor<?x4xf32> -> f32
    return %0 : f32
  }
}
// CHECK-LABEL: func.func @sae_init(
// CHECK-SAME:    %[[SEED:.*]]: i64, %[[PARAMS:.*]]: !llvm.ptr) -> i32
// CHECK:         %[[SLOT:.*]] = llvm.getelementptr %[[PARAMS]][0]
// CHECK:         %[[F:.*]] = sae.fill
// CHECK:         bufferization.materialize_in_destination %[[F]] in restrict writable
// CHECK-LABEL: func.func @sae_loss(
// CHECK-SAME:    %{{.*}}: i64, %{{.*}}: !llvm.ptr, %[[LOSSP:.*]]: !llvm.ptr) -> i32
// CHECK:         %[[L:.*]] = sae.mse
// CHECK:         llvm.store %[[L]], %[[LOSSP]] : f32, !llvm.ptr


// -----

// Tests the ABI groups: inputs and parameters arrive as arrays of pointers,
// a trailing scalar (the seed) is passed by value after them, and scalar
// results tagged sae.loss are stored into consecutive floats of one array.
module attributes {sae.describe = "{}"} {
  func.func @forward(%x: tensor<?x4xf32> {sae.input = "x"}, %g: tensor<?x4xf32> {sae.input = "g"}, %b: tensor<4xf32> {sae.param = "b"}, %seed: i64) -> (tensor<?x4xf32>, f32 {sae.loss = "total"}, f32 {sae.loss = "recon"}) attributes {sae.entry = "forward"} {
    %y = sae.bias_add %x, %b : tensor<?x4xf32>, tensor<4xf32>
    %l = sae.mse %y, %g : tensor<?x4xf32> -> f32
    return %y, %l, %l : tensor<?x4xf32>, f32, f32
  }
}
// CHECK-LABEL: func.func @sae_forward(
// CHECK-SAME:    %[[B:.*]]: i64, %[[INPUTS:.*]]: !llvm.ptr, %[[PARAMS:.*]]: !llvm.ptr, %[[SEED:.*]]: i64, %[[XHAT:.*]]: !llvm.ptr, %[[LOSSES:.*]]: !llvm.ptr) -> i32
// CHECK:         %[[X0:.*]] = llvm.getelementptr %[[INPUTS]][0] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr
// CHECK:         %[[G0:.*]] = llvm.getelementptr %[[INPUTS]][1] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr
// CHECK:         llvm.getelementptr %[[PARAMS]][0]
// CHECK:         %[[L0:.*]] = llvm.getelementptr %[[LOSSES]][0] : (!llvm.ptr) -> !llvm.ptr, f32
// CHECK:         %[[L1:.*]] = llvm.getelementptr %[[LOSSES]][1] : (!llvm.ptr) -> !llvm.ptr, f32
// CHECK:         %[[L:.*]] = sae.mse
// CHECK:         llvm.store %[[L]], %[[L0]] : f32, !llvm.ptr
// CHECK:         llvm.store %[[L]], %[[L1]] : f32, !llvm.ptr

// -----

// Tests that a tensor tagged sae.batch_scale = k has batch * k rows.
module attributes {sae.describe = "{}"} {
  func.func @decode_batch(%v: tensor<?xf32> {sae.batch_scale = 4 : i64}, %x: tensor<?x2xf32>) -> tensor<?x2xf32> attributes {sae.entry = "decode_batch"} {
    return %x : tensor<?x2xf32>
  }
}
// CHECK-LABEL: func.func @sae_decode_batch(
// CHECK-SAME:    %[[B:.*]]: i64, %[[V:.*]]: !llvm.ptr, %[[X:.*]]: !llvm.ptr, %{{.*}}: !llvm.ptr) -> i32
// CHECK:         %[[K:.*]] = llvm.mlir.constant(4 : i64) : i64
// CHECK:         %[[N:.*]] = llvm.mul %[[B]], %[[K]] : i64
// CHECK:         llvm.insertvalue %[[N]], %{{.*}}[3, 0] : !llvm.struct<(ptr, ptr, i64, array<1 x i64>, array<1 x i64>)>

// -----

// Tests the groups of sae_train_step: a result group that is also an
// argument group (sae.param) is written back through the argument's array
// (in place, no extra C argument): the argument's buffer is writable and the
// result materializes in that same memref (so that bufferization updates it
// without a copy). A group of scalar arguments (sae.hyper) arrives as one
// array of floats, read element by element.
// CHECK-LABEL: func.func @sae_step
// CHECK-SAME: (%[[P:.*]]: !llvm.ptr, %[[H:.*]]: !llvm.ptr, %[[L:.*]]: !llvm.ptr) -> i32
// CHECK: %[[PP:.*]] = llvm.getelementptr %[[P]][0] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr
// CHECK: %[[PIN:.*]] = llvm.load %[[PP]] : !llvm.ptr -> !llvm.ptr
// CHECK: %[[PM:.*]] = builtin.unrealized_conversion_cast %{{.*}} to memref<4xf32>
// CHECK: %[[PT:.*]] = bufferization.to_tensor %[[PM]] restrict writable
// CHECK: %[[H0:.*]] = llvm.getelementptr %[[H]][0] : (!llvm.ptr) -> !llvm.ptr, f32
// CHECK: %[[LR:.*]] = llvm.load %[[H0]] : !llvm.ptr -> f32
// CHECK: %[[H1:.*]] = llvm.getelementptr %[[H]][1] : (!llvm.ptr) -> !llvm.ptr, f32
// CHECK: llvm.load %[[H1]] : !llvm.ptr -> f32
// CHECK-NOT: llvm.load
// CHECK: %[[S:.*]] = sae.scale %[[PT]], %[[LR]]
// CHECK: bufferization.materialize_in_destination %[[S]] in writable %[[PM]]
// CHECK: llvm.store %{{.*}}, %{{.*}} : f32, !llvm.ptr
module attributes {sae.describe = "{}"} {
  func.func @step(%p: tensor<4xf32> {sae.param = "w"}, %lr: f32 {sae.hyper = 0 : i64}, %b1: f32 {sae.hyper = 1 : i64}) -> (tensor<4xf32> {sae.param = "w"}, f32 {sae.loss = "total"}) attributes {sae.entry = "step"} {
    %s = sae.scale %p, %lr : tensor<4xf32>, f32
    %t = arith.addf %lr, %b1 : f32
    return %s, %t : tensor<4xf32>, f32
  }
}
