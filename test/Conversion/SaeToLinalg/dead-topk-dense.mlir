// RUN: sae-opt %s -convert-sae-to-linalg=vector-lanes=16 | FileCheck %s

// Tests that AuxK's products with the dead latents' codes (decode, sddmm
// and outer) get register-blocked dense products over the dead latents
// when the width is a multiple of two vectors: the codes as a dense
// [B, n_dead] matrix (rounded up to panels of 64) and its transpose, the
// decoder's dead rows [n_dead, 64] and their transpose, then three packed
// panel products: the decode (K = n_dead), the sddmm (N = n_dead, so a
// dynamic number of panels) and the outer (M = n_dead, K = B). Each is
// used while n_dead <= 3 k (here 24); the dense products' buffers have no
// dead rows otherwise. With more dead latents, the grouped sparse products
// (the else branches) are cheaper: each row's entries by group of dead
// latents (first[row, g], built only then; a group holds about 32 of a
// row's entries, 128 to 512 latents), the decoder's dead rows
// packed as panels of 64 columns (none while dense); the decode and the
// sddmm visit each row's entries of a group (vector.fma; the sddmm's lanes
// summed by a reassociating reduction); the outer sorts the entries by
// place (an 8 x 129 table of counts) and sums each place's in registers.
// The outer's rows, in either branch, are the dead latents' rows only
// ([?, 64]); sae.place_rows puts them at their latents through slot[j]
// (latent j's place in the dead list, -1 when alive), which the selection
// writes, and zeroes the other rows.
// The dead list is built where the mask is (here, first): the selection
// reads the dead columns side by side, sae.take_columns with the slots
// of the dead list and then the filler's column (the first live latent,
// at slot n_dead), which an encoder product's epilogue would write
// (sae-to-linalg.mlir, @linear_topk_take); here it is taken on its own.
// CHECK-LABEL: func.func @aux_dense
// CHECK: %[[SLOT:.*]] = memref.alloc() : memref<128xi32>
// CHECK: memref.alloc() : memref<128xindex>
// CHECK: %[[LIST:.*]]:2 = scf.for
// CHECK: arith.select %{{.*}}, %{{.*}}, %c-1_i32 : i32
// CHECK: memref.store %{{.*}}, %[[SLOT]][%{{.*}}] : memref<128xi32>
// CHECK: %[[COLS:.*]] = memref.alloc() : memref<128xi32>
// CHECK: memref.copy %[[SLOT]], %[[COLS]]
// CHECK: scf.if
// CHECK:   %[[N:.*]] = arith.index_cast %[[LIST]]#0 : index to i32
// CHECK:   memref.store %[[N]], %[[COLS]][%[[LIST]]#1]
// CHECK: %[[WIDTH:.*]] = arith.addi %[[LIST]]#0, %{{.*}} : index
// CHECK: memref.alloc(%{{.*}}) : memref<?x8xi32>
// CHECK: memref.load %[[COLS]]
// CHECK: %[[TAKEN:.*]] = memref.alloc(%{{.*}}, %[[WIDTH]]) : memref<?x?xf32>
// CHECK: scf.parallel
// CHECK: memref.alloc(%[[LIST]]#0) : memref<?xi32>
// CHECK: scf.for %[[T:.*]] = %c0 to %[[LIST]]#0
// CHECK: memref.load %[[TAKEN]][%{{.*}}, %[[T]]] : memref<?x?xf32>
// CHECK: %[[DENSE:.*]] = arith.cmpi ule, %[[COUNT:.*]], %c24 : index
// CHECK: %[[DD:.*]] = arith.select %[[DENSE]], %[[PAD:.*]], %c0 : index
// CHECK: %[[ZA:.*]] = memref.alloc(%[[B:.*]], %[[DD]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[ZA]] : memref<?x?xf32>)
// CHECK: %[[ZAT:.*]] = memref.alloc(%[[DD]], %[[B]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: %[[WD:.*]] = memref.alloc(%[[DD]]) : memref<?x64xf32>
// CHECK: %[[WDT:.*]] = memref.alloc(%c64, %[[DD]]) : memref<?x?xf32>
// CHECK: scf.if %[[DENSE]] {
// CHECK: %[[PER:.*]] = arith.muli %[[COUNT]], %c32 : index
// CHECK: %[[WANT:.*]] = arith.ceildivui %[[PER]], %c8 : index
// CHECK: %[[ATLEAST:.*]] = arith.maxui %[[WANT]], %c128 : index
// CHECK: %[[SIZE:.*]] = arith.minui %[[ATLEAST]], %c512 : index
// CHECK: %[[GROUPS:.*]] = arith.ceildivui %[[COUNT]], %[[SIZE]] : index
// CHECK: %[[FIRST:.*]] = memref.alloc(%[[B]], %{{.*}}) : memref<?x?xindex>
// CHECK: scf.if %[[DENSE]] {
// CHECK-NEXT: } else {
// CHECK: arith.divui %{{.*}}, %[[SIZE]] : index
// CHECK: %[[PROWS:.*]] = arith.select %[[DENSE]], %c0, %[[COUNT]] : index
// CHECK: %[[PANELS:.*]] = memref.alloc(%[[PROWS]]) : memref<1x?x64xf32>
// CHECK: scf.if %[[DENSE]] -> (tensor<?x64xf32>) {
// CHECK: memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: scf.for %{{.*}} = %c0 to %[[GROUPS]]
// CHECK: %[[END:.*]] = memref.load %[[FIRST]]
// CHECK: %[[BEGIN:.*]] = memref.load %[[FIRST]]
// CHECK: scf.for %{{.*}} = %[[BEGIN]] to %[[END]]
// CHECK: vector.load %[[PANELS]]
// CHECK: vector.fma
// CHECK: scf.if %[[DENSE]] -> (tensor<?x8xf32>) {
// CHECK: memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: memref.load %[[FIRST]]
// CHECK: vector.load %[[PANELS]]
// CHECK: vector.reduction <add>, %{{.*}} fastmath<reassoc>
// CHECK: %[[ROWS:.*]] = scf.if %[[DENSE]] -> (tensor<?x64xf32>) {
// CHECK: memref.alloc(%[[PAD]]) : memref<?x64xf32>
// CHECK: memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: %[[SUMS:.*]] = memref.alloc(%[[COUNT]]) : memref<?x64xf32>
// CHECK: memref.alloc() : memref<8x129xindex>
// CHECK: vector.fma
// CHECK: vector.store %{{.*}}, %[[SUMS]]
// CHECK: %[[ROWBUF:.*]] = bufferization.to_buffer %[[ROWS]]
// CHECK: %[[GRAD:.*]] = memref.alloc() : memref<128x64xf32>
// CHECK: scf.parallel
// CHECK: %[[S:.*]] = memref.load %[[SLOT]][%{{.*}}] : memref<128xi32>
// CHECK: %[[PLACED:.*]] = arith.cmpi sge, %[[S]], %c0_i32 : i32
// CHECK: scf.if %[[PLACED]] {
// CHECK: memref.load %[[ROWBUF]]
// CHECK: memref.store %{{.*}}, %[[GRAD]]
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
// sparse products (no dense codes, no kernel; the one [?, ?] matrix is
// the taken columns).
// CHECK-LABEL: func.func @aux_sparse
// CHECK: memref.alloc(%{{.*}}, %{{.*}}) : memref<?x?xf32>
// CHECK-NOT: memref.alloc({{.*}}) : memref<?x?xf32>
// CHECK-NOT: vector.fma
// CHECK: return
func.func @aux_sparse(%pre: tensor<?x128xf32>, %mask: tensor<128xf32>, %w: tensor<128x24xf32>, %g: tensor<?x24xf32>) -> (tensor<?x24xf32>, tensor<128x24xf32>) {
  %c = sae.dead_topk %pre, %mask : tensor<?x128xf32>, tensor<128xf32> -> !sae.codes<?x128xf32, k = 8>
  %r = sae.decode %c, %w : !sae.codes<?x128xf32, k = 8>, tensor<128x24xf32> -> tensor<?x24xf32>
  %o = sae.outer %c, %g : !sae.codes<?x128xf32, k = 8>, tensor<?x24xf32> -> tensor<128x24xf32>
  return %r, %o : tensor<?x24xf32>, tensor<128x24xf32>
}

