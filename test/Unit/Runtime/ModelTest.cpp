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
               "this runtime implements version 3",
               "recompile it with a matching saec"});
  EXPECT_EQ(g.model, nullptr);
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
               "lacks; recompile it with saec on this machine, or with "
               "saec --target-cpu naming this CPU"});
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
  EXPECT_EQ(sae_rt_model_abi_version(m), 3u);
  EXPECT_EQ(sae_rt_model_input_dim(m), 4);
  ASSERT_EQ(sae_rt_model_input_count(m), 1u);
  EXPECT_STREQ(sae_rt_model_input_name(m, 0), "x");
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 0), 4);
  EXPECT_EQ(sae_rt_model_input_name(m, 1), nullptr);
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 1), 0);
  EXPECT_EQ(sae_rt_model_codes_layout(m), SAE_RT_LAYOUT_ROWS);
  ASSERT_EQ(sae_rt_model_loss_term_count(m), 2u);
  EXPECT_STREQ(sae_rt_model_loss_term_name(m, 0), "recon");
  EXPECT_STREQ(sae_rt_model_loss_term_name(m, 1), "sparsity");
  EXPECT_EQ(sae_rt_model_loss_term_name(m, 2), nullptr);
  EXPECT_EQ(sae_rt_model_init_needs_data(m), 0);
  EXPECT_EQ(sae_rt_model_stochastic(m), 0);
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
  EXPECT_EQ(e->encode_batch, nullptr);
  EXPECT_EQ(e->decode_batch, nullptr);

  // cfg.json: the model's cfg plus the saec keys, in order.
  std::string cfg = sae_rt_model_cfg_json(m);
  EXPECT_TRUE(contains(cfg, "\"architecture\": \"topk\""));
  EXPECT_TRUE(contains(cfg, "\"saec_abi_version\": 3"));
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
  int32_t indices[2], rows[2];
  const float *inputs[1] = {x};
  expectError(
      sae_rt_model_encode_sparse(g.model, 1, inputs, p.params, values, indices),
      SAE_RT_ERR_ABI,
      {"model 'fake_relu' has no entry point sae_encode_sparse"});
  expectError(sae_rt_model_encode_batch(g.model, 1, inputs, p.params, values,
                                        indices, rows),
              SAE_RT_ERR_ABI,
              {"model 'fake_relu' has no entry point sae_encode_batch"});
  // No "layout" for dense codes; an empty "loss_terms" list is fine.
  EXPECT_EQ(sae_rt_model_codes_layout(g.model), SAE_RT_LAYOUT_ROWS);
  EXPECT_EQ(sae_rt_model_loss_term_count(g.model), 0u);
}

TEST(ModelLoadTest, BatchLayoutModel) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_BATCH, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  EXPECT_EQ(sae_rt_model_codes_kind(m), SAE_RT_CODES_SPARSE);
  EXPECT_EQ(sae_rt_model_codes_layout(m), SAE_RT_LAYOUT_BATCH);
  EXPECT_EQ(sae_rt_model_codes_k(m), 2);
  EXPECT_STREQ(sae_rt_codes_layout_name(sae_rt_model_codes_layout(m)), "batch");
  EXPECT_STREQ(sae_rt_codes_layout_name(SAE_RT_LAYOUT_ROWS), "rows");
  EXPECT_EQ(sae_rt_model_stochastic(m), 1);
  ASSERT_EQ(sae_rt_model_loss_term_count(m), 2u);
  EXPECT_STREQ(sae_rt_model_loss_term_name(m, 1), "noise");
  const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
  EXPECT_NE(e->encode_batch, nullptr);
  EXPECT_NE(e->decode_batch, nullptr);
  EXPECT_EQ(e->encode_sparse, nullptr);
  EXPECT_EQ(e->decode_sparse, nullptr);
}

TEST(ModelLoadTest, AuxiliaryInput) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_AUX, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  ASSERT_EQ(sae_rt_model_input_count(m), 2u);
  EXPECT_STREQ(sae_rt_model_input_name(m, 0), "x");
  EXPECT_STREQ(sae_rt_model_input_name(m, 1), "g");
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 0), 4);
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 1), 3);
  EXPECT_EQ(sae_rt_model_input_dim(m), 4);
}

