/*===- fake_model.c - A hand-written stand-in for a saec-compiled model ---===*
 *
 * Implements the C ABI of abi.h (version 3) for a toy TopK SAE (d = 4,
 * n = 8, k = 2), so the runtime's loader, checkpoints and the `sae` tool
 * (training included) can be tested without the compiler. Compile-time
 * switches build the other models and the broken variants the loader must
 * refuse:
 *   FAKE_DENSE               a dense ReLU model (no sparse entry points, no
 *                            loss terms)
 *   FAKE_BATCH               a BatchTopK model: codes of layout "batch"
 *                            (B*k entries per batch), stochastic forward;
 *                            with $SAE_FAKE_BREAK_ROWS set, sae_encode_batch
 *                            returns unsorted rows
 *   FAKE_AUX                 a TopK model with an auxiliary input g [B, 3]
 *   FAKE_INIT_DATA           a TopK model whose b_dec is initialised to the
 *                            column mean of x (init_needs_data)
 *   FAKE_MINIMAL             the TopK model with a description that leaves
 *                            out every optional field of schema version 3
 *                            (inputs, codes.layout, loss_terms,
 *                            init_needs_data, stochastic, trainable,
 *                            train); it exports sae_gradient and
 *                            sae_train_step but does not list them
 *   FAKE_STATE               the TopK model with a fifth parameter, state
 *                            ("trainable": false): fires [8], which
 *                            sae_train_step adds the batch's `fired` to
 *   FAKE_NORMALIZE           the TopK model with train.normalize
 *                            "expected_norm" and no unit-norm rule
 *   FAKE_CUSTOM_DESCRIBE     the TopK model, describing itself with the
 *                            text of $SAE_FAKE_DESCRIBE when it is set
 *   FAKE_ABI_VERSION=N       report ABI version N
 *   FAKE_MISSING_CPU         require "avx512er" (no current CPU has it)
 *   FAKE_UNKNOWN_FEATURE     require a feature name nobody knows
 *   FAKE_BAD_DESCRIBE        return malformed JSON from sae_model_describe
 *   FAKE_NO_CFG              leave out the optional "cfg" object
 *   FAKE_NO_SYMBOLS          export none of the ABI symbols
 *
 * Semantics (TestUtil.h recomputes them):
 *   pre[j]   = b_enc[j] + sum_i (x[i] - b_dec[i]) * W_enc[i][j]
 *              (+ g[j mod 3] with FAKE_AUX)
 *   topk:    per row, the k largest pre[j] (ties: lower j first), then ReLU
 *   batch:   per batch, the B*k largest pre[b][j] (ties: lower b*n + j
 *            first), then ReLU; listed by row, then by decreasing value
 *   dense:   ReLU(pre)
 *   xhat[i]  = b_dec[i] + sum_j codes[j] * W_dec[j][i]
 *   recon    = mean over rows of sum_i (xhat[i] - x[i])^2
 *   sparsity = mean over rows of sum_j |codes[j]|
 *   losses   topk:  {recon + 0.25 * sparsity, recon, sparsity}
 *            dense, minimal: {recon}
 *            batch: {recon + noise, recon, noise}, noise being the first
 *                   uniform [0, 1) draw of splitmix64 from the seed
 *   sae_init: uniform parameters from splitmix64(seed), W_dec = W_enc^T;
 *             FAKE_INIT_DATA then sets b_dec to the column mean of x.
 *
 * Training (the TopK variants, layout "rows"), derived by hand:
 *   e = xhat - x; dL/dxhat = 2e / B
 *   dL/db_dec  = sum_b 2e/B - sum_b W_enc g_pre        (decoder, encoder)
 *   dL/dW_dec[j][i] = sum_b codes[j] * 2e[i] / B
 *   dL/dcodes[j] = sum_i 2e[i]/B * W_dec[j][i] + w * 0.25 / B  (codes > 0)
 *   g_pre[j]  = dL/dcodes[j] where j is selected and pre[j] > 0, else 0
 *   dL/db_enc[j] = sum_b g_pre[j]
 *   dL/dW_enc[i][j] = sum_b (x[i] - b_dec[i]) * g_pre[j]
 * with w = 1 for sae_gradient (the total loss of sae_forward) and
 * w = hyper[SAE_HYPER_SPARSITY] for sae_train_step, which then follows
 * abi.h: unit-norm projection of the W_dec row gradients (train.unit_norm
 * "W_dec", all but FAKE_NORMALIZE), global norm clipping (torch's
 * clip_grad_norm_: g *= clip / (norm + 1e-6) when that is < 1), Adam in
 * float, renormalisation of the W_dec rows, then the state update
 * (FAKE_STATE). Gradients are accumulated in double.
 * Test switches of sae_train_step, counted per process from 1:
 *   $SAE_FAKE_NAN_STEP=N   call N returns NaN losses and NaN parameters
 *   $SAE_FAKE_FAIL_STEP=N  call N returns 5
 *   $SAE_FAKE_FAIL_ALL=1   every call returns 5 (for a test that shares
 *                          its process, and so the count, with others)
 *   $SAE_FAKE_TRACE=FILE   every call appends a line to FILE: the call
 *                          number, the seed, the 8 hyper values and the
 *                          batch x, floats in C's %a notation
 *
 * Every entry point returns 3 if an input value is NaN, 1 if batch < 1,
 * 2 if memory runs out, 4 if init needs data and has none.
 *===----------------------------------------------------------------------===*/

