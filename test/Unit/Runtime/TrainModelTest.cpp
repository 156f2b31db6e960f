//===- TrainModelTest.cpp - Tests of the training parts of the runtime ----===//
//
// ABI 3 on the loader side: the "train" object and "trainable" flags of a
// description, the sae_gradient / sae_train_step entry points and their
// checked wrappers (against the fake model's hand-derived gradient, checked
// here by finite differences), the schedule, seed and shuffle helpers, and
// checkpoints with extra files, including a process killed mid-write.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <cmath>
#include <csignal>
#include <numeric>
#include <set>

using namespace saetest;

namespace {

//===----------------------------------------------------------------------===//
// Loading
//===----------------------------------------------------------------------===//

TEST(TrainLoadTest, TopkDescribesItsTraining) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  EXPECT_EQ(sae_rt_model_abi_version(m), 3u);
  EXPECT_EQ(sae_rt_model_has_train_config(m), 1);
  const sae_rt_train_config *c = sae_rt_model_train_config(m);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->lr, 0.01);
  EXPECT_EQ(c->beta1, 0.9);
  EXPECT_EQ(c->beta2, 0.999);
  EXPECT_EQ(c->eps, 1e-8);
  EXPECT_EQ(c->clip, 0.0);
  EXPECT_EQ(c->lr_warmup, 0);
  EXPECT_EQ(c->lr_decay, SAE_RT_LR_DECAY_NONE);
  EXPECT_EQ(c->sparsity_warmup, 0);
  EXPECT_EQ(c->batch, 4);
  EXPECT_EQ(c->normalize, SAE_RT_NORMALIZE_NONE);
  EXPECT_STREQ(sae_rt_model_train_unit_norm(m), "W_dec");
  EXPECT_EQ(sae_rt_model_trainable_count(m), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(sae_rt_model_param_trainable(m, i), 1);
  EXPECT_EQ(sae_rt_model_param_trainable(m, 4), 0);
  const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
  EXPECT_NE(e->gradient, nullptr);
  EXPECT_NE(e->train_step, nullptr);
}

TEST(TrainLoadTest, MinimalDescriptionGetsTrainingDefaults) {
  // No "train", no "trainable"; the library exports sae_gradient and
  // sae_train_step but its "entry_points" does not list them.
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_MINIMAL, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_model *m = g.model;
  EXPECT_EQ(sae_rt_model_has_train_config(m), 0);
  const sae_rt_train_config *c = sae_rt_model_train_config(m);
  EXPECT_EQ(c->lr, 2e-4);
  EXPECT_EQ(c->beta1, 0.9);
  EXPECT_EQ(c->beta2, 0.999);
  EXPECT_EQ(c->eps, 1e-8);
  EXPECT_EQ(c->clip, 0.0);
  EXPECT_EQ(c->lr_warmup, 0);
  EXPECT_EQ(c->lr_decay, SAE_RT_LR_DECAY_NONE);
  EXPECT_EQ(c->sparsity_warmup, 0);
  EXPECT_EQ(c->batch, 4096);
  EXPECT_EQ(c->normalize, SAE_RT_NORMALIZE_NONE);
  EXPECT_EQ(sae_rt_model_train_unit_norm(m), nullptr);
  EXPECT_EQ(sae_rt_model_trainable_count(m), 4u);
  EXPECT_EQ(sae_rt_model_param_trainable(m, 0), 1);
  EXPECT_EQ(sae_rt_model_entry_points(m)->gradient, nullptr);
  EXPECT_EQ(sae_rt_model_entry_points(m)->train_step, nullptr);

  sae_rt_train_config defaults;
  sae_rt_train_config_default(&defaults);
  EXPECT_EQ(defaults.lr, c->lr);
  EXPECT_EQ(defaults.eps, c->eps);
  EXPECT_EQ(defaults.lr_decay, c->lr_decay);
  EXPECT_EQ(defaults.batch, c->batch);
  EXPECT_EQ(defaults.normalize, c->normalize);
}

TEST(TrainLoadTest, StateParametersAreNotTrainable) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_STATE, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  ASSERT_EQ(sae_rt_model_param_count(g.model), 5u);
  EXPECT_STREQ(sae_rt_model_param_name(g.model, 4), "fires");
  EXPECT_EQ(sae_rt_model_param_trainable(g.model, 4), 0);
  EXPECT_EQ(sae_rt_model_param_trainable(g.model, 3), 1);
  EXPECT_EQ(sae_rt_model_trainable_count(g.model), 4u);
  ParamsGuard moments;
  ASSERT_EQ(sae_rt_trainable_alloc(g.model, &moments.params), SAE_RT_OK);
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_NE(moments.params[i], nullptr);
    for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
      EXPECT_EQ(moments.params[i][j], 0.0f);
  }
}