TEST(ModelLoadTest, MinimalDescriptionGetsDefaults) {
  // A description without inputs, codes.layout, loss_terms,
  // init_needs_data and stochastic.
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_MINIMAL, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  ASSERT_EQ(sae_rt_model_input_count(m), 1u);
  EXPECT_STREQ(sae_rt_model_input_name(m, 0), "x");
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 0), 4);
  EXPECT_EQ(sae_rt_model_codes_layout(m), SAE_RT_LAYOUT_ROWS);
  EXPECT_EQ(sae_rt_model_loss_term_count(m), 0u);
  EXPECT_EQ(sae_rt_model_init_needs_data(m), 0);
  EXPECT_EQ(sae_rt_model_stochastic(m), 0);
}

TEST(ModelLoadTest, NullModelAccessors) {
  EXPECT_EQ(sae_rt_model_input_count(nullptr), 0u);
  EXPECT_EQ(sae_rt_model_input_name(nullptr, 0), nullptr);
  EXPECT_EQ(sae_rt_model_input_dim_at(nullptr, 0), 0);
  EXPECT_EQ(sae_rt_model_codes_layout(nullptr), SAE_RT_LAYOUT_ROWS);
  EXPECT_EQ(sae_rt_model_loss_term_count(nullptr), 0u);
  EXPECT_EQ(sae_rt_model_loss_term_name(nullptr, 0), nullptr);
  EXPECT_EQ(sae_rt_model_init_needs_data(nullptr), 0);
  EXPECT_EQ(sae_rt_model_stochastic(nullptr), 0);
  EXPECT_STREQ(sae_rt_codes_layout_name(static_cast<sae_rt_codes_layout>(7)),
               "invalid");
}

//===----------------------------------------------------------------------===//
// Description schema (version 3), through the fake model whose description
// comes from $SAE_FAKE_DESCRIBE
//===----------------------------------------------------------------------===//

/// A valid description with `fields` spliced in after "name"; `input` and
/// `codes` replace those members (empty: leave the member out).
std::string
describeWith(const std::string &fields,
             const std::string &input = "{\"name\": \"x\", \"dim\": 4}",
             const std::string &codes = "{\"kind\": \"sparse\", \"k\": 2}") {
  std::string text = "{\"abi_version\": 3, \"name\": \"custom\", ";
  if (!fields.empty())
    text += fields + ", ";
  if (!input.empty())
    text += "\"input\": " + input + ", ";
  text += "\"latents\": 8, ";
  if (!codes.empty())
    text += "\"codes\": " + codes + ", ";
  return text + "\"params\": [{\"name\": \"W_enc\", \"shape\": [4, 8]}, "
                "{\"name\": \"b_enc\", \"shape\": [8]}, "
                "{\"name\": \"W_dec\", \"shape\": [8, 4]}, "
                "{\"name\": \"b_dec\", \"shape\": [4]}]}";
}

TEST(ModelDescribeTest, CustomDescriptionIsUsed) {
  ScopedEnv env("SAE_FAKE_DESCRIBE",
                describeWith("\"inputs\": [{\"name\": \"act\", \"dim\": 4}, "
                             "{\"name\": \"grad\", \"dim\": 6}], "
                             "\"loss_terms\": [\"a\", \"b\", \"c\"], "
                             "\"init_needs_data\": true, \"stochastic\": true",
                             "",
                             "{\"kind\": \"sparse\", \"layout\": "
                             "\"batch\", \"k\": 3}"));
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_CUSTOM, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  EXPECT_STREQ(sae_rt_model_name(m), "custom");
  ASSERT_EQ(sae_rt_model_input_count(m), 2u);
  EXPECT_STREQ(sae_rt_model_input_name(m, 0), "act");
  EXPECT_EQ(sae_rt_model_input_dim(m), 4);
  EXPECT_STREQ(sae_rt_model_input_name(m, 1), "grad");
  EXPECT_EQ(sae_rt_model_input_dim_at(m, 1), 6);
  EXPECT_EQ(sae_rt_model_codes_layout(m), SAE_RT_LAYOUT_BATCH);
  EXPECT_EQ(sae_rt_model_codes_k(m), 3);
  EXPECT_EQ(sae_rt_model_loss_term_count(m), 3u);
  EXPECT_STREQ(sae_rt_model_loss_term_name(m, 2), "c");
  EXPECT_EQ(sae_rt_model_init_needs_data(m), 1);
  EXPECT_EQ(sae_rt_model_stochastic(m), 1);
  // Without "cfg", cfg.json gets d_in from the first input.
  EXPECT_TRUE(contains(sae_rt_model_cfg_json(m), "\"d_in\": 4"));
}

