//===- TrainToolTest.cpp - Tests of `sae train` ---------------------------===//
//
// Runs `sae train` on the fake models (fake_model.c implements
// sae_train_step by hand and can trace what it is given, return NaN losses
// or fail on request) and checks the checkpoints, their resumption bit for
// bit, kills in the middle of a checkpoint write, the data order, the
// schedule, normalisation folding, compiling a spec on the fly, and the
// errors.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <csignal>
#include <map>
#include <set>
#include <thread>

#include <sys/stat.h>

using namespace saetest;
using Json = nlohmann::json;

namespace {

std::string q(const std::string &text) { return shellQuote(text); }

void writeRows(const std::string &path, const std::vector<float> &x,
               int64_t width) {
  std::vector<float> copy = x;
  sae_rt_array array =
      borrow(SAE_RT_DTYPE_FLOAT32,
             {static_cast<int64_t>(x.size()) / width, width}, copy);
  ASSERT_EQ(sae_rt_npy_write(path.c_str(), &array), SAE_RT_OK);
}

Json parseJson(const std::string &text) {
  Json json = Json::parse(text, nullptr, false);
  EXPECT_FALSE(json.is_discarded()) << text;
  return json;
}

/// The float32 tensor `name` of a safetensors file.
std::vector<float> readTensor(const std::string &path, const char *name) {
  sae_rt_safetensors *st = nullptr;
  EXPECT_EQ(sae_rt_safetensors_open(path.c_str(), &st), SAE_RT_OK)
      << sae_rt_last_error();
  if (!st)
    return {};
  ArrayGuard array;
  EXPECT_EQ(sae_rt_safetensors_read(st, name, array.get()), SAE_RT_OK)
      << sae_rt_last_error();
  sae_rt_safetensors_close(st);
  int64_t count = sae_rt_array_numel(array.get());
  return std::vector<float>(array.as<float>(), array.as<float>() + count);
}

/// One sae_train_step call traced by the fake model ($SAE_FAKE_TRACE).
struct TraceLine {
  uint64_t seed = 0;
  std::vector<double> hyper;
  std::vector<float> x;
};

std::vector<TraceLine> readTrace(const std::string &path) {
  std::vector<TraceLine> lines;
  std::istringstream in(readFile(path));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string word, value;
    TraceLine trace;
    long call;
    words >> word >> call >> word >> trace.seed >> word;
    EXPECT_EQ(word, "hyper");
    for (int i = 0; i < SAE_HYPER_COUNT; ++i) {
      words >> value;
      trace.hyper.push_back(std::strtod(value.c_str(), nullptr));
    }
    words >> word;
    EXPECT_EQ(word, "x");
    while (words >> value)
      trace.x.push_back(
          static_cast<float>(std::strtod(value.c_str(), nullptr)));
    lines.push_back(std::move(trace));
  }
  return lines;
}

class TrainToolTest : public ::testing::Test {
protected:
  void SetUp() override {
    x = sampleInputs(kRows, 31);
    data = dir.file("x.npy");
    writeRows(data, x, kD);
  }

  /// `sae train LIB --data x.npy ARGS` with `env` (VAR=value ...) set.
  RunResult train(const std::string &arguments, const std::string &env = "",
                  const char *lib = SAE_FAKE_TOPK) {
    return run(env + (env.empty() ? "" : " ") + q(SAE_TOOL) + " train " +
                   q(lib) + " --data " + q(data) + " --log-every 0 " +
                   arguments,
               dir);
  }

  Json state(const std::string &ckpt) {
    return parseJson(readFile(ckpt + "/trainer_state.json"));
  }

  /// The data row that equals `row` (the rows of x are distinct).
  int64_t rowIndex(const float *row) const {
    for (int64_t r = 0; r < kRows; ++r)
      if (std::memcmp(&x[static_cast<size_t>(r * kD)], row,
                      kD * sizeof(float)) == 0)
        return r;
    return -1;
  }

  static constexpr int kRows = 40; // 10 batches of 4 (the fake's batch)
  TempDir dir;
  std::vector<float> x;
  std::string data;
};

//===----------------------------------------------------------------------===//
// Usage
//===----------------------------------------------------------------------===//

TEST(TrainUsageTest, HelpDocumentsEveryFlag) {
  TempDir dir;
  RunResult main = runSae("--help", dir);
  EXPECT_TRUE(contains(main.out, "  train ")) << main.out;
  RunResult help = runSae("train --help", dir);
  ASSERT_EQ(help.exitCode, 0);
  for (const char *flag : {"usage: sae train",
                           "--data",
                           "--tensor",
                           "--input-data",
                           "--input-tensor",
                           "--steps",
                           "--tokens",
                           "--batch",
                           "--lr ",
                           "--beta1",
                           "--beta2",
                           "--eps",
                           "--clip",
                           "--lr-warmup",
                           "--lr-decay",
                           "--sparsity-warmup",
                           "--seed",
                           "--init",
                           "--out",
                           "--checkpoint-every",
                           "--resume",
                           "--no-shuffle",
                           "--metrics-json",
                           "--log-every",
                           "-D name=value",
                           "--stop-after",
                           "$SAEC",
                           "XDG_CACHE_HOME",
                           "Fisher-Yates",
                           "splitmix64",
                           "mix64(S ^ mix64(t))",
                           "sqrt(d) / (mean",
                           "W_enc * c",
                           "optimizer.safetensors",
                           "'<param>.exp_avg'",
                           "trainer_state.json",
                           "bit for bit",
                           "0.5 * (1 + cos(pi * p))",
                           "last 10M tokens",
                           "status 130"})
    EXPECT_TRUE(contains(help.out, flag)) << flag;
}