// Tests the encoder's gradient (a transposed outer product) of codes that
// put the dead latents' entries beside others' (tensor.concat, as the
// differentiator merges products): the dead part is a dense product too,
// dzᵀ · X over the dead latents, from dz's transpose [padded, B] written
// directly from the entries; the grouped branch masks the unfilled slots
// and sums each dead latent's entries by its place in the dead list. Its rows are placed at their latents
// (slot), and the other part's product (k = 4 entries, no concat)
// accumulates into them, then is transposed.
// CHECK-LABEL: func.func @aux_encoder_grad
// CHECK: %[[SLOT:.*]] = memref.alloc() : memref<128xi32>
// CHECK: %[[DENSE:.*]] = arith.cmpi ule, %{{.*}}, %c24 : index
// CHECK: scf.if %[[DENSE]] -> (tensor<?x8xf32>) {
// CHECK: } else {
// CHECK: %[[ROWS:.*]] = scf.if %[[DENSE]] -> (tensor<?x64xf32>) {
// CHECK: %[[DZT:.*]] = memref.alloc(%[[PAD:.*]], %[[B:.*]]) : memref<?x?xf32>
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[DZT]] : memref<?x?xf32>)
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK: memref.store %{{.*}}, %[[DZT]][%{{.*}}, %[[ROW]]] : memref<?x?xf32>
// CHECK: memref.alloc(%[[PAD]]) : memref<?x64xf32>
// CHECK: vector.fma
// CHECK: } else {
// CHECK: arith.cmpi sge, %{{.*}}, %c0_i32 : i32
// CHECK: arith.select
// CHECK: memref.alloc() : memref<8x129xindex>
// CHECK: vector.fma
// CHECK-NOT: tensor.concat
// CHECK: %[[ROWBUF:.*]] = bufferization.to_buffer %[[ROWS]]
// CHECK: scf.parallel
// CHECK: memref.load %[[SLOT]]
// CHECK: vector.load %[[ROWBUF]]
// CHECK: return
func.func @aux_encoder_grad(%pre: tensor<?x128xf32>, %mask: tensor<128xf32>, %w: tensor<128x64xf32>, %g: tensor<?x64xf32>, %x: tensor<?x64xf32>, %ov: tensor<?x4xf32>, %oi: tensor<?x4xi32>) -> (tensor<?x64xf32>, tensor<64x128xf32>) {
  %c = sae.dead_topk %pre, %mask : tensor<?x128xf32>, tensor<128xf32> -> !sae.codes<?x128xf32, k = 8>
  %r = sae.decode %c, %w : !sae.codes<?x128xf32, k = 8>, tensor<128x64xf32> -> tensor<?x64xf32>
  %s = sae.sddmm %c, %g, %w : !sae.codes<?x128xf32, k = 8>, tensor<?x64xf32>, tensor<128x64xf32>
  %sv = sae.codes_values %s : !sae.codes<?x128xf32, k = 8> -> tensor<?x8xf32>
  %si = sae.codes_indices %s : !sae.codes<?x128xf32, k = 8> -> tensor<?x8xi32>
  %v = tensor.concat dim(1) %sv, %ov : (tensor<?x8xf32>, tensor<?x4xf32>) -> tensor<?x12xf32>
  %i = tensor.concat dim(1) %si, %oi : (tensor<?x8xi32>, tensor<?x4xi32>) -> tensor<?x12xi32>
  %both = sae.make_codes %v, %i : tensor<?x12xf32>, tensor<?x12xi32> -> !sae.codes<?x128xf32, k = 12>
  %o = sae.outer %both, %x {transposed} : !sae.codes<?x128xf32, k = 12>, tensor<?x64xf32> -> tensor<64x128xf32>
  return %r, %o : tensor<?x64xf32>, tensor<64x128xf32>
}

