//===- ModelTest.cpp - Tests of model loading and the entry points --------===//

#include "TestUtil.h"

#include <cmath>

using namespace saetest;

namespace {

TEST(ModelLoadTest, MissingFile) {
  ModelGuard g;
  expectError(sae_rt_model_open("/nonexistent/libnothing.so", &g.model),
              SAE_RT_ERR_IO,
              {"cannot load model library '/nonexistent/libnothing.so'",
               "No such file"});
  EXPECT_EQ(g.model, nullptr);
}

TEST(ModelLoadTest, TextFile) {
  TempDir dir;
  std::string path = dir.file("notes.so");
  writeFile(path, "this is a text file, not a shared library\n"
                  "with enough bytes to have an ELF header's length......\n");
  ModelGuard g;
  // dlerror's words: "invalid ELF header".
  expectError(sae_rt_model_open(path.c_str(), &g.model), SAE_RT_ERR_ABI,
              {"cannot load model library '" + path + "'", "ELF"});
  EXPECT_EQ(g.model, nullptr);
}

TEST(ModelLoadTest, RelativeNameIsAFileNotALibrarySearch) {
  // "libc.so.6" without a slash must not load the system libc.
  ModelGuard g;
  expectError(sae_rt_model_open("libc.so.6", &g.model), SAE_RT_ERR_IO,
              {"'libc.so.6'", "No such file"});
}

TEST(ModelLoadTest, LibraryWithoutTheSymbols) {
  ModelGuard g;
  expectError(sae_rt_model_open(SAE_FAKE_NO_SYMBOLS, &g.model), SAE_RT_ERR_ABI,
              {std::string("'") + SAE_FAKE_NO_SYMBOLS +
               "' is not a saec library (no symbol sae_abi_version)"});
  EXPECT_EQ(g.model, nullptr);
}

TEST(ModelLoadTest, WrongAbiVersion) {
  ModelGuard g;
  expectError(sae_rt_model_open(SAE_FAKE_ABI2, &g.model), SAE_RT_ERR_ABI,
              {"was built for saec ABI version 2",
               "this runtime implements version 1"});
}

TEST(ModelLoadTest, MalformedDescription) {
  ModelGuard g;
  expectError(sae_rt_model_open(SAE_FAKE_BAD_DESCRIBE, &g.model),
              SAE_RT_ERR_ABI,
              {SAE_FAKE_BAD_DESCRIBE, "sae_model_describe() returned invalid "
                                      "JSON"});
}

TEST(ModelLoadTest, MissingCpuFeature) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512er"))
    GTEST_SKIP() << "this CPU has avx512er";
  ModelGuard g;
  expectError(sae_rt_model_open(SAE_FAKE_MISSING_CPU, &g.model), SAE_RT_ERR_ABI,
              {std::string("'") + SAE_FAKE_MISSING_CPU +
               "' was compiled for a CPU with avx512er, which this CPU "
               "lacks; recompile it with saec on this machine"});
  EXPECT_EQ(g.model, nullptr);
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

TEST(ModelLoadTest, UnknownCpuFeature) {
  ModelGuard g;
  expectError(sae_rt_model_open(SAE_FAKE_UNKNOWN_FEATURE, &g.model),
              SAE_RT_ERR_ABI, {"'warp-drive'", "cannot check"});
}

TEST(ModelLoadTest, FakeTopkLoads) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  EXPECT_STREQ(sae_rt_model_name(m), "fake_topk");
  EXPECT_STREQ(sae_rt_model_path(m), SAE_FAKE_TOPK);
  EXPECT_STREQ(sae_rt_model_source(m), "test/Unit/Runtime/fake_model.c");
  EXPECT_EQ(sae_rt_model_abi_version(m), 1u);
  EXPECT_EQ(sae_rt_model_input_dim(m), 4);
  EXPECT_EQ(sae_rt_model_latents(m), 8);
  EXPECT_EQ(sae_rt_model_codes_kind(m), SAE_RT_CODES_SPARSE);
  EXPECT_EQ(sae_rt_model_codes_k(m), 2);
  EXPECT_STREQ(sae_rt_model_encoder_op(m), "topk");
  ASSERT_EQ(sae_rt_model_encoder_attr_count(m), 1u);
  EXPECT_STREQ(sae_rt_model_encoder_attr_name(m, 0), "k");
  EXPECT_STREQ(sae_rt_model_encoder_attr_value(m, 0), "2");
  EXPECT_STREQ(sae_rt_model_loss(m), "mse");
  EXPECT_STREQ(sae_rt_model_target_cpu(m), "generic");
  EXPECT_TRUE(
      contains(sae_rt_model_describe_json(m), "\"name\": \"fake_topk\""));
  EXPECT_TRUE(
      contains(sae_rt_model_describe_pretty(m), "\n  \"latents\": 8,\n"));

