// RUN: sae-opt %s -split-input-file -verify-diagnostics

// Tests that the encoder product checks its inner dimensions.
func.func @linear_inner(%x: tensor<?x16xf32>, %w: tensor<15x64xf32>) {
  // expected-error@+1 {{'sae.linear' op inner dimensions do not match: input has 16 columns, weight has 15 rows}}
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<15x64xf32> -> tensor<?x64xf32>
  return
}

// -----

// Tests that the encoder product's result width is the weight's.
func.func @linear_width(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>) {
  // expected-error@+1 {{'sae.linear' op result width mismatch: 64 vs 32}}
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x32xf32>
  return
}

// -----

// Tests that the batch size is preserved.
func.func @linear_batch(%x: tensor<8x16xf32>, %w: tensor<16x64xf32>) {
  // expected-error@+1 {{'sae.linear' op batch size mismatch: 8 vs ?}}
  %0 = sae.linear %x, %w : tensor<8x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  return
}

// -----

// Tests that a bias has the width of the rows.
func.func @bias(%x: tensor<?x64xf32>, %b: tensor<63xf32>) {
  // expected-error@+1 {{'sae.bias_add' op bias of size 63 does not match rows of width 64}}
  %0 = sae.bias_add %x, %b : tensor<?x64xf32>, tensor<63xf32>
  return
}

// -----

// Tests that element types must agree.
func.func @element_types(%x: tensor<?x16xf32>, %w: tensor<16x64xf16>) {
  // expected-error@+1 {{'sae.linear' op element type mismatch: 'f32' vs 'f16'}}
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf16> -> tensor<?x64xf32>
  return
}

// -----

// Tests that k cannot exceed the number of latents.
// expected-error@+1 {{k must lie in [1, 64], got 65}}
func.func @codes_k(%z: !sae.codes<?x64xf32, k = 65>) {
  return
}

// -----

// Tests that k must be positive.
// expected-error@+1 {{k must lie in [1, 64], got 0}}
func.func @codes_k_zero(%z: !sae.codes<?x64xf32, k = 0>) {
  return
}

// -----

// Tests that codes hold floats.
// expected-error@+1 {{sparse codes need a float element type, got 'i32'}}
func.func @codes_int(%z: !sae.codes<?x64xi32, k = 2>) {
  return
}

// -----

// Tests that topk selects among as many latents as its codes have.
func.func @topk_latents(%x: tensor<?x64xf32>) {
  // expected-error@+1 {{'sae.topk' op input has 64 latents but the codes have 32}}
  %0 = sae.topk %x : tensor<?x64xf32> -> !sae.codes<?x32xf32, k = 4>
  return
}

// -----

// Tests that the decoder has one row per latent.
func.func @decode_rows(%z: !sae.codes<?x64xf32, k = 4>, %w: tensor<32x16xf32>) {
  // expected-error@+1 {{'sae.decode' op decoder has 32 rows but the codes have 64 latents}}
  %0 = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<32x16xf32> -> tensor<?x16xf32>
  return
}

// -----

// Tests that the values of codes are [B, k].
func.func @make_codes(%v: tensor<?x3xf32>, %i: tensor<?x4xi32>) {
  // expected-error@+1 {{'sae.make_codes' op values must be 'tensor<?x4xf32>'}}
  %0 = sae.make_codes %v, %i : tensor<?x3xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  return
}

// -----

// Tests that densify produces [B, n].
func.func @densify(%z: !sae.codes<?x64xf32, k = 4>) {
  // expected-error@+1 {{'sae.densify' op result must be 'tensor<?x64xf32>'}}
  %0 = sae.densify %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x32xf32>
  return
}

// -----

// Tests that the indices of codes are i32.
func.func @indices(%z: !sae.codes<?x64xf32, k = 4>) {
  // expected-error@+1 {{'sae.codes_indices' op result must be 'tensor<?x4xi32>'}}
  %0 = sae.codes_indices %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x3xi32>
  return
}

// -----

// Tests that a loss has the element type of its operands.
func.func @loss_type(%a: tensor<?x16xf32>) {
  // expected-error@+1 {{'sae.mse' op element type mismatch: 'f32' vs 'f16'}}
  %0 = sae.mse %a, %a : tensor<?x16xf32> -> f16
  return
}