TEST(TrainUsageTest, UsageErrorsExitWith2) {
  TempDir dir;
  const std::string lib = q(SAE_FAKE_TOPK);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train", "missing the model library"},
      {"train " + lib + " --out o", "missing required option --data"},
      {"train " + lib + " --data x.npy", "missing required option --out"},
      {"train " + lib + " --data x --out o --steps 3 --tokens 9",
       "--steps and --tokens exclude each other"},
      {"train " + lib + " --data x --out o --init a --resume b",
       "--init and --resume exclude each other"},
      {"train " + lib + " --data x --out o -D n=4",
       "-D overrides a dimension of a .sae spec"},
      {"train spec.sae --data x --out o -D n", "-D expects NAME=VALUE"},
      {"train spec.sae --data x --out o -D", "option -D needs a value"},
      {"train " + lib + " --data x --out o --lr-decay exp",
       "--lr-decay must be none, linear or cosine"},
      {"train " + lib + " --data x --out o --beta1 1", "--beta1 must be in "
                                                       "[0, 1)"},
      {"train " + lib + " --data x --out o --beta2 -0.1", "--beta2 must be"},
      {"train " + lib + " --data x --out o --lr -1", "--lr must be a finite"},
      {"train " + lib + " --data x --out o --lr nan", "--lr expects a number"},
      {"train " + lib + " --data x --out o --eps -1", "--eps must be"},
      {"train " + lib + " --data x --out o --clip -1", "--clip must be"},
      {"train " + lib + " --data x --out o --batch 0",
       "--batch must be between 1"},
      {"train " + lib + " --data x --out o --steps 0",
       "--steps must be between 1"},
      {"train " + lib + " --data x --out o --lr-warmup -2",
       "--lr-warmup expects an unsigned integer"},
      {"train " + lib + " --data x --out o --stop-after 0",
       "--stop-after must be between 1"},
      {"train " + lib + " --data x --out o --input-data g",
       "--input-data expects NAME=VALUE"},
      {"train " + lib + " --data x --out o --no-shuffle=1", "takes no value"},
      {"train " + lib + " --data x --out o --frobnicate",
       "unknown option '--frobnicate'"},
      {"train " + lib + " --data x --out o --seed 1 --seed 2", "given twice"},
  };
  for (const auto &c : cases) {
    RunResult result = runSae(c.first, dir);
    EXPECT_EQ(result.exitCode, 2) << c.first << "\n" << result.err;
    EXPECT_TRUE(contains(result.err, c.second))
        << c.first << ": " << result.err;
  }
}

//===----------------------------------------------------------------------===//
// Training and checkpoints
//===----------------------------------------------------------------------===//

TEST_F(TrainToolTest, TrainsAndWritesACheckpoint) {
  std::string out = dir.file("run");
  RunResult result = train("--steps 12 --seed 9 --out " + q(out));
  ASSERT_EQ(result.exitCode, 0) << result.err;
  Json summary = parseJson(result.out);
  EXPECT_EQ(summary["steps"], 12);
  EXPECT_EQ(summary["total_steps"], 12);
  EXPECT_EQ(summary["tokens"], 48);
  EXPECT_EQ(summary["completed"], true);
  EXPECT_EQ(summary["out"], out);
  EXPECT_EQ(summary["lr"], 0.01);
  EXPECT_TRUE(summary["normalization_factor"].is_null());
  for (const char *key :
       {"seconds", "tokens_per_s", "loss", "fvu", "l0", "dead_fraction"})
    EXPECT_TRUE(summary[key].is_number()) << key;
  EXPECT_TRUE(summary["terms"]["recon"].is_number());
  EXPECT_TRUE(summary["terms"]["sparsity"].is_number());
  EXPECT_EQ(result.out.find('\n'), result.out.size() - 1); // one line

  std::vector<std::string> files;
  for (const auto &entry : std::filesystem::directory_iterator(out))
    files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{
                       "cfg.json", "optimizer.safetensors",
                       "sae_weights.safetensors", "trainer_state.json"}));
  Json s = state(out);
  EXPECT_EQ(s["format"], "saec-trainer-state");
  EXPECT_EQ(s["model"], "fake_topk");
  EXPECT_EQ(s["step"], 12);
  EXPECT_EQ(s["tokens"], 48);
  EXPECT_EQ(s["seed"], 9);
  EXPECT_EQ(s["batch"], 4);
  EXPECT_EQ(s["shuffle"], true);
  EXPECT_EQ(s["data_rows"], kRows);
  EXPECT_EQ(s["steps_per_epoch"], 10);
  EXPECT_EQ(s["epoch"], 1);
  EXPECT_EQ(s["batch_in_epoch"], 2);
  EXPECT_EQ(s["hyper"]["lr"], 0.01);
  EXPECT_EQ(s["hyper"]["lr_decay"], "none");
  EXPECT_EQ(s["normalize"], "none");
  EXPECT_EQ(s["last_fired_tokens"].size(), 8u);

  // The optimizer state: both moments of each trainable parameter.
  std::string optimizer = out + "/optimizer.safetensors";
  for (const char *name : {"W_enc", "b_enc", "W_dec", "b_dec"}) {
    EXPECT_FALSE(readTensor(optimizer, (std::string(name) + ".exp_avg").c_str())
                     .empty());
    std::vector<float> v =
        readTensor(optimizer, (std::string(name) + ".exp_avg_sq").c_str());
    for (float value : v)
      EXPECT_GE(value, 0.0f);
  }
  // Trained: unit-norm decoder rows, different from the initialisation.
  std::vector<float> wDec =
      readTensor(out + "/sae_weights.safetensors", "W_dec");
  ASSERT_EQ(wDec.size(), 32u);
  for (int j = 0; j < kN; ++j) {
    double norm2 = 0;
    for (int i = 0; i < kD; ++i)
      norm2 += double(wDec[j * kD + i]) * wDec[j * kD + i];
    EXPECT_NEAR(norm2, 1.0, 1e-5);
  }
  RunResult init = runSae(std::string("init ") + q(SAE_FAKE_TOPK) +
                              " --seed 9 --out " + q(dir.file("init")),
                          dir);
  ASSERT_EQ(init.exitCode, 0);
  EXPECT_NE(readTensor(dir.file("init") + "/sae_weights.safetensors", "b_enc"),
            readTensor(out + "/sae_weights.safetensors", "b_enc"));
}

