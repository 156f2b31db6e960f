// RUN: sae-opt %s -split-input-file -convert-sae-to-linalg=vector-lanes=8 | FileCheck %s

// Tests that a product whose width is not a multiple of two vectors is a
// generic whose reduction loop is outside the contiguous output loop
// (i, k, j), accumulating into a zero-filled init.
// CHECK-DAG: #[[IK:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: #[[KJ:.*]] = affine_map<(d0, d1, d2) -> (d1, d2)>
// CHECK-DAG: #[[IJ:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-LABEL: func.func @linear
// CHECK-SAME: (%[[X:.*]]: tensor<?x16xf32>, %[[W:.*]]: tensor<16x20xf32>)
// CHECK: %[[INIT:.*]] = linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : tensor<?x20xf32>)
// CHECK: linalg.generic {indexing_maps = [#[[IK]], #[[KJ]], #[[IJ]]], iterator_types = ["parallel", "reduction", "parallel"]}
// CHECK-SAME: ins(%[[X]], %[[W]] : tensor<?x16xf32>, tensor<16x20xf32>) outs(%[[INIT]] : tensor<?x20xf32>)
// CHECK: arith.mulf
// CHECK: arith.addf
func.func @linear(%x: tensor<?x16xf32>, %w: tensor<16x20xf32>) -> tensor<?x20xf32> {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x20xf32> -> tensor<?x20xf32>
  return %0 : tensor<?x20xf32>
}

// -----

// Tests the register-blocked kernel for a width that is a multiple of two
// vectors (8 lanes here): the weight is packed into panels of 16 columns
// (ranges of panels in parallel), then the work items (blocks of about 96
// rows × ranges of panels; 4 panels here, so 4 ranges of one) run in
// parallel, block b taking the groups of 6 rows [b·G / blocks,
// (b+1)·G / blocks) of the G = B div 6, and
// within them groups of 6 rows keep 6 × 2 vector accumulators over k (one
// broadcast of x[i, k] and two FMAs per row); the B mod 6 leftover rows form
// one smaller block per panel (1 to 5 rows), in the items of the last row
// block, after its groups of 6 rows.
// CHECK-LABEL: func.func @linear_kernel
// CHECK: %[[PACKED:.*]] = memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x16xf32>
// CHECK: scf.parallel
// CHECK: vector.load {{.*}} : memref<16x64xf32>, vector<8xf32>
// CHECK: vector.store {{.*}}, %[[PACKED]]
// CHECK: %[[GROUPS:.*]] = arith.divui %{{.*}}, %c6
// CHECK: %[[BLOCKS:.*]] = arith.ceildivui %{{.*}}, %c96
// CHECK: %[[ITEMS:.*]] = arith.muli %[[BLOCKS]], %c4
// CHECK: scf.parallel (%[[ITEM:.*]]) = (%{{.*}}) to (%[[ITEMS]]) step (%c1)
// CHECK: %[[BLOCK:.*]] = arith.divui %[[ITEM]], %c4
// CHECK: arith.remui %[[ITEM]], %c4
// CHECK: %[[G0:.*]] = arith.muli %[[BLOCK]], %[[GROUPS]]
// CHECK: arith.divui %[[G0]], %[[BLOCKS]]
// CHECK: %[[LASTNO:.*]] = arith.subi %[[BLOCKS]], %c1
// CHECK: %[[LAST:.*]] = arith.cmpi eq, %[[BLOCK]], %[[LASTNO]]
// CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %c16
// CHECK: scf.for {{.*}} step %c6
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>)
// CHECK-COUNT-12: vector.fma
// CHECK: %[[ONE:.*]] = arith.cmpi eq, %{{.*}}, %c1
// CHECK: %[[LASTONE:.*]] = arith.andi %[[LAST]], %[[ONE]]
// CHECK: scf.if %[[LASTONE]]
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (vector<8xf32>, vector<8xf32>)
// CHECK-COUNT-2: vector.fma
// CHECK: scf.if
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>)
// CHECK-COUNT-4: vector.fma
func.func @linear_kernel(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>) -> tensor<?x64xf32> {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  return %0 : tensor<?x64xf32>
}

// -----

// Tests that a long K (2048 > 2 · 512) is cut into chunks of 512, each run
// over every panel of a work item before the next: a chunk's sums start
// from the result's (but the first chunk's, which start from zero) and are
// stored back; only the last chunk adds the fused bias.
// CHECK-LABEL: func.func @linear_long_k
// CHECK: scf.for %[[K0:.*]] = %c0 to %c1536 step %c512 {
// CHECK: %[[K1:.*]] = arith.addi %[[K0]], %c512 : index
// CHECK: scf.for
// CHECK: scf.for
// CHECK: %[[FROMC:.*]] = arith.cmpi ne, %[[K0]], %c0 : index
// CHECK: scf.if %[[FROMC]] -> (vector<8xf32>
// CHECK: vector.load %[[C:.*]][%{{.*}}, %{{.*}}] : memref<?x16xf32>, vector<8xf32>
// CHECK: scf.for %{{.*}} = %[[K0]] to %[[K1]] step %c1 iter_args
// CHECK-COUNT-12: vector.fma
// CHECK-NOT: arith.addf
// CHECK: vector.store %{{.*}}, %[[C]]
// CHECK: scf.for %{{.*}} = %c1536 to %c2048 step %c1 iter_args
// CHECK-COUNT-12: vector.fma
// CHECK: arith.addf
// CHECK: vector.store %{{.*}}, %[[C]]
func.func @linear_long_k(%x: tensor<?x2048xf32>, %w: tensor<2048x16xf32>, %b: tensor<16xf32>) -> tensor<?x16xf32> {
  %0 = sae.linear %x, %w : tensor<?x2048xf32>, tensor<2048x16xf32> -> tensor<?x16xf32>
  %1 = sae.bias_add %0, %b : tensor<?x16xf32>, tensor<16xf32>
  return %1 : tensor<?x16xf32>
}

// -----

// Tests that a top-k taking the encoder chain (product, bias, relu) as its
// only use selects in the product's epilogue: no [B, 64] pre-activation is
// allocated. The work items are blocks of 48 rows with all 4 panels (one
// item sees a row's columns in increasing order); each item empties its
// rows' slots, and every 6 × 16 tile, biased and clamped, goes to the
// item's tile buffer, from which each row's blocks of 8 are screened
// against the worst kept rank; the heapsort ends the item.
// CHECK-LABEL: func.func @linear_topk
// CHECK-DAG: %[[NEGINF:.*]] = arith.constant 0xFF800000 : f32
// CHECK-NOT: memref.alloc({{.*}}) : memref<?x64xf32>
// CHECK: %[[VALS:.*]] = memref.alloc(%{{.*}}) : memref<?x4xf32>
// CHECK: %[[IDXS:.*]] = memref.alloc(%{{.*}}) : memref<?x4xi32>
// CHECK: %[[PACKED:.*]] = memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x16xf32>
// CHECK: %[[ITEMS:.*]] = arith.ceildivui %{{.*}}, %c48
// CHECK: %[[TILES:.*]] = memref.alloc(%[[ITEMS]]) : memref<?x6x16xf32>
// CHECK: scf.parallel (%[[ITEM:.*]]) = (%{{.*}}) to (%[[ITEMS]]) step (%c1)
// CHECK:   memref.store %[[NEGINF]], %[[VALS]]
// CHECK:   %[[SUB:.*]] = memref.subview %[[TILES]][%[[ITEM]], 0, 0] [1, 6, 16]
// CHECK:   %[[TILE:.*]] = memref.collapse_shape %[[SUB]]
// CHECK:   scf.for %[[J:.*]] = %{{.*}} to %c64 step %c16
// CHECK:     scf.for %[[I:.*]] = {{.*}} step %c6
// CHECK-COUNT-12: vector.fma
// CHECK-COUNT-12: vector.store {{.*}}, %[[TILE]]
// CHECK:       scf.for %[[R:.*]] = %c0 to %c6 step %c1
// CHECK:         %[[W0:.*]] = memref.load %[[VALS]][%{{.*}}, %c0]
// CHECK:         scf.for %[[V:.*]] = %c0 to %c16 step %c8 iter_args(%{{.*}} = %[[W0]])
// CHECK:           vector.load %[[TILE]][%[[R]], %[[V]]]
// CHECK:           %[[BEATS:.*]] = arith.cmpf ogt, {{.*}} : vector<8xf32>
// CHECK:           vector.reduction <or>, %[[BEATS]]
// CHECK:           scf.if
// CHECK:             %[[MASK:.*]] = vector.bitcast %[[BEATS]] : vector<8xi1> to vector<1xi8>
// CHECK:             scf.while
// CHECK:             %[[LANE:.*]] = math.cttz
// CHECK:             memref.load %[[TILE]]
// CHECK:             scf.while
// CHECK:             arith.andi
// CHECK-NOT: vector.store {{.*}} : memref<?x64xf32>
// CHECK: return
func.func @linear_topk(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>) -> (tensor<?x4xf32>, tensor<?x4xi32>) {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  %z = sae.topk %2 : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %i = sae.codes_indices %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xi32>
  return %v, %i : tensor<?x4xf32>, tensor<?x4xi32>
}

