//===- SafetensorsTest.cpp - Tests of safetensors reading and writing -----===//

#include "TestUtil.h"

using namespace saetest;

namespace {

struct StGuard {
  sae_rt_safetensors *st = nullptr;
  ~StGuard() { sae_rt_safetensors_close(st); }
};

std::string le64(uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

/// A safetensors file from a header text and a data section.
std::string stBytes(const std::string &header, const std::string &data) {
  return le64(header.size()) + header + data;
}

TEST(SafetensorsTest, RoundTripAllDtypesWithMetadata) {
  TempDir dir;
  std::vector<float> f32 = {1.0f, -2.5f, 3.0e-38f, 4.0f, 5.0f, 6.0f};
  std::vector<int32_t> i32 = {-1, 2147483647, 0};
  std::vector<uint16_t> f16 = {0x3c00, 0xc000};
  std::vector<uint16_t> bf16 = {0x4049};
  sae_rt_array arrays[4] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, 3}, f32),
                            borrow(SAE_RT_DTYPE_INT32, {3}, i32),
                            borrow(SAE_RT_DTYPE_FLOAT16, {1, 2}, f16),
                            borrow(SAE_RT_DTYPE_BFLOAT16, {1}, bf16)};
  const char *names[4] = {"W_enc", "counts", "half", "brain"};
  const char *keys[2] = {"format", "note"};
  const char *values[2] = {"pt", "hello \"world\""};
  std::string path = dir.file("t.safetensors");
  ASSERT_EQ(
      sae_rt_safetensors_write(path.c_str(), 4, names, arrays, 2, keys, values),
      SAE_RT_OK)
      << sae_rt_last_error();

  // Header length is a multiple of 8 and the header is padded with spaces.
  std::string bytes = readFile(path);
  uint64_t headerLength = 0;
  std::memcpy(&headerLength, bytes.data(), 8);
  EXPECT_EQ(headerLength % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + headerLength + 24 + 12 + 4 + 2);
  std::string header = bytes.substr(8, headerLength);
  EXPECT_EQ(header.front(), '{');
  EXPECT_TRUE(contains(header, "\"W_enc\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                               "\"data_offsets\":[0,24]}"));

  StGuard g;
  ASSERT_EQ(sae_rt_safetensors_open(path.c_str(), &g.st), SAE_RT_OK)
      << sae_rt_last_error();
  ASSERT_EQ(sae_rt_safetensors_count(g.st), 4u);
  EXPECT_STREQ(sae_rt_safetensors_name(g.st, 0), "W_enc"); // data order
  EXPECT_STREQ(sae_rt_safetensors_name(g.st, 3), "brain");
  EXPECT_EQ(sae_rt_safetensors_find(g.st, "half"), 2);
  EXPECT_EQ(sae_rt_safetensors_find(g.st, "nope"), -1);
  EXPECT_STREQ(sae_rt_safetensors_dtype_name(g.st, 3), "BF16");
  int32_t ndim = -1;
  const int64_t *shape = sae_rt_safetensors_shape(g.st, 0, &ndim);
  ASSERT_EQ(ndim, 2);
  EXPECT_EQ(shape[1], 3);
  EXPECT_STREQ(sae_rt_safetensors_metadata(g.st, "format"), "pt");
  EXPECT_STREQ(sae_rt_safetensors_metadata(g.st, "note"), "hello \"world\"");
  EXPECT_EQ(sae_rt_safetensors_metadata(g.st, "absent"), nullptr);

  ArrayGuard a, b, c, d;
  ASSERT_EQ(sae_rt_safetensors_read(g.st, "W_enc", a.get()), SAE_RT_OK);
  EXPECT_EQ(std::memcmp(a->data, f32.data(), 24), 0);
  ASSERT_EQ(sae_rt_safetensors_read(g.st, "counts", b.get()), SAE_RT_OK);
  EXPECT_EQ(b->dtype, SAE_RT_DTYPE_INT32);
  EXPECT_EQ(b.as<int32_t>()[1], 2147483647);
  ASSERT_EQ(sae_rt_safetensors_read(g.st, "half", c.get()), SAE_RT_OK);
  EXPECT_EQ(c->dtype, SAE_RT_DTYPE_FLOAT16);
  EXPECT_EQ(c.as<uint16_t>()[1], 0xc000);
  ASSERT_EQ(sae_rt_safetensors_read(g.st, "brain", d.get()), SAE_RT_OK);
  ArrayGuard widened;
  ASSERT_EQ(sae_rt_array_to_float32(d.get(), widened.get()), SAE_RT_OK);
  EXPECT_EQ(widened.as<float>()[0], 3.140625f);
  expectError(sae_rt_safetensors_read(g.st, "nope", a.get()), SAE_RT_ERR_ARG,
              {"t.safetensors", "no tensor 'nope'"});
}