TEST_F(TrainToolTest, StepCounts) {
  auto steps = [&](const std::string &flags) {
    RunResult result = train(flags + " --out " + q(dir.file("c")));
    EXPECT_EQ(result.exitCode, 0) << result.err;
    return parseJson(result.out)["steps"].get<int64_t>();
  };
  EXPECT_EQ(steps(""), 10);           // one epoch of 40 rows / 4
  EXPECT_EQ(steps("--batch 6"), 6);   // 40 / 6, the partial batch dropped
  EXPECT_EQ(steps("--tokens 10"), 3); // ceil(10 / 4)
  EXPECT_EQ(steps("--tokens 12"), 3);
  EXPECT_EQ(steps("--steps 25"), 25); // more than an epoch
  RunResult tooFew = train("--batch 41 --out " + q(dir.file("c")));
  EXPECT_EQ(tooFew.exitCode, 1);
  EXPECT_TRUE(contains(tooFew.err, "has 40 rows, fewer than one batch of 41"))
      << tooFew.err;
}

TEST_F(TrainToolTest, ResumeIsBitIdentical) {
  std::string a = dir.file("a"), b = dir.file("b");
  const std::string flags =
      "--steps 10 --checkpoint-every 4 --seed 3 --lr-warmup 2 --lr-decay "
      "cosine --sparsity-warmup 3 ";
  RunResult full = train(flags + "--out " + q(a));
  ASSERT_EQ(full.exitCode, 0) << full.err;
  // Stopped after step 4 (a checkpoint), resumed, stopped after 7 (not a
  // multiple of --checkpoint-every), resumed to the end.
  RunResult first = train(flags + "--stop-after 4 --out " + q(b));
  ASSERT_EQ(first.exitCode, 0) << first.err;
  Json stopped = parseJson(first.out);
  EXPECT_EQ(stopped["steps"], 4);
  EXPECT_EQ(stopped["completed"], false);
  EXPECT_EQ(state(b)["step"], 4);
  RunResult second = train("--resume " + q(b) + " --stop-after 7");
  ASSERT_EQ(second.exitCode, 0) << second.err;
  EXPECT_EQ(state(b)["step"], 7);
  RunResult third = train(flags + "--resume " + q(b));
  ASSERT_EQ(third.exitCode, 0) << third.err;
  EXPECT_EQ(parseJson(third.out)["steps"], 10);
  EXPECT_EQ(parseJson(third.out)["completed"], true);
  for (const char *file : {"sae_weights.safetensors", "optimizer.safetensors",
                           "trainer_state.json", "cfg.json"})
    EXPECT_EQ(readFile(a + "/" + file), readFile(b + "/" + file)) << file;

  // Resuming a finished run does nothing.
  RunResult again = train("--resume " + q(b));
  ASSERT_EQ(again.exitCode, 0) << again.err;
  EXPECT_EQ(parseJson(again.out)["steps"], 10);
  EXPECT_EQ(readFile(a + "/sae_weights.safetensors"),
            readFile(b + "/sae_weights.safetensors"));
}

TEST_F(TrainToolTest, ResumeIntoAnotherDirectoryAndMismatches) {
  std::string a = dir.file("a"), b = dir.file("b"), c = dir.file("c");
  ASSERT_EQ(train("--steps 6 --out " + q(a)).exitCode, 0);
  ASSERT_EQ(train("--steps 6 --stop-after 2 --out " + q(b)).exitCode, 0);
  RunResult resumed = train("--resume " + q(b) + " --out " + q(c));
  ASSERT_EQ(resumed.exitCode, 0) << resumed.err;
  EXPECT_EQ(readFile(a + "/sae_weights.safetensors"),
            readFile(c + "/sae_weights.safetensors"));
  EXPECT_EQ(state(b)["step"], 2); // untouched

  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--seed 5", "--seed 5 differs from the seed 0 of the run in"},
      {"--batch 5", "--batch 5 differs from the batch size 4"},
      {"--no-shuffle", "--no-shuffle: the run in"},
  };
  for (const auto &m : cases) {
    RunResult result = train("--resume " + q(b) + " " + m.first);
    EXPECT_EQ(result.exitCode, 1) << m.first;
    EXPECT_TRUE(contains(result.err, m.second)) << result.err;
  }
  RunResult other = run(q(SAE_TOOL) + " train " + q(SAE_FAKE_NORM) +
                            " --data " + q(data) + " --resume " + q(b),
                        dir);
  EXPECT_EQ(other.exitCode, 1);
  EXPECT_TRUE(contains(other.err, "is a checkpoint of model 'fake_topk', not "
                                  "of model 'fake_topk_norm'"))
      << other.err;
  writeRows(dir.file("short.npy"), sampleInputs(36, 31), kD);
  RunResult shorter =
      run(q(SAE_TOOL) + " train " + q(SAE_FAKE_TOPK) + " --data " +
              q(dir.file("short.npy")) + " --resume " + q(b),
          dir);
  EXPECT_EQ(shorter.exitCode, 1);
  EXPECT_TRUE(contains(shorter.err, "has 36 rows, but the run in"))
      << shorter.err;
  RunResult missing = train("--resume " + q(dir.file("nothing")));
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_TRUE(contains(missing.err, "trainer_state.json: cannot read"))
      << missing.err;
}