// -----

// Tests that a top-k whose input has other uses (AuxK's selection of dead
// latents) still selects in the epilogue: the product is also written, the
// tile's vectors going to both. A shape query of the input before the top-k
// is answered from the product's input.
// CHECK-LABEL: func.func @linear_topk_shared
// CHECK-SAME: (%[[X:.*]]: tensor<?x16xf32>,
// CHECK: %[[ROWS:.*]] = tensor.dim %[[X]], %c0
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x64xf32>
// CHECK: %[[TILES:.*]] = memref.alloc(%{{.*}}) : memref<?x6x16xf32>
// CHECK: %[[SUB:.*]] = memref.subview %[[TILES]]
// CHECK: %[[TILE:.*]] = memref.collapse_shape %[[SUB]]
// CHECK: vector.store %[[V:.*]], %[[TILE]][%c0, %c0]
// CHECK-NEXT: vector.store %[[V]], %[[OUT]]
// CHECK: %[[T:.*]] = bufferization.to_tensor %[[OUT]] restrict
// CHECK: return %[[ROWS]], %{{.*}}, %[[T]]
func.func @linear_topk_shared(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>) -> (index, tensor<?x4xf32>, tensor<?x64xf32>) {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  %c0 = arith.constant 0 : index
  %rows = tensor.dim %2, %c0 : tensor<?x64xf32>
  %z = sae.topk %2 : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  return %rows, %v, %2 : index, tensor<?x4xf32>, tensor<?x64xf32>
}

// -----

// Tests the kernel for fewer than 32 rows (an encode of a few tokens),
// chosen at run time: B is streamed rather than packed. Each work item
// (a range of whole panels of columns) zeroes its columns of the sums
// (rows one vector longer than N, 64 + 8), walks B 8 rows at a time (8
// vector loads, then per row of A 8 broadcasts and FMAs in order of k into
// the row's vector of sums), then the K mod 8 rows left one by one, and
// adds the bias and clamps. The rows then go by in groups of 6 through the
// top-k, each tile a view of the sums. With 32 rows or more, the packed
// kernel (an aligned panel buffer) runs instead.
// CHECK-LABEL: func.func @linear_stream
// CHECK: %[[FEW:.*]] = arith.cmpi ult, %[[M:.*]], %c32 : index
// CHECK: scf.if %[[FEW]] {
// CHECK:   %[[SUMS:.*]] = memref.alloc(%[[M]], %c72) : memref<?x?xf32>
// CHECK:   scf.parallel (%[[J0:.*]]) = (%c0) to (%c64) step (%c16) {
// CHECK:     %[[J1:.*]] = arith.minui
// CHECK:     scf.for %[[R:.*]] = %c0 to %[[M]] step %c1 {
// CHECK:       scf.for %[[J:.*]] = %[[J0]] to %[[J1]] step %c8 {
// CHECK:         vector.store %{{.*}}, %[[SUMS]][%[[R]], %[[J]]]
// CHECK:     scf.for %[[K0:.*]] = %c0 to %c16 step %c8 {
// CHECK:       scf.for %[[J:.*]] = %[[J0]] to %[[J1]] step %c8 {
// CHECK-COUNT-8: vector.load %{{.*}} : memref<20x64xf32>, vector<8xf32>
// CHECK:         scf.for %[[R:.*]] = %c0 to %[[M]] step %c1 {
// CHECK:           vector.load %[[SUMS]][%[[R]], %[[J]]]
// CHECK-COUNT-8:   vector.fma
// CHECK:           vector.store %{{.*}}, %[[SUMS]][%[[R]], %[[J]]]
// CHECK:     scf.for %{{.*}} = %c16 to %c20 step %c1 {
// CHECK:       vector.fma
// CHECK:     scf.for
// CHECK:       scf.for
// CHECK:         arith.addf
// CHECK:         arith.maximumf
// CHECK:         vector.store %{{.*}}, %[[SUMS]]
// CHECK:   %[[GROUPS:.*]] = arith.ceildivui %[[M]], %c6 : index
// CHECK:   scf.parallel (%{{.*}}) = (%c0) to (%[[GROUPS]]) step (%c1) {
// CHECK:     memref.subview %[[SUMS]]
// CHECK:     arith.cmpf ogt
// CHECK: } else {
// CHECK:   memref.alloc(%{{.*}}) {alignment = 64 : i64} : memref<?x16xf32>
// CHECK:   vector.fma
// CHECK: }
func.func @linear_stream(%x: tensor<?x20xf32>, %w: tensor<20x64xf32>, %b: tensor<64xf32>) -> (tensor<?x4xf32>, tensor<?x4xi32>) {
  %0 = sae.linear %x, %w : tensor<?x20xf32>, tensor<20x64xf32> -> tensor<?x64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  %z = sae.topk %2 : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %i = sae.codes_indices %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xi32>
  return %v, %i : tensor<?x4xf32>, tensor<?x4xi32>
}

// -----

// Tests that a top-k's input whose other use takes a few of its columns
// (AuxK's dead columns, sae.take_columns with slots known before the top-k)
// is not written: each row of the taken matrix is zeroed before its first
// tile; then, for each vector of a tile's columns, the columns with a slot
// in range (the bits of one vector comparison) copy the tile's rows to
// their slots one element at a time (no masked scatter of whole vectors).
// CHECK-LABEL: func.func @linear_topk_take
// CHECK-SAME: %[[SLOT:[^:]*]]: tensor<64xi32>, %[[WIDTH:[^:]*]]: index
// CHECK-NOT: memref.alloc({{.*}}) : memref<?x64xf32>
// CHECK: %[[SLOTS:.*]] = bufferization.to_buffer %[[SLOT]]
// CHECK: %[[TAKEN:.*]] = memref.alloc(%{{.*}}, %[[WIDTH]]) : memref<?x?xf32>
// CHECK: scf.parallel
// CHECK: scf.for %[[C:.*]] = %c0 to %[[WIDTH]] step %c1
// CHECK:   memref.store %{{.*}}, %[[TAKEN]][%{{.*}}, %[[C]]] : memref<?x?xf32>
// CHECK: vector.fma
// CHECK: %[[W:.*]] = arith.index_cast %[[WIDTH]] : index to i32
// CHECK: %[[WV:.*]] = vector.broadcast %[[W]] : i32 to vector<8xi32>
// CHECK: %[[S:.*]] = vector.load %[[SLOTS]][%{{.*}}] : memref<64xi32>, vector<8xi32>
// CHECK: %[[IN:.*]] = arith.cmpi ult, %[[S]], %[[WV]] : vector<8xi32>
// CHECK: vector.bitcast %[[IN]] : vector<8xi1> to vector<1xi8>
// CHECK: scf.while
// CHECK:   %[[LANE:.*]] = math.cttz
// CHECK:   %[[L:.*]] = arith.index_castui %[[LANE]] : i32 to index
// CHECK:   %[[COL:.*]] = arith.addi %{{.*}}, %[[L]] : index
// CHECK:   %[[TO32:.*]] = memref.load %[[SLOTS]][%[[COL]]] : memref<64xi32>
// CHECK:   %[[TO:.*]] = arith.index_cast %[[TO32]] : i32 to index
// CHECK:   scf.for %[[R:.*]] = %c0 to %c6 step %c1 {
// CHECK:     %[[ROW:.*]] = arith.addi %{{.*}}, %[[R]] : index
// CHECK:     %[[X:.*]] = memref.load %{{.*}}[%[[R]], %[[L]]]
// CHECK:     memref.store %[[X]], %[[TAKEN]][%[[ROW]], %[[TO]]] : memref<?x?xf32>
// CHECK-NOT: vector.scatter
// CHECK-NOT: vector.store {{.*}} : memref<?x64xf32>
// CHECK: %[[T:.*]] = bufferization.to_tensor %[[TAKEN]]
// CHECK: return %{{.*}}, %[[T]]
func.func @linear_topk_take(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>, %slot: tensor<64xi32>, %width: index) -> (tensor<?x4xf32>, tensor<?x?xf32>) {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  %z = sae.topk %2 : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %t = sae.take_columns %2, %slot, %width : tensor<?x64xf32>, tensor<64xi32> -> tensor<?x?xf32>
  return %v, %t : tensor<?x4xf32>, tensor<?x?xf32>
}

