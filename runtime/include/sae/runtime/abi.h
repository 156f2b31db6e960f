/*===- abi.h - The C ABI that every saec-generated library implements -----===*
 *
 * saec compiles a `.sae` spec into a shared library that exports the symbols
 * declared here. The compiler's ABI emitter
 * (dialect/lib/Transforms/EmitCABI.cpp) models this header one to one: change
 * one, change the other, and bump SAE_ABI_VERSION.
 *
 * Conventions
 *  - Every tensor is a dense row-major float32 (or int32 for indices) buffer
 *    owned by the caller. `batch` is the number of rows B (B >= 1, except
 *    for sae_init, see there).
 *  - `inputs` is an array of pointers, one per input of the spec, in the
 *    order of the "inputs" list of sae_model_describe(); each input is
 *    [B, dim]. The first input is the one the model reconstructs (x); others
 *    are auxiliary (e.g. the downstream gradient of grad_topk).
 *  - `params` is an array of pointers, one per parameter, in the order of the
 *    "params" list of sae_model_describe(). Shapes are those listed there.
 *  - Functions return 0 on success. Generated code never aborts the process;
 *    argument validation (B >= 1, buffer sizes, index ranges) is the caller's
 *    job.
 *  - Entry points allocate their work buffers and free them before
 *    returning (a training step at d = 768, n = 16384 uses hundreds of
 *    MiB). Blocks of 128 KiB and more come from the library's own heap,
 *    which keeps freed memory for the next call (runtime/src/cpu/
 *    workspace.c): a caller that calls an entry point again and again does
 *    not fault its pages in on every call, whatever its malloc settings.
 *    The memory kept is about the most that one call has had in use at
 *    once (after a large call, smaller ones may keep its pages); a free
 *    range that about five training steps' worth of allocations have not
 *    touched is given back to the kernel, and all of it when the library
 *    is unloaded.
 *
 * Sparse codes come in two layouts (the "codes.layout" of the description):
 *  - "rows":  every row holds exactly k (value, latent index) pairs, ordered
 *             by decreasing value (unused slots, if an operator leaves any,
 *             hold value 0): values[B, k] float32, indices[B, k] int32.
 *  - "batch": the batch holds B*k entries in all, a variable number per row
 *             (batch_topk, mutual_choice, feature_choice): values[B*k],
 *             indices[B*k] and rows[B*k] (the row of each entry), sorted by
 *             row, then by decreasing value.
 * Both decode by gathering one decoder row per entry (work B*k*d).
 *
 * This header is C11 and includes nothing from MLIR or LLVM.
 *===----------------------------------------------------------------------===*/
#ifndef SAE_RUNTIME_ABI_H
#define SAE_RUNTIME_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Bumped on every incompatible change of the symbols below or of the JSON
/// schema returned by sae_model_describe().
#define SAE_ABI_VERSION 3u

/// Returns SAE_ABI_VERSION as it was when the library was compiled.
typedef uint32_t (*sae_abi_version_fn)(void);

/// Returns a NUL-terminated JSON document describing the model (static
/// storage, never freed). Schema (version 3):
///   {"abi_version": 3, "name": "topk_gpt2", "source": "examples/topk.sae",
///    "dims": {"d": 768, "n": 16384},
///    "input": {"name": "x", "dim": 768},            (the first input)
///    "inputs": [{"name": "x", "dim": 768}, ...],    (ABI order)
///    "latents": 16384,
///    "codes": {"kind": "sparse", "layout": "rows", "k": 32}
///             or {"kind": "sparse", "layout": "batch", "k": 32}
///             or {"kind": "dense"},
///    "encoder": {"op": "topk", "k": 32}             (op-specific hyperparameters),
///    "loss": "fvu",                                 (root function of the total)
///    "loss_terms": ["recon", "sparsity"],           (see sae_forward_fn)
///    "init_needs_data": false,                      (see sae_init_fn)
///    "stochastic": false,                           (forward uses its seed)
///    "params": [{"name": "W_enc", "shape": [768, 16384], "dtype": "float32",
///                "init": "kaiming_uniform", "trainable": true}, ...],
///                                                   (state: "trainable": false)
///    "train": {"lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "eps": 6.25e-10,
///              "clip": 0, "lr_warmup": 0, "lr_decay": "none",
///              "sparsity_warmup": 0, "unit_norm": "W_dec" or null,
///              "batch": 4096, "normalize": "none" or "expected_norm"},
///                                                   (the spec's train section
///                                                    with its defaults)
///    "entry_points": ["sae_init", "sae_encode_dense", ...],
///    "cfg": {...},                                  (SAELens cfg.json fields)
///    "target": {"triple": "x86_64-unknown-linux-gnu", "cpu": "znver3",
///               "required_features": ["avx2", "fma"]}}
/// A loader must refuse the library when the host CPU lacks one of
/// "required_features" (names as understood by __builtin_cpu_supports).
typedef const char *(*sae_model_describe_fn)(void);

/// Fills every parameter from its initialiser, deterministically from `seed`.
/// Data-dependent initialisers (data_mean, geometric_median) read the sample
/// `x` [batch, dim] of the first input; when "init_needs_data" is false,
/// `batch` may be 0 and `x` NULL.
typedef int32_t (*sae_init_fn)(uint64_t seed, int64_t batch, const float *x,
                               float *const *params);

/// inputs -> codes[B, n], dense (zeros where a latent is inactive). This is
/// the inference form of the encoder (no sampling).
typedef int32_t (*sae_encode_dense_fn)(int64_t batch,
                                       const float *const *inputs,
                                       float *const *params, float *codes);