  ASSERT_EQ(sae_rt_model_param_count(m), 4u);
  EXPECT_STREQ(sae_rt_model_param_name(m, 0), "W_enc");
  EXPECT_EQ(sae_rt_model_param_ndim(m, 0), 2);
  EXPECT_EQ(sae_rt_model_param_shape(m, 0)[0], 4);
  EXPECT_EQ(sae_rt_model_param_shape(m, 0)[1], 8);
  EXPECT_EQ(sae_rt_model_param_numel(m, 0), 32);
  EXPECT_STREQ(sae_rt_model_param_name(m, 3), "b_dec");
  EXPECT_STREQ(sae_rt_model_param_init(m, 2), "transpose(W_enc)");
  EXPECT_EQ(sae_rt_model_param_name(m, 4), nullptr);
  EXPECT_EQ(sae_rt_model_param_shape(m, 4), nullptr);

  const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
  EXPECT_NE(e->init, nullptr);
  EXPECT_NE(e->encode_sparse, nullptr);
  EXPECT_NE(e->decode_sparse, nullptr);
  EXPECT_NE(e->forward, nullptr);

  // cfg.json: the model's cfg plus the saec keys, in order.
  std::string cfg = sae_rt_model_cfg_json(m);
  EXPECT_TRUE(contains(cfg, "\"architecture\": \"topk\""));
  EXPECT_TRUE(contains(cfg, "\"saec_abi_version\": 1"));
  EXPECT_TRUE(contains(cfg, "\"saec_model\": \"fake_topk\""));
  EXPECT_LT(cfg.find("architecture"), cfg.find("saec_model"));
}

TEST(ModelLoadTest, DenseModelHasNoSparseEntryPoints) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_RELU, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_model_codes_kind(g.model), SAE_RT_CODES_DENSE);
  EXPECT_EQ(sae_rt_model_codes_k(g.model), 0);
  EXPECT_EQ(sae_rt_model_entry_points(g.model)->encode_sparse, nullptr);
  EXPECT_EQ(sae_rt_model_entry_points(g.model)->decode_sparse, nullptr);
  ParamsGuard p;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  float x[4] = {0}, values[2];
  int32_t indices[2];
  expectError(
      sae_rt_model_encode_sparse(g.model, 1, x, p.params, values, indices),
      SAE_RT_ERR_ABI,
      {"model 'fake_relu' has no entry point sae_encode_sparse"});
}

TEST(ModelLoadTest, ParamsAllocIsZeroedAndAligned) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK);
  ParamsGuard p;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_NE(p.params[i], nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.params[i]) % 64, 0u);
    for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
      EXPECT_EQ(p.params[i][j], 0.0f);
  }
  // Freeing after the model is closed is fine: the count is remembered.
  sae_rt_model_close(g.model);
  g.model = nullptr;
  sae_rt_params_free(p.params);
  p.params = nullptr;
  sae_rt_params_free(nullptr);
}

class FakeModelTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK)
        << sae_rt_last_error();
    ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_init(g.model, 1234, p.params), SAE_RT_OK);
    ref = FakeParams::from(p.params);
  }
  ModelGuard g;
  ParamsGuard p;
  FakeParams ref;
};

TEST_F(FakeModelTest, InitIsDeterministicPerSeed) {
  ParamsGuard again, other;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &again.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_params_alloc(g.model, &other.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 1234, again.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 1235, other.params), SAE_RT_OK);
  EXPECT_EQ(std::memcmp(again.params[0], p.params[0], 32 * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(other.params[0], p.params[0], 32 * sizeof(float)), 0);
  EXPECT_EQ(p.params[2][1 * 4 + 3], p.params[0][3 * 8 + 1]); // W_dec = W_enc^T
}