// -----

// Tests that slots computed after the top-k leave the product written and
// the columns taken from it on their own (below).
// CHECK-LABEL: func.func @linear_topk_take_late
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x64xf32>
// CHECK-NOT: vector.scatter
// CHECK: memref.load %{{.*}}[%{{.*}}, %{{.*}}] : memref<?x64xf32>
// CHECK: return
func.func @linear_topk_take_late(%x: tensor<?x16xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>, %s: tensor<64xi32>, %width: index) -> (tensor<?x4xf32>, tensor<?x?xf32>) {
  %0 = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x64xf32> -> tensor<?x64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  %z = sae.topk %2 : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %slot = arith.addi %s, %s : tensor<64xi32>
  %t = sae.take_columns %2, %slot, %width : tensor<?x64xf32>, tensor<64xi32> -> tensor<?x?xf32>
  return %v, %t : tensor<?x4xf32>, tensor<?x?xf32>
}

// -----

// Tests take_columns on its own: each result column's source first (the
// last column with that slot, -1 for none; unsigned, a slot of -1 is out
// of range), then rows in parallel, each result column read from its
// source without a branch (0 where there is none).
// CHECK-LABEL: func.func @take_columns
// CHECK-SAME: (%[[X:[^:]*]]: tensor<?x64xf32>, %[[SLOT:[^:]*]]: tensor<64xi32>, %[[WIDTH:[^:]*]]: index)
// CHECK-DAG: %[[IN:.*]] = bufferization.to_buffer %[[X]]
// CHECK-DAG: %[[SLOTS:.*]] = bufferization.to_buffer %[[SLOT]]
// CHECK: %[[SRC:.*]] = memref.alloc(%[[WIDTH]]) : memref<?xi32>
// CHECK: linalg.fill ins(%c-1_i32 : i32) outs(%[[SRC]] : memref<?xi32>)
// CHECK: %[[W:.*]] = arith.index_cast %[[WIDTH]] : index to i32
// CHECK: scf.for %[[J:.*]] = %c0 to %c64
// CHECK:   %[[S:.*]] = memref.load %[[SLOTS]][%[[J]]]
// CHECK:   %[[OK:.*]] = arith.cmpi ult, %[[S]], %[[W]] : i32
// CHECK:   scf.if %[[OK]] {
// CHECK:     %[[AT:.*]] = arith.index_castui %[[S]] : i32 to index
// CHECK:     %[[J32:.*]] = arith.index_cast %[[J]] : index to i32
// CHECK:     memref.store %[[J32]], %[[SRC]][%[[AT]]]
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}, %[[WIDTH]]) : memref<?x?xf32>
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK:   scf.for %[[T:.*]] = %c0 to %[[WIDTH]]
// CHECK:     %[[FROM:.*]] = memref.load %[[SRC]][%[[T]]]
// CHECK:     %[[NAMED:.*]] = arith.cmpi sge, %[[FROM]], %c0_i32
// CHECK:     %[[C:.*]] = arith.maxsi %[[FROM]], %c0_i32
// CHECK:     %[[CI:.*]] = arith.index_cast %[[C]] : i32 to index
// CHECK:     %[[V:.*]] = memref.load %[[IN]][%[[ROW]], %[[CI]]]
// CHECK:     %[[R:.*]] = arith.select %[[NAMED]], %[[V]], %cst
// CHECK:     memref.store %[[R]], %[[OUT]][%[[ROW]], %[[T]]]
func.func @take_columns(%x: tensor<?x64xf32>, %slot: tensor<64xi32>, %width: index) -> tensor<?x?xf32> {
  %t = sae.take_columns %x, %slot, %width : tensor<?x64xf32>, tensor<64xi32> -> tensor<?x?xf32>
  return %t : tensor<?x?xf32>
}

// -----

// Tests that a bias is broadcast over rows and relu is maximumf with zero.
// CHECK-DAG: #[[ROW:.*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-LABEL: func.func @bias_relu
// CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK: linalg.generic {{.*}}#[[ROW]]{{.*}}iterator_types = ["parallel", "parallel"]
// CHECK: arith.subf
// CHECK: linalg.generic
// CHECK: arith.addf
// CHECK: linalg.generic
// CHECK: arith.maximumf %{{.*}}, %[[ZERO]] : f32
func.func @bias_relu(%x: tensor<?x64xf32>, %b: tensor<64xf32>) -> tensor<?x64xf32> {
  %0 = sae.bias_sub %x, %b : tensor<?x64xf32>, tensor<64xf32>
  %1 = sae.bias_add %0, %b : tensor<?x64xf32>, tensor<64xf32>
  %2 = sae.relu %1 : tensor<?x64xf32>
  return %2 : tensor<?x64xf32>
}

// -----

// Tests that topk selects each row in parallel with a bounded min-heap: k
// slots initialised to -inf, a candidate enters only when it beats the worst
// kept rank (carried by the loops) and is then sifted down, and a heapsort
// orders the slots at the end. Blocks of 16 candidates are screened with
// one vector comparison against the worst kept rank; when some beat it,
// only those lanes are visited, lowest first (the comparison as a bit mask,
// its trailing zeros counted, its lowest bit cleared each time), each still
// compared with the worst kept rank of then; the columns left over (none
// here) go by one at a time.
// CHECK-LABEL: func.func @topk
// CHECK-SAME: (%[[X:.*]]: tensor<?x64xf32>)
// CHECK-DAG: %[[NEGINF:.*]] = arith.constant 0xFF800000 : f32
// CHECK-DAG: %[[C4:.*]] = arith.constant 4 : index
// CHECK-DAG: %[[C64:.*]] = arith.constant 64 : index
// CHECK: %[[IN:.*]] = bufferization.to_buffer %[[X]] read_only
// CHECK: %[[VALS:.*]] = memref.alloc(%{{.*}}) : memref<?x4xf32>
// CHECK: %[[IDXS:.*]] = memref.alloc(%{{.*}}) : memref<?x4xi32>
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK:   memref.store %[[NEGINF]], %[[VALS]]
// CHECK:   %[[SCREENED:.*]] = scf.for %[[BLOCK:.*]] = %{{.*}} to %[[C64]] step %c16 iter_args(%[[BW:.*]] = %[[NEGINF]])
// CHECK:     %[[VV:.*]] = vector.load %[[IN]][%[[ROW]], %[[BLOCK]]] : memref<?x64xf32>, vector<16xf32>
// CHECK:     %[[BWV:.*]] = vector.broadcast %[[BW]] : f32 to vector<16xf32>
// CHECK:     %[[BEATS:.*]] = arith.cmpf ogt, %[[VV]], %[[BWV]] : vector<16xf32>
// CHECK:     %[[ANY:.*]] = vector.reduction <or>, %[[BEATS]]
// CHECK:     scf.if %[[ANY]]
// CHECK:       %[[BITS:.*]] = vector.bitcast %[[BEATS]] : vector<16xi1> to vector<1xi16>
// CHECK:       %[[B16:.*]] = vector.extract %[[BITS]][0] : i16 from vector<1xi16>
// CHECK:       %[[MASK:.*]] = arith.extui %[[B16]] : i16 to i32
// CHECK:       scf.while (%[[LEFT:.*]] = %[[MASK]], %[[W:.*]] = %[[BW]])
// CHECK:         arith.cmpi ne, %[[LEFT]], %c0_i32
// CHECK:         scf.condition
// CHECK:       ^bb0(%[[LEFT2:.*]]: i32, %[[W2:.*]]: f32):
// CHECK:         %[[LANE:.*]] = math.cttz %[[LEFT2]] : i32
// CHECK:         %[[LANEI:.*]] = arith.index_castui %[[LANE]] : i32 to index
// CHECK:         %[[AT:.*]] = arith.addi %[[BLOCK]], %[[LANEI]] : index
// CHECK:         scf.for %[[COL:.*]] = %[[AT]] to %{{.*}} iter_args(%[[WORST:.*]] = %[[W2]])
// CHECK:           %[[V:.*]] = memref.load %[[IN]][%[[ROW]], %[[COL]]]
// CHECK:           %[[BETTER:.*]] = arith.cmpf ogt, %[[V]], %[[WORST]]
// CHECK:           scf.if %[[BETTER]]
// CHECK:             scf.while
// CHECK:         %[[LESS:.*]] = arith.subi %[[LEFT2]], %c1_i32
// CHECK:         %[[REST:.*]] = arith.andi %[[LEFT2]], %[[LESS]]
// CHECK:         scf.yield %[[REST]]
// CHECK:   scf.for %{{.*}} = %[[C64]] to %[[C64]] step %c1 iter_args(%{{.*}} = %[[SCREENED]])
// CHECK:   scf.for %[[J:.*]] = %{{.*}} to %[[C4]]
// CHECK:     arith.subi %[[C4]], %[[J]]
// CHECK:     scf.while
// CHECK: %[[VT:.*]] = bufferization.to_tensor %[[VALS]] restrict writable
// CHECK: %[[IT:.*]] = bufferization.to_tensor %[[IDXS]] restrict writable
// CHECK: return %[[VT]], %[[IT]]
func.func @topk(%x: tensor<?x64xf32>) -> (tensor<?x4xf32>, tensor<?x4xi32>) {
  %z = sae.topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4>
  %v = sae.codes_values %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xf32>
  %i = sae.codes_indices %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x4xi32>
  return %v, %i : tensor<?x4xf32>, tensor<?x4xi32>
}