TEST(ModelDescribeTest, InvalidFieldsAreRefused) {
  const std::string x = "{\"name\": \"x\", \"dim\": 4}";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {describeWith("", x,
                    "{\"kind\": \"sparse\", \"layout\": \"columns\", "
                    "\"k\": 2}"),
       "codes.layout is 'columns', expected 'rows' or 'batch'"},
      {describeWith("", x, "{\"kind\": \"sparse\", \"layout\": 1, \"k\": 2}"),
       "codes.layout is not a string"},
      {describeWith("", ""), "input is missing (and there is no \"inputs\""},
      {describeWith("\"inputs\": []", ""), "inputs must be a non-empty array"},
      {describeWith("\"inputs\": {\"name\": \"x\"}", ""),
       "inputs must be a non-empty array"},
      {describeWith("\"inputs\": [{\"name\": \"x\", \"dim\": 4}, "
                    "{\"name\": \"x\", \"dim\": 2}]",
                    ""),
       "inputs[1].name is empty or duplicated: 'x'"},
      {describeWith("\"inputs\": [{\"name\": \"x\", \"dim\": 0}]", ""),
       "inputs[0].dim is 0, expected at least 1"},
      {describeWith("\"inputs\": [{\"dim\": 4}]", ""),
       "inputs[0].name is missing"},
      {describeWith("\"inputs\": [\"x\"]", ""), "inputs[0] is not an object"},
      {describeWith("\"inputs\": [{\"name\": \"x\", \"dim\": 5}]", x),
       "input ('x', dim 4) does not match inputs[0] ('x', dim 5)"},
      {describeWith("\"inputs\": [{\"name\": \"act\", \"dim\": 4}]", x),
       "input ('x', dim 4) does not match inputs[0] ('act', dim 4)"},
      {describeWith("\"loss_terms\": \"recon\"", x),
       "loss_terms is not an array"},
      {describeWith("\"loss_terms\": [\"recon\", 3]", x),
       "loss_terms[1] is not a string"},
      {describeWith("\"loss_terms\": [\"recon\", \"recon\"]", x),
       "loss_terms[1] is empty or duplicated: 'recon'"},
      {describeWith("\"init_needs_data\": 1", x),
       "init_needs_data is not a boolean"},
      {describeWith("\"stochastic\": \"no\"", x),
       "stochastic is not a boolean"},
  };
  for (const auto &c : cases) {
    SCOPED_TRACE(c.first);
    ScopedEnv env("SAE_FAKE_DESCRIBE", c.first);
    ModelGuard g;
    expectError(
        sae_rt_model_open(SAE_FAKE_CUSTOM, &g.model), SAE_RT_ERR_ABI,
        {std::string("'") + SAE_FAKE_CUSTOM + "': invalid model description: ",
         c.second});
    EXPECT_EQ(g.model, nullptr);
  }
}

TEST(ModelDescribeTest, InputsAloneAreEnough) {
  ScopedEnv env(
      "SAE_FAKE_DESCRIBE",
      describeWith("\"inputs\": [{\"name\": \"x\", \"dim\": 4}]", ""));
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_CUSTOM, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_model_input_dim(g.model), 4);
}

TEST(ModelDescribeTest, EntryPointsMustFitTheLayout) {
  // The library exports the "rows" entry points, but says its layout is
  // "batch": the wrappers refuse to call them.
  ScopedEnv env("SAE_FAKE_DESCRIBE",
                describeWith("", "{\"name\": \"x\", \"dim\": 4}",
                             "{\"kind\": \"sparse\", \"layout\": "
                             "\"batch\", \"k\": 2}"));
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_CUSTOM, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  ParamsGuard p;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  std::vector<float> x = sampleInputs(1), values(2), xhat(4);
  std::vector<int32_t> indices = {0, 1};
  const float *inputs[1] = {x.data()};
  expectError(sae_rt_model_encode_sparse(g.model, 1, inputs, p.params,
                                         values.data(), indices.data()),
              SAE_RT_ERR_ARG,
              {"model 'custom': sae_encode_sparse is for models with sparse "
               "codes of layout 'rows', but the model has sparse codes of "
               "layout 'batch'"});
  expectError(sae_rt_model_decode_sparse(g.model, 1, values.data(),
                                         indices.data(), p.params, xhat.data()),
              SAE_RT_ERR_ARG, {"sae_decode_sparse is for models with sparse"});
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
    ASSERT_EQ(sae_rt_model_init(g.model, 1234, 0, nullptr, p.params), SAE_RT_OK)
        << sae_rt_last_error();
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
  ASSERT_EQ(sae_rt_model_init(g.model, 1234, 0, nullptr, again.params),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 1235, 0, nullptr, other.params),
            SAE_RT_OK);
  EXPECT_EQ(std::memcmp(again.params[0], p.params[0], 32 * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(other.params[0], p.params[0], 32 * sizeof(float)), 0);
  EXPECT_EQ(p.params[2][1 * 4 + 3], p.params[0][3 * 8 + 1]); // W_dec = W_enc^T
}