TEST(TrainLoadTest, NullModelAccessors) {
  EXPECT_EQ(sae_rt_model_train_config(nullptr), nullptr);
  EXPECT_EQ(sae_rt_model_has_train_config(nullptr), 0);
  EXPECT_EQ(sae_rt_model_train_unit_norm(nullptr), nullptr);
  EXPECT_EQ(sae_rt_model_trainable_count(nullptr), 0u);
  EXPECT_EQ(sae_rt_model_param_trainable(nullptr, 0), 0);
  EXPECT_STREQ(sae_rt_lr_decay_name(SAE_RT_LR_DECAY_COSINE), "cosine");
  EXPECT_STREQ(sae_rt_lr_decay_name(static_cast<sae_rt_lr_decay>(9)),
               "invalid");
  EXPECT_STREQ(sae_rt_normalize_name(SAE_RT_NORMALIZE_EXPECTED_NORM),
               "expected_norm");
  EXPECT_STREQ(sae_rt_normalize_name(static_cast<sae_rt_normalize>(9)),
               "invalid");
  float *buffers = nullptr;
  float **out = &buffers;
  EXPECT_EQ(sae_rt_trainable_alloc(nullptr, &out), SAE_RT_ERR_ARG);
}

/// A description of the fake TopK model with `params` (the four, named as
/// given) and `extra` spliced in before "params".
std::string describe(const std::string &extra,
                     const std::string &paramFields = "",
                     const std::string &entryPoints = "") {
  std::string text = "{\"abi_version\": 3, \"name\": \"custom\", "
                     "\"input\": {\"name\": \"x\", \"dim\": 4}, "
                     "\"latents\": 8, \"codes\": {\"kind\": \"sparse\", "
                     "\"k\": 2}, ";
  if (!extra.empty())
    text += extra + ", ";
  if (!entryPoints.empty())
    text += "\"entry_points\": " + entryPoints + ", ";
  return text + "\"params\": [{\"name\": \"W_enc\", \"shape\": [4, 8]" +
         paramFields +
         "}, {\"name\": \"b_enc\", \"shape\": [8]}, "
         "{\"name\": \"W_dec\", \"shape\": [8, 4]}, "
         "{\"name\": \"b_dec\", \"shape\": [4]}]}";
}

TEST(TrainLoadTest, TrainObjectIsValidated) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {describe("\"train\": 3"), "train is not an object"},
      {describe("\"train\": {\"lr\": \"fast\"}"), "train.lr is not a number"},
      {describe("\"train\": {\"lr\": -1}"),
       "train.lr is -1, expected a finite value >= 0"},
      {describe("\"train\": {\"beta1\": 1}"),
       "train.beta1 is 1, expected a value in [0, 1)"},
      {describe("\"train\": {\"beta2\": -0.5}"), "train.beta2 is -0.5"},
      {describe("\"train\": {\"eps\": -1e-8}"), "train.eps is -1e-08"},
      {describe("\"train\": {\"clip\": -2}"), "train.clip is -2"},
      {describe("\"train\": {\"lr_warmup\": -1}"),
       "train.lr_warmup is -1, expected at least 0"},
      {describe("\"train\": {\"lr_warmup\": 1.5}"),
       "train.lr_warmup is not an integer"},
      {describe("\"train\": {\"sparsity_warmup\": -3}"),
       "train.sparsity_warmup is -3"},
      {describe("\"train\": {\"batch\": 0}"),
       "train.batch is 0, expected at least 1"},
      {describe("\"train\": {\"lr_decay\": \"exponential\"}"),
       "train.lr_decay is 'exponential', expected 'none', 'linear' or "
       "'cosine'"},
      {describe("\"train\": {\"normalize\": \"l2\"}"),
       "train.normalize is 'l2', expected 'none' or 'expected_norm'"},
      {describe("\"train\": {\"unit_norm\": \"W_out\"}"),
       "train.unit_norm names 'W_out', which is not a parameter"},
      {describe("\"train\": {\"unit_norm\": \"b_dec\"}"),
       "train.unit_norm names 'b_dec', which is not a trainable 2-D "
       "parameter"},
      {describe("\"train\": {\"unit_norm\": 2}"),
       "train.unit_norm is not a string"},
      {describe("", ", \"trainable\": \"yes\""),
       "param 'W_enc' trainable is not a boolean"},
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

TEST(TrainLoadTest, PartialTrainObjectKeepsTheOtherDefaults) {
  ScopedEnv env("SAE_FAKE_DESCRIBE",
                describe("\"train\": {\"lr\": 3, \"lr_decay\": \"cosine\", "
                         "\"normalize\": \"expected_norm\", \"unit_norm\": "
                         "null, \"future_knob\": [1, 2]}",
                         ", \"trainable\": false",
                         "[\"sae_forward\", \"sae_gradient\", "
                         "\"sae_train_step\"]"));
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_CUSTOM, &g.model), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_train_config *c = sae_rt_model_train_config(g.model);
  EXPECT_EQ(c->lr, 3.0);
  EXPECT_EQ(c->lr_decay, SAE_RT_LR_DECAY_COSINE);
  EXPECT_EQ(c->normalize, SAE_RT_NORMALIZE_EXPECTED_NORM);
  EXPECT_EQ(c->batch, 4096);
  EXPECT_EQ(c->beta2, 0.999);
  EXPECT_EQ(sae_rt_model_train_unit_norm(g.model), nullptr);
  EXPECT_EQ(sae_rt_model_param_trainable(g.model, 0), 0);
  EXPECT_EQ(sae_rt_model_trainable_count(g.model), 3u);
  // Listed: resolved.
  EXPECT_NE(sae_rt_model_entry_points(g.model)->gradient, nullptr);
  EXPECT_NE(sae_rt_model_entry_points(g.model)->train_step, nullptr);
}