#include "sae/runtime/abi.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

#ifdef FAKE_NO_SYMBOLS

EXPORT int fake_model_unrelated_function(void) { return 42; }

#else

#define D 4
#define N 8
#define K 2
#define G 3 /* width of the auxiliary input of FAKE_AUX */

#define STR_(x) #x
#define STR(x) STR_(x)

#ifndef FAKE_ABI_VERSION
#define FAKE_ABI_VERSION 3
_Static_assert(FAKE_ABI_VERSION == SAE_ABI_VERSION,
               "fake_model.c implements another ABI version than abi.h");
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

/* The fields every variant shares unless it says otherwise. */
#define FAKE_INPUTS_ENTRY "\"inputs\": [{\"name\": \"x\", \"dim\": 4}], "
#define FAKE_LOSS_TERMS_ENTRY "\"loss_terms\": [\"recon\", \"sparsity\"], "
#define FAKE_INIT_ENTRY "\"init_needs_data\": false, "
#define FAKE_STOCHASTIC_ENTRY "\"stochastic\": false, "
#define FAKE_B_DEC_INIT "uniform(-0.1, 0.1)"
#define FAKE_TRAINABLE ", \"trainable\": true"
#define FAKE_EXTRA_PARAMS ""
#define FAKE_UNIT_NORM "\"W_dec\""
#define FAKE_NORMALIZE_MODE "none"
#define FAKE_SPARSE_ENTRIES                                                    \
  "\"sae_init\", \"sae_encode_dense\", \"sae_encode_sparse\", "                \
  "\"sae_decode_dense\", \"sae_decode_sparse\", \"sae_forward\", "             \
  "\"sae_gradient\", \"sae_train_step\""
#define FAKE_TOPK_CFG                                                          \
  "{\"architecture\": \"topk\", \"d_in\": 4, \"d_sae\": 8, \"k\": 2, "         \
  "\"dtype\": \"float32\", \"activation_fn_kwargs\": {\"k\": 2}}"

#if defined(FAKE_DENSE)
#define FAKE_NAME "fake_relu"
#define FAKE_CODES "{\"kind\": \"dense\"}"
#define FAKE_ENCODER "{\"op\": \"relu\"}"
#undef FAKE_LOSS_TERMS_ENTRY
#define FAKE_LOSS_TERMS_ENTRY "\"loss_terms\": [], "
#define FAKE_ENTRIES                                                           \
  "\"sae_init\", \"sae_encode_dense\", \"sae_decode_dense\", \"sae_forward\""
#define FAKE_CFG                                                               \
  "{\"architecture\": \"standard\", \"d_in\": 4, \"d_sae\": 8, "               \
  "\"dtype\": \"float32\"}"