// -----

// Tests that decoding gathers one decoder row per kept entry: rows in
// parallel, a loop over the 4 entries, and a vector axpy over the 16 columns
// of the entry's decoder row (16 is not a whole group of 4 vectors, so the
// sums are kept in memory); nothing iterates over the 64 latents.
// CHECK-LABEL: func.func @decode
// CHECK-SAME: (%[[V:.*]]: tensor<?x4xf32>, %[[I:.*]]: tensor<?x4xi32>, %[[W:.*]]: tensor<64x16xf32>)
// CHECK-DAG: %[[C4:.*]] = arith.constant 4 : index
// CHECK-DAG: %[[C8:.*]] = arith.constant 8 : index
// CHECK-DAG: %[[C16:.*]] = arith.constant 16 : index
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x16xf32>
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[OUT]]
// CHECK: %[[WB:.*]] = bufferization.to_buffer %[[W]] read_only
// CHECK: %[[VB:.*]] = bufferization.to_buffer %[[V]] read_only
// CHECK: %[[IB:.*]] = bufferization.to_buffer %[[I]] read_only
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK:   scf.for %[[T:.*]] = %{{.*}} to %[[C4]]
// CHECK:     %[[VAL:.*]] = memref.load %[[VB]][%[[ROW]], %[[T]]]
// CHECK:     %[[IDX:.*]] = memref.load %[[IB]][%[[ROW]], %[[T]]]
// CHECK:     %[[LATENT:.*]] = arith.index_cast %[[IDX]] : i32 to index
// CHECK:     %[[VV:.*]] = vector.broadcast %[[VAL]] : f32 to vector<8xf32>
// CHECK:     scf.for %[[J:.*]] = %{{.*}} to %[[C16]] step %[[C8]]
// CHECK:       %[[WV:.*]] = vector.load %[[WB]][%[[LATENT]], %[[J]]]
// CHECK:       %[[ACC:.*]] = vector.load %[[OUT]][%[[ROW]], %[[J]]]
// CHECK:       %[[P:.*]] = arith.mulf %[[VV]], %[[WV]]
// CHECK:       %[[S:.*]] = arith.addf %[[ACC]], %[[P]]
// CHECK:       vector.store %[[S]], %[[OUT]][%[[ROW]], %[[J]]]
// CHECK-NOT: sae.
func.func @decode(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %w: tensor<64x16xf32>) -> tensor<?x16xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %d = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> tensor<?x16xf32>
  return %d : tensor<?x16xf32>
}

// -----

// Tests that a decode 32 columns wide (a whole group of 4 vectors of 8)
// keeps each row's sums in registers: per row and chunk of 4 vectors, the
// entries in order, one weight load and one FMA per vector and entry from
// zero, then one store per vector; the output is never filled nor read.
// CHECK-LABEL: func.func @decode_registers
// CHECK-SAME: (%[[V:.*]]: tensor<?x4xf32>, %[[I:.*]]: tensor<?x4xi32>, %[[W:.*]]: tensor<64x32xf32>)
// CHECK-DAG: %[[C4:.*]] = arith.constant 4 : index
// CHECK-DAG: %[[C32:.*]] = arith.constant 32 : index
// CHECK-DAG: %[[ZERO:.*]] = arith.constant dense<0.000000e+00> : vector<8xf32>
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x32xf32>
// CHECK-NOT: linalg.fill
// CHECK: %[[WB:.*]] = bufferization.to_buffer %[[W]] read_only
// CHECK: scf.parallel (%[[ROW:.*]]) =
// CHECK:   scf.for %[[CHUNK:.*]] =
// CHECK:     %[[COL:.*]] = arith.muli %[[CHUNK]], %[[C32]]
// CHECK:     %[[SUMS:.*]]:4 = scf.for %[[T:.*]] = %{{.*}} to %[[C4]] step %{{.*}} iter_args(%[[A0:.*]] = %[[ZERO]], %{{.*}} = %[[ZERO]], %{{.*}} = %[[ZERO]], %{{.*}} = %[[ZERO]])
// CHECK:       %[[VAL:.*]] = memref.load %{{.*}}[%[[ROW]], %[[T]]]
// CHECK:       %[[IDX:.*]] = memref.load %{{.*}}[%[[ROW]], %[[T]]]
// CHECK:       %[[LATENT:.*]] = arith.index_cast %[[IDX]] : i32 to index
// CHECK:       %[[VV:.*]] = vector.broadcast %[[VAL]] : f32 to vector<8xf32>
// CHECK:       %[[WV:.*]] = vector.load %[[WB]][%[[LATENT]], %[[COL]]]
// CHECK:       vector.fma %[[VV]], %[[WV]], %[[A0]] : vector<8xf32>
// CHECK-COUNT-3: vector.fma %[[VV]]
// CHECK:       scf.yield
// CHECK:     vector.store %[[SUMS]]#0, %[[OUT]][%[[ROW]], %[[COL]]]
// CHECK-COUNT-3: vector.store %[[SUMS]]#{{[123]}}, %[[OUT]][%[[ROW]],
// CHECK-NOT: memref.load %[[OUT]]
// CHECK-NOT: vector.load %[[OUT]]
// CHECK: bufferization.to_tensor %[[OUT]]
func.func @decode_registers(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %w: tensor<64x32xf32>) -> tensor<?x32xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %d = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x32xf32> -> tensor<?x32xf32>
  return %d : tensor<?x32xf32>
}

// -----

// Tests that densify zero-fills [B, n] and stores each kept entry at its index.
// CHECK-LABEL: func.func @densify
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x64xf32>
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[OUT]] : memref<?x64xf32>)
// CHECK: scf.for
// CHECK:   scf.for
// CHECK:     %[[COL:.*]] = arith.index_cast %{{.*}} : i32 to index
// CHECK:     memref.store %{{.*}}, %[[OUT]][%{{.*}}, %[[COL]]]
// CHECK: bufferization.to_tensor %[[OUT]] restrict writable
func.func @densify(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>) -> tensor<?x64xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %d = sae.densify %z : !sae.codes<?x64xf32, k = 4> -> tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}