TEST(TrainLoadTest, OnlyListedTrainingEntryPointsAreResolved) {
  // The dense fake model exports no training code.
  ScopedEnv env("SAE_FAKE_DESCRIBE",
                describe("", "", "[\"sae_forward\", \"sae_train_step\"]"));
  ModelGuard custom;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_CUSTOM, &custom.model), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(sae_rt_model_entry_points(custom.model)->gradient, nullptr);
  EXPECT_NE(sae_rt_model_entry_points(custom.model)->train_step, nullptr);
  ModelGuard relu;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_RELU, &relu.model), SAE_RT_OK);
  EXPECT_EQ(sae_rt_model_entry_points(relu.model)->train_step, nullptr);
}

//===----------------------------------------------------------------------===//
// The entry points: sae_gradient and sae_train_step
//===----------------------------------------------------------------------===//

/// The fake TopK model's total loss (recon + 0.25 * sparsity) in double
/// precision, for finite differences.
double referenceLoss(const std::vector<double> &p, const std::vector<float> &x,
                     int rows) {
  const double *wEnc = &p[0], *bEnc = &p[32], *wDec = &p[40], *bDec = &p[72];
  double recon = 0, sparsity = 0;
  for (int b = 0; b < rows; ++b) {
    double pre[kN];
    for (int j = 0; j < kN; ++j) {
      pre[j] = bEnc[j];
      for (int i = 0; i < kD; ++i)
        pre[j] += (x[b * kD + i] - bDec[i]) * wEnc[i * kN + j];
    }
    double codes[kN] = {};
    bool taken[kN] = {};
    for (int t = 0; t < kK; ++t) {
      int best = -1;
      for (int j = 0; j < kN; ++j)
        if (!taken[j] && (best < 0 || pre[j] > pre[best]))
          best = j;
      taken[best] = true;
      codes[best] = std::max(pre[best], 0.0);
    }
    for (int i = 0; i < kD; ++i) {
      double xhat = bDec[i];
      for (int j = 0; j < kN; ++j)
        xhat += codes[j] * wDec[j * kD + i];
      recon += (xhat - x[b * kD + i]) * (xhat - x[b * kD + i]);
    }
    for (int j = 0; j < kN; ++j)
      sparsity += std::fabs(codes[j]);
  }
  return (recon + 0.25 * sparsity) / rows;
}

class TrainStepTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK)
        << sae_rt_last_error();
    ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_init(g.model, 21, 0, nullptr, p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_trainable_alloc(g.model, &m.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_trainable_alloc(g.model, &v.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_trainable_alloc(g.model, &grads.params), SAE_RT_OK);
    x = sampleInputs(kRows, 17);
    inputs[0] = x.data();
  }

  /// The parameters flattened in "params" order (76 values).
  std::vector<double> flat() const {
    std::vector<double> out;
    for (size_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
        out.push_back(p.params[i][j]);
    return out;
  }

  static constexpr int kRows = 6;
  ModelGuard g;
  ParamsGuard p, m, v, grads;
  std::vector<float> x;
  const float *inputs[1] = {nullptr};
};

TEST_F(TrainStepTest, GradientMatchesFiniteDifferences) {
  float losses[3];
  ASSERT_EQ(sae_rt_model_gradient(g.model, kRows, inputs, p.params, 0,
                                  grads.params, losses),
            SAE_RT_OK)
      << sae_rt_last_error();
  std::vector<double> params = flat();
  EXPECT_NEAR(losses[0], referenceLoss(params, x, kRows), 1e-5);
  std::vector<double> gradient;
  for (size_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
      gradient.push_back(grads.params[i][j]);
  ASSERT_EQ(gradient.size(), 76u);
  int nonzero = 0;
  const double h = 1e-6;
  for (size_t k = 0; k < params.size(); ++k) {
    std::vector<double> up = params, down = params;
    up[k] += h;
    down[k] -= h;
    double numeric =
        (referenceLoss(up, x, kRows) - referenceLoss(down, x, kRows)) / (2 * h);
    EXPECT_NEAR(gradient[k], numeric, 1e-4 * std::max(1.0, std::fabs(numeric)))
        << "parameter element " << k;
    nonzero += gradient[k] != 0.0;
  }
  EXPECT_GT(nonzero, 30);
}

TEST_F(TrainStepTest, OneStepIsAdamWithTheUnitNormRule) {
  float gradLosses[3];
  ASSERT_EQ(sae_rt_model_gradient(g.model, kRows, inputs, p.params, 0,
                                  grads.params, gradLosses),
            SAE_RT_OK);
  std::vector<double> before = flat();
  const sae_rt_train_config *config = sae_rt_model_train_config(g.model);
  float hyper[SAE_HYPER_COUNT];
  ASSERT_EQ(sae_rt_train_hyper(config, 1, 10, hyper), SAE_RT_OK);
  float losses[3], metrics[SAE_METRIC_COUNT], fired[kN];
  ASSERT_EQ(sae_rt_model_train_step(g.model, kRows, inputs, p.params, m.params,
                                    v.params, hyper, 0, losses, metrics, fired),
            SAE_RT_OK)
      << sae_rt_last_error();
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(losses[i], gradLosses[i]);

  // The reference: project the W_dec row gradients, Adam from zero
  // moments, then renormalise the W_dec rows.
  std::vector<double> g0;
  for (size_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
      g0.push_back(grads.params[i][j]);
  for (int j = 0; j < kN; ++j) {
    double dot = 0, norm2 = 0;
    for (int i = 0; i < kD; ++i) {
      dot += g0[40 + j * kD + i] * before[40 + j * kD + i];
      norm2 += before[40 + j * kD + i] * before[40 + j * kD + i];
    }
    for (int i = 0; i < kD; ++i)
      g0[40 + j * kD + i] -= dot / norm2 * before[40 + j * kD + i];
  }
  std::vector<double> want(76);
  for (size_t k = 0; k < 76; ++k) {
    double mk = (1 - 0.9) * g0[k], vk = (1 - 0.999) * g0[k] * g0[k];
    double bc1 = 1 - 0.9, bc2 = 1 - 0.999;
    want[k] = before[k] - 0.01 / bc1 * mk / (std::sqrt(vk / bc2) + 1e-8);
  }
  for (int j = 0; j < kN; ++j) {
    double norm2 = 0;
    for (int i = 0; i < kD; ++i)
      norm2 += want[40 + j * kD + i] * want[40 + j * kD + i];
    for (int i = 0; i < kD; ++i)
      want[40 + j * kD + i] /= std::sqrt(norm2);
  }
  std::vector<double> after = flat();
  for (size_t k = 0; k < 76; ++k)
    EXPECT_NEAR(after[k], want[k], 2e-5) << "element " << k;
  for (int j = 0; j < kN; ++j) {
    double norm2 = 0;
    for (int i = 0; i < kD; ++i)
      norm2 += after[40 + j * kD + i] * after[40 + j * kD + i];
    EXPECT_NEAR(norm2, 1.0, 1e-6) << "W_dec row " << j;
  }
  // The first moment holds (1 - beta1) * the projected gradient.
  EXPECT_NEAR(m.params[2][3], 0.1 * g0[40 + 3], 1e-6);

  // Metrics and firing counts of the batch.
  EXPECT_NEAR(metrics[SAE_METRIC_SSE], losses[1] * kRows, 1e-4);
  double mean[kD] = {}, sst = 0;
  for (int b = 0; b < kRows; ++b)
    for (int i = 0; i < kD; ++i)
      mean[i] += x[b * kD + i] / kRows;
  for (int b = 0; b < kRows; ++b)
    for (int i = 0; i < kD; ++i)
      sst += (x[b * kD + i] - mean[i]) * (x[b * kD + i] - mean[i]);
  EXPECT_NEAR(metrics[SAE_METRIC_SST], sst, 1e-4);
  double firedSum = 0;
  for (float f : fired)
    firedSum += f;
  EXPECT_EQ(firedSum, metrics[SAE_METRIC_ACTIVE]);
  EXPECT_GT(firedSum, 0);
  EXPECT_LE(firedSum, kRows * kK);
}

TEST_F(TrainStepTest, ClippingScalesTheGradient) {
  float hyper[SAE_HYPER_COUNT];
  sae_rt_train_config config = *sae_rt_model_train_config(g.model);
  config.clip = 1e-3;
  ASSERT_EQ(sae_rt_train_hyper(&config, 1, 1, hyper), SAE_RT_OK);
  EXPECT_FLOAT_EQ(hyper[SAE_HYPER_CLIP], 1e-3f);
  float losses[3], metrics[3], fired[kN];
  ASSERT_EQ(sae_rt_model_train_step(g.model, kRows, inputs, p.params, m.params,
                                    v.params, hyper, 0, losses, metrics, fired),
            SAE_RT_OK);
  double norm2 = 0;
  for (size_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < sae_rt_model_param_numel(g.model, i); ++j)
      norm2 += double(m.params[i][j]) * m.params[i][j];
  EXPECT_NEAR(std::sqrt(norm2) / 0.1, 1e-3, 1e-6);
}

TEST_F(TrainStepTest, WrappersValidateArguments) {
  float hyper[SAE_HYPER_COUNT], losses[3], metrics[3], fired[kN];
  ASSERT_EQ(sae_rt_train_hyper(sae_rt_model_train_config(g.model), 1, 5, hyper),
            SAE_RT_OK);
  auto step = [&](float *const *mm, float *const *vv, const float *h) {
    return sae_rt_model_train_step(g.model, kRows, inputs, p.params, mm, vv, h,
                                   0, losses, metrics, fired);
  };
  expectError(step(nullptr, v.params, hyper), SAE_RT_ERR_ARG,
              {"model 'fake_topk': sae_train_step: adam_m is NULL"});
  float *holes[4] = {v.params[0], v.params[1], nullptr, v.params[3]};
  expectError(step(m.params, holes, hyper), SAE_RT_ERR_ARG,
              {"sae_train_step: adam_v[2] ('W_dec') is NULL"});
  expectError(step(m.params, v.params, nullptr), SAE_RT_ERR_ARG,
              {"sae_train_step: hyper is NULL"});
  const std::vector<std::pair<int, float>> bad = {
      {SAE_HYPER_LR, -1.0f},         {SAE_HYPER_LR, NAN},
      {SAE_HYPER_BETA1, 1.0f},       {SAE_HYPER_BETA2, -0.1f},
      {SAE_HYPER_EPS, -1.0f},        {SAE_HYPER_BC1, 0.0f},
      {SAE_HYPER_BC2, 1.5f},         {SAE_HYPER_CLIP, -1.0f},
      {SAE_HYPER_SPARSITY, INFINITY}};
  const char *names[] = {"lr",  "beta1", "beta2", "eps",
                         "bc1", "bc2",   "clip",  "sparsity"};
  for (const auto &c : bad) {
    float copy[SAE_HYPER_COUNT];
    std::memcpy(copy, hyper, sizeof(copy));
    copy[c.first] = c.second;
    expectError(step(m.params, v.params, copy), SAE_RT_ERR_ARG,
                {"sae_train_step: hyper[" + std::to_string(c.first) + "] (" +
                 names[c.first] + ") is "});
  }
  expectError(sae_rt_model_train_step(g.model, kRows, inputs, p.params,
                                      m.params, v.params, hyper, 0, losses,
                                      nullptr, fired),
              SAE_RT_ERR_ARG, {"sae_train_step: metrics is NULL"});
  expectError(sae_rt_model_train_step(g.model, kRows, inputs, p.params,
                                      m.params, v.params, hyper, 0, losses,
                                      metrics, nullptr),
              SAE_RT_ERR_ARG, {"sae_train_step: fired is NULL"});
  expectError(sae_rt_model_train_step(g.model, 0, inputs, p.params, m.params,
                                      v.params, hyper, 0, losses, metrics,
                                      fired),
              SAE_RT_ERR_ARG, {"batch is 0"});
  expectError(sae_rt_model_gradient(g.model, kRows, inputs, p.params, 0,
                                    nullptr, losses),
              SAE_RT_ERR_ARG, {"sae_gradient: grads is NULL"});
  // A failing call is SAE_RT_ERR_EXEC with the code.
  ScopedEnv fail("SAE_FAKE_FAIL_ALL", "1");
  expectError(step(m.params, v.params, hyper), SAE_RT_ERR_EXEC,
              {"model 'fake_topk': sae_train_step returned 5"});

  // A model without training code.
  ModelGuard relu;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_RELU, &relu.model), SAE_RT_OK);
  expectError(
      sae_rt_model_train_step(relu.model, kRows, inputs, p.params, m.params,
                              v.params, hyper, 0, losses, metrics, fired),
      SAE_RT_ERR_ABI, {"model 'fake_relu' has no entry point sae_train_step"});
  expectError(sae_rt_model_gradient(relu.model, kRows, inputs, p.params, 0,
                                    grads.params, losses),
              SAE_RT_ERR_ABI,
              {"model 'fake_relu' has no entry point sae_gradient"});
}

TEST(TrainStateTest, StateParameterFollowsItsRule) {
  ModelGuard g;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_STATE, &g.model), SAE_RT_OK);
  ParamsGuard p, m, v;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(g.model, 2, 0, nullptr, p.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_trainable_alloc(g.model, &m.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_trainable_alloc(g.model, &v.params), SAE_RT_OK);
  std::vector<float> x = sampleInputs(5, 4);
  const float *inputs[1] = {x.data()};
  float hyper[SAE_HYPER_COUNT], losses[3], metrics[3], fired[kN];
  std::vector<float> total(kN, 0.0f);
  for (int t = 1; t <= 3; ++t) {
    ASSERT_EQ(
        sae_rt_train_hyper(sae_rt_model_train_config(g.model), t, 3, hyper),
        SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_train_step(g.model, 5, inputs, p.params, m.params,
                                      v.params, hyper, 0, losses, metrics,
                                      fired),
              SAE_RT_OK)
        << sae_rt_last_error();
    for (int j = 0; j < kN; ++j)
      total[j] += fired[j];
  }
  for (int j = 0; j < kN; ++j)
    EXPECT_EQ(p.params[4][j], total[j]);
}

