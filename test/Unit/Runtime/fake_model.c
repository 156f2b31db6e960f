/*===- fake_model.c - A hand-written stand-in for a saec-compiled model ---===*
 *
 * Implements the C ABI of abi.h for a toy TopK SAE (d = 4, n = 8, k = 2),
 * so the runtime's loader, checkpoints and the `sae` tool can be tested
 * without the compiler. Compile-time switches build the broken variants the
 * loader must refuse:
 *   FAKE_DENSE               a dense ReLU model (no sparse entry points)
 *   FAKE_ABI_VERSION=N       report ABI version N
 *   FAKE_MISSING_CPU         require "avx512er" (no current CPU has it)
 *   FAKE_UNKNOWN_FEATURE     require a feature name nobody knows
 *   FAKE_BAD_DESCRIBE        return malformed JSON from sae_model_describe
 *   FAKE_NO_CFG              leave out the optional "cfg" object
 *   FAKE_NO_SYMBOLS          export none of the ABI symbols
 *
 * Semantics (the tests recompute them):
 *   pre[j]   = b_enc[j] + sum_i (x[i] - b_dec[i]) * W_enc[i][j]
 *   sparse:  the k largest pre[j] (ties: lower j first), then ReLU
 *   dense:   ReLU(pre)
 *   xhat[i]  = b_dec[i] + sum_j codes[j] * W_dec[j][i]
 *   loss     = mean over rows of sum_i (xhat[i] - x[i])^2
 * Every entry point returns 3 if an input value is NaN, 1 if batch < 1.
 *===----------------------------------------------------------------------===*/

#include "sae/runtime/abi.h"

#include <math.h>
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))

#ifdef FAKE_NO_SYMBOLS

EXPORT int fake_model_unrelated_function(void) { return 42; }

#else

#define D 4
#define N 8
#define K 2

#ifndef FAKE_ABI_VERSION
#define FAKE_ABI_VERSION SAE_ABI_VERSION
#endif

#if defined(FAKE_MISSING_CPU)
#define FAKE_FEATURES "\"sse2\", \"avx512er\""
#elif defined(FAKE_UNKNOWN_FEATURE)
#define FAKE_FEATURES "\"warp-drive\""
#elif defined(__x86_64__)
#define FAKE_FEATURES "\"sse2\""
#else
#define FAKE_FEATURES ""
#endif

#ifdef FAKE_DENSE
#define FAKE_NAME "fake_relu"
#define FAKE_CODES "{\"kind\": \"dense\"}"
#define FAKE_ENCODER "{\"op\": \"relu\"}"
#define FAKE_ENTRIES                                                           \
  "\"sae_init\", \"sae_encode_dense\", \"sae_decode_dense\", \"sae_forward\""
#define FAKE_CFG                                                               \
  "{\"architecture\": \"standard\", \"d_in\": 4, \"d_sae\": 8, "               \
  "\"dtype\": \"float32\"}"
#else
#define FAKE_NAME "fake_topk"
#define FAKE_CODES "{\"kind\": \"sparse\", \"k\": 2}"
#define FAKE_ENCODER "{\"op\": \"topk\", \"k\": 2}"
#define FAKE_ENTRIES                                                           \
  "\"sae_init\", \"sae_encode_dense\", \"sae_encode_sparse\", "                \
  "\"sae_decode_dense\", \"sae_decode_sparse\", \"sae_forward\""
#define FAKE_CFG                                                               \
  "{\"architecture\": \"topk\", \"d_in\": 4, \"d_sae\": 8, \"k\": 2, "         \
  "\"dtype\": \"float32\", \"activation_fn_kwargs\": {\"k\": 2}}"
#endif

#ifdef FAKE_NO_CFG
#define FAKE_CFG_ENTRY ""
#else
#define FAKE_CFG_ENTRY ", \"cfg\": " FAKE_CFG
#endif

static const char kDescribe[] =
#ifdef FAKE_BAD_DESCRIBE
    "{\"abi_version\": 1, \"name\": \"broken\", "
#else
    "{\"abi_version\": 1, \"name\": \"" FAKE_NAME "\", "
    "\"source\": \"test/Unit/Runtime/fake_model.c\", "
    "\"dims\": {\"d\": 4, \"n\": 8}, "
    "\"input\": {\"name\": \"x\", \"dim\": 4}, "
    "\"latents\": 8, "
    "\"codes\": " FAKE_CODES ", "
    "\"encoder\": " FAKE_ENCODER ", "
    "\"loss\": \"mse\", "
    "\"params\": ["
    "{\"name\": \"W_enc\", \"shape\": [4, 8], \"dtype\": \"float32\", "
    "\"init\": \"uniform(-1, 1)\"}, "
    "{\"name\": \"b_enc\", \"shape\": [8], \"dtype\": \"float32\", "
    "\"init\": \"uniform(-0.1, 0.1)\"}, "
    "{\"name\": \"W_dec\", \"shape\": [8, 4], \"dtype\": \"float32\", "
    "\"init\": \"transpose(W_enc)\"}, "
    "{\"name\": \"b_dec\", \"shape\": [4], \"dtype\": \"float32\", "
    "\"init\": \"uniform(-0.1, 0.1)\"}], "
    "\"entry_points\": [" FAKE_ENTRIES "], "
    "\"target\": {\"triple\": \"x86_64-unknown-linux-gnu\", "
    "\"cpu\": \"generic\", \"required_features\": [" FAKE_FEATURES
    "]}" FAKE_CFG_ENTRY "}"