TEST_F(TrainToolTest, KilledWhileCheckpointingKeepsThePreviousCheckpoint) {
  std::string a = dir.file("a"), b = dir.file("b");
  const std::string flags = "--steps 12 --checkpoint-every 4 --seed 1 ";
  ASSERT_EQ(train(flags + "--out " + q(a)).exitCode, 0);
  ASSERT_EQ(train(flags + "--stop-after 4 --out " + q(b)).exitCode, 0);
  std::string weights = readFile(b + "/sae_weights.safetensors");
  std::string optimizer = readFile(b + "/optimizer.safetensors");
  std::string trainer = readFile(b + "/trainer_state.json");
  // Killed (SIGKILL) while writing the checkpoint of step 8: after the new
  // files are complete, before the swap; and earlier, after the weights.
  for (const char *point : {"kill:checkpoint.swap", "kill:checkpoint.weights",
                            "kill:checkpoint.files"}) {
    RunResult killed = train(flags + "--resume " + q(b),
                             std::string("SAE_TESTING_FAULTS=") + point);
    // The shell reports the SIGKILL as 137, or is replaced by sae (-1).
    EXPECT_TRUE(killed.exitCode == 128 + SIGKILL || killed.exitCode == -1)
        << point << ": " << killed.exitCode << " " << killed.err;
    EXPECT_EQ(killed.out, "") << point;
    EXPECT_EQ(readFile(b + "/sae_weights.safetensors"), weights) << point;
    EXPECT_EQ(readFile(b + "/optimizer.safetensors"), optimizer) << point;
    EXPECT_EQ(readFile(b + "/trainer_state.json"), trainer) << point;
  }
  RunResult resumed = train(flags + "--resume " + q(b));
  ASSERT_EQ(resumed.exitCode, 0) << resumed.err;
  EXPECT_EQ(readFile(a + "/sae_weights.safetensors"),
            readFile(b + "/sae_weights.safetensors"));
  EXPECT_EQ(readFile(a + "/optimizer.safetensors"),
            readFile(b + "/optimizer.safetensors"));
}

/// Starts `command` in the background (exec'd by the shell, so signals
/// reach it); returns its pid.
pid_t spawn(const std::string &command) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(),
          static_cast<char *>(nullptr));
    _exit(127);
  }
  return pid;
}

