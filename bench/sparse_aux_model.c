// bench/sparse_aux_model.c: a C model of AuxK's decode as a sparse product,
// to compare with the dense product over the dead latents that saec emits.
// B = 1024 rows, each with k_aux = 512 entries (distinct, in latent order)
// among ND = 1664 dead rows of a [ND, 768] decoder (10% of n = 16384 dead,
// rounded up to whole panels). out[b] = sum_t v[b, t] * W[idx[b, t]],
// summed in AVX-512 registers, a chunk of CH columns at a time. Three
// layouts of W, each timed 6 times:
//  - "rows":    W as it is, chunk-outer (a chunk of W's columns is meant to
//               stay in L2 across rows). But a chunk's rows are 3 KiB
//               apart, so they fall in 1/16 of L2's sets: conflict misses.
//  - "panels":  W's chunks packed contiguously first ([D/CH][ND][CH]).
//  - "groups":  panels, and each row's entries taken G latents at a time,
//               so that the G panel rows in use (40 KiB) stay in L1; the
//               row's partial sums are reloaded once per group.
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

enum {
  B = 1024,
  ND = 1664,
  D = 768,
  KA = 512,
  VECS = 4,
  CH = 16 * VECS,
  G = 160,
  NG = (ND + G - 1) / G,
};

static float *W, *P, *out, *val;
static int *idx, *off;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* out[b, c0 : c0 + CH] (+)= row b's entries t0 <= t < t1, rows of `w`
 * `stride` floats apart. */
static void chunk(int b, int c0, int t0, int t1, const float *w, long stride,
                  int accumulate) {
  __m512 acc[VECS];
  float *o = out + (long)b * D + c0;
  for (int u = 0; u < VECS; u++)
    acc[u] = accumulate ? _mm512_loadu_ps(o + 16 * u) : _mm512_setzero_ps();
  const float *v = val + (long)b * KA;
  const int *ix = idx + (long)b * KA;
  for (int t = t0; t < t1; t++) {
    __m512 s = _mm512_set1_ps(v[t]);
    const float *row = w + ix[t] * stride;
    for (int u = 0; u < VECS; u++)
      acc[u] = _mm512_fmadd_ps(s, _mm512_loadu_ps(row + 16 * u), acc[u]);
  }
  for (int u = 0; u < VECS; u++)
    _mm512_storeu_ps(o + 16 * u, acc[u]);
}

static void report(const char *name, double t) {
  printf("%-8s %6.2f ms, %3.0f GFLOP/s useful (a dense product over the %d "
         "rows at %3.0f GFLOP/s)\n",
         name, t * 1e3, 2.0 * B * KA * D / t / 1e9, ND,
         2.0 * B * ND * D / t / 1e9);
}

static void rows(void) {
#pragma omp parallel
  for (int c0 = 0; c0 < D; c0 += CH) {
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++)
      chunk(b, c0, 0, KA, W + c0, D, 0);
  }
}

static void panels(void) {
#pragma omp parallel
  for (int c0 = 0; c0 < D; c0 += CH) {
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++)
      chunk(b, c0, 0, KA, P + (long)c0 * ND, CH, 0);
  }
}

static void groups(void) {
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), me = omp_get_thread_num();
    int b0 = B * me / nt, b1 = B * (me + 1) / nt;
    for (int c0 = 0; c0 < D; c0 += CH)
      for (int g = 0; g < NG; g++)
        for (int b = b0; b < b1; b++)
          chunk(b, c0, off[b * (NG + 1) + g], off[b * (NG + 1) + g + 1],
                P + (long)c0 * ND, CH, g > 0);
  }
}

int main(void) {
  W = aligned_alloc(64, sizeof(float) * ND * D);
  P = aligned_alloc(64, sizeof(float) * ND * D);
  out = aligned_alloc(64, sizeof(float) * B * D);
  val = malloc(sizeof(float) * B * KA);
  idx = malloc(sizeof(int) * B * KA);
  off = malloc(sizeof(int) * B * (NG + 1));
  for (long i = 0; i < (long)ND * D; i++)
    W[i] = (float)rand() / RAND_MAX;
  for (int c0 = 0; c0 < D; c0 += CH)
    for (int j = 0; j < ND; j++)
      for (int c = 0; c < CH; c++)
        P[(long)c0 * ND + (long)j * CH + c] = W[(long)j * D + c0 + c];
  /* KA distinct rows of ND per row, in increasing order (as a selection
   * lists them), and where each group of G latents starts. */
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
    for (int g = 0, t = 0; g <= NG; g++) {
      while (t < KA && idx[b * KA + t] < g * G)
        t++;
      off[b * (NG + 1) + g] = t;
    }
  }
  free(used);
  struct {
    const char *name;
    void (*run)(void);
  } layouts[] = {{"rows", rows}, {"panels", panels}, {"groups", groups}};
  for (int l = 0; l < 3; l++)
    for (int rep = 0; rep < 6; rep++) {
      double t0 = now();
      layouts[l].run();
      report(layouts[l].name, now() - t0);
    }
  return 0;
}