TEST_F(FakeModelTest, InitWithoutDataNeedsNoSample) {
  // A sample is allowed (and ignored by this model); its arguments must
  // still be consistent.
  std::vector<float> x = sampleInputs(3);
  ParamsGuard sampled;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &sampled.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 1234, 3, x.data(), sampled.params),
            SAE_RT_OK);
  EXPECT_EQ(std::memcmp(sampled.params[3], p.params[3], 4 * sizeof(float)), 0);
  expectError(sae_rt_model_init(g.model, 1, -1, nullptr, sampled.params),
              SAE_RT_ERR_ARG, {"sae_init: batch is -1, expected >= 0"});
  expectError(sae_rt_model_init(g.model, 1, 2, nullptr, sampled.params),
              SAE_RT_ERR_ARG, {"sae_init: x is NULL but batch is 2"});
  expectError(sae_rt_model_init(g.model, 1, 0, nullptr, nullptr),
              SAE_RT_ERR_ARG, {"sae_init: params is NULL"});
  expectError(sae_rt_model_init(nullptr, 1, 0, nullptr, sampled.params),
              SAE_RT_ERR_ARG, {"sae_init: model is NULL"});
}

TEST_F(FakeModelTest, WrappersMatchTheReference) {
  const int rows = 5;
  std::vector<float> x = sampleInputs(rows);
  const float *inputs[1] = {x.data()};
  std::vector<float> values(rows * kK), dense(rows * kN), xhat(rows * kD);
  std::vector<int32_t> indices(rows * kK);
  ASSERT_EQ(sae_rt_model_encode_sparse(g.model, rows, inputs, p.params,
                                       values.data(), indices.data()),
            SAE_RT_OK);
  ASSERT_EQ(
      sae_rt_model_encode_dense(g.model, rows, inputs, p.params, dense.data()),
      SAE_RT_OK);
  double sparsity = 0;
  for (int r = 0; r < rows; ++r) {
    float v[kK], codes[kN];
    int32_t idx[kK];
    referenceTopk(ref, &x[r * kD], v, idx);
    referenceEncodeDense(ref, &x[r * kD], codes, true);
    for (int t = 0; t < kK; ++t) {
      EXPECT_EQ(indices[r * kK + t], idx[t]);
      EXPECT_FLOAT_EQ(values[r * kK + t], v[t]);
    }
    for (int j = 0; j < kN; ++j) {
      EXPECT_FLOAT_EQ(dense[r * kN + j], codes[j]);
      sparsity += std::fabs(codes[j]);
    }
  }
  sparsity /= rows;
  ASSERT_EQ(sae_rt_model_decode_sparse(g.model, rows, values.data(),
                                       indices.data(), p.params, xhat.data()),
            SAE_RT_OK);
  std::vector<float> xhatDense(rows * kD);
  ASSERT_EQ(sae_rt_model_decode_dense(g.model, rows, dense.data(), p.params,
                                      xhatDense.data()),
            SAE_RT_OK);
  for (int i = 0; i < rows * kD; ++i)
    EXPECT_FLOAT_EQ(xhat[i], xhatDense[i]);
  float losses[3] = {-1, -1, -1};
  std::vector<float> xhatForward(rows * kD);
  ASSERT_EQ(sae_rt_model_forward(g.model, rows, inputs, p.params, 0,
                                 xhatForward.data(), losses),
            SAE_RT_OK);
  double sse = 0;
  for (int i = 0; i < rows * kD; ++i) {
    EXPECT_FLOAT_EQ(xhatForward[i], xhat[i]);
    sse += (double(xhatForward[i]) - x[i]) * (double(xhatForward[i]) - x[i]);
  }
  EXPECT_NEAR(losses[1], sse / rows, 1e-5); // recon
  EXPECT_NEAR(losses[2], sparsity, 1e-5);   // sparsity
  EXPECT_NEAR(losses[0], sse / rows + 0.25 * sparsity, 1e-5);
}

