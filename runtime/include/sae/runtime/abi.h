/*===- abi.h - The C ABI that every saec-generated library implements -----===*
 *
 * saec compiles a `.sae` spec into a shared library that exports exactly the
 * symbols declared here. The compiler's ABI emitter
 * (compiler/lib/Target/CPU/EmitCABI.cpp) models this header one to one: change
 * one, change the other, and bump SAE_ABI_VERSION.
 *
 * Conventions
 *  - Every tensor is a dense row-major float32 (or int32 for indices) buffer
 *    owned by the caller. `batch` is the number of rows B (B >= 1).
 *  - `params` is an array of pointers, one per parameter, in the order of the
 *    "params" list of sae_model_describe(). Shapes are those listed there.
 *  - Functions return 0 on success. Generated code never aborts the process;
 *    argument validation (B >= 1, buffer sizes) is the caller's job.
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
#define SAE_ABI_VERSION 1u

/// Returns SAE_ABI_VERSION as it was when the library was compiled.
typedef uint32_t (*sae_abi_version_fn)(void);

/// Returns a NUL-terminated JSON document describing the model (static
/// storage, never freed). Schema (version 1):
///   {"abi_version": 1, "name": "topk_gpt2", "source": "examples/topk.sae",
///    "dims": {"d": 768, "n": 16384},
///    "input": {"name": "x", "dim": 768},
///    "latents": 16384,
///    "codes": {"kind": "sparse", "k": 32}      or {"kind": "dense"},
///    "encoder": {"op": "topk", "k": 32}        (op-specific hyperparameters),
///    "loss": "fvu",
///    "params": [{"name": "W_enc", "shape": [768, 16384], "dtype": "float32",
///                "init": "kaiming_uniform"}, ...],
///    "entry_points": ["sae_init", "sae_encode_dense", ...],
///    "target": {"triple": "x86_64-unknown-linux-gnu", "cpu": "znver3",
///               "required_features": ["avx2", "fma"]}}
/// A loader must refuse the library when the host CPU lacks one of
/// "required_features" (names as understood by __builtin_cpu_supports).
typedef const char *(*sae_model_describe_fn)(void);

/// Fills every parameter from its initialiser, deterministically from `seed`.
typedef int32_t (*sae_init_fn)(uint64_t seed, float *const *params);

/// x[B, d] -> codes[B, n], dense (zeros where a latent is inactive).
typedef int32_t (*sae_encode_dense_fn)(int64_t batch, const float *x,
                                       float *const *params, float *codes);

/// x[B, d] -> values[B, k], indices[B, k]. Only for models whose codes are
/// sparse ("codes.kind" == "sparse"). Each row lists its k entries by
/// decreasing value; ties keep the lower latent index first.
typedef int32_t (*sae_encode_sparse_fn)(int64_t batch, const float *x,
                                        float *const *params, float *values,
                                        int32_t *indices);

/// codes[B, n] (dense) -> xhat[B, d].
typedef int32_t (*sae_decode_dense_fn)(int64_t batch, const float *codes,
                                       float *const *params, float *xhat);

/// values[B, k], indices[B, k] -> xhat[B, d], by gathering k decoder rows per
/// row (work proportional to k, not n). Only for sparse models. Indices must
/// lie in [0, n).
typedef int32_t (*sae_decode_sparse_fn)(int64_t batch, const float *values,
                                        const int32_t *indices,
                                        float *const *params, float *xhat);

/// x[B, d] -> xhat[B, d] and the scalar loss of the spec (one float).
typedef int32_t (*sae_forward_fn)(int64_t batch, const float *x,
                                  float *const *params, float *xhat,
                                  float *loss);

/// The exported symbol names.
#define SAE_SYM_ABI_VERSION "sae_abi_version"
#define SAE_SYM_DESCRIBE "sae_model_describe"
#define SAE_SYM_INIT "sae_init"
#define SAE_SYM_ENCODE_DENSE "sae_encode_dense"
#define SAE_SYM_ENCODE_SPARSE "sae_encode_sparse"
#define SAE_SYM_DECODE_DENSE "sae_decode_dense"
#define SAE_SYM_DECODE_SPARSE "sae_decode_sparse"
#define SAE_SYM_FORWARD "sae_forward"

#ifdef __cplusplus
}
#endif

#endif /* SAE_RUNTIME_ABI_H */
