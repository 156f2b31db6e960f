//===- NpyTest.cpp - Tests of .npy reading, writing and streaming ---------===//

#include "TestUtil.h"

#include <cmath>

using namespace saetest;

namespace {

const std::string kF4Dict =
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

TEST(NpyTest, Float32RoundTripIsExact) {
  TempDir dir;
  std::vector<float> values = {
      0.0f, -1.5f, 3.25e-30f, 1e30f, std::nextafter(1.0f, 2.0f), -0.0f};
  sae_rt_array in = borrow(SAE_RT_DTYPE_FLOAT32, {2, 3}, values);
  std::string path = dir.file("x.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &in), SAE_RT_OK)
      << sae_rt_last_error();
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(path.c_str(), out.get()), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(out->dtype, SAE_RT_DTYPE_FLOAT32);
  ASSERT_EQ(out->ndim, 2);
  EXPECT_EQ(out->shape[0], 2);
  EXPECT_EQ(out->shape[1], 3);
  EXPECT_EQ(std::memcmp(out->data, values.data(), sizeof(float) * 6), 0);

  // The layout numpy writes: version 1.0, data 64-byte aligned, the dict.
  std::string bytes = readFile(path);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  size_t dataStart = bytes.size() - 6 * sizeof(float);
  EXPECT_EQ(dataStart % 64, 0u);
  EXPECT_TRUE(contains(bytes.substr(0, dataStart),
                       "{'descr': '<f4', 'fortran_order': False, "
                       "'shape': (2, 3), }"));
  EXPECT_EQ(bytes[dataStart - 1], '\n');
  // Nothing but x.npy is left in the directory (no temporary files).
  EXPECT_EQ(dir.list(), std::vector<std::string>{"x.npy"});
}

TEST(NpyTest, Int32AndFloat16RoundTrip) {
  TempDir dir;
  std::vector<int32_t> ints = {INT32_MIN, -1, 0, 1, INT32_MAX};
  sae_rt_array in = borrow(SAE_RT_DTYPE_INT32, {5}, ints);
  ASSERT_EQ(sae_rt_npy_write(dir.file("i.npy").c_str(), &in), SAE_RT_OK);
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(dir.file("i.npy").c_str(), out.get()), SAE_RT_OK);
  EXPECT_EQ(out->dtype, SAE_RT_DTYPE_INT32);
  ASSERT_EQ(out->ndim, 1);
  EXPECT_EQ(out->shape[0], 5);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(out.as<int32_t>()[i], ints[i]);
  EXPECT_TRUE(contains(readFile(dir.file("i.npy")), "'shape': (5,)"));

  std::vector<uint16_t> half = {0x3c00, 0xc000, 0x7bff};
  sae_rt_array h = borrow(SAE_RT_DTYPE_FLOAT16, {3, 1}, half);
  ASSERT_EQ(sae_rt_npy_write(dir.file("h.npy").c_str(), &h), SAE_RT_OK);
  ArrayGuard hout;
  ASSERT_EQ(sae_rt_npy_read(dir.file("h.npy").c_str(), hout.get()), SAE_RT_OK);
  EXPECT_EQ(hout->dtype, SAE_RT_DTYPE_FLOAT16);
  EXPECT_EQ(hout.as<uint16_t>()[2], 0x7bff);
}

TEST(NpyTest, ScalarAndEmptyArrays) {
  TempDir dir;
  std::vector<float> one = {42.5f};
  sae_rt_array scalar = borrow(SAE_RT_DTYPE_FLOAT32, {}, one);
  ASSERT_EQ(sae_rt_npy_write(dir.file("s.npy").c_str(), &scalar), SAE_RT_OK);
  EXPECT_TRUE(contains(readFile(dir.file("s.npy")), "'shape': ()"));
  ArrayGuard s;
  ASSERT_EQ(sae_rt_npy_read(dir.file("s.npy").c_str(), s.get()), SAE_RT_OK);
  EXPECT_EQ(s->ndim, 0);
  EXPECT_EQ(s.as<float>()[0], 42.5f);

  std::vector<float> none;
  sae_rt_array empty = borrow(SAE_RT_DTYPE_FLOAT32, {0, 768}, none);
  empty.data = nullptr;
  ASSERT_EQ(sae_rt_npy_write(dir.file("e.npy").c_str(), &empty), SAE_RT_OK);
  ArrayGuard e;
  ASSERT_EQ(sae_rt_npy_read(dir.file("e.npy").c_str(), e.get()), SAE_RT_OK);
  EXPECT_EQ(e->shape[0], 0);
  EXPECT_EQ(e->shape[1], 768);
}

TEST(NpyTest, ReadsVersions2And3AndIgnoresTrailingBytes) {
  TempDir dir;
  std::vector<float> values = {1, 2, 3, 4, 5, 6};
  for (int major : {2, 3}) {
    std::string path = dir.file("v" + std::to_string(major) + ".npy");
    writeFile(path, npyBytes(kF4Dict, bytesOf(values), major));
    ArrayGuard out;
    ASSERT_EQ(sae_rt_npy_read(path.c_str(), out.get()), SAE_RT_OK)
        << sae_rt_last_error();
    EXPECT_EQ(out.as<float>()[5], 6.0f);
  }
  // Double quotes, no trailing comma, extra whitespace, trailing garbage.
  std::string path = dir.file("loose.npy");
  writeFile(path, npyBytes("{\"shape\": ( 2 , 3 ) , \"descr\" : \"<f4\","
                           " \"fortran_order\": False}",
                           bytesOf(values) + "garbage after the data"));
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(path.c_str(), out.get()), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(out.as<float>()[0], 1.0f);
}

TEST(NpyTest, MissingFileIsIoError) {
  ArrayGuard out;
  expectError(sae_rt_npy_read("/nonexistent/dir/x.npy", out.get()),
              SAE_RT_ERR_IO, {"/nonexistent/dir/x.npy", "No such file"});
  TempDir dir;
  expectError(sae_rt_npy_read(dir.path().c_str(), out.get()), SAE_RT_ERR_IO,
              {dir.path(), "directory"});
}

struct Malformed {
  const char *name;
  std::string bytes;
  std::vector<std::string> fragments;
};

/// Keeps gtest from dumping the struct's bytes in test names.
void PrintTo(const Malformed &c, std::ostream *os) { *os << c.name; }

class NpyMalformedTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(NpyMalformedTest, IsFormatErrorNamingTheFile) {
  TempDir dir;
  const Malformed &c = GetParam();
  std::string path = dir.file(std::string(c.name) + ".npy");
  writeFile(path, c.bytes);
  ArrayGuard out;
  sae_rt_status status = sae_rt_npy_read(path.c_str(), out.get());
  EXPECT_EQ(status, SAE_RT_ERR_FORMAT) << sae_rt_last_error();
  std::string message = sae_rt_last_error();
  EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
  for (const std::string &fragment : c.fragments)
    EXPECT_TRUE(contains(message, fragment))
        << "'" << message << "' lacks '" << fragment << "'";
  EXPECT_EQ(out->data, nullptr);