TEST_F(FakeModelTest, WrappersValidateArguments) {
  std::vector<float> x = sampleInputs(2), values(4), xhat(8);
  const float *inputs[1] = {x.data()};
  std::vector<int32_t> indices = {0, 1, 2, 8}, rows = {0, 0, 1, 1};
  expectError(sae_rt_model_decode_sparse(g.model, 2, values.data(),
                                         indices.data(), p.params, xhat.data()),
              SAE_RT_ERR_ARG,
              {"row 1, column 1: index 8 is out of range [0, 8)"});
  indices[3] = -1;
  EXPECT_EQ(sae_rt_model_decode_sparse(g.model, 2, values.data(),
                                       indices.data(), p.params, xhat.data()),
            SAE_RT_ERR_ARG);
  expectError(
      sae_rt_model_encode_dense(g.model, 0, inputs, p.params, xhat.data()),
      SAE_RT_ERR_ARG, {"batch is 0"});
  expectError(
      sae_rt_model_encode_dense(g.model, 1, nullptr, p.params, xhat.data()),
      SAE_RT_ERR_ARG, {"sae_encode_dense: inputs is NULL"});
  const float *noX[1] = {nullptr};
  expectError(sae_rt_model_encode_dense(g.model, 1, noX, p.params, xhat.data()),
              SAE_RT_ERR_ARG, {"sae_encode_dense: inputs[0] ('x') is NULL"});
  float *holes[4] = {p.params[0], nullptr, p.params[2], p.params[3]};
  expectError(sae_rt_model_encode_dense(g.model, 1, inputs, holes, xhat.data()),
              SAE_RT_ERR_ARG, {"params[1] ('b_enc') is NULL"});
  float losses[3];
  expectError(sae_rt_model_forward(g.model, 2, inputs, p.params, 0, xhat.data(),
                                   nullptr),
              SAE_RT_ERR_ARG, {"sae_forward: losses is NULL"});
  // The batch-layout entry points are not there.
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ABI,
              {"model 'fake_topk' has no entry point sae_decode_batch"});
  // A failing library call becomes SAE_RT_ERR_EXEC with the return code.
  x[1] = NAN;
  expectError(sae_rt_model_forward(g.model, 2, inputs, p.params, 0, xhat.data(),
                                   losses),
              SAE_RT_ERR_EXEC, {"model 'fake_topk': sae_forward returned 3"});
}

//===----------------------------------------------------------------------===//
// Codes of layout "batch"
//===----------------------------------------------------------------------===//

class BatchModelTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_BATCH, &g.model), SAE_RT_OK)
        << sae_rt_last_error();
    ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_init(g.model, 77, 0, nullptr, p.params), SAE_RT_OK);
    ref = FakeParams::from(p.params);
  }
  ModelGuard g;
  ParamsGuard p;
  FakeParams ref;
};