TEST_F(TrainToolTest, KilledAtARandomMomentLeavesAWholeCheckpoint) {
  std::string a = dir.file("a"), b = dir.file("b");
  const std::string flags = "--steps 10 --checkpoint-every 1 --seed 4 ";
  ASSERT_EQ(train(flags + "--out " + q(a)).exitCode, 0);
  pid_t pid =
      spawn(q(SAE_TOOL) + " train " + q(SAE_FAKE_TOPK) + " --data " + q(data) +
            " --log-every 0 " + flags + "--out " + q(b) + " >/dev/null 2>&1");
  ASSERT_GT(pid, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!exists(b + "/trainer_state.json") &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  // Whatever step it was at, the directory is one whole checkpoint.
  Json s = state(b);
  ASSERT_TRUE(s.is_object());
  int64_t step = s["step"];
  EXPECT_GE(step, 1);
  EXPECT_EQ(s["tokens"], step * 4);
  RunResult resumed = train(flags + "--resume " + q(b));
  ASSERT_EQ(resumed.exitCode, 0) << resumed.err;
  EXPECT_EQ(readFile(a + "/sae_weights.safetensors"),
            readFile(b + "/sae_weights.safetensors"));
}

TEST_F(TrainToolTest, InterruptWritesACheckpoint) {
  std::string out = dir.file("run"), err = dir.file("err.txt");
  pid_t pid = spawn(q(SAE_TOOL) + " train " + q(SAE_FAKE_TOPK) + " --data " +
                    q(data) + " --steps 100000000 --log-every 500 --out " +
                    q(out) + " >" + q(dir.file("out.txt")) + " 2>" + q(err));
  ASSERT_GT(pid, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!contains(readFile(err), "sae train: step") &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_TRUE(contains(readFile(err), "interrupted after step"))
      << readFile(err);
  Json summary = parseJson(readFile(dir.file("out.txt")));
  EXPECT_EQ(summary["completed"], false);
  EXPECT_EQ(state(out)["step"], summary["steps"]);
  EXPECT_GE(summary["steps"].get<int64_t>(), 500);
}

//===----------------------------------------------------------------------===//
// Data order, schedule and seeds, as the model sees them
//===----------------------------------------------------------------------===//

TEST_F(TrainToolTest, ShuffleIsADeterministicPermutationPerEpoch) {
  std::string trace = dir.file("trace.txt");
  auto traced = [&](const std::string &flags) {
    std::remove(trace.c_str());
    RunResult result = train(flags + " --out " + q(dir.file("c")),
                             "SAE_FAKE_TRACE=" + q(trace));
    EXPECT_EQ(result.exitCode, 0) << result.err;
    return readTrace(trace);
  };
  std::vector<TraceLine> lines = traced("--steps 20 --seed 5");
  ASSERT_EQ(lines.size(), 20u);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> perm(kRows);
    ASSERT_EQ(sae_rt_train_permutation(5, epoch, kRows, perm.data()),
              SAE_RT_OK);
    for (int64_t t = 0; t < 10; ++t) {
      const TraceLine &line = lines[static_cast<size_t>(epoch * 10 + t)];
      ASSERT_EQ(line.x.size(), 16u);
      for (int r = 0; r < 4; ++r)
        EXPECT_EQ(rowIndex(&line.x[r * kD]), perm[t * 4 + r])
            << "epoch " << epoch << " step " << t << " row " << r;
    }
  }
  // The same seed, the same batches; another seed, others.
  std::vector<TraceLine> again = traced("--steps 20 --seed 5");
  ASSERT_EQ(again.size(), 20u);
  for (size_t i = 0; i < 20; ++i)
    EXPECT_EQ(again[i].x, lines[i].x);
  std::vector<TraceLine> other = traced("--steps 20 --seed 6");
  ASSERT_EQ(other.size(), 20u);
  EXPECT_NE(other[0].x, lines[0].x);

  // --no-shuffle: file order; with 42 rows the last two sit out each epoch.
  std::vector<float> longer = sampleInputs(42, 31); // x plus two rows
  writeRows(data, longer, kD);
  std::vector<TraceLine> ordered = traced("--steps 12 --no-shuffle");
  ASSERT_EQ(ordered.size(), 12u);
  for (size_t t = 0; t < 12; ++t)
    for (int r = 0; r < 4; ++r)
      EXPECT_EQ(rowIndex(&ordered[t].x[r * kD]),
                static_cast<int64_t>((t % 10) * 4 + r))
          << "step " << t + 1;
}

TEST_F(TrainToolTest, TheModelGetsTheScheduleAndSeeds) {
  std::string trace = dir.file("trace.txt");
  RunResult result =
      train("--steps 9 --seed 77 --lr 0.001 --lr-warmup 3 --lr-decay cosine "
            "--sparsity-warmup 4 --clip 0.5 --beta1 0.8 --beta2 0.99 --eps "
            "1e-6 --out " +
                q(dir.file("c")),
            "SAE_FAKE_TRACE=" + q(trace));
  ASSERT_EQ(result.exitCode, 0) << result.err;
  std::vector<TraceLine> lines = readTrace(trace);
  ASSERT_EQ(lines.size(), 9u);
  sae_rt_train_config config;
  sae_rt_train_config_default(&config);
  config.lr = 0.001;
  config.lr_warmup = 3;
  config.lr_decay = SAE_RT_LR_DECAY_COSINE;
  config.sparsity_warmup = 4;
  config.clip = 0.5;
  config.beta1 = 0.8;
  config.beta2 = 0.99;
  config.eps = 1e-6;
  config.batch = 4;
  for (int64_t t = 1; t <= 9; ++t) {
    const TraceLine &line = lines[static_cast<size_t>(t - 1)];
    float want[SAE_HYPER_COUNT];
    ASSERT_EQ(sae_rt_train_hyper(&config, t, 9, want), SAE_RT_OK);
    for (int i = 0; i < SAE_HYPER_COUNT; ++i)
      EXPECT_EQ(static_cast<float>(line.hyper[i]), want[i])
          << "step " << t << " hyper " << i;
    EXPECT_EQ(line.seed, sae_rt_train_step_seed(77, t));
  }
  EXPECT_FLOAT_EQ(static_cast<float>(lines[0].hyper[SAE_HYPER_LR]), 0.001f / 3);
  EXPECT_EQ(lines[8].hyper[SAE_HYPER_LR], 0.0);
  EXPECT_FLOAT_EQ(static_cast<float>(lines[1].hyper[SAE_HYPER_SPARSITY]), 0.5f);
  Json s = state(dir.file("c"));
  EXPECT_EQ(s["hyper"]["lr"], 0.001);
  EXPECT_EQ(s["hyper"]["lr_decay"], "cosine");
  EXPECT_EQ(s["hyper"]["beta1"], 0.8);
  EXPECT_EQ(s["hyper"]["clip"], 0.5);
}

//===----------------------------------------------------------------------===//
// Errors while training
//===----------------------------------------------------------------------===//

TEST_F(TrainToolTest, NanLossStopsWithoutSavingThatStep) {
  std::string out = dir.file("run"), ref = dir.file("ref");
  RunResult result = train("--steps 6 --checkpoint-every 2 --out " + q(out),
                           "SAE_FAKE_NAN_STEP=3");
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err, "sae: error: step 3: loss is NaN (total "
                                   "NaN, recon NaN, sparsity NaN); training "
                                   "stopped without saving this step's "
                                   "parameters; the checkpoint of step 2 in " +
                                       out + " is kept"))
      << result.err;
  EXPECT_EQ(result.out, "");
  EXPECT_EQ(state(out)["step"], 2);
  ASSERT_EQ(train("--steps 6 --stop-after 2 --out " + q(ref)).exitCode, 0);
  EXPECT_EQ(readFile(out + "/sae_weights.safetensors"),
            readFile(ref + "/sae_weights.safetensors"));

  // Before any checkpoint: nothing is written.
  std::string none = dir.file("none");
  RunResult early = train("--steps 6 --out " + q(none), "SAE_FAKE_NAN_STEP=1");
  EXPECT_EQ(early.exitCode, 1);
  EXPECT_TRUE(contains(early.err, "step 1: loss is NaN")) << early.err;
  EXPECT_TRUE(contains(early.err, "no checkpoint was written to " + none))
      << early.err;
  EXPECT_FALSE(exists(none));
}

TEST_F(TrainToolTest, EntryPointErrorsStopTraining) {
  std::string out = dir.file("run");
  RunResult result = train("--steps 6 --checkpoint-every 1 --out " + q(out),
                           "SAE_FAKE_FAIL_STEP=2");
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err, "sae: error: step 2: model 'fake_topk': "
                                   "sae_train_step returned 5; training "
                                   "stopped without saving this step's "
                                   "parameters; the checkpoint of step 1"))
      << result.err;
  EXPECT_EQ(state(out)["step"], 1);
}

TEST_F(TrainToolTest, NonFiniteDataIsAnError) {
  std::vector<float> bad = x;
  bad[7 * kD + 2] = NAN;
  bad[30 * kD + 1] = INFINITY;
  writeRows(data, bad, kD);
  std::string out = dir.file("run");
  RunResult result = train("--no-shuffle --checkpoint-every 1 --out " + q(out));
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err, "sae: error: step 2: " + data +
                                       ": row 7, column 2 is NaN; inputs "
                                       "must be finite; training stopped, "
                                       "the checkpoint of step 1"))
      << result.err;
  bad[7 * kD + 2] = 0.5f;
  writeRows(data, bad, kD);
  result = train("--no-shuffle --out " + q(out));
  EXPECT_TRUE(contains(result.err, ": row 30, column 1 is infinite"))
      << result.err;
}