//===----------------------------------------------------------------------===//
// Schedule, seeds, permutations
//===----------------------------------------------------------------------===//

std::vector<float> hyperAt(const sae_rt_train_config &config, int64_t step,
                           int64_t total) {
  std::vector<float> hyper(SAE_HYPER_COUNT, -1.0f);
  EXPECT_EQ(sae_rt_train_hyper(&config, step, total, hyper.data()), SAE_RT_OK)
      << sae_rt_last_error();
  return hyper;
}

TEST(TrainScheduleTest, WarmupDecayAndBiasCorrections) {
  sae_rt_train_config config;
  sae_rt_train_config_default(&config);
  config.lr = 1e-3;
  // Constant.
  for (int64_t t : {1, 5, 10})
    EXPECT_EQ(hyperAt(config, t, 10)[SAE_HYPER_LR], 1e-3f);

  config.lr_warmup = 4;
  config.lr_decay = SAE_RT_LR_DECAY_LINEAR;
  EXPECT_EQ(hyperAt(config, 1, 12)[SAE_HYPER_LR], float(1e-3 * 0.25));
  EXPECT_EQ(hyperAt(config, 3, 12)[SAE_HYPER_LR], float(1e-3 * 0.75));
  EXPECT_EQ(hyperAt(config, 4, 12)[SAE_HYPER_LR], 1e-3f);
  EXPECT_EQ(hyperAt(config, 8, 12)[SAE_HYPER_LR], float(1e-3 * 0.5));
  EXPECT_EQ(hyperAt(config, 11, 12)[SAE_HYPER_LR], float(1e-3 * (1 - 7.0 / 8)));
  EXPECT_EQ(hyperAt(config, 12, 12)[SAE_HYPER_LR], 0.0f);

  config.lr_decay = SAE_RT_LR_DECAY_COSINE;
  EXPECT_EQ(hyperAt(config, 2, 12)[SAE_HYPER_LR], float(1e-3 * 0.5));
  EXPECT_EQ(hyperAt(config, 6, 12)[SAE_HYPER_LR],
            float(1e-3 * 0.5 * (1 + std::cos(M_PI * 0.25))));
  EXPECT_EQ(hyperAt(config, 8, 12)[SAE_HYPER_LR],
            float(1e-3 * 0.5 * (1 + std::cos(M_PI * 0.5))));
  EXPECT_EQ(hyperAt(config, 12, 12)[SAE_HYPER_LR], 0.0f);
  // A warm-up as long as the run leaves nothing to decay over.
  EXPECT_EQ(hyperAt(config, 4, 4)[SAE_HYPER_LR], 1e-3f);
  EXPECT_EQ(hyperAt(config, 2, 3)[SAE_HYPER_LR], float(1e-3 * 0.5));

  // Sparsity ramp; Adam's constants and bias corrections.
  config.sparsity_warmup = 5;
  config.clip = 2.5;
  std::vector<float> h = hyperAt(config, 2, 12);
  EXPECT_EQ(h[SAE_HYPER_SPARSITY], 0.4f);
  EXPECT_EQ(hyperAt(config, 5, 12)[SAE_HYPER_SPARSITY], 1.0f);
  EXPECT_EQ(hyperAt(config, 9, 12)[SAE_HYPER_SPARSITY], 1.0f);
  EXPECT_EQ(h[SAE_HYPER_BETA1], 0.9f);
  EXPECT_EQ(h[SAE_HYPER_BETA2], 0.999f);
  EXPECT_EQ(h[SAE_HYPER_EPS], 1e-8f);
  EXPECT_EQ(h[SAE_HYPER_CLIP], 2.5f);
  EXPECT_EQ(h[SAE_HYPER_BC1], float(1 - 0.9 * 0.9));
  EXPECT_EQ(h[SAE_HYPER_BC2], float(1 - 0.999 * 0.999));
  EXPECT_EQ(hyperAt(config, 3, 12)[SAE_HYPER_BC1], float(1 - std::pow(0.9, 3)));
  config.sparsity_warmup = 0;
  EXPECT_EQ(hyperAt(config, 1, 12)[SAE_HYPER_SPARSITY], 1.0f);
}

