//===- WorkspaceTest.cpp - Tests of the generated code's buffer heap -----===//
//
// runtime/src/cpu/workspace.c is compiled into this test as saec compiles
// it into every library: these tests call its two allocation functions the
// way generated code does and check the policy its comment states, asking
// the kernel (mincore) which pages are resident.
//
//===----------------------------------------------------------------------===//

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern "C" {
void *_mlir_memref_to_llvm_alloc(size_t size);
void _mlir_memref_to_llvm_free(void *ptr);
}

namespace {

constexpr size_t kMiB = size_t(1) << 20;

void *alloc(size_t size) { return _mlir_memref_to_llvm_alloc(size); }
void release(void *p) { _mlir_memref_to_llvm_free(p); }

/// Fills `size` bytes at `p` and checks that they read back.
void fill(void *p, size_t size, unsigned char value) {
  ASSERT_NE(p, nullptr);
  std::memset(p, value, size);
  auto *bytes = static_cast<unsigned char *>(p);
  EXPECT_EQ(bytes[0], value);
  EXPECT_EQ(bytes[size - 1], value);
}

/// Allocates `size` bytes, expects them at `at`, fills and frees them.
void expectTakenAt(size_t size, void *at, unsigned char value) {
  void *p = alloc(size);
  EXPECT_EQ(p, at);
  fill(p, size, value);
  release(p);
}

/// How many of the whole pages in [p, p + size) are resident.
size_t residentPages(void *p, size_t size) {
  size_t page = size_t(sysconf(_SC_PAGESIZE));
  uintptr_t first = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  uintptr_t last = (reinterpret_cast<uintptr_t>(p) + size) / page * page;
  std::vector<unsigned char> vec((last - first) / page);
  EXPECT_EQ(mincore(reinterpret_cast<void *>(first), last - first, vec.data()),
            0);
  size_t n = 0;
  for (unsigned char v : vec)
    n += v & 1;
  return n;
}

size_t pagesIn(size_t size) { return size / size_t(sysconf(_SC_PAGESIZE)); }

TEST(Workspace, SmallBlocksComeFromMalloc) {
  void *p = alloc(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
  fill(p, 1000, 1);
  release(p);
  release(nullptr);
}

TEST(Workspace, FreedMemoryIsReusedWithItsPages) {
  void *p = alloc(8 * kMiB);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  fill(p, 8 * kMiB, 7);
  release(p);
  // The same size again: the same memory, its pages still there (glibc
  // would have unmapped them, and the caller would fault them in again).
  void *q = alloc(8 * kMiB);
  EXPECT_EQ(q, p);
  EXPECT_GE(residentPages(q, 8 * kMiB) + 2, pagesIn(8 * kMiB));
  release(q);
  // Two smaller blocks share it.
  void *a = alloc(3 * kMiB);
  void *b = alloc(4 * kMiB);
  EXPECT_EQ(a, p);
  EXPECT_GT(b, a);
  EXPECT_LT(static_cast<char *>(b), static_cast<char *>(p) + 4 * kMiB);
  EXPECT_GE(residentPages(b, 4 * kMiB) + 2, pagesIn(4 * kMiB));
  fill(a, 3 * kMiB, 1);
  fill(b, 4 * kMiB, 2);
  release(a);
  release(b);
}

TEST(Workspace, FreeNeighboursMerge) {
  void *a = alloc(2 * kMiB);
  void *b = alloc(2 * kMiB);
  void *c = alloc(2 * kMiB);
  void *guard = alloc(kMiB); // keeps the hole apart from the free tail
  ASSERT_LT(a, b);
  ASSERT_LT(b, c);
  release(a);
  release(c);
  release(b);
  // The three 2 MiB holes are one now: 6 MiB fits at a.
  expectTakenAt(6 * kMiB, a, 3);
  release(guard);
}

TEST(Workspace, SmallestFittingHoleWins) {
  void *h5 = alloc(5 * kMiB);
  void *g1 = alloc(kMiB);
  void *h3 = alloc(3 * kMiB);
  void *g2 = alloc(kMiB);
  release(h5);
  release(h3);
  void *p = alloc(3 * kMiB);
  EXPECT_EQ(p, h3);
  void *q = alloc(5 * kMiB);
  EXPECT_EQ(q, h5);
  for (void *x : {p, q, g1, g2})
    release(x);
}

TEST(Workspace, IdleMemoryIsGivenBack) {
  void *p = alloc(4 * kMiB);
  void *guard = alloc(kMiB); // p's hole will not merge with the busy tail
  fill(p, 4 * kMiB, 9);
  release(p);
  EXPECT_GE(residentPages(p, 4 * kMiB) + 2, pagesIn(4 * kMiB));
  // A caller that uses only larger blocks from now on: after 300
  // allocations and frees of 5 MiB (600 events, more than the 512 allowed),
  // p's hole has given its pages back.
  for (int i = 0; i < 300; ++i) {
    void *q = alloc(5 * kMiB);
    fill(q, 64, 1);
    release(q);
  }
  EXPECT_EQ(residentPages(p, 4 * kMiB), 0u);
  // Still usable.
  expectTakenAt(4 * kMiB, p, 4);
  release(guard);
}

TEST(Workspace, LargeBlocksComeFromMallocWhenTheHeapCannotGrow) {
  // In a child process: 64 blocks just over a segment's 1 GiB take the
  // heap's 64 segments (address space only; nothing is written but a byte).
  // The 65th cannot be reserved: it comes from malloc, and frees as one.
  EXPECT_EXIT(
      {
        const size_t huge = (size_t(1) << 30) + 4096;
        std::vector<char *> blocks;
        for (int i = 0; i < 65; ++i) {
          auto *p = static_cast<char *>(alloc(huge));
          if (!p)
            std::exit(2);
          p[0] = p[huge - 1] = char(i);
          blocks.push_back(p);
        }
        for (char *p : blocks)
          release(p);
        // The heap still serves (from the freed segments).
        void *q = alloc(8 * kMiB);
        std::memset(q, 1, 8 * kMiB);
        release(q);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(Workspace, ForkWhileAnotherThreadAllocates) {
  // A child forked while another thread holds the heap's lock must still
  // allocate: each child gets 5 seconds (then SIGALRM kills it).
  std::atomic<bool> stop{false};
  std::thread busy([&stop] {
    while (!stop)
      release(alloc(2 * kMiB));
  });
  int failures = 0;
  for (int i = 0; i < 50; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      alarm(5);
      void *p = alloc(3 * kMiB);
      std::memset(p, 1, 3 * kMiB);
      release(p);
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  stop = true;
  busy.join();
  EXPECT_EQ(failures, 0);
}

TEST(Workspace, ThreadsNeverShareMemory) {
  // Four threads allocate, fill, check and free blocks of three sizes; a
  // range handed to two threads at once would fail a check.
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &failures] {
      for (int i = 0; i < 200; ++i) {
        size_t size = (1 + size_t((i + t) % 3)) * kMiB;
        auto *p = static_cast<unsigned char *>(alloc(size));
        if (!p) {
          ++failures[t];
          continue;
        }
        std::memset(p, t + 1, size);
        std::this_thread::yield();
        for (size_t j = 0; j < size; j += 4096)
          if (p[j] != t + 1 || p[size - 1] != t + 1)
            ++failures[t];
        release(p);
      }
    });
  }
  for (std::thread &th : threads)
    th.join();
  for (int t = 0; t < 4; ++t)
    EXPECT_EQ(failures[t], 0) << "thread " << t;
}

} // namespace
