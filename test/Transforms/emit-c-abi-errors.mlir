// RUN: sae-opt %s -split-input-file -sae-emit-c-abi -verify-diagnostics

// Tests that a module without a description is rejected.
// expected-error@+1 {{module has no 'sae.describe' attribute; it is set by saec's MLIRGen}}
module {
}

// -----

// Tests that only the batch dimension may be dynamic at the ABI.
module attributes {sae.describe = "{}"} {
  // expected-error@+1 {{only the leading (batch) dimension may be dynamic in an entry point, got 'tensor<4x?xf32>'}}
  func.func @bad(%x: tensor<4x?xf32>) -> tensor<4x?xf32> attributes {sae.entry = "bad"} {
    return %x : tensor<4x?xf32>
  }
}
