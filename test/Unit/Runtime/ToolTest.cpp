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

TEST(ToolUsageTest, HelpDocumentsEveryCommandAndFlag) {
  TempDir dir;
  RunResult main = runSae("--help", dir);
  EXPECT_EQ(main.exitCode, 0);
  for (const char *command : {"info", "init", "encode", "decode", "forward"})
    EXPECT_TRUE(contains(main.out, command)) << command;

  const std::vector<std::pair<std::string, std::vector<std::string>>> flags = {
      {"info", {"--json"}},
      {"init", {"--seed", "--out"}},
      {"encode",
       {"--checkpoint", "--input", "--output", "--sparse", "--batch-size"}},
      {"decode", {"--checkpoint", "--input", "--output", "--batch-size"}},
      {"forward", {"--checkpoint", "--input", "--output", "--batch-size"}}};
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
       {"fake_topk", "ABI version   1", "input dim     4", "latents       8",
        "sparse, k = 2", "topk (k = 2)", "mse", "W_enc", "[4, 8]",
        "uniform(-1, 1)", "b_dec", "transpose(W_enc)", "generic",
        "sae_encode_sparse"})
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
  ASSERT_EQ(sae_rt_model_init(model.model, 5, direct.params), SAE_RT_OK);
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
  double sse = 0, nonzero = 0, mean[kD] = {}, variance = 0;
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kD; ++i)
      mean[i] += x[r * kD + i] / double(kRows);
  for (int r = 0; r < kRows; ++r) {
    float codes[kN], xhat[kD];
    referenceEncodeDense(ref, &x[r * kD], codes, true);
    referenceDecode(ref, codes, xhat);
    for (int j = 0; j < kN; ++j)
      nonzero += codes[j] != 0.0f;
    for (int i = 0; i < kD; ++i) {
      double diff = double(xhat[i]) - x[r * kD + i];
      sse += diff * diff;
      double dev = x[r * kD + i] - mean[i];
      variance += dev * dev;
    }
  }
  for (const RunResult *result : {&whole, &chunked}) {
    EXPECT_NEAR(jsonNumber(result->out, "mse"), sse / kRows, 1e-5);
    EXPECT_NEAR(jsonNumber(result->out, "loss"), sse / kRows, 1e-4);
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

} // namespace
