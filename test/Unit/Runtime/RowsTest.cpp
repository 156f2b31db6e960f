//===- RowsTest.cpp - Tests of the memory-mapped row sources --------------===//
//
// sae_rt_rows_*: float32 and float16 .npy files, F32/F16/BF16 tensors of
// safetensors files picked by name, exact widening, chunked reads, the
// mapping itself, and every error a user can run into.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <cmath>

#include <fcntl.h>
#include <unistd.h>

using namespace saetest;

namespace {

struct RowsGuard {
  sae_rt_rows *rows = nullptr;
  ~RowsGuard() { sae_rt_rows_close(rows); }
};

uint32_t bitsOf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}

/// float -> bfloat16 bits, rounding to nearest even (finite inputs).
uint16_t toBfloat16(float value) {
  uint32_t bits = bitsOf(value);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// A safetensors file with the given tensors (name, dtype, shape, bytes),
/// written with the runtime's own writer.
struct Tensor {
  std::string name;
  sae_rt_dtype dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

void writeSafetensors(const std::string &path, std::vector<Tensor> tensors) {
  std::vector<const char *> names;
  std::vector<sae_rt_array> arrays;
  for (Tensor &t : tensors) {
    sae_rt_array a{};
    a.dtype = t.dtype;
    a.ndim = static_cast<int32_t>(t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i)
      a.shape[i] = t.shape[i];
    a.data = t.bytes.empty() ? nullptr : &t.bytes[0];
    names.push_back(t.name.c_str());
    arrays.push_back(a);
  }
  ASSERT_EQ(sae_rt_safetensors_write(path.c_str(), names.size(), names.data(),
                                     arrays.data(), 0, nullptr, nullptr),
            SAE_RT_OK)
      << sae_rt_last_error();
}

std::vector<float> readAll(sae_rt_rows *rows) {
  std::vector<float> out(static_cast<size_t>(sae_rt_rows_count(rows) *
                                             sae_rt_rows_width(rows)));
  EXPECT_EQ(sae_rt_rows_read(rows, 0, sae_rt_rows_count(rows), out.data()),
            SAE_RT_OK)
      << sae_rt_last_error();
  return out;
}

TEST(RowsTest, Float32NpyRowsInChunks) {
  TempDir dir;
  std::vector<float> x = sampleInputs(7, 3); // 7 x 4
  sae_rt_array a = borrow(SAE_RT_DTYPE_FLOAT32, {7, kD}, x);
  std::string path = dir.file("x.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &a), SAE_RT_OK);
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), nullptr, &g.rows), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_rows_count(g.rows), 7);
  EXPECT_EQ(sae_rt_rows_width(g.rows), kD);
  EXPECT_EQ(sae_rt_rows_dtype(g.rows), SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(sae_rt_rows_ndim(g.rows), 2);
  EXPECT_EQ(sae_rt_rows_shape(g.rows)[0], 7);
  // Chunks of 3, 3 and 1 rows, then the whole file again.
  for (int64_t first = 0; first < 7; first += 3) {
    int64_t count = std::min<int64_t>(3, 7 - first);
    std::vector<float> chunk(static_cast<size_t>(count * kD));
    ASSERT_EQ(sae_rt_rows_read(g.rows, first, count, chunk.data()), SAE_RT_OK);
    EXPECT_EQ(std::memcmp(chunk.data(), &x[first * kD], chunk.size() * 4), 0);
  }
  EXPECT_EQ(readAll(g.rows), x);
  // Zero rows is a no-op, even with a NULL buffer.
  EXPECT_EQ(sae_rt_rows_read(g.rows, 7, 0, nullptr), SAE_RT_OK);
}

TEST(RowsTest, OneDimensionalNpyIsOneRow) {
  TempDir dir;
  std::vector<float> x = {1.0f, 2.0f, 3.0f};
  sae_rt_array a = borrow(SAE_RT_DTYPE_FLOAT32, {3}, x);
  std::string path = dir.file("row.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &a), SAE_RT_OK);
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), nullptr, &g.rows), SAE_RT_OK);
  EXPECT_EQ(sae_rt_rows_count(g.rows), 1);
  EXPECT_EQ(sae_rt_rows_width(g.rows), 3);
  EXPECT_EQ(sae_rt_rows_ndim(g.rows), 1);
  EXPECT_EQ(readAll(g.rows), x);
}

