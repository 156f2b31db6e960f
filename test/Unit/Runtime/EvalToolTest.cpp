//===- EvalToolTest.cpp - Tests of `sae eval`, `sae synth` and --tensor ---===//
//
// Runs the real binary against the fake models: every metric of `sae eval`
// against a C++ recomputation (TopK, BatchTopK and dense ReLU models,
// whole and chunked), feature recovery against brute force, float16 and
// safetensors inputs, the synthetic data of `sae synth`, and the errors.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <cmath>
#include <functional>
#include <map>

using namespace saetest;

namespace {

std::string q(const std::string &text) { return shellQuote(text); }

/// The number after "key": in the JSON text (first occurrence).
double number(const std::string &json, const std::string &key) {
  size_t at = json.find("\"" + key + "\": ");
  EXPECT_NE(at, std::string::npos) << key << " in " << json;
  if (at == std::string::npos)
    return NAN;
  std::string rest = json.substr(at + key.size() + 4);
  if (rest.compare(0, 4, "null") == 0)
    return NAN;
  return std::stod(rest);
}

void writeNpy(const std::string &path, std::vector<float> values,
              std::vector<int64_t> shape) {
  sae_rt_array array = borrow(SAE_RT_DTYPE_FLOAT32, shape, values);
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &array), SAE_RT_OK)
      << sae_rt_last_error();
}

uint16_t toHalf(float value) {
  _Float16 half = static_cast<_Float16>(value);
  uint16_t bits;
  std::memcpy(&bits, &half, 2);
  return bits;
}

uint16_t toBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float fromBfloat16(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

/// What `sae eval` should print, recomputed from codes and reconstructions
/// given per row.
struct Expected {
  double mse = 0, fvu = 0, l0 = 0, cosine = 0, normRatio = 0;
  int64_t dead = 0, dense = 0;
};

Expected expectedMetrics(const std::vector<float> &x,
                         const std::vector<float> &xhat,
                         const std::vector<float> &codes, int rows,
                         double threshold) {
  Expected e;
  double mean[kD] = {};
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < kD; ++i)
      mean[i] += x[r * kD + i] / double(rows);
  double sse = 0, variance = 0, nonzero = 0, ratioSum = 0;
  int ratioRows = 0;
  int fires[kN] = {};
  for (int r = 0; r < rows; ++r) {
    double xx = 0, hh = 0, xh = 0;
    for (int i = 0; i < kD; ++i) {
      double a = x[r * kD + i], b = xhat[r * kD + i];
      sse += (b - a) * (b - a);
      variance += (a - mean[i]) * (a - mean[i]);
      xx += a * a;
      hh += b * b;
      xh += a * b;
    }
    if (xx > 0 && hh > 0)
      e.cosine += xh / std::sqrt(xx * hh) / rows;
    if (xx > 0) {
      ratioSum += std::sqrt(hh / xx);
      ++ratioRows;
    }
    for (int j = 0; j < kN; ++j)
      if (codes[r * kN + j] != 0.0f) {
        ++nonzero;
        ++fires[j];
      }
  }
  e.mse = sse / rows;
  e.fvu = sse / variance;
  e.l0 = nonzero / rows;
  e.normRatio = ratioRows ? ratioSum / ratioRows : NAN;
  for (int j = 0; j < kN; ++j) {
    e.dead += fires[j] == 0;
    e.dense += double(fires[j]) / rows > threshold;
  }
  return e;
}

void expectMetrics(const std::string &json, const Expected &e, int rows) {
  EXPECT_EQ(number(json, "rows"), rows);
  EXPECT_EQ(number(json, "latents"), kN);
  EXPECT_NEAR(number(json, "mse"), e.mse, 1e-9 * (1 + e.mse)) << json;
  EXPECT_NEAR(number(json, "fvu"), e.fvu, 1e-9 * (1 + e.fvu)) << json;
  EXPECT_NEAR(number(json, "explained_variance"), 1 - e.fvu,
              1e-9 * (1 + e.fvu));
  EXPECT_DOUBLE_EQ(number(json, "l0"), e.l0) << json;
  EXPECT_EQ(number(json, "dead_latents"), e.dead) << json;
  EXPECT_DOUBLE_EQ(number(json, "dead_fraction"), double(e.dead) / kN);
  EXPECT_EQ(number(json, "dense_latents"), e.dense) << json;
  EXPECT_NEAR(number(json, "cosine"), e.cosine, 1e-9) << json;
  EXPECT_NEAR(number(json, "norm_ratio"), e.normRatio, 1e-9) << json;
}

/// A checkpoint of a fake model made by `sae init`, its parameters, and
/// inputs x (row 3 all zeros) in x.npy.
class EvalTest : public ::testing::Test {
protected:
  void init(const char *library, uint64_t seed = 5) {
    lib = library;
    ckpt = dir.file("ckpt");
    RunResult result = runSae(std::string("init ") + q(lib) + " --seed " +
                                  std::to_string(seed) + " --out " + q(ckpt),
                              dir);
    ASSERT_EQ(result.exitCode, 0) << result.err;
    ref = loadParams();
    x = sampleInputs(kRows, 99);
    for (int i = 0; i < kD; ++i)
      x[3 * kD + i] = 0.0f;
    writeNpy(dir.file("x.npy"), x, {kRows, kD});
  }