  // The streaming reader validates the same way.
  sae_rt_npy_reader *reader = nullptr;
  EXPECT_EQ(sae_rt_npy_reader_open(path.c_str(), &reader), SAE_RT_ERR_FORMAT);
  EXPECT_EQ(reader, nullptr);
}

std::string floats(size_t count) { return std::string(count * 4, '\0'); }

INSTANTIATE_TEST_SUITE_P(
    Npy, NpyMalformedTest,
    ::testing::Values(
        Malformed{"empty", "", {"bad magic"}},
        Malformed{"magic", "PK\x03\x04 definitely not numpy", {"bad magic"}},
        Malformed{"preamble", std::string("\x93NUMPY\x01", 7), {"preamble"}},
        Malformed{"version",
                  npyBytes(kF4Dict, floats(6), 4),
                  {"unsupported .npy format version 4.0"}},
        Malformed{"header_length",
                  std::string("\x93NUMPY\x01\x00\xff\x00{'descr'", 18),
                  {"truncated header", "255"}},
        Malformed{"not_a_dict",
                  npyBytes("['descr', '<f4']", ""),
                  {"unparsable header dict"}},
        Malformed{"unterminated",
                  npyBytes("{'descr': '<f4", ""),
                  {"unparsable header dict", "unterminated string"}},
        Malformed{"garbage_value",
                  npyBytes("{'descr': '<f4', 'fortran_order': Maybe, "
                           "'shape': (2, 3), }",
                           floats(6)),
                  {"unparsable header dict"}},
        Malformed{"negative_dim",
                  npyBytes("{'descr': '<f4', 'fortran_order': False, "
                           "'shape': (-2, 3), }",
                           floats(6)),
                  {"unparsable header dict"}},
        Malformed{"huge_dim",
                  npyBytes("{'descr': '<f4', 'fortran_order': False, "
                           "'shape': (99999999999999999999,), }",
                           ""),
                  {"integer too large"}},
        Malformed{"overflow_shape",
                  npyBytes("{'descr': '<f4', 'fortran_order': False, "
                           "'shape': (4611686018427387904, 4), }",
                           ""),
                  {"too many elements"}},
        Malformed{"missing_shape",
                  npyBytes("{'descr': '<f4', 'fortran_order': False}", ""),
                  {"no 'shape' key"}},
        Malformed{"text_after",
                  npyBytes(kF4Dict + " extra", floats(6)),
                  {"unexpected text after"}},
        Malformed{"fortran",
                  npyBytes("{'descr': '<f4', 'fortran_order': True, "
                           "'shape': (2, 3), }",
                           floats(6)),
                  {"fortran_order is True"}},
        Malformed{"big_endian",
                  npyBytes("{'descr': '>f4', 'fortran_order': False, "
                           "'shape': (2, 3), }",
                           floats(6)),
                  {"unsupported dtype '>f4'", "'<f4'"}},
        Malformed{"float64",
                  npyBytes("{'descr': '<f8', 'fortran_order': False, "
                           "'shape': (2, 3), }",
                           floats(12)),
                  {"unsupported dtype '<f8'"}},
        Malformed{"structured",
                  npyBytes("{'descr': [('a', '<f4'), ('b', '<i4')], "
                           "'fortran_order': False, 'shape': (2,), }",
                           floats(4)),
                  {"unsupported dtype", "structured"}},
        Malformed{"nine_dims",
                  npyBytes("{'descr': '<f4', 'fortran_order': False, "
                           "'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }",
                           floats(1)),
                  {"9 dimensions"}},
        Malformed{"truncated",
                  npyBytes("{'descr': '<f4', 'fortran_order': False, "
                           "'shape': (256, 768), }",
                           std::string(1000, 'x')),
                  {"truncated: header says 256x768 float32 (786432 bytes) "
                   "but only 1000 bytes of data follow"}}),
    [](const ::testing::TestParamInfo<Malformed> &info) {
      return std::string(info.param.name);
    });

TEST(NpyTest, WriteRejectsBadArguments) {
  TempDir dir;
  std::vector<uint16_t> bf = {1, 2};
  sae_rt_array brain = borrow(SAE_RT_DTYPE_BFLOAT16, {2}, bf);
  expectError(sae_rt_npy_write(dir.file("b.npy").c_str(), &brain),
              SAE_RT_ERR_ARG, {"b.npy", "bfloat16"});
  std::vector<float> none;
  sae_rt_array null = borrow(SAE_RT_DTYPE_FLOAT32, {3}, none);
  null.data = nullptr;
  expectError(sae_rt_npy_write(dir.file("n.npy").c_str(), &null),
              SAE_RT_ERR_ARG, {"n.npy", "NULL"});
  EXPECT_TRUE(dir.list().empty()); // no stray temporary files
  std::vector<float> one = {1};
  sae_rt_array ok = borrow(SAE_RT_DTYPE_FLOAT32, {1}, one);
  expectError(sae_rt_npy_write("/nonexistent/dir/o.npy", &ok), SAE_RT_ERR_IO,
              {"/nonexistent/dir/o.npy"});
  expectError(sae_rt_npy_write(dir.path().c_str(), &ok), SAE_RT_ERR_IO,
              {"is a directory"});
}

TEST(NpyTest, WriteReplacesAtomically) {
  TempDir dir;
  std::string path = dir.file("x.npy");
  std::vector<float> first = {1, 2}, second = {3, 4, 5};
  sae_rt_array a = borrow(SAE_RT_DTYPE_FLOAT32, {2}, first);
  sae_rt_array b = borrow(SAE_RT_DTYPE_FLOAT32, {3}, second);
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &a), SAE_RT_OK);
  std::string before = readFile(path);
  // A failure just before the rename leaves the old file untouched.
  sae_rt_testing_set_fault("output.commit");
  EXPECT_EQ(sae_rt_npy_write(path.c_str(), &b), SAE_RT_ERR_IO);
  sae_rt_testing_set_fault(nullptr);
  EXPECT_TRUE(contains(sae_rt_last_error(), "injected failure"));
  EXPECT_EQ(readFile(path), before);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"x.npy"});
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &b), SAE_RT_OK);
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(path.c_str(), out.get()), SAE_RT_OK);
  EXPECT_EQ(out->shape[0], 3);
}

