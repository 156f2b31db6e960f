//===- CheckpointTest.cpp - Tests of checkpoint save/load and atomicity ---===//

#include "TestUtil.h"

#include <sys/stat.h>

using namespace saetest;

namespace {

class CheckpointTest : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &g.model), SAE_RT_OK)
        << sae_rt_last_error();
    ASSERT_EQ(sae_rt_params_alloc(g.model, &p.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_model_init(g.model, 7, 0, nullptr, p.params), SAE_RT_OK);
  }
  void TearDown() override { sae_rt_testing_set_fault(nullptr); }

  /// Loads `ckpt` into fresh buffers and compares them with `p`.
  void expectLoadsSame(const std::string &ckpt) {
    ParamsGuard loaded;
    ASSERT_EQ(sae_rt_params_alloc(g.model, &loaded.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_checkpoint_load(g.model, ckpt.c_str(), loaded.params),
              SAE_RT_OK)
        << sae_rt_last_error();
    for (size_t i = 0; i < 4; ++i)
      EXPECT_EQ(
          std::memcmp(loaded.params[i], p.params[i],
                      sizeof(float) * sae_rt_model_param_numel(g.model, i)),
          0)
          << sae_rt_model_param_name(g.model, i);
  }

  /// Writes a safetensors file with the given tensors as `ckpt`'s weights.
  void writeWeights(const std::string &ckpt,
                    std::vector<std::pair<std::string, sae_rt_array>> tensors) {
    std::filesystem::create_directories(ckpt);
    std::vector<const char *> names;
    std::vector<sae_rt_array> arrays;
    for (auto &tensor : tensors) {
      names.push_back(tensor.first.c_str());
      arrays.push_back(tensor.second);
    }
    ASSERT_EQ(sae_rt_safetensors_write(
                  (ckpt + "/sae_weights.safetensors").c_str(), names.size(),
                  names.data(), arrays.data(), 0, nullptr, nullptr),
              SAE_RT_OK);
  }

  sae_rt_array param(size_t i) {
    sae_rt_array a{};
    a.dtype = SAE_RT_DTYPE_FLOAT32;
    a.ndim = sae_rt_model_param_ndim(g.model, i);
    for (int d = 0; d < a.ndim; ++d)
      a.shape[d] = sae_rt_model_param_shape(g.model, i)[d];
    a.data = p.params[i];
    return a;
  }

  ModelGuard g;
  ParamsGuard p;
  TempDir dir;
};

TEST_F(CheckpointTest, SaveLoadRoundTrip) {
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"}); // no temp dirs
  EXPECT_TRUE(exists(ckpt + "/sae_weights.safetensors"));
  std::string cfg = readFile(ckpt + "/cfg.json");
  EXPECT_TRUE(contains(cfg, "\"architecture\": \"topk\""));
  EXPECT_TRUE(contains(cfg, "\"d_sae\": 8"));
  EXPECT_TRUE(contains(cfg, "\"saec_abi_version\": 3"));
  EXPECT_TRUE(contains(cfg, "\"saec_model\": \"fake_topk\""));
  expectLoadsSame(ckpt);

  // The weights are plain F32 tensors named after the parameters.
  sae_rt_safetensors *st = nullptr;
  ASSERT_EQ(
      sae_rt_safetensors_open((ckpt + "/sae_weights.safetensors").c_str(), &st),
      SAE_RT_OK);
  EXPECT_EQ(sae_rt_safetensors_count(st), 4u);
  EXPECT_STREQ(sae_rt_safetensors_dtype_name(st, 0), "F32");
  EXPECT_STREQ(sae_rt_safetensors_name(st, 2), "W_dec");
  EXPECT_STREQ(sae_rt_safetensors_metadata(st, "format"), "pt");
  sae_rt_safetensors_close(st);

  // A trailing slash names the same directory.
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, (ckpt + "/").c_str(), p.params),
            SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
}

TEST_F(CheckpointTest, ExistingCheckpointIsReplacedWhole) {
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK);
  writeFile(ckpt + "/stale.txt", "from an older run");
  p.params[1][0] = 123.0f;
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_FALSE(exists(ckpt + "/stale.txt"));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
  expectLoadsSame(ckpt);
}

TEST_F(CheckpointTest, FallbackSwapReplacesToo) {
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK);
  writeFile(ckpt + "/stale.txt", "old");
  p.params[0][5] = -9.0f;
  // Pretend the filesystem lacks renameat2(RENAME_EXCHANGE).
  sae_rt_testing_set_fault("checkpoint.no_exchange");
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_FALSE(exists(ckpt + "/stale.txt"));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
  expectLoadsSame(ckpt);
}

