//===- ArrayTest.cpp - Tests of statuses, arrays and dtype conversion -----===//

#include "TestUtil.h"

#include <cmath>
#include <limits>
#include <thread>

using namespace saetest;

namespace {

TEST(StatusTest, StringsAreDistinctAndNamed) {
  EXPECT_STREQ(sae_rt_status_string(SAE_RT_OK), "ok");
  EXPECT_STREQ(sae_rt_status_string(SAE_RT_ERR_IO), "I/O error");
  EXPECT_STREQ(sae_rt_status_string(SAE_RT_ERR_NOMEM), "out of memory");
  EXPECT_STRNE(sae_rt_status_string(SAE_RT_ERR_FORMAT),
               sae_rt_status_string(SAE_RT_ERR_SHAPE));
  EXPECT_STREQ(sae_rt_status_string(static_cast<sae_rt_status>(99)),
               "unknown status");
}

TEST(StatusTest, LastErrorIsThreadLocal) {
  sae_rt_array array{};
  ASSERT_EQ(sae_rt_npy_read("/nonexistent/main-thread.npy", &array),
            SAE_RT_ERR_IO);
  std::string other;
  std::thread([&] {
    EXPECT_STREQ(sae_rt_last_error(), "");
    sae_rt_array a{};
    sae_rt_npy_read("/nonexistent/other-thread.npy", &a);
    other = sae_rt_last_error();
  }).join();
  EXPECT_TRUE(contains(other, "other-thread.npy"));
  EXPECT_TRUE(contains(sae_rt_last_error(), "main-thread.npy"));
}

TEST(ArrayTest, AllocIsZeroedAndSized) {
  ArrayGuard a;
  int64_t shape[3] = {2, 3, 5};
  ASSERT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT16, 3, shape, a.get()),
            SAE_RT_OK);
  EXPECT_EQ(a->dtype, SAE_RT_DTYPE_FLOAT16);
  EXPECT_EQ(a->ndim, 3);
  EXPECT_EQ(sae_rt_array_numel(a.get()), 30);
  EXPECT_EQ(sae_rt_array_nbytes(a.get()), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data) % 64, 0u);
  const uint16_t *data = a.as<uint16_t>();
  for (int i = 0; i < 30; ++i)
    EXPECT_EQ(data[i], 0);
}

TEST(ArrayTest, ScalarAndEmpty) {
  ArrayGuard scalar, empty;
  ASSERT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_INT32, 0, nullptr, scalar.get()),
            SAE_RT_OK);
  EXPECT_EQ(sae_rt_array_numel(scalar.get()), 1);
  int64_t shape[2] = {0, 7};
  ASSERT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT32, 2, shape, empty.get()),
            SAE_RT_OK);
  EXPECT_EQ(sae_rt_array_numel(empty.get()), 0);
  EXPECT_EQ(sae_rt_array_nbytes(empty.get()), 0u);
}

TEST(ArrayTest, RejectsBadDescriptions) {
  ArrayGuard a;
  int64_t negative[1] = {-1};
  EXPECT_NE(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT32, 1, negative, a.get()),
            SAE_RT_OK);
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT32, 9, nine, a.get()),
            SAE_RT_ERR_ARG);
  EXPECT_EQ(sae_rt_array_alloc(static_cast<sae_rt_dtype>(17), 1, nine, a.get()),
            SAE_RT_ERR_ARG);
  // 2^62 * 2^62 elements overflow int64: reported, not wrapped.
  int64_t huge[2] = {int64_t(1) << 62, int64_t(1) << 62};
  EXPECT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT32, 2, huge, a.get()),
            SAE_RT_ERR_NOMEM);
  // Fits in int64 elements but not in bytes.
  int64_t big[1] = {int64_t(1) << 62};
  EXPECT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_FLOAT32, 1, big, a.get()),
            SAE_RT_ERR_NOMEM);
  EXPECT_EQ(a->data, nullptr);
  sae_rt_array described{};
  described.ndim = 1;
  described.shape[0] = int64_t(1) << 62;
  EXPECT_EQ(sae_rt_array_nbytes(&described), 0u);
  EXPECT_EQ(sae_rt_array_numel(nullptr), -1);
}