TEST(NpyStreamTest, ReaderReadsRowRanges) {
  TempDir dir;
  std::vector<int32_t> values(5 * 3);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<int32_t>(i * 10);
  sae_rt_array in = borrow(SAE_RT_DTYPE_INT32, {5, 3}, values);
  std::string path = dir.file("rows.npy");
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &in), SAE_RT_OK);

  sae_rt_npy_reader *reader = nullptr;
  ASSERT_EQ(sae_rt_npy_reader_open(path.c_str(), &reader), SAE_RT_OK);
  EXPECT_EQ(sae_rt_npy_reader_dtype(reader), SAE_RT_DTYPE_INT32);
  EXPECT_EQ(sae_rt_npy_reader_ndim(reader), 2);
  EXPECT_EQ(sae_rt_npy_reader_shape(reader)[0], 5);
  int32_t rows[6] = {};
  ASSERT_EQ(sae_rt_npy_reader_read_rows(reader, 3, 2, rows), SAE_RT_OK);
  EXPECT_EQ(rows[0], 90);
  EXPECT_EQ(rows[5], 140);
  expectError(sae_rt_npy_reader_read_rows(reader, 4, 2, rows), SAE_RT_ERR_ARG,
              {"rows.npy", "rows [4, 6) are out of range", "5 rows"});
  EXPECT_EQ(sae_rt_npy_reader_read_rows(reader, -1, 1, rows), SAE_RT_ERR_ARG);
  EXPECT_EQ(sae_rt_npy_reader_read_rows(reader, 0, 0, nullptr), SAE_RT_OK);
  sae_rt_npy_reader_close(reader);
}