TEST_F(TrainToolTest, ModelAndDataMismatches) {
  writeRows(dir.file("wide.npy"), sampleInputs(10, 2), 8);
  RunResult wide =
      run(q(SAE_TOOL) + " train " + q(SAE_FAKE_TOPK) + " --data " +
              q(dir.file("wide.npy")) + " --out " + q(dir.file("c")),
          dir);
  EXPECT_EQ(wide.exitCode, 1);
  EXPECT_TRUE(contains(wide.err, "shape [5, 8] does not match the model's "
                                 "input dimension 4"))
      << wide.err;
  RunResult relu = train("--out " + q(dir.file("c")), "", SAE_FAKE_RELU);
  EXPECT_EQ(relu.exitCode, 1);
  EXPECT_TRUE(contains(relu.err, "model 'fake_relu' has no entry point "
                                 "sae_train_step"))
      << relu.err;
  std::filesystem::create_directories(dir.file("notes"));
  writeFile(dir.file("notes/readme.txt"), "keep me");
  RunResult notCkpt = train("--out " + q(dir.file("notes")));
  EXPECT_EQ(notCkpt.exitCode, 1);
  EXPECT_TRUE(contains(notCkpt.err, "refusing to replace an existing "
                                    "directory that is not a checkpoint"))
      << notCkpt.err;
  EXPECT_EQ(readFile(dir.file("notes/readme.txt")), "keep me");
}

TEST_F(TrainToolTest, AuxiliaryInputs) {
  std::vector<float> g(kRows * kG);
  for (size_t i = 0; i < g.size(); ++i)
    g[i] = 0.01f * static_cast<float>(i % 17);
  writeRows(dir.file("g.npy"), g, kG);
  writeRows(dir.file("g_short.npy"),
            std::vector<float>(g.begin(), g.begin() + 30 * kG), kG);
  std::string out = q(dir.file("c"));
  const std::vector<std::pair<std::string, std::string>> errors = {
      {"", "model 'fake_grad_topk' has the auxiliary input 'g' (dim 3); give "
           "its rows with --input-data g=FILE"},
      {"--input-data h=" + q(dir.file("g.npy")),
       "model 'fake_grad_topk' has no auxiliary input 'h'"},
      {"--input-data x=" + q(dir.file("g.npy")),
       "'x' is model 'fake_grad_topk''s first input; give it with --data"},
      {"--input-data g=" + q(dir.file("g_short.npy")),
       "has 30 rows, but " + data + " has 40"},
  };
  for (const auto &c : errors) {
    RunResult result = train(c.first + " --out " + out, "", SAE_FAKE_AUX);
    EXPECT_EQ(result.exitCode, 1) << c.first;
    EXPECT_TRUE(contains(result.err, c.second)) << result.err;
  }
  RunResult ok = train("--input-data g=" + q(dir.file("g.npy")) +
                           " --steps 5 --out " + out,
                       "", SAE_FAKE_AUX);
  EXPECT_EQ(ok.exitCode, 0) << ok.err;
  RunResult twice =
      train("--input-data g=a --input-data g=b --out " + out, "", SAE_FAKE_AUX);
  EXPECT_EQ(twice.exitCode, 2);
  EXPECT_TRUE(contains(twice.err, "--input-data gives input 'g' twice"));
  RunResult topk =
      train("--input-data g=" + q(dir.file("g.npy")) + " --out " + out);
  EXPECT_EQ(topk.exitCode, 1);
  EXPECT_TRUE(contains(topk.err, "has no auxiliary input 'g' (it has none)"))
      << topk.err;
}

//===----------------------------------------------------------------------===//
// Initialisation, normalisation, metrics
//===----------------------------------------------------------------------===//

TEST_F(TrainToolTest, InitialisationFromDataOrACheckpoint) {
  // With lr 0 Adam leaves the parameters alone (only the W_dec rows are
  // renormalised): b_dec is the data_mean initialiser's.
  std::string out = dir.file("c");
  RunResult data =
      train("--lr 0 --steps 1 --out " + q(out), "", SAE_FAKE_INIT_DATA);
  ASSERT_EQ(data.exitCode, 0) << data.err;
  std::vector<float> bDec =
      readTensor(out + "/sae_weights.safetensors", "b_dec");
  ASSERT_EQ(bDec.size(), 4u);
  for (int i = 0; i < kD; ++i) {
    double mean = 0;
    for (int r = 0; r < kRows; ++r)
      mean += x[r * kD + i];
    EXPECT_FLOAT_EQ(bDec[i], static_cast<float>(mean / kRows));
  }
  // --init: b_enc comes from the checkpoint (not from --seed).
  ASSERT_EQ(runSae(std::string("init ") + q(SAE_FAKE_TOPK) +
                       " --seed 123 --out " + q(dir.file("init")),
                   dir)
                .exitCode,
            0);
  RunResult init = train("--lr 0 --steps 2 --seed 4 --init " +
                         q(dir.file("init")) + " --out " + q(out));
  ASSERT_EQ(init.exitCode, 0) << init.err;
  EXPECT_EQ(readTensor(out + "/sae_weights.safetensors", "b_enc"),
            readTensor(dir.file("init") + "/sae_weights.safetensors", "b_enc"));
}