#elif defined(FAKE_BATCH)
#define FAKE_NAME "fake_batch_topk"
#define FAKE_CODES "{\"kind\": \"sparse\", \"layout\": \"batch\", \"k\": 2}"
#define FAKE_ENCODER "{\"op\": \"batch_topk\", \"k\": 2}"
#undef FAKE_LOSS_TERMS_ENTRY
#define FAKE_LOSS_TERMS_ENTRY "\"loss_terms\": [\"recon\", \"noise\"], "
#undef FAKE_STOCHASTIC_ENTRY
#define FAKE_STOCHASTIC_ENTRY "\"stochastic\": true, "
#define FAKE_ENTRIES                                                           \
  "\"sae_init\", \"sae_encode_dense\", \"sae_encode_batch\", "                 \
  "\"sae_decode_dense\", \"sae_decode_batch\", \"sae_forward\""
#define FAKE_CFG                                                               \
  "{\"architecture\": \"batchtopk\", \"d_in\": 4, \"d_sae\": 8, \"k\": 2, "    \
  "\"dtype\": \"float32\"}"
#else
#define FAKE_CODES "{\"kind\": \"sparse\", \"layout\": \"rows\", \"k\": 2}"
#define FAKE_ENCODER "{\"op\": \"topk\", \"k\": 2}"
#define FAKE_ENTRIES FAKE_SPARSE_ENTRIES
#define FAKE_CFG FAKE_TOPK_CFG
#if defined(FAKE_AUX)
#define FAKE_NAME "fake_grad_topk"
#undef FAKE_INPUTS_ENTRY
#define FAKE_INPUTS_ENTRY                                                      \
  "\"inputs\": [{\"name\": \"x\", \"dim\": 4}, {\"name\": \"g\", \"dim\": "    \
  "3}], "
#elif defined(FAKE_INIT_DATA)
#define FAKE_NAME "fake_topk_data"
#undef FAKE_INIT_ENTRY
#define FAKE_INIT_ENTRY "\"init_needs_data\": true, "
#undef FAKE_B_DEC_INIT
#define FAKE_B_DEC_INIT "data_mean"
#elif defined(FAKE_STATE)
#define FAKE_NAME "fake_topk_state"
#undef FAKE_EXTRA_PARAMS
#define FAKE_EXTRA_PARAMS                                                      \
  ", {\"name\": \"fires\", \"shape\": [8], \"dtype\": \"float32\", "           \
  "\"init\": \"zeros\", \"trainable\": false}"
#elif defined(FAKE_NORMALIZE)
#define FAKE_NAME "fake_topk_norm"
#undef FAKE_UNIT_NORM
#define FAKE_UNIT_NORM "null"
#undef FAKE_NORMALIZE_MODE
#define FAKE_NORMALIZE_MODE "expected_norm"
#elif defined(FAKE_MINIMAL)
#define FAKE_NAME "fake_topk_minimal"
#undef FAKE_TRAINABLE
#define FAKE_TRAINABLE ""
#undef FAKE_ENTRIES
#define FAKE_ENTRIES                                                           \
  "\"sae_init\", \"sae_encode_dense\", \"sae_encode_sparse\", "                \
  "\"sae_decode_dense\", \"sae_decode_sparse\", \"sae_forward\""
#undef FAKE_INPUTS_ENTRY
#define FAKE_INPUTS_ENTRY ""
#undef FAKE_CODES
#define FAKE_CODES "{\"kind\": \"sparse\", \"k\": 2}"
#undef FAKE_LOSS_TERMS_ENTRY
#define FAKE_LOSS_TERMS_ENTRY ""
#undef FAKE_INIT_ENTRY
#define FAKE_INIT_ENTRY ""
#undef FAKE_STOCHASTIC_ENTRY
#define FAKE_STOCHASTIC_ENTRY ""
#else
#define FAKE_NAME "fake_topk"
#endif
#endif

/* losses[] entries written by sae_forward (1 + number of terms). */
#if defined(FAKE_DENSE) || defined(FAKE_MINIMAL)
#define FAKE_LOSS_COUNT 1
#else
#define FAKE_LOSS_COUNT 3
#endif

/* The TopK variants of layout "rows" implement training. */
#if !defined(FAKE_DENSE) && !defined(FAKE_BATCH)
#define FAKE_TRAINS 1
#endif