TEST(NpyStreamTest, WriterNeedsExactlyTheDeclaredData) {
  TempDir dir;
  std::string path = dir.file("w.npy");
  int64_t shape[2] = {3, 2};
  float row[2] = {1.5f, -2.5f};

  sae_rt_npy_writer *writer = nullptr;
  ASSERT_EQ(sae_rt_npy_writer_open(path.c_str(), SAE_RT_DTYPE_FLOAT32, 2, shape,
                                   &writer),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_npy_writer_append(writer, row, sizeof(row)), SAE_RT_OK);
  expectError(sae_rt_npy_writer_commit(writer), SAE_RT_ERR_ARG,
              {"w.npy", "only 8 of the 24 data bytes"});
  sae_rt_npy_writer_close(writer); // discards
  EXPECT_FALSE(exists(path));
  EXPECT_TRUE(dir.list().empty());

  ASSERT_EQ(sae_rt_npy_writer_open(path.c_str(), SAE_RT_DTYPE_FLOAT32, 2, shape,
                                   &writer),
            SAE_RT_OK);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(sae_rt_npy_writer_append(writer, row, sizeof(row)), SAE_RT_OK);
  expectError(sae_rt_npy_writer_append(writer, row, sizeof(row)),
              SAE_RT_ERR_ARG, {"exceeds the declared shape"});
  EXPECT_FALSE(exists(path)); // invisible until committed
  ASSERT_EQ(sae_rt_npy_writer_commit(writer), SAE_RT_OK);
  sae_rt_npy_writer_close(writer);

  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(path.c_str(), out.get()), SAE_RT_OK);
  EXPECT_EQ(out->shape[0], 3);
  EXPECT_EQ(out.as<float>()[4], 1.5f);
  EXPECT_EQ(out.as<float>()[5], -2.5f);
}

TEST(NpyTest, NumpyReadsWhatWeWriteAndViceVersa) {
  std::string python = pythonWithNumpy();
  if (python.empty())
    GTEST_SKIP() << "no python3 with numpy";
  TempDir dir;
  std::vector<float> values = {0.5f, -1.25f, 3.0f, 1e-20f, 7.0f, -8.5f};
  sae_rt_array in = borrow(SAE_RT_DTYPE_FLOAT32, {3, 2}, values);
  ASSERT_EQ(sae_rt_npy_write(dir.file("ours.npy").c_str(), &in), SAE_RT_OK);
  std::string script =
      "import numpy as np, sys\n"
      "a = np.load(sys.argv[1])\n"
      "assert a.dtype == np.float32 and a.shape == (3, 2), (a.dtype, a.shape)\n"
      "assert a.tolist() == np.array([[0.5, -1.25], [3.0, 1e-20], "
      "[7.0, -8.5]], dtype=np.float32).tolist()\n"
      "np.save(sys.argv[2], np.arange(12, dtype=np.float32).reshape(4, 3))\n"
      "np.save(sys.argv[3], np.asfortranarray(np.ones((2, 3), np.float32)))\n";
  writeFile(dir.file("check.py"), script);
  RunResult result =
      run(shellQuote(python) + " " + shellQuote(dir.file("check.py")) + " " +
              shellQuote(dir.file("ours.npy")) + " " +
              shellQuote(dir.file("theirs.npy")) + " " +
              shellQuote(dir.file("fortran.npy")),
          dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(dir.file("theirs.npy").c_str(), out.get()),
            SAE_RT_OK);
  EXPECT_EQ(out->shape[0], 4);
  EXPECT_EQ(out.as<float>()[11], 11.0f);
  ArrayGuard fortran;
  expectError(sae_rt_npy_read(dir.file("fortran.npy").c_str(), fortran.get()),
              SAE_RT_ERR_FORMAT, {"fortran.npy", "fortran_order is True"});
}

} // namespace