// -----

// Tests that a random initialiser needs low < high.
func.func @uniform(%s: i64) {
  // expected-error@+1 {{'sae.random_uniform' op low (1) must be less than high (0)}}
  %0 = sae.random_uniform %s {low = 1.0 : f64, high = 0.0 : f64, stream = 0 : i64} : tensor<4xf32>
  return
}

// -----

// Tests that parameters have static shapes.
func.func @fill() {
  // expected-error@+1 {{'sae.fill' op result must have a static shape, got 'tensor<?xf32>'}}
  %0 = sae.fill 0.0 : tensor<?xf32>
  return
}

// -----

// Tests that transpose swaps the dimensions.
func.func @transpose(%w: tensor<4x8xf32>) {
  // expected-error@+1 {{'sae.transpose' op result shape must be the transposed input shape}}
  %0 = sae.transpose %w : tensor<4x8xf32> -> tensor<4x8xf32>
  return
}

// -----

// Tests that the scale has the tensor's element type.
func.func @scale(%t: tensor<4xf32>, %s: f16) {
  // expected-error@+1 {{'sae.scale' op element type mismatch: 'f32' vs 'f16'}}
  %0 = sae.scale %t, %s : tensor<4xf32>, f16
  return
}

// -----

// Tests that a JumpReLU threshold has one entry per latent.
func.func @jump_relu(%x: tensor<?x64xf32>, %t: tensor<32xf32>) {
  // expected-error@+1 {{'sae.jump_relu' op bias of size 32 does not match rows of width 64}}
  %0 = sae.jump_relu %x, %t : tensor<?x64xf32>, tensor<32xf32>
  return
}

// -----

// Tests that a penalty's decoder has one row per latent.
func.func @l1_decoder(%z: !sae.codes<?x64xf32, k = 4>, %w: tensor<32x16xf32>) {
  // expected-error@+1 {{'sae.l1' op decoder has 32 rows but the codes have 64 latents}}
  %0 = sae.l1 %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<32x16xf32> -> f32
  return
}

// -----

// Tests that group_max needs groups of equal size.
func.func @group_max(%x: tensor<?x64xf32>) {
  // expected-error@+1 {{'sae.group_max' op k = 5 does not divide the 64 latents into equal groups}}
  %0 = sae.group_max %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 5>
  return
}

// -----

// Tests that batch-level selection produces batch-layout codes.
func.func @batch_topk(%x: tensor<?x64xf32>) {
  // expected-error@+1 {{'sae.batch_topk' op batch-level selection produces codes in the batch layout}}
  %0 = sae.batch_topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  return
}

// -----

// Tests that batch-layout codes carry rows and per-row codes do not.
func.func @make_batch_codes(%v: tensor<?xf32>, %i: tensor<?xi32>) {
  // expected-error@+1 {{'sae.make_codes' op batch-layout codes need rows}}
  %0 = sae.make_codes %v, %i : tensor<?xf32>, tensor<?xi32> -> !sae.codes<?x64xf32, k = 4, batch>
  return
}

// -----

// Tests that per-row codes have no rows.
func.func @rows_of_row_codes(%z: !sae.codes<?x64xf32, k = 4>) {
  // expected-error@+1 {{'sae.codes_rows' op codes in the per-row layout have no rows}}
  %0 = sae.codes_rows %z : !sae.codes<?x64xf32, k = 4> -> tensor<?xi32>
  return
}

// -----

// Tests that matching pursuit's atoms have the residual's width.
func.func @mp_width(%r: tensor<?x8xf32>, %w: tensor<64x16xf32>) {
  // expected-error@+1 {{'sae.matching_pursuit' op atoms of width 16 do not match rows of width 8}}
  %0 = sae.matching_pursuit %r, %w : tensor<?x8xf32>, tensor<64x16xf32> -> !sae.codes<?x64xf32, k = 4>
  return
}

// -----

