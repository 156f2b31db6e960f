//===- NpzTest.cpp - Tests of .npz (stored ZIP of .npy) archives ----------===//

#include "TestUtil.h"

using namespace saetest;

namespace {

struct NpzGuard {
  sae_rt_npz *npz = nullptr;
  ~NpzGuard() { sae_rt_npz_close(npz); }
};

/// Writes values [2, 3] float32 and indices [2, 2] int32 to `path`.
void writeSample(const std::string &path) {
  std::vector<float> values = {1.5f, -2.0f, 0.25f, 8.0f, 9.5f, -0.0f};
  std::vector<int32_t> indices = {7, 0, 3, 65535};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, 3}, values),
                            borrow(SAE_RT_DTYPE_INT32, {2, 2}, indices)};
  const char *names[2] = {"values", "indices"};
  ASSERT_EQ(sae_rt_npz_write(path.c_str(), 2, names, arrays), SAE_RT_OK)
      << sae_rt_last_error();
}

void checkSample(const std::string &path) {
  NpzGuard g;
  ASSERT_EQ(sae_rt_npz_open(path.c_str(), &g.npz), SAE_RT_OK)
      << sae_rt_last_error();
  ASSERT_EQ(sae_rt_npz_count(g.npz), 2u);
  EXPECT_STREQ(sae_rt_npz_name(g.npz, 0), "values");
  EXPECT_STREQ(sae_rt_npz_name(g.npz, 1), "indices");
  EXPECT_EQ(sae_rt_npz_name(g.npz, 2), nullptr);
  const sae_rt_array *values = sae_rt_npz_find(g.npz, "values");
  const sae_rt_array *indices = sae_rt_npz_find(g.npz, "indices");
  ASSERT_NE(values, nullptr);
  ASSERT_NE(indices, nullptr);
  EXPECT_EQ(sae_rt_npz_find(g.npz, "values.npy"), nullptr);
  EXPECT_EQ(values->dtype, SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(values->shape[0], 2);
  EXPECT_EQ(values->shape[1], 3);
  const float *v = static_cast<const float *>(values->data);
  EXPECT_EQ(v[0], 1.5f);
  EXPECT_EQ(v[4], 9.5f);
  EXPECT_EQ(indices->dtype, SAE_RT_DTYPE_INT32);
  const int32_t *i = static_cast<const int32_t *>(indices->data);
  EXPECT_EQ(i[0], 7);
  EXPECT_EQ(i[3], 65535);
}

TEST(NpzTest, RoundTripIsExact) {
  TempDir dir;
  writeSample(dir.file("z.npz"));
  checkSample(dir.file("z.npz"));
  std::string bytes = readFile(dir.file("z.npz"));
  EXPECT_EQ(bytes.substr(0, 4), std::string("PK\x03\x04", 4));
  EXPECT_TRUE(contains(bytes, "values.npy"));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"z.npz"});
}

TEST(NpzTest, Zip64RecordsRoundTrip) {
  TempDir dir;
  sae_rt_testing_set_fault("npz.force_zip64");
  writeSample(dir.file("z64.npz"));
  sae_rt_testing_set_fault(nullptr);
  std::string bytes = readFile(dir.file("z64.npz"));
  // The ZIP64 end record and locator are present.
  EXPECT_TRUE(contains(bytes, std::string("PK\x06\x06", 4)));
  EXPECT_TRUE(contains(bytes, std::string("PK\x06\x07", 4)));
  checkSample(dir.file("z64.npz"));
}

TEST(NpzTest, EmptyArchive) {
  TempDir dir;
  ASSERT_EQ(sae_rt_npz_write(dir.file("e.npz").c_str(), 0, nullptr, nullptr),
            SAE_RT_OK);
  NpzGuard g;
  ASSERT_EQ(sae_rt_npz_open(dir.file("e.npz").c_str(), &g.npz), SAE_RT_OK);
  EXPECT_EQ(sae_rt_npz_count(g.npz), 0u);
}

TEST(NpzTest, WriteRejectsDuplicateAndEmptyNames) {
  TempDir dir;
  std::vector<float> v = {1};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {1}, v),
                            borrow(SAE_RT_DTYPE_FLOAT32, {1}, v)};
  const char *same[2] = {"a", "a"};
  expectError(sae_rt_npz_write(dir.file("d.npz").c_str(), 2, same, arrays),
              SAE_RT_ERR_ARG, {"d.npz", "duplicate member 'a'"});
  const char *empty[2] = {"a", ""};
  expectError(sae_rt_npz_write(dir.file("d.npz").c_str(), 2, empty, arrays),
              SAE_RT_ERR_ARG, {"empty name"});
  EXPECT_TRUE(dir.list().empty());
}

/// Offset of the first occurrence of `needle` in `haystack` (must exist).
size_t offsetOf(const std::string &haystack, const std::string &needle,
                size_t from = 0) {
  size_t at = haystack.find(needle, from);
  EXPECT_NE(at, std::string::npos);
  return at;
}

TEST(NpzTest, CorruptDataFailsTheCrc) {
  TempDir dir;
  std::string path = dir.file("crc.npz");
  writeSample(path);
  std::string bytes = readFile(path);
  // Flip a bit of the first float of 'values' (data ends before 'indices').
  size_t header = offsetOf(bytes, "\x93NUMPY");
  size_t data = offsetOf(bytes, "\n", header) + 1;
  bytes[data] ^= 0x01;
  writeFile(path, bytes);
  NpzGuard g;
  expectError(sae_rt_npz_open(path.c_str(), &g.npz), SAE_RT_ERR_FORMAT,
              {"crc.npz", "member 'values.npy'", "CRC-32 mismatch"});
  EXPECT_EQ(g.npz, nullptr);
}