// -----

// Tests that mse sums squared differences in f64 and divides by the rows:
// 64 fixed ranges of rows in parallel, each summed in order in a register
// of 8 f64 lanes (the columns by vectors of 8; each lane its own sum), its
// lanes added in order at the end; then the 64 partial sums in order (the
// same result for any thread count).
// CHECK-LABEL: func.func @mse
// CHECK: %[[PART:.*]] = memref.alloc() : memref<64xf64>
// CHECK: scf.parallel (%[[C:.*]]) = (%c0) to (%c64) step (%c1)
// CHECK:   scf.for {{.*}} iter_args({{.*}}) -> (vector<8xf64>)
// CHECK:   scf.for {{.*}} step %c8 iter_args({{.*}}) -> (vector<8xf64>)
// CHECK:   vector.load %{{.*}} : memref<?x16xf32>, vector<8xf32>
// CHECK:   arith.extf %{{.*}} : vector<8xf32> to vector<8xf64>
// CHECK:   arith.subf %{{.*}} : vector<8xf64>
// CHECK:   arith.mulf
// CHECK:   %[[LANES:.*]] = vector.reduction <add>, %{{.*}} : vector<8xf64> into f64
// CHECK:   memref.store %[[LANES]], %[[PART]][%[[C]]]
// CHECK: %[[SUM:.*]] = scf.for %{{.*}} = %c0 to %c64 step
// CHECK:   memref.load %[[PART]]
// CHECK: %[[ROWS:.*]] = arith.sitofp %{{.*}} : i64 to f64
// CHECK: %[[MEAN:.*]] = arith.divf %[[SUM]], %[[ROWS]] : f64
// CHECK: arith.truncf %[[MEAN]] : f64 to f32
func.func @mse(%a: tensor<?x16xf32>, %b: tensor<?x16xf32>) -> f32 {
  %0 = sae.mse %a, %b : tensor<?x16xf32> -> f32
  return %0 : f32
}

// -----

// Tests that a sum whose rows are not whole vectors of 8 stays a scalar f64
// sum, element by element.
// CHECK-LABEL: func.func @sum_narrow
// CHECK: scf.parallel
// CHECK:   scf.for {{.*}} iter_args({{.*}}) -> (f64)
// CHECK:   scf.for {{.*}} step %c1 iter_args({{.*}}) -> (f64)
// CHECK-NOT: vector.
// CHECK: return
func.func @sum_narrow(%a: tensor<?x12xf32>) -> f32 {
  %0 = sae.sum %a {squares} : tensor<?x12xf32> -> f32
  return %0 : f32
}

// -----

// Tests that fvu computes column means, the centred sum of squares and the
// error sum, then their ratio. The column sums go by 64 fixed ranges of
// rows in parallel, each row after row into its own row of [64, d] f64,
// then those rows are added in order.
// CHECK-LABEL: func.func @fvu
// CHECK-SAME: %{{[^:]*}}: tensor<?x16xf32>, %[[T:[^:]*]]: tensor<?x16xf32>
// CHECK: %[[TB:.*]] = bufferization.to_buffer %[[T]]
// CHECK: %[[PARTS:.*]] = memref.alloc() : memref<64x16xf64>
// CHECK: scf.parallel (%[[P:.*]]) = (%c0) to (%c64)
// CHECK:   scf.for %[[R:.*]] =
// CHECK:     scf.for %[[C:.*]] = %c0 to %c16
// CHECK:       memref.load %[[TB]][%[[R]], %[[C]]]
// CHECK:       memref.store %{{.*}}, %[[PARTS]][%[[P]], %[[C]]] : memref<64x16xf64>
// CHECK: %[[PT:.*]] = bufferization.to_tensor %[[PARTS]]
// CHECK: %[[COLSUM:.*]] = linalg.generic {{.*}}iterator_types = ["reduction", "parallel"]} ins(%[[PT]] : tensor<64x16xf64>)
// CHECK: %[[COLBUF:.*]] = bufferization.to_buffer %[[COLSUM]]
// CHECK: scf.parallel
// CHECK:   vector.load %[[COLBUF]]
// CHECK: %[[DEN:.*]] = scf.for %{{.*}} = %c0 to %c64 step
// CHECK: scf.parallel
// CHECK: %[[NUM:.*]] = scf.for %{{.*}} = %c0 to %c64 step
// CHECK: %[[R:.*]] = arith.divf %[[NUM]], %[[DEN]] : f64
// CHECK: arith.truncf %[[R]] : f64 to f32
func.func @fvu(%a: tensor<?x16xf32>, %b: tensor<?x16xf32>) -> f32 {
  %0 = sae.fvu %a, %b : tensor<?x16xf32> -> f32
  return %0 : f32
}

// -----

// Tests that the column sums of a target with a dynamic width have that
// width (the target's dimension 1), not its row count.
// CHECK-LABEL: func.func @fvu_dynamic_width
// CHECK-SAME: %{{[^:]*}}: tensor<?x?xf32>, %[[T:[^:]*]]: tensor<?x?xf32>
// CHECK: %[[COLS:.*]] = tensor.dim %[[T]], %c1
// CHECK: memref.alloc(%[[COLS]]) : memref<64x?xf64>
// CHECK: tensor.empty(%[[COLS]]) : tensor<?xf64>
func.func @fvu_dynamic_width(%a: tensor<?x?xf32>, %b: tensor<?x?xf32>) -> f32 {
  %0 = sae.fvu %a, %b : tensor<?x?xf32> -> f32
  return %0 : f32
}

// -----