#if defined(FAKE_MINIMAL)
#define FAKE_TRAIN_ENTRY ""
#else
#define FAKE_TRAIN_ENTRY                                                       \
  "\"train\": {\"lr\": 0.01, \"beta1\": 0.9, \"beta2\": 0.999, "               \
  "\"eps\": 1e-8, \"clip\": 0, \"lr_warmup\": 0, \"lr_decay\": \"none\", "     \
  "\"sparsity_warmup\": 0, \"unit_norm\": " FAKE_UNIT_NORM ", "                \
  "\"batch\": 4, \"normalize\": \"" FAKE_NORMALIZE_MODE "\"}, "
#endif

#ifdef FAKE_NO_CFG
#define FAKE_CFG_ENTRY ""
#else
#define FAKE_CFG_ENTRY ", \"cfg\": " FAKE_CFG
#endif

/* clang-format off */
static const char kDescribe[] =
#ifdef FAKE_BAD_DESCRIBE
    "{\"abi_version\": " STR(FAKE_ABI_VERSION) ", \"name\": \"broken\", "
#else
    "{\"abi_version\": " STR(FAKE_ABI_VERSION) ", \"name\": \"" FAKE_NAME "\", "
    "\"source\": \"test/Unit/Runtime/fake_model.c\", "
    "\"dims\": {\"d\": 4, \"n\": 8}, "
    "\"input\": {\"name\": \"x\", \"dim\": 4}, " FAKE_INPUTS_ENTRY
    "\"latents\": 8, "
    "\"codes\": " FAKE_CODES ", "
    "\"encoder\": " FAKE_ENCODER ", "
    "\"loss\": \"mse\", "
    FAKE_LOSS_TERMS_ENTRY FAKE_INIT_ENTRY FAKE_STOCHASTIC_ENTRY
    "\"params\": ["
    "{\"name\": \"W_enc\", \"shape\": [4, 8], \"dtype\": \"float32\", "
    "\"init\": \"uniform(-1, 1)\"" FAKE_TRAINABLE "}, "
    "{\"name\": \"b_enc\", \"shape\": [8], \"dtype\": \"float32\", "
    "\"init\": \"uniform(-0.1, 0.1)\"" FAKE_TRAINABLE "}, "
    "{\"name\": \"W_dec\", \"shape\": [8, 4], \"dtype\": \"float32\", "
    "\"init\": \"transpose(W_enc)\"" FAKE_TRAINABLE "}, "
    "{\"name\": \"b_dec\", \"shape\": [4], \"dtype\": \"float32\", "
    "\"init\": \"" FAKE_B_DEC_INIT "\"" FAKE_TRAINABLE "}" FAKE_EXTRA_PARAMS "], "
    FAKE_TRAIN_ENTRY
    "\"entry_points\": [" FAKE_ENTRIES "], "
    "\"target\": {\"triple\": \"x86_64-unknown-linux-gnu\", "
    "\"cpu\": \"generic\", \"required_features\": [" FAKE_FEATURES
    "]}" FAKE_CFG_ENTRY "}"
#endif
    ;
/* clang-format on */

EXPORT uint32_t sae_abi_version(void) { return FAKE_ABI_VERSION; }

EXPORT const char *sae_model_describe(void) {
#ifdef FAKE_CUSTOM_DESCRIBE
  const char *text = getenv("SAE_FAKE_DESCRIBE");
  if (text)
    return text;
#endif
  return kDescribe;
}

/* splitmix64, then the top 24 bits as a float in [0, 1). */
static float nextUniform(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float)(z >> 40) / 16777216.0f;
}

EXPORT int32_t sae_init(uint64_t seed, int64_t batch, const float *x,
                        float *const *params) {
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
#ifdef FAKE_STATE
  for (int j = 0; j < N; ++j)
    params[4][j] = 0.0f;
#endif
#ifdef FAKE_INIT_DATA
  if (batch < 1 || !x)
    return 4;
  for (int i = 0; i < D; ++i) {
    double sum = 0.0;
    for (int64_t b = 0; b < batch; ++b)
      sum += x[b * D + i];
    bDec[i] = (float)(sum / (double)batch);
  }
#else
  (void)batch;
  (void)x;
#endif
  return 0;
}

static int hasNaN(const float *values, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (isnan(values[i]))
      return 1;
  return 0;
}

static int inputsHaveNaN(int64_t batch, const float *const *inputs) {
#ifdef FAKE_AUX
  if (hasNaN(inputs[1], batch * G))
    return 1;
#endif
  return hasNaN(inputs[0], batch * D);
}

