// RUN: sae-opt --sae-shorten-buffer-lifetimes --split-input-file %s | FileCheck %s

// Tests that a buffer is freed right after the op of the block that last
// uses it (here through a view, inside a loop), and that the next buffer
// is allocated only where it is first written: the two are never live at
// once.
// CHECK-LABEL: func.func @sequence
// CHECK: %[[A:.*]] = memref.alloc() : memref<64xf32>
// CHECK-NEXT: linalg.fill {{.*}} outs(%[[A]]
// CHECK-NEXT: %[[V:.*]] = memref.subview %[[A]]
// CHECK-NEXT: scf.for
// CHECK: memref.load %[[V]]
// CHECK: }
// CHECK-NEXT: memref.dealloc %[[A]]
// CHECK-NEXT: %[[B:.*]] = memref.alloc() : memref<64xf32>
// CHECK-NEXT: linalg.fill {{.*}} outs(%[[B]]
// CHECK-NEXT: memref.copy %[[B]], %arg0
// CHECK-NEXT: memref.dealloc %[[B]]
// CHECK-NEXT: return
func.func @sequence(%out: memref<64xf32>, %acc: memref<f32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
  %one = arith.constant 1.0 : f32
  %a = memref.alloc() : memref<64xf32>
  %b = memref.alloc() : memref<64xf32>
  linalg.fill ins(%one : f32) outs(%a : memref<64xf32>)
  %v = memref.subview %a[8] [8] [1] : memref<64xf32> to memref<8xf32, strided<[1], offset: 8>>
  scf.for %i = %c0 to %c8 step %c1 {
    %x = memref.load %v[%i] : memref<8xf32, strided<[1], offset: 8>>
    memref.store %x, %acc[] : memref<f32>
  }
  linalg.fill ins(%one : f32) outs(%b : memref<64xf32>)
  memref.copy %b, %out : memref<64xf32> to memref<64xf32>
  memref.dealloc %a : memref<64xf32>
  memref.dealloc %b : memref<64xf32>
  return
}

// -----

// Tests that the base buffer of an scf.if whose branches both allocate is
// freed after the if's result is last read, with its metadata op.
// CHECK-LABEL: func.func @branches
// CHECK: %[[R:.*]] = scf.if
// CHECK: memref.copy %[[R]], %arg1
// CHECK-NEXT: %[[BASE:[a-z_0-9]+]], %{{.*}} = memref.extract_strided_metadata %[[R]]
// CHECK-NEXT: memref.dealloc %[[BASE]]
// CHECK-NEXT: %[[C:.*]] = memref.alloc() : memref<16xf32>
func.func @branches(%cond: i1, %out: memref<16xf32>, %out2: memref<16xf32>) {
  %r = scf.if %cond -> (memref<16xf32>) {
    %x = memref.alloc() : memref<16xf32>
    scf.yield %x : memref<16xf32>
  } else {
    %y = memref.alloc() : memref<16xf32>
    scf.yield %y : memref<16xf32>
  }
  memref.copy %r, %out : memref<16xf32> to memref<16xf32>
  %c = memref.alloc() : memref<16xf32>
  memref.copy %c, %out2 : memref<16xf32> to memref<16xf32>
  %base, %offset, %size, %stride = memref.extract_strided_metadata %r : memref<16xf32> -> memref<f32>, index, index, index
  memref.dealloc %base : memref<f32>
  memref.dealloc %c : memref<16xf32>
  return
}

// -----

// Tests that a buffer that may be reached in ways the pass does not follow
// keeps its dealloc: passed to a call, carried by a loop, yielded by an if
// with a branch that does not allocate (one yields an argument, one a view
// of it), given as an address.
// CHECK-LABEL: func.func @escapes
// CHECK: memref.copy
// CHECK-NEXT: memref.copy
// CHECK-NEXT: memref.copy
// CHECK-NEXT: %[[BASE2:[a-z_0-9]+]], %{{.*}} = memref.extract_strided_metadata
// CHECK-NEXT: %[[BASE:[a-z_0-9]+]], %{{.*}} = memref.extract_strided_metadata
// CHECK-NEXT: memref.dealloc %{{.*}}
// CHECK-NEXT: memref.dealloc %[[BASE]]
// CHECK-NEXT: memref.dealloc %[[BASE2]]
// CHECK-NEXT: memref.dealloc %{{.*}}
// CHECK-NEXT: memref.dealloc %{{.*}}
// CHECK-NEXT: return
func.func private @use(memref<16xf32>)
func.func @escapes(%cond: i1, %n: index, %in: memref<16xf32>, %out: memref<16xf32>) -> index {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %called = memref.alloc() : memref<16xf32>
  func.call @use(%called) : (memref<16xf32>) -> ()
  %carried = memref.alloc() : memref<16xf32>
  %l = scf.for %i = %c0 to %n step %c1 iter_args(%x = %carried) -> (memref<16xf32>) {
    scf.yield %x : memref<16xf32>
  }
  %r = scf.if %cond -> (memref<16xf32>) {
    %x = memref.alloc() : memref<16xf32>
    scf.yield %x : memref<16xf32>
  } else {
    scf.yield %in : memref<16xf32>
  }
  %r2 = scf.if %cond -> (memref<16xf32>) {
    %x = memref.alloc() : memref<16xf32>
    scf.yield %x : memref<16xf32>
  } else {
    %v = memref.cast %in : memref<16xf32> to memref<16xf32>
    scf.yield %v : memref<16xf32>
  }
  %address = memref.alloc() : memref<16xf32>
  %p = memref.extract_aligned_pointer_as_index %address : memref<16xf32> -> index
  memref.copy %l, %out : memref<16xf32> to memref<16xf32>
  memref.copy %r, %out : memref<16xf32> to memref<16xf32>
  memref.copy %r2, %out : memref<16xf32> to memref<16xf32>
  %base2, %offset2, %size2, %stride2 = memref.extract_strided_metadata %r2 : memref<16xf32> -> memref<f32>, index, index, index
  %base, %offset, %size, %stride = memref.extract_strided_metadata %r : memref<16xf32> -> memref<f32>, index, index, index
  memref.dealloc %called : memref<16xf32>
  memref.dealloc %base : memref<f32>
  memref.dealloc %base2 : memref<f32>
  memref.dealloc %carried : memref<16xf32>
  memref.dealloc %address : memref<16xf32>
  return %p : index
}
