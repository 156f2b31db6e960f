// bench/sparse_aux_model.c: a C model of AuxK's decode as a sparse product,
// to compare with the dense product over the dead latents that saec emits.
// B = 1024 rows, each with k_aux = 512 entries (distinct, in latent order)
// among ND = 1664 dead rows of a [ND, 768] decoder (10% of n = 16384 dead,
// rounded up to whole panels). out[b] = sum_t v[b, t] * W[idx[b, t]], summed
// in 12 AVX-512 registers per chunk of 192 columns; chunk-outer order keeps
// a chunk of W's columns (1.3 MB) in L2 across rows, row-outer does not.
// Prints the time and the GFLOP/s a dense [B, ND] x [ND, 768] product would
// need to match it.
//
//   gcc -O3 -march=native -fopenmp bench/sparse_aux_model.c -o /tmp/sparse_aux
//   OMP_NUM_THREADS=2 /tmp/sparse_aux
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { B = 1024, ND = 1664, D = 768, KA = 512, VECS = 12, CH = 16 * VECS };

static float *W, *out, *val;
static int *idx;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* out[b, c0 : c0 + CH] = sum over row b's entries, in VECS registers. */
static void chunk(int b, int c0) {
  __m512 acc[VECS];
  for (int u = 0; u < VECS; u++)
    acc[u] = _mm512_setzero_ps();
  const float *v = val + (long)b * KA;
  const int *ix = idx + (long)b * KA;
  for (int t = 0; t < KA; t++) {
    __m512 s = _mm512_set1_ps(v[t]);
    const float *w = W + (long)ix[t] * D + c0;
    for (int u = 0; u < VECS; u++)
      acc[u] = _mm512_fmadd_ps(s, _mm512_loadu_ps(w + 16 * u), acc[u]);
  }
  for (int u = 0; u < VECS; u++)
    _mm512_storeu_ps(out + (long)b * D + c0 + 16 * u, acc[u]);
}

static void report(const char *name, double t) {
  printf("%-18s %6.2f ms, %3.0f GFLOP/s useful (a dense product over the %d "
         "rows at %3.0f GFLOP/s)\n",
         name, t * 1e3, 2.0 * B * KA * D / t / 1e9, ND,
         2.0 * B * ND * D / t / 1e9);
}

int main(void) {
  W = aligned_alloc(64, sizeof(float) * ND * D);
  out = aligned_alloc(64, sizeof(float) * B * D);
  val = malloc(sizeof(float) * B * KA);
  idx = malloc(sizeof(int) * B * KA);
  for (long i = 0; i < (long)ND * D; i++)
    W[i] = (float)rand() / RAND_MAX;
  /* KA distinct rows of ND per row, in increasing order (as a selection
   * lists them). */
  char *used = malloc(ND);
  for (int b = 0; b < B; b++) {
    for (int j = 0; j < ND; j++)
      used[j] = 0;
    for (int c = 0; c < KA;) {
      int j = rand() % ND;
      if (!used[j]) {
        used[j] = 1;
        c++;
      }
    }
    for (int j = 0, c = 0; j < ND; j++)
      if (used[j]) {
        idx[b * KA + c] = j;
        val[b * KA + c++] = (float)rand() / RAND_MAX;
      }
  }
  free(used);
  for (int rep = 0; rep < 8; rep++) {
    double t0 = now();
#pragma omp parallel
    for (int c0 = 0; c0 < D; c0 += CH) {
#pragma omp for schedule(static)
      for (int b = 0; b < B; b++)
        chunk(b, c0);
    }
    report("chunks outermost:", now() - t0);
  }
  for (int rep = 0; rep < 4; rep++) {
    double t0 = now();
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
      for (int c0 = 0; c0 < D; c0 += CH)
        chunk(b, c0);
    report("rows outermost:", now() - t0);
  }
  return 0;
}
