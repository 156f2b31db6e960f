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
//  - "gmajor":  groups, with the entries stored group by group (each
//               group's rows in order, so that the entry lists and the
//               sums, also stored as panels, are read in sequence) and
//               summed in two sets of registers (even and odd entries:
//               one set waits on the adds' latency).
//  - "l1":      gmajor's loop with every entry on one panel row: the
//               multiply-adds alone, the most a layout can reach.
// Prints the time and the GFLOP/s a dense [B, ND] x [ND, 768] product would
// need to match it.
//
//   gcc -O3 -march=native -fopenmp bench/sparse_aux_model.c -o /tmp/sparse_aux -lm
//   OMP_NUM_THREADS=2 /tmp/sparse_aux
#include <immintrin.h>
#include <math.h>
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
/* gmajor: entries of group g, row b at goff[g * (B + 1) + b] ..; sums as
 * panels [D / CH][B][CH]. */
static float *gval, *outp;
static int *gidx, *goff;

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

/* o[0 : CH] (+)= the entries t0 <= t < t1 of gval/gidx, rows of the
 * panel `w` (stride CH; `stride` 0 reads row 0 for every entry). */
static void chunk2(float *o, int t0, int t1, const float *w, long stride,
                   int accumulate) {
  __m512 even[VECS], odd[VECS];
  for (int u = 0; u < VECS; u++) {
    even[u] = accumulate ? _mm512_load_ps(o + 16 * u) : _mm512_setzero_ps();
    odd[u] = _mm512_setzero_ps();
  }
  int t = t0;
  for (; t + 1 < t1; t += 2) {
    __m512 s0 = _mm512_set1_ps(gval[t]), s1 = _mm512_set1_ps(gval[t + 1]);
    const float *r0 = w + gidx[t] * stride, *r1 = w + gidx[t + 1] * stride;
    for (int u = 0; u < VECS; u++) {
      even[u] = _mm512_fmadd_ps(s0, _mm512_load_ps(r0 + 16 * u), even[u]);
      odd[u] = _mm512_fmadd_ps(s1, _mm512_load_ps(r1 + 16 * u), odd[u]);
    }
  }
  if (t < t1) {
    __m512 s0 = _mm512_set1_ps(gval[t]);
    const float *r0 = w + gidx[t] * stride;
    for (int u = 0; u < VECS; u++)
      even[u] = _mm512_fmadd_ps(s0, _mm512_load_ps(r0 + 16 * u), even[u]);
  }
  for (int u = 0; u < VECS; u++)
    _mm512_store_ps(o + 16 * u, _mm512_add_ps(even[u], odd[u]));
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

/* Chunk by chunk, group by group, each thread's rows: groups' layout, or
 * gmajor's (`major`, panel rows `stride` floats apart). */
static void by_group(int major, long stride) {
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), me = omp_get_thread_num();
    int b0 = B * me / nt, b1 = B * (me + 1) / nt;
    for (int c0 = 0; c0 < D; c0 += CH)
      for (int g = 0; g < NG; g++)
        for (int b = b0; b < b1; b++) {
          const float *panel = P + (long)c0 * ND;
          if (major)
            chunk2(outp + (long)c0 * B + (long)b * CH, goff[g * (B + 1) + b],
                   goff[g * (B + 1) + b + 1], panel, stride, g > 0);
          else
            chunk(b, c0, off[b * (NG + 1) + g], off[b * (NG + 1) + g + 1],
                  panel, CH, g > 0);
        }
  }
}
static void groups(void) { by_group(0, CH); }
static void gmajor(void) { by_group(1, CH); }
static void l1(void) { by_group(1, 0); }

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
  gval = malloc(sizeof(float) * B * KA);
  gidx = malloc(sizeof(int) * B * KA);
  goff = malloc(sizeof(int) * NG * (B + 1));
  outp = aligned_alloc(64, sizeof(float) * B * D);
  for (int g = 0, t = 0; g < NG; g++) {
    for (int b = 0; b < B; b++) {
      goff[g * (B + 1) + b] = t;
      for (int u = off[b * (NG + 1) + g]; u < off[b * (NG + 1) + g + 1]; u++) {
        gval[t] = val[b * KA + u];
        gidx[t++] = idx[b * KA + u];
      }
    }
    goff[g * (B + 1) + B] = t;
  }
  struct {
    const char *name;
    void (*run)(void);
  } layouts[] = {{"rows", rows},     {"panels", panels}, {"groups", groups},
                 {"gmajor", gmajor}, {"l1", l1}};
  for (int l = 0; l < 5; l++) {
    for (int rep = 0; rep < 6; rep++) {
      double t0 = now();
      layouts[l].run();
      report(layouts[l].name, now() - t0);
    }
    if (layouts[l].run == gmajor) {
      /* The same sums as groups' (run before it), in another order. */
      double worst = 0;
      for (int b = 0; b < B; b++)
        for (int c = 0; c < D; c++) {
          double a = out[(long)b * D + c],
                 g = outp[(long)(c / CH * CH) * B + (long)b * CH + c % CH];
          double e = fabs(a - g) / (1 + fabs(a));
          worst = e > worst ? e : worst;
        }
      printf("gmajor against groups: largest relative difference %.1e\n",
             worst);
      if (worst > 1e-5)
        return 1;
    }
  }
  return 0;
}
