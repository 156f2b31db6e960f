/*===- workspace.c - The work-buffer heap of generated libraries ---------===*
 *
 * saec compiles this file into every library it links (the source is
 * embedded in saec; see compiler/lib/Target/CPU/CPUTarget.cpp). The
 * generated code allocates its work buffers through the two functions below
 * (finalize-memref-to-llvm with use-generic-functions), not through malloc
 * and free directly.
 *
 * Why: an entry point allocates the same large buffers on every call (a
 * training step at d = 768, n = 16384 uses hundreds of MiB). glibc maps
 * blocks above its mmap threshold (at most 32 MiB) afresh on each malloc and
 * unmaps them on free, and trims the heap's free top, so a caller that calls
 * an entry point again and again would fault every page of those buffers in
 * on every call. Blocks of at least kMinLarge bytes (128 KiB, glibc's
 * initial mmap threshold) come from this heap instead, which keeps freed
 * memory mapped for the next allocation of any size, as glibc's heap does
 * with a raised mmap and trim threshold.
 *
 * The heap (blocks below kMinLarge go to malloc and free, and so do large
 * ones when the heap cannot reserve more address space):
 *  - Memory is reserved in segments of at least kSegment bytes of address
 *    space (pages are only backed once written), and handed out in whole
 *    pages (so that madvise never reaches into a neighbour).
 *  - An allocation takes the start of the smallest free range that holds
 *    it; a free returns the block's range, merged with free neighbours. So
 *    the memory a caller keeps is about the most a call has had live at
 *    once.
 *  - A free range that no allocation or free has touched for kMaxIdle
 *    allocations and frees of large blocks has its pages given back to
 *    the kernel (madvise), keeping the address space (a training step with
 *    AuxK at d = 768, n = 16384 allocates 49 large blocks and frees them,
 *    so 512 is about 5 steps). A free next to it resets its age, as a
 *    merge does: after one large call, smaller ones that use the start of
 *    the same free range keep the large call's pages, as glibc's heap
 *    with a raised trim threshold would.
 *  - Every segment is unmapped when the library is unloaded.
 *
 * Every function is thread safe (one mutex, taken only for large blocks,
 * and held across fork) and hidden: each library has its own heap.
 *===----------------------------------------------------------------------===*/

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SAE_WS_HIDDEN __attribute__((visibility("hidden")))

/* Every block has a header in the 16 bytes before the caller's memory: its
 * capacity and whether it came from the heap. A malloc'ed block has the
 * header in front (malloc's 16-byte alignment is kept); a heap block spans
 * whole units and the caller's memory starts kLargeOffset bytes into it
 * (64-byte aligned). The generated code aligns further itself where an
 * allocation asks for it. */
enum {
  kHeader = 16,
  kLargeOffset = 64,
  kMaxRanges = 1024,
  kMaxSegments = 64,
  kMaxIdle = 512,
};
static const size_t kMinLarge = (size_t)1 << 17;
static const size_t kSegment = (size_t)1 << 30;
/* `since` of a range whose pages have been given back. */
static const uint64_t kReleased = UINT64_MAX;

struct Range {
  char *start;
  size_t length;
  uint64_t since; /* the clock when it became free, or kReleased */
};