TEST(TrainScheduleTest, RejectsBadArguments) {
  sae_rt_train_config config;
  sae_rt_train_config_default(&config);
  float hyper[SAE_HYPER_COUNT];
  expectError(sae_rt_train_hyper(&config, 0, 10, hyper), SAE_RT_ERR_ARG,
              {"step 0 is outside [1, 10]"});
  expectError(sae_rt_train_hyper(&config, 11, 10, hyper), SAE_RT_ERR_ARG,
              {"step 11 is outside [1, 10]"});
  expectError(sae_rt_train_hyper(nullptr, 1, 10, hyper), SAE_RT_ERR_ARG,
              {"NULL argument"});
  config.beta2 = 1.0;
  expectError(sae_rt_train_hyper(&config, 1, 10, hyper), SAE_RT_ERR_ARG,
              {"beta2 is 1, expected a value in [0, 1)"});
  expectError(sae_rt_train_config_validate(&config), SAE_RT_ERR_ARG,
              {"training configuration: beta2 is 1"});
  sae_rt_train_config_default(&config);
  config.batch = 0;
  expectError(sae_rt_train_config_validate(&config), SAE_RT_ERR_ARG,
              {"batch is 0"});
  config.batch = 1;
  config.lr_decay = static_cast<sae_rt_lr_decay>(7);
  expectError(sae_rt_train_config_validate(&config), SAE_RT_ERR_ARG,
              {"lr_decay is 7"});
}

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

