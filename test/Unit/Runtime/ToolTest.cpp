//===- ToolTest.cpp - Tests of the `sae` command-line tool ----------------===//
//
// Runs the real binary against the fake model library and checks its files
// and output against the C++ reference of that model.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <cmath>

using namespace saetest;

namespace {

std::string q(const std::string &text) { return shellQuote(text); }

/// The number after "key": in a flat JSON object.
double jsonNumber(const std::string &json, const std::string &key) {
  size_t at = json.find("\"" + key + "\": ");
  EXPECT_NE(at, std::string::npos) << key << " in " << json;
  if (at == std::string::npos)
    return NAN;
  return std::stod(json.substr(at + key.size() + 4));
}

void writeInputs(const std::string &path, const std::vector<float> &x,
                 std::vector<int64_t> shape) {
  std::vector<float> copy = x;
  sae_rt_array array = borrow(SAE_RT_DTYPE_FLOAT32, shape, copy);
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &array), SAE_RT_OK);
}

/// The parameters in checkpoint `ckpt` of the model library `lib`.
FakeParams loadParams(const char *lib, const std::string &ckpt) {
  ModelGuard model;
  ParamsGuard params;
  EXPECT_EQ(sae_rt_model_open(lib, &model.model), SAE_RT_OK)
      << sae_rt_last_error();
  if (!model.model)
    return FakeParams();
  EXPECT_EQ(sae_rt_params_alloc(model.model, &params.params), SAE_RT_OK);
  EXPECT_EQ(sae_rt_checkpoint_load(model.model, ckpt.c_str(), params.params),
            SAE_RT_OK)
      << sae_rt_last_error();
  return FakeParams::from(params.params);
}

/// Writes an .npz of sparse codes of layout "batch".
void writeBatchCodes(const std::string &path, std::vector<float> values,
                     std::vector<int32_t> indices, std::vector<int32_t> rows) {
  int64_t count = static_cast<int64_t>(values.size());
  sae_rt_array arrays[3] = {borrow(SAE_RT_DTYPE_FLOAT32, {count}, values),
                            borrow(SAE_RT_DTYPE_INT32, {count}, indices),
                            borrow(SAE_RT_DTYPE_INT32, {count}, rows)};
  const char *names[3] = {"values", "indices", "rows"};
  ASSERT_EQ(sae_rt_npz_write(path.c_str(), 3, names, arrays), SAE_RT_OK);
}

TEST(ToolUsageTest, HelpDocumentsEveryCommandAndFlag) {
  TempDir dir;
  RunResult main = runSae("--help", dir);
  EXPECT_EQ(main.exitCode, 0);
  for (const char *command : {"info", "init", "encode", "decode", "forward"})
    EXPECT_TRUE(contains(main.out, command)) << command;

  const std::vector<std::pair<std::string, std::vector<std::string>>> flags = {
      {"info", {"--json"}},
      {"init", {"--seed", "--out", "--data", "--data-rows"}},
      {"encode",
       {"--checkpoint", "--input", "--output", "--grad", "--sparse",
        "--batch-size", "layout 'batch'", "'rows' [B*k]",
        "each chunk of --batch-size rows is one batch"}},
      {"decode",
       {"--checkpoint", "--input", "--output", "--batch-size", "'rows' [N]"}},
      {"forward",
       {"--checkpoint", "--input", "--grad", "--output", "--seed",
        "--batch-size", "\"terms\""}}};
  for (const auto &command : flags) {
    RunResult help = runSae(command.first + " --help", dir);
    EXPECT_EQ(help.exitCode, 0) << command.first;
    EXPECT_TRUE(contains(help.out, "usage: sae " + command.first));
    for (const std::string &flag : command.second)
      EXPECT_TRUE(contains(help.out, flag)) << command.first << " " << flag;
  }
}

TEST(ToolUsageTest, UsageErrorsExitWith2) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "usage: sae"},
      {"frobnicate", "unknown command 'frobnicate'"},
      {"info", "missing the model library"},
      {"info a.so b.so", "unexpected argument 'b.so'"},
      {"info a.so --color", "unknown option '--color'"},
      {"init a.so", "missing required option --out"},
      {"init a.so --out x --seed abc", "--seed expects an unsigned integer"},
      {"init a.so --out x --seed -1", "--seed expects an unsigned integer"},
      {"init a.so --out x --data d.npy --data-rows 0",
       "--data-rows must be between 1"},
      {"init a.so --out x --data-rows 5", "--data-rows needs --data"},
      {"init a.so --out x --data", "option --data needs a value"},
      {"forward a.so --checkpoint c --input x --seed 1.5",
       "--seed expects an unsigned integer"},
      {"forward a.so --checkpoint c --input x --grad", "needs a value"},
      {"decode a.so --checkpoint c --input z --output x --grad g",
       "unknown option '--grad'"},
      {"init a.so --out", "option --out needs a value"},
      {"init a.so --out x --out y", "given twice"},
      {"encode a.so --checkpoint c --input x --output z --batch-size 0",
       "--batch-size must be between 1"},
      {"encode a.so --checkpoint c --input x --output z --sparse=yes",
       "takes no value"},
      {"encode a.so --checkpoint c --output z",
       "missing required option --input"},
      {"decode a.so --checkpoint c --input z",
       "missing required option --output"},
      {"forward a.so --input x", "missing required option --checkpoint"}};
  for (const auto &c : cases) {
    RunResult result = runSae(c.first, dir);
    EXPECT_EQ(result.exitCode, 2) << c.first << "\n" << result.err;
    EXPECT_TRUE(contains(result.err, c.second))
        << c.first << ": " << result.err;
  }
}

TEST(ToolUsageTest, RuntimeErrorsExitWith1) {
  TempDir dir;
  RunResult missing = runSae("info /nonexistent/lib.so", dir);
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_EQ(missing.err.rfind("sae: error: cannot load model library "
                              "'/nonexistent/lib.so'",
                              0),
            0u)
      << missing.err;
  writeFile(dir.file("text.so"), std::string(200, 'x'));
  RunResult text = runSae("info " + q(dir.file("text.so")), dir);
  EXPECT_EQ(text.exitCode, 1);
  EXPECT_TRUE(contains(text.err, "sae: error: ")) << text.err;
  RunResult noSymbols =
      runSae(std::string("info ") + q(SAE_FAKE_NO_SYMBOLS), dir);
  EXPECT_EQ(noSymbols.exitCode, 1);
  EXPECT_TRUE(contains(noSymbols.err, "is not a saec library"))
      << noSymbols.err;
}