/* Pre-activations of row b. */
static void preActivations(const float *const *inputs, int64_t b,
                           float *const *params, float *pre) {
  const float *wEnc = params[0], *bEnc = params[1], *bDec = params[3];
  const float *x = inputs[0] + b * D;
  for (int j = 0; j < N; ++j) {
    float sum = bEnc[j];
    for (int i = 0; i < D; ++i)
      sum += (x[i] - bDec[i]) * wEnc[i * N + j];
#ifdef FAKE_AUX
    sum += inputs[1][b * G + j % G];
#endif
    pre[j] = sum;
  }
}

static float relu(float value) { return value > 0.0f ? value : 0.0f; }

#ifdef FAKE_BATCH
/* Hand-written batch top-k: B*k passes over the whole batch, each picking
 * the largest remaining pre-activation (strictly greater wins, so ties keep
 * the lower flat index b*n + j first); then a stable counting sort by row,
 * which keeps each row's entries by decreasing value. */
static int32_t batchTopk(int64_t batch, const float *const *inputs,
                         float *const *params, float *values, int32_t *indices,
                         int32_t *rows) {
  int64_t cells = batch * N, total = batch * K;
  float *pre = malloc((size_t)cells * sizeof(float));
  unsigned char *taken = calloc((size_t)cells, 1);
  int64_t *picked = malloc((size_t)total * sizeof(int64_t));
  int64_t *start = calloc((size_t)batch + 1, sizeof(int64_t));
  int32_t result = 0;
  if (!pre || !taken || !picked || !start) {
    result = 2;
    goto done;
  }
  for (int64_t b = 0; b < batch; ++b)
    preActivations(inputs, b, params, pre + b * N);
  for (int64_t t = 0; t < total; ++t) {
    int64_t best = -1;
    for (int64_t c = 0; c < cells; ++c)
      if (!taken[c] && (best < 0 || pre[c] > pre[best]))
        best = c;
    taken[best] = 1;
    picked[t] = best;
  }
  for (int64_t t = 0; t < total; ++t)
    ++start[picked[t] / N + 1];
  for (int64_t b = 0; b < batch; ++b)
    start[b + 1] += start[b];
  for (int64_t t = 0; t < total; ++t) {
    int64_t cell = picked[t], row = cell / N, at = start[row]++;
    values[at] = relu(pre[cell]);
    indices[at] = (int32_t)(cell % N);
    rows[at] = (int32_t)row;
  }
done:
  free(pre);
  free(taken);
  free(picked);
  free(start);
  return result;
}
#else
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
    values[t] = relu(pre[best]);
    indices[t] = best;
  }
}
#endif