TEST(RowsTest, Float16NpyWidensEveryBitPatternExactly) {
  TempDir dir;
  // All 65536 half-precision values, as 256 rows of 256.
  std::vector<uint16_t> half(65536);
  for (uint32_t i = 0; i < 65536; ++i)
    half[i] = static_cast<uint16_t>(i);
  sae_rt_array a = borrow(SAE_RT_DTYPE_FLOAT16, {256, 256}, half);
  std::string path = dir.file("h.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &a), SAE_RT_OK);
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), nullptr, &g.rows), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_rows_dtype(g.rows), SAE_RT_DTYPE_FLOAT16);
  EXPECT_EQ(sae_rt_rows_count(g.rows), 256);
  std::vector<float> out = readAll(g.rows);
  for (uint32_t i = 0; i < 65536; ++i)
    ASSERT_EQ(bitsOf(out[i]),
              bitsOf(sae_rt_float16_to_float32(static_cast<uint16_t>(i))))
        << "half bits " << i;
  // Spot checks against known values.
  EXPECT_EQ(out[0x3c00], 1.0f);
  EXPECT_EQ(out[0xc000], -2.0f);
  EXPECT_EQ(out[0x0001], std::ldexp(1.0f, -24)); // smallest subnormal
  EXPECT_EQ(out[0x7bff], 65504.0f);
  EXPECT_TRUE(std::isinf(out[0x7c00]));
  EXPECT_TRUE(std::isnan(out[0x7e00]));
  // A chunk in the middle.
  std::vector<float> chunk(2 * 256);
  ASSERT_EQ(sae_rt_rows_read(g.rows, 60, 2, chunk.data()), SAE_RT_OK);
  EXPECT_EQ(chunk[0], sae_rt_float16_to_float32(60 * 256));
}

TEST(RowsTest, SafetensorsNamedTensorsOfEveryFloatDtype) {
  TempDir dir;
  // The same 5 x 3 values in F32, F16 and BF16 (all exactly representable),
  // next to tensors of other shapes and dtypes.
  std::vector<float> values;
  for (int i = 0; i < 15; ++i)
    values.push_back(static_cast<float>(i - 7) * 0.25f);
  std::vector<uint16_t> half, brain;
  for (float v : values) {
    brain.push_back(toBfloat16(v));
    // v is a multiple of 1/4 in [-2, 2): exact in binary16 too.
    uint16_t bits = 0;
    for (uint32_t candidate = 0; candidate < 65536; ++candidate)
      if (sae_rt_float16_to_float32(static_cast<uint16_t>(candidate)) == v) {
        bits = static_cast<uint16_t>(candidate);
        break;
      }
    half.push_back(bits);
  }
  std::vector<int32_t> ints = {1, 2, 3};
  std::string path = dir.file("acts.safetensors");
  writeSafetensors(path,
                   {{"ids", SAE_RT_DTYPE_INT32, {3}, bytesOf(ints)},
                    {"f32", SAE_RT_DTYPE_FLOAT32, {5, 3}, bytesOf(values)},
                    {"f16", SAE_RT_DTYPE_FLOAT16, {5, 3}, bytesOf(half)},
                    {"bf16", SAE_RT_DTYPE_BFLOAT16, {5, 3}, bytesOf(brain)}});
  struct Case {
    const char *name;
    sae_rt_dtype dtype;
  };
  for (const Case &c : {Case{"f32", SAE_RT_DTYPE_FLOAT32},
                        Case{"f16", SAE_RT_DTYPE_FLOAT16},
                        Case{"bf16", SAE_RT_DTYPE_BFLOAT16}}) {
    RowsGuard g;
    ASSERT_EQ(sae_rt_rows_open(path.c_str(), c.name, &g.rows), SAE_RT_OK)
        << c.name << ": " << sae_rt_last_error();
    EXPECT_EQ(sae_rt_rows_dtype(g.rows), c.dtype) << c.name;
    EXPECT_EQ(sae_rt_rows_count(g.rows), 5);
    EXPECT_EQ(sae_rt_rows_width(g.rows), 3);
    EXPECT_EQ(readAll(g.rows), values) << c.name;
    std::vector<float> last(3);
    ASSERT_EQ(sae_rt_rows_read(g.rows, 4, 1, last.data()), SAE_RT_OK);
    EXPECT_EQ(last[2], values[14]) << c.name;
  }
}

