//===- TestUtil.h - Helpers shared by the runtime unit tests --------------===//
//
// Temporary directories, file helpers, running the `sae` tool, finding a
// Python with NumPy, RAII guards for runtime objects, and a C++ reference
// of the fake model (fake_model.c) to check results against.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_TEST_UNIT_RUNTIME_TESTUTIL_H
#define SAE_TEST_UNIT_RUNTIME_TESTUTIL_H

#include "sae/runtime/runtime.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

/// Runtime test hook (status.cpp): arms comma-separated fault points.
extern "C" void sae_rt_testing_set_fault(const char *points);

namespace saetest {

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
public:
  TempDir() {
    const char *base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base && *base ? base : "/tmp") + "/sae-unit-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (!mkdtemp(buffer.data()))
      ADD_FAILURE() << "mkdtemp failed";
    root = buffer.data();
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(root, ignored);
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;

  const std::string &path() const { return root; }
  std::string file(const std::string &name) const { return root + "/" + name; }
  /// Names of the entries in the directory, sorted.
  std::vector<std::string> list() const {
    std::vector<std::string> names;
    for (const auto &entry : std::filesystem::directory_iterator(root))
      names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

private:
  std::string root;
};

inline std::string readFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline void writeFile(const std::string &path, const std::string &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline bool exists(const std::string &path) {
  return std::filesystem::exists(path);
}

inline bool contains(const std::string &text, const std::string &fragment) {
  return text.find(fragment) != std::string::npos;
}

/// Checks a status and that the last error contains every fragment.
inline void expectError(sae_rt_status got, sae_rt_status want,
                        std::initializer_list<std::string> fragments) {
  EXPECT_EQ(got, want) << "last error: " << sae_rt_last_error();
  std::string message = sae_rt_last_error();
  for (const std::string &fragment : fragments)
    EXPECT_TRUE(contains(message, fragment))
        << "message '" << message << "' lacks '" << fragment << "'";
}

inline std::string shellQuote(const std::string &text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'')
      quoted += "'\\''";
    else
      quoted += c;
  }
  return quoted + "'";
}

struct RunResult {
  int exitCode = -1;
  std::string out;
  std::string err;
};

/// Runs a shell command, capturing stdout and stderr through files in `dir`.
inline RunResult run(const std::string &command, const TempDir &dir) {
  std::string outPath = dir.file(".stdout"), errPath = dir.file(".stderr");
  std::string full =
      command + " >" + shellQuote(outPath) + " 2>" + shellQuote(errPath);
  int status = std::system(full.c_str());
  RunResult result;
  if (status != -1 && WIFEXITED(status))
    result.exitCode = WEXITSTATUS(status);
  result.out = readFile(outPath);
  result.err = readFile(errPath);
  std::remove(outPath.c_str());
  std::remove(errPath.c_str());
  return result;
}

/// Runs the `sae` tool with `arguments` (already shell-quoted as needed).
inline RunResult runSae(const std::string &arguments, const TempDir &dir) {
  return run(shellQuote(SAE_TOOL) + " " + arguments, dir);
}

/// A Python 3 interpreter that can import NumPy, or "" if there is none.
/// $SAE_TEST_PYTHON wins when set.
inline std::string pythonWithNumpy() {
  static const std::string found = [] {
    std::vector<std::string> candidates;
    if (const char *env = std::getenv("SAE_TEST_PYTHON"))
      candidates.push_back(env);
    candidates.push_back("python3");
    candidates.push_back("/usr/bin/python3");
    for (const std::string &candidate : candidates) {
      std::string probe =
          shellQuote(candidate) + " -c 'import numpy' >/dev/null 2>&1";
      int status = std::system(probe.c_str());
      if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return candidate;
    }
    return std::string();
  }();
  return found;
}

