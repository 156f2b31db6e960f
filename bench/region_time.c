/*===- region_time.c - Time each OpenMP parallel region of a library -----===*
 *
 * Where does a training step's time go? saec's libraries run every
 * parallel loop as one OpenMP region (an outlined function passed to
 * libomp's __kmpc_fork_call). Preloaded, this file stands in for
 * __kmpc_fork_call, times each call and forwards it to libomp; at exit it
 * writes, per outlined function, its library, its offset in that library,
 * the number of calls and their total seconds. bench/region_map.py names
 * the functions from the library's symbols:
 *
 *   gcc -O2 -shared -fPIC bench/region_time.c -o /tmp/region_time.so -ldl
 *   LD_PRELOAD=/tmp/region_time.so \
 *   REGION_TIME_OMP=/usr/lib/llvm-22/lib/libomp.so.5 \
 *   REGION_TIME_OUT=/tmp/regions.txt \
 *     /usr/bin/python3 bench/interleave.py lib.so --steps 12
 *   /usr/bin/python3 bench/region_map.py lib.so /tmp/regions.txt 12
 *
 * REGION_TIME_OMP names the libomp to forward to (the libraries link
 * LLVM's); REGION_TIME_OUT the output file (standard error without it).
 * Regions are timed on the calling thread, so nested regions count in
 * their parent too. Not thread safe across concurrent top-level regions.
 *===----------------------------------------------------------------------===*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef void (*ForkCall)(void *, int, void *, ...);

enum { kMaxRegions = 4096, kMaxArgs = 16 };
static ForkCall forward;
static void *tasks[kMaxRegions];
static long calls[kMaxRegions];
static double seconds[kMaxRegions];
static int numRegions;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void report(void) {
  const char *path = getenv("REGION_TIME_OUT");
  FILE *out = path ? fopen(path, "w") : stderr;
  if (!out)
    return;
  for (int i = 0; i < numRegions; ++i) {
    Dl_info info = {0};
    dladdr(tasks[i], &info);
    fprintf(out, "%s %lx %ld %.6f\n", info.dli_fname ? info.dli_fname : "?",
            (unsigned long)((char *)tasks[i] - (char *)info.dli_fbase),
            calls[i], seconds[i]);
  }
  if (path)
    fclose(out);
}

static void bind(void) {
  const char *omp = getenv("REGION_TIME_OMP");
  void *lib = omp ? dlopen(omp, RTLD_NOW | RTLD_GLOBAL) : NULL;
  forward = lib ? (ForkCall)dlsym(lib, "__kmpc_fork_call") : NULL;
  if (!forward) {
    if (omp)
      fprintf(stderr, "region_time: %s\n", dlerror());
    else
      fprintf(stderr, "region_time: set REGION_TIME_OMP to the libomp to "
                      "forward to\n");
    exit(2);
  }
  atexit(report);
}

void __kmpc_fork_call(void *loc, int argc, void *task, ...) {
  if (!forward)
    bind();
  /* The outlined function's arguments are pointers; libomp passes argc of
   * them on, so the extra ones are never read. */
  void *a[kMaxArgs] = {0};
  if (argc > kMaxArgs) {
    fprintf(stderr, "region_time: a region with %d arguments\n", argc);
    exit(2);
  }
  va_list ap;
  va_start(ap, task);
  for (int i = 0; i < argc; ++i)
    a[i] = va_arg(ap, void *);
  va_end(ap);
  double start = now();
  forward(loc, argc, task, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
          a[9], a[10], a[11], a[12], a[13], a[14], a[15]);
  double spent = now() - start;
  int i = 0;
  while (i < numRegions && tasks[i] != task)
    ++i;
  if (i == numRegions) {
    if (numRegions == kMaxRegions)
      return;
    tasks[numRegions++] = task;
  }
  ++calls[i];
  seconds[i] += spent;
}