TEST(NpzTest, CompressedMembersAreRejectedClearly) {
  TempDir dir;
  std::string path = dir.file("deflate.npz");
  writeSample(path);
  std::string bytes = readFile(path);
  // Mark the first member as deflated in its central directory entry.
  size_t central = offsetOf(bytes, std::string("PK\x01\x02", 4));
  bytes[central + 10] = 8;
  writeFile(path, bytes);
  NpzGuard g;
  expectError(sae_rt_npz_open(path.c_str(), &g.npz), SAE_RT_ERR_FORMAT,
              {"deflate.npz", "member 'values.npy' is compressed", "deflate",
               "numpy.savez_compressed"});
}

TEST(NpzTest, MalformedArchives) {
  TempDir dir;
  NpzGuard g;
  writeFile(dir.file("tiny.npz"), "PK");
  expectError(sae_rt_npz_open(dir.file("tiny.npz").c_str(), &g.npz),
              SAE_RT_ERR_FORMAT, {"tiny.npz", "too small"});
  writeFile(dir.file("text.npz"), std::string(100, 'x'));
  expectError(sae_rt_npz_open(dir.file("text.npz").c_str(), &g.npz),
              SAE_RT_ERR_FORMAT, {"text.npz", "end of central directory"});

  writeSample(dir.file("good.npz"));
  std::string good = readFile(dir.file("good.npz"));
  // Cut the archive in the middle: the end record is gone.
  writeFile(dir.file("cut.npz"), good.substr(0, good.size() / 2));
  expectError(sae_rt_npz_open(dir.file("cut.npz").c_str(), &g.npz),
              SAE_RT_ERR_FORMAT, {"cut.npz"});
  // Central directory offset pointing past the end.
  std::string bad = good;
  size_t end = bad.size() - 22;
  ASSERT_EQ(bad.substr(end, 4), std::string("PK\x05\x06", 4));
  bad[end + 16] = '\xff';
  bad[end + 17] = '\xff';
  writeFile(dir.file("offset.npz"), bad);
  expectError(sae_rt_npz_open(dir.file("offset.npz").c_str(), &g.npz),
              SAE_RT_ERR_FORMAT, {"offset.npz", "central directory"});
  // A member whose .npy header is broken names the member.
  bad = good;
  bad[offsetOf(bad, "\x93NUMPY") + 1] = 'X';
  writeFile(dir.file("member.npz"), bad);
  expectError(sae_rt_npz_open(dir.file("member.npz").c_str(), &g.npz),
              SAE_RT_ERR_FORMAT,
              {"member.npz: member 'values.npy'", "bad magic"});
  EXPECT_EQ(g.npz, nullptr);
}

TEST(NpzTest, InteroperatesWithNumpy) {
  std::string python = pythonWithNumpy();
  if (python.empty())
    GTEST_SKIP() << "no python3 with numpy";
  TempDir dir;
  writeSample(dir.file("ours.npz"));
  sae_rt_testing_set_fault("npz.force_zip64");
  writeSample(dir.file("ours64.npz"));
  sae_rt_testing_set_fault(nullptr);
  std::string script =
      "import numpy as np, sys\n"
      "for path in sys.argv[1:3]:\n"
      "    with np.load(path) as z:\n"
      "        assert sorted(z.files) == ['indices', 'values'], z.files\n"
      "        v, i = z['values'], z['indices']\n"
      "        assert v.dtype == np.float32 and v.shape == (2, 3)\n"
      "        assert v.tolist() == [[1.5, -2.0, 0.25], [8.0, 9.5, -0.0]]\n"
      "        assert i.dtype == np.int32 and i.tolist() == [[7, 0], [3, "
      "65535]]\n"
      "np.savez(sys.argv[3], a=np.arange(6, dtype=np.float32).reshape(2, 3),\n"
      "         b=np.array([5, -6], dtype=np.int32))\n"
      "np.savez_compressed(sys.argv[4], a=np.zeros(3, np.float32))\n";
  writeFile(dir.file("check.py"), script);
  RunResult result =
      run(shellQuote(python) + " " + shellQuote(dir.file("check.py")) + " " +
              shellQuote(dir.file("ours.npz")) + " " +
              shellQuote(dir.file("ours64.npz")) + " " +
              shellQuote(dir.file("theirs.npz")) + " " +
              shellQuote(dir.file("compressed.npz")),
          dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;

  NpzGuard g;
  ASSERT_EQ(sae_rt_npz_open(dir.file("theirs.npz").c_str(), &g.npz), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_array *a = sae_rt_npz_find(g.npz, "a");
  const sae_rt_array *b = sae_rt_npz_find(g.npz, "b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(static_cast<const float *>(a->data)[5], 5.0f);
  EXPECT_EQ(static_cast<const int32_t *>(b->data)[1], -6);
  NpzGuard c;
  expectError(sae_rt_npz_open(dir.file("compressed.npz").c_str(), &c.npz),
              SAE_RT_ERR_FORMAT, {"compressed.npz", "is compressed"});
}

} // namespace