TEST(RowsTest, Bfloat16KeepsTheTopBitsOfFloat32) {
  TempDir dir;
  std::vector<uint16_t> brain = {0x3f80, 0xc049, 0x0001, 0x7f80, 0xff80,
                                 0x7fc0};
  std::string path = dir.file("b.safetensors");
  writeSafetensors(path, {{"x", SAE_RT_DTYPE_BFLOAT16, {2, 3}, bytesOf(brain)}});
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), "x", &g.rows), SAE_RT_OK);
  std::vector<float> out = readAll(g.rows);
  for (size_t i = 0; i < brain.size(); ++i)
    EXPECT_EQ(bitsOf(out[i]), static_cast<uint32_t>(brain[i]) << 16) << i;
}

TEST(RowsTest, TheFileIsMappedReadOnlyNotRead) {
  TempDir dir;
  std::vector<float> x = sampleInputs(4, 8);
  std::string path = dir.file("mapped.safetensors");
  writeSafetensors(path, {{"x", SAE_RT_DTYPE_FLOAT32, {4, kD}, bytesOf(x)}});
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), "x", &g.rows), SAE_RT_OK);
  // /proc/self/maps lists a read-only shared mapping of the file.
  std::string maps = readFile("/proc/self/maps");
  bool found = false;
  std::istringstream lines(maps);
  for (std::string line; std::getline(lines, line);)
    if (contains(line, path)) {
      found = true;
      EXPECT_EQ(line.substr(line.find(' ') + 1, 4), "r--s") << line;
    }
  EXPECT_TRUE(found) << maps;
  sae_rt_rows_close(g.rows);
  g.rows = nullptr;
  EXPECT_FALSE(contains(readFile("/proc/self/maps"), path));
}

TEST(RowsTest, FilesLargerThanMemoryOpenInstantly) {
  TempDir dir;
  // A sparse 16 GiB .npy of float16 [2^32, 2]: opening maps it, reading the
  // last rows touches two pages. Nothing is read or allocated whole.
  const int64_t rows = int64_t(1) << 32;
  std::string header = npyBytes("{'descr': '<f2', 'fortran_order': False, "
                                "'shape': (" +
                                    std::to_string(rows) + ", 2), }",
                                "");
  std::string path = dir.file("huge.npy");
  writeFile(path, header);
  uint64_t total = header.size() + uint64_t(rows) * 4;
  if (::truncate(path.c_str(), static_cast<off_t>(total)) != 0)
    GTEST_SKIP() << "cannot create a sparse file here";
  // Put 1.0 (0x3c00) in the last element.
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  uint16_t one = 0x3c00;
  ASSERT_EQ(::pwrite(fd, &one, 2, static_cast<off_t>(total - 2)), 2);
  ::close(fd);
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), nullptr, &g.rows), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_rows_count(g.rows), rows);
  float last[4] = {9, 9, 9, 9};
  ASSERT_EQ(sae_rt_rows_read(g.rows, rows - 2, 2, last), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(last[0], 0.0f);
  EXPECT_EQ(last[2], 0.0f);
  EXPECT_EQ(last[3], 1.0f);
}