  FakeParams loadParams() {
    ModelGuard model;
    ParamsGuard params;
    EXPECT_EQ(sae_rt_model_open(lib, &model.model), SAE_RT_OK);
    EXPECT_EQ(sae_rt_params_alloc(model.model, &params.params), SAE_RT_OK);
    EXPECT_EQ(sae_rt_checkpoint_load(model.model, ckpt.c_str(), params.params),
              SAE_RT_OK)
        << sae_rt_last_error();
    return FakeParams::from(params.params);
  }

  RunResult eval(const std::string &options) {
    return runSae("eval " + q(lib) + " --checkpoint " + q(ckpt) + " " + options,
                  dir);
  }

  static constexpr int kRows = 11;
  TempDir dir;
  const char *lib = nullptr;
  std::string ckpt;
  FakeParams ref;
  std::vector<float> x;
};

TEST_F(EvalTest, TopkMetricsMatchTheReference) {
  init(SAE_FAKE_TOPK);
  std::vector<float> codes(kRows * kN), xhat(kRows * kD);
  for (int r = 0; r < kRows; ++r) {
    referenceEncodeDense(ref, &x[r * kD], &codes[r * kN], true);
    referenceDecode(ref, &codes[r * kN], &xhat[r * kD]);
  }
  Expected e = expectedMetrics(x, xhat, codes, kRows, 0.1);
  RunResult whole = eval("--data " + q(dir.file("x.npy")));
  ASSERT_EQ(whole.exitCode, 0) << whole.err;
  EXPECT_EQ(whole.err, ""); // one chunk: no progress
  expectMetrics(whole.out, e, kRows);
  EXPECT_TRUE(contains(whole.out, "\"dense_threshold\": 0.1, "));
  EXPECT_TRUE(contains(whole.out, "\"feature_recovery\": null}\n"));
  EXPECT_EQ(whole.out.front(), '{');

  // Chunks of 3 rows: the same numbers (accumulated exactly), progress on
  // stderr.
  RunResult chunked = eval("--batch-size 3 --data " + q(dir.file("x.npy")));
  ASSERT_EQ(chunked.exitCode, 0) << chunked.err;
  expectMetrics(chunked.out, e, kRows);
  EXPECT_TRUE(contains(chunked.err, "sae eval: 11/11 rows")) << chunked.err;

  // The dense threshold moves latents in and out of "dense".
  for (double threshold : {0.0, 0.25, 0.5, 1.0}) {
    std::ostringstream flag;
    flag << threshold;
    RunResult result = eval("--dense-threshold " + flag.str() + " --data " +
                            q(dir.file("x.npy")));
    ASSERT_EQ(result.exitCode, 0) << result.err;
    Expected t = expectedMetrics(x, xhat, codes, kRows, threshold);
    EXPECT_EQ(number(result.out, "dense_latents"), t.dense) << threshold;
    EXPECT_EQ(number(result.out, "dense_threshold"), threshold);
  }
}

TEST_F(EvalTest, MseAgreesWithForward) {
  init(SAE_FAKE_TOPK);
  RunResult forward = runSae("forward " + q(lib) + " --checkpoint " + q(ckpt) +
                                 " --batch-size 4 --input " +
                                 q(dir.file("x.npy")),
                             dir);
  RunResult evaluated =
      eval("--batch-size 4 --data " + q(dir.file("x.npy")));
  ASSERT_EQ(forward.exitCode, 0) << forward.err;
  ASSERT_EQ(evaluated.exitCode, 0) << evaluated.err;
  EXPECT_DOUBLE_EQ(number(forward.out, "mse"), number(evaluated.out, "mse"));
  EXPECT_DOUBLE_EQ(number(forward.out, "fvu"), number(evaluated.out, "fvu"));
  EXPECT_DOUBLE_EQ(number(forward.out, "l0"), number(evaluated.out, "l0"));
}

/// max over injections of the smaller side of sum |C| / pairs.
double bruteForceMcc(const std::vector<std::vector<double>> &c) {
  size_t rows = c.size(), cols = c[0].size();
  std::vector<bool> used(cols);
  double best = 0;
  std::function<void(size_t, double)> search = [&](size_t i, double sum) {
    if (i == rows) {
      best = std::max(best, sum);
      return;
    }
    for (size_t j = 0; j < cols; ++j)
      if (!used[j]) {
        used[j] = true;
        search(i + 1, sum + c[i][j]);
        used[j] = false;
      }
  };
  search(0, 0);
  return best / double(rows);
}