/// inputs -> values[B, k], indices[B, k]. Models with layout "rows" only.
typedef int32_t (*sae_encode_sparse_fn)(int64_t batch,
                                        const float *const *inputs,
                                        float *const *params, float *values,
                                        int32_t *indices);

/// inputs -> values[B*k], indices[B*k], rows[B*k]. Layout "batch" only.
typedef int32_t (*sae_encode_batch_fn)(int64_t batch,
                                       const float *const *inputs,
                                       float *const *params, float *values,
                                       int32_t *indices, int32_t *rows);

/// codes[B, n] (dense) -> xhat[B, d].
typedef int32_t (*sae_decode_dense_fn)(int64_t batch, const float *codes,
                                       float *const *params, float *xhat);

/// values[B, k], indices[B, k] -> xhat[B, d]. Layout "rows" only. Indices
/// must lie in [0, n).
typedef int32_t (*sae_decode_sparse_fn)(int64_t batch, const float *values,
                                        const int32_t *indices,
                                        float *const *params, float *xhat);

/// values[B*k], indices[B*k], rows[B*k] -> xhat[B, d]. Layout "batch" only.
/// Indices must lie in [0, n) and rows in [0, B).
typedef int32_t (*sae_decode_batch_fn)(int64_t batch, const float *values,
                                       const int32_t *indices,
                                       const int32_t *rows,
                                       float *const *params, float *xhat);

/// inputs -> xhat[B, d] and the losses: losses[0] is the total loss of the
/// spec, losses[1 + i] the i-th entry of "loss_terms" (1 + T floats). This is
/// the training form of the model (batch-level selection, sampling with
/// `seed` when "stochastic").
typedef int32_t (*sae_forward_fn)(int64_t batch, const float *const *inputs,
                                  float *const *params, uint64_t seed,
                                  float *xhat, float *losses);

/// Positions in the `hyper` array of sae_train_step. The caller computes the
/// schedule (warm-up, decay) and the bias corrections each step.
enum {
  SAE_HYPER_LR = 0,       ///< learning rate of this step
  SAE_HYPER_BETA1 = 1,    ///< Adam β₁
  SAE_HYPER_BETA2 = 2,    ///< Adam β₂
  SAE_HYPER_EPS = 3,      ///< Adam ε
  SAE_HYPER_BC1 = 4,      ///< 1 − β₁^t, t = 1 for the first step
  SAE_HYPER_BC2 = 5,      ///< 1 − β₂^t
  SAE_HYPER_CLIP = 6,     ///< max global gradient norm; 0 = no clipping
  SAE_HYPER_SPARSITY = 7, ///< factor on every loss term after the first
  SAE_HYPER_COUNT = 8
};

/// Gradient of the total loss (the training form, as sae_forward) with
/// respect to every trainable parameter: grads has one [shape] buffer per
/// parameter with "trainable": true, in "params" order. losses as in
/// sae_forward. Nothing is updated.
typedef int32_t (*sae_gradient_fn)(int64_t batch, const float *const *inputs,
                                   float *const *params, uint64_t seed,
                                   float *const *grads, float *losses);

/// One fused training step on a batch: forward, loss (every term after the
/// first times hyper[SAE_HYPER_SPARSITY]), backward, the decoder unit-norm
/// rule if the spec names one (project the gradient of each row onto the
/// row's orthogonal complement), global gradient-norm clipping if
/// hyper[SAE_HYPER_CLIP] > 0, Adam as torch.optim.Adam computes it
///   m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;
///   p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + ε)
/// and then the unit-norm rule's renormalisation of the rows. `params`
/// (all of them, state included) are updated in place: trainable ones by
/// Adam, state by its update rule. adam_m and adam_v hold one buffer per
/// trainable parameter (as grads above), zeros before the first step,
/// updated in place. losses[1 + T]: the losses of the forward pass, before
/// the update, unweighted by the sparsity factor. metrics[SAE_METRIC_COUNT]:
/// sums over the batch, for progress reports (see below). fired[n]: how
/// many rows of the batch each latent was active in (nonzero code).
typedef int32_t (*sae_train_step_fn)(int64_t batch, const float *const *inputs,
                                     float *const *params,
                                     float *const *adam_m,
                                     float *const *adam_v, const float *hyper,
                                     uint64_t seed, float *losses,
                                     float *metrics, float *fired);

/// Positions in the `metrics` array of sae_train_step.
enum {
  SAE_METRIC_SSE = 0,    ///< Σ_b ‖x̂_b − x_b‖²
  SAE_METRIC_SST = 1,    ///< Σ_b ‖x_b − mean_b(x)‖²  (FVU = SSE / SST)
  SAE_METRIC_ACTIVE = 2, ///< number of nonzero codes (L0 = ACTIVE / B)
  SAE_METRIC_COUNT = 3
};

/// The exported symbol names.
#define SAE_SYM_ABI_VERSION "sae_abi_version"
#define SAE_SYM_DESCRIBE "sae_model_describe"
#define SAE_SYM_INIT "sae_init"
#define SAE_SYM_ENCODE_DENSE "sae_encode_dense"
#define SAE_SYM_ENCODE_SPARSE "sae_encode_sparse"
#define SAE_SYM_ENCODE_BATCH "sae_encode_batch"
#define SAE_SYM_DECODE_DENSE "sae_decode_dense"
#define SAE_SYM_DECODE_SPARSE "sae_decode_sparse"
#define SAE_SYM_DECODE_BATCH "sae_decode_batch"
#define SAE_SYM_FORWARD "sae_forward"
#define SAE_SYM_GRADIENT "sae_gradient"
#define SAE_SYM_TRAIN_STEP "sae_train_step"

#ifdef __cplusplus
}
#endif

#endif /* SAE_RUNTIME_ABI_H */