struct Segment {
  char *base;
  size_t length;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* The free ranges, by address; neighbours in one segment are merged. */
static struct Range ranges[kMaxRanges];
static int nRanges;
static struct Segment segments[kMaxSegments];
static int nSegments;
/* Counts allocations and frees of large blocks. */
static uint64_t clock_;
/* Large blocks handed out and not yet freed. */
static size_t live;

struct Header {
  size_t capacity;
  size_t fromHeap;
};

static struct Header *headerOf(void *ptr) {
  return (struct Header *)((char *)ptr - kHeader);
}

static void removeRange(int i) {
  memmove(&ranges[i], &ranges[i + 1], sizeof(ranges[0]) * (nRanges - i - 1));
  --nRanges;
}

static int segmentOf(const char *p) {
  for (int s = 0; s < nSegments; ++s)
    if (p >= segments[s].base && p < segments[s].base + segments[s].length)
      return s;
  return -1;
}

/* Whether the free ranges a and b (a before b) touch in one segment. */
static int adjacent(const struct Range *a, const struct Range *b) {
  return a->start + a->length == b->start &&
         segmentOf(a->start) == segmentOf(b->start);
}

static uint64_t mergedSince(uint64_t a, uint64_t b) {
  if (a == kReleased)
    return b;
  if (b == kReleased)
    return a;
  return a > b ? a : b;
}

/* Adds [start, start + length) to the free ranges, merged with its
 * neighbours. With the list full, gives its pages back and forgets it (the
 * address space stays reserved until the library is unloaded). */
static void addRange(char *start, size_t length, uint64_t since) {
  int i = 0;
  while (i < nRanges && ranges[i].start < start)
    ++i;
  struct Range r = {start, length, since};
  if (i > 0 && adjacent(&ranges[i - 1], &r)) {
    ranges[i - 1].length += length;
    ranges[i - 1].since = mergedSince(ranges[i - 1].since, since);
    if (i < nRanges && adjacent(&ranges[i - 1], &ranges[i])) {
      ranges[i - 1].length += ranges[i].length;
      ranges[i - 1].since = mergedSince(ranges[i - 1].since, ranges[i].since);
      removeRange(i);
    }
    return;
  }
  if (i < nRanges && adjacent(&r, &ranges[i])) {
    ranges[i].start = start;
    ranges[i].length += length;
    ranges[i].since = mergedSince(ranges[i].since, since);
    return;
  }
  if (nRanges == kMaxRanges) {
    madvise(start, length, MADV_DONTNEED);
    return;
  }
  memmove(&ranges[i + 1], &ranges[i], sizeof(ranges[0]) * (nRanges - i));
  ranges[i] = r;
  ++nRanges;
}

/* Gives back the pages of the ranges free for more than kMaxIdle events. */
static void releaseIdle(void) {
  for (int i = 0; i < nRanges; ++i) {
    if (ranges[i].since != kReleased && clock_ - ranges[i].since > kMaxIdle) {
      madvise(ranges[i].start, ranges[i].length, MADV_DONTNEED);
      ranges[i].since = kReleased;
    }
  }
}

/* Reserves a segment of at least `length` bytes as one free range. */
static int grow(size_t length) {
  if (nSegments == kMaxSegments)
    return 0;
  size_t want = length > kSegment ? length : kSegment;
  void *base = mmap(NULL, want, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED && want > length) {
    want = length;
    base = mmap(NULL, want, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  if (base == MAP_FAILED)
    return 0;
  segments[nSegments++] = (struct Segment){base, want};
  addRange(base, want, kReleased);
  return 1;
}

/* The smallest free range of at least `length` bytes, or -1. */
static int bestFit(size_t length) {
  int best = -1;
  for (int i = 0; i < nRanges; ++i)
    if (ranges[i].length >= length &&
        (best < 0 || ranges[i].length < ranges[best].length))
      best = i;
  return best;
}

static void *allocLarge(size_t size) {
  if (size > SIZE_MAX / 2)
    return NULL;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t length = (size + kLargeOffset + page - 1) / page * page;
  pthread_mutex_lock(&lock);
  ++clock_;
  int i = bestFit(length);
  if (i < 0 && grow(length))
    i = bestFit(length);
  char *start = NULL;
  if (i >= 0) {
    ++live;
    start = ranges[i].start;
    ranges[i].start += length;
    ranges[i].length -= length;
    if (ranges[i].length == 0)
      removeRange(i);
  }
  releaseIdle();
  pthread_mutex_unlock(&lock);
  if (!start)
    return NULL;
  void *ptr = start + kLargeOffset;
  *headerOf(ptr) = (struct Header){length - kLargeOffset, 1};
  return ptr;
}

static void freeLarge(void *ptr) {
  size_t length = headerOf(ptr)->capacity + kLargeOffset;
  pthread_mutex_lock(&lock);
  ++clock_;
  --live;
  addRange((char *)ptr - kLargeOffset, length, clock_);
  releaseIdle();
  pthread_mutex_unlock(&lock);
}

SAE_WS_HIDDEN void *_mlir_memref_to_llvm_alloc(size_t size) {
  if (size >= kMinLarge) {
    void *ptr = allocLarge(size);
    if (ptr)
      return ptr;
    /* The heap could not grow (its segments used up, or the address space
     * limited): malloc, as for a small block. */
  }
  if (size > SIZE_MAX - kHeader)
    return NULL;
  struct Header *block = malloc(kHeader + size);
  if (!block)
    return NULL;
  *block = (struct Header){size, 0};
  return (char *)block + kHeader;
}

SAE_WS_HIDDEN void _mlir_memref_to_llvm_free(void *ptr) {
  if (!ptr)
    return;
  if (headerOf(ptr)->fromHeap)
    freeLarge(ptr);
  else
    free(headerOf(ptr));
}

/* A child forked while another thread held the lock would wait on it for
 * ever: fork takes it first, and both sides release it (glibc drops these
 * handlers when the library is unloaded). */
static void lockForFork(void) { pthread_mutex_lock(&lock); }
static void unlockAfterFork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void registerForkHandlers(void) {
  pthread_atfork(lockForFork, unlockAfterFork, unlockAfterFork);
}

/* With blocks still live (a thread inside an entry point while the process
 * exits), the segments stay mapped: the process is going anyway, and that
 * thread must not fault on its buffers. */
__attribute__((destructor)) static void unmapSegments(void) {
  pthread_mutex_lock(&lock);
  if (live == 0) {
    for (int s = 0; s < nSegments; ++s)
      munmap(segments[s].base, segments[s].length);
    nSegments = 0;
    nRanges = 0;
  }
  pthread_mutex_unlock(&lock);
}
