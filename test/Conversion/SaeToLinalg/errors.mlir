// RUN: sae-opt %s -convert-sae-to-linalg -verify-diagnostics

// Tests that codes from outside a sparsity operator are a clear error.
func.func @opaque_codes(%z: !sae.codes<?x64xf32, k = 4>, %w: tensor<64x16xf32>) -> tensor<?x16xf32> {
  // expected-error@+1 {{'sae.decode' could not be lowered to linalg}}
  %d = sae.decode %z, %w : !sae.codes<?x64xf32, k = 4>, tensor<64x16xf32> -> tensor<?x16xf32>
  return %d : tensor<?x16xf32>
}