TEST(SafetensorsTest, ReadsForeignFilesAndRefusesUnsupportedDtypes) {
  TempDir dir;
  // Hand-written: reversed key order, an F64 tensor, a scalar, no padding.
  std::string header =
      "{\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[4,12]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
  float a = 7.5f;
  double b = 2.0;
  std::string data(reinterpret_cast<const char *>(&a), 4);
  data += std::string(reinterpret_cast<const char *>(&b), 8);
  std::string path = dir.file("foreign.safetensors");
  writeFile(path, stBytes(header, data));
  StGuard g;
  ASSERT_EQ(sae_rt_safetensors_open(path.c_str(), &g.st), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_STREQ(sae_rt_safetensors_name(g.st, 0), "a");
  ArrayGuard scalar, wide;
  ASSERT_EQ(sae_rt_safetensors_read(g.st, "a", scalar.get()), SAE_RT_OK);
  EXPECT_EQ(scalar->ndim, 0);
  EXPECT_EQ(scalar.as<float>()[0], 7.5f);
  expectError(sae_rt_safetensors_read(g.st, "b", wide.get()), SAE_RT_ERR_FORMAT,
              {"foreign.safetensors", "tensor 'b'", "F64", "not supported"});
}

struct Malformed {
  const char *name;
  std::string bytes;
  std::vector<std::string> fragments;
};

/// Keeps gtest from dumping the struct's bytes in test names.
void PrintTo(const Malformed &c, std::ostream *os) { *os << c.name; }

class SafetensorsMalformedTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(SafetensorsMalformedTest, IsFormatErrorNamingFileAndTensor) {
  TempDir dir;
  const Malformed &c = GetParam();
  std::string path = dir.file(std::string(c.name) + ".safetensors");
  writeFile(path, c.bytes);
  StGuard g;
  sae_rt_status status = sae_rt_safetensors_open(path.c_str(), &g.st);
  EXPECT_EQ(status, SAE_RT_ERR_FORMAT) << sae_rt_last_error();
  EXPECT_EQ(g.st, nullptr);
  std::string message = sae_rt_last_error();
  EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
  for (const std::string &fragment : c.fragments)
    EXPECT_TRUE(contains(message, fragment))
        << "'" << message << "' lacks '" << fragment << "'";
}

std::string entry(const std::string &name, const std::string &dtype,
                  const std::string &shape, uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," +
         std::to_string(end) + "]}";
}

INSTANTIATE_TEST_SUITE_P(
    Safetensors, SafetensorsMalformedTest,
    ::testing::Values(
        Malformed{"short", "abc", {"less than the 8-byte header length"}},
        Malformed{"length_beyond_file",
                  le64(1000) + "{}",
                  {"header length 1000 is beyond the end of the file"}},
        Malformed{"length_huge",
                  le64(UINT64_MAX) + "{}",
                  {"is beyond the end of the file"}},
        Malformed{"invalid_json",
                  stBytes("{\"W_enc\": {\"dtype\": ", ""),
                  {"invalid JSON header"}},
        Malformed{"not_object", stBytes("[1, 2]", ""), {"not an object"}},
        Malformed{
            "offsets_out_of_range",
            stBytes("{" + entry("W_enc", "F32", "[2]", 0, 8) + "}",
                    std::string(4, '\0')),
            {"tensor 'W_enc'", "out of range", "the data section has 4 bytes"}},
        Malformed{"offsets_reversed",
                  stBytes("{" + entry("W_enc", "F32", "[0]", 8, 4) + "}",
                          std::string(8, '\0')),
                  {"tensor 'W_enc'", "out of range"}},
        Malformed{"size_mismatch",
                  stBytes("{" + entry("W_enc", "F32", "[768,100]", 0, 8) + "}",
                          std::string(8, '\0')),
                  {"tensor 'W_enc'", "span 8 bytes",
                   "shape [768, 100] F32 needs 307200"}},
        Malformed{"overlap",
                  stBytes("{" + entry("a", "F32", "[2]", 0, 8) + "," +
                              entry("b", "F32", "[2]", 4, 12) + "}",
                          std::string(12, '\0')),
                  {"tensors 'a' and 'b' overlap"}},
        Malformed{"unknown_dtype",
                  stBytes("{" + entry("x", "Q7", "[1]", 0, 1) + "}",
                          std::string(1, '\0')),
                  {"tensor 'x'", "unknown dtype 'Q7'"}},
        Malformed{"negative_dim",
                  stBytes("{" + entry("x", "F32", "[-1]", 0, 0) + "}", ""),
                  {"tensor 'x'", "not a non-negative integer"}},
        Malformed{
            "shape_overflow",
            stBytes("{" + entry("x", "F32", "[4294967296,4294967296]", 0, 0) +
                        "}",
                    ""),
            {"tensor 'x'", "too large"}},
        Malformed{"missing_offsets",
                  stBytes("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}",
                          std::string(4, '\0')),
                  {"tensor 'x'", "data_offsets"}},
        Malformed{"bad_metadata",
                  stBytes("{\"__metadata__\":{\"n\":1}}", ""),
                  {"__metadata__", "not a string"}}),
    [](const ::testing::TestParamInfo<Malformed> &info) {
      return std::string(info.param.name);
    });

TEST(SafetensorsTest, WriteRejectsBadNames) {
  TempDir dir;
  std::vector<float> v = {1};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {1}, v),
                            borrow(SAE_RT_DTYPE_FLOAT32, {1}, v)};
  const char *dup[2] = {"a", "a"};
  expectError(sae_rt_safetensors_write(dir.file("d.safetensors").c_str(), 2,
                                       dup, arrays, 0, nullptr, nullptr),
              SAE_RT_ERR_ARG, {"d.safetensors", "tensor 'a'", "duplicate"});
  const char *reserved[1] = {"__metadata__"};
  EXPECT_EQ(sae_rt_safetensors_write(dir.file("r.safetensors").c_str(), 1,
                                     reserved, arrays, 0, nullptr, nullptr),
            SAE_RT_ERR_ARG);
  const char *bad[1] = {"\xff\xfe"};
  expectError(sae_rt_safetensors_write(dir.file("u.safetensors").c_str(), 1,
                                       bad, arrays, 0, nullptr, nullptr),
              SAE_RT_ERR_ARG, {"UTF-8"});
  EXPECT_TRUE(dir.list().empty());
}