TEST_F(BatchModelTest, EncodeBatchMatchesTheReference) {
  const int rows = 6;
  std::vector<float> x = sampleInputs(rows, 3);
  const float *inputs[1] = {x.data()};
  std::vector<float> values(rows * kK);
  std::vector<int32_t> indices(rows * kK), rowIds(rows * kK);
  ASSERT_EQ(sae_rt_model_encode_batch(g.model, rows, inputs, p.params,
                                      values.data(), indices.data(),
                                      rowIds.data()),
            SAE_RT_OK)
      << sae_rt_last_error();
  BatchCodes want = referenceBatchTopk(ref, x.data(), rows);
  EXPECT_EQ(indices, want.indices);
  EXPECT_EQ(rowIds, want.rows);
  for (size_t i = 0; i < values.size(); ++i)
    EXPECT_FLOAT_EQ(values[i], want.values[i]);
  EXPECT_TRUE(std::is_sorted(rowIds.begin(), rowIds.end()));

  // The dense encoder is the same selection.
  std::vector<float> dense(rows * kN);
  ASSERT_EQ(
      sae_rt_model_encode_dense(g.model, rows, inputs, p.params, dense.data()),
      SAE_RT_OK);
  std::vector<float> wantDense = densify(want, rows);
  for (size_t i = 0; i < dense.size(); ++i)
    EXPECT_FLOAT_EQ(dense[i], wantDense[i]);

  // Decoding the entries equals decoding their dense form.
  std::vector<float> xhat(rows * kD), xhatDense(rows * kD);
  ASSERT_EQ(sae_rt_model_decode_batch(g.model, rows, values.data(),
                                      indices.data(), rowIds.data(), p.params,
                                      xhat.data()),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_decode_dense(g.model, rows, dense.data(), p.params,
                                      xhatDense.data()),
            SAE_RT_OK);
  for (size_t i = 0; i < xhat.size(); ++i)
    EXPECT_NEAR(xhat[i], xhatDense[i], 1e-5);
}

TEST_F(BatchModelTest, DecodeBatchValidatesEntries) {
  // batch 2, k 2: four entries.
  std::vector<float> values = {1, 2, 3, 4}, xhat(2 * kD);
  std::vector<int32_t> indices = {0, 1, 2, 3}, rows = {0, 0, 1, 1};
  ASSERT_EQ(sae_rt_model_decode_batch(g.model, 2, values.data(), indices.data(),
                                      rows.data(), p.params, xhat.data()),
            SAE_RT_OK);
  rows = {0, 1, 0, 1};
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG,
              {"model 'fake_batch_topk': sae_decode_batch: entry 2: row 0 "
               "follows row 1; entries must be sorted by row"});
  rows = {0, 0, 1, 2};
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG,
              {"sae_decode_batch: entry 3: row 2 is out of range [0, 2)"});
  rows = {-1, 0, 1, 1};
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG, {"entry 0: row -1 is out of range [0, 2)"});
  rows = {0, 0, 1, 1};
  indices = {0, 8, 2, 3};
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG, {"entry 1: index 8 is out of range [0, 8)"});
  expectError(sae_rt_model_decode_batch(g.model, 2, values.data(),
                                        indices.data(), nullptr, p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG, {"sae_decode_batch: rows is NULL"});
  expectError(sae_rt_model_decode_batch(g.model, 0, values.data(),
                                        indices.data(), rows.data(), p.params,
                                        xhat.data()),
              SAE_RT_ERR_ARG, {"batch is 0, expected >= 1"});
  // The "rows" entry points are not there.
  expectError(sae_rt_model_decode_sparse(g.model, 2, values.data(),
                                         indices.data(), p.params, xhat.data()),
              SAE_RT_ERR_ABI,
              {"model 'fake_batch_topk' has no entry point sae_decode_sparse"});
}

TEST_F(BatchModelTest, EncodeBatchChecksWhatTheLibraryReturns) {
  std::vector<float> x = sampleInputs(3, 5);
  const float *inputs[1] = {x.data()};
  std::vector<float> values(3 * kK);
  std::vector<int32_t> indices(3 * kK), rows(3 * kK);
  // Make sure the last entry is not in row 0 already.
  ASSERT_EQ(sae_rt_model_encode_batch(g.model, 3, inputs, p.params,
                                      values.data(), indices.data(),
                                      rows.data()),
            SAE_RT_OK);
  ASSERT_GT(rows.back(), 0);
  ScopedEnv env("SAE_FAKE_BREAK_ROWS", "1");
  expectError(sae_rt_model_encode_batch(g.model, 3, inputs, p.params,
                                        values.data(), indices.data(),
                                        rows.data()),
              SAE_RT_ERR_ABI,
              {"model 'fake_batch_topk': sae_encode_batch returned entries "
               "that violate abi.h: entry 5: row 0 follows row",
               "entries must be sorted by row"});
}