// Tests that random initialisation hashes (seed, stream, linear index).
// CHECK-LABEL: func.func @random
// CHECK-DAG: arith.constant -7046029254386353131 : i64
// CHECK: linalg.generic
// CHECK:   linalg.index 0
// CHECK:   linalg.index 1
// CHECK:   arith.shrui
// CHECK:   arith.xori
// CHECK:   arith.uitofp %{{.*}} : i64 to f64
// CHECK:   arith.truncf %{{.*}} : f64 to f32
func.func @random(%seed: i64) -> tensor<4x8xf32> {
  %0 = sae.random_uniform %seed {low = -1.0 : f64, high = 1.0 : f64, stream = 1 : i64} : tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

// Tests that normalize_rows divides by the row norm and keeps zero rows zero.
// CHECK-LABEL: func.func @normalize
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
// CHECK: linalg.generic
// CHECK:   arith.cmpf ole
// CHECK:   math.rsqrt
// CHECK:   arith.select
func.func @normalize(%w: tensor<8x4xf32>) -> tensor<8x4xf32> {
  %0 = sae.normalize_rows %w : tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}


// -----

// Tests that JumpReLU keeps an entry only strictly above its threshold.
// CHECK-LABEL: func.func @jump_relu
// CHECK: linalg.generic
// CHECK:   %[[ABOVE:.*]] = arith.cmpf ogt, %{{.*}}, %{{.*}} : f32
// CHECK:   arith.select %[[ABOVE]], %{{.*}}, %{{.*}} : f32
func.func @jump_relu(%x: tensor<?x64xf32>, %t: tensor<64xf32>) -> tensor<?x64xf32> {
  %0 = sae.jump_relu %x, %t : tensor<?x64xf32>, tensor<64xf32>
  return %0 : tensor<?x64xf32>
}

// -----

// Tests that the L1 of sparse codes sums |value| * ‖W_dec[index]‖ over the
// k stored entries only: a reduction over [B, k], never over n.
// CHECK-LABEL: func.func @l1_codes
// CHECK: linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<64x16xf32>, tensor<64x16xf32>)
// CHECK: %[[NORMS:.*]] = linalg.generic
// CHECK:   math.sqrt
// CHECK: linalg.generic {{.*}}iterator_types = ["reduction", "reduction"]{{.*}} ins(%{{.*}}, %{{.*}} : tensor<?x4xf32>, tensor<?x4xi32>)
// CHECK:   math.absf
// CHECK:   tensor.extract %[[NORMS]][%{{.*}}] : tensor<64xf32>
// CHECK: arith.divf
func.func @l1_codes(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %w: tensor<64x16xf32>) -> f32 {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %0 = sae.l1 %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> f32
  return %0 : f32
}

// -----

// Tests the elementwise functions: step is a compare and select, stopgrad
// disappears in the forward pass.
// CHECK-LABEL: func.func @unary
// CHECK-SAME: (%[[X:.*]]: tensor<?x8xf32>)
// CHECK: math.exp
// CHECK: arith.cmpf ogt
// CHECK: arith.select
// CHECK-NOT: stopgrad
func.func @unary(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %s = sae.stopgrad %x : tensor<?x8xf32>
  %e = sae.exp %s : tensor<?x8xf32>
  %h = sae.step %e : tensor<?x8xf32>
  return %h : tensor<?x8xf32>
}

// -----

// Tests that batch-level selection searches a threshold key with counting
// passes, then collects B*k entries row by row, and that decoding batch
// codes scatters each entry's decoder row into its own row. The three
// counting passes (11, 11 and 10 bits of the key) run over 16 ranges of
// rows in parallel, 2 histograms of up to 2048 bins each (a lane counts
// into copy lane mod 2), with keys and bins in vectors of 16: the first
// pass counts all 16 lanes (bins: the key's top 11 bits), the later ones
// only the lanes with the chosen prefix, by the bits of the comparison's
// mask.
// CHECK-LABEL: func.func @batch_topk
// CHECK: %[[VALS:.*]] = memref.alloc(%{{.*}}) : memref<?xf32>
// CHECK: memref.alloc(%{{.*}}) : memref<?xi32>
// CHECK: %[[ROWS:.*]] = memref.alloc(%{{.*}}) : memref<?xi32>
// CHECK: %[[HIST:.*]] = memref.alloc() : memref<32x2048xi64>
// CHECK: scf.parallel (%{{.*}}) = (%{{.*}}) to (%c16)
// CHECK:   vector.load %{{.*}} : memref<?x64xf32>, vector<16xf32>
// CHECK:   arith.shrui %{{.*}}, %cst{{.*}} : vector<16xi32>
// The first pass counts the zero keys (0x80000000) of a block at once, in
// the zero key's bin (1024); the other keys one by one.
// CHECK:   %[[ZERO:.*]] = arith.cmpi eq, %{{.*}}, %cst{{.*}} : vector<16xi32>
// CHECK:   %[[ZBITS:.*]] = vector.bitcast %[[ZERO]] : vector<16xi1> to vector<1xi16>
// CHECK:   math.ctpop
// CHECK:   memref.load %[[HIST]][%{{.*}}, %c1024]
// CHECK:   memref.store %{{.*}}, %[[HIST]][%{{.*}}, %c1024]
// CHECK:   arith.xori %[[ZERO]], %cst{{.*}} : vector<16xi1>
// CHECK:   scf.while
// CHECK:     math.cttz
// CHECK:     vector.extract %{{.*}}[%{{.*}}] : i32 from vector<16xi32>
// CHECK:     memref.store %{{.*}}, %[[HIST]]
// CHECK: scf.parallel
// CHECK:   %[[MATCH:.*]] = arith.cmpi eq, %{{.*}}, %{{.*}} : vector<16xi32>
// CHECK:   vector.reduction <or>, %[[MATCH]]
// CHECK:   vector.bitcast %[[MATCH]] : vector<16xi1> to vector<1xi16>
// CHECK:   scf.while
// CHECK:     math.cttz
// CHECK:     vector.extract %{{.*}}[%{{.*}}] : i32 from vector<16xi32>
// CHECK:     arith.remui %{{.*}}, %c2 : index
// CHECK:     memref.store %{{.*}}, %[[HIST]]
// CHECK: scf.for %{{.*}} = %c0 to %c2048 step %c1 iter_args
// CHECK: scf.parallel (%{{.*}}) = (%{{.*}}) to (%c16)
// CHECK:   math.cttz
// CHECK: scf.for %{{.*}} = %c0 to %c1024 step %c1 iter_args
// CHECK-NOT: scf.parallel (%{{.*}}) = (%{{.*}}) to (%c16)
// CHECK: arith.bitcast %{{.*}} : f32 to i32
// CHECK: bufferization.to_tensor %[[VALS]] restrict writable
// CHECK: %[[OUT:.*]] = memref.alloc(%{{.*}}) : memref<?x16xf32>
// CHECK: scf.for %[[E:.*]] =
// CHECK:   %[[I:.*]] = arith.index_cast %{{.*}} : i32 to index
// CHECK:   %[[R:.*]] = arith.index_cast %{{.*}} : i32 to index
// CHECK:   scf.for %[[J:.*]] =
// CHECK:     vector.load %{{.*}}[%[[I]], %[[J]]] : memref<64x16xf32>, vector<8xf32>
// CHECK:     vector.store %{{.*}}, %[[OUT]][%[[R]], %[[J]]] : memref<?x16xf32>, vector<8xf32>
func.func @batch_topk(%x: tensor<?x64xf32>, %w: tensor<64x16xf32>) -> tensor<?x16xf32> {
  %z = sae.batch_topk %x : tensor<?x64xf32> -> !sae.codes<?x64xf32, k = 4, batch>
  %d = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4, batch>, tensor<64x16xf32> -> tensor<?x16xf32>
  return %d : tensor<?x16xf32>
}

// -----

// Tests sae.matvec: one reduction per weight row into a zero-filled [d],
// with reassociable adds (so that LLVM vectorises each row's dot product).
// CHECK-DAG: #[[IJ:.*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: #[[J:.*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-DAG: #[[I:.*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-LABEL: func.func @matvec
// CHECK: %[[INIT:.*]] = linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : tensor<16xf32>)
// CHECK: linalg.generic {indexing_maps = [#[[IJ]], #[[J]], #[[I]]], iterator_types = ["parallel", "reduction"]} ins(%arg0, %arg1 : tensor<16x64xf32>, tensor<64xf32>) outs(%[[INIT]] : tensor<16xf32>)
// CHECK: arith.mulf %{{.*}}, %{{.*}} fastmath<reassoc,contract> : f32
// CHECK: arith.addf %{{.*}}, %{{.*}} fastmath<reassoc,contract> : f32
func.func @matvec(%w: tensor<16x64xf32>, %v: tensor<64xf32>) -> tensor<16xf32> {
  %0 = sae.matvec %w, %v : tensor<16x64xf32>, tensor<64xf32> -> tensor<16xf32>
  return %0 : tensor<16xf32>
}

// -----

// Tests an outer product that accumulates into an init: the entries
// sorted by latent (a counting sort, without a branch) in 8 parts of the
// rows, in parallel: each part counts its nonzero entries per latent, the
// counts become places latent by latent and part by part, and each part
// moves its entries there (its zero entries all to one place of its own,
// 16 apart, after the nonzero ones). Then latents in parallel, each row summed in registers from the
// init's row through the latent's entries and stored once (no copy of the
// init, no zero fill).
// CHECK-LABEL: func.func @outer_into
// CHECK: %[[AT:.*]] = memref.alloc() : memref<8x65xindex>
// CHECK: linalg.fill ins(%c0 : index) outs(%[[AT]] : memref<8x65xindex>)
// CHECK: scf.parallel
// CHECK: %[[NZ:.*]] = arith.cmpf une, %{{.*}}, %{{.*}} : f32
// CHECK: %[[BUCKET:.*]] = arith.select %[[NZ]], %{{.*}}, %c64 : index
// CHECK: memref.load %[[AT]][%{{.*}}, %[[BUCKET]]]
// CHECK-NOT: scf.if
// CHECK: %[[START:.*]] = memref.alloc() : memref<65xindex>
// CHECK: %[[NONZERO:.*]] = scf.for
// CHECK: scf.for
// CHECK: memref.store %{{.*}}, %[[AT]]
// CHECK: memref.store %[[NONZERO]], %[[START]][%c64]
// CHECK: scf.for
// CHECK: arith.muli %{{.*}}, %c16
// CHECK: memref.store %{{.*}}, %[[AT]][%{{.*}}, %c64]
// CHECK: %[[TOTAL:.*]] = arith.addi %[[NONZERO]], %c128
// CHECK: %[[ROWS:.*]] = memref.alloc(%[[TOTAL]]) : memref<?xindex>
// CHECK: %[[VALS:.*]] = memref.alloc(%[[TOTAL]]) : memref<?xf32>
// CHECK: scf.parallel
// CHECK-NOT: scf.if
// CHECK: %[[P:.*]] = memref.load %[[AT]]
// CHECK-NOT: scf.if
// CHECK: memref.store %{{.*}}, %[[ROWS]][%[[P]]]
// CHECK: memref.store %{{.*}}, %[[VALS]][%[[P]]]
// CHECK: %[[INIT:.*]] = bufferization.to_buffer %arg2 read_only
// CHECK: %[[OUT:.*]] = memref.alloc() : memref<64x16xf32>
// CHECK-NOT: linalg.copy
// CHECK: scf.parallel (%[[J:.*]]) =
// CHECK: %[[ACC:.*]] = vector.load %[[INIT]][%[[J]], %{{.*}}] : memref<64x16xf32>, vector<8xf32>
// CHECK: %[[SUM:.*]] = scf.for {{.*}} iter_args(%{{.*}} = %[[ACC]]) -> (vector<8xf32>)
// CHECK: memref.load %[[ROWS]]
// CHECK: memref.load %[[VALS]]
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: vector.store %[[SUM]], %[[OUT]][%[[J]], %{{.*}}]
// CHECK: bufferization.to_tensor %[[OUT]]
func.func @outer_into(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %init: tensor<64x16xf32>, %x: tensor<?x16xf32>) -> tensor<64x16xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %0 = sae.outer %z, %x into %init : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<64x16xf32>
  return %0 : tensor<64x16xf32>
}