/// A failure at `points` leaves the previous checkpoint byte for byte intact
/// and no temporary directories behind.
void expectOldCheckpointSurvives(const std::string &ckpt, float *const *params,
                                 sae_rt_model *model, const TempDir &dir,
                                 const char *points) {
  std::string weights = readFile(ckpt + "/sae_weights.safetensors");
  std::string cfg = readFile(ckpt + "/cfg.json");
  params[0][0] += 1.0f;
  sae_rt_testing_set_fault(points);
  expectError(sae_rt_checkpoint_save(model, ckpt.c_str(), params),
              SAE_RT_ERR_IO, {"checkpoint '" + ckpt + "'", "injected failure"});
  sae_rt_testing_set_fault(nullptr);
  params[0][0] -= 1.0f;
  EXPECT_EQ(readFile(ckpt + "/sae_weights.safetensors"), weights);
  EXPECT_EQ(readFile(ckpt + "/cfg.json"), cfg);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"ckpt"});
}

TEST_F(CheckpointTest, FailureMidwayKeepsTheOldCheckpoint) {
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK);
  // After the weights are written, before cfg.json.
  expectOldCheckpointSurvives(ckpt, p.params, g.model, dir,
                              "checkpoint.weights");
  // Everything written, just before the swap.
  expectOldCheckpointSurvives(ckpt, p.params, g.model, dir, "checkpoint.swap");
  // Fallback path: the old checkpoint already moved aside, then a failure;
  // it must be moved back.
  expectOldCheckpointSurvives(ckpt, p.params, g.model, dir,
                              "checkpoint.no_exchange,checkpoint.aside");
  expectLoadsSame(ckpt);
}

TEST_F(CheckpointTest, FailureOnFirstSaveLeavesNothing) {
  std::string ckpt = dir.file("fresh");
  sae_rt_testing_set_fault("checkpoint.weights");
  EXPECT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params),
            SAE_RT_ERR_IO);
  sae_rt_testing_set_fault(nullptr);
  EXPECT_TRUE(dir.list().empty());
}

TEST_F(CheckpointTest, UnwritableLocations) {
  // The parent is a regular file: nothing can be created there.
  writeFile(dir.file("file"), "x");
  expectError(
      sae_rt_checkpoint_save(g.model, dir.file("file/ckpt").c_str(), p.params),
      SAE_RT_ERR_IO, {"checkpoint '" + dir.file("file/ckpt") + "'"});
  // The target is a regular file.
  expectError(
      sae_rt_checkpoint_save(g.model, dir.file("file").c_str(), p.params),
      SAE_RT_ERR_IO, {"exists and is not a directory"});
  EXPECT_EQ(readFile(dir.file("file")), "x");
  // A directory that is not a checkpoint is never wiped.
  std::filesystem::create_directories(dir.file("home"));
  writeFile(dir.file("home/precious.txt"), "keep me");
  expectError(
      sae_rt_checkpoint_save(g.model, dir.file("home").c_str(), p.params),
      SAE_RT_ERR_ARG, {"refusing to replace"});
  EXPECT_EQ(readFile(dir.file("home/precious.txt")), "keep me");
  expectError(sae_rt_checkpoint_save(g.model, ".", p.params), SAE_RT_ERR_ARG,
              {"directory name"});
}

TEST_F(CheckpointTest, ReadOnlyParentKeepsOldCheckpoint) {
  if (geteuid() == 0)
    GTEST_SKIP() << "root ignores directory permissions";
  std::string parent = dir.file("ro");
  std::string ckpt = parent + "/ckpt";
  std::filesystem::create_directories(parent);
  ASSERT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params), SAE_RT_OK);
  std::string weights = readFile(ckpt + "/sae_weights.safetensors");
  chmod(parent.c_str(), 0555);
  p.params[0][0] += 1.0f;
  EXPECT_EQ(sae_rt_checkpoint_save(g.model, ckpt.c_str(), p.params),
            SAE_RT_ERR_IO);
  chmod(parent.c_str(), 0755);
  EXPECT_EQ(readFile(ckpt + "/sae_weights.safetensors"), weights);
}