TEST_F(TrainToolTest, NormalisationIsFoldedIntoTheWeights) {
  std::string out = dir.file("run");
  RunResult result = train("--steps 5 --out " + q(out), "", SAE_FAKE_NORM);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  double normSum = 0;
  for (int r = 0; r < kRows; ++r) {
    double sum = 0;
    for (int i = 0; i < kD; ++i)
      sum += double(x[r * kD + i]) * x[r * kD + i];
    normSum += std::sqrt(sum);
  }
  double c = std::sqrt(double(kD)) / (normSum / kRows);
  Json summary = parseJson(result.out);
  EXPECT_EQ(summary["normalization_factor"].get<double>(), c);
  Json s = state(out);
  EXPECT_EQ(s["normalization_factor"].get<double>(), c);
  EXPECT_EQ(s["weights_folded"], true);

  std::string weights = out + "/sae_weights.safetensors",
              optimizer = out + "/optimizer.safetensors";
  float cf = static_cast<float>(c);
  std::vector<float> wEnc = readTensor(weights, "W_enc"),
                     wEncT = readTensor(optimizer, "W_enc.training");
  std::vector<float> wDec = readTensor(weights, "W_dec"),
                     wDecT = readTensor(optimizer, "W_dec.training");
  std::vector<float> bDec = readTensor(weights, "b_dec"),
                     bDecT = readTensor(optimizer, "b_dec.training");
  ASSERT_EQ(wEnc.size(), 32u);
  ASSERT_EQ(wEncT.size(), 32u);
  for (size_t i = 0; i < 32; ++i) {
    EXPECT_EQ(wEnc[i], wEncT[i] * cf);
    EXPECT_EQ(wDec[i], wDecT[i] / cf);
  }
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(bDec[i], bDecT[i] / cf);

  // The folded model on raw x reconstructs what the trained one does on
  // c * x, scaled back.
  ModelGuard model;
  ASSERT_EQ(sae_rt_model_open(SAE_FAKE_NORM, &model.model), SAE_RT_OK);
  ParamsGuard folded, trained;
  ASSERT_EQ(sae_rt_params_alloc(model.model, &folded.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_params_alloc(model.model, &trained.params), SAE_RT_OK);
  ASSERT_EQ(sae_rt_checkpoint_load(model.model, out.c_str(), folded.params),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_checkpoint_load(model.model, out.c_str(), trained.params),
            SAE_RT_OK);
  std::memcpy(trained.params[0], wEncT.data(), 32 * sizeof(float));
  std::memcpy(trained.params[2], wDecT.data(), 32 * sizeof(float));
  std::memcpy(trained.params[3], bDecT.data(), 4 * sizeof(float));
  std::vector<float> scaled = x;
  for (float &value : scaled)
    value *= cf;
  const float *raw[1] = {x.data()}, *normed[1] = {scaled.data()};
  std::vector<float> xhat(x.size()), xhatScaled(x.size());
  float losses[3];
  ASSERT_EQ(sae_rt_model_forward(model.model, kRows, raw, folded.params, 0,
                                 xhat.data(), losses),
            SAE_RT_OK);
  ASSERT_EQ(sae_rt_model_forward(model.model, kRows, normed, trained.params, 0,
                                 xhatScaled.data(), losses),
            SAE_RT_OK);
  for (size_t i = 0; i < xhat.size(); ++i)
    EXPECT_NEAR(xhat[i], xhatScaled[i] / cf, 1e-4) << i;

  // Resuming a normalised run continues from the unfolded values exactly.
  std::string a = dir.file("a");
  ASSERT_EQ(train("--steps 5 --stop-after 2 --out " + q(a), "", SAE_FAKE_NORM)
                .exitCode,
            0);
  ASSERT_EQ(train("--resume " + q(a), "", SAE_FAKE_NORM).exitCode, 0);
  EXPECT_EQ(readFile(a + "/sae_weights.safetensors"), readFile(weights));
  EXPECT_EQ(readFile(a + "/optimizer.safetensors"), readFile(optimizer));
}

TEST_F(TrainToolTest, NormalisationNeedsTheSaelensNames) {
  std::string describe =
      "{\"abi_version\": 3, \"name\": \"renamed\", \"input\": {\"name\": "
      "\"x\", \"dim\": 4}, \"latents\": 8, \"codes\": {\"kind\": \"sparse\", "
      "\"k\": 2}, \"loss_terms\": [\"recon\", \"sparsity\"], \"train\": "
      "{\"batch\": 4, \"normalize\": \"expected_norm\"}, \"entry_points\": "
      "[\"sae_init\", \"sae_train_step\"], \"params\": [{\"name\": \"enc\", "
      "\"shape\": [4, 8]}, {\"name\": \"b_enc\", \"shape\": [8]}, {\"name\": "
      "\"dec\", \"shape\": [8, 4]}, {\"name\": \"b_dec\", \"shape\": [4]}]}";
  RunResult result = train("--out " + q(dir.file("c")),
                           "SAE_FAKE_DESCRIBE=" + q(describe), SAE_FAKE_CUSTOM);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err,
                       "model 'renamed' normalises its inputs "
                       "(train.normalize is 'expected_norm'), but has no "
                       "parameter 'W_enc', 'W_dec'; the trainer folds"))
      << result.err;
}

TEST_F(TrainToolTest, ProgressAndMetricsJson) {
  std::string metrics = dir.file("m.json");
  RunResult result =
      run(q(SAE_TOOL) + " train " + q(SAE_FAKE_STATE) + " --data " + q(data) +
              " --steps 9 --log-every 3 --metrics-json " + q(metrics) +
              " --out " + q(dir.file("c")),
          dir);
  ASSERT_EQ(result.exitCode, 0) << result.err;
  // Plain lines (stderr is not a terminal here).
  EXPECT_EQ(result.err.find('\r'), std::string::npos);
  for (const char *step : {"step 3/9 |", "step 6/9 |", "step 9/9 |"})
    EXPECT_TRUE(contains(result.err, step)) << result.err;
  for (const char *part : {"tok/s", "ETA", "loss ", "(recon ", "sparsity ",
                           "L0 ", "FVU ", "dead ", "lr 0.01"})
    EXPECT_TRUE(contains(result.err, part)) << part;
  Json full = parseJson(readFile(metrics));
  Json summary = parseJson(result.out);
  for (auto it = summary.begin(); it != summary.end(); ++it) {
    if (it.key() == "seconds" || it.key() == "tokens_per_s")
      continue;
    EXPECT_EQ(full[it.key()], it.value()) << it.key();
  }
  ASSERT_EQ(full["history"].size(), 3u);
  EXPECT_EQ(full["history"][0]["step"], 3);
  EXPECT_EQ(full["history"][2]["step"], 9);
  EXPECT_EQ(full["history"][2]["tokens"], 36);
  EXPECT_EQ(full["history"][2]["loss"], summary["loss"]);
  EXPECT_EQ(full["history"][2]["l0"], summary["l0"]);
  EXPECT_LE(summary["l0"].get<double>(), 2.0);
  EXPECT_GE(summary["dead_fraction"].get<double>(), 0.0);
  EXPECT_LE(summary["dead_fraction"].get<double>(), 1.0);
  // The state parameter is saved with the weights, not in the optimizer.
  std::vector<float> fires =
      readTensor(dir.file("c") + "/sae_weights.safetensors", "fires");
  double total = 0;
  for (float f : fires)
    total += f;
  EXPECT_GT(total, 0);
  sae_rt_safetensors *st = nullptr;
  ASSERT_EQ(sae_rt_safetensors_open(
                (dir.file("c") + "/optimizer.safetensors").c_str(), &st),
            SAE_RT_OK);
  EXPECT_EQ(sae_rt_safetensors_count(st), 8u);
  EXPECT_LT(sae_rt_safetensors_find(st, "fires.exp_avg"), 0);
  sae_rt_safetensors_close(st);
  // The dead-latent counters: every latent that fired has a token count.
  Json s = state(dir.file("c"));
  for (size_t j = 0; j < 8; ++j)
    EXPECT_EQ(s["last_fired_tokens"][j].get<int64_t>() > 0, fires[j] > 0) << j;
}

