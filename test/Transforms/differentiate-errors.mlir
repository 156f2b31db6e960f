// RUN: sae-opt %s -split-input-file -sae-differentiate -verify-diagnostics
// RUN: sae-opt %s -split-input-file -sae-differentiate=drop-untrainable=true 2>&1 | FileCheck %s --check-prefix=DROP

// Tests that an op without a gradient rule on the path from a parameter
// to the loss is an error naming it; with drop-untrainable, a warning, the
// entry point is removed and the description records why.
module attributes {sae.describe = "{\"entry_points\":[\"sae_forward\",\"sae_gradient\"]}"} {
  func.func @gradient(%x: tensor<?x16xf32>, %w: tensor<16x16xf32>) -> tensor<16x16xf32> attributes {sae.entry = "gradient"} {
    %y = sae.linear %x, %w : tensor<?x16xf32>, tensor<16x16xf32> -> tensor<?x16xf32>
    // expected-error@+1 {{'sae.geometric_median' has no gradient rule yet, but the loss depends on trainable parameters through it}}
    %m = sae.geometric_median %y {iterations = 3 : i64} : tensor<?x16xf32> -> tensor<16xf32>
    %c = sae.bias_sub %x, %m : tensor<?x16xf32>, tensor<16xf32>
    %l = sae.mse %c, %x : tensor<?x16xf32> -> f32
    %g = sae.gradient %l wrt %w : f32, tensor<16x16xf32> -> tensor<16x16xf32>
    return %g : tensor<16x16xf32>
  }
}
// DROP: warning: the model cannot be trained: 'sae.geometric_median' has no gradient rule yet
// DROP: module attributes {sae.describe = "{\22entry_points\22:[\22sae_forward\22],\22untrainable\22:\22'sae.geometric_median' has no gradient rule
// DROP-NOT: func.func @gradient