/* Dense codes [batch, n] of the variant's encoder. */
static int32_t encodeAll(int64_t batch, const float *const *inputs,
                         float *const *params, float *codes) {
  for (int64_t i = 0; i < batch * N; ++i)
    codes[i] = 0.0f;
#if defined(FAKE_BATCH)
  int64_t total = batch * K;
  float *values = malloc((size_t)total * sizeof(float));
  int32_t *indices = malloc((size_t)total * sizeof(int32_t));
  int32_t *rows = malloc((size_t)total * sizeof(int32_t));
  int32_t result = values && indices && rows ? 0 : 2;
  if (result == 0)
    result = batchTopk(batch, inputs, params, values, indices, rows);
  if (result == 0)
    for (int64_t t = 0; t < total; ++t)
      codes[rows[t] * N + indices[t]] += values[t];
  free(values);
  free(indices);
  free(rows);
  return result;
#else
  for (int64_t b = 0; b < batch; ++b) {
    float pre[N];
    preActivations(inputs, b, params, pre);
#if defined(FAKE_DENSE)
    for (int j = 0; j < N; ++j)
      codes[b * N + j] = relu(pre[j]);
#else
    float values[K];
    int32_t indices[K];
    topk(pre, values, indices);
    for (int t = 0; t < K; ++t)
      codes[b * N + indices[t]] = values[t];
#endif
  }
  return 0;
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

EXPORT int32_t sae_encode_dense(int64_t batch, const float *const *inputs,
                                float *const *params, float *codes) {
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  return encodeAll(batch, inputs, params, codes);
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

#if defined(FAKE_BATCH)
EXPORT int32_t sae_encode_batch(int64_t batch, const float *const *inputs,
                                float *const *params, float *values,
                                int32_t *indices, int32_t *rows) {
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  int32_t result = batchTopk(batch, inputs, params, values, indices, rows);
  /* Test switch: break the contract by putting the last entry in row 0. */
  if (result == 0 && getenv("SAE_FAKE_BREAK_ROWS"))
    rows[batch * K - 1] = 0;
  return result;
}

/* Gathers one decoder row per entry. */
EXPORT int32_t sae_decode_batch(int64_t batch, const float *values,
                                const int32_t *indices, const int32_t *rows,
                                float *const *params, float *xhat) {
  const float *wDec = params[2], *bDec = params[3];
  if (batch < 1)
    return 1;
  if (hasNaN(values, batch * K))
    return 3;
  for (int64_t b = 0; b < batch; ++b)
    for (int i = 0; i < D; ++i)
      xhat[b * D + i] = bDec[i];
  for (int64_t t = 0; t < batch * K; ++t)
    for (int i = 0; i < D; ++i)
      xhat[rows[t] * D + i] += values[t] * wDec[indices[t] * D + i];
  return 0;
}
#elif !defined(FAKE_DENSE)
EXPORT int32_t sae_encode_sparse(int64_t batch, const float *const *inputs,
                                 float *const *params, float *values,
                                 int32_t *indices) {
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  for (int64_t b = 0; b < batch; ++b) {
    float pre[N];
    preActivations(inputs, b, params, pre);
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

EXPORT int32_t sae_forward(int64_t batch, const float *const *inputs,
                           float *const *params, uint64_t seed, float *xhat,
                           float *losses) {
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  float *codes = malloc((size_t)(batch * N) * sizeof(float));
  if (!codes)
    return 2;
  int32_t result = encodeAll(batch, inputs, params, codes);
  if (result != 0) {
    free(codes);
    return result;
  }
  const float *x = inputs[0];
  double recon = 0.0, sparsity = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    decodeRow(codes + b * N, params, xhat + b * D);
    for (int i = 0; i < D; ++i) {
      double diff = (double)xhat[b * D + i] - (double)x[b * D + i];
      recon += diff * diff;
    }
    for (int j = 0; j < N; ++j)
      sparsity += fabs((double)codes[b * N + j]);
  }
  free(codes);
  recon /= (double)batch;
  sparsity /= (double)batch;
#if FAKE_LOSS_COUNT == 1
  (void)seed;
  (void)sparsity;
  losses[0] = (float)recon;
#elif defined(FAKE_BATCH)
  uint64_t state = seed;
  double noise = nextUniform(&state);
  (void)sparsity;
  losses[0] = (float)(recon + noise);
  losses[1] = (float)recon;
  losses[2] = (float)noise;
#else
  (void)seed;
  losses[0] = (float)(recon + 0.25 * sparsity);
  losses[1] = (float)recon;
  losses[2] = (float)sparsity;
#endif
  return 0;
}

#ifdef FAKE_TRAINS
/* Gradients of the four trainable parameters, accumulated in double. */
typedef struct {
  double wEnc[D * N], bEnc[N], wDec[N * D], bDec[D];
} Grads;

/* Forward and backward pass over the batch with the sparsity term weighted
 * by `weight`: fills `g`, losses[FAKE_LOSS_COUNT] (unweighted, as
 * sae_forward), and, when non-NULL, metrics[SAE_METRIC_COUNT] and
 * fired[N]. */
static int32_t backward(int64_t batch, const float *const *inputs,
                        float *const *params, double weight, Grads *g,
                        float *losses, float *metrics, float *fired) {
  const float *wEnc = params[0], *wDec = params[2], *bDec = params[3];
  const float *x = inputs[0];
  double scale = 2.0 / (double)batch;
#if FAKE_LOSS_COUNT == 1
  double sparsityCoefficient = 0.0; /* the loss is recon alone */
#else
  double sparsityCoefficient = 0.25;
#endif
  memset(g, 0, sizeof(*g));
  double recon = 0.0, sparsity = 0.0, active = 0.0;
  if (fired)
    for (int j = 0; j < N; ++j)
      fired[j] = 0.0f;
  for (int64_t b = 0; b < batch; ++b) {
    float pre[N], values[K], codes[N] = {0}, xhat[D];
    int32_t indices[K];
    preActivations(inputs, b, params, pre);
    topk(pre, values, indices);
    for (int t = 0; t < K; ++t)
      codes[indices[t]] = values[t];
    decodeRow(codes, params, xhat);
    const float *row = x + b * D;
    double gx[D];
    for (int i = 0; i < D; ++i) {
      double e = (double)xhat[i] - (double)row[i];
      recon += e * e;
      gx[i] = scale * e;
      g->bDec[i] += gx[i];
    }
    for (int j = 0; j < N; ++j) {
      sparsity += fabs((double)codes[j]);
      if (codes[j] == 0.0f)
        continue; /* not selected, or ReLU'd to 0: no gradient */
      active += 1.0;
      if (fired)
        fired[j] += 1.0f;
      double gCode = weight * sparsityCoefficient / (double)batch;
      for (int i = 0; i < D; ++i) {
        g->wDec[j * D + i] += (double)codes[j] * gx[i];
        gCode += gx[i] * (double)wDec[j * D + i];
      }
      g->bEnc[j] += gCode;
      for (int i = 0; i < D; ++i) {
        g->wEnc[i * N + j] += ((double)row[i] - (double)bDec[i]) * gCode;
        g->bDec[i] -= (double)wEnc[i * N + j] * gCode;
      }
    }
  }
  if (metrics) {
    double sst = 0.0;
    for (int i = 0; i < D; ++i) {
      double mean = 0.0;
      for (int64_t b = 0; b < batch; ++b)
        mean += x[b * D + i];
      mean /= (double)batch;
      for (int64_t b = 0; b < batch; ++b) {
        double dev = (double)x[b * D + i] - mean;
        sst += dev * dev;
      }
    }
    metrics[SAE_METRIC_SSE] = (float)recon;
    metrics[SAE_METRIC_SST] = (float)sst;
    metrics[SAE_METRIC_ACTIVE] = (float)active;
  }
  recon /= (double)batch;
  sparsity /= (double)batch;
#if FAKE_LOSS_COUNT == 1
  (void)sparsity;
  losses[0] = (float)recon;
#else
  losses[0] = (float)(recon + 0.25 * sparsity);
  losses[1] = (float)recon;
  losses[2] = (float)sparsity;
#endif
  return 0;
}

/* The gradient buffers of Grads in "params" order, with their sizes. */
static double *gradPart(Grads *g, int p, int *count) {
  switch (p) {
  case 0:
    *count = D * N;
    return g->wEnc;
  case 1:
    *count = N;
    return g->bEnc;
  case 2:
    *count = N * D;
    return g->wDec;
  default:
    *count = D;
    return g->bDec;
  }
}

EXPORT int32_t sae_gradient(int64_t batch, const float *const *inputs,
                            float *const *params, uint64_t seed,
                            float *const *grads, float *losses) {
  (void)seed;
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  Grads g;
  int32_t result = backward(batch, inputs, params, 1.0, &g, losses, NULL, NULL);
  if (result != 0)
    return result;
  for (int p = 0; p < 4; ++p) {
    int count;
    const double *part = gradPart(&g, p, &count);
    for (int i = 0; i < count; ++i)
      grads[p][i] = (float)part[i];
  }
  return 0;
}

/* The process-wide number of sae_train_step calls; the test switches
 * count them. */
static long trainCalls = 0;

static long envNumber(const char *name) {
  const char *text = getenv(name);
  return text && *text ? strtol(text, NULL, 10) : -1;
}

static void trace(long call, int64_t batch, const float *x, const float *hyper,
                  uint64_t seed) {
  const char *path = getenv("SAE_FAKE_TRACE");
  if (!path || !*path)
    return;
  FILE *file = fopen(path, "a");
  if (!file)
    return;
  fprintf(file, "call %ld seed %llu hyper", call, (unsigned long long)seed);
  for (int i = 0; i < SAE_HYPER_COUNT; ++i)
    fprintf(file, " %a", (double)hyper[i]);
  fprintf(file, " x");
  for (int64_t i = 0; i < batch * D; ++i)
    fprintf(file, " %a", (double)x[i]);
  fprintf(file, "\n");
  fclose(file);
}

EXPORT int32_t sae_train_step(int64_t batch, const float *const *inputs,
                              float *const *params, float *const *adam_m,
                              float *const *adam_v, const float *hyper,
                              uint64_t seed, float *losses, float *metrics,
                              float *fired) {
  long call = ++trainCalls;
  if (batch < 1)
    return 1;
  if (inputsHaveNaN(batch, inputs))
    return 3;
  trace(call, batch, inputs[0], hyper, seed);
  if (call == envNumber("SAE_FAKE_FAIL_STEP") ||
      envNumber("SAE_FAKE_FAIL_ALL") == 1)
    return 5;
  Grads g;
  int32_t result = backward(batch, inputs, params, hyper[SAE_HYPER_SPARSITY],
                            &g, losses, metrics, fired);
  if (result != 0)
    return result;

#ifndef FAKE_NORMALIZE
  /* Unit-norm rule on W_dec: remove the component of each row's gradient
   * along the row. */
  for (int j = 0; j < N; ++j) {
    const float *w = params[2] + j * D;
    double dot = 0.0, norm2 = 0.0;
    for (int i = 0; i < D; ++i) {
      dot += g.wDec[j * D + i] * (double)w[i];
      norm2 += (double)w[i] * (double)w[i];
    }
    if (norm2 > 0.0)
      for (int i = 0; i < D; ++i)
        g.wDec[j * D + i] -= dot / norm2 * (double)w[i];
  }
#endif

  double clip = hyper[SAE_HYPER_CLIP];
  if (clip > 0.0) {
    double total = 0.0;
    for (int p = 0; p < 4; ++p) {
      int count;
      const double *part = gradPart(&g, p, &count);
      for (int i = 0; i < count; ++i)
        total += part[i] * part[i];
    }
    double coefficient = clip / (sqrt(total) + 1e-6);
    if (coefficient < 1.0)
      for (int p = 0; p < 4; ++p) {
        int count;
        double *part = gradPart(&g, p, &count);
        for (int i = 0; i < count; ++i)
          part[i] *= coefficient;
      }
  }

  /* Adam, as torch.optim.Adam computes it, in float. */
  float lr = hyper[SAE_HYPER_LR], beta1 = hyper[SAE_HYPER_BETA1],
        beta2 = hyper[SAE_HYPER_BETA2], eps = hyper[SAE_HYPER_EPS],
        bc1 = hyper[SAE_HYPER_BC1], bc2 = hyper[SAE_HYPER_BC2];
  float stepSize = lr / bc1, bc2Root = sqrtf(bc2);
  for (int p = 0; p < 4; ++p) {
    int count;
    const double *part = gradPart(&g, p, &count);
    for (int i = 0; i < count; ++i) {
      float grad = (float)part[i];
      float m = beta1 * adam_m[p][i] + (1.0f - beta1) * grad;
      float v = beta2 * adam_v[p][i] + (1.0f - beta2) * grad * grad;
      adam_m[p][i] = m;
      adam_v[p][i] = v;
      params[p][i] -= stepSize * m / (sqrtf(v) / bc2Root + eps);
    }
  }

#ifndef FAKE_NORMALIZE
  for (int j = 0; j < N; ++j) {
    float *w = params[2] + j * D;
    double norm2 = 0.0;
    for (int i = 0; i < D; ++i)
      norm2 += (double)w[i] * (double)w[i];
    if (norm2 > 0.0) {
      float inverse = (float)(1.0 / sqrt(norm2));
      for (int i = 0; i < D; ++i)
        w[i] *= inverse;
    }
  }
#endif
#ifdef FAKE_STATE
  for (int j = 0; j < N; ++j)
    params[4][j] += fired[j];
#endif

  if (call == envNumber("SAE_FAKE_NAN_STEP")) {
    for (int i = 0; i < FAKE_LOSS_COUNT; ++i)
      losses[i] = NAN;
    for (int i = 0; i < D * N; ++i)
      params[0][i] = NAN;
  }
  return 0;
}
#endif /* FAKE_TRAINS */

#endif /* FAKE_NO_SYMBOLS */