TEST_F(EvalTest, FeatureRecoveryMatchesBruteForce) {
  init(SAE_FAKE_TOPK);
  // 5 true features of d = 4 against the 8 decoder rows.
  std::vector<float> truth = sampleInputs(5, 1234);
  writeNpy(dir.file("true.npy"), truth, {5, kD});
  std::vector<std::vector<double>> c(5, std::vector<double>(kN));
  double maxSum = 0;
  for (int f = 0; f < 5; ++f) {
    double best = 0;
    for (int i = 0; i < kN; ++i) {
      double dot = 0, a = 0, b = 0;
      for (int k = 0; k < kD; ++k) {
        double t = truth[f * kD + k], w = ref.wDec[i * kD + k];
        dot += t * w;
        a += t * t;
        b += w * w;
      }
      c[f][i] = std::fabs(dot) / std::sqrt(a * b);
      best = std::max(best, c[f][i]);
    }
    maxSum += best;
  }
  RunResult result = eval("--batch-size 4 --data " + q(dir.file("x.npy")) +
                          " --true-dict " + q(dir.file("true.npy")));
  ASSERT_EQ(result.exitCode, 0) << result.err;
  EXPECT_TRUE(contains(result.out, "\"feature_recovery\": {\"mean_max_cos\": "))
      << result.out;
  EXPECT_NEAR(number(result.out, "mean_max_cos"), maxSum / 5, 1e-12);
  EXPECT_NEAR(number(result.out, "mcc"), bruteForceMcc(c), 1e-12);
  EXPECT_EQ(number(result.out, "features"), 5);
  EXPECT_LT(number(result.out, "mcc"), number(result.out, "mean_max_cos"));

  // A float16 dictionary is widened like any input.
  std::vector<uint16_t> half;
  for (float v : truth)
    half.push_back(toHalf(v));
  sae_rt_array h = borrow(SAE_RT_DTYPE_FLOAT16, {5, kD}, half);
  ASSERT_EQ(sae_rt_npy_write(dir.file("true16.npy").c_str(), &h), SAE_RT_OK);
  RunResult halfResult = eval("--data " + q(dir.file("x.npy")) +
                              " --true-dict " + q(dir.file("true16.npy")));
  ASSERT_EQ(halfResult.exitCode, 0) << halfResult.err;
  EXPECT_NEAR(number(halfResult.out, "mcc"), bruteForceMcc(c), 1e-3);
}

TEST_F(EvalTest, BatchLayoutCodesAreCountedPerChunk) {
  init(SAE_FAKE_BATCH);
  const int chunk = 4;
  std::vector<float> codes(kRows * kN), xhat(kRows * kD);
  for (int done = 0; done < kRows; done += chunk) {
    int count = std::min(chunk, kRows - done);
    BatchCodes batch = referenceBatchTopk(ref, &x[done * kD], count, done);
    std::vector<float> dense = densify(batch, count, done);
    std::copy(dense.begin(), dense.end(), codes.begin() + done * kN);
    for (int r = 0; r < count; ++r)
      referenceDecode(ref, &dense[r * kN], &xhat[(done + r) * kD]);
  }
  Expected e = expectedMetrics(x, xhat, codes, kRows, 0.1);
  RunResult result =
      eval("--batch-size " + std::to_string(chunk) + " --data " +
           q(dir.file("x.npy")));
  ASSERT_EQ(result.exitCode, 0) << result.err;
  expectMetrics(result.out, e, kRows);
}

TEST_F(EvalTest, DenseModelUsesTheDenseEncoder) {
  init(SAE_FAKE_RELU);
  std::vector<float> codes(kRows * kN), xhat(kRows * kD);
  for (int r = 0; r < kRows; ++r) {
    referenceEncodeDense(ref, &x[r * kD], &codes[r * kN], false);
    referenceDecode(ref, &codes[r * kN], &xhat[r * kD]);
  }
  Expected e = expectedMetrics(x, xhat, codes, kRows, 0.3);
  RunResult result = eval("--dense-threshold 0.3 --batch-size 5 --data " +
                          q(dir.file("x.npy")));
  ASSERT_EQ(result.exitCode, 0) << result.err;
  expectMetrics(result.out, e, kRows);
}