TEST_F(FakeModelTest, WrappersMatchTheReference) {
  const int rows = 5;
  std::vector<float> x = sampleInputs(rows);
  std::vector<float> values(rows * kK), dense(rows * kN), xhat(rows * kD);
  std::vector<int32_t> indices(rows * kK);
  ASSERT_EQ(sae_rt_model_encode_sparse(g.model, rows, x.data(), p.params,
                                       values.data(), indices.data()),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_encode_dense(g.model, rows, x.data(), p.params,
                                      dense.data()),
            SAE_RT_OK);
  for (int r = 0; r < rows; ++r) {
    float v[kK], codes[kN];
    int32_t idx[kK];
    referenceTopk(ref, &x[r * kD], v, idx);
    referenceEncodeDense(ref, &x[r * kD], codes, true);
    for (int t = 0; t < kK; ++t) {
      EXPECT_EQ(indices[r * kK + t], idx[t]);
      EXPECT_FLOAT_EQ(values[r * kK + t], v[t]);
    }
    for (int j = 0; j < kN; ++j)
      EXPECT_FLOAT_EQ(dense[r * kN + j], codes[j]);
  }
  ASSERT_EQ(sae_rt_model_decode_sparse(g.model, rows, values.data(),
                                       indices.data(), p.params, xhat.data()),
            SAE_RT_OK);
  std::vector<float> xhatDense(rows * kD);
  ASSERT_EQ(sae_rt_model_decode_dense(g.model, rows, dense.data(), p.params,
                                      xhatDense.data()),
            SAE_RT_OK);
  for (int i = 0; i < rows * kD; ++i)
    EXPECT_FLOAT_EQ(xhat[i], xhatDense[i]);
  float loss = -1;
  std::vector<float> xhatForward(rows * kD);
  ASSERT_EQ(sae_rt_model_forward(g.model, rows, x.data(), p.params,
                                 xhatForward.data(), &loss),
            SAE_RT_OK);
  double sse = 0;
  for (int i = 0; i < rows * kD; ++i) {
    EXPECT_FLOAT_EQ(xhatForward[i], xhat[i]);
    sse += (double(xhatForward[i]) - x[i]) * (double(xhatForward[i]) - x[i]);
  }
  EXPECT_NEAR(loss, sse / rows, 1e-5);
}

TEST_F(FakeModelTest, WrappersValidateArguments) {
  std::vector<float> x = sampleInputs(2), values(4), xhat(8);
  std::vector<int32_t> indices = {0, 1, 2, 8};
  expectError(sae_rt_model_decode_sparse(g.model, 2, values.data(),
                                         indices.data(), p.params, xhat.data()),
              SAE_RT_ERR_ARG,
              {"row 1, column 1: index 8 is out of range [0, 8)"});
  indices[3] = -1;
  EXPECT_EQ(sae_rt_model_decode_sparse(g.model, 2, values.data(),
                                       indices.data(), p.params, xhat.data()),
            SAE_RT_ERR_ARG);
  expectError(
      sae_rt_model_encode_dense(g.model, 0, x.data(), p.params, xhat.data()),
      SAE_RT_ERR_ARG, {"batch is 0"});
  expectError(
      sae_rt_model_encode_dense(g.model, 1, nullptr, p.params, xhat.data()),
      SAE_RT_ERR_ARG, {"x is NULL"});
  float *holes[4] = {p.params[0], nullptr, p.params[2], p.params[3]};
  expectError(
      sae_rt_model_encode_dense(g.model, 1, x.data(), holes, xhat.data()),
      SAE_RT_ERR_ARG, {"params[1] ('b_enc') is NULL"});
  // A failing library call becomes SAE_RT_ERR_EXEC with the return code.
  x[1] = NAN;
  float loss;
  expectError(
      sae_rt_model_forward(g.model, 2, x.data(), p.params, xhat.data(), &loss),
      SAE_RT_ERR_EXEC, {"model 'fake_topk': sae_forward returned 3"});
}

} // namespace