// -----

// Tests the column sums of codes: 8 parts of the rows in parallel, each
// adding its entries into its own row of an [8, n] buffer, then the rows
// added in order (parts, then latents: the same sums whatever the threads).
// Zero entries are skipped (adding ±0 to a sum that starts at +0 changes
// nothing; AuxK's slots left over are zeros at one latent).
// CHECK-LABEL: func.func @column_sum_codes
// CHECK: %[[PARTS:.*]] = memref.alloc() : memref<8x64xf32>
// CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[PARTS]] : memref<8x64xf32>)
// CHECK: scf.parallel (%[[PART:.*]]) = (%c0) to (%c8) step (%c1)
// CHECK: %[[V:.*]] = memref.load
// CHECK: %[[NZ:.*]] = arith.cmpf une, %[[V]], %{{.*}} : f32
// CHECK: scf.if %[[NZ]] {
// CHECK: %[[OLD:.*]] = memref.load %[[PARTS]][%[[PART]], %[[LATENT:.*]]] : memref<8x64xf32>
// CHECK: %[[NEW:.*]] = arith.addf %[[OLD]], %[[V]] : f32
// CHECK: memref.store %[[NEW]], %[[PARTS]][%[[PART]], %[[LATENT]]]
// CHECK: %[[T:.*]] = bufferization.to_tensor %[[PARTS]]
// CHECK: linalg.generic {{.*}} iterator_types = ["reduction", "parallel"]} ins(%[[T]] : tensor<8x64xf32>)
func.func @column_sum_codes(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>) -> tensor<64xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %0 = sae.column_sum %z : !sae.codes<?x64xf32, k = 4> -> tensor<64xf32>
  return %0 : tensor<64xf32>
}

// -----

// Tests a transposed outer product ([d, n] = the encoder's gradient layout)
// written without an [n, d] intermediate: blocks of 16 latents in parallel,
// their rows summed into a 16 × d tile on the stack, then stored into the
// result's columns by 8 × 8 blocks (eight row loads, shuffles, eight
// streaming stores), two blocks per 8 rows of the result.
// CHECK-LABEL: func.func @outer_transposed
// CHECK: %[[OUT:.*]] = memref.alloc() {alignment = 64 : i64} : memref<32x64xf32>
// CHECK: scf.parallel (%[[J0:.*]]) = (%c0) to (%c64) step (%c16)
// CHECK: %[[TILE:.*]] = memref.alloca() : memref<16x32xf32>
// CHECK: scf.for
// CHECK: scf.for
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: vector.store %{{.*}}, %[[TILE]]
// CHECK-COUNT-8: vector.load %[[TILE]]
// CHECK: vector.shuffle
// CHECK: vector.store %{{.*}}, %[[OUT]][%{{.*}}, %[[J0]]] {alignment = 32 : i64, nontemporal = true}
// CHECK-COUNT-8: vector.load %[[TILE]]
// CHECK-NOT: vector.store %{{.*}}, %[[OUT]][%{{.*}}, %[[J0]]]
// CHECK: vector.store %{{.*}}, %[[OUT]][%{{.*}}, %{{.*}}] {alignment = 32 : i64, nontemporal = true}
// CHECK-NOT: sae.transpose
// CHECK: bufferization.to_tensor %[[OUT]]
func.func @outer_transposed(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %x: tensor<?x32xf32>) -> tensor<32x64xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %0 = sae.outer %z, %x {transposed} : !sae.codes<?x64xf32, k = 4>, tensor<?x32xf32> -> tensor<32x64xf32>
  return %0 : tensor<32x64xf32>
}

// -----

// Tests the entries of two codes side by side (tensor.concat of [B, k]
// values): one generic whose slot j reads the first source below its width
// and the second above it, with indices clamped in range.
// CHECK-LABEL: func.func @concat
// CHECK: linalg.generic {{.*}} outs(%{{.*}} : tensor<?x6xf32>)
// CHECK: %[[COL:.*]] = linalg.index 1 : index
// CHECK: tensor.extract %arg0
// CHECK: tensor.extract %arg1
// CHECK: %[[HIGH:.*]] = arith.cmpi uge, %[[COL]], %c4
// CHECK: arith.select %[[HIGH]]
// CHECK-NOT: tensor.concat
func.func @concat(%a: tensor<?x4xf32>, %b: tensor<?x2xf32>) -> tensor<?x6xf32> {
  %0 = tensor.concat dim(1) %a, %b : (tensor<?x4xf32>, tensor<?x2xf32>) -> tensor<?x6xf32>
  return %0 : tensor<?x6xf32>
}

// -----

// Tests Adam on a weight whose gradient is a scaled transposed outer
// product (the encoder's, clipped): the product itself is computed only in
// the branch that takes its norm (scf.if, clipping on); Adam's pass sums
// the gradient from the codes' entries block by block (16 rows × 256
// columns: a tile, its 8 × 8 transposes, Adam along the block's rows) and
// updates W, M and V, the forall's shared outputs, without storing it.
// CHECK-LABEL: func.func @adam_outer_transposed
// CHECK: scf.if
// CHECK: memref.alloc() : memref<16x512xf32>
// CHECK: } else {
// CHECK-NOT: memref.alloc() : memref<16x512xf32>
// CHECK: scf.forall (%{{.*}}) in (2) shared_outs(%{{.*}} = %arg3, %{{.*}} = %arg4, %{{.*}} = %arg5)
// CHECK: %[[TILE:.*]] = memref.alloca() : memref<256x16xf32>
// CHECK: scf.for
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: vector.store %{{.*}}, %[[TILE]]
// CHECK: %[[BLOCK:.*]] = memref.alloca() : memref<16x256xf32>
// CHECK: vector.load %[[TILE]]
// CHECK: vector.shuffle
// CHECK: vector.store %{{.*}}, %[[BLOCK]]
// CHECK: %[[G:.*]] = vector.load %[[BLOCK]]
// CHECK: arith.mulf %[[G]], %{{.*}} : vector<8xf32>
// CHECK: math.sqrt
// CHECK-COUNT-3: vector.transfer_write
// CHECK-COUNT-3: tensor.parallel_insert_slice
// CHECK-NOT: memref.alloc() : memref<16x512xf32>
// CHECK-NOT: sae.
func.func @adam_outer_transposed(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %x: tensor<?x16xf32>, %w: tensor<16x512xf32>, %m: tensor<16x512xf32>, %s: tensor<16x512xf32>, %c: f32, %h: f32, %clipOn: i1) -> (tensor<16x512xf32>, tensor<16x512xf32>, tensor<16x512xf32>, f32) {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x512xf32, k = 4>
  %g = sae.outer %z, %x {transposed} : !sae.codes<?x512xf32, k = 4>, tensor<?x16xf32> -> tensor<16x512xf32>
  %norm = scf.if %clipOn -> (f32) {
    %ss = sae.sum %g {squares} : tensor<16x512xf32> -> f32
    scf.yield %ss : f32
  } else {
    scf.yield %c : f32
  }
  %gs = sae.scale %g, %c : tensor<16x512xf32>, f32
  %p2, %m2, %v2 = sae.adam %w, %gs, %m, %s, %h, %h, %h, %h, %h, %h : tensor<16x512xf32>
  return %p2, %m2, %v2, %norm : tensor<16x512xf32>, tensor<16x512xf32>, tensor<16x512xf32>, f32
}