TEST_F(EvalTest, Float16AndSafetensorsInputsEqualTheirRoundedValues) {
  init(SAE_FAKE_TOPK);
  std::vector<uint16_t> half, brain;
  std::vector<float> halfValues, brainValues;
  for (float v : x) {
    half.push_back(toHalf(v));
    halfValues.push_back(sae_rt_float16_to_float32(half.back()));
    brain.push_back(toBfloat16(v));
    brainValues.push_back(fromBfloat16(brain.back()));
  }
  ASSERT_NE(halfValues, x); // the rounding is visible
  ASSERT_NE(brainValues, x);
  writeNpy(dir.file("x16-as-f32.npy"), halfValues, {kRows, kD});
  writeNpy(dir.file("bf16-as-f32.npy"), brainValues, {kRows, kD});
  sae_rt_array h = borrow(SAE_RT_DTYPE_FLOAT16, {kRows, kD}, half);
  ASSERT_EQ(sae_rt_npy_write(dir.file("x16.npy").c_str(), &h), SAE_RT_OK);
  std::vector<float> other = {1, 2};
  sae_rt_array arrays[3] = {borrow(SAE_RT_DTYPE_FLOAT32, {2}, other),
                            borrow(SAE_RT_DTYPE_BFLOAT16, {kRows, kD}, brain),
                            borrow(SAE_RT_DTYPE_FLOAT16, {kRows, kD}, half)};
  const char *names[3] = {"other", "acts_bf16", "acts_f16"};
  std::string st = dir.file("acts.safetensors");
  ASSERT_EQ(sae_rt_safetensors_write(st.c_str(), 3, names, arrays, 0, nullptr,
                                     nullptr),
            SAE_RT_OK);

  auto output = [&](const std::string &data) {
    RunResult result = eval("--batch-size 4 --data " + data);
    EXPECT_EQ(result.exitCode, 0) << data << ": " << result.err;
    return result.out;
  };
  std::string f16 = output(q(dir.file("x16-as-f32.npy")));
  EXPECT_EQ(output(q(dir.file("x16.npy"))), f16);
  EXPECT_EQ(output(q(st) + " --tensor acts_f16"), f16);
  EXPECT_EQ(output(q(st) + " --tensor acts_bf16"),
            output(q(dir.file("bf16-as-f32.npy"))));

  // The other commands read safetensors inputs too.
  RunResult encoded = runSae("encode " + q(lib) + " --checkpoint " + q(ckpt) +
                                 " --input " + q(st) +
                                 " --tensor acts_bf16 --output " +
                                 q(dir.file("z.npy")),
                             dir);
  ASSERT_EQ(encoded.exitCode, 0) << encoded.err;
  ArrayGuard z;
  ASSERT_EQ(sae_rt_npy_read(dir.file("z.npy").c_str(), z.get()), SAE_RT_OK);
  float codes[kN];
  referenceEncodeDense(ref, &brainValues[2 * kD], codes, true);
  for (int j = 0; j < kN; ++j)
    EXPECT_FLOAT_EQ(z.as<float>()[2 * kN + j], codes[j]);
  RunResult forward = runSae("forward " + q(lib) + " --checkpoint " + q(ckpt) +
                                 " --input " + q(dir.file("x16.npy")),
                             dir);
  ASSERT_EQ(forward.exitCode, 0) << forward.err;
  RunResult initData = runSae(std::string("init ") + q(SAE_FAKE_INIT_DATA) +
                                  " --out " + q(dir.file("ck2")) + " --data " +
                                  q(st) + " --tensor acts_f16",
                              dir);
  ASSERT_EQ(initData.exitCode, 0) << initData.err;
}

TEST_F(EvalTest, InputErrorsNameTheFileAndTensor) {
  init(SAE_FAKE_TOPK);
  std::vector<float> bad = x;
  bad[5 * kD + 2] = NAN;
  std::vector<float> other = {1};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {kRows, kD}, bad),
                            borrow(SAE_RT_DTYPE_FLOAT32, {1}, other)};
  const char *names[2] = {"acts", "one"};
  std::string st = dir.file("acts.safetensors");
  ASSERT_EQ(sae_rt_safetensors_write(st.c_str(), 2, names, arrays, 0, nullptr,
                                     nullptr),
            SAE_RT_OK);

  RunResult nan = eval("--data " + q(st) + " --tensor acts");
  EXPECT_EQ(nan.exitCode, 1);
  EXPECT_EQ(nan.err, "sae: error: " + st +
                         ": tensor 'acts': row 5, column 2 is NaN; inputs "
                         "must be finite\n");
  RunResult unnamed = eval("--data " + q(st));
  EXPECT_EQ(unnamed.exitCode, 1);
  EXPECT_TRUE(contains(unnamed.err, "is a safetensors file")) << unnamed.err;
  EXPECT_TRUE(contains(unnamed.err, "'acts' [11, 4] F32")) << unnamed.err;
  EXPECT_TRUE(contains(unnamed.err, "give it with --tensor NAME"))
      << unnamed.err;
  RunResult missing = eval("--data " + q(st) + " --tensor nope");
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_TRUE(contains(missing.err, "no tensor 'nope'; the file holds 'acts' "
                                    "[11, 4] F32, 'one' [1] F32"))
      << missing.err;
  RunResult oneDim = eval("--data " + q(st) + " --tensor one");
  EXPECT_EQ(oneDim.exitCode, 1);
  EXPECT_TRUE(contains(oneDim.err, "tensor 'one' has shape [1], expected a "
                                   "2-D [B, d] tensor"))
      << oneDim.err;
  RunResult npyTensor =
      eval("--data " + q(dir.file("x.npy")) + " --tensor acts");
  EXPECT_EQ(npyTensor.exitCode, 1);
  EXPECT_TRUE(contains(npyTensor.err, "is a .npy file")) << npyTensor.err;

  writeNpy(dir.file("empty.npy"), {}, {0, kD});
  RunResult empty = eval("--data " + q(dir.file("empty.npy")));
  EXPECT_EQ(empty.exitCode, 1);
  EXPECT_EQ(empty.err, "sae: error: " + dir.file("empty.npy") +
                           ": the input has no rows\n");

  writeNpy(dir.file("wide.npy"), std::vector<float>(10), {2, 5});
  RunResult wide = eval("--data " + q(dir.file("x.npy")) + " --true-dict " +
                        q(dir.file("wide.npy")));
  EXPECT_EQ(wide.exitCode, 1);
  EXPECT_EQ(wide.err, "sae: error: " + dir.file("wide.npy") +
                          ": shape [2, 5] does not match the model's input "
                          "dimension 4\n");
  RunResult stDict =
      eval("--data " + q(dir.file("x.npy")) + " --true-dict " + q(st));
  EXPECT_EQ(stDict.exitCode, 1);
  EXPECT_EQ(stDict.err, "sae: error: " + st +
                            ": is a safetensors file, but this option reads "
                            ".npy files only\n");
  RunResult absent = eval("--data " + q(dir.file("x.npy")) + " --true-dict " +
                          q(dir.file("absent.npy")));
  EXPECT_EQ(absent.exitCode, 1);
  EXPECT_TRUE(contains(absent.err, "absent.npy: cannot open")) << absent.err;
  EXPECT_EQ(absent.out, "");
}