TEST(TrainScheduleTest, StepSeedsAreTheDocumentedHash) {
  std::set<uint64_t> seen;
  for (uint64_t t = 1; t <= 1000; ++t) {
    uint64_t seed = sae_rt_train_step_seed(42, t);
    EXPECT_EQ(seed, mix64(42 ^ mix64(t)));
    seen.insert(seed);
  }
  EXPECT_EQ(seen.size(), 1000u);
  EXPECT_NE(sae_rt_train_step_seed(1, 1), sae_rt_train_step_seed(2, 1));
}

/// The documented shuffle: Fisher-Yates from splitmix64 started at
/// mix64(seed ^ mix64(2^63 + epoch)), unbiased bounded draws by rejection.
std::vector<int64_t> referencePermutation(uint64_t seed, uint64_t epoch,
                                          int64_t count) {
  std::vector<int64_t> perm(static_cast<size_t>(count));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  uint64_t state = mix64(seed ^ mix64((uint64_t(1) << 63) + epoch));
  for (int64_t i = count - 1; i >= 1; --i) {
    uint64_t bound = static_cast<uint64_t>(i) + 1, value;
    do {
      state += 0x9e3779b97f4a7c15ull;
      value = mix64(state - 0x9e3779b97f4a7c15ull);
    } while (value < (0 - bound) % bound);
    std::swap(perm[static_cast<size_t>(i)], perm[value % bound]);
  }
  return perm;
}

TEST(TrainScheduleTest, PermutationsAreDeterministicShuffles) {
  const int64_t count = 1000;
  std::vector<int64_t> a(count), b(count), c(count), d(count);
  ASSERT_EQ(sae_rt_train_permutation(7, 0, count, a.data()), SAE_RT_OK);
  ASSERT_EQ(sae_rt_train_permutation(7, 0, count, b.data()), SAE_RT_OK);
  ASSERT_EQ(sae_rt_train_permutation(7, 1, count, c.data()), SAE_RT_OK);
  ASSERT_EQ(sae_rt_train_permutation(8, 0, count, d.data()), SAE_RT_OK);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  EXPECT_EQ(a, referencePermutation(7, 0, count));
  EXPECT_EQ(c, referencePermutation(7, 1, count));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < count; ++i)
    EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
  int64_t fixed = 0;
  for (int64_t i = 0; i < count; ++i)
    fixed += a[static_cast<size_t>(i)] == i;
  EXPECT_LT(fixed, 10); // a shuffle, not the identity

  int64_t one = -1;
  ASSERT_EQ(sae_rt_train_permutation(7, 0, 1, &one), SAE_RT_OK);
  EXPECT_EQ(one, 0);
  EXPECT_EQ(sae_rt_train_permutation(7, 0, 0, nullptr), SAE_RT_OK);
  expectError(sae_rt_train_permutation(7, 0, 3, nullptr), SAE_RT_ERR_ARG,
              {"count is 3 and perm is NULL"});
  expectError(sae_rt_train_permutation(7, 0, -1, a.data()), SAE_RT_ERR_ARG,
              {"count is -1"});
}

//===----------------------------------------------------------------------===//
// Checkpoints with extra files
//===----------------------------------------------------------------------===//

class CheckpointFilesTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK);
    ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_init(g.model, 3, 0, nullptr, p.params), SAE_RT_OK);
    ckpt = dir.file("ckpt");
  }
  void TearDown() override { sae_rt_testing_set_fault(nullptr); }

  /// Saves params with an optimizer file holding `moment` and a state
  /// text `state`.
  sae_rt_status save(std::vector<float> &moment, const std::string &state) {
    sae_rt_array array = borrow(SAE_RT_DTYPE_FLOAT32, {4, 8}, moment);
    const char *names[] = {"W_enc.exp_avg"};
    sae_rt_checkpoint_file files[2] = {};
    files[0].name = "optimizer.safetensors";
    files[0].tensor_count = 1;
    files[0].tensor_names = names;
    files[0].tensors = &array;
    files[1].name = "trainer_state.json";
    files[1].text = state.c_str();
    return sae_rt_checkpoint_save_files(g.model, ckpt.c_str(), p.params, 2,
                                        files);
  }

  /// The first value of W_enc.exp_avg in the checkpoint.
  float savedMoment() {
    sae_rt_safetensors *st = nullptr;
    EXPECT_EQ(
        sae_rt_safetensors_open((ckpt + "/optimizer.safetensors").c_str(), &st),
        SAE_RT_OK)
        << sae_rt_last_error();
    if (!st)
      return NAN;
    ArrayGuard array;
    EXPECT_EQ(sae_rt_safetensors_read(st, "W_enc.exp_avg", array.get()),
              SAE_RT_OK);
    sae_rt_safetensors_close(st);
    return array.as<float>()[0];
  }

  ModelGuard g;
  ParamsGuard p;
  TempDir dir;
  std::string ckpt;
};