/// Builds a .npy file by hand: preamble for `major`, then `dict` padded with
/// spaces and a newline, then `payload`.
inline std::string npyBytes(const std::string &dict, const std::string &payload,
                            int major = 1) {
  std::string header = dict;
  size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0)
    header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  uint32_t length = static_cast<uint32_t>(header.size());
  out += static_cast<char>(length & 0xff);
  out += static_cast<char>((length >> 8) & 0xff);
  if (major != 1) {
    out += static_cast<char>((length >> 16) & 0xff);
    out += static_cast<char>((length >> 24) & 0xff);
  }
  return out + header + payload;
}

template <typename T> std::string bytesOf(const std::vector<T> &values) {
  return std::string(reinterpret_cast<const char *>(values.data()),
                     values.size() * sizeof(T));
}

/// An sae_rt_array freed on scope exit.
struct ArrayGuard {
  sae_rt_array array{};
  ~ArrayGuard() { sae_rt_array_free(&array); }
  sae_rt_array *get() { return &array; }
  sae_rt_array *operator->() { return &array; }
  template <typename T> const T *as() const {
    return static_cast<const T *>(array.data);
  }
};

/// Borrowed (non-owning) array description for writers.
template <typename T>
sae_rt_array borrow(sae_rt_dtype dtype, std::vector<int64_t> shape,
                    std::vector<T> &data) {
  sae_rt_array array{};
  array.dtype = dtype;
  array.ndim = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i)
    array.shape[i] = shape[i];
  array.data = data.data();
  return array;
}

struct ModelGuard {
  sae_rt_model *model = nullptr;
  ~ModelGuard() { sae_rt_model_close(model); }
};

struct ParamsGuard {
  float **params = nullptr;
  ~ParamsGuard() { sae_rt_params_free(params); }
};

//===----------------------------------------------------------------------===//
// The fake model, recomputed (see fake_model.c)
//===----------------------------------------------------------------------===//

constexpr int kD = 4, kN = 8, kK = 2;
/// Width of the auxiliary input g of the FAKE_AUX variant.
constexpr int kG = 3;

struct FakeParams {
  std::vector<float> wEnc = std::vector<float>(kD * kN);
  std::vector<float> bEnc = std::vector<float>(kN);
  std::vector<float> wDec = std::vector<float>(kN * kD);
  std::vector<float> bDec = std::vector<float>(kD);

  static FakeParams from(float *const *params) {
    FakeParams p;
    std::memcpy(p.wEnc.data(), params[0], sizeof(float) * kD * kN);
    std::memcpy(p.bEnc.data(), params[1], sizeof(float) * kN);
    std::memcpy(p.wDec.data(), params[2], sizeof(float) * kN * kD);
    std::memcpy(p.bDec.data(), params[3], sizeof(float) * kD);
    return p;
  }
};

/// Pre-activations of one row; `g` (kG values) for the FAKE_AUX variant.
inline void referencePre(const FakeParams &p, const float *x, float *pre,
                         const float *g = nullptr) {
  for (int j = 0; j < kN; ++j) {
    float sum = p.bEnc[j];
    for (int i = 0; i < kD; ++i)
      sum += (x[i] - p.bDec[i]) * p.wEnc[i * kN + j];
    if (g)
      sum += g[j % kG];
    pre[j] = sum;
  }
}

/// TopK (ties: lower index first) then ReLU, as values/indices.
inline void referenceTopk(const FakeParams &p, const float *x, float *values,
                          int32_t *indices, const float *g = nullptr) {
  float pre[kN];
  referencePre(p, x, pre, g);
  bool taken[kN] = {};
  for (int t = 0; t < kK; ++t) {
    int best = -1;
    for (int j = 0; j < kN; ++j)
      if (!taken[j] && (best < 0 || pre[j] > pre[best]))
        best = j;
    taken[best] = true;
    values[t] = pre[best] > 0.0f ? pre[best] : 0.0f;
    indices[t] = best;
  }
}