TEST_F(BatchModelTest, ForwardSamplesFromItsSeed) {
  const int rows = 4;
  std::vector<float> x = sampleInputs(rows, 8);
  const float *inputs[1] = {x.data()};
  std::vector<float> xhat(rows * kD);
  float a[3], b[3], c[3];
  ASSERT_EQ(
      sae_rt_model_forward(g.model, rows, inputs, p.params, 11, xhat.data(), a),
      SAE_RT_OK);
  ASSERT_EQ(
      sae_rt_model_forward(g.model, rows, inputs, p.params, 11, xhat.data(), b),
      SAE_RT_OK);
  ASSERT_EQ(
      sae_rt_model_forward(g.model, rows, inputs, p.params, 12, xhat.data(), c),
      SAE_RT_OK);
  EXPECT_EQ(std::memcmp(a, b, sizeof(a)), 0);
  EXPECT_FLOAT_EQ(a[2], fakeNoise(11));
  EXPECT_FLOAT_EQ(c[2], fakeNoise(12));
  EXPECT_FLOAT_EQ(a[1], c[1]); // recon does not depend on the seed
  EXPECT_NEAR(a[0], a[1] + a[2], 1e-5);

  // xhat decodes the batch-level selection.
  BatchCodes want = referenceBatchTopk(ref, x.data(), rows);
  std::vector<float> dense = densify(want, rows);
  for (int r = 0; r < rows; ++r) {
    float expected[kD];
    referenceDecode(ref, &dense[r * kN], expected);
    for (int i = 0; i < kD; ++i)
      EXPECT_NEAR(xhat[r * kD + i], expected[i], 1e-5);
  }
}

//===----------------------------------------------------------------------===//
// Auxiliary inputs and data-dependent initialisers
//===----------------------------------------------------------------------===//

TEST(AuxModelTest, TheAuxiliaryInputReachesTheModel) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_AUX, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  ParamsGuard p;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 9, 0, nullptr, p.params), SAE_RT_OK);
  FakeParams ref = FakeParams::from(p.params);
  const int rows = 3;
  std::vector<float> x = sampleInputs(rows, 4), grad(rows * kG);
  for (size_t i = 0; i < grad.size(); ++i)
    grad[i] = (i % 2 ? 1.5f : -1.0f) * static_cast<float>(i);
  const float *inputs[2] = {x.data(), grad.data()};
  std::vector<float> values(rows * kK);
  std::vector<int32_t> indices(rows * kK);
  ASSERT_EQ(sae_rt_model_encode_sparse(g.model, rows, inputs, p.params,
                                       values.data(), indices.data()),
            SAE_RT_OK);
  for (int r = 0; r < rows; ++r) {
    float v[kK];
    int32_t idx[kK];
    referenceTopk(ref, &x[r * kD], v, idx, &grad[r * kG]);
    for (int t = 0; t < kK; ++t) {
      EXPECT_EQ(indices[r * kK + t], idx[t]);
      EXPECT_FLOAT_EQ(values[r * kK + t], v[t]);
    }
  }
  const float *missing[2] = {x.data(), nullptr};
  expectError(sae_rt_model_encode_sparse(g.model, rows, missing, p.params,
                                         values.data(), indices.data()),
              SAE_RT_ERR_ARG,
              {"model 'fake_grad_topk': sae_encode_sparse: inputs[1] ('g') is "
               "NULL"});
}

TEST(InitDataModelTest, InitNeedsASample) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_INIT_DATA, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_model_init_needs_data(g.model), 1);
  EXPECT_STREQ(sae_rt_model_param_init(g.model, 3), "data_mean");
  ParamsGuard p;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  std::vector<float> x = sampleInputs(5, 6);
  expectError(sae_rt_model_init(g.model, 1, 0, nullptr, p.params),
              SAE_RT_ERR_ARG,
              {"model 'fake_topk_data': sae_init: the model has "
               "data-dependent initialisers and needs a sample of its input "
               "'x' (batch >= 1 and x non-NULL); got batch 0 and x NULL"});
  expectError(sae_rt_model_init(g.model, 1, 5, nullptr, p.params),
              SAE_RT_ERR_ARG, {"got batch 5 and x NULL"});
  expectError(sae_rt_model_init(g.model, 1, 0, x.data(), p.params),
              SAE_RT_ERR_ARG, {"got batch 0"});

  ASSERT_EQ(sae_rt_model_init(g.model, 1, 5, x.data(), p.params), SAE_RT_OK)
      << sae_rt_last_error();
  for (int i = 0; i < kD; ++i) {
    double mean = 0;
    for (int r = 0; r < 5; ++r)
      mean += x[r * kD + i] / 5.0;
    EXPECT_NEAR(p.params[3][i], mean, 1e-6);
  }
}

} // namespace