TEST(ToolInfoTest, TableAndJson) {
  TempDir dir;
  RunResult info = runSae(std::string("info ") + q(SAE_FAKE_TOPK), dir);
  ASSERT_EQ(info.exitCode, 0) << info.err;
  for (const char *fragment :
       {"fake_topk", "ABI version   3", "input dim     4",
        "inputs        x [4]\n", "latents       8",
        "sparse, k = 2, layout rows", "topk (k = 2)", "mse",
        "loss terms    recon, sparsity\n", "init data     not needed\n",
        "stochastic    no\n", "W_enc", "[4, 8]", "uniform(-1, 1)", "b_dec",
        "transpose(W_enc)", "generic", "sae_encode_sparse"})
    EXPECT_TRUE(contains(info.out, fragment)) << fragment << "\n" << info.out;

  RunResult json =
      runSae(std::string("info ") + q(SAE_FAKE_TOPK) + " --json", dir);
  ASSERT_EQ(json.exitCode, 0) << json.err;
  EXPECT_EQ(json.out.front(), '{');
  EXPECT_TRUE(contains(json.out, "\n  \"name\": \"fake_topk\",\n"));
  EXPECT_TRUE(contains(json.out, "\"required_features\""));

  RunResult dense = runSae(std::string("info ") + q(SAE_FAKE_RELU), dir);
  ASSERT_EQ(dense.exitCode, 0);
  EXPECT_TRUE(contains(dense.out, "dense"));
  EXPECT_TRUE(contains(dense.out, "relu"));
  EXPECT_TRUE(contains(dense.out, "loss terms    (none)\n"));

  RunResult batch = runSae(std::string("info ") + q(SAE_FAKE_BATCH), dir);
  ASSERT_EQ(batch.exitCode, 0) << batch.err;
  for (const char *fragment :
       {"sparse, k = 2, layout batch", "loss terms    recon, noise\n",
        "stochastic    yes", "sae_encode_batch", "sae_decode_batch"})
    EXPECT_TRUE(contains(batch.out, fragment)) << fragment << "\n" << batch.out;

  RunResult aux = runSae(std::string("info ") + q(SAE_FAKE_AUX), dir);
  ASSERT_EQ(aux.exitCode, 0) << aux.err;
  EXPECT_TRUE(
      contains(aux.out, "inputs        x [4], g [3] (auxiliary, --grad)"))
      << aux.out;

  RunResult data = runSae(std::string("info ") + q(SAE_FAKE_INIT_DATA), dir);
  ASSERT_EQ(data.exitCode, 0) << data.err;
  EXPECT_TRUE(contains(data.out, "init data     needed")) << data.out;
}

/// A checkpoint of the fake model made by `sae init`, and its parameters.
class ToolRunTest : public ::testing::Test {
protected:
  void SetUp() override {
    ckpt = dir.file("ckpt");
    RunResult init = runSae(std::string("init ") + q(SAE_FAKE_TOPK) +
                                " --seed 5 --out " + q(ckpt),
                            dir);
    ASSERT_EQ(init.exitCode, 0) << init.err;
    ASSERT_EQ(sae_rt_model_open(SAE_FAKE_TOPK, &model.model), SAE_RT_OK);
    ASSERT_EQ(sae_rt_params_alloc(model.model, &params.params), SAE_RT_OK);
    ASSERT_EQ(sae_rt_checkpoint_load(model.model, ckpt.c_str(), params.params),
              SAE_RT_OK)
        << sae_rt_last_error();
    ref = FakeParams::from(params.params);
    x = sampleInputs(kRows, 99);
    writeInputs(dir.file("x.npy"), x, {kRows, kD});
  }

  std::string base(const char *command) const {
    return std::string(command) + " " + q(SAE_FAKE_TOPK) + " --checkpoint " +
           q(ckpt) + " ";
  }

  static constexpr int kRows = 10;
  TempDir dir;
  std::string ckpt;
  ModelGuard model;
  ParamsGuard params;
  FakeParams ref;
  std::vector<float> x;
};

