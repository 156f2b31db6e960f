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
#define SAE_ABI_VERSION 2u

/// Returns SAE_ABI_VERSION as it was when the library was compiled.
typedef uint32_t (*sae_abi_version_fn)(void);

/// Returns a NUL-terminated JSON document describing the model (static
/// storage, never freed). Schema (version 2):
///   {"abi_version": 2, "name": "topk_gpt2", "source": "examples/topk.sae",
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
///                "init": "kaiming_uniform"}, ...],
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

#ifdef __cplusplus
}
#endif

#endif /* SAE_RUNTIME_ABI_H */