TEST_F(CheckpointFilesTest, ExtraFilesAreWrittenWithTheWeights) {
  std::vector<float> moment(32, 0.5f);
  ASSERT_EQ(save(moment, "{\"step\": 1}\n"), SAE_RT_OK) << sae_rt_last_error();
  EXPECT_EQ(readFile(ckpt + "/trainer_state.json"), "{\"step\": 1}\n");
  EXPECT_EQ(savedMoment(), 0.5f);
  EXPECT_TRUE(exists(ckpt + "/cfg.json"));
  ParamsGuard loaded;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &loaded.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_checkpoint_load(g.model, ckpt.c_str(), loaded.params),
            SAE_RT_OK);
  EXPECT_EQ(std::memcmp(loaded.params[0], p.params[0], 32 * sizeof(float)), 0);
  // Replaced whole by the next save.
  moment.assign(32, 2.0f);
  ASSERT_EQ(save(moment, "{\"step\": 2}\n"), SAE_RT_OK);
  EXPECT_EQ(readFile(ckpt + "/trainer_state.json"), "{\"step\": 2}\n");
  EXPECT_EQ(savedMoment(), 2.0f);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
}

TEST_F(CheckpointFilesTest, BadNamesAreRefusedBeforeWriting) {
  for (const char *name :
       {"", "cfg.json", "sae_weights.safetensors", "a/b.json", "..", "."}) {
    sae_rt_checkpoint_file file = {};
    file.name = name;
    file.text = "x";
    expectError(
        sae_rt_checkpoint_save_files(g.model, ckpt.c_str(), p.params, 1, &file),
        SAE_RT_ERR_ARG, {"extra file 0"});
  }
  sae_rt_checkpoint_file twice[2] = {};
  twice[0].name = twice[1].name = "notes.txt";
  twice[0].text = twice[1].text = "x";
  expectError(
      sae_rt_checkpoint_save_files(g.model, ckpt.c_str(), p.params, 2, twice),
      SAE_RT_ERR_ARG, {"extra file 1 ('notes.txt'): given twice"});
  expectError(
      sae_rt_checkpoint_save_files(g.model, ckpt.c_str(), p.params, 1, nullptr),
      SAE_RT_ERR_ARG, {"NULL or empty argument"});
  EXPECT_TRUE(dir.list().empty());
}

TEST_F(CheckpointFilesTest, FailureWhileWritingKeepsTheOldCheckpoint) {
  std::vector<float> moment(32, 1.0f);
  ASSERT_EQ(save(moment, "old"), SAE_RT_OK);
  moment.assign(32, 9.0f);
  sae_rt_testing_set_fault("checkpoint.files");
  expectError(save(moment, "new"), SAE_RT_ERR_IO,
              {"injected failure at checkpoint.files"});
  EXPECT_EQ(readFile(ckpt + "/trainer_state.json"), "old");
  EXPECT_EQ(savedMoment(), 1.0f);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
}

TEST_F(CheckpointFilesTest, KilledWhileWritingKeepsTheOldCheckpoint) {
  std::vector<float> moment(32, 1.0f);
  ASSERT_EQ(save(moment, "old"), SAE_RT_OK);
  std::vector<float> oldWeights(p.params[0], p.params[0] + 32);
  for (const char *point : {"kill:checkpoint.weights", "kill:checkpoint.files",
                            "kill:checkpoint.swap"}) {
    SCOPED_TRACE(point);
    std::fflush(nullptr);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // New parameters and state, then killed at `point`.
      sae_rt_testing_set_fault(point);
      for (int i = 0; i < 32; ++i)
        p.params[0][i] = 100.0f + i;
      std::vector<float> fresh(32, 9.0f);
      save(fresh, "new");
      _exit(0); // not reached
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
    EXPECT_EQ(WTERMSIG(status), SIGKILL);
    EXPECT_EQ(readFile(ckpt + "/trainer_state.json"), "old");
    EXPECT_EQ(savedMoment(), 1.0f);
    ParamsGuard loaded;
    ASSERT_EQ(sae_rt_params_alloc(g.model, &loaded.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_checkpoint_load(g.model, ckpt.c_str(), loaded.params),
              SAE_RT_OK);
    EXPECT_EQ(std::memcmp(loaded.params[0], oldWeights.data(), 32 * 4), 0);
  }
  // The killed writers leave their temporary directories behind, never a
  // partial "ckpt".
  for (const std::string &name : dir.list())
    EXPECT_TRUE(name == "ckpt" || name.rfind("ckpt.tmp-", 0) == 0) << name;
}

} // namespace