TEST(ArrayTest, FreeResetsAndAcceptsNull) {
  ArrayGuard a;
  int64_t shape[1] = {4};
  ASSERT_EQ(sae_rt_array_alloc(SAE_RT_DTYPE_INT32, 1, shape, a.get()),
            SAE_RT_OK);
  sae_rt_array_free(a.get());
  EXPECT_EQ(a->data, nullptr);
  EXPECT_EQ(a->ndim, 0);
  sae_rt_array_free(a.get()); // twice is fine
  sae_rt_array_free(nullptr);
}

TEST(HalfTest, Float16Values) {
  EXPECT_EQ(sae_rt_float16_to_float32(0x3c00), 1.0f);
  EXPECT_EQ(sae_rt_float16_to_float32(0xc000), -2.0f);
  EXPECT_EQ(sae_rt_float16_to_float32(0x3555), 0.333251953125f);
  EXPECT_EQ(sae_rt_float16_to_float32(0x7bff), 65504.0f);
  EXPECT_EQ(sae_rt_float16_to_float32(0x0400), std::ldexp(1.0f, -14));
  // Subnormals: smallest and largest.
  EXPECT_EQ(sae_rt_float16_to_float32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(sae_rt_float16_to_float32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(sae_rt_float16_to_float32(0x8001), -std::ldexp(1.0f, -24));
  // Zeros keep their sign.
  EXPECT_EQ(sae_rt_float16_to_float32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(sae_rt_float16_to_float32(0x8000)));
  EXPECT_EQ(sae_rt_float16_to_float32(0x7c00),
            std::numeric_limits<float>::infinity());
  EXPECT_EQ(sae_rt_float16_to_float32(0xfc00),
            -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(sae_rt_float16_to_float32(0x7e00)));
  EXPECT_TRUE(std::isnan(sae_rt_float16_to_float32(0x7c01)));
}

TEST(HalfTest, BFloat16Values) {
  EXPECT_EQ(sae_rt_bfloat16_to_float32(0x3f80), 1.0f);
  EXPECT_EQ(sae_rt_bfloat16_to_float32(0x4049), 3.140625f);
  EXPECT_EQ(sae_rt_bfloat16_to_float32(0xc2f7), -123.5f);
  EXPECT_EQ(sae_rt_bfloat16_to_float32(0x0001),
            std::ldexp(1.0f, -133)); // smallest subnormal
  EXPECT_EQ(sae_rt_bfloat16_to_float32(0xff80),
            -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(sae_rt_bfloat16_to_float32(0x7fc0)));
}

TEST(HalfTest, ArrayConversion) {
  std::vector<uint16_t> half = {0x3c00, 0xc000, 0x0001, 0x7bff};
  sae_rt_array in = borrow(SAE_RT_DTYPE_FLOAT16, {2, 2}, half);
  ArrayGuard out;
  ASSERT_EQ(sae_rt_array_to_float32(&in, out.get()), SAE_RT_OK);
  EXPECT_EQ(out->dtype, SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(out->ndim, 2);
  EXPECT_EQ(out->shape[1], 2);
  EXPECT_EQ(out.as<float>()[0], 1.0f);
  EXPECT_EQ(out.as<float>()[1], -2.0f);
  EXPECT_EQ(out.as<float>()[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(out.as<float>()[3], 65504.0f);

  std::vector<uint16_t> brain = {0x4049, 0xc2f7};
  sae_rt_array bf = borrow(SAE_RT_DTYPE_BFLOAT16, {2}, brain);
  ArrayGuard widened;
  ASSERT_EQ(sae_rt_array_to_float32(&bf, widened.get()), SAE_RT_OK);
  EXPECT_EQ(widened.as<float>()[0], 3.140625f);
  EXPECT_EQ(widened.as<float>()[1], -123.5f);

  std::vector<int32_t> ints = {-7, 16777217};
  sae_rt_array i32 = borrow(SAE_RT_DTYPE_INT32, {2}, ints);
  ArrayGuard converted;
  ASSERT_EQ(sae_rt_array_to_float32(&i32, converted.get()), SAE_RT_OK);
  EXPECT_EQ(converted.as<float>()[0], -7.0f);
  EXPECT_EQ(converted.as<float>()[1], 16777216.0f); // rounded to nearest

  sae_rt_array missing = borrow(SAE_RT_DTYPE_FLOAT16, {2}, half);
  missing.data = nullptr;
  ArrayGuard none;
  EXPECT_EQ(sae_rt_array_to_float32(&missing, none.get()), SAE_RT_ERR_ARG);
}

} // namespace