TEST_F(ToolRunTest, InitUsesTheSeed) {
  // Same seed, same checkpoint; the library's own sae_init agrees.
  ParamsGuard direct;
  ASSERT_EQ(sae_rt_params_alloc(model.model, &direct.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_init(model.model, 5, 0, nullptr, direct.params),
            SAE_RT_OK);
  EXPECT_EQ(std::memcmp(direct.params[0], params.params[0], 32 * 4), 0);
  EXPECT_TRUE(
      contains(readFile(ckpt + "/cfg.json"), "\"saec_model\": \"fake_topk\""));
  RunResult again = runSae(std::string("init ") + q(SAE_FAKE_TOPK) +
                               " --seed 6 --out " + q(ckpt),
                           dir);
  ASSERT_EQ(again.exitCode, 0) << again.err;
  ParamsGuard reloaded;
  ASSERT_EQ(sae_rt_params_alloc(model.model, &reloaded.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_checkpoint_load(model.model, ckpt.c_str(), reloaded.params),
            SAE_RT_OK);
  EXPECT_NE(std::memcmp(reloaded.params[0], params.params[0], 32 * 4), 0);
}

TEST_F(ToolRunTest, EncodeDenseMatchesReferenceInChunks) {
  for (const char *batch : {"", "--batch-size 3"}) {
    SCOPED_TRACE(batch);
    RunResult result =
        runSae(base("encode") + "--input " + q(dir.file("x.npy")) +
                   " --output " + q(dir.file("z.npy")) + " " + batch,
               dir);
    ASSERT_EQ(result.exitCode, 0) << result.err;
    if (*batch) // 4 chunks: progress, ending with the total
      EXPECT_TRUE(contains(result.err, "10/10 rows")) << result.err;
    else
      EXPECT_EQ(result.err, "");
    ArrayGuard z;
    ASSERT_EQ(sae_rt_npy_read(dir.file("z.npy").c_str(), z.get()), SAE_RT_OK);
    ASSERT_EQ(z->ndim, 2);
    EXPECT_EQ(z->shape[0], kRows);
    EXPECT_EQ(z->shape[1], kN);
    for (int r = 0; r < kRows; ++r) {
      float codes[kN];
      referenceEncodeDense(ref, &x[r * kD], codes, true);
      int nonzero = 0;
      for (int j = 0; j < kN; ++j) {
        EXPECT_FLOAT_EQ(z.as<float>()[r * kN + j], codes[j]);
        nonzero += z.as<float>()[r * kN + j] != 0.0f;
      }
      EXPECT_LE(nonzero, kK);
    }
  }
}

TEST_F(ToolRunTest, EncodeSparseWritesValuesAndIndices) {
  RunResult result =
      runSae(base("encode") + "--sparse --batch-size 4 --input " +
                 q(dir.file("x.npy")) + " --output " + q(dir.file("z.npz")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  sae_rt_npz *npz = nullptr;
  ASSERT_EQ(sae_rt_npz_open(dir.file("z.npz").c_str(), &npz), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_array *values = sae_rt_npz_find(npz, "values");
  const sae_rt_array *indices = sae_rt_npz_find(npz, "indices");
  ASSERT_TRUE(values && indices);
  EXPECT_EQ(values->dtype, SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(indices->dtype, SAE_RT_DTYPE_INT32);
  EXPECT_EQ(values->shape[0], kRows);
  EXPECT_EQ(values->shape[1], kK);
  for (int r = 0; r < kRows; ++r) {
    float v[kK];
    int32_t idx[kK];
    referenceTopk(ref, &x[r * kD], v, idx);
    for (int t = 0; t < kK; ++t) {
      EXPECT_FLOAT_EQ(static_cast<const float *>(values->data)[r * kK + t],
                      v[t]);
      EXPECT_EQ(static_cast<const int32_t *>(indices->data)[r * kK + t],
                idx[t]);
    }
  }
  sae_rt_npz_close(npz);

  // numpy can read it.
  std::string python = pythonWithNumpy();
  if (!python.empty()) {
    RunResult check =
        run(q(python) + " -c " +
                q("import numpy as np, sys; z = np.load(sys.argv[1]); "
                  "assert z['values'].shape == (10, 2) and "
                  "z['indices'].dtype == np.int32") +
                " " + q(dir.file("z.npz")),
            dir);
    EXPECT_EQ(check.exitCode, 0) << check.err;
  }
}

TEST_F(ToolRunTest, EncodeErrors) {
  // A dense model cannot produce sparse codes.
  std::string relu = dir.file("relu");
  ASSERT_EQ(
      runSae(std::string("init ") + q(SAE_FAKE_RELU) + " --out " + q(relu), dir)
          .exitCode,
      0);
  RunResult dense =
      runSae(std::string("encode ") + q(SAE_FAKE_RELU) + " --checkpoint " +
                 q(relu) + " --sparse --input " + q(dir.file("x.npy")) +
                 " --output " + q(dir.file("z.npz")),
             dir);
  EXPECT_EQ(dense.exitCode, 1);
  EXPECT_EQ(dense.err, "sae: error: model 'fake_relu' has dense codes; "
                       "--sparse needs a model with sparse codes\n");

  // Input width must be the model's input dimension.
  std::vector<float> wide(3 * 5, 1.0f);
  writeInputs(dir.file("wide.npy"), wide, {3, 5});
  RunResult mismatch =
      runSae(base("encode") + "--input " + q(dir.file("wide.npy")) +
                 " --output " + q(dir.file("out.npy")),
             dir);
  EXPECT_EQ(mismatch.exitCode, 1);
  EXPECT_EQ(mismatch.err, "sae: error: " + dir.file("wide.npy") +
                              ": shape [3, 5] does not match the model's "
                              "input dimension 4\n");
  EXPECT_FALSE(exists(dir.file("out.npy")));

  // int32 input is refused; a missing checkpoint leaves old output intact.
  std::vector<int32_t> ints(4);
  sae_rt_array i32 = borrow(SAE_RT_DTYPE_INT32, {1, 4}, ints);
  ASSERT_EQ(sae_rt_npy_write(dir.file("ints.npy").c_str(), &i32), SAE_RT_OK);
  RunResult dtype =
      runSae(base("encode") + "--input " + q(dir.file("ints.npy")) +
                 " --output " + q(dir.file("out.npy")),
             dir);
  EXPECT_EQ(dtype.exitCode, 1);
  EXPECT_TRUE(contains(dtype.err, "dtype int32, expected float32"))
      << dtype.err;

  writeFile(dir.file("old.npy"), "previous contents");
  RunResult noCkpt =
      runSae(std::string("encode ") + q(SAE_FAKE_TOPK) + " --checkpoint " +
                 q(dir.file("nope")) + " --input " + q(dir.file("x.npy")) +
                 " --output " + q(dir.file("old.npy")),
             dir);
  EXPECT_EQ(noCkpt.exitCode, 1);
  EXPECT_TRUE(contains(noCkpt.err, "checkpoint '" + dir.file("nope") + "'"));
  EXPECT_EQ(readFile(dir.file("old.npy")), "previous contents");
}

TEST_F(ToolRunTest, OneDimensionalInputIsOneRow) {
  std::vector<float> row(x.begin(), x.begin() + kD);
  writeInputs(dir.file("row.npy"), row, {kD});
  RunResult result =
      runSae(base("encode") + "--input " + q(dir.file("row.npy")) +
                 " --output " + q(dir.file("z.npy")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  ArrayGuard z;
  ASSERT_EQ(sae_rt_npy_read(dir.file("z.npy").c_str(), z.get()), SAE_RT_OK);
  ASSERT_EQ(z->ndim, 2);
  EXPECT_EQ(z->shape[0], 1);
  float codes[kN];
  referenceEncodeDense(ref, row.data(), codes, true);
  for (int j = 0; j < kN; ++j)
    EXPECT_FLOAT_EQ(z.as<float>()[j], codes[j]);
}

TEST_F(ToolRunTest, DecodeSparseAndDenseAgree) {
  ASSERT_EQ(runSae(base("encode") + "--sparse --input " + q(dir.file("x.npy")) +
                       " --output " + q(dir.file("z.npz")),
                   dir)
                .exitCode,
            0);
  ASSERT_EQ(runSae(base("encode") + "--input " + q(dir.file("x.npy")) +
                       " --output " + q(dir.file("z.npy")),
                   dir)
                .exitCode,
            0);
  RunResult sparse =
      runSae(base("decode") + "--batch-size 3 --input " + q(dir.file("z.npz")) +
                 " --output " + q(dir.file("xs.npy")),
             dir);
  ASSERT_EQ(sparse.exitCode, 0) << sparse.err;
  RunResult dense = runSae(base("decode") + "--input " + q(dir.file("z.npy")) +
                               " --output " + q(dir.file("xd.npy")),
                           dir);
  ASSERT_EQ(dense.exitCode, 0) << dense.err;
  ArrayGuard xs, xd;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xs.npy").c_str(), xs.get()), SAE_RT_OK);
  ASSERT_EQ(sae_rt_npy_read(dir.file("xd.npy").c_str(), xd.get()), SAE_RT_OK);
  EXPECT_EQ(xs->shape[0], kRows);
  EXPECT_EQ(xs->shape[1], kD);
  for (int r = 0; r < kRows; ++r) {
    float codes[kN], xhat[kD];
    referenceEncodeDense(ref, &x[r * kD], codes, true);
    referenceDecode(ref, codes, xhat);
    for (int i = 0; i < kD; ++i) {
      EXPECT_NEAR(xs.as<float>()[r * kD + i], xhat[i], 1e-5);
      EXPECT_NEAR(xd.as<float>()[r * kD + i], xhat[i], 1e-5);
    }
  }
}

TEST_F(ToolRunTest, DecodeValidatesInputs) {
  std::vector<float> values = {1, 2, 3, 4};
  std::vector<int32_t> indices = {0, 1, 2, 8};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, 2}, values),
                            borrow(SAE_RT_DTYPE_INT32, {2, 2}, indices)};
  const char *names[2] = {"values", "indices"};
  ASSERT_EQ(sae_rt_npz_write(dir.file("bad.npz").c_str(), 2, names, arrays),
            SAE_RT_OK);
  RunResult bad = runSae(base("decode") + "--input " + q(dir.file("bad.npz")) +
                             " --output " + q(dir.file("xhat.npy")),
                         dir);
  EXPECT_EQ(bad.exitCode, 1);
  EXPECT_TRUE(contains(bad.err, "bad.npz: 'indices' row 1 (column 1) holds 8, "
                                "outside [0, 8)"))
      << bad.err;
  EXPECT_FALSE(exists(dir.file("xhat.npy")));

  const char *wrongNames[2] = {"vals", "idx"};
  ASSERT_EQ(
      sae_rt_npz_write(dir.file("names.npz").c_str(), 2, wrongNames, arrays),
      SAE_RT_OK);
  RunResult missing =
      runSae(base("decode") + "--input " + q(dir.file("names.npz")) +
                 " --output " + q(dir.file("xhat.npy")),
             dir);
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_TRUE(contains(missing.err, "'values' and 'indices'")) << missing.err;

  // Dense codes must have the model's number of latents.
  std::vector<float> codes(2 * 7);
  writeInputs(dir.file("codes.npy"), codes, {2, 7});
  RunResult width =
      runSae(base("decode") + "--input " + q(dir.file("codes.npy")) +
                 " --output " + q(dir.file("xhat.npy")),
             dir);
  EXPECT_EQ(width.exitCode, 1);
  EXPECT_TRUE(contains(width.err, "shape [2, 7] does not match the model's 8 "
                                  "latents"))
      << width.err;
}

TEST_F(ToolRunTest, DecodeSparseCodesWithADenseModel) {
  // A dense model decodes an .npz by scattering into dense codes.
  std::string relu = dir.file("relu");
  ASSERT_EQ(runSae(std::string("init ") + q(SAE_FAKE_RELU) +
                       " --seed 5 --out " + q(relu),
                   dir)
                .exitCode,
            0);
  std::vector<float> values = {0.5f, 2.0f, 1.0f};
  std::vector<int32_t> indices = {6, 1, 6};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {1, 3}, values),
                            borrow(SAE_RT_DTYPE_INT32, {1, 3}, indices)};
  const char *names[2] = {"values", "indices"};
  ASSERT_EQ(sae_rt_npz_write(dir.file("s.npz").c_str(), 2, names, arrays),
            SAE_RT_OK);
  RunResult result =
      runSae(std::string("decode ") + q(SAE_FAKE_RELU) + " --checkpoint " +
                 q(relu) + " --input " + q(dir.file("s.npz")) + " --output " +
                 q(dir.file("xhat.npy")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  // Same initialiser as the topk model, so the same parameters (seed 5).
  float codes[kN] = {0, 2.0f, 0, 0, 0, 0, 1.5f, 0}, xhat[kD];
  referenceDecode(ref, codes, xhat);
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xhat.npy").c_str(), out.get()),
            SAE_RT_OK);
  for (int i = 0; i < kD; ++i)
    EXPECT_NEAR(out.as<float>()[i], xhat[i], 1e-5);
}

TEST_F(ToolRunTest, ForwardReportsStatistics) {
  RunResult whole = runSae(base("forward") + "--input " + q(dir.file("x.npy")) +
                               " --output " + q(dir.file("xhat.npy")),
                           dir);
  ASSERT_EQ(whole.exitCode, 0) << whole.err;
  RunResult chunked = runSae(
      base("forward") + "--batch-size 3 --input " + q(dir.file("x.npy")), dir);
  ASSERT_EQ(chunked.exitCode, 0) << chunked.err;
  EXPECT_EQ(whole.out.front(), '{');
  EXPECT_TRUE(contains(whole.out, "\"loss\": "));

  // Recompute everything in double from the reference.
  double sse = 0, nonzero = 0, mean[kD] = {}, variance = 0, l1 = 0;
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kD; ++i)
      mean[i] += x[r * kD + i] / double(kRows);
  for (int r = 0; r < kRows; ++r) {
    float codes[kN], xhat[kD];
    referenceEncodeDense(ref, &x[r * kD], codes, true);
    referenceDecode(ref, codes, xhat);
    for (int j = 0; j < kN; ++j) {
      nonzero += codes[j] != 0.0f;
      l1 += std::fabs(codes[j]);
    }
    for (int i = 0; i < kD; ++i) {
      double diff = double(xhat[i]) - x[r * kD + i];
      sse += diff * diff;
      double dev = x[r * kD + i] - mean[i];
      variance += dev * dev;
    }
  }
  for (const RunResult *result : {&whole, &chunked}) {
    EXPECT_NEAR(jsonNumber(result->out, "mse"), sse / kRows, 1e-5);
    EXPECT_NEAR(jsonNumber(result->out, "loss"), (sse + 0.25 * l1) / kRows,
                1e-4);
    EXPECT_TRUE(contains(result->out, ", \"terms\": {\"recon\": "))
        << result->out;
    EXPECT_NEAR(jsonNumber(result->out, "recon"), sse / kRows, 1e-4);
    EXPECT_NEAR(jsonNumber(result->out, "sparsity"), l1 / kRows, 1e-4);
    EXPECT_NEAR(jsonNumber(result->out, "fvu"), sse / variance, 1e-5);
    EXPECT_DOUBLE_EQ(jsonNumber(result->out, "l0"), nonzero / kRows);
  }
  EXPECT_TRUE(contains(chunked.err, "10/10 rows"));

  ArrayGuard xhat;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xhat.npy").c_str(), xhat.get()),
            SAE_RT_OK);
  EXPECT_EQ(xhat->shape[0], kRows);
  EXPECT_EQ(xhat->shape[1], kD);
}

//===----------------------------------------------------------------------===//
// sae init --data
//===----------------------------------------------------------------------===//

TEST(ToolInitTest, DataDependentInitialisersNeedASample) {
  TempDir dir;
  std::vector<float> x = sampleInputs(10, 21);
  writeInputs(dir.file("x.npy"), x, {10, kD});
  std::string lib = q(SAE_FAKE_INIT_DATA);

  RunResult none = runSae("init " + lib + " --out " + q(dir.file("c")), dir);
  EXPECT_EQ(none.exitCode, 1);
  EXPECT_EQ(none.err, "sae: error: model 'fake_topk_data' has data-dependent "
                      "initialisers; give a data sample with --data X.npy\n");
  EXPECT_FALSE(exists(dir.file("c")));

  // --data-rows 3: b_dec is the mean of the first 3 rows; the other
  // parameters come from the seed as usual.
  RunResult three =
      runSae("init " + lib + " --seed 2 --data " + q(dir.file("x.npy")) +
                 " --data-rows 3 --out " + q(dir.file("c3")),
             dir);
  ASSERT_EQ(three.exitCode, 0) << three.err;
  FakeParams p3 = loadParams(SAE_FAKE_INIT_DATA, dir.file("c3"));
  // The default (4096) is more than the file has: all 10 rows.
  RunResult all =
      runSae("init " + lib + " --seed 2 --data " + q(dir.file("x.npy")) +
                 " --out " + q(dir.file("c10")),
             dir);
  ASSERT_EQ(all.exitCode, 0) << all.err;
  FakeParams p10 = loadParams(SAE_FAKE_INIT_DATA, dir.file("c10"));
  for (int i = 0; i < kD; ++i) {
    double mean3 = 0, mean10 = 0;
    for (int r = 0; r < 10; ++r) {
      mean10 += x[r * kD + i] / 10.0;
      if (r < 3)
        mean3 += x[r * kD + i] / 3.0;
    }
    EXPECT_NEAR(p3.bDec[i], mean3, 1e-6);
    EXPECT_NEAR(p10.bDec[i], mean10, 1e-6);
  }
  EXPECT_EQ(p3.wEnc, p10.wEnc);

  // The sample is read like encode's input: width and finiteness checked.
  std::vector<float> wide(2 * 5, 0.5f);
  writeInputs(dir.file("wide.npy"), wide, {2, 5});
  RunResult width =
      runSae("init " + lib + " --data " + q(dir.file("wide.npy")) + " --out " +
                 q(dir.file("cw")),
             dir);
  EXPECT_EQ(width.exitCode, 1);
  EXPECT_EQ(width.err, "sae: error: " + dir.file("wide.npy") +
                           ": shape [2, 5] does not match the model's input "
                           "dimension 4\n");
  std::vector<float> bad = x;
  bad[1 * kD + 2] = INFINITY;
  writeInputs(dir.file("inf.npy"), bad, {10, kD});
  RunResult inf = runSae("init " + lib + " --data " + q(dir.file("inf.npy")) +
                             " --out " + q(dir.file("ci")),
                         dir);
  EXPECT_EQ(inf.exitCode, 1);
  EXPECT_TRUE(
      contains(inf.err, dir.file("inf.npy") + ": row 1, column 2 is infinite"))
      << inf.err;
  // Rows after --data-rows are not read.
  RunResult before =
      runSae("init " + lib + " --data " + q(dir.file("inf.npy")) +
                 " --data-rows 1 --out " + q(dir.file("ci")),
             dir);
  EXPECT_EQ(before.exitCode, 0) << before.err;
  std::vector<float> empty;
  writeInputs(dir.file("empty.npy"), empty, {0, kD});
  RunResult noRows =
      runSae("init " + lib + " --data " + q(dir.file("empty.npy")) + " --out " +
                 q(dir.file("ce")),
             dir);
  EXPECT_EQ(noRows.exitCode, 1);
  EXPECT_TRUE(contains(noRows.err, "empty.npy: the data sample has no rows"))
      << noRows.err;
}

TEST(ToolInitTest, DataIsIgnoredByOtherModels) {
  TempDir dir;
  std::string lib = q(SAE_FAKE_TOPK);
  ASSERT_EQ(runSae("init " + lib + " --seed 3 --out " + q(dir.file("a")), dir)
                .exitCode,
            0);
  // Not even opened.
  RunResult ignored = runSae("init " + lib +
                                 " --seed 3 --data /nonexistent/x.npy "
                                 "--data-rows 7 --out " +
                                 q(dir.file("b")),
                             dir);
  EXPECT_EQ(ignored.exitCode, 0) << ignored.err;
  EXPECT_EQ(ignored.err, "");
  FakeParams a = loadParams(SAE_FAKE_TOPK, dir.file("a"));
  FakeParams b = loadParams(SAE_FAKE_TOPK, dir.file("b"));
  EXPECT_EQ(a.wEnc, b.wEnc);
  EXPECT_EQ(a.bDec, b.bDec);
}

//===----------------------------------------------------------------------===//
// --grad: the auxiliary input
//===----------------------------------------------------------------------===//

class ToolAuxTest : public ::testing::Test {
protected:
  void SetUp() override {
    ckpt = dir.file("ckpt");
    RunResult init = runSae(std::string("init ") + q(SAE_FAKE_AUX) +
                                " --seed 4 --out " + q(ckpt),
                            dir);
    ASSERT_EQ(init.exitCode, 0) << init.err;
    ref = loadParams(SAE_FAKE_AUX, ckpt);
    x = sampleInputs(kRows, 31);
    grad.resize(kRows * kG);
    for (size_t i = 0; i < grad.size(); ++i)
      grad[i] = static_cast<float>(i % 5) * (i % 2 ? 0.75f : -0.5f);
    writeInputs(dir.file("x.npy"), x, {kRows, kD});
    writeInputs(dir.file("g.npy"), grad, {kRows, kG});
  }

  std::string base(const char *command, const char *lib = SAE_FAKE_AUX) const {
    return std::string(command) + " " + q(lib) + " --checkpoint " + q(ckpt) +
           " --input " + q(dir.file("x.npy")) + " ";
  }

  static constexpr int kRows = 10;
  TempDir dir;
  std::string ckpt;
  FakeParams ref;
  std::vector<float> x, grad;
};

TEST_F(ToolAuxTest, EncodeAndForwardReadTheGradient) {
  RunResult sparse =
      runSae(base("encode") + "--grad " + q(dir.file("g.npy")) +
                 " --sparse --batch-size 4 --output " + q(dir.file("z.npz")),
             dir);
  ASSERT_EQ(sparse.exitCode, 0) << sparse.err;
  sae_rt_npz *npz = nullptr;
  ASSERT_EQ(sae_rt_npz_open(dir.file("z.npz").c_str(), &npz), SAE_RT_OK);
  const sae_rt_array *values = sae_rt_npz_find(npz, "values");
  const sae_rt_array *indices = sae_rt_npz_find(npz, "indices");
  ASSERT_TRUE(values && indices);
  EXPECT_EQ(sae_rt_npz_find(npz, "rows"), nullptr);
  int differ = 0;
  for (int r = 0; r < kRows; ++r) {
    float v[kK], plain[kK];
    int32_t idx[kK], plainIdx[kK];
    referenceTopk(ref, &x[r * kD], v, idx, &grad[r * kG]);
    referenceTopk(ref, &x[r * kD], plain, plainIdx);
    for (int t = 0; t < kK; ++t) {
      EXPECT_FLOAT_EQ(static_cast<const float *>(values->data)[r * kK + t],
                      v[t]);
      EXPECT_EQ(static_cast<const int32_t *>(indices->data)[r * kK + t],
                idx[t]);
      differ += v[t] != plain[t];
    }
  }
  EXPECT_GT(differ, 0) << "the gradient should change the codes";
  sae_rt_npz_close(npz);

  RunResult forward = runSae(base("forward") + "--grad " +
                                 q(dir.file("g.npy")) + " --batch-size 3",
                             dir);
  ASSERT_EQ(forward.exitCode, 0) << forward.err;
  double sse = 0;
  for (int r = 0; r < kRows; ++r) {
    float codes[kN], xhat[kD];
    referenceEncodeDense(ref, &x[r * kD], codes, true, &grad[r * kG]);
    referenceDecode(ref, codes, xhat);
    for (int i = 0; i < kD; ++i)
      sse +=
          (double(xhat[i]) - x[r * kD + i]) * (double(xhat[i]) - x[r * kD + i]);
  }
  EXPECT_NEAR(jsonNumber(forward.out, "mse"), sse / kRows, 1e-5);
  EXPECT_NEAR(jsonNumber(forward.out, "recon"), sse / kRows, 1e-4);
}

TEST_F(ToolAuxTest, GradErrors) {
  RunResult missing =
      runSae(base("encode") + "--output " + q(dir.file("z.npy")), dir);
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_EQ(missing.err, "sae: error: model 'fake_grad_topk' has the "
                         "auxiliary input 'g' (dim 3); give it with --grad "
                         "G.npy\n");
  EXPECT_FALSE(exists(dir.file("z.npy")));

  std::vector<float> short9(grad.begin(), grad.begin() + 9 * kG);
  writeInputs(dir.file("g9.npy"), short9, {9, kG});
  RunResult rows =
      runSae(base("forward") + "--grad " + q(dir.file("g9.npy")), dir);
  EXPECT_EQ(rows.exitCode, 1);
  EXPECT_EQ(rows.err, "sae: error: " + dir.file("g9.npy") +
                          " has 9 rows, but " + dir.file("x.npy") +
                          " has 10; --grad needs one row per row of --input\n");

  RunResult width = runSae(base("encode") + "--grad " + q(dir.file("x.npy")) +
                               " --output " + q(dir.file("z.npy")),
                           dir);
  EXPECT_EQ(width.exitCode, 1);
  EXPECT_EQ(width.err, "sae: error: " + dir.file("x.npy") +
                           ": shape [10, 4] does not match the dimension 3 "
                           "of the model's input 'g'\n");

  std::vector<float> bad = grad;
  bad[2 * kG + 1] = NAN;
  writeInputs(dir.file("gnan.npy"), bad, {kRows, kG});
  RunResult nan = runSae(base("encode") + "--grad " + q(dir.file("gnan.npy")) +
                             " --output " + q(dir.file("z.npy")),
                         dir);
  EXPECT_EQ(nan.exitCode, 1);
  EXPECT_EQ(nan.err, "sae: error: " + dir.file("gnan.npy") +
                         ": row 2, column 1 is NaN; inputs must be finite\n");
  EXPECT_FALSE(exists(dir.file("z.npy")));

  // A model without an auxiliary input refuses --grad.
  RunResult extra = runSae(
      base("forward", SAE_FAKE_TOPK) + "--grad " + q(dir.file("g.npy")), dir);
  EXPECT_EQ(extra.exitCode, 1);
  EXPECT_EQ(extra.err, "sae: error: model 'fake_topk' has no auxiliary "
                       "input; --grad is only for models that take one "
                       "(such as grad_topk)\n");
}

//===----------------------------------------------------------------------===//
// Codes of layout "batch"
//===----------------------------------------------------------------------===//

class ToolBatchTest : public ::testing::Test {
protected:
  void SetUp() override {
    ckpt = dir.file("ckpt");
    RunResult init = runSae(std::string("init ") + q(SAE_FAKE_BATCH) +
                                " --seed 8 --out " + q(ckpt),
                            dir);
    ASSERT_EQ(init.exitCode, 0) << init.err;
    ref = loadParams(SAE_FAKE_BATCH, ckpt);
    x = sampleInputs(kRows, 41);
    writeInputs(dir.file("x.npy"), x, {kRows, kD});
  }

  std::string base(const char *command) const {
    return std::string(command) + " " + q(SAE_FAKE_BATCH) + " --checkpoint " +
           q(ckpt) + " ";
  }

  /// What `sae encode --sparse --batch-size 4` must produce: one batch
  /// selection per chunk of 4 rows, rows numbered globally.
  BatchCodes expectedCodes() const {
    BatchCodes all;
    for (int first = 0; first < kRows; first += 4) {
      int count = std::min(4, kRows - first);
      BatchCodes chunk = referenceBatchTopk(ref, &x[first * kD], count, first);
      all.values.insert(all.values.end(), chunk.values.begin(),
                        chunk.values.end());
      all.indices.insert(all.indices.end(), chunk.indices.begin(),
                         chunk.indices.end());
      all.rows.insert(all.rows.end(), chunk.rows.begin(), chunk.rows.end());
    }
    return all;
  }

  static constexpr int kRows = 10;
  TempDir dir;
  std::string ckpt;
  FakeParams ref;
  std::vector<float> x;
};

TEST_F(ToolBatchTest, EncodeSparseWritesEntriesWithGlobalRows) {
  RunResult result =
      runSae(base("encode") + "--sparse --batch-size 4 --input " +
                 q(dir.file("x.npy")) + " --output " + q(dir.file("z.npz")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  sae_rt_npz *npz = nullptr;
  ASSERT_EQ(sae_rt_npz_open(dir.file("z.npz").c_str(), &npz), SAE_RT_OK)
      << sae_rt_last_error();
  const sae_rt_array *values = sae_rt_npz_find(npz, "values");
  const sae_rt_array *indices = sae_rt_npz_find(npz, "indices");
  const sae_rt_array *rows = sae_rt_npz_find(npz, "rows");
  ASSERT_TRUE(values && indices && rows);
  EXPECT_EQ(sae_rt_npz_count(npz), 3u);
  for (const sae_rt_array *array : {values, indices, rows}) {
    EXPECT_EQ(array->ndim, 1);
    EXPECT_EQ(array->shape[0], kRows * kK);
  }
  EXPECT_EQ(values->dtype, SAE_RT_DTYPE_FLOAT32);
  EXPECT_EQ(indices->dtype, SAE_RT_DTYPE_INT32);
  EXPECT_EQ(rows->dtype, SAE_RT_DTYPE_INT32);
  BatchCodes want = expectedCodes();
  const int32_t *gotRows = static_cast<const int32_t *>(rows->data);
  const int32_t *gotIndices = static_cast<const int32_t *>(indices->data);
  const float *gotValues = static_cast<const float *>(values->data);
  for (int i = 0; i < kRows * kK; ++i) {
    EXPECT_EQ(gotRows[i], want.rows[i]) << i;
    EXPECT_EQ(gotIndices[i], want.indices[i]) << i;
    EXPECT_FLOAT_EQ(gotValues[i], want.values[i]) << i;
  }
  // Each chunk holds exactly its count*k entries.
  EXPECT_EQ(std::count_if(gotRows, gotRows + kRows * kK,
                          [](int32_t r) { return r < 4; }),
            4 * kK);
  sae_rt_npz_close(npz);

  std::string python = pythonWithNumpy();
  if (!python.empty()) {
    RunResult check =
        run(q(python) + " -c " +
                q("import numpy as np, sys; z = np.load(sys.argv[1]); "
                  "assert z['rows'].shape == (20,) and "
                  "z['rows'].dtype == np.int32 and "
                  "(np.diff(z['rows']) >= 0).all()") +
                " " + q(dir.file("z.npz")),
            dir);
    EXPECT_EQ(check.exitCode, 0) << check.err;
  }
}

TEST_F(ToolBatchTest, DecodeOfEncodedEntriesEqualsDenseDecode) {
  ASSERT_EQ(runSae(base("encode") + "--sparse --batch-size 4 --input " +
                       q(dir.file("x.npy")) + " --output " +
                       q(dir.file("z.npz")),
                   dir)
                .exitCode,
            0);
  RunResult dense =
      runSae(base("encode") + "--batch-size 4 --input " + q(dir.file("x.npy")) +
                 " --output " + q(dir.file("z.npy")),
             dir);
  ASSERT_EQ(dense.exitCode, 0) << dense.err;
  // The dense codes are the densified entries.
  BatchCodes want = expectedCodes();
  std::vector<float> wantDense = densify(want, kRows);
  ArrayGuard z;
  ASSERT_EQ(sae_rt_npy_read(dir.file("z.npy").c_str(), z.get()), SAE_RT_OK);
  for (int i = 0; i < kRows * kN; ++i)
    EXPECT_FLOAT_EQ(z.as<float>()[i], wantDense[i]) << i;

  // Decoding the entries in chunks that cut across the encoder's (3, 7,
  // all) equals decoding the dense codes.
  for (const char *batch : {"3", "7", "1024"}) {
    SCOPED_TRACE(batch);
    std::string out = dir.file(std::string("xs") + batch + ".npy");
    RunResult sparse =
        runSae(base("decode") + "--batch-size " + batch + " --input " +
                   q(dir.file("z.npz")) + " --output " + q(out),
               dir);
    ASSERT_EQ(sparse.exitCode, 0) << sparse.err;
    ArrayGuard xs;
    ASSERT_EQ(sae_rt_npy_read(out.c_str(), xs.get()), SAE_RT_OK);
    ASSERT_EQ(xs->ndim, 2);
    EXPECT_EQ(xs->shape[0], kRows);
    EXPECT_EQ(xs->shape[1], kD);
    for (int r = 0; r < kRows; ++r) {
      float xhat[kD];
      referenceDecode(ref, &wantDense[r * kN], xhat);
      for (int i = 0; i < kD; ++i)
        EXPECT_NEAR(xs.as<float>()[r * kD + i], xhat[i], 1e-5);
    }
  }
  RunResult fromDense =
      runSae(base("decode") + "--input " + q(dir.file("z.npy")) + " --output " +
                 q(dir.file("xd.npy")),
             dir);
  ASSERT_EQ(fromDense.exitCode, 0) << fromDense.err;
  ArrayGuard xd, xs;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xd.npy").c_str(), xd.get()), SAE_RT_OK);
  ASSERT_EQ(sae_rt_npy_read(dir.file("xs3.npy").c_str(), xs.get()), SAE_RT_OK);
  for (int i = 0; i < kRows * kD; ++i)
    EXPECT_NEAR(xs.as<float>()[i], xd.as<float>()[i], 1e-5);
}

TEST_F(ToolBatchTest, DecodeValidatesEntries) {
  std::string out = q(dir.file("xhat.npy"));
  auto decode = [&](const std::string &file) {
    return runSae(base("decode") + "--input " + q(dir.file(file)) +
                      " --output " + out,
                  dir);
  };
  struct Case {
    std::vector<float> values;
    std::vector<int32_t> indices, rows;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{1, 2, 3, 4},
       {0, 1, 2, 3},
       {0, 1, 0, 1},
       "'rows' entry 2 holds 0 after 1; entries must be sorted by row"},
      {{1, 2, 3, 4},
       {0, 1, 2, 3},
       {0, 0, 1, 2},
       "'rows' entry 3 holds 2, outside [0, 2) (4 entries / k = 2)"},
      {{1, 2, 3, 4},
       {0, 1, 2, 3},
       {-1, 0, 1, 1},
       "'rows' entry 0 holds -1, outside [0, 2)"},
      {{1, 2, 3, 4},
       {0, 9, 2, 3},
       {0, 0, 1, 1},
       "'indices' entry 1 holds 9, outside [0, 8) for model "
       "'fake_batch_topk'"},
      {{1, 2, 3},
       {0, 1, 2},
       {0, 0, 1},
       "holds 3 entries, which is not a multiple of k = 2 of model "
       "'fake_batch_topk'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case &c = cases[i];
    SCOPED_TRACE(c.message);
    std::string name = "bad" + std::to_string(i) + ".npz";
    writeBatchCodes(dir.file(name), c.values, c.indices, c.rows);
    RunResult result = decode(name);
    EXPECT_EQ(result.exitCode, 1);
    EXPECT_EQ(
        result.err.rfind("sae: error: " + dir.file(name) + ": " + c.message, 0),
        0u)
        << result.err;
    EXPECT_FALSE(exists(dir.file("xhat.npy")));
  }

  // Shapes and dtypes.
  std::vector<float> values = {1, 2, 3, 4}, floatRows = {0, 0, 1, 1};
  std::vector<int32_t> indices = {0, 1, 2, 3}, rows = {0, 0, 1, 1};
  const char *names[3] = {"values", "indices", "rows"};
  sae_rt_array square[3] = {borrow(SAE_RT_DTYPE_FLOAT32, {4}, values),
                            borrow(SAE_RT_DTYPE_INT32, {4}, indices),
                            borrow(SAE_RT_DTYPE_INT32, {2, 2}, rows)};
  ASSERT_EQ(sae_rt_npz_write(dir.file("shape.npz").c_str(), 3, names, square),
            SAE_RT_OK);
  RunResult shape = decode("shape.npz");
  EXPECT_EQ(shape.exitCode, 1);
  EXPECT_TRUE(contains(shape.err, "'values' [4], 'indices' [4] and 'rows' "
                                  "[2, 2] must have the same [N] shape"))
      << shape.err;
  sae_rt_array typed[3] = {borrow(SAE_RT_DTYPE_FLOAT32, {4}, values),
                           borrow(SAE_RT_DTYPE_INT32, {4}, indices),
                           borrow(SAE_RT_DTYPE_FLOAT32, {4}, floatRows)};
  ASSERT_EQ(sae_rt_npz_write(dir.file("dtype.npz").c_str(), 3, names, typed),
            SAE_RT_OK);
  RunResult dtype = decode("dtype.npz");
  EXPECT_EQ(dtype.exitCode, 1);
  EXPECT_EQ(dtype.err, "sae: error: " + dir.file("dtype.npz") +
                           ": 'rows' has dtype float32, expected int32\n");
}

TEST_F(ToolBatchTest, RowsLayoutCodesDecodeWithABatchModel) {
  // [B, k] codes (as a "rows" model writes them) go through
  // sae_decode_batch; repeated indices add up.
  std::vector<float> values = {1.0f, 2.0f, 3.0f, 0.5f};
  std::vector<int32_t> indices = {1, 2, 6, 6};
  sae_rt_array arrays[2] = {borrow(SAE_RT_DTYPE_FLOAT32, {2, 2}, values),
                            borrow(SAE_RT_DTYPE_INT32, {2, 2}, indices)};
  const char *names[2] = {"values", "indices"};
  ASSERT_EQ(sae_rt_npz_write(dir.file("r.npz").c_str(), 2, names, arrays),
            SAE_RT_OK);
  RunResult result =
      runSae(base("decode") + "--batch-size 1 --input " + q(dir.file("r.npz")) +
                 " --output " + q(dir.file("xhat.npy")),
             dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xhat.npy").c_str(), out.get()),
            SAE_RT_OK);
  float codes[2][kN] = {{0, 1.0f, 2.0f, 0, 0, 0, 0, 0},
                        {0, 0, 0, 0, 0, 0, 3.5f, 0}};
  for (int r = 0; r < 2; ++r) {
    float xhat[kD];
    referenceDecode(ref, codes[r], xhat);
    for (int i = 0; i < kD; ++i)
      EXPECT_NEAR(out.as<float>()[r * kD + i], xhat[i], 1e-5);
  }
}

TEST_F(ToolBatchTest, ForwardPassesTheSeedPerChunk) {
  std::string command =
      base("forward") + "--batch-size 4 --input " + q(dir.file("x.npy"));
  RunResult a = runSae(command + " --seed 5", dir);
  RunResult b = runSae(command + " --seed 5", dir);
  RunResult c = runSae(command + " --seed 6", dir);
  RunResult zero = runSae(command, dir);
  for (const RunResult *r : {&a, &b, &c, &zero})
    ASSERT_EQ(r->exitCode, 0) << r->err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);

  // Chunks of 4, 4 and 2 rows get seeds S, S + 1 and S + 2.
  auto noise = [](uint64_t seed) {
    return (4 * fakeNoise(seed) + 4 * fakeNoise(seed + 1) +
            2 * fakeNoise(seed + 2)) /
           10.0;
  };
  EXPECT_NEAR(jsonNumber(a.out, "noise"), noise(5), 1e-6);
  EXPECT_NEAR(jsonNumber(c.out, "noise"), noise(6), 1e-6);
  EXPECT_NEAR(jsonNumber(zero.out, "noise"), noise(0), 1e-6);

  // recon and l0 come from the batch selection of each chunk.
  BatchCodes want = expectedCodes();
  std::vector<float> dense = densify(want, kRows);
  double sse = 0, nonzero = 0;
  for (int r = 0; r < kRows; ++r) {
    float xhat[kD];
    referenceDecode(ref, &dense[r * kN], xhat);
    for (int i = 0; i < kD; ++i)
      sse +=
          (double(xhat[i]) - x[r * kD + i]) * (double(xhat[i]) - x[r * kD + i]);
  }
  for (float v : want.values)
    nonzero += v != 0.0f;
  EXPECT_NEAR(jsonNumber(a.out, "recon"), sse / kRows, 1e-4);
  EXPECT_NEAR(jsonNumber(a.out, "mse"), sse / kRows, 1e-5);
  EXPECT_NEAR(jsonNumber(a.out, "loss"), sse / kRows + noise(5), 1e-4);
  EXPECT_DOUBLE_EQ(jsonNumber(a.out, "l0"), nonzero / kRows);
}

TEST(ToolDenseTest, ForwardWithoutTermsAndBatchCodes) {
  TempDir dir;
  std::string ckpt = dir.file("ckpt");
  ASSERT_EQ(runSae(std::string("init ") + q(SAE_FAKE_RELU) +
                       " --seed 5 --out " + q(ckpt),
                   dir)
                .exitCode,
            0);
  std::vector<float> x = sampleInputs(4, 2);
  writeInputs(dir.file("x.npy"), x, {4, kD});
  RunResult forward =
      runSae(std::string("forward ") + q(SAE_FAKE_RELU) + " --checkpoint " +
                 q(ckpt) + " --input " + q(dir.file("x.npy")),
             dir);
  ASSERT_EQ(forward.exitCode, 0) << forward.err;
  EXPECT_EQ(forward.out.rfind("{\"loss\": ", 0), 0u) << forward.out;
  EXPECT_TRUE(contains(forward.out, ", \"terms\": {}, \"mse\": "))
      << forward.out;

  // A dense model decodes "batch" codes too; without a k, the rows are
  // those up to the last entry's.
  writeBatchCodes(dir.file("b.npz"), {2.0f, 1.0f, 0.5f}, {1, 6, 6}, {0, 0, 2});
  RunResult decode =
      runSae(std::string("decode ") + q(SAE_FAKE_RELU) + " --checkpoint " +
                 q(ckpt) + " --input " + q(dir.file("b.npz")) + " --output " +
                 q(dir.file("xhat.npy")),
             dir);
  ASSERT_EQ(decode.exitCode, 0) << decode.err;
  FakeParams ref = loadParams(SAE_FAKE_RELU, ckpt);
  ArrayGuard out;
  ASSERT_EQ(sae_rt_npy_read(dir.file("xhat.npy").c_str(), out.get()),
            SAE_RT_OK);
  ASSERT_EQ(out->shape[0], 3);
  float codes[3][kN] = {
      {0, 2.0f, 0, 0, 0, 0, 1.0f, 0}, {}, {0, 0, 0, 0, 0, 0, 0.5f, 0}};
  for (int r = 0; r < 3; ++r) {
    float xhat[kD];
    referenceDecode(ref, codes[r], xhat);
    for (int i = 0; i < kD; ++i)
      EXPECT_NEAR(out.as<float>()[r * kD + i], xhat[i], 1e-5);
  }
}

} // namespace