#endif
    ;

EXPORT uint32_t sae_abi_version(void) { return FAKE_ABI_VERSION; }

EXPORT const char *sae_model_describe(void) { return kDescribe; }

/* splitmix64, then the top 24 bits as a float in [0, 1). */
static float nextUniform(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)(z >> 40) / 16777216.0f;
}

EXPORT int32_t sae_init(uint64_t seed, float *const *params) {
  float *wEnc = params[0], *bEnc = params[1], *wDec = params[2],
        *bDec = params[3];
  uint64_t state = seed;
  for (int i = 0; i < D * N; ++i)
    wEnc[i] = 2.0f * nextUniform(&state) - 1.0f;
  for (int j = 0; j < N; ++j)
    bEnc[j] = 0.2f * nextUniform(&state) - 0.1f;
  for (int i = 0; i < D; ++i)
    bDec[i] = 0.2f * nextUniform(&state) - 0.1f;
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < D; ++i)
      wDec[j * D + i] = wEnc[i * N + j];
  return 0;
}

static int hasNaN(const float *values, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (isnan(values[i]))
      return 1;
  return 0;
}

static void preActivations(const float *x, float *const *params, float *pre) {
  const float *wEnc = params[0], *bEnc = params[1], *bDec = params[3];
  for (int j = 0; j < N; ++j) {
    float sum = bEnc[j];
    for (int i = 0; i < D; ++i)
      sum += (x[i] - bDec[i]) * wEnc[i * N + j];
    pre[j] = sum;
  }
}

/* Hand-written top-k: k passes, each picking the largest remaining value
 * (strictly greater wins, so ties keep the lower index first). */
__attribute__((unused)) static void topk(const float *pre, float *values,
                                         int32_t *indices) {
  int taken[N] = {0};
  for (int t = 0; t < K; ++t) {
    int best = -1;
    for (int j = 0; j < N; ++j)
      if (!taken[j] && (best < 0 || pre[j] > pre[best]))
        best = j;
    taken[best] = 1;
    values[t] = pre[best] > 0.0f ? pre[best] : 0.0f;
    indices[t] = best;
  }
}

static void encodeRow(const float *x, float *const *params, float *codes) {
  float pre[N];
  preActivations(x, params, pre);
  for (int j = 0; j < N; ++j)
    codes[j] = 0.0f;
#ifdef FAKE_DENSE
  for (int j = 0; j < N; ++j)
    codes[j] = pre[j] > 0.0f ? pre[j] : 0.0f;
#else
  float values[K];
  int32_t indices[K];
  topk(pre, values, indices);
  for (int t = 0; t < K; ++t)
    codes[indices[t]] = values[t];
#endif
}

static void decodeRow(const float *codes, float *const *params, float *xhat) {
  const float *wDec = params[2], *bDec = params[3];
  for (int i = 0; i < D; ++i) {
    float sum = bDec[i];
    for (int j = 0; j < N; ++j)
      sum += codes[j] * wDec[j * D + i];
    xhat[i] = sum;
  }
}

EXPORT int32_t sae_encode_dense(int64_t batch, const float *x,
                                float *const *params, float *codes) {
  if (batch < 1)
    return 1;
  if (hasNaN(x, batch * D))
    return 3;
  for (int64_t b = 0; b < batch; ++b)
    encodeRow(x + b * D, params, codes + b * N);
  return 0;
}

EXPORT int32_t sae_decode_dense(int64_t batch, const float *codes,
                                float *const *params, float *xhat) {
  if (batch < 1)
    return 1;
  if (hasNaN(codes, batch * N))
    return 3;
  for (int64_t b = 0; b < batch; ++b)
    decodeRow(codes + b * N, params, xhat + b * D);
  return 0;
}

#ifndef FAKE_DENSE
EXPORT int32_t sae_encode_sparse(int64_t batch, const float *x,
                                 float *const *params, float *values,
                                 int32_t *indices) {
  if (batch < 1)
    return 1;
  if (hasNaN(x, batch * D))
    return 3;
  for (int64_t b = 0; b < batch; ++b) {
    float pre[N];
    preActivations(x + b * D, params, pre);
    topk(pre, values + b * K, indices + b * K);
  }
  return 0;
}

EXPORT int32_t sae_decode_sparse(int64_t batch, const float *values,
                                 const int32_t *indices, float *const *params,
                                 float *xhat) {
  if (batch < 1)
    return 1;
  if (hasNaN(values, batch * K))
    return 3;
  for (int64_t b = 0; b < batch; ++b) {
    float codes[N] = {0};
    for (int t = 0; t < K; ++t)
      codes[indices[b * K + t]] += values[b * K + t];
    decodeRow(codes, params, xhat + b * D);
  }
  return 0;
}
#endif

EXPORT int32_t sae_forward(int64_t batch, const float *x, float *const *params,
                           float *xhat, float *loss) {
  if (batch < 1)
    return 1;
  if (hasNaN(x, batch * D))
    return 3;
  double total = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    float codes[N];
    encodeRow(x + b * D, params, codes);
    decodeRow(codes, params, xhat + b * D);
    for (int i = 0; i < D; ++i) {
      double diff = (double)xhat[b * D + i] - (double)x[b * D + i];
      total += diff * diff;
    }
  }
  *loss = (float)(total / (double)batch);
  return 0;
}

#endif /* FAKE_NO_SYMBOLS */