// Tests that top_afa's target has the decoder's width.
func.func @top_afa(%x: tensor<?x64xf32>, %w: tensor<64x16xf32>, %t: tensor<?x8xf32>) {
  // expected-error@+1 {{'sae.top_afa' op target rows of width 8 do not match the decoder's 16}}
  %0 = sae.top_afa %x, %w, %t : tensor<?x64xf32>, tensor<64x16xf32>, tensor<?x8xf32> -> tensor<?x64xf32>
  return
}

// -----

// Tests that a column mean has one entry per column.
func.func @column_mean(%x: tensor<?x16xf32>) {
  // expected-error@+1 {{'sae.column_mean' op result of size 8 does not match rows of width 16}}
  %0 = sae.column_mean %x : tensor<?x16xf32> -> tensor<8xf32>
  return
}

// -----

// Tests that a normal initialiser has a non-negative std.
func.func @normal(%s: i64) {
  // expected-error@+1 {{'sae.random_normal' op std must be non-negative, got -1}}
  %0 = sae.random_normal %s {mean = 0.0 : f64, std = -1.0 : f64, stream = 0 : i64} : tensor<4xf32>
  return
}

// -----

// Tests that a matvec's vector has one entry per weight column.
func.func @matvec_vector(%w: tensor<16x64xf32>, %v: tensor<32xf32>) {
  // expected-error@+1 {{'sae.matvec' op weight column count and vector length mismatch: 64 vs 32}}
  %0 = sae.matvec %w, %v : tensor<16x64xf32>, tensor<32xf32> -> tensor<16xf32>
  return
}

// -----

// Tests that a matvec's result has one entry per weight row.
func.func @matvec_result(%w: tensor<16x64xf32>, %v: tensor<64xf32>) {
  // expected-error@+1 {{'sae.matvec' op row count mismatch: 16 vs 8}}
  %0 = sae.matvec %w, %v : tensor<16x64xf32>, tensor<64xf32> -> tensor<8xf32>
  return
}

// -----

// Tests that a transposed outer product accumulates into an init of its
// own [d, n] layout, not the rows layout.
func.func @outer_into_transposed(%z: !sae.codes<?x64xf32, k = 4>, %x: tensor<?x16xf32>, %init: tensor<64x16xf32>) {
  // expected-error@+1 {{'sae.outer' op failed to verify that init has the result's type}}
  %0 = "sae.outer"(%z, %x, %init) {transposed} : (!sae.codes<?x64xf32, k = 4>, tensor<?x16xf32>, tensor<64x16xf32>) -> tensor<16x64xf32>
  return
}

// -----

// Tests that place_rows has a slot per result row.
func.func @place_rows_count(%rows: tensor<?x16xf32>, %slot: tensor<32xi32>) {
  // expected-error@+1 {{'sae.place_rows' op row count mismatch: 32 vs 64}}
  %0 = sae.place_rows %rows, %slot : tensor<?x16xf32>, tensor<32xi32> -> tensor<64x16xf32>
  return
}

// -----

// Tests that place_rows keeps the rows' width.
func.func @place_rows_width(%rows: tensor<?x8xf32>, %slot: tensor<64xi32>) {
  // expected-error@+1 {{'sae.place_rows' op width mismatch: 8 vs 16}}
  %0 = sae.place_rows %rows, %slot : tensor<?x8xf32>, tensor<64xi32> -> tensor<64x16xf32>
  return
}

// -----

// Tests that take_columns has a slot per column of its input.
func.func @take_columns_slots(%x: tensor<?x64xf32>, %slot: tensor<32xi32>, %width: index) {
  // expected-error@+1 {{'sae.take_columns' op column count mismatch: 32 vs 64}}
  %0 = sae.take_columns %x, %slot, %width : tensor<?x64xf32>, tensor<32xi32> -> tensor<?x?xf32>
  return
}

// -----

// Tests that take_columns keeps the input's rows.
func.func @take_columns_rows(%x: tensor<8x64xf32>, %slot: tensor<64xi32>, %width: index) {
  // expected-error@+1 {{'sae.take_columns' op row count mismatch: 8 vs 4}}
  %0 = sae.take_columns %x, %slot, %width : tensor<8x64xf32>, tensor<64xi32> -> tensor<4x?xf32>
  return
}