// -----

// Tests the same update when the transposed product accumulates into the
// transpose of placed rows (AuxK's part of the encoder's gradient, over the
// dead latents): a latent's tile row starts from the row its slot names,
// or from zero where the slot is negative; neither the [16, 512] gradient
// nor a [512, 16] matrix of the placed rows is written.
// CHECK-LABEL: func.func @adam_outer_transposed_into_placed
// CHECK-NOT: memref.alloc() : memref<16x512xf32>
// CHECK-NOT: memref.alloc() : memref<512x16xf32>
// CHECK: scf.forall
// CHECK: %[[TILE:.*]] = memref.alloca() : memref<256x16xf32>
// CHECK: %[[S:.*]] = memref.load %{{.*}}[%{{.*}}] : memref<512xi32>
// CHECK: %[[PLACED:.*]] = arith.cmpi sge, %[[S]], %{{.*}} : i32
// CHECK: scf.if %[[PLACED]] -> (vector<8xf32>, vector<8xf32>)
// CHECK: %[[AT:.*]] = arith.index_cast %[[S]] : i32 to index
// CHECK: vector.load %{{.*}}[%[[AT]], %{{.*}}] : memref<?x16xf32>, vector<8xf32>
// CHECK: } else {
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: vector.store %{{.*}}, %[[TILE]]
// CHECK: math.sqrt
// CHECK-NOT: memref.alloc() : memref<16x512xf32>
// CHECK-NOT: memref.alloc() : memref<512x16xf32>
// CHECK-NOT: sae.
func.func @adam_outer_transposed_into_placed(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %x: tensor<?x16xf32>, %rows: tensor<?x16xf32>, %slot: tensor<512xi32>, %w: tensor<16x512xf32>, %m: tensor<16x512xf32>, %s: tensor<16x512xf32>, %h: f32) -> (tensor<16x512xf32>, tensor<16x512xf32>, tensor<16x512xf32>) {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x512xf32, k = 4>
  %placed = sae.place_rows %rows, %slot : tensor<?x16xf32>, tensor<512xi32> -> tensor<512x16xf32>
  %init = sae.transpose %placed : tensor<512x16xf32> -> tensor<16x512xf32>
  %g = sae.outer %z, %x into %init {transposed} : !sae.codes<?x512xf32, k = 4>, tensor<?x16xf32> -> tensor<16x512xf32>
  %p2, %m2, %v2 = sae.adam %w, %g, %m, %s, %h, %h, %h, %h, %h, %h : tensor<16x512xf32>
  return %p2, %m2, %v2 : tensor<16x512xf32>, tensor<16x512xf32>, tensor<16x512xf32>
}

// -----

// Tests a transposed outer product into an init where nothing fuses it:
// the rows-layout product into the init's transpose (a transpose of a
// transpose: the rows themselves), then transposed.
// CHECK-LABEL: func.func @outer_transposed_into
// CHECK-SAME: %[[INIT:[^:]*]]: tensor<64x16xf32>
// CHECK: %[[IB:.*]] = bufferization.to_buffer %[[INIT]]
// CHECK: scf.parallel
// CHECK: vector.load %[[IB]]
// CHECK: arith.mulf
// CHECK: memref.alloc() : memref<16x64xf32>
// CHECK-NOT: sae.
func.func @outer_transposed_into(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %x: tensor<?x16xf32>, %rows: tensor<64x16xf32>) -> tensor<16x64xf32> {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %init = sae.transpose %rows : tensor<64x16xf32> -> tensor<16x64xf32>
  %g = sae.outer %z, %x into %init {transposed} : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<16x64xf32>
  return %g : tensor<16x64xf32>
}

// -----

// Tests the decoder's update under the unit-norm rule with a gradient that
// is an outer product of codes: each row of the gradient is summed from
// its latent's entries into a row on the stack, which the projection and
// Adam read; the [64, 16] gradient is never stored.
// CHECK-LABEL: func.func @unit_norm_adam_outer
// CHECK-NOT: memref.alloc() : memref<64x16xf32>
// CHECK: scf.forall
// CHECK: %[[ROW:.*]] = memref.alloca() : memref<16xf32>
// CHECK: scf.for
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: vector.store %{{.*}}, %[[ROW]]
// CHECK: vector.load %[[ROW]]
// CHECK: vector.reduction <add>
// CHECK: vector.load %[[ROW]]
// CHECK: math.sqrt
// CHECK: math.rsqrt
// CHECK-NOT: memref.alloc() : memref<64x16xf32>
// CHECK-NOT: sae.
func.func @unit_norm_adam_outer(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %r: tensor<?x16xf32>, %w: tensor<64x16xf32>, %m: tensor<64x16xf32>, %s: tensor<64x16xf32>, %h: f32) -> (tensor<64x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>) {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %g = sae.outer %z, %r : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<64x16xf32>
  %pg = sae.project_rows %g, %w : tensor<64x16xf32>
  %p2, %m2, %v2 = sae.adam %w, %pg, %m, %s, %h, %h, %h, %h, %h, %h : tensor<64x16xf32>
  %n = sae.normalize_rows %p2 : tensor<64x16xf32>
  return %n, %m2, %v2 : tensor<64x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>
}

// -----

// Tests the same update when the outer product accumulates into placed
// rows (AuxK's decoder gradient over the dead latents): each row's sums
// start from the row its slot names, or from zero where the slot is
// negative, read in the update itself; no [64, 16] matrix is written for
// the placed rows either.
// CHECK-LABEL: func.func @unit_norm_adam_outer_into_placed
// CHECK-NOT: memref.alloc() : memref<64x16xf32>
// CHECK: scf.forall
// CHECK: %[[S:.*]] = memref.load %{{.*}}[%{{.*}}] : memref<64xi32>
// CHECK: %[[PLACED:.*]] = arith.cmpi sge, %[[S]], %{{.*}} : i32
// CHECK: scf.if %[[PLACED]] -> (vector<8xf32>)
// CHECK: %[[AT:.*]] = arith.index_cast %[[S]] : i32 to index
// CHECK: vector.load %{{.*}}[%[[AT]], %{{.*}}] : memref<?x16xf32>, vector<8xf32>
// CHECK: } else {
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: math.rsqrt
// CHECK-NOT: memref.alloc() : memref<64x16xf32>
// CHECK-NOT: sae.
func.func @unit_norm_adam_outer_into_placed(%v: tensor<?x4xf32>, %i: tensor<?x4xi32>, %r: tensor<?x16xf32>, %rows: tensor<?x16xf32>, %slot: tensor<64xi32>, %w: tensor<64x16xf32>, %m: tensor<64x16xf32>, %s: tensor<64x16xf32>, %h: f32) -> (tensor<64x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>) {
  %z = sae.make_codes %v, %i : tensor<?x4xf32>, tensor<?x4xi32> -> !sae.codes<?x64xf32, k = 4>
  %placed = sae.place_rows %rows, %slot : tensor<?x16xf32>, tensor<64xi32> -> tensor<64x16xf32>
  %g = sae.outer %z, %r into %placed : !sae.codes<?x64xf32, k = 4>, tensor<?x16xf32> -> tensor<64x16xf32>
  %p2, %m2, %v2 = sae.adam %w, %g, %m, %s, %h, %h, %h, %h, %h, %h : tensor<64x16xf32>
  %n = sae.normalize_rows %p2 : tensor<64x16xf32>
  return %n, %m2, %v2 : tensor<64x16xf32>, tensor<64x16xf32>, tensor<64x16xf32>
}