//===----------------------------------------------------------------------===//
// Compiling a spec on the fly
//===----------------------------------------------------------------------===//

TEST_F(TrainToolTest, SpecIsCompiledOnceAndCached) {
  // A stand-in saec: logs its arguments and "compiles" by copying the fake
  // model; a spec containing "frob" fails with a diagnostic.
  std::string saec = dir.file("saec"), log = dir.file("saec.log");
  writeFile(saec, "#!/bin/sh\n"
                  "echo \"$@\" >> " +
                      q(log) +
                      "\n"
                      "if grep -q frob \"$1\"; then\n"
                      "  echo \"$1:3:5: error: unknown operator 'frob'\" >&2\n"
                      "  exit 1\n"
                      "fi\n"
                      "cp " +
                      q(SAE_FAKE_TOPK) + " \"$3\"\n");
  ::chmod(saec.c_str(), 0755);
  std::string spec = dir.file("tiny.sae");
  writeFile(spec, "sae tiny { }\n");
  std::string env =
      "SAEC=" + q(saec) + " XDG_CACHE_HOME=" + q(dir.file("cache"));
  auto trainSpec = [&](const std::string &flags) {
    return run(env + " " + q(SAE_TOOL) + " train " + q(spec) + " --data " +
                   q(data) + " --log-every 0 --steps 2 --out " +
                   q(dir.file("c")) + " " + flags,
               dir);
  };
  auto calls = [&] {
    std::string text = readFile(log);
    return std::count(text.begin(), text.end(), '\n');
  };
  RunResult first = trainSpec("-D n=8 -Dk=2");
  ASSERT_EQ(first.exitCode, 0) << first.err;
  EXPECT_EQ(calls(), 1);
  EXPECT_TRUE(contains(readFile(log),
                       spec + " -o " + dir.file("cache") + "/saec/libtiny-"))
      << readFile(log);
  EXPECT_TRUE(contains(readFile(log), " -Dn=8 -Dk=2\n")) << readFile(log);
  EXPECT_TRUE(contains(first.err, "sae train: compiling " + spec));
  std::string library = state(dir.file("c"))["library"];
  EXPECT_EQ(library.rfind(dir.file("cache") + "/saec/libtiny-", 0), 0u)
      << library;
  EXPECT_TRUE(exists(library));

  // Cached: the same spec and overrides do not run saec again.
  ASSERT_EQ(trainSpec("-D n=8 -Dk=2").exitCode, 0);
  EXPECT_EQ(calls(), 1);
  // Other overrides, another spec text, or a new saec: compiled again.
  ASSERT_EQ(trainSpec("-D n=16 -Dk=2").exitCode, 0);
  EXPECT_EQ(calls(), 2);
  writeFile(spec, "sae tiny { } // changed\n");
  ASSERT_EQ(trainSpec("-D n=16 -Dk=2").exitCode, 0);
  EXPECT_EQ(calls(), 3);
  writeFile(saec, readFile(saec) + "# rebuilt\n");
  ASSERT_EQ(trainSpec("-D n=16 -Dk=2").exitCode, 0);
  EXPECT_EQ(calls(), 4);

  // A failing compile shows saec's diagnostics.
  writeFile(spec, "sae tiny { frob }\n");
  RunResult failed = trainSpec("");
  EXPECT_EQ(failed.exitCode, 1);
  EXPECT_TRUE(contains(failed.err, "sae: error: saec failed to compile " +
                                       spec + " (" + saec +
                                       " exited with status 1):\n" + spec +
                                       ":3:5: error: unknown operator 'frob'"))
      << failed.err;
  for (const auto &entry :
       std::filesystem::directory_iterator(dir.file("cache") + "/saec"))
    EXPECT_EQ(entry.path().string().find(".tmp-"), std::string::npos)
        << entry.path();

  RunResult missingSpec =
      run(env + " " + q(SAE_TOOL) + " train " + q(dir.file("nope.sae")) +
              " --data " + q(data) + " --out " + q(dir.file("c")),
          dir);
  EXPECT_EQ(missingSpec.exitCode, 1);
  EXPECT_TRUE(contains(missingSpec.err, "nope.sae: cannot read the spec"))
      << missingSpec.err;

  // Without any saec.
  std::string tool = SAE_TOOL;
  if (!exists(tool.substr(0, tool.find_last_of('/') + 1) + "saec")) {
    RunResult none =
        run("PATH=/nonexistent " + q(SAE_TOOL) + " train " + q(spec) +
                " --data " + q(data) + " --out " + q(dir.file("c")),
            dir);
    EXPECT_EQ(none.exitCode, 1);
    EXPECT_TRUE(contains(none.err, "saec was not found")) << none.err;
  }
}

} // namespace