// Tests a gather of the selection's input at entries that are the
// selection's (ReLU's gradient, through an sddmm): each slot takes the
// value the selection kept, and the input is read at the filler's column
// only (once a row), where a slot was left over; not at every entry. That
// column is the taken matrix's column n_dead (0 when every latent is dead
// and the filler is latent 0).
// CHECK-LABEL: func.func @aux_input_gather
// CHECK: %[[LIST:.*]]:2 = scf.for
// CHECK: %[[ALL:.*]] = arith.cmpi eq, %[[LIST]]#1, %c128 : index
// CHECK: %[[FILLERCOL:.*]] = arith.select %[[ALL]], %c0, %[[LIST]]#0 : index
// CHECK: %[[VALS:.*]] = memref.alloc(%{{.*}}) : memref<?x8xf32>
// CHECK: %[[IDXS:.*]] = memref.alloc(%{{.*}}) : memref<?x8xi32>
// CHECK: %[[IN:.*]] = memref.alloc(%{{.*}}, %{{.*}}) : memref<?x?xf32>
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK: %[[AT:.*]] = memref.load %[[IN]][%[[ROW]], %[[FILLERCOL]]]
// CHECK: scf.for
// CHECK: %[[I:.*]] = memref.load %[[IDXS]]
// CHECK: %[[F:.*]] = arith.cmpi eq, %[[I]], %{{.*}} : i32
// CHECK: %[[V:.*]] = memref.load %[[VALS]]
// CHECK: arith.select %[[F]], %[[AT]], %[[V]] : f32
// CHECK-NOT: memref.load %[[IN]]
// CHECK: return
func.func @aux_input_gather(%pre: tensor<?x128xf32>, %mask: tensor<128xf32>, %w: tensor<128x24xf32>, %g: tensor<?x24xf32>) -> tensor<?x8xf32> {
  %c = sae.dead_topk %pre, %mask : tensor<?x128xf32>, tensor<128xf32> -> !sae.codes<?x128xf32, k = 8>
  %s = sae.sddmm %c, %g, %w : !sae.codes<?x128xf32, k = 8>, tensor<?x24xf32>, tensor<128x24xf32>
  %r = sae.gather %s, %pre : !sae.codes<?x128xf32, k = 8>, tensor<?x128xf32>
  %v = sae.codes_values %r : !sae.codes<?x128xf32, k = 8> -> tensor<?x8xf32>
  return %v : tensor<?x8xf32>
}
