//===- IdxTest.cpp - Tests of IDX (MNIST format) reading ------------------===//

#include "TestUtil.h"

#include <zlib.h>

#include <fstream>

using namespace saetest;

namespace {

/// An IDX file of unsigned bytes: 3 images of 2x2 pixels.
std::string ubyteImages() {
  std::string s("\x00\x00\x08\x03", 4);
  for (uint32_t dim : {3u, 2u, 2u})
    for (int shift = 24; shift >= 0; shift -= 8)
      s.push_back(char((dim >> shift) & 0xFF));
  for (int i = 0; i < 12; ++i)
    s.push_back(char(i * 20)); // 0, 20, ..., 220
  return s;
}

void writeFile(const std::string &path, const std::string &bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

void writeGzip(const std::string &path, const std::string &bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())),
            int(bytes.size()));
  gzclose(f);
}

void expectImages(const std::string &path) {
  ArrayGuard out;
  ASSERT_EQ(sae_rt_idx_read(path.c_str(), out.get()), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(out->dtype, SAE_RT_DTYPE_FLOAT32);
  ASSERT_EQ(out->ndim, 2);
  EXPECT_EQ(out->shape[0], 3);
  EXPECT_EQ(out->shape[1], 4);
  const float *v = static_cast<const float *>(out->data);
  for (int i = 0; i < 12; ++i)
    EXPECT_FLOAT_EQ(v[i], float(i * 20) / 255.0f) << "pixel " << i;
}

TEST(IdxTest, PlainUbyteImagesBecomeScaledRows) {
  TempDir dir;
  writeFile(dir.file("x-idx3-ubyte"), ubyteImages());
  expectImages(dir.file("x-idx3-ubyte"));
}

TEST(IdxTest, GzipCompressedFileReadsTheSame) {
  TempDir dir;
  writeGzip(dir.file("x-idx3-ubyte.gz"), ubyteImages());
  expectImages(dir.file("x-idx3-ubyte.gz"));
}

TEST(IdxTest, TruncatedDataIsAFormatErrorNamingTheFile) {
  TempDir dir;
  std::string bytes = ubyteImages();
  writeGzip(dir.file("cut.gz"), bytes.substr(0, bytes.size() - 3));
  ArrayGuard out;
  EXPECT_EQ(sae_rt_idx_read(dir.file("cut.gz").c_str(), out.get()),
            SAE_RT_ERR_FORMAT);
  std::string msg = sae_rt_last_error();
  EXPECT_NE(msg.find("cut.gz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(IdxTest, BadMagicAndUnknownTypeAreRejected) {
  TempDir dir;
  writeFile(dir.file("text"), "hello world, not IDX");
  ArrayGuard out;
  EXPECT_EQ(sae_rt_idx_read(dir.file("text").c_str(), out.get()),
            SAE_RT_ERR_FORMAT);
  EXPECT_NE(std::string(sae_rt_last_error()).find("bad magic"),
            std::string::npos);
  std::string bytes = ubyteImages();
  bytes[2] = 0x42;
  writeFile(dir.file("type"), bytes);
  EXPECT_EQ(sae_rt_idx_read(dir.file("type").c_str(), out.get()),
            SAE_RT_ERR_FORMAT);
  EXPECT_NE(std::string(sae_rt_last_error()).find("element type"),
            std::string::npos);
}

TEST(IdxTest, MissingFileIsAnIOError) {
  ArrayGuard out;
  EXPECT_EQ(sae_rt_idx_read("/nonexistent/x-idx3-ubyte.gz", out.get()),
            SAE_RT_ERR_IO);
  EXPECT_NE(std::string(sae_rt_last_error()).find("/nonexistent"),
            std::string::npos);
}

} // namespace