TEST(SafetensorsTest, NumpyCanParseWhatWeWrite) {
  std::string python = pythonWithNumpy();
  if (python.empty())
    GTEST_SKIP() << "no python3 with numpy";
  TempDir dir;
  std::vector<float> f32 = {1.0f, -2.5f, 3.0f, 4.0f};
  std::vector<uint16_t> bf16 = {0x4049, 0xc2f7};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, 2}, f32),
                            borrow(SAE_RT_DTYPE_BFLOAT16, {2}, bf16)};
  const char *names[2] = {"w", "b"};
  std::string path = dir.file("t.safetensors");
  ASSERT_EQ(sae_rt_safetensors_write(path.c_str(), 2, names, arrays, 0, nullptr,
                                     nullptr),
            SAE_RT_OK);
  // A minimal independent reader of the format.
  std::string script =
      "import json, struct, sys, numpy as np\n"
      "raw = open(sys.argv[1], 'rb').read()\n"
      "n, = struct.unpack('<Q', raw[:8])\n"
      "assert n % 8 == 0\n"
      "h = json.loads(raw[8:8 + n])\n"
      "data = raw[8 + n:]\n"
      "b, e = h['w']['data_offsets']\n"
      "w = np.frombuffer(data[b:e], '<f4').reshape(h['w']['shape'])\n"
      "assert w.tolist() == [[1.0, -2.5], [3.0, 4.0]], w\n"
      "b, e = h['b']['data_offsets']\n"
      "bits = np.frombuffer(data[b:e], '<u2').astype(np.uint32) << 16\n"
      "assert bits.view(np.float32).tolist() == [3.140625, -123.5]\n";
  writeFile(dir.file("check.py"), script);
  RunResult result =
      run(shellQuote(python) + " " + shellQuote(dir.file("check.py")) + " " +
              shellQuote(path),
          dir);
  EXPECT_EQ(result.exitCode, 0) << result.err;
}

} // namespace