TEST(RowsTest, AFileTruncatedAfterOpeningIsAnErrorNotACrash) {
  TempDir dir;
  std::vector<float> x(1024 * kD, 1.0f);
  sae_rt_array a = borrow(SAE_RT_DTYPE_FLOAT32, {1024, kD}, x);
  std::string path = dir.file("shrinking.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &a), SAE_RT_OK);
  RowsGuard g;
  ASSERT_EQ(sae_rt_rows_open(path.c_str(), nullptr, &g.rows), SAE_RT_OK);
  ASSERT_EQ(::truncate(path.c_str(), 200), 0);
  std::vector<float> out(1024 * kD);
  expectError(sae_rt_rows_read(g.rows, 512, 512, out.data()), SAE_RT_ERR_IO,
              {"shrinking.npy", "shrank"});
}

TEST(RowsTest, NpyErrorsNameTheFile) {
  TempDir dir;
  RowsGuard g;
  expectError(sae_rt_rows_open(dir.file("absent.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_IO, {"absent.npy", "cannot open"});
  EXPECT_EQ(g.rows, nullptr);
  expectError(sae_rt_rows_open(dir.path().c_str(), nullptr, &g.rows),
              SAE_RT_ERR_IO, {"is a directory"});

  writeFile(dir.file("garbage.npy"), "garbage");
  expectError(sae_rt_rows_open(dir.file("garbage.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_FORMAT, {"garbage.npy", "magic"});
  writeFile(dir.file("empty.npy"), "");
  expectError(sae_rt_rows_open(dir.file("empty.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_FORMAT, {"empty.npy"});

  std::vector<int32_t> ints(8);
  sae_rt_array i32 = borrow(SAE_RT_DTYPE_INT32, {2, 4}, ints);
  ASSERT_EQ(sae_rt_npy_write(dir.file("ints.npy").c_str(), &i32), SAE_RT_OK);
  expectError(sae_rt_rows_open(dir.file("ints.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_SHAPE,
              {"ints.npy", "dtype int32, expected float32 or float16"});

  std::vector<float> cube(8);
  sae_rt_array c = borrow(SAE_RT_DTYPE_FLOAT32, {2, 2, 2}, cube);
  ASSERT_EQ(sae_rt_npy_write(dir.file("cube.npy").c_str(), &c), SAE_RT_OK);
  expectError(sae_rt_rows_open(dir.file("cube.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_SHAPE, {"cube.npy", "[2, 2, 2]", "is not [B, d]"});

  // Truncated data: the header promises more than the file holds.
  std::string bytes = npyBytes(
      "{'descr': '<f2', 'fortran_order': False, 'shape': (10, 4), }",
      std::string(20, '\0'));
  writeFile(dir.file("short.npy"), bytes);
  expectError(sae_rt_rows_open(dir.file("short.npy").c_str(), nullptr,
                               &g.rows),
              SAE_RT_ERR_FORMAT, {"short.npy", "truncated"});

  // A tensor name makes no sense for a .npy file.
  std::vector<float> x(8);
  sae_rt_array f = borrow(SAE_RT_DTYPE_FLOAT32, {2, 4}, x);
  ASSERT_EQ(sae_rt_npy_write(dir.file("x.npy").c_str(), &f), SAE_RT_OK);
  expectError(sae_rt_rows_open(dir.file("x.npy").c_str(), "acts", &g.rows),
              SAE_RT_ERR_ARG, {"x.npy", "is a .npy file", "'acts'"});

  // Reads out of range.
  ASSERT_EQ(sae_rt_rows_open(dir.file("x.npy").c_str(), nullptr, &g.rows),
            SAE_RT_OK);
  float out[8];
  expectError(sae_rt_rows_read(g.rows, 1, 2, out), SAE_RT_ERR_ARG,
              {"x.npy", "rows [1, 3) are out of range", "2 rows"});
  expectError(sae_rt_rows_read(g.rows, -1, 1, out), SAE_RT_ERR_ARG,
              {"out of range"});
  expectError(sae_rt_rows_read(g.rows, 0, 1, nullptr), SAE_RT_ERR_ARG,
              {"NULL"});
}

TEST(RowsTest, SafetensorsErrorsListTheTensors) {
  TempDir dir;
  std::vector<float> x(12);
  std::vector<int32_t> ints(6);
  std::vector<float> cube(8);
  std::string path = dir.file("model.safetensors");
  writeSafetensors(path,
                   {{"acts", SAE_RT_DTYPE_FLOAT32, {3, 4}, bytesOf(x)},
                    {"ids", SAE_RT_DTYPE_INT32, {2, 3}, bytesOf(ints)},
                    {"cube", SAE_RT_DTYPE_FLOAT32, {2, 2, 2}, bytesOf(cube)}});
  RowsGuard g;
  expectError(sae_rt_rows_open(path.c_str(), "missing", &g.rows),
              SAE_RT_ERR_ARG,
              {"model.safetensors", "no tensor 'missing'",
               "'acts' [3, 4] F32", "'ids' [2, 3] I32", "'cube' [2, 2, 2] F32"});
  EXPECT_EQ(g.rows, nullptr);
  expectError(sae_rt_rows_open(path.c_str(), "cube", &g.rows),
              SAE_RT_ERR_SHAPE,
              {"model.safetensors: tensor 'cube'", "[2, 2, 2]",
               "expected a 2-D [B, d] tensor"});
  expectError(sae_rt_rows_open(path.c_str(), "ids", &g.rows), SAE_RT_ERR_SHAPE,
              {"tensor 'ids'", "I32", "expected F32, F16 or BF16"});
  // Without a name, the file is not taken for a broken .npy.
  expectError(sae_rt_rows_open(path.c_str(), nullptr, &g.rows),
              SAE_RT_ERR_ARG,
              {"model.safetensors", "is a safetensors file",
               "'acts' [3, 4] F32"});
  // A malformed safetensors file with a name: the reader's own error.
  writeFile(dir.file("bad.safetensors"), "abc");
  expectError(sae_rt_rows_open(dir.file("bad.safetensors").c_str(), "acts",
                               &g.rows),
              SAE_RT_ERR_FORMAT, {"bad.safetensors"});
  expectError(sae_rt_rows_open(nullptr, nullptr, &g.rows), SAE_RT_ERR_ARG,
              {"NULL"});
  expectError(sae_rt_rows_open(path.c_str(), "acts", nullptr), SAE_RT_ERR_ARG,
              {"NULL"});
  // Accessors accept NULL.
  EXPECT_EQ(sae_rt_rows_count(nullptr), 0);
  EXPECT_EQ(sae_rt_rows_width(nullptr), 0);
  EXPECT_EQ(sae_rt_rows_shape(nullptr), nullptr);
  sae_rt_rows_close(nullptr);
}

TEST(RowsTest, ManyTensorsAreListedShortly) {
  TempDir dir;
  std::vector<Tensor> tensors;
  std::vector<float> one = {1.0f};
  for (int i = 0; i < 20; ++i)
    tensors.push_back({"t" + std::to_string(i + 10), SAE_RT_DTYPE_FLOAT32,
                       {1, 1}, bytesOf(one)});
  std::string path = dir.file("many.safetensors");
  writeSafetensors(path, tensors);
  RowsGuard g;
  expectError(sae_rt_rows_open(path.c_str(), "x", &g.rows), SAE_RT_ERR_ARG,
              {"'t10' [1, 1] F32", "and 4 more"});
}

} // namespace
