//===- train.cpp - Training configuration, schedule, seeds and shuffling --===//
//
// What a host needs around sae_train_step (abi.h) besides the model: the
// "train" configuration (defaults, names, range checks), the per-step
// hyperparameters (warm-up, decay, sparsity ramp, Adam bias corrections),
// the per-step seeds and the per-epoch row order. All deterministic, so a
// resumed run repeats an uninterrupted one bit for bit.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numeric>

namespace sae {
namespace rt {

bool parseLrDecay(const std::string &name, sae_rt_lr_decay &out) {
  if (name == "none")
    out = SAE_RT_LR_DECAY_NONE;
  else if (name == "linear")
    out = SAE_RT_LR_DECAY_LINEAR;
  else if (name == "cosine")
    out = SAE_RT_LR_DECAY_COSINE;
  else
    return false;
  return true;
}

bool parseNormalize(const std::string &name, sae_rt_normalize &out) {
  if (name == "none")
    out = SAE_RT_NORMALIZE_NONE;
  else if (name == "expected_norm")
    out = SAE_RT_NORMALIZE_EXPECTED_NORM;
  else
    return false;
  return true;
}

std::string formatFloat(double value) {
  if (std::isnan(value))
    return "NaN";
  if (std::isinf(value))
    return value > 0 ? "inf" : "-inf";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

bool checkTrainConfig(const sae_rt_train_config &config, std::string &field,
                      std::string &problem) {
  auto bad = [&](const char *name, const std::string &value,
                 const char *expected) {
    field = name;
    problem = "is " + value + ", expected " + expected;
    return false;
  };
  auto nonNegative = [](double value) {
    return std::isfinite(value) && value >= 0.0;
  };
  auto beta = [](double value) {
    return std::isfinite(value) && value >= 0.0 && value < 1.0;
  };
  if (!nonNegative(config.lr))
    return bad("lr", formatFloat(config.lr), "a finite value >= 0");
  if (!beta(config.beta1))
    return bad("beta1", formatFloat(config.beta1), "a value in [0, 1)");
  if (!beta(config.beta2))
    return bad("beta2", formatFloat(config.beta2), "a value in [0, 1)");
  if (!nonNegative(config.eps))
    return bad("eps", formatFloat(config.eps), "a finite value >= 0");
  if (!nonNegative(config.clip))
    return bad("clip", formatFloat(config.clip),
               "a finite value >= 0 (0: no clipping)");
  if (config.lr_warmup < 0)
    return bad("lr_warmup", std::to_string(config.lr_warmup),
               "a step count >= 0");
  if (config.lr_decay != SAE_RT_LR_DECAY_NONE &&
      config.lr_decay != SAE_RT_LR_DECAY_LINEAR &&
      config.lr_decay != SAE_RT_LR_DECAY_COSINE)
    return bad("lr_decay", std::to_string(static_cast<int>(config.lr_decay)),
               "none, linear or cosine");
  if (config.sparsity_warmup < 0)
    return bad("sparsity_warmup", std::to_string(config.sparsity_warmup),
               "a step count >= 0");
  if (config.batch < 1)
    return bad("batch", std::to_string(config.batch), "at least 1 row");
  if (config.normalize != SAE_RT_NORMALIZE_NONE &&
      config.normalize != SAE_RT_NORMALIZE_EXPECTED_NORM)
    return bad("normalize", std::to_string(static_cast<int>(config.normalize)),
               "none or expected_norm");
  return true;
}

namespace {

/// splitmix64's output function of z + the Weyl constant (as 'sae synth').
uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

} // namespace

} // namespace rt
} // namespace sae

using namespace sae::rt;

extern "C" {

void sae_rt_train_config_default(sae_rt_train_config *config) {
  if (!config)
    return;
  config->lr = 2e-4;
  config->beta1 = 0.9;
  config->beta2 = 0.999;
  config->eps = 1e-8;
  config->clip = 0.0;
  config->lr_warmup = 0;
  config->lr_decay = SAE_RT_LR_DECAY_NONE;
  config->sparsity_warmup = 0;
  config->batch = 4096;
  config->normalize = SAE_RT_NORMALIZE_NONE;
}

sae_rt_status sae_rt_train_config_validate(const sae_rt_train_config *config) {
  return guard([&] {
    if (!config)
      fail(SAE_RT_ERR_ARG, "sae_rt_train_config_validate: config is NULL");
    std::string field, problem;
    if (!checkTrainConfig(*config, field, problem))
      fail(SAE_RT_ERR_ARG, "training configuration: " + field + " " + problem);
  });
}

const char *sae_rt_lr_decay_name(sae_rt_lr_decay decay) {
  switch (decay) {
  case SAE_RT_LR_DECAY_NONE:
    return "none";
  case SAE_RT_LR_DECAY_LINEAR:
    return "linear";
  case SAE_RT_LR_DECAY_COSINE:
    return "cosine";
  default:
    return "invalid";
  }
}

const char *sae_rt_normalize_name(sae_rt_normalize normalize) {
  switch (normalize) {
  case SAE_RT_NORMALIZE_NONE:
    return "none";
  case SAE_RT_NORMALIZE_EXPECTED_NORM:
    return "expected_norm";
  default:
    return "invalid";
  }
}

sae_rt_status sae_rt_train_hyper(const sae_rt_train_config *config,
                                 int64_t step, int64_t total_steps,
                                 float *hyper) {
  return guard([&] {
    if (!config || !hyper)
      fail(SAE_RT_ERR_ARG, "sae_rt_train_hyper: NULL argument");
    std::string field, problem;
    if (!checkTrainConfig(*config, field, problem))
      fail(SAE_RT_ERR_ARG, "sae_rt_train_hyper: training configuration: " +
                               field + " " + problem);
    if (total_steps < 1 || step < 1 || step > total_steps)
      fail(SAE_RT_ERR_ARG, "sae_rt_train_hyper: step " + std::to_string(step) +
                               " is outside [1, " +
                               std::to_string(total_steps) + "]");
    double t = static_cast<double>(step);
    double lr = config->lr;
    if (config->lr_warmup > 0)
      lr *= std::min(1.0, t / static_cast<double>(config->lr_warmup));
    if (config->lr_decay != SAE_RT_LR_DECAY_NONE) {
      double p = 0.0;
      int64_t span = total_steps - config->lr_warmup;
      if (span > 0)
        p = std::clamp((t - static_cast<double>(config->lr_warmup)) /
                           static_cast<double>(span),
                       0.0, 1.0);
      if (config->lr_decay == SAE_RT_LR_DECAY_LINEAR)
        lr *= 1.0 - p;
      else
        lr *= 0.5 * (1.0 + std::cos(M_PI * p));
    }
    double sparsity = 1.0;
    if (config->sparsity_warmup > 0)
      sparsity =
          std::min(1.0, t / static_cast<double>(config->sparsity_warmup));
    hyper[SAE_HYPER_LR] = static_cast<float>(lr);
    hyper[SAE_HYPER_BETA1] = static_cast<float>(config->beta1);
    hyper[SAE_HYPER_BETA2] = static_cast<float>(config->beta2);
    hyper[SAE_HYPER_EPS] = static_cast<float>(config->eps);
    hyper[SAE_HYPER_BC1] = static_cast<float>(1.0 - std::pow(config->beta1, t));
    hyper[SAE_HYPER_BC2] = static_cast<float>(1.0 - std::pow(config->beta2, t));
    hyper[SAE_HYPER_CLIP] = static_cast<float>(config->clip);
    hyper[SAE_HYPER_SPARSITY] = static_cast<float>(sparsity);
  });
}

uint64_t sae_rt_train_step_seed(uint64_t seed, uint64_t step) {
  return mix64(seed ^ mix64(step));
}

sae_rt_status sae_rt_train_permutation(uint64_t seed, uint64_t epoch,
                                       int64_t count, int64_t *perm) {
  return guard([&] {
    if (count < 0 || (count > 0 && !perm))
      fail(SAE_RT_ERR_ARG, "sae_rt_train_permutation: count is " +
                               std::to_string(count) +
                               (perm ? "" : " and perm is NULL"));
    std::iota(perm, perm + count, int64_t(0));
    uint64_t state = mix64(seed ^ mix64((uint64_t(1) << 63) + epoch));
    auto next = [&state] {
      state += 0x9e3779b97f4a7c15ull;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      return z ^ (z >> 31);
    };
    for (int64_t i = count - 1; i >= 1; --i) {
      uint64_t bound = static_cast<uint64_t>(i) + 1;
      uint64_t threshold = (0 - bound) % bound;
      uint64_t value;
      do
        value = next();
      while (value < threshold);
      int64_t j = static_cast<int64_t>(value % bound);
      std::swap(perm[i], perm[j]);
    }
  });
}

} // extern "C"