inline void referenceEncodeDense(const FakeParams &p, const float *x,
                                 float *codes, bool sparseModel,
                                 const float *g = nullptr) {
  for (int j = 0; j < kN; ++j)
    codes[j] = 0.0f;
  if (sparseModel) {
    float values[kK];
    int32_t indices[kK];
    referenceTopk(p, x, values, indices, g);
    for (int t = 0; t < kK; ++t)
      codes[indices[t]] = values[t];
  } else {
    float pre[kN];
    referencePre(p, x, pre, g);
    for (int j = 0; j < kN; ++j)
      codes[j] = pre[j] > 0.0f ? pre[j] : 0.0f;
  }
}

/// Sparse codes of layout "batch": entries sorted by row.
struct BatchCodes {
  std::vector<float> values;
  std::vector<int32_t> indices;
  std::vector<int32_t> rows;
};

/// BatchTopK over `rows` rows of x (the FAKE_BATCH variant): the rows*kK
/// largest pre-activations of the batch (ties: lower row*kN + j first),
/// ReLU, listed by row, then by decreasing value. Row numbers start at
/// `firstRow`.
inline BatchCodes referenceBatchTopk(const FakeParams &p, const float *x,
                                     int rows, int firstRow = 0) {
  std::vector<float> pre(static_cast<size_t>(rows) * kN);
  for (int r = 0; r < rows; ++r)
    referencePre(p, x + r * kD, &pre[static_cast<size_t>(r) * kN]);
  std::vector<bool> taken(pre.size());
  std::vector<size_t> picked;
  for (int t = 0; t < rows * kK; ++t) {
    size_t best = pre.size();
    for (size_t c = 0; c < pre.size(); ++c)
      if (!taken[c] && (best == pre.size() || pre[c] > pre[best]))
        best = c;
    taken[best] = true;
    picked.push_back(best);
  }
  // Stable by row keeps decreasing values within a row.
  std::stable_sort(picked.begin(), picked.end(),
                   [](size_t a, size_t b) { return a / kN < b / kN; });
  BatchCodes codes;
  for (size_t cell : picked) {
    codes.values.push_back(pre[cell] > 0.0f ? pre[cell] : 0.0f);
    codes.indices.push_back(static_cast<int32_t>(cell % kN));
    codes.rows.push_back(static_cast<int32_t>(cell / kN) + firstRow);
  }
  return codes;
}

/// Dense codes [rows, kN] of batch codes whose rows start at `firstRow`.
inline std::vector<float> densify(const BatchCodes &codes, int rows,
                                  int firstRow = 0) {
  std::vector<float> dense(static_cast<size_t>(rows) * kN, 0.0f);
  for (size_t i = 0; i < codes.values.size(); ++i)
    dense[static_cast<size_t>(codes.rows[i] - firstRow) * kN +
          codes.indices[i]] += codes.values[i];
  return dense;
}

inline void referenceDecode(const FakeParams &p, const float *codes,
                            float *xhat) {
  for (int i = 0; i < kD; ++i) {
    float sum = p.bDec[i];
    for (int j = 0; j < kN; ++j)
      sum += codes[j] * p.wDec[j * kD + i];
    xhat[i] = sum;
  }
}

/// The fake model's first uniform draw from `seed` (splitmix64, top 24
/// bits), as its stochastic forward takes for the "noise" term.
inline double fakeNoise(uint64_t seed) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) / 16777216.0f;
}

/// Sets an environment variable for the scope (unset again after).
class ScopedEnv {
public:
  ScopedEnv(const char *name, const std::string &value) : name(name) {
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { unsetenv(name); }
  ScopedEnv(const ScopedEnv &) = delete;
  ScopedEnv &operator=(const ScopedEnv &) = delete;

private:
  const char *name;
};

/// Deterministic test inputs: rows x kD values in [-2, 2].
inline std::vector<float> sampleInputs(int rows, uint32_t seed = 1) {
  std::vector<float> x(static_cast<size_t>(rows) * kD);
  uint32_t state = seed;
  for (float &value : x) {
    state = state * 1664525u + 1013904223u;
    value = static_cast<float>(state >> 8) / 16777216.0f * 4.0f - 2.0f;
  }
  return x;
}

} // namespace saetest

#endif // SAE_TEST_UNIT_RUNTIME_TESTUTIL_H