TEST_F(EvalTest, IdxInputsAreReadWhole) {
  init(SAE_FAKE_TOPK);
  // An IDX file of 3 images of 2 x 2 unsigned-byte pixels: rows of kD = 4
  // values scaled to [0, 1].
  std::string idx("\x00\x00\x08\x03", 4);
  for (uint32_t dim : {3u, 2u, 2u})
    for (int shift = 24; shift >= 0; shift -= 8)
      idx.push_back(static_cast<char>((dim >> shift) & 0xff));
  std::vector<float> pixels;
  for (int i = 0; i < 12; ++i) {
    idx.push_back(static_cast<char>(i * 20));
    pixels.push_back(static_cast<float>(i * 20) / 255.0f);
  }
  writeFile(dir.file("x-idx3-ubyte"), idx);
  writeNpy(dir.file("pixels.npy"), pixels, {3, kD});
  RunResult fromIdx = eval("--data " + q(dir.file("x-idx3-ubyte")));
  ASSERT_EQ(fromIdx.exitCode, 0) << fromIdx.err;
  RunResult fromNpy = eval("--data " + q(dir.file("pixels.npy")));
  ASSERT_EQ(fromNpy.exitCode, 0) << fromNpy.err;
  EXPECT_EQ(fromIdx.out, fromNpy.out);
  RunResult named = eval("--data " + q(dir.file("x-idx3-ubyte")) +
                         " --tensor acts");
  EXPECT_EQ(named.exitCode, 1);
  EXPECT_EQ(named.err, "sae: error: " + dir.file("x-idx3-ubyte") +
                           ": is an IDX file; --tensor names a tensor of a "
                           "safetensors file\n");
}

TEST(EvalModelTest, TrueDictNeedsAParameterWDec) {
  TempDir dir;
  // The fake TopK model under another description: its decoder is named
  // 'decoder' (its forward still writes the total and two loss terms).
  ScopedEnv env("SAE_FAKE_DESCRIBE",
                "{\"abi_version\": 3, \"name\": \"nodec\", \"input\": "
                "{\"name\": \"x\", \"dim\": 4}, \"latents\": 8, \"codes\": "
                "{\"kind\": \"sparse\", \"k\": 2}, \"loss_terms\": "
                "[\"recon\", \"sparsity\"], \"params\": [{\"name\": "
                "\"W_enc\", \"shape\": [4, 8]}, {\"name\": \"b_enc\", "
                "\"shape\": [8]}, {\"name\": \"decoder\", \"shape\": [8, 4]}, "
                "{\"name\": \"b_dec\", \"shape\": [4]}]}");
  std::string lib = SAE_FAKE_CUSTOM;
  ASSERT_EQ(
      runSae("init " + q(lib) + " --out " + q(dir.file("ckpt")), dir).exitCode,
      0);
  writeNpy(dir.file("x.npy"), sampleInputs(3), {3, kD});
  RunResult plain = runSae("eval " + q(lib) + " --checkpoint " +
                               q(dir.file("ckpt")) + " --data " +
                               q(dir.file("x.npy")),
                           dir);
  EXPECT_EQ(plain.exitCode, 0) << plain.err;
  RunResult result = runSae("eval " + q(lib) + " --checkpoint " +
                                q(dir.file("ckpt")) + " --data " +
                                q(dir.file("x.npy")) + " --true-dict " +
                                q(dir.file("x.npy")),
                            dir);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_EQ(result.err,
            "sae: error: model 'nodec' has no parameter 'W_dec' (the "
            "decoder, [n, d] = [8, 4]); --true-dict compares the "
            "ground-truth features with its rows\n");
}

TEST(EvalAuxTest, GradFromASafetensorsTensor) {
  TempDir dir;
  std::string lib = SAE_FAKE_AUX;
  ASSERT_EQ(
      runSae("init " + q(lib) + " --out " + q(dir.file("ckpt")), dir).exitCode,
      0);
  std::vector<float> x = sampleInputs(6, 4);
  writeNpy(dir.file("x.npy"), x, {6, kD});
  std::vector<float> g(6 * kG, 0.5f);
  writeNpy(dir.file("g.npy"), g, {6, kG});
  sae_rt_array array = borrow(SAE_RT_DTYPE_FLOAT32, {6, kG}, g);
  const char *name = "grad";
  ASSERT_EQ(sae_rt_safetensors_write(dir.file("g.safetensors").c_str(), 1,
                                     &name, &array, 0, nullptr, nullptr),
            SAE_RT_OK);
  std::string base = "eval " + q(lib) + " --checkpoint " + q(dir.file("ckpt")) +
                     " --data " + q(dir.file("x.npy"));
  RunResult npy = runSae(base + " --grad " + q(dir.file("g.npy")), dir);
  ASSERT_EQ(npy.exitCode, 0) << npy.err;
  RunResult st = runSae(base + " --grad " + q(dir.file("g.safetensors")) +
                            " --grad-tensor grad",
                        dir);
  ASSERT_EQ(st.exitCode, 0) << st.err;
  EXPECT_EQ(st.out, npy.out);
  RunResult none = runSae(base, dir);
  EXPECT_EQ(none.exitCode, 1);
  EXPECT_TRUE(contains(none.err, "give it with --grad")) << none.err;
  RunResult unnamed = runSae(base + " --grad " + q(dir.file("g.safetensors")),
                             dir);
  EXPECT_EQ(unnamed.exitCode, 1);
  EXPECT_TRUE(contains(unnamed.err, "give it with --grad-tensor NAME"))
      << unnamed.err;
}