TEST_F(CheckpointTest, LoadErrors) {
  ParamsGuard loaded;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &loaded.params), SAE_RT_OK);
  expectError(
      sae_rt_checkpoint_load(g.model, dir.file("none").c_str(), loaded.params),
      SAE_RT_ERR_IO, {"checkpoint '" + dir.file("none") + "'"});
  std::filesystem::create_directories(dir.file("empty"));
  expectError(
      sae_rt_checkpoint_load(g.model, dir.file("empty").c_str(), loaded.params),
      SAE_RT_ERR_IO, {"no sae_weights.safetensors"});

  std::string missing = dir.file("missing");
  writeWeights(missing,
               {{"W_enc", param(0)}, {"b_enc", param(1)}, {"b_dec", param(3)}});
  expectError(sae_rt_checkpoint_load(g.model, missing.c_str(), loaded.params),
              SAE_RT_ERR_SHAPE,
              {"checkpoint '" + missing + "': missing tensor 'W_dec'"});

  std::string shape = dir.file("shape");
  std::vector<float> wide(4 * 100);
  sae_rt_array wrong = borrow(SAE_RT_DTYPE_FLOAT32, {4, 100}, wide);
  writeWeights(shape, {{"W_enc", wrong},
                       {"b_enc", param(1)},
                       {"W_dec", param(2)},
                       {"b_dec", param(3)}});
  expectError(sae_rt_checkpoint_load(g.model, shape.c_str(), loaded.params),
              SAE_RT_ERR_SHAPE,
              {"checkpoint '" + shape +
               "': tensor 'W_enc' has shape [4, 100], expected [4, 8]"});

  std::string dtype = dir.file("dtype");
  std::vector<int32_t> ints(8);
  sae_rt_array i32 = borrow(SAE_RT_DTYPE_INT32, {8}, ints);
  writeWeights(dtype, {{"W_enc", param(0)},
                       {"b_enc", i32},
                       {"W_dec", param(2)},
                       {"b_dec", param(3)}});
  expectError(sae_rt_checkpoint_load(g.model, dtype.c_str(), loaded.params),
              SAE_RT_ERR_SHAPE, {"tensor 'b_enc' has dtype I32, expected F32"});

  // Nothing was written into the buffers by the failed loads.
  for (int i = 0; i < 32; ++i)
    EXPECT_EQ(loaded.params[0][i], 0.0f);

  std::string corrupt = dir.file("corrupt");
  std::filesystem::create_directories(corrupt);
  writeFile(corrupt + "/sae_weights.safetensors",
            std::string("\x10\0\0\0\0\0\0\0{oops", 13));
  expectError(sae_rt_checkpoint_load(g.model, corrupt.c_str(), loaded.params),
              SAE_RT_ERR_FORMAT, {corrupt + "/sae_weights.safetensors"});
}

TEST_F(CheckpointTest, LoadWidensHalfPrecisionAndIgnoresExtras) {
  std::string ckpt = dir.file("half");
  std::vector<uint16_t> half(8, 0x3c00);  // 1.0
  half[7] = 0xc000;                       // -2.0
  std::vector<uint16_t> brain(4, 0x4049); // 3.140625
  std::vector<float> extra = {42.0f};
  writeWeights(ckpt, {{"W_enc", param(0)},
                      {"b_enc", borrow(SAE_RT_DTYPE_FLOAT16, {8}, half)},
                      {"W_dec", param(2)},
                      {"b_dec", borrow(SAE_RT_DTYPE_BFLOAT16, {4}, brain)},
                      {"threshold", borrow(SAE_RT_DTYPE_FLOAT32, {1}, extra)}});
  ParamsGuard loaded;
  ASSERT_EQ(sae_rt_params_alloc(g.model, &loaded.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_checkpoint_load(g.model, ckpt.c_str(), loaded.params),
            SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_EQ(loaded.params[1][0], 1.0f);
  EXPECT_EQ(loaded.params[1][7], -2.0f);
  EXPECT_EQ(loaded.params[3][3], 3.140625f);
  EXPECT_EQ(std::memcmp(loaded.params[0], p.params[0], 32 * sizeof(float)), 0);
}

TEST_F(CheckpointTest, DefaultCfgWithoutCfgObject) {
  ModelGuard bare;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_NO_CFG, &bare.model), SAE_RT_OK)
      << sae_rt_last_error();
  ParamsGuard params;
  ASSERT_EQ(sae_rt_params_alloc(bare.model, &params.params), SAE_RT_OK);
  std::string ckpt = dir.file("bare");
  ASSERT_EQ(sae_rt_checkpoint_save(bare.model, ckpt.c_str(), params.params),
            SAE_RT_OK);
  EXPECT_EQ(readFile(ckpt + "/cfg.json"),
            "{\n  \"d_in\": 4,\n  \"d_sae\": 8,\n  \"dtype\": \"float32\",\n"
            "  \"saec_abi_version\": 3,\n  \"saec_model\": \"fake_topk\"\n}\n");
}

} // namespace