//===----------------------------------------------------------------------===//
// sae synth
//===----------------------------------------------------------------------===//

struct Synth {
  std::vector<float> x, dict;
  int64_t rows = 0, d = 0, features = 0;
};

Synth runSynth(const TempDir &dir, const std::string &options,
               const std::string &name = "s") {
  Synth out;
  std::string x = dir.file(name + "-x.npy"), dict = dir.file(name + "-d.npy");
  RunResult result =
      runSae("synth " + options + " --out " + q(x) + " --dict " + q(dict), dir);
  EXPECT_EQ(result.exitCode, 0) << result.err;
  ArrayGuard xa, da;
  if (sae_rt_npy_read(x.c_str(), xa.get()) != SAE_RT_OK ||
      sae_rt_npy_read(dict.c_str(), da.get()) != SAE_RT_OK) {
    ADD_FAILURE() << sae_rt_last_error();
    return out;
  }
  EXPECT_EQ(xa->dtype, SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(da->dtype, SAE_RT_DTYPE_FLOAT32);
  out.rows = xa->shape[0];
  out.d = xa->shape[1];
  out.features = da->shape[0];
  EXPECT_EQ(da->shape[1], out.d);
  out.x.assign(xa.as<float>(), xa.as<float>() + out.rows * out.d);
  out.dict.assign(da.as<float>(), da.as<float>() + out.features * out.d);
  return out;
}

TEST(SynthTest, DeterministicInTheSeed) {
  TempDir dir;
  const std::string options = "--d 8 --features 12 --active 3 --rows 50";
  Synth a = runSynth(dir, options + " --seed 7", "a");
  Synth b = runSynth(dir, options + " --seed 7", "b");
  Synth c = runSynth(dir, options + " --seed 8", "c");
  Synth dflt = runSynth(dir, options, "default");
  Synth zero = runSynth(dir, options + " --seed 0", "zero");
  EXPECT_EQ(a.rows, 50);
  EXPECT_EQ(a.d, 8);
  EXPECT_EQ(a.features, 12);
  EXPECT_EQ(readFile(dir.file("a-x.npy")), readFile(dir.file("b-x.npy")));
  EXPECT_EQ(readFile(dir.file("a-d.npy")), readFile(dir.file("b-d.npy")));
  EXPECT_NE(a.x, c.x);
  EXPECT_NE(a.dict, c.dict);
  EXPECT_EQ(dflt.x, zero.x);
  // Row r does not depend on --rows; the dictionary not on anything but
  // the seed, --d and --features.
  Synth shorter = runSynth(dir, "--d 8 --features 12 --active 3 --rows 20 "
                                "--seed 7",
                           "short");
  EXPECT_TRUE(std::equal(shorter.x.begin(), shorter.x.end(), a.x.begin()));
  EXPECT_EQ(shorter.dict, a.dict);
  Synth noisier = runSynth(dir, options + " --seed 7 --noise 0.5", "noisy");
  EXPECT_EQ(noisier.dict, a.dict);
  // Nothing but the two outputs is left behind.
  EXPECT_EQ(dir.list().size(), 14u);
}

TEST(SynthTest, RowsAreSparseCombinationsOfUnitRows) {
  TempDir dir;
  const int d = 6, features = 7, active = 2, rows = 300;
  Synth s = runSynth(dir, "--d 6 --features 7 --active 2 --rows 300 "
                          "--noise 0 --seed 3");
  ASSERT_EQ(s.rows, rows);
  for (int f = 0; f < features; ++f) {
    double norm = 0;
    for (int j = 0; j < d; ++j)
      norm += double(s.dict[f * d + j]) * s.dict[f * d + j];
    EXPECT_NEAR(norm, 1.0, 1e-6) << f;
  }
  // Without noise every row is c_a * D_a + c_b * D_b exactly (up to float
  // rounding) with a != b and c in [0.5, 1.5): find the pair by brute force
  // (least squares on each pair of dictionary rows).
  std::map<int, int> uses;
  for (int r = 0; r < rows; ++r) {
    const float *x = &s.x[r * d];
    double bestResidual = INFINITY, bestA = 0, bestB = 0;
    int bestI = -1, bestJ = -1;
    for (int i = 0; i < features; ++i)
      for (int j = i + 1; j < features; ++j) {
        const float *u = &s.dict[i * d], *v = &s.dict[j * d];
        double uu = 0, vv = 0, uv = 0, ux = 0, vx = 0;
        for (int k = 0; k < d; ++k) {
          uu += double(u[k]) * u[k];
          vv += double(v[k]) * v[k];
          uv += double(u[k]) * v[k];
          ux += double(u[k]) * x[k];
          vx += double(v[k]) * x[k];
        }
        double det = uu * vv - uv * uv;
        double a = (ux * vv - vx * uv) / det, b = (vx * uu - ux * uv) / det;
        double residual = 0;
        for (int k = 0; k < d; ++k) {
          double e = a * u[k] + b * v[k] - x[k];
          residual += e * e;
        }
        if (residual < bestResidual) {
          bestResidual = residual;
          bestA = a;
          bestB = b;
          bestI = i;
          bestJ = j;
        }
      }
    EXPECT_LT(bestResidual, 1e-10) << "row " << r;
    EXPECT_GE(bestA, 0.5 - 1e-5) << "row " << r;
    EXPECT_LT(bestA, 1.5 + 1e-5) << "row " << r;
    EXPECT_GE(bestB, 0.5 - 1e-5) << "row " << r;
    EXPECT_LT(bestB, 1.5 + 1e-5) << "row " << r;
    ++uses[bestI];
    ++uses[bestJ];
  }
  // Features are picked uniformly: each is in about 2/7 of the rows.
  ASSERT_EQ(uses.size(), size_t(features));
  for (const auto &use : uses)
    EXPECT_NEAR(use.second, rows * active / double(features), 35)
        << "feature " << use.first;
}

TEST(SynthTest, NoiseHasTheRequestedScale) {
  TempDir dir;
  Synth clean = runSynth(dir, "--d 64 --features 10 --active 4 --rows 100 "
                              "--noise 0 --seed 11",
                         "clean");
  Synth noisy = runSynth(dir, "--d 64 --features 10 --active 4 --rows 100 "
                              "--noise 0.2 --seed 11",
                         "noisy");
  // The same supports and coefficients: the difference is the noise.
  double sum = 0, squares = 0;
  for (size_t i = 0; i < clean.x.size(); ++i) {
    double e = double(noisy.x[i]) - clean.x[i];
    sum += e;
    squares += e * e;
  }
  double count = double(clean.x.size());
  EXPECT_NEAR(sum / count, 0.0, 0.02);
  EXPECT_NEAR(std::sqrt(squares / count), 0.2, 0.01);
}

TEST(SynthTest, LargeRowsAreStreamedInChunks) {
  TempDir dir;
  // d = 2^17: 8 rows per 1 MiB chunk, 20 rows in 3 chunks.
  RunResult result =
      runSae("synth --d 131072 --features 3 --active 1 --rows 20 --out " +
                 q(dir.file("x.npy")) + " --dict " + q(dir.file("d.npy")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  EXPECT_TRUE(contains(result.err, "sae synth: 20/20 rows")) << result.err;
  sae_rt_rows *rows = nullptr;
  ASSERT_EQ(sae_rt_rows_open(dir.file("x.npy").c_str(), nullptr, &rows),
            SAE_RT_OK);
  EXPECT_EQ(sae_rt_rows_count(rows), 20);
  EXPECT_EQ(sae_rt_rows_width(rows), 131072);
  sae_rt_rows_close(rows);
}

TEST(SynthTest, UsageAndRuntimeErrors) {
  TempDir dir;
  const std::string out =
      " --out " + q(dir.file("x.npy")) + " --dict " + q(dir.file("d.npy"));
  const std::vector<std::pair<std::string, std::string>> usage = {
      {"--features 4 --active 2" + out, "missing required option --d"},
      {"--d 4 --active 2" + out, "missing required option --features"},
      {"--d 4 --features 4" + out, "missing required option --active"},
      {"--d 4 --features 4 --active 2 --dict " + q(dir.file("d.npy")),
       "missing required option --out"},
      {"--d 4 --features 4 --active 2 --out " + q(dir.file("x.npy")),
       "missing required option --dict"},
      {"--d 0 --features 4 --active 2" + out, "--d must be between 1"},
      {"--d 4 --features 0 --active 1" + out, "--features must be between 1"},
      {"--d 4 --features 4 --active 0" + out, "--active must be between 1"},
      {"--d 4 --features 4 --active 5" + out,
       "--active (5) must not exceed --features (4)"},
      {"--d 4 --features 4 --active 2 --rows 0" + out,
       "--rows must be between 1"},
      {"--d 4 --features 4 --active 2 --noise -0.1" + out,
       "--noise must be >= 0"},
      {"--d 4 --features 4 --active 2 --noise abc" + out,
       "--noise expects a number, got 'abc'"},
      {"--d 4 --features 4 --active 2 --noise inf" + out,
       "--noise expects a number"},
      {"--d -3 --features 4 --active 2" + out,
       "--d expects an unsigned integer"},
      {"--d 4 --features 4 --active 2 --seed x" + out,
       "--seed expects an unsigned integer"},
      {"--d 16777216 --features 16777216 --active 2" + out,
       "the dictionary --features x --d (16777216 x 16777216) exceeds 2^32 "
       "values"},
      {"--d 4 --features 4 --active 2 --out a.npy --dict a.npy",
       "--out and --dict must be different files"},
      {"lib.so --d 4 --features 4 --active 2" + out,
       "unexpected argument 'lib.so'"},
      {"--d 4 --features 4 --active 2 --checkpoint c" + out,
       "unknown option '--checkpoint'"}};
  for (const auto &c : usage) {
    RunResult result = runSae("synth " + c.first, dir);
    EXPECT_EQ(result.exitCode, 2) << c.first << "\n" << result.err;
    EXPECT_TRUE(contains(result.err, "sae synth: usage error: " + c.second))
        << c.first << ": " << result.err;
  }
  // Writing into a missing directory: exit 1, naming the file, and neither
  // file appears.
  RunResult missing =
      runSae("synth --d 4 --features 4 --active 2 --out " +
                 q(dir.file("nowhere/x.npy")) + " --dict " + q(dir.file("d.npy")),
             dir);
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_TRUE(contains(missing.err, "sae: error: " + dir.file("nowhere/x.npy")))
      << missing.err;
  EXPECT_FALSE(exists(dir.file("d.npy")));
  EXPECT_TRUE(dir.list().empty());
}

//===----------------------------------------------------------------------===//
// Help and usage of the new options
//===----------------------------------------------------------------------===//

TEST(EvalUsageTest, HelpDocumentsTheNewCommandsAndFlags) {
  TempDir dir;
  RunResult main = runSae("--help", dir);
  EXPECT_EQ(main.exitCode, 0);
  for (const char *fragment : {"eval", "synth", "safetensors", "float16"})
    EXPECT_TRUE(contains(main.out, fragment)) << fragment;
  const std::vector<std::pair<std::string, std::vector<std::string>>> flags = {
      {"eval",
       {"--checkpoint", "--data", "--tensor", "--grad", "--grad-tensor",
        "--batch-size", "--dense-threshold", "--true-dict", "\"mse\"",
        "\"fvu\"", "\"explained_variance\"", "\"l0\"", "\"dead_latents\"",
        "\"dead_fraction\"", "\"dense_latents\"", "\"cosine\"",
        "\"norm_ratio\"", "\"mean_max_cos\"", "\"mcc\"", "W_dec",
        "Hungarian", "sae forward --seed 0"}},
      {"synth",
       {"--d", "--features", "--active", "--out", "--dict", "--rows",
        "--noise", "--seed", "splitmix64", "[0.5, 1.5)", "65536", "0.01"}},
      {"encode", {"--tensor", "--grad-tensor", "float16", "BF16"}},
      {"forward", {"--tensor", "--grad-tensor"}},
      {"init", {"--tensor"}},
      {"decode", {"--tensor"}}};
  for (const auto &command : flags) {
    RunResult help = runSae(command.first + " --help", dir);
    EXPECT_EQ(help.exitCode, 0) << command.first;
    EXPECT_TRUE(contains(help.out, "usage: sae " + command.first));
    for (const std::string &flag : command.second)
      EXPECT_TRUE(contains(help.out, flag)) << command.first << " " << flag;
  }
}

TEST(EvalUsageTest, UsageErrorsExitWith2) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"eval", "missing the model library"},
      {"eval a.so --data x", "missing required option --checkpoint"},
      {"eval a.so --checkpoint c", "missing required option --data"},
      {"eval a.so --checkpoint c --data x --dense-threshold 1.5",
       "--dense-threshold must lie in [0, 1]"},
      {"eval a.so --checkpoint c --data x --dense-threshold -0.1",
       "--dense-threshold must lie in [0, 1]"},
      {"eval a.so --checkpoint c --data x --dense-threshold 0.1x",
       "--dense-threshold expects a number"},
      {"eval a.so --checkpoint c --data x --input y",
       "unknown option '--input'"},
      {"eval a.so --checkpoint c --data x --grad-tensor g",
       "--grad-tensor needs --grad"},
      {"eval a.so --checkpoint c --data x --true-dict", "needs a value"},
      {"encode a.so --checkpoint c --input x --output z --grad-tensor g",
       "--grad-tensor needs --grad"},
      {"init a.so --out x --tensor t", "--tensor needs --data"}};
  for (const auto &c : cases) {
    RunResult result = runSae(c.first, dir);
    EXPECT_EQ(result.exitCode, 2) << c.first << "\n" << result.err;
    EXPECT_TRUE(contains(result.err, c.second))
        << c.first << ": " << result.err;
  }
}

TEST(EvalUsageTest, DecodeRefusesATensorNameForSparseCodes) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(runSae(std::string("init ") + q(SAE_FAKE_TOPK) + " --out " +
                       q(ckpt),
                   dir)
                .exitCode,
            0);
  std::vector<float> values(2 * kK, 1.0f);
  std::vector<int32_t> indices(2 * kK, 1);
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, kK}, values),
                            borrow(SAE_RT_DTYPE_INT32, {2, kK}, indices)};
  const char *names[2] = {"values", "indices"};
  ASSERT_EQ(sae_rt_npz_write(dir.file("z.npz").c_str(), 2, names, arrays),
            SAE_RT_OK);
  RunResult result = runSae(std::string("decode ") + q(SAE_FAKE_TOPK) +
                                " --checkpoint " + q(ckpt) + " --input " +
                                q(dir.file("z.npz")) + " --tensor codes" +
                                " --output " + q(dir.file("xhat.npy")),
                            dir);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err, "is an .npz file of sparse codes"))
      << result.err;
}

} // namespace
