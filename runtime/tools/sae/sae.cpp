//===- sae.cpp - The `sae` command-line tool ------------------------------===//
//
// `sae` runs models compiled by saec through libsae_runtime: it shows what a
// library contains (info), creates checkpoints (init), encodes, decodes and
// reconstructs data in bounded-memory chunks (encode, decode, forward),
// evaluates a checkpoint (eval), generates synthetic data with a known
// dictionary (synth) and trains models, compiling a spec on the fly when
// given one (train). Usage errors exit with 2, runtime errors with 1.
//
//===----------------------------------------------------------------------===//

#include "sae/runtime/runtime.h"

#include <malloc.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

/// A mistake in the command line (exit status 2).
struct UsageError {
  std::string command;
  std::string message;
};

/// A failure while running a command (exit status 1).
struct ToolError {
  std::string message;
};

[[noreturn]] void fail(std::string message) {
  throw ToolError{std::move(message)};
}

void check(sae_rt_status status) {
  if (status != SAE_RT_OK)
    fail(sae_rt_last_error());
}

//===----------------------------------------------------------------------===//
// Help
//===----------------------------------------------------------------------===//

const char *const kMainHelp =
    "sae - run sparse autoencoders compiled by saec\n"
    "\n"
    "usage: sae <command> [options]\n"
    "       sae --help | --version\n"
    "\n"
    "commands:\n"
    "  info     show what a compiled model library contains\n"
    "  init     initialise a model's parameters and save a checkpoint\n"
    "  encode   encode input rows into codes (.npy or .npz)\n"
    "  decode   decode codes (.npy or .npz) into reconstructions (.npy)\n"
    "  forward  reconstruct inputs and report the loss (and its terms),\n"
    "           MSE, FVU and L0\n"
    "  eval     evaluate a checkpoint on data: reconstruction (MSE, FVU,\n"
    "           cosine, norm ratio), sparsity (L0, dead and dense latents)\n"
    "           and, against a ground-truth dictionary, feature recovery\n"
    "  synth    generate synthetic sparse data and its ground-truth\n"
    "           dictionary\n"
    "  train    train a model (a compiled library or a .sae spec) with Adam,\n"
    "           writing resumable checkpoints\n"
    "\n"
    "Rows (inputs X) are read from float32 or float16 .npy files [B, d],\n"
    "from a named F32/F16/BF16 tensor [B, d] of a safetensors file\n"
    "(--tensor NAME), both memory-mapped, or from IDX files.\n"
    "\n"
    "Run 'sae <command> --help' for the options of a command.\n"
    "Exit status: 0 on success, 1 on errors, 2 on usage errors.\n";

const char *const kInfoHelp =
    "usage: sae info LIB.so [--json]\n"
    "\n"
    "Shows the model compiled into LIB.so: name, ABI version, inputs (the\n"
    "first is x, the one reconstructed; others are auxiliary, see --grad),\n"
    "latents, codes (kind, k and layout), encoder and its hyperparameters,\n"
    "loss and its named terms, whether 'sae init' needs a data sample,\n"
    "whether the forward pass is stochastic, parameters (shape,\n"
    "initialiser, and '(state)' for those not trained by Adam), the\n"
    "training defaults of 'sae train' (the spec's train section), the\n"
    "target CPU and the entry points.\n"
    "\n"
    "options:\n"
    "  --json       print the library's model description (JSON), indented\n"
    "  -h, --help   show this help\n";

const char *const kInitHelp =
    "usage: sae init LIB.so --out CKPT_DIR [--seed S] [--data X.npy]\n"
    "                [--tensor NAME] [--data-rows N]\n"
    "\n"
    "Initialises every parameter with the model's initialisers and saves a\n"
    "checkpoint (CKPT_DIR/sae_weights.safetensors and CKPT_DIR/cfg.json).\n"
    "The checkpoint is written atomically; an existing checkpoint at\n"
    "CKPT_DIR is replaced.\n"
    "\n"
    "Models with data-dependent initialisers (data_mean, geometric_median;\n"
    "'sae info' shows 'init data') need a sample of their input x: give it\n"
    "with --data, a .npy, safetensors or IDX file read like the input of\n"
    "'sae encode'.\n"
    "Other models accept --data and ignore it.\n"
    "\n"
    "options:\n"
    "  --out DIR      checkpoint directory to write (required)\n"
    "  --seed S       random seed, an unsigned 64-bit integer (default 0)\n"
    "  --data X       data sample for data-dependent initialisers, .npy,\n"
    "                 safetensors or IDX (required by such models, ignored\n"
    "                 by others)\n"
    "  --tensor NAME  the tensor of --data to read, when it is a\n"
    "                 safetensors file\n"
    "  --data-rows N  use the first N rows of --data (default 4096; all of\n"
    "                 them if the file has fewer)\n"
    "  -h, --help     show this help\n";

const char *const kEncodeHelp =
    "usage: sae encode LIB.so --checkpoint DIR --input X.npy --output OUT\n"
    "                  [--tensor NAME] [--grad G.npy] [--grad-tensor NAME]\n"
    "                  [--sparse] [--batch-size N] [--threads N]\n"
    "\n"
    "Encodes the rows of X.npy, a float32 or float16 [B, d] array (or [d],\n"
    "one row) whose d is the model's input dimension, of a 2-D tensor\n"
    "[B, d] of a safetensors file (F32, F16 or BF16; --tensor names it), or\n"
    "of an IDX file such as\n"
    "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz (plain or\n"
    "gzip; names ending in -ubyte[.gz] or .idx[.gz]; pixels scaled to\n"
    "[0, 1], each image one row). .npy and safetensors files are\n"
    "memory-mapped and converted to float32 chunk by chunk, so they may be\n"
    "larger than memory. Writes dense codes [B, n] as\n"
    "float32 .npy, or with --sparse an .npz of sparse codes. The output is\n"
    "written atomically.\n"
    "\n"
    "Sparse codes of layout 'rows' (k per row): 'values' [B, k] float32 and\n"
    "'indices' [B, k] int32. Sparse codes of layout 'batch' (batch_topk and\n"
    "similar; 'sae info' shows the layout): B*k entries in all, a variable\n"
    "number per row: 'values' [B*k] float32, 'indices' [B*k] int32 and\n"
    "'rows' [B*k] int32 (the row of X of each entry), sorted by row.\n"
    "\n"
    "Batch-level selection: each chunk of --batch-size rows is one batch\n"
    "for the model, so a 'batch'-layout model picks its B*k entries within\n"
    "each chunk, and its codes depend on --batch-size.\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input X         input rows, .npy, safetensors or IDX (required)\n"
    "  --tensor NAME     the tensor of --input to read (safetensors only)\n"
    "  --output OUT      output file (required)\n"
    "  --grad G          the model's auxiliary input (e.g. the downstream\n"
    "                    gradient of grad_topk), .npy, safetensors or IDX,\n"
    "                    one row per row of --input; required by models with\n"
    "                    an auxiliary input, refused by the others\n"
    "  --grad-tensor NAME  the tensor of --grad to read (safetensors only)\n"
    "  --sparse          write sparse codes (models with sparse codes only)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  --threads N       threads for the model's parallel products (default:\n"
    "                    all cores, or OMP_NUM_THREADS); results do not\n"
    "                    depend on it\n"
    "  -h, --help        show this help\n";

const char *const kDecodeHelp =
    "usage: sae decode LIB.so --checkpoint DIR --input Z.npy|Z.npz\n"
    "                  --output XHAT.npy [--tensor NAME] [--batch-size N]\n"
    "                  [--threads N]\n"
    "\n"
    "Decodes codes into reconstructions XHAT [B, d] (float32 .npy). The\n"
    "input is one of\n"
    "  - dense codes, a float32 or float16 [B, n] .npy, or a 2-D tensor of a\n"
    "    safetensors file named by --tensor;\n"
    "  - sparse codes of layout 'rows', an .npz with 'values' [B, k] float32\n"
    "    and 'indices' [B, k] int32;\n"
    "  - sparse codes of layout 'batch', an .npz with 'values' [N] float32,\n"
    "    'indices' [N] int32 and 'rows' [N] int32 sorted by row. B is N / k\n"
    "    for a model with sparse codes (N must be a multiple of its k), the\n"
    "    last row + 1 for a dense model;\n"
    "as written by 'sae encode [--sparse]'. Every index must lie in [0, n)\n"
    "and every row in [0, B). Sparse codes are decoded with the model's\n"
    "sparse decoder of their layout when it has one, else by scattering\n"
    "them into dense codes (repeated indices add up).\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input Z         codes to decode (required)\n"
    "  --tensor NAME     the tensor of dense codes to read from a\n"
    "                    safetensors --input\n"
    "  --output XHAT.npy output file (required)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  --threads N       threads for the model's parallel products (default:\n"
    "                    all cores, or OMP_NUM_THREADS); results do not\n"
    "                    depend on it\n"
    "  -h, --help        show this help\n";

const char *const kForwardHelp =
    "usage: sae forward LIB.so --checkpoint DIR --input X.npy\n"
    "                   [--tensor NAME] [--grad G.npy] [--grad-tensor NAME]\n"
    "                   [--output XHAT.npy] [--seed S] [--batch-size N]\n"
    "                   [--threads N]\n"
    "\n"
    "Runs the model's forward pass (its training form: batch-level\n"
    "selection per chunk of --batch-size rows, sampling when stochastic)\n"
    "over X (a .npy, safetensors or IDX input as for 'sae encode')\n"
    "and prints one JSON object to stdout:\n"
    "  {\"loss\": ..., \"terms\": {\"NAME\": ..., ...}, \"mse\": ...,\n"
    "   \"fvu\": ..., \"l0\": ...}\n"
    "loss:  the model's own total loss, averaged over chunks weighted by\n"
    "       rows;\n"
    "terms: the model's named loss terms ('sae info' lists them), averaged\n"
    "       the same way ({} when it has none);\n"
    "mse:   mean over rows of sum_d (xhat - x)^2;\n"
    "fvu:   sum ||xhat - x||^2 / sum ||x - mean(x)||^2 (null if x is "
    "constant);\n"
    "l0:    mean number of nonzero codes per row (from the encoder).\n"
    "All statistics are accumulated in double precision.\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input X         input rows, .npy, safetensors or IDX (required)\n"
    "  --tensor NAME     the tensor of --input to read (safetensors only)\n"
    "  --grad G          the model's auxiliary input, as for 'sae encode'\n"
    "  --grad-tensor NAME  the tensor of --grad to read (safetensors only)\n"
    "  --output XHAT.npy also write the reconstructions\n"
    "  --seed S          seed of stochastic models, an unsigned 64-bit\n"
    "                    integer (default 0); chunk i (from 0) gets S + i\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  --threads N       threads for the model's parallel products (default:\n"
    "                    all cores, or OMP_NUM_THREADS); results do not\n"
    "                    depend on it\n"
    "  -h, --help        show this help\n";

const char *const kEvalHelp =
    "usage: sae eval LIB.so --checkpoint DIR --data X [--tensor NAME]\n"
    "                [--grad G] [--grad-tensor NAME] [--batch-size N]\n"
    "                [--threads N]\n"
    "                [--dense-threshold T] [--true-dict TRUE.npy]\n"
    "\n"
    "Evaluates a checkpoint on the rows of X (a .npy, safetensors or IDX\n"
    "input as for 'sae encode') and prints one JSON object to stdout:\n"
    "  {\"rows\": B, \"latents\": n, \"mse\": ..., \"fvu\": ...,\n"
    "   \"explained_variance\": ..., \"l0\": ..., \"dead_latents\": ...,\n"
    "   \"dead_fraction\": ..., \"dense_latents\": ...,\n"
    "   \"dense_threshold\": T, \"cosine\": ..., \"norm_ratio\": ...,\n"
    "   \"feature_recovery\": {\"mean_max_cos\": ..., \"mcc\": ...,\n"
    "                        \"features\": F} or null}\n"
    "Reconstructions xhat come from the forward pass (the training form,\n"
    "as 'sae forward --seed 0' computes it: chunk i of --batch-size rows is\n"
    "one batch and gets seed i); codes come from the encoder entry points\n"
    "(the inference form: the sparse encoder of the model's layout, else\n"
    "the dense one).\n"
    "  mse:          mean over rows of sum_d (xhat - x)^2;\n"
    "  fvu:          sum ||xhat - x||^2 / sum ||x - mean(x)||^2 (null if x\n"
    "                is constant); explained_variance = 1 - fvu;\n"
    "  l0:           mean number of nonzero codes per row;\n"
    "  dead_latents: latents that are zero on every row; dead_fraction =\n"
    "                dead_latents / n;\n"
    "  dense_latents: latents nonzero on more than T of the rows;\n"
    "  cosine:       mean over rows of cos(x, xhat) (0 for a row where x or\n"
    "                xhat is zero);\n"
    "  norm_ratio:   mean over rows with x != 0 of ||xhat|| / ||x||;\n"
    "  feature_recovery (with --true-dict): C[f][i] = |cos(true_f,\n"
    "                W_dec[i])| between the F ground-truth features and the\n"
    "                rows of the model's decoder parameter W_dec [n, d];\n"
    "                mean_max_cos = mean over f of max over i of C[f][i];\n"
    "                mcc = mean of C over the min(F, n) pairs of a\n"
    "                maximum-weight one-to-one matching (Hungarian\n"
    "                algorithm, O(n^3), F*n doubles of memory).\n"
    "All statistics are accumulated over the chunks in double precision.\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR     checkpoint to load the parameters from\n"
    "                       (required)\n"
    "  --data X             rows to evaluate on, .npy (float32 or float16),\n"
    "                       safetensors or IDX (required)\n"
    "  --tensor NAME        the tensor of --data to read (safetensors only)\n"
    "  --grad G             the model's auxiliary input, as for 'sae encode'\n"
    "  --grad-tensor NAME   the tensor of --grad to read (safetensors only)\n"
    "  --batch-size N       rows per call into the model (default 1024)\n"
    "  --dense-threshold T  fraction of the rows above which a latent counts\n"
    "                       as dense, in [0, 1] (default 0.1)\n"
    "  --true-dict TRUE.npy the ground-truth dictionary, float32 (or\n"
    "                       float16) [F, d], one feature per row, as written\n"
    "                       by 'sae synth --dict'; needs a model parameter\n"
    "                       W_dec [n, d]\n"
    "  --threads N          threads for the model's parallel products (default:\n"
    "                       all cores, or OMP_NUM_THREADS); results do not\n"
    "                       depend on it\n"
    "  -h, --help           show this help\n";

const char *const kSynthHelp =
    "usage: sae synth --d D --features F --active A --out X.npy\n"
    "                 --dict TRUE.npy [--rows N] [--noise S] [--seed S]\n"
    "\n"
    "Generates synthetic data with a known sparse structure (the data model\n"
    "of the Group Bias Adaptation paper) and writes two float32 .npy files,\n"
    "each atomically:\n"
    "  TRUE.npy [F, D]  the dictionary: i.i.d. standard normal entries, each\n"
    "                   row scaled to unit norm;\n"
    "  X.npy    [N, D]  each row the sum of A distinct dictionary rows,\n"
    "                   picked uniformly at random, with coefficients drawn\n"
    "                   uniformly from [0.5, 1.5), plus i.i.d. N(0, S^2)\n"
    "                   noise.\n"
    "X is generated and written in chunks (it may be larger than memory).\n"
    "\n"
    "Randomness is splitmix64 (Weyl step 0x9e3779b97f4a7c15 and its\n"
    "finaliser mix64); stream j of seed S starts from the state\n"
    "mix64(S ^ mix64(j)). Stream 0 draws the dictionary (F*D normals, row\n"
    "by row); stream 1 + r draws row r of X: A features by Floyd's\n"
    "algorithm (uniform integers by rejection), sorted, then one\n"
    "coefficient per feature in that order (0.5 + the top 53 bits / 2^53),\n"
    "then D noise normals. Normals are Box-Muller pairs (cos, then sin) of\n"
    "two uniforms. The same options give the same files, and row r does not\n"
    "depend on N.\n"
    "\n"
    "options:\n"
    "  --d D           dimension of the rows (required)\n"
    "  --features F    number of dictionary rows (required; F * D at most\n"
    "                  2^32, the dictionary is held in memory)\n"
    "  --active A      features per row of X, 1 <= A <= F (required)\n"
    "  --out X.npy     data file to write (required)\n"
    "  --dict TRUE.npy dictionary file to write (required)\n"
    "  --rows N        rows of X (default 65536)\n"
    "  --noise S       standard deviation of the noise, >= 0 (default 0.01)\n"
    "  --seed S        random seed, an unsigned 64-bit integer (default 0)\n"
    "  -h, --help      show this help\n";

//===----------------------------------------------------------------------===//
// Command-line parsing
//===----------------------------------------------------------------------===//

struct OptionSpec {
  const char *name; ///< Without the leading "--" ("D" is the short -D).
  bool takesValue;
  bool repeatable = false; ///< May be given more than once (see Args::all).
};

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::map<std::string, std::vector<std::string>> lists;

  bool has(const std::string &name) const { return values.count(name) != 0; }

  /// Every value of a repeatable option, in command-line order.
  std::vector<std::string> all(const std::string &name) const {
    auto it = lists.find(name);
    return it == lists.end() ? std::vector<std::string>() : it->second;
  }

  std::string get(const std::string &name) const {
    auto it = values.find(name);
    return it == values.end() ? std::string() : it->second;
  }

  std::string required(const std::string &name) const {
    if (!has(name))
      throw UsageError{command, "missing required option --" + name};
    return get(name);
  }

  /// The single positional argument LIB.so.
  std::string library() const {
    if (positional.empty())
      throw UsageError{command, "missing the model library (LIB.so)"};
    if (positional.size() > 1)
      throw UsageError{command, "unexpected argument '" + positional[1] + "'"};
    return positional[0];
  }
};

/// Parses argv[first..] for `command`. Returns false if help was printed.
bool parseArgs(const std::string &command, const char *help, int argc,
               char **argv, int first, const std::vector<OptionSpec> &specs,
               Args &args) {
  args.command = command;
  bool optionsDone = false;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (optionsDone || arg.size() < 2 || arg[0] != '-') {
      args.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      optionsDone = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      std::fputs(help, stdout);
      return false;
    }
    bool shortD =
        arg.compare(0, 2, "-D") == 0 &&
        std::any_of(specs.begin(), specs.end(), [](const OptionSpec &spec) {
          return std::strcmp(spec.name, "D") == 0;
        });
    if (arg.compare(0, 2, "--") != 0 && !shortD)
      throw UsageError{command, "unknown option '" + arg + "'"};
    std::string name = arg.substr(2), value;
    bool inlineValue = false;
    if (shortD) {
      // -D name=value or -Dname=value.
      name = "D";
      value = arg.substr(2);
      inlineValue = !value.empty();
    } else {
      size_t equals = name.find('=');
      if (equals != std::string::npos) {
        value = name.substr(equals + 1);
        name = name.substr(0, equals);
        inlineValue = true;
      }
    }
    const OptionSpec *spec = nullptr;
    for (const OptionSpec &candidate : specs)
      if (name == candidate.name && (name != "D" || shortD))
        spec = &candidate;
    if (!spec)
      throw UsageError{command, "unknown option '--" + name + "'"};
    std::string shown = shortD ? "-D" : "--" + name;
    if (spec->takesValue) {
      if (!inlineValue) {
        if (i + 1 >= argc)
          throw UsageError{command, "option " + shown + " needs a value"};
        value = argv[++i];
      }
      if (value.empty())
        throw UsageError{command, "option " + shown + " needs a value"};
    } else if (inlineValue) {
      throw UsageError{command, "option " + shown + " takes no value"};
    }
    if (spec->repeatable) {
      args.lists[name].push_back(value);
      args.values[name] = value;
      continue;
    }
    if (args.has(name))
      throw UsageError{command, "option --" + name + " given twice"};
    args.values[name] = value;
  }
  return true;
}

uint64_t parseUnsigned(const Args &args, const std::string &name,
                       uint64_t fallback) {
  if (!args.has(name))
    return fallback;
  std::string text = args.get(name);
  uint64_t value = 0;
  auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (result.ec != std::errc() || result.ptr != text.data() + text.size())
    throw UsageError{args.command, "--" + name +
                                       " expects an unsigned "
                                       "integer, got '" +
                                       text + "'"};
  return value;
}

/// A count of rows, --NAME, between 1 and 2^40.
int64_t parseRowCount(const Args &args, const std::string &name,
                      uint64_t fallback) {
  uint64_t value = parseUnsigned(args, name, fallback);
  if (value == 0 || value > (uint64_t(1) << 40))
    throw UsageError{args.command, "--" + name + " must be between 1 and 2^40"};
  return static_cast<int64_t>(value);
}

int64_t parseBatchSize(const Args &args) {
  return parseRowCount(args, "batch-size", 1024);
}

/// A finite real number given by --NAME.
double parseDouble(const Args &args, const std::string &name, double fallback) {
  if (!args.has(name))
    return fallback;
  std::string text = args.get(name);
  char *end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE ||
      !std::isfinite(value) || std::isspace(static_cast<unsigned char>(text[0])))
    throw UsageError{args.command,
                     "--" + name + " expects a number, got '" + text + "'"};
  return value;
}

/// --grad-tensor names a tensor of --grad: it needs it.
void checkGradTensor(const Args &args) {
  if (args.has("grad-tensor") && !args.has("grad"))
    throw UsageError{args.command, "--grad-tensor needs --grad"};
}

//===----------------------------------------------------------------------===//
// RAII handles and helpers
//===----------------------------------------------------------------------===//

struct ModelCloser {
  void operator()(sae_rt_model *model) const { sae_rt_model_close(model); }
};
struct WriterCloser {
  void operator()(sae_rt_npy_writer *w) const { sae_rt_npy_writer_close(w); }
};
struct NpzCloser {
  void operator()(sae_rt_npz *npz) const { sae_rt_npz_close(npz); }
};
struct RowsCloser {
  void operator()(sae_rt_rows *rows) const { sae_rt_rows_close(rows); }
};
using ModelPtr = std::unique_ptr<sae_rt_model, ModelCloser>;
using WriterPtr = std::unique_ptr<sae_rt_npy_writer, WriterCloser>;
using NpzPtr = std::unique_ptr<sae_rt_npz, NpzCloser>;
using RowsPtr = std::unique_ptr<sae_rt_rows, RowsCloser>;

/// Owns an sae_rt_array that the runtime allocated.
struct ArrayHolder {
  ArrayHolder() = default;
  ~ArrayHolder() { sae_rt_array_free(&array); }
  ArrayHolder(const ArrayHolder &) = delete;
  ArrayHolder &operator=(const ArrayHolder &) = delete;
  sae_rt_array array{};
};

class ParamBuffers {
public:
  ParamBuffers() = default;
  ~ParamBuffers() { sae_rt_params_free(params); }
  ParamBuffers(const ParamBuffers &) = delete;
  ParamBuffers &operator=(const ParamBuffers &) = delete;
  float ***out() { return &params; }
  float *const *get() const { return params; }

private:
  float **params = nullptr;
};

/// Opens the model library; with `args`, applies --threads when given.
ModelPtr openModel(const std::string &path, const Args *args = nullptr) {
  sae_rt_model *model = nullptr;
  check(sae_rt_model_open(path.c_str(), &model));
  ModelPtr owned(model);
  if (args && args->has("threads")) {
    uint64_t threads = parseUnsigned(*args, "threads", 0);
    if (threads < 1 || threads > 4096)
      throw UsageError{args->command, "--threads must be between 1 and 4096"};
    check(sae_rt_model_set_threads(model, static_cast<int32_t>(threads)));
  }
  return owned;
}

std::string shapeText(int32_t ndim, const int64_t *shape) {
  std::string text = "[";
  for (int32_t i = 0; i < ndim; ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// rows * width elements, checked, as a vector size. `lower` names the
/// option that bounds `rows`.
size_t elements(int64_t rows, int64_t width,
                const char *lower = "--batch-size") {
  uint64_t count;
  if (rows < 0 || width < 0 ||
      __builtin_mul_overflow(static_cast<uint64_t>(rows),
                             static_cast<uint64_t>(width), &count) ||
      count > SIZE_MAX / sizeof(float))
    fail("buffer of " + std::to_string(rows) + " x " + std::to_string(width) +
         " elements is too large (lower " + lower + ")");
  return static_cast<size_t>(count);
}

/// A model with its parameters loaded from a checkpoint.
struct LoadedModel {
  ModelPtr model;
  ParamBuffers params;
};

/// Opens the model, runs `validate` on it (cheap checks that should fail
/// before a large checkpoint is read), then loads the checkpoint.
template <typename Fn>
void loadModel(LoadedModel &loaded, const Args &args, Fn validate) {
  loaded.model = openModel(args.library(), &args);
  validate(loaded.model.get());
  std::string checkpoint = args.required("checkpoint");
  check(sae_rt_params_alloc(loaded.model.get(), loaded.params.out()));
  check(sae_rt_checkpoint_load(loaded.model.get(), checkpoint.c_str(),
                               loaded.params.get()));
}

/// True for IDX files (MNIST's format, e.g. Debian's Fashion-MNIST
/// `train-images-idx3-ubyte.gz`), recognised by name.
bool isIdxPath(const std::string &path) {
  auto endsWith = [&](const char *suffix) {
    size_t n = std::strlen(suffix);
    return path.size() >= n && path.compare(path.size() - n, n, suffix) == 0;
  };
  return endsWith("-ubyte") || endsWith("-ubyte.gz") || endsWith(".idx") ||
         endsWith(".idx.gz");
}

/// A [B, width] (or [width], one row) input read in chunks of rows and
/// widened to float32: a .npy file (float32 or float16) or a named 2-D
/// tensor of a safetensors file (F32, F16 or BF16), both memory-mapped by
/// the runtime, or an IDX file (plain or gzip) read whole. `tensor` is the
/// tensor name ("" for none) and `tensorFlag` the option that gives it (""
/// where the input has no such option).
class RowInput {
public:
  RowInput(const std::string &path, const std::string &tensor,
           const std::string &tensorFlag, int64_t width,
           const std::string &what)
      : path(path), label(path), width(width) {
    if (!tensor.empty())
      label = path + ": tensor '" + tensor + "'";
    int32_t ndim;
    const int64_t *shape;
    if (isIdxPath(path)) {
      if (!tensor.empty())
        fail(path + ": is an IDX file; " + tensorFlag +
             " names a tensor of a safetensors file");
      check(sae_rt_idx_read(path.c_str(), &idx.array));
      isIdx = true;
      ndim = idx.array.ndim;
      shape = idx.array.shape;
      if (ndim != 1 && ndim != 2)
        fail(path + ": shape " + shapeText(ndim, shape) + " is not [B, " +
             std::to_string(width) + "] or [" + std::to_string(width) + "]");
    } else {
      sae_rt_rows *raw = nullptr;
      sae_rt_status status = sae_rt_rows_open(
          path.c_str(), tensor.empty() ? nullptr : tensor.c_str(), &raw);
      if (status == SAE_RT_ERR_ARG && tensor.empty() && tensorFlag.empty())
        fail(path + ": is a safetensors file, but this option reads .npy "
                    "files only");
      if (status == SAE_RT_ERR_ARG && tensor.empty())
        fail(std::string(sae_rt_last_error()) + "; give it with " +
             tensorFlag + " NAME");
      check(status);
      rows.reset(raw);
      ndim = sae_rt_rows_ndim(raw);
      shape = sae_rt_rows_shape(raw);
    }
    count = ndim == 1 ? 1 : shape[0];
    if (shape[ndim - 1] != width)
      fail(label + ": shape " + shapeText(ndim, shape) + " does not match " +
           what);
  }
  RowInput(const RowInput &) = delete;
  RowInput &operator=(const RowInput &) = delete;

  int64_t getRows() const { return count; }
  int64_t getWidth() const { return width; }
  /// The file, with the tensor for safetensors inputs.
  const std::string &getPath() const { return label; }

  /// Reads rows [first, first + n) into `dst` as float32; a NaN or
  /// infinity in them is an error naming its row and column (the model
  /// would otherwise turn it into garbage codes silently).
  void read(int64_t first, int64_t n, float *dst) {
    if (isIdx) {
      const float *src = static_cast<const float *>(idx.array.data);
      std::memcpy(dst, src + first * width,
                  static_cast<size_t>(n * width) * sizeof(float));
    } else {
      check(sae_rt_rows_read(rows.get(), first, n, dst));
    }
    int64_t values = n * width;
    for (int64_t i = 0; i < values; ++i)
      if (!std::isfinite(dst[i]))
        fail(label + ": row " + std::to_string(first + i / width) +
             ", column " + std::to_string(i % width) + " is " +
             (std::isnan(dst[i]) ? "NaN" : "infinite") +
             "; inputs must be finite");
  }

private:
  std::string path;
  std::string label;
  int64_t width;
  RowsPtr rows;
  ArrayHolder idx;
  bool isIdx = false;
  int64_t count = 0;
};

/// A float32 [rows, width] .npy output written in chunks.
class RowOutput {
public:
  RowOutput(const std::string &path, int64_t rows, int64_t width) {
    int64_t shape[2] = {rows, width};
    sae_rt_npy_writer *raw = nullptr;
    check(sae_rt_npy_writer_open(path.c_str(), SAE_RT_DTYPE_FLOAT32, 2, shape,
                                 &raw));
    writer.reset(raw);
  }
  void append(const float *data, size_t count) {
    check(sae_rt_npy_writer_append(writer.get(), data, count * sizeof(float)));
  }
  void commit() { check(sae_rt_npy_writer_commit(writer.get())); }

private:
  WriterPtr writer;
};

/// Progress on stderr for inputs of more than one chunk.
class Progress {
public:
  Progress(const char *verb, int64_t total, int64_t chunk)
      : verb(verb), total(total), enabled(total > chunk),
        tty(::isatty(STDERR_FILENO) == 1), start(Clock::now()),
        lastPrint(start) {}

  void update(int64_t done) {
    if (!enabled)
      return;
    auto now = Clock::now();
    bool last = done >= total;
    if (!last && now - lastPrint < std::chrono::milliseconds(tty ? 100 : 1000))
      return;
    lastPrint = now;
    double seconds = std::chrono::duration<double>(now - start).count();
    double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
    std::fprintf(
        stderr, "%ssae %s: %" PRId64 "/%" PRId64 " rows (%.0f rows/s)%s",
        tty ? "\r" : "", verb, done, total, rate, tty && !last ? "" : "\n");
    std::fflush(stderr);
  }

private:
  using Clock = std::chrono::steady_clock;
  const char *verb;
  int64_t total;
  bool enabled;
  bool tty;
  Clock::time_point start, lastPrint;
};

std::string formatNumber(double value) {
  if (!std::isfinite(value))
    return "null";
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

/// `text` as a JSON string literal.
std::string jsonString(const std::string &text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof(escape), "\\u%04x", c);
      out += escape;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string modelLabel(const sae_rt_model *m) {
  return "model '" + std::string(sae_rt_model_name(m)) + "'";
}

//===----------------------------------------------------------------------===//
// Model inputs: --input (x) and --grad (the auxiliary input)
//===----------------------------------------------------------------------===//

/// Checks --grad against the model's inputs before anything large is read.
/// The second input, if any, is bound to --grad: the downstream gradient is
/// the only kind of auxiliary input today.
void checkAuxiliaryInputs(const sae_rt_model *m, const Args &args) {
  size_t count = sae_rt_model_input_count(m);
  if (count > 2) {
    std::string names;
    for (size_t i = 1; i < count; ++i)
      names += (i > 1 ? ", '" : "'") +
               std::string(sae_rt_model_input_name(m, i)) + "'";
    fail(modelLabel(m) + " has " + std::to_string(count - 1) +
         " auxiliary inputs (" + names +
         "); sae can supply only one (with --grad)");
  }
  if (count == 2 && !args.has("grad"))
    fail(modelLabel(m) + " has the auxiliary input '" +
         sae_rt_model_input_name(m, 1) + "' (dim " +
         std::to_string(sae_rt_model_input_dim_at(m, 1)) +
         "); give it with --grad G.npy");
  if (count < 2 && args.has("grad"))
    fail(modelLabel(m) +
         " has no auxiliary input; --grad is only for models that take one "
         "(such as grad_topk)");
}

/// The model's inputs bound to files (x from --input, or --data for
/// 'sae eval', with --tensor; and --grad with --grad-tensor when the model
/// has an auxiliary input), read chunk by chunk into buffers that the entry
/// points take as their `inputs` array.
class ModelInputs {
public:
  ModelInputs(const sae_rt_model *m, const Args &args,
              const char *inputFlag = "input") {
    int64_t d = sae_rt_model_input_dim(m);
    files.push_back(std::make_unique<RowInput>(
        args.get(inputFlag), args.get("tensor"), "--tensor", d,
        "the model's input dimension " + std::to_string(d)));
    if (sae_rt_model_input_count(m) > 1) {
      int64_t dim = sae_rt_model_input_dim_at(m, 1);
      files.push_back(std::make_unique<RowInput>(
          args.get("grad"), args.get("grad-tensor"), "--grad-tensor", dim,
          "the dimension " + std::to_string(dim) + " of the model's input '" +
              sae_rt_model_input_name(m, 1) + "'"));
      const RowInput &x = *files[0], &aux = *files[1];
      if (aux.getRows() != x.getRows())
        fail(aux.getPath() + " has " + std::to_string(aux.getRows()) +
             " rows, but " + x.getPath() + " has " +
             std::to_string(x.getRows()) + "; --grad needs one row per row of " +
             "--" + inputFlag);
    }
    buffers.resize(files.size());
    pointers.resize(files.size(), nullptr);
  }

  int64_t getRows() const { return files[0]->getRows(); }
  /// The file (and tensor) of x.
  const std::string &getPath() const { return files[0]->getPath(); }

  /// Makes room for chunks of up to `chunk` rows.
  void allocate(int64_t chunk) {
    for (size_t i = 0; i < files.size(); ++i) {
      buffers[i].resize(elements(chunk, files[i]->getWidth()));
      pointers[i] = buffers[i].data();
    }
  }

  /// Reads rows [first, first + count) of every input (NaN/Inf checked).
  void read(int64_t first, int64_t count) {
    for (size_t i = 0; i < files.size(); ++i)
      files[i]->read(first, count, buffers[i].data());
  }

  const float *const *get() const { return pointers.data(); }
  const float *x() const { return buffers[0].data(); }

private:
  std::vector<std::unique_ptr<RowInput>> files;
  std::vector<std::vector<float>> buffers;
  std::vector<const float *> pointers;
};

//===----------------------------------------------------------------------===//
// sae info
//===----------------------------------------------------------------------===//

int runInfo(int argc, char **argv) {
  Args args;
  if (!parseArgs("info", kInfoHelp, argc, argv, 2, {{"json", false}}, args))
    return 0;
  ModelPtr model = openModel(args.library());
  const sae_rt_model *m = model.get();
  if (args.has("json")) {
    std::fputs(sae_rt_model_describe_pretty(m), stdout);
    return 0;
  }
  auto row = [](const char *label, const std::string &value) {
    std::printf("%-13s %s\n", label, value.c_str());
  };
  row("model", sae_rt_model_name(m));
  if (*sae_rt_model_source(m))
    row("source", sae_rt_model_source(m));
  row("library", sae_rt_model_path(m));
  row("ABI version", std::to_string(sae_rt_model_abi_version(m)));
  row("input dim", std::to_string(sae_rt_model_input_dim(m)));
  std::string inputs;
  for (size_t i = 0; i < sae_rt_model_input_count(m); ++i)
    inputs += std::string(i ? ", " : "") + sae_rt_model_input_name(m, i) +
              " [" + std::to_string(sae_rt_model_input_dim_at(m, i)) + "]" +
              (i ? " (auxiliary, --grad)" : "");
  row("inputs", inputs);
  row("latents", std::to_string(sae_rt_model_latents(m)));
  if (sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE) {
    bool batch = sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_BATCH;
    row("codes", "sparse, k = " + std::to_string(sae_rt_model_codes_k(m)) +
                     (batch ? ", layout batch (B*k entries per batch, a "
                              "variable number per row)"
                            : ", layout rows (k entries per row)"));
  } else {
    row("codes", "dense");
  }
  std::string encoder = *sae_rt_model_encoder_op(m)
                            ? std::string(sae_rt_model_encoder_op(m))
                            : std::string("(unspecified)");
  size_t attrs = sae_rt_model_encoder_attr_count(m);
  for (size_t i = 0; i < attrs; ++i)
    encoder += std::string(i ? ", " : " (") +
               sae_rt_model_encoder_attr_name(m, i) + " = " +
               sae_rt_model_encoder_attr_value(m, i);
  if (attrs)
    encoder += ")";
  row("encoder", encoder);
  row("loss", *sae_rt_model_loss(m) ? sae_rt_model_loss(m) : "(unspecified)");
  std::string terms;
  for (size_t i = 0; i < sae_rt_model_loss_term_count(m); ++i)
    terms += (i ? ", " : "") + std::string(sae_rt_model_loss_term_name(m, i));
  row("loss terms", terms.empty() ? "(none)" : terms);
  row("init data", sae_rt_model_init_needs_data(m)
                       ? "needed (data-dependent initialisers; sae init "
                         "--data)"
                       : "not needed");
  row("stochastic",
      sae_rt_model_stochastic(m)
          ? "yes (forward samples noise from its seed: sae forward --seed)"
          : "no");

  size_t count = sae_rt_model_param_count(m);
  row("parameters", std::to_string(count));
  size_t nameWidth = 4, shapeWidth = 5;
  for (size_t i = 0; i < count; ++i) {
    nameWidth = std::max(nameWidth, std::strlen(sae_rt_model_param_name(m, i)));
    shapeWidth = std::max(shapeWidth, shapeText(sae_rt_model_param_ndim(m, i),
                                                sae_rt_model_param_shape(m, i))
                                          .size());
  }
  for (size_t i = 0; i < count; ++i) {
    std::string shape = shapeText(sae_rt_model_param_ndim(m, i),
                                  sae_rt_model_param_shape(m, i));
    const char *init = sae_rt_model_param_init(m, i);
    std::printf("  %-*s  %-*s  float32  %s%s\n", static_cast<int>(nameWidth),
                sae_rt_model_param_name(m, i), static_cast<int>(shapeWidth),
                shape.c_str(), *init ? init : "-",
                sae_rt_model_param_trainable(m, i) ? "" : "  (state)");
  }
  const sae_rt_train_config *train = sae_rt_model_train_config(m);
  const char *unitNorm = sae_rt_model_train_unit_norm(m);
  row("train",
      std::string(sae_rt_model_has_train_config(m) ? "" : "(defaults) ") +
          "lr " + formatNumber(train->lr) + ", beta1 " +
          formatNumber(train->beta1) + ", beta2 " + formatNumber(train->beta2) +
          ", eps " + formatNumber(train->eps) + ", clip " +
          formatNumber(train->clip) + ", lr warm-up " +
          std::to_string(train->lr_warmup) + ", lr decay " +
          sae_rt_lr_decay_name(train->lr_decay) + ", sparsity warm-up " +
          std::to_string(train->sparsity_warmup) + ", batch " +
          std::to_string(train->batch) + ", normalize " +
          sae_rt_normalize_name(train->normalize) + ", unit norm " +
          (unitNorm ? unitNorm : "none"));

  std::string target = *sae_rt_model_target_triple(m)
                           ? std::string(sae_rt_model_target_triple(m))
                           : std::string("(unspecified)");
  if (*sae_rt_model_target_cpu(m))
    target += ", cpu " + std::string(sae_rt_model_target_cpu(m));
  row("target", target);
  std::string features;
  for (size_t i = 0; i < sae_rt_model_feature_count(m); ++i)
    features += (i ? ", " : "") + std::string(sae_rt_model_feature(m, i));
  row("CPU features", features.empty() ? "(none required)" : features);

  const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
  std::string entries;
  auto add = [&](bool present, const char *name) {
    if (present)
      entries += (entries.empty() ? "" : ", ") + std::string(name);
  };
  add(e->init, SAE_SYM_INIT);
  add(e->encode_dense, SAE_SYM_ENCODE_DENSE);
  add(e->encode_sparse, SAE_SYM_ENCODE_SPARSE);
  add(e->encode_batch, SAE_SYM_ENCODE_BATCH);
  add(e->decode_dense, SAE_SYM_DECODE_DENSE);
  add(e->decode_sparse, SAE_SYM_DECODE_SPARSE);
  add(e->decode_batch, SAE_SYM_DECODE_BATCH);
  add(e->forward, SAE_SYM_FORWARD);
  add(e->gradient, SAE_SYM_GRADIENT);
  add(e->train_step, SAE_SYM_TRAIN_STEP);
  row("entry points", entries);
  return 0;
}

//===----------------------------------------------------------------------===//
// sae init
//===----------------------------------------------------------------------===//

int runInit(int argc, char **argv) {
  Args args;
  if (!parseArgs(
          "init", kInitHelp, argc, argv, 2,
          {{"seed", true},
           {"out", true},
           {"data", true},
           {"tensor", true},
           {"data-rows", true}},
          args))
    return 0;
  std::string library = args.library();
  std::string out = args.required("out");
  uint64_t seed = parseUnsigned(args, "seed", 0);
  int64_t dataRows = parseRowCount(args, "data-rows", 4096);
  if (args.has("data-rows") && !args.has("data"))
    throw UsageError{args.command, "--data-rows needs --data"};
  if (args.has("tensor") && !args.has("data"))
    throw UsageError{args.command, "--tensor needs --data"};
  ModelPtr model = openModel(library);
  const sae_rt_model *m = model.get();

  // A sample of x for data-dependent initialisers; other models ignore
  // --data (it is not even opened).
  std::vector<float> sample;
  int64_t sampleRows = 0;
  if (sae_rt_model_init_needs_data(m)) {
    if (!args.has("data"))
      fail(modelLabel(m) +
           " has data-dependent initialisers; give a data sample with "
           "--data X.npy");
    int64_t d = sae_rt_model_input_dim(m);
    RowInput data(args.get("data"), args.get("tensor"), "--tensor", d,
                  "the model's input dimension " + std::to_string(d));
    sampleRows = std::min(dataRows, data.getRows());
    if (sampleRows == 0)
      fail(data.getPath() + ": the data sample has no rows");
    sample.resize(elements(sampleRows, d, "--data-rows"));
    data.read(0, sampleRows, sample.data());
  }

  ParamBuffers params;
  check(sae_rt_params_alloc(m, params.out()));
  check(sae_rt_model_init(m, seed, sampleRows,
                          sampleRows ? sample.data() : nullptr, params.get()));
  check(sae_rt_checkpoint_save(m, out.c_str(), params.get()));
  return 0;
}

//===----------------------------------------------------------------------===//
// sae encode
//===----------------------------------------------------------------------===//

/// Writes the sparse codes as an .npz: members `names` with `arrays`.
void writeNpz(const std::string &output, std::vector<const char *> names,
              std::vector<sae_rt_array> arrays) {
  check(sae_rt_npz_write(output.c_str(), names.size(), names.data(),
                         arrays.data()));
}

template <typename T>
sae_rt_array borrowArray(sae_rt_dtype dtype, std::vector<int64_t> shape,
                         std::vector<T> &data) {
  sae_rt_array array{};
  array.dtype = dtype;
  array.ndim = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i)
    array.shape[i] = shape[i];
  array.data = data.data();
  return array;
}

int runEncode(int argc, char **argv) {
  Args args;
  if (!parseArgs("encode", kEncodeHelp, argc, argv, 2,
                 {{"threads", true},
                  {"checkpoint", true},
                  {"input", true},
                  {"tensor", true},
                  {"output", true},
                  {"grad", true},
                  {"grad-tensor", true},
                  {"sparse", false},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  args.required("input");
  std::string output = args.required("output");
  checkGradTensor(args);
  bool sparse = args.has("sparse");
  int64_t batchSize = parseBatchSize(args);

  LoadedModel loaded;
  loadModel(loaded, args, [&](const sae_rt_model *m) {
    if (sparse && sae_rt_model_codes_kind(m) != SAE_RT_CODES_SPARSE)
      fail("model '" + std::string(sae_rt_model_name(m)) +
           "' has dense codes; --sparse needs a model with sparse codes");
    checkAuxiliaryInputs(m, args);
  });
  const sae_rt_model *m = loaded.model.get();
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  bool batchLayout = sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_BATCH;
  ModelInputs in(m, args);
  int64_t rows = in.getRows();
  int64_t chunk = std::min(batchSize, std::max<int64_t>(rows, 1));
  in.allocate(chunk);
  Progress progress("encode", rows, chunk);

  if (sparse) {
    // Both layouts hold k entries per row on average: rows * k in all.
    std::vector<float> values(elements(rows, k));
    std::vector<int32_t> indices(elements(rows, k));
    std::vector<int32_t> rowOf;
    if (batchLayout) {
      if (rows > INT32_MAX)
        fail(args.get("input") + ": " + std::to_string(rows) +
             " rows do not fit the int32 row numbers of 'batch'-layout "
             "codes");
      rowOf.resize(elements(rows, k));
    }
    for (int64_t done = 0; done < rows; done += chunk) {
      int64_t count = std::min(chunk, rows - done);
      in.read(done, count);
      size_t offset = elements(done, k);
      if (batchLayout) {
        check(sae_rt_model_encode_batch(
            m, count, in.get(), loaded.params.get(), values.data() + offset,
            indices.data() + offset, rowOf.data() + offset));
        // The model numbers the rows of its batch (the chunk) from 0.
        size_t entries = elements(count, k);
        for (size_t i = 0; i < entries; ++i)
          rowOf[offset + i] += static_cast<int32_t>(done);
      } else {
        check(sae_rt_model_encode_sparse(
            m, count, in.get(), loaded.params.get(), values.data() + offset,
            indices.data() + offset));
      }
      progress.update(done + count);
    }
    if (batchLayout) {
      int64_t total = static_cast<int64_t>(values.size());
      writeNpz(output, {"values", "indices", "rows"},
               {borrowArray(SAE_RT_DTYPE_FLOAT32, {total}, values),
                borrowArray(SAE_RT_DTYPE_INT32, {total}, indices),
                borrowArray(SAE_RT_DTYPE_INT32, {total}, rowOf)});
    } else {
      writeNpz(output, {"values", "indices"},
               {borrowArray(SAE_RT_DTYPE_FLOAT32, {rows, k}, values),
                borrowArray(SAE_RT_DTYPE_INT32, {rows, k}, indices)});
    }
    return 0;
  }

  std::vector<float> codes(elements(chunk, n));
  RowOutput out(output, rows, n);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count);
    check(sae_rt_model_encode_dense(m, count, in.get(), loaded.params.get(),
                                    codes.data()));
    out.append(codes.data(), elements(count, n));
    progress.update(done + count);
  }
  out.commit();
  return 0;
}

//===----------------------------------------------------------------------===//
// sae decode
//===----------------------------------------------------------------------===//

bool isZipFile(const std::string &path) {
  std::FILE *file = std::fopen(path.c_str(), "rb");
  if (!file)
    return false; // let the .npy reader report the error
  unsigned char magic[4] = {0, 0, 0, 0};
  size_t got = std::fread(magic, 1, sizeof(magic), file);
  std::fclose(file);
  return got == 4 && magic[0] == 'P' && magic[1] == 'K' &&
         ((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6));
}

/// Sparse codes as a list of entries sorted by row: entry i is
/// (values[i], indices[i]) of row rowOf(i).
struct SparseEntries {
  const float *values = nullptr;
  const int32_t *indices = nullptr;
  const int32_t *rows = nullptr; ///< NULL: `width` entries per row.
  int64_t width = 0;
  size_t count = 0;

  int64_t rowOf(size_t i) const {
    return rows ? static_cast<int64_t>(rows[i])
                : static_cast<int64_t>(i / static_cast<size_t>(width));
  }
};

/// Decodes validated, sorted entries of `totalRows` rows into `output`, in
/// chunks of rows: with the model's batch decoder when it has one, else by
/// scattering into dense codes for the dense decoder.
void decodeEntries(const LoadedModel &loaded, const SparseEntries &entries,
                   int64_t totalRows, const std::string &output,
                   int64_t batchSize) {
  const sae_rt_model *m = loaded.model.get();
  const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  bool useBatch =
      sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_BATCH && e->decode_batch;
  if (!useBatch && !e->decode_dense)
    fail(modelLabel(m) +
         " can decode neither these sparse codes nor dense codes (it has no "
         "entry point " SAE_SYM_DECODE_BATCH " or " SAE_SYM_DECODE_DENSE ")");
  int64_t chunk = std::min(batchSize, std::max<int64_t>(totalRows, 1));
  std::vector<float> xhat, dense, values;
  std::vector<int32_t> indices, rows;
  RowOutput out(output, totalRows, d);
  Progress progress("decode", totalRows, chunk);
  size_t first = 0;
  for (int64_t done = 0; done < totalRows; done += chunk) {
    int64_t count = std::min(chunk, totalRows - done);
    size_t last = first;
    while (last < entries.count && entries.rowOf(last) < done + count)
      ++last;
    size_t found = last - first;
    if (useBatch) {
      // The batch decoder takes exactly B*k entries for B rows. A chunk
      // whose rows hold more entries than count*k gets extra (discarded)
      // rows; the spare slots are padded with zero-valued entries, which
      // add nothing to a gather-sum decoder.
      uint64_t needed = found / static_cast<uint64_t>(k) +
                        (found % static_cast<uint64_t>(k) != 0);
      int64_t batch = std::max<int64_t>(count, static_cast<int64_t>(needed));
      if (batch > INT32_MAX)
        fail("a chunk of " + std::to_string(batch) +
             " rows does not fit int32 row numbers (lower --batch-size)");
      size_t slots = elements(batch, k);
      values.assign(slots, 0.0f);
      indices.assign(slots, 0);
      rows.assign(slots, static_cast<int32_t>(batch - 1));
      for (size_t i = 0; i < found; ++i) {
        values[i] = entries.values[first + i];
        indices[i] = entries.indices[first + i];
        rows[i] = static_cast<int32_t>(entries.rowOf(first + i) - done);
      }
      xhat.resize(elements(batch, d));
      check(sae_rt_model_decode_batch(m, batch, values.data(), indices.data(),
                                      rows.data(), loaded.params.get(),
                                      xhat.data()));
    } else {
      // Repeated indices add up, as a gather-sum sparse decoder would.
      dense.assign(elements(count, n), 0.0f);
      for (size_t i = first; i < last; ++i)
        dense[static_cast<size_t>(entries.rowOf(i) - done) *
                  static_cast<size_t>(n) +
              static_cast<size_t>(entries.indices[i])] += entries.values[i];
      xhat.resize(elements(count, d));
      check(sae_rt_model_decode_dense(m, count, dense.data(),
                                      loaded.params.get(), xhat.data()));
    }
    out.append(xhat.data(), elements(count, d));
    progress.update(done + count);
    first = last;
  }
  out.commit();
}

const sae_rt_array *npzMember(const sae_rt_npz *npz, const std::string &path,
                              const char *name, sae_rt_dtype dtype) {
  const sae_rt_array *array = sae_rt_npz_find(npz, name);
  if (array && array->dtype != dtype)
    fail(path + ": '" + name + "' has dtype " +
         sae_rt_dtype_name(array->dtype) + ", expected " +
         sae_rt_dtype_name(dtype));
  return array;
}

/// Decodes sparse codes of layout "batch" (values, indices and rows [N]).
void decodeBatchFile(const LoadedModel &loaded, const std::string &input,
                     const sae_rt_array *values, const sae_rt_array *indices,
                     const sae_rt_array *rows, const std::string &output,
                     int64_t batchSize) {
  const sae_rt_model *m = loaded.model.get();
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  bool sameShape = values->ndim == 1 && indices->ndim == 1 && rows->ndim == 1 &&
                   values->shape[0] == indices->shape[0] &&
                   values->shape[0] == rows->shape[0];
  if (!sameShape)
    fail(input + ": 'values' " + shapeText(values->ndim, values->shape) +
         ", 'indices' " + shapeText(indices->ndim, indices->shape) +
         " and 'rows' " + shapeText(rows->ndim, rows->shape) +
         " must have the same [N] shape (sparse codes of layout 'batch')");
  SparseEntries entries;
  entries.values = static_cast<const float *>(values->data);
  entries.indices = static_cast<const int32_t *>(indices->data);
  entries.rows = static_cast<const int32_t *>(rows->data);
  entries.count = static_cast<size_t>(values->shape[0]);
  int64_t total = values->shape[0];

  // A batch of B rows holds B*k entries; a dense model has no k, so the
  // last entry's row tells.
  int64_t totalRows = -1;
  if (k > 0) {
    if (total % k != 0)
      fail(input + ": holds " + std::to_string(total) +
           " entries, which is not a multiple of k = " + std::to_string(k) +
           " of " + modelLabel(m) +
           " (sparse codes of layout 'batch' hold B*k entries for B rows)");
    totalRows = total / k;
  }
  std::string bound = totalRows >= 0
                          ? ", outside [0, " + std::to_string(totalRows) +
                                ") (" + std::to_string(total) +
                                " entries / k = " + std::to_string(k) + ")"
                          : ", which is negative";
  for (size_t i = 0; i < entries.count; ++i) {
    int32_t index = entries.indices[i], row = entries.rows[i];
    if (index < 0 || index >= n)
      fail(input + ": 'indices' entry " + std::to_string(i) + " holds " +
           std::to_string(index) + ", outside [0, " + std::to_string(n) +
           ") for " + modelLabel(m));
    if (row < 0 || (totalRows >= 0 && row >= totalRows))
      fail(input + ": 'rows' entry " + std::to_string(i) + " holds " +
           std::to_string(row) + bound);
    if (i > 0 && row < entries.rows[i - 1])
      fail(input + ": 'rows' entry " + std::to_string(i) + " holds " +
           std::to_string(row) + " after " +
           std::to_string(entries.rows[i - 1]) +
           "; entries must be sorted by row");
  }
  if (totalRows < 0)
    totalRows = entries.count ? entries.rows[entries.count - 1] + 1 : 0;
  decodeEntries(loaded, entries, totalRows, output, batchSize);
}

/// Decodes the sparse codes of an .npz into `output`: layout "rows"
/// (values/indices [B, k]) or layout "batch" (values/indices/rows [N]).
void decodeSparse(const LoadedModel &loaded, const std::string &input,
                  const std::string &output, int64_t batchSize) {
  const sae_rt_model *m = loaded.model.get();
  const sae_rt_entry_points *entries = sae_rt_model_entry_points(m);
  int64_t n = sae_rt_model_latents(m);
  sae_rt_npz *raw = nullptr;
  check(sae_rt_npz_open(input.c_str(), &raw));
  NpzPtr npz(raw);
  const sae_rt_array *values =
      npzMember(raw, input, "values", SAE_RT_DTYPE_FLOAT32);
  const sae_rt_array *indices =
      npzMember(raw, input, "indices", SAE_RT_DTYPE_INT32);
  const sae_rt_array *rowIds =
      npzMember(raw, input, "rows", SAE_RT_DTYPE_INT32);
  if (!values || !indices)
    fail(input + ": expected arrays 'values' and 'indices' (as written by "
                 "'sae encode --sparse')");
  if (rowIds) {
    decodeBatchFile(loaded, input, values, indices, rowIds, output, batchSize);
    return;
  }
  bool sameShape = values->ndim == indices->ndim;
  for (int32_t i = 0; sameShape && i < values->ndim; ++i)
    sameShape = values->shape[i] == indices->shape[i];
  if (!sameShape || (values->ndim != 1 && values->ndim != 2))
    fail(input + ": 'values' " + shapeText(values->ndim, values->shape) +
         " and 'indices' " + shapeText(indices->ndim, indices->shape) +
         " must have the same [B, k] or [k] shape");
  int64_t rows = values->ndim == 2 ? values->shape[0] : 1;
  int64_t width = values->shape[values->ndim - 1];

  const float *v = static_cast<const float *>(values->data);
  const int32_t *idx = static_cast<const int32_t *>(indices->data);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) {
      int32_t index = idx[r * width + c];
      if (index < 0 || index >= n)
        fail(input + ": 'indices' row " + std::to_string(r) + " (column " +
             std::to_string(c) + ") holds " + std::to_string(index) +
             ", outside [0, " + std::to_string(n) + ") for model '" +
             sae_rt_model_name(m) + "'");
    }

  bool useSparse = sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE &&
                   sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_ROWS &&
                   width == sae_rt_model_codes_k(m) && entries->decode_sparse;
  if (!useSparse) {
    // Any other model decodes them as entries, k per row.
    SparseEntries list;
    list.values = v;
    list.indices = idx;
    list.width = std::max<int64_t>(width, 1);
    list.count = elements(rows, width);
    decodeEntries(loaded, list, rows, output, batchSize);
    return;
  }
  int64_t d = sae_rt_model_input_dim(m);
  int64_t chunk = std::min(batchSize, std::max<int64_t>(rows, 1));
  std::vector<float> xhat(elements(chunk, d));
  RowOutput out(output, rows, d);
  Progress progress("decode", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    size_t offset = elements(done, width);
    check(sae_rt_model_decode_sparse(m, count, v + offset, idx + offset,
                                     loaded.params.get(), xhat.data()));
    out.append(xhat.data(), elements(count, d));
    progress.update(done + count);
  }
  out.commit();
}

int runDecode(int argc, char **argv) {
  Args args;
  if (!parseArgs("decode", kDecodeHelp, argc, argv, 2,
                 {{"threads", true},
                  {"checkpoint", true},
                  {"input", true},
                  {"tensor", true},
                  {"output", true},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  std::string input = args.required("input");
  std::string output = args.required("output");
  int64_t batchSize = parseBatchSize(args);

  LoadedModel loaded;
  loadModel(loaded, args, [](const sae_rt_model *) {});
  if (isZipFile(input)) {
    if (args.has("tensor"))
      fail(input + ": is an .npz file of sparse codes; --tensor names a "
                   "tensor of a safetensors file of dense codes");
    decodeSparse(loaded, input, output, batchSize);
    return 0;
  }
  const sae_rt_model *m = loaded.model.get();
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  RowInput in(input, args.get("tensor"), "--tensor", n,
              "the model's " + std::to_string(n) + " latents");
  int64_t rows = in.getRows();
  int64_t chunk = std::min(batchSize, std::max<int64_t>(rows, 1));
  std::vector<float> codes(elements(chunk, n));
  std::vector<float> xhat(elements(chunk, d));
  RowOutput out(output, rows, d);
  Progress progress("decode", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count, codes.data());
    check(sae_rt_model_decode_dense(m, count, codes.data(), loaded.params.get(),
                                    xhat.data()));
    out.append(xhat.data(), elements(count, d));
    progress.update(done + count);
  }
  out.commit();
  return 0;
}

//===----------------------------------------------------------------------===//
// sae forward
//===----------------------------------------------------------------------===//

/// Per-column mean and sum of squared deviations of rows seen chunk by
/// chunk, merged exactly (Chan, Golub and LeVeque's pairwise update), for
/// the FVU denominator sum ||x - mean(x)||^2.
class ColumnVariance {
public:
  explicit ColumnVariance(int64_t d)
      : d(d), mean(static_cast<size_t>(d), 0.0),
        m2(static_cast<size_t>(d), 0.0), chunkMean(static_cast<size_t>(d)),
        chunkM2(static_cast<size_t>(d)) {}

  /// Adds the rows x[count, d].
  void add(const float *x, int64_t count) {
    double c = static_cast<double>(count);
    std::fill(chunkMean.begin(), chunkMean.end(), 0.0);
    for (int64_t r = 0; r < count; ++r)
      for (int64_t j = 0; j < d; ++j)
        chunkMean[j] += x[r * d + j];
    for (double &value : chunkMean)
      value /= c;
    std::fill(chunkM2.begin(), chunkM2.end(), 0.0);
    for (int64_t r = 0; r < count; ++r)
      for (int64_t j = 0; j < d; ++j) {
        double dev = x[r * d + j] - chunkMean[j];
        chunkM2[j] += dev * dev;
      }
    double total = seen + c;
    for (int64_t j = 0; j < d; ++j) {
      double delta = chunkMean[j] - mean[j];
      mean[j] += delta * c / total;
      m2[j] += chunkM2[j] + delta * delta * seen * c / total;
    }
    seen = total;
  }

  /// sum ||x - mean(x)||^2 over the rows added so far.
  double total() const {
    double sum = 0;
    for (double value : m2)
      sum += value;
    return sum;
  }

private:
  int64_t d;
  std::vector<double> mean, m2, chunkMean, chunkM2;
  double seen = 0;
};

int runForward(int argc, char **argv) {
  Args args;
  if (!parseArgs("forward", kForwardHelp, argc, argv, 2,
                 {{"threads", true},
                  {"checkpoint", true},
                  {"input", true},
                  {"tensor", true},
                  {"grad", true},
                  {"grad-tensor", true},
                  {"output", true},
                  {"seed", true},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  std::string input = args.required("input");
  checkGradTensor(args);
  uint64_t seed = parseUnsigned(args, "seed", 0);
  int64_t batchSize = parseBatchSize(args);

  LoadedModel loaded;
  loadModel(loaded, args, [&](const sae_rt_model *m) {
    if (!sae_rt_model_entry_points(m)->forward)
      fail(modelLabel(m) + " has no entry point " SAE_SYM_FORWARD);
    checkAuxiliaryInputs(m, args);
  });
  const sae_rt_model *m = loaded.model.get();
  const sae_rt_entry_points *entries = sae_rt_model_entry_points(m);
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  size_t termCount = sae_rt_model_loss_term_count(m);
  ModelInputs in(m, args);
  int64_t rows = in.getRows();
  if (rows == 0)
    fail(input + ": the input has no rows");
  int64_t chunk = std::min(batchSize, rows);
  in.allocate(chunk);
  std::vector<float> xhat(elements(chunk, d));

  // L0 comes from the encoder: the sparse one of the model's layout when it
  // exists (k values per row on average), the dense one otherwise.
  bool sparseModel = sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE;
  bool batchL0 = sparseModel &&
                 sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_BATCH &&
                 entries->encode_batch;
  bool rowsL0 = sparseModel &&
                sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_ROWS &&
                entries->encode_sparse;
  bool haveL0 = batchL0 || rowsL0 || entries->encode_dense;
  std::vector<float> codeValues;
  std::vector<int32_t> codeIndices, codeRows;
  if (batchL0 || rowsL0) {
    codeValues.resize(elements(chunk, k));
    codeIndices.resize(elements(chunk, k));
    if (batchL0)
      codeRows.resize(elements(chunk, k));
  } else if (haveL0) {
    codeValues.resize(elements(chunk, n));
  }

  std::unique_ptr<RowOutput> out;
  if (args.has("output"))
    out = std::make_unique<RowOutput>(args.get("output"), rows, d);

  // losses[0] is the total, losses[1 + i] term i.
  std::vector<float> losses(termCount + 1);
  std::vector<double> lossSums(termCount + 1, 0.0);
  double squaredError = 0, nonzero = 0;
  ColumnVariance variance(d);
  uint64_t chunkSeed = seed;
  Progress progress("forward", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk, ++chunkSeed) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count);
    const float *x = in.x();
    std::fill(losses.begin(), losses.end(), 0.0f);
    check(sae_rt_model_forward(m, count, in.get(), loaded.params.get(),
                               chunkSeed, xhat.data(), losses.data()));
    for (size_t i = 0; i < losses.size(); ++i)
      lossSums[i] +=
          static_cast<double>(losses[i]) * static_cast<double>(count);
    size_t values = elements(count, d);
    for (size_t i = 0; i < values; ++i) {
      double diff = static_cast<double>(xhat[i]) - static_cast<double>(x[i]);
      squaredError += diff * diff;
    }
    variance.add(x, count);

    if (batchL0 || rowsL0) {
      if (batchL0)
        check(sae_rt_model_encode_batch(m, count, in.get(), loaded.params.get(),
                                        codeValues.data(), codeIndices.data(),
                                        codeRows.data()));
      else
        check(sae_rt_model_encode_sparse(m, count, in.get(),
                                         loaded.params.get(), codeValues.data(),
                                         codeIndices.data()));
      size_t total = elements(count, k);
      for (size_t i = 0; i < total; ++i)
        nonzero += codeValues[i] != 0.0f;
    } else if (haveL0) {
      check(sae_rt_model_encode_dense(m, count, in.get(), loaded.params.get(),
                                      codeValues.data()));
      size_t total = elements(count, n);
      for (size_t i = 0; i < total; ++i)
        nonzero += codeValues[i] != 0.0f;
    }
    if (out)
      out->append(xhat.data(), values);
    progress.update(done + count);
  }
  if (out)
    out->commit();

  double totalVariance = variance.total();
  double rowCount = static_cast<double>(rows);
  double fvu = totalVariance > 0 ? squaredError / totalVariance : NAN;
  std::string terms;
  for (size_t i = 0; i < termCount; ++i)
    terms += (i ? ", " : "") + jsonString(sae_rt_model_loss_term_name(m, i)) +
             ": " + formatNumber(lossSums[i + 1] / rowCount);
  std::printf("{\"loss\": %s, \"terms\": {%s}, \"mse\": %s, \"fvu\": %s, "
              "\"l0\": %s}\n",
              formatNumber(lossSums[0] / rowCount).c_str(), terms.c_str(),
              formatNumber(squaredError / rowCount).c_str(),
              formatNumber(fvu).c_str(),
              haveL0 ? formatNumber(nonzero / rowCount).c_str() : "null");
  return 0;
}

//===----------------------------------------------------------------------===//
// sae eval
//===----------------------------------------------------------------------===//

/// The codes entry point that 'sae eval' counts firing latents with: the
/// sparse encoder of the model's layout when it has one, else the dense
/// one.
enum class CodesSource { SparseRows, SparseBatch, Dense };

/// Counts, chunk by chunk, how many rows each latent fires on (a nonzero
/// code) and the nonzero codes in all. A latent listed twice for one row
/// by a sparse encoder counts once.
class FiringCounter {
public:
  explicit FiringCounter(int64_t n)
      : fires(static_cast<size_t>(n), 0), lastRow(static_cast<size_t>(n), -1),
        n(n) {}

  /// Entry (value, index) of global row `row` from a sparse encoder.
  void addEntry(const sae_rt_model *m, int64_t row, float value,
                int32_t index) {
    if (index < 0 || index >= n)
      fail(modelLabel(m) + ": the encoder returned latent index " +
           std::to_string(index) + ", outside [0, " + std::to_string(n) + ")");
    if (value == 0.0f || lastRow[static_cast<size_t>(index)] == row)
      return;
    lastRow[static_cast<size_t>(index)] = row;
    ++fires[static_cast<size_t>(index)];
    ++nonzero;
  }

  /// Dense codes [count, n].
  void addDense(const float *codes, int64_t count) {
    for (int64_t r = 0; r < count; ++r)
      for (int64_t j = 0; j < n; ++j)
        if (codes[r * n + j] != 0.0f) {
          ++fires[static_cast<size_t>(j)];
          ++nonzero;
        }
  }

  const std::vector<int64_t> &getFires() const { return fires; }
  int64_t getNonzero() const { return nonzero; }

private:
  std::vector<int64_t> fires;
  std::vector<int64_t> lastRow;
  int64_t n;
  int64_t nonzero = 0;
};

/// Reconstruction statistics accumulated over chunks in double precision.
struct ReconstructionStats {
  double squaredError = 0; ///< sum over rows of ||xhat - x||^2
  double cosineSum = 0;    ///< sum over rows of cos(x, xhat) (0 if a norm is 0)
  double normRatioSum = 0; ///< sum over rows with ||x|| > 0 of ||xhat||/||x||
  int64_t normRatioRows = 0;

  void add(const float *x, const float *xhat, int64_t count, int64_t d) {
    for (int64_t r = 0; r < count; ++r) {
      double xx = 0, hh = 0, xh = 0, ee = 0;
      for (int64_t j = 0; j < d; ++j) {
        double a = x[r * d + j], b = xhat[r * d + j];
        xx += a * a;
        hh += b * b;
        xh += a * b;
        ee += (b - a) * (b - a);
      }
      squaredError += ee;
      if (xx > 0 && hh > 0)
        cosineSum += xh / (std::sqrt(xx) * std::sqrt(hh));
      if (xx > 0) {
        normRatioSum += std::sqrt(hh) / std::sqrt(xx);
        ++normRatioRows;
      }
    }
  }
};

/// The index of the model's parameter named `name`, or -1.
int64_t findParam(const sae_rt_model *m, const char *name) {
  for (size_t i = 0; i < sae_rt_model_param_count(m); ++i)
    if (std::strcmp(sae_rt_model_param_name(m, i), name) == 0)
      return static_cast<int64_t>(i);
  return -1;
}

/// Checks that the model has a decoder W_dec [n, d] for --true-dict and
/// returns its parameter index.
size_t decoderParam(const sae_rt_model *m) {
  int64_t index = findParam(m, "W_dec");
  int64_t n = sae_rt_model_latents(m), d = sae_rt_model_input_dim(m);
  if (index < 0)
    fail(modelLabel(m) +
         " has no parameter 'W_dec' (the decoder, [n, d] = [" +
         std::to_string(n) + ", " + std::to_string(d) +
         "]); --true-dict compares the ground-truth features with its rows");
  size_t at = static_cast<size_t>(index);
  const int64_t *shape = sae_rt_model_param_shape(m, at);
  int32_t ndim = sae_rt_model_param_ndim(m, at);
  if (ndim != 2 || shape[0] != n || shape[1] != d)
    fail(modelLabel(m) + ": parameter 'W_dec' has shape " +
         shapeText(ndim, shape) + ", expected [n, d] = [" + std::to_string(n) +
         ", " + std::to_string(d) + "] for --true-dict");
  return at;
}

int runEval(int argc, char **argv) {
  Args args;
  if (!parseArgs("eval", kEvalHelp, argc, argv, 2,
                 {{"threads", true},
                  {"checkpoint", true},
                  {"data", true},
                  {"tensor", true},
                  {"grad", true},
                  {"grad-tensor", true},
                  {"batch-size", true},
                  {"dense-threshold", true},
                  {"true-dict", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  args.required("data");
  checkGradTensor(args);
  int64_t batchSize = parseBatchSize(args);
  double denseThreshold = parseDouble(args, "dense-threshold", 0.1);
  if (denseThreshold < 0.0 || denseThreshold > 1.0)
    throw UsageError{args.command,
                     "--dense-threshold must lie in [0, 1] (a fraction of "
                     "the rows)"};
  bool withTruth = args.has("true-dict");

  LoadedModel loaded;
  CodesSource source = CodesSource::Dense;
  loadModel(loaded, args, [&](const sae_rt_model *m) {
    const sae_rt_entry_points *e = sae_rt_model_entry_points(m);
    if (!e->forward)
      fail(modelLabel(m) + " has no entry point " SAE_SYM_FORWARD
                           " (eval reconstructs with it)");
    bool sparse = sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE;
    bool batch = sae_rt_model_codes_layout(m) == SAE_RT_LAYOUT_BATCH;
    if (sparse && batch && e->encode_batch)
      source = CodesSource::SparseBatch;
    else if (sparse && !batch && e->encode_sparse)
      source = CodesSource::SparseRows;
    else if (e->encode_dense)
      source = CodesSource::Dense;
    else
      fail(modelLabel(m) + " has no encoder entry point (" SAE_SYM_ENCODE_DENSE
                           ", " SAE_SYM_ENCODE_SPARSE " or " SAE_SYM_ENCODE_BATCH
                           "); eval counts firing latents with one");
    if (withTruth)
      decoderParam(m);
    checkAuxiliaryInputs(m, args);
  });
  const sae_rt_model *m = loaded.model.get();
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  size_t termCount = sae_rt_model_loss_term_count(m);

  // The ground-truth dictionary is read (and checked) before the data pass.
  std::vector<float> truth;
  int64_t features = 0;
  if (withTruth) {
    RowInput dict(args.get("true-dict"), "", "", d,
                  "the model's input dimension " + std::to_string(d));
    features = dict.getRows();
    if (features == 0)
      fail(dict.getPath() + ": the dictionary has no rows");
    truth.resize(elements(features, d, "the dictionary size"));
    dict.read(0, features, truth.data());
  }

  ModelInputs in(m, args, "data");
  int64_t rows = in.getRows();
  if (rows == 0)
    fail(in.getPath() + ": the input has no rows");
  int64_t chunk = std::min(batchSize, rows);
  in.allocate(chunk);
  std::vector<float> xhat(elements(chunk, d));
  std::vector<float> losses(termCount + 1);
  std::vector<float> values;
  std::vector<int32_t> indices, entryRows;
  if (source == CodesSource::Dense) {
    values.resize(elements(chunk, n));
  } else {
    values.resize(elements(chunk, k));
    indices.resize(elements(chunk, k));
    if (source == CodesSource::SparseBatch)
      entryRows.resize(elements(chunk, k));
  }

  ReconstructionStats stats;
  ColumnVariance variance(d);
  FiringCounter firing(n);
  Progress progress("eval", rows, chunk);
  uint64_t chunkSeed = 0; // as 'sae forward --seed 0'
  for (int64_t done = 0; done < rows; done += chunk, ++chunkSeed) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count);
    const float *x = in.x();
    check(sae_rt_model_forward(m, count, in.get(), loaded.params.get(),
                               chunkSeed, xhat.data(), losses.data()));
    stats.add(x, xhat.data(), count, d);
    variance.add(x, count);
    switch (source) {
    case CodesSource::SparseRows: {
      check(sae_rt_model_encode_sparse(m, count, in.get(), loaded.params.get(),
                                       values.data(), indices.data()));
      for (int64_t r = 0; r < count; ++r)
        for (int64_t t = 0; t < k; ++t)
          firing.addEntry(m, done + r, values[r * k + t], indices[r * k + t]);
      break;
    }
    case CodesSource::SparseBatch: {
      check(sae_rt_model_encode_batch(m, count, in.get(), loaded.params.get(),
                                      values.data(), indices.data(),
                                      entryRows.data()));
      size_t total = elements(count, k);
      for (size_t i = 0; i < total; ++i)
        firing.addEntry(m, done + entryRows[i], values[i], indices[i]);
      break;
    }
    case CodesSource::Dense:
      check(sae_rt_model_encode_dense(m, count, in.get(), loaded.params.get(),
                                      values.data()));
      firing.addDense(values.data(), count);
      break;
    }
    progress.update(done + count);
  }

  double rowCount = static_cast<double>(rows);
  double totalVariance = variance.total();
  double fvu = totalVariance > 0 ? stats.squaredError / totalVariance : NAN;
  int64_t dead = 0, dense = 0;
  for (int64_t fired : firing.getFires()) {
    dead += fired == 0;
    dense += static_cast<double>(fired) / rowCount > denseThreshold;
  }
  std::string recovery = "null";
  if (withTruth) {
    size_t decoder = decoderParam(m);
    if (static_cast<double>(features) * static_cast<double>(n) *
            static_cast<double>(d + std::min(features, n)) >
        1e10)
      std::fprintf(stderr,
                   "sae eval: matching %" PRId64 " true features with %" PRId64
                   " decoder rows (Hungarian algorithm; this may take a "
                   "while)\n",
                   features, n);
    double meanMaxCos = 0, mcc = 0;
    check(sae_rt_feature_recovery(features, n, d, truth.data(),
                                  loaded.params.get()[decoder], &meanMaxCos,
                                  &mcc));
    recovery = "{\"mean_max_cos\": " + formatNumber(meanMaxCos) +
               ", \"mcc\": " + formatNumber(mcc) +
               ", \"features\": " + std::to_string(features) + "}";
  }
  std::printf(
      "{\"rows\": %" PRId64 ", \"latents\": %" PRId64
      ", \"mse\": %s, \"fvu\": %s, \"explained_variance\": %s, \"l0\": %s, "
      "\"dead_latents\": %" PRId64 ", \"dead_fraction\": %s, "
      "\"dense_latents\": %" PRId64 ", \"dense_threshold\": %s, "
      "\"cosine\": %s, \"norm_ratio\": %s, \"feature_recovery\": %s}\n",
      rows, n, formatNumber(stats.squaredError / rowCount).c_str(),
      formatNumber(fvu).c_str(), formatNumber(1.0 - fvu).c_str(),
      formatNumber(static_cast<double>(firing.getNonzero()) / rowCount).c_str(),
      dead,
      formatNumber(static_cast<double>(dead) / static_cast<double>(n)).c_str(),
      dense, formatNumber(denseThreshold).c_str(),
      formatNumber(stats.cosineSum / rowCount).c_str(),
      formatNumber(stats.normRatioRows
                       ? stats.normRatioSum /
                             static_cast<double>(stats.normRatioRows)
                       : NAN)
          .c_str(),
      recovery.c_str());
  return 0;
}

//===----------------------------------------------------------------------===//
// sae synth
//===----------------------------------------------------------------------===//

/// splitmix64 (Steele, Lea and Flood 2014): a Weyl sequence of step
/// 0x9e3779b97f4a7c15 through the finaliser below. 'sae synth' draws
/// stream `id` of seed S starting from state finalise(S ^ finalise(id)).
class SplitMix64 {
public:
  SplitMix64(uint64_t seed, uint64_t id) : state(finalise(seed ^ finalise(id))) {}

  static uint64_t finalise(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  uint64_t next() {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  /// Uniform in [0, 1): the top 53 bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, bound), bound >= 1, without modulo bias (draws
  /// below 2^64 mod bound are rejected).
  uint64_t below(uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    while (true) {
      uint64_t value = next();
      if (value >= threshold)
        return value % bound;
    }
  }

  /// Standard normal: Box-Muller on two uniforms, both values of each pair
  /// used in turn (cos first).
  double normal() {
    if (haveSpare) {
      haveSpare = false;
      return spare;
    }
    double u1 = 1.0 - uniform(); // (0, 1]
    double u2 = uniform();
    double radius = std::sqrt(-2.0 * std::log(u1));
    double angle = 2.0 * M_PI * u2;
    spare = radius * std::sin(angle);
    haveSpare = true;
    return radius * std::cos(angle);
  }

private:
  uint64_t state;
  double spare = 0;
  bool haveSpare = false;
};

/// A count given by --NAME: required, between 1 and `limit`.
int64_t parseCount(const Args &args, const std::string &name, uint64_t limit) {
  if (!args.has(name))
    throw UsageError{args.command, "missing required option --" + name};
  uint64_t value = parseUnsigned(args, name, 0);
  if (value == 0 || value > limit)
    throw UsageError{args.command, "--" + name + " must be between 1 and " +
                                       std::to_string(limit)};
  return static_cast<int64_t>(value);
}

int runSynth(int argc, char **argv) {
  Args args;
  if (!parseArgs("synth", kSynthHelp, argc, argv, 2,
                 {{"d", true},
                  {"features", true},
                  {"active", true},
                  {"rows", true},
                  {"noise", true},
                  {"seed", true},
                  {"out", true},
                  {"dict", true}},
                 args))
    return 0;
  if (!args.positional.empty())
    throw UsageError{args.command,
                     "unexpected argument '" + args.positional[0] + "'"};
  const uint64_t kMaxDim = uint64_t(1) << 24;
  int64_t d = parseCount(args, "d", kMaxDim);
  int64_t features = parseCount(args, "features", kMaxDim);
  int64_t active = parseCount(args, "active", kMaxDim);
  int64_t rows = parseRowCount(args, "rows", 65536);
  double noise = parseDouble(args, "noise", 0.01);
  uint64_t seed = parseUnsigned(args, "seed", 0);
  std::string out = args.required("out");
  std::string dictPath = args.required("dict");
  if (active > features)
    throw UsageError{args.command, "--active (" + std::to_string(active) +
                                       ") must not exceed --features (" +
                                       std::to_string(features) + ")"};
  if (noise < 0.0)
    throw UsageError{args.command, "--noise must be >= 0"};
  if (out == dictPath)
    throw UsageError{args.command, "--out and --dict must be different files"};
  // The dictionary is held in memory: at most 2^32 values (16 GiB).
  if (static_cast<uint64_t>(features) * static_cast<uint64_t>(d) >
      (uint64_t(1) << 32))
    throw UsageError{args.command,
                     "the dictionary --features x --d (" +
                         std::to_string(features) + " x " + std::to_string(d) +
                         ") exceeds 2^32 values"};

  // The dictionary: stream 0, F*d normals in row-major order, each row
  // scaled to unit norm (in double), stored as float32.
  std::vector<float> dict(elements(features, d, "--features or --d"));
  {
    SplitMix64 rng(seed, 0);
    std::vector<double> row(static_cast<size_t>(d));
    for (int64_t f = 0; f < features; ++f) {
      double sum = 0;
      for (double &value : row) {
        value = rng.normal();
        sum += value * value;
      }
      double norm = std::sqrt(sum);
      for (int64_t j = 0; j < d; ++j)
        dict[static_cast<size_t>(f * d + j)] =
            static_cast<float>(norm > 0 ? row[j] / norm : row[j]);
    }
  }

  int64_t dictShape[2] = {features, d};
  sae_rt_npy_writer *rawDict = nullptr;
  check(sae_rt_npy_writer_open(dictPath.c_str(), SAE_RT_DTYPE_FLOAT32, 2,
                               dictShape, &rawDict));
  WriterPtr dictWriter(rawDict);
  check(sae_rt_npy_writer_append(dictWriter.get(), dict.data(),
                                 dict.size() * sizeof(float)));
  RowOutput x(out, rows, d);

  // Row r of X: stream 1 + r picks A distinct features (Floyd's algorithm),
  // sorted, then one coefficient in [0.5, 1.5) per feature in that order,
  // then d noise values.
  int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 20) / d);
  chunk = std::min(chunk, rows);
  std::vector<float> buffer(elements(chunk, d, "--d"));
  std::vector<double> sum(static_cast<size_t>(d));
  std::vector<char> picked(static_cast<size_t>(features), 0);
  std::vector<int64_t> support;
  support.reserve(static_cast<size_t>(active));
  Progress progress("synth", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    for (int64_t r = 0; r < count; ++r) {
      SplitMix64 rng(seed, 1 + static_cast<uint64_t>(done + r));
      support.clear();
      for (int64_t j = features - active; j < features; ++j) {
        int64_t t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j) + 1));
        int64_t choice = picked[static_cast<size_t>(t)] ? j : t;
        picked[static_cast<size_t>(choice)] = 1;
        support.push_back(choice);
      }
      std::sort(support.begin(), support.end());
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t f : support) {
        picked[static_cast<size_t>(f)] = 0;
        double coefficient = 0.5 + rng.uniform();
        const float *atom = &dict[static_cast<size_t>(f * d)];
        for (int64_t j = 0; j < d; ++j)
          sum[static_cast<size_t>(j)] += coefficient * atom[j];
      }
      float *row = &buffer[static_cast<size_t>(r * d)];
      for (int64_t j = 0; j < d; ++j)
        row[j] = static_cast<float>(sum[static_cast<size_t>(j)] +
                                    noise * rng.normal());
    }
    x.append(buffer.data(), elements(count, d));
    progress.update(done + count);
  }
  check(sae_rt_npy_writer_commit(dictWriter.get()));
  x.commit();
  return 0;
}

//===----------------------------------------------------------------------===//
// sae train
//===----------------------------------------------------------------------===//

const char *const kTrainHelp =
    "usage: sae train SPEC.sae|LIB.so --data X [--tensor NAME]\n"
    "                 [--input-data NAME=FILE [--input-tensor NAME=TENSOR]]\n"
    "                 [--steps N | --tokens T] [--batch B] [--lr LR]\n"
    "                 [--beta1 B1] [--beta2 B2] [--eps E] [--clip C]\n"
    "                 [--lr-warmup N] [--lr-decay none|linear|cosine]\n"
    "                 [--sparsity-warmup N] [--seed S] [--init CKPT_DIR]\n"
    "                 [--out CKPT_DIR] [--checkpoint-every N]\n"
    "                 [--resume CKPT_DIR] [--no-shuffle]\n"
    "                 [--metrics-json FILE] [--log-every N] [--threads N]\n"
    "                 [-D name=value ...]\n"
    "\n"
    "Trains the model with Adam through its sae_train_step entry point (one\n"
    "fused forward pass, backward pass and update per batch) and writes\n"
    "checkpoints.\n"
    "\n"
    "The model is a compiled LIB.so, or a SPEC.sae compiled on the fly with\n"
    "'saec SPEC.sae -o LIB.so [-Dname=value ...]'. saec is $SAEC when set,\n"
    "else the saec next to this sae executable, else the first on $PATH. The\n"
    "library is cached in $XDG_CACHE_HOME/saec (default ~/.cache/saec) under\n"
    "a hash of the spec's text, the -D overrides and saec's size and\n"
    "modification time, so an unchanged spec is compiled once; saec's\n"
    "diagnostics are shown if it fails.\n"
    "\n"
    "Data: --data X holds the rows of x, the model's first input: a float32\n"
    "or float16 .npy [rows, d], a 2-D F32/F16/BF16 tensor of a safetensors\n"
    "file (--tensor names it), or an IDX file such as\n"
    "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz (pixels\n"
    "scaled to [0, 1]); d must be the model's input dimension. A model with\n"
    "auxiliary inputs ('sae info' lists them) takes one file per other input\n"
    "with --input-data NAME=FILE, row r of each file going with row r of X.\n"
    ".npy and safetensors files are memory-mapped, IDX files read whole. A\n"
    "NaN or infinity in a row that a step reads stops training with an\n"
    "error naming the file, row and column.\n"
    "\n"
    "Steps and batches: each step trains on B rows (--batch, default the\n"
    "model's train.batch). Epoch e (from 0) visits the rows in an order\n"
    "drawn from the seed S: a Fisher-Yates shuffle driven by splitmix64\n"
    "started from mix64(S ^ mix64(2^63 + e)) (mix64: splitmix64's output\n"
    "function of z + 0x9e3779b97f4a7c15; see sae_rt_train_permutation), or\n"
    "file order with --no-shuffle. An epoch is floor(rows / B) batches,\n"
    "batch i taking positions [i*B, (i+1)*B) of that order; the rows of a\n"
    "last partial batch sit that epoch out, and the next epoch starts again\n"
    "from position 0. The run has --steps N steps, ceil(T / B) with\n"
    "--tokens T, or by default one epoch.\n"
    "\n"
    "Initialisation: --init CKPT_DIR starts from a checkpoint's parameters\n"
    "(used as they are); otherwise the model's sae_init runs with the seed\n"
    "(data-dependent initialisers get the first min(rows, 4096) rows of x).\n"
    "\n"
    "Schedule of step t = 1, 2, ... of a run of T steps, computed in double\n"
    "precision and passed to the model as float:\n"
    "  learning rate  lr * min(1, t / lr_warmup) (lr when lr_warmup is 0)\n"
    "                 times the decay, with p = (t - lr_warmup) /\n"
    "                 (T - lr_warmup) clamped to [0, 1]: 1 (none), 1 - p\n"
    "                 (linear) or 0.5 * (1 + cos(pi * p)) (cosine);\n"
    "  sparsity       min(1, t / sparsity_warmup) (1 when 0), the factor on\n"
    "                 every loss term after the first;\n"
    "  Adam           bias corrections 1 - beta1^t and 1 - beta2^t;\n"
    "  seed           mix64(S ^ mix64(t)), the step's noise seed.\n"
    "Hyperparameters default to the model's train section ('sae info'),\n"
    "each overridden by its flag.\n"
    "\n"
    "Normalisation: when the model's train.normalize is 'expected_norm',\n"
    "the trainer estimates c = sqrt(d) / (mean over the first\n"
    "min(rows, 4096) rows of ||x||) and trains on c * x. Checkpoints hold the\n"
    "weights folded back for raw x, SAELens' convention: W_enc * c,\n"
    "W_dec / c and b_dec / c (b_enc and thresholds unchanged), so the model\n"
    "needs parameters named W_enc, W_dec and b_dec. Reported losses are\n"
    "those of c * x.\n"
    "\n"
    "Progress goes to standard error every --log-every steps (default about\n"
    "1% of the run, and at least every 10 s): step, tokens/s, time left, the\n"
    "loss and each term (means over the steps since the last report), L0\n"
    "(nonzero codes per row), FVU (squared error over squared deviation from\n"
    "each batch's mean, summed over the steps since the last report) and the\n"
    "fraction of dead latents (no nonzero code in the last 10M tokens, or\n"
    "since the start of training if fewer). On a terminal the line is\n"
    "updated in place. At the end one JSON object goes to standard output:\n"
    "  {\"steps\", \"total_steps\", \"tokens\", \"seconds\", "
    "\"tokens_per_s\", \"threads\",\n"
    "   \"loss\", \"terms\": {...}, \"fvu\", \"l0\", \"dead_latents\",\n"
    "   \"dead_fraction\", \"lr\", \"normalization_factor\", \"completed\",\n"
    "   \"out\"}\n"
    "steps and tokens count from the start of training (resumes included);\n"
    "seconds and tokens_per_s are this process's; loss, terms, fvu and l0\n"
    "cover the steps since the previous report.\n"
    "\n"
    "Checkpoints (SAELens layout) go to --out every --checkpoint-every steps\n"
    "and after the last step:\n"
    "  sae_weights.safetensors  the parameters (folded when normalising)\n"
    "  cfg.json                 the model's configuration\n"
    "  optimizer.safetensors    '<param>.exp_avg' and '<param>.exp_avg_sq',\n"
    "                           Adam's moments, of each trainable parameter;\n"
    "                           when normalising also '<param>.training', the\n"
    "                           unfolded W_enc, W_dec and b_dec\n"
    "  trainer_state.json       step, tokens, seed, epoch and batch within\n"
    "                           it, the hyperparameters, the normalisation\n"
    "                           factor, the model and the dead-latent "
    "counters\n"
    "Each is written whole in a temporary directory and swapped in\n"
    "atomically: a run killed while writing leaves the previous checkpoint\n"
    "intact. --resume CKPT_DIR continues from one: parameters, optimizer\n"
    "state and step come from it, and the hyperparameters, the number of\n"
    "steps, --seed, --batch and --no-shuffle default to the recorded ones;\n"
    "with the same flags, the final checkpoint is bit for bit that of an\n"
    "uninterrupted run. The seed, batch size, shuffling and the number of\n"
    "data rows cannot change on resume.\n"
    "\n"
    "Errors: a step whose loss is NaN or infinite stops training (exit\n"
    "status 1) without saving that step's parameters; the last checkpoint\n"
    "on disk is kept. So does an entry point that returns an error. SIGINT\n"
    "or SIGTERM stops after the current step, writes a checkpoint to --out\n"
    "and exits with status 130.\n"
    "\n"
    "options:\n"
    "  --data X              rows of x, .npy, safetensors or IDX (required)\n"
    "  --tensor NAME         the tensor of --data (safetensors only)\n"
    "  --input-data NAME=FILE  the rows of the auxiliary input NAME, one per\n"
    "                        row of --data (repeat for each such input)\n"
    "  --input-tensor NAME=TENSOR  the tensor of input NAME's safetensors "
    "file\n"
    "  --steps N             number of steps (default: one epoch)\n"
    "  --tokens T            train on T rows: ceil(T / B) steps\n"
    "  --batch B             rows per step (default: the model's train.batch)\n"
    "  --lr LR               peak learning rate, >= 0\n"
    "  --beta1 B1            Adam beta1, in [0, 1)\n"
    "  --beta2 B2            Adam beta2, in [0, 1)\n"
    "  --eps E               Adam epsilon, >= 0\n"
    "  --clip C              clip the global gradient norm to C (0: never)\n"
    "  --lr-warmup N         steps of linear learning-rate warm-up\n"
    "  --lr-decay MODE       none, linear or cosine decay to 0 after warm-up\n"
    "  --sparsity-warmup N   steps to ramp the sparsity terms' factor to 1\n"
    "  --seed S              seed of the initialisation, the shuffling and\n"
    "                        the steps' noise, an unsigned 64-bit integer\n"
    "                        (default 0)\n"
    "  --init CKPT_DIR       start from this checkpoint's parameters instead\n"
    "                        of sae_init\n"
    "  --out CKPT_DIR        checkpoint directory to write (required unless\n"
    "                        --resume, whose directory is then the default);\n"
    "                        an existing checkpoint there is replaced\n"
    "  --checkpoint-every N  also write a checkpoint after every N-th step\n"
    "                        (default 0: only after the last)\n"
    "  --resume CKPT_DIR     continue the run saved in CKPT_DIR\n"
    "  --no-shuffle          read the rows in file order\n"
    "  --metrics-json FILE   also write the summary with the history of the\n"
    "                        progress reports ('history': step, tokens,\n"
    "                        seconds, tokens_per_s, lr, loss, terms, l0, fvu,\n"
    "                        dead_fraction) to FILE, atomically\n"
    "  --log-every N         report progress every N steps (0: only at the\n"
    "                        end)\n"
    "  -D name=value         override a dimension of SPEC.sae (passed to\n"
    "                        saec; repeatable)\n"
    "  --stop-after N        stop after step N, writing a checkpoint, as an\n"
    "                        interrupted run would have (for testing resume)\n"
    "  --threads N           threads for the model's parallel products (default:\n"
    "                        all cores, or OMP_NUM_THREADS); results do not\n"
    "                        depend on it\n"
    "  -h, --help            show this help\n";

using Json = nlohmann::ordered_json;

/// A real number for messages: "NaN", "inf", or the shortest form that
/// reads back the same.
std::string realText(double value) {
  if (std::isnan(value))
    return "NaN";
  if (std::isinf(value))
    return value > 0 ? "inf" : "-inf";
  return formatNumber(value);
}

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

//===----------------------------------------------------------------------===//
// Compiling a spec on the fly
//===----------------------------------------------------------------------===//

bool isExecutableFile(const std::string &path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

/// saec: $SAEC, else next to this executable, else on $PATH; "" if none.
std::string findSaec() {
  if (const char *env = std::getenv("SAEC"); env && *env)
    return env;
  char self[4096];
  ssize_t length = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (length > 0) {
    std::string path(self, static_cast<size_t>(length));
    size_t slash = path.find_last_of('/');
    if (slash != std::string::npos) {
      std::string sibling = path.substr(0, slash + 1) + "saec";
      if (isExecutableFile(sibling))
        return sibling;
    }
  }
  const char *pathEnv = std::getenv("PATH");
  std::string list = pathEnv ? pathEnv : "";
  size_t start = 0;
  while (start <= list.size()) {
    size_t colon = list.find(':', start);
    if (colon == std::string::npos)
      colon = list.size();
    std::string dir = list.substr(start, colon - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/saec";
    if (isExecutableFile(candidate))
      return candidate;
    start = colon + 1;
  }
  return "";
}

/// A 128-bit hash (two independent 64-bit FNV-1a streams, each finished
/// with splitmix64's mixer) as 32 hex digits. A cache key, not a MAC.
class KeyHash {
public:
  void add(const void *data, size_t size) {
    const unsigned char *bytes = static_cast<const unsigned char *>(data);
    for (size_t i = 0; i < size; ++i) {
      a = (a ^ bytes[i]) * 0x100000001b3ull;
      b = (b ^ bytes[i]) * 0x100000001b3ull;
      b ^= b >> 29;
    }
  }
  /// A string with its length, so that ("ab", "c") and ("a", "bc") differ.
  void add(const std::string &text) {
    uint64_t size = text.size();
    add(&size, sizeof(size));
    add(text.data(), text.size());
  }
  std::string hex() const {
    char buffer[33];
    std::snprintf(buffer, sizeof(buffer), "%016" PRIx64 "%016" PRIx64,
                  SplitMix64::finalise(a), SplitMix64::finalise(b));
    return buffer;
  }

private:
  uint64_t a = 0xcbf29ce484222325ull;
  uint64_t b = 0x84222325cbf29ce4ull;
};

/// Runs `argv` (argv[0] a path), its stdout and stderr captured together.
/// Returns the wait status, or -1 if it could not be started.
int runCaptured(const std::vector<std::string> &argv, std::string &output) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return -1;
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::dup2(fds[1], STDERR_FILENO);
    std::vector<char *> raw;
    for (const std::string &arg : argv)
      raw.push_back(const_cast<char *>(arg.c_str()));
    raw.push_back(nullptr);
    ::execv(raw[0], raw.data());
    std::fprintf(stderr, "cannot run %s: %s\n", raw[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  char buffer[4096];
  while (true) {
    ssize_t got = ::read(fds[0], buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break;
    output.append(buffer, static_cast<size_t>(got));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return -1;
  return status;
}

/// The compiled library of `spec` (a .sae file) with the -D overrides:
/// from the cache, or compiled now with saec.
std::string compileSpec(const std::string &spec,
                        const std::vector<std::string> &defines) {
  std::ifstream in(spec, std::ios::binary);
  if (!in)
    fail(spec + ": cannot read the spec: " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  std::string saec = findSaec();
  if (saec.empty())
    fail("cannot compile " + spec +
         ": saec was not found ($SAEC is not set, there is no saec next to "
         "this sae, nor on $PATH); build saec or give a compiled LIB.so");
  struct stat info;
  if (::stat(saec.c_str(), &info) != 0)
    fail("cannot compile " + spec + ": " + saec + ": " + std::strerror(errno));

  KeyHash key;
  key.add(std::string("saec-cache-1"));
  key.add(text);
  uint64_t defineCount = defines.size();
  key.add(&defineCount, sizeof(defineCount));
  for (const std::string &define : defines)
    key.add(define);
  int64_t stamp[3] = {static_cast<int64_t>(info.st_size),
                      static_cast<int64_t>(info.st_mtim.tv_sec),
                      static_cast<int64_t>(info.st_mtim.tv_nsec)};
  key.add(stamp, sizeof(stamp));

  std::string cacheRoot;
  if (const char *xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    cacheRoot = xdg;
  else if (const char *home = std::getenv("HOME"); home && *home)
    cacheRoot = std::string(home) + "/.cache";
  else
    fail("cannot compile " + spec +
         ": neither $XDG_CACHE_HOME nor $HOME is set (the compiled library "
         "is cached there)");
  std::string cacheDir = cacheRoot + "/saec";
  std::error_code error;
  std::filesystem::create_directories(cacheDir, error);
  if (error)
    fail("cannot create the cache directory " + cacheDir + ": " +
         error.message());

  std::string stem = spec.substr(spec.find_last_of('/') + 1);
  stem = stem.substr(0, stem.size() - 4); // ".sae"
  for (char &c : stem)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
      c = '_';
  std::string library = cacheDir + "/lib" + stem + "-" + key.hex() + ".so";
  if (::access(library.c_str(), R_OK) == 0)
    return library;

  std::string temp =
      library + ".tmp-" + std::to_string(static_cast<long>(::getpid()));
  std::vector<std::string> argv = {saec, spec, "-o", temp};
  for (const std::string &define : defines)
    argv.push_back("-D" + define);
  std::fprintf(stderr, "sae train: compiling %s with %s\n", spec.c_str(),
               saec.c_str());
  std::string output;
  int status = runCaptured(argv, output);
  bool ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
            ::access(temp.c_str(), R_OK) == 0;
  if (!ok) {
    ::unlink(temp.c_str());
    std::string how =
        status == -1 ? "could not be run"
        : WIFEXITED(status)
            ? "exited with status " + std::to_string(WEXITSTATUS(status))
            : "was killed by signal " + std::to_string(WTERMSIG(status));
    while (!output.empty() && output.back() == '\n')
      output.pop_back();
    fail("saec failed to compile " + spec + " (" + saec + " " + how + ")" +
         (output.empty() ? std::string() : ":\n" + output));
  }
  if (::rename(temp.c_str(), library.c_str()) != 0) {
    std::string reason = std::strerror(errno);
    ::unlink(temp.c_str());
    fail("cannot move the compiled library into the cache (" + library +
         "): " + reason);
  }
  return library;
}

//===----------------------------------------------------------------------===//
// Training data
//===----------------------------------------------------------------------===//

/// Splits NAME=VALUE (for --input-data, --input-tensor, -D).
std::pair<std::string, std::string> splitAssignment(const Args &args,
                                                    const std::string &flag,
                                                    const std::string &text) {
  size_t equals = text.find('=');
  if (equals == std::string::npos || equals == 0 || equals + 1 == text.size())
    throw UsageError{args.command,
                     flag + " expects NAME=VALUE, got '" + text + "'"};
  return {text.substr(0, equals), text.substr(equals + 1)};
}

/// The model's inputs for training: x from --data (--tensor), the others
/// from --input-data NAME=FILE (--input-tensor NAME=TENSOR); batches are
/// gathered by row number.
class TrainInputs {
public:
  TrainInputs(const sae_rt_model *m, const Args &args) {
    std::map<std::string, std::string> dataFor, tensorFor;
    for (const std::string &entry : args.all("input-data")) {
      auto [name, file] = splitAssignment(args, "--input-data", entry);
      if (!dataFor.emplace(name, file).second)
        throw UsageError{args.command,
                         "--input-data gives input '" + name + "' twice"};
    }
    for (const std::string &entry : args.all("input-tensor")) {
      auto [name, tensor] = splitAssignment(args, "--input-tensor", entry);
      if (!dataFor.count(name))
        throw UsageError{args.command, "--input-tensor " + entry +
                                           " names an input without "
                                           "--input-data " +
                                           name + "=FILE"};
      tensorFor[name] = tensor;
    }
    size_t count = sae_rt_model_input_count(m);
    std::string xName = sae_rt_model_input_name(m, 0);
    if (dataFor.count(xName))
      fail("--input-data " + xName + "=...: '" + xName + "' is " +
           modelLabel(m) + "'s first input; give it with --data");
    for (const auto &entry : dataFor) {
      bool known = false;
      for (size_t i = 1; i < count; ++i)
        known = known || entry.first == sae_rt_model_input_name(m, i);
      if (!known)
        fail("--input-data " + entry.first + "=...: " + modelLabel(m) +
             " has no auxiliary input '" + entry.first + "'" +
             (count > 1 ? std::string() : " (it has none)"));
    }
    int64_t d = sae_rt_model_input_dim(m);
    files.push_back(std::make_unique<RowInput>(
        args.get("data"), args.get("tensor"), "--tensor", d,
        "the model's input dimension " + std::to_string(d)));
    for (size_t i = 1; i < count; ++i) {
      std::string name = sae_rt_model_input_name(m, i);
      int64_t dim = sae_rt_model_input_dim_at(m, i);
      auto it = dataFor.find(name);
      if (it == dataFor.end())
        fail(modelLabel(m) + " has the auxiliary input '" + name + "' (dim " +
             std::to_string(dim) + "); give its rows with --input-data " +
             name + "=FILE");
      files.push_back(std::make_unique<RowInput>(
          it->second, tensorFor.count(name) ? tensorFor[name] : "",
          "--input-tensor " + name + "=NAME", dim,
          "the dimension " + std::to_string(dim) + " of the model's input '" +
              name + "'"));
      if (files.back()->getRows() != files[0]->getRows())
        fail(files.back()->getPath() + " has " +
             std::to_string(files.back()->getRows()) + " rows, but " +
             files[0]->getPath() + " has " +
             std::to_string(files[0]->getRows()) +
             "; each --input-data needs one row per row of --data");
    }
    buffers.resize(files.size());
    pointers.resize(files.size(), nullptr);
  }

  int64_t getRows() const { return files[0]->getRows(); }
  const std::string &getPath() const { return files[0]->getPath(); }

  void allocate(int64_t batch) {
    for (size_t i = 0; i < files.size(); ++i) {
      buffers[i].resize(elements(batch, files[i]->getWidth(), "--batch"));
      pointers[i] = buffers[i].data();
    }
  }

  /// Reads rows ids[0..count) into the buffers, in that order (runs of
  /// consecutive rows in one read). NaN and infinities are errors.
  void gather(const int64_t *ids, int64_t count) {
    for (size_t f = 0; f < files.size(); ++f) {
      int64_t width = files[f]->getWidth();
      for (int64_t i = 0; i < count;) {
        int64_t run = 1;
        while (i + run < count && ids[i + run] == ids[i] + run)
          ++run;
        files[f]->read(ids[i], run, buffers[f].data() + i * width);
        i += run;
      }
    }
  }

  float *x() { return buffers[0].data(); }
  const float *const *get() const { return pointers.data(); }

private:
  std::vector<std::unique_ptr<RowInput>> files;
  std::vector<std::vector<float>> buffers;
  std::vector<const float *> pointers;
};

//===----------------------------------------------------------------------===//
// Training state, checkpoints
//===----------------------------------------------------------------------===//

constexpr int64_t kDeadWindowTokens = 10000000;
constexpr int64_t kSampleRows = 4096;
constexpr const char *kOptimizerFile = "optimizer.safetensors";
constexpr const char *kTrainerStateFile = "trainer_state.json";
const char *const kFoldedParams[] = {"W_enc", "W_dec", "b_dec"};

volatile std::sig_atomic_t stopSignal = 0;
void onStopSignal(int signal) {
  stopSignal = signal;
  // A second signal ends the process the usual way.
  std::signal(signal, SIG_DFL);
}

/// One line of JSON with ", " and ": " separators (as the other commands
/// print); non-finite numbers are null.
std::string flatJson(const Json &value) {
  if (value.is_object()) {
    std::string out = "{";
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      out += (first ? "" : ", ") + jsonString(it.key()) + ": " +
             flatJson(it.value());
      first = false;
    }
    return out + "}";
  }
  if (value.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < value.size(); ++i)
      out += (i ? ", " : "") + flatJson(value[i]);
    return out + "]";
  }
  if (value.is_number_float())
    return formatNumber(value.get<double>());
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

/// The shortest decimal that reads back as `value`, as a double (0.01f
/// is reported as 0.01, not 0.009999999776482582).
double floatValue(float value) {
  if (!std::isfinite(value))
    return value;
  char buffer[32];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer) - 1, value);
  *result.ptr = '\0';
  return std::strtod(buffer, nullptr);
}

/// A double that may be NaN (stored as null).
Json number(double value) {
  return std::isfinite(value) ? Json(value) : Json(nullptr);
}

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, fsync'ed, then renamed over `path`.
void writeFileAtomically(const std::string &path, const std::string &text) {
  std::string temp =
      path + ".tmp-" + std::to_string(static_cast<long>(::getpid()));
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    fail(path + ": cannot write: " + std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t wrote = ::write(fd, text.data() + done, text.size() - done);
    if (wrote < 0 && errno == EINTR)
      continue;
    if (wrote <= 0) {
      std::string reason = std::strerror(errno);
      ::close(fd);
      ::unlink(temp.c_str());
      fail(path + ": cannot write: " + reason);
    }
    done += static_cast<size_t>(wrote);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 ||
      ::rename(temp.c_str(), path.c_str()) != 0) {
    std::string reason = std::strerror(errno);
    ::unlink(temp.c_str());
    fail(path + ": cannot write: " + reason);
  }
}

/// Reads a JSON file (an error names it).
Json readJsonFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail(path + ": cannot read: " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception &error) {
    fail(path + ": invalid JSON: " + error.what());
  }
}

/// Field `key` of the trainer state, of the expected kind.
const Json &stateField(const Json &state, const std::string &path,
                       const char *key) {
  auto it = state.find(key);
  if (it == state.end())
    fail(path + ": missing \"" + key +
         "\" (is it a trainer state of sae "
         "train?)");
  return *it;
}

uint64_t stateUnsigned(const Json &state, const std::string &path,
                       const char *key) {
  const Json &value = stateField(state, path, key);
  if (!value.is_number_unsigned() &&
      !(value.is_number_integer() && value.get<int64_t>() >= 0))
    fail(path + ": \"" + key + "\" is not a non-negative integer");
  return value.get<uint64_t>();
}

double stateReal(const Json &state, const std::string &path, const char *key) {
  const Json &value = stateField(state, path, key);
  if (!value.is_number())
    fail(path + ": \"" + key + "\" is not a number");
  return value.get<double>();
}

/// The index of each parameter named in kFoldedParams (normalisation).
std::vector<size_t> foldedParamIndices(const sae_rt_model *m) {
  std::vector<size_t> indices;
  std::string missing;
  for (const char *name : kFoldedParams) {
    int64_t index = findParam(m, name);
    if (index < 0)
      missing += (missing.empty() ? "'" : ", '") + std::string(name) + "'";
    else
      indices.push_back(static_cast<size_t>(index));
  }
  if (!missing.empty())
    fail(modelLabel(m) +
         " normalises its inputs (train.normalize is 'expected_norm'), but "
         "has no parameter " +
         missing +
         "; the trainer folds the normalisation factor into W_enc, W_dec "
         "and b_dec (SAELens' names) when saving");
  return indices;
}

/// An F32 tensor of `path` named `name` with exactly `numel` elements,
/// read into `dst`.
void readTensor(sae_rt_safetensors *st, const std::string &path,
                const std::string &name, const sae_rt_model *m, size_t param,
                float *dst) {
  int64_t index = sae_rt_safetensors_find(st, name.c_str());
  if (index < 0)
    fail(path + ": missing tensor '" + name + "'");
  int32_t ndim = 0;
  const int64_t *shape =
      sae_rt_safetensors_shape(st, static_cast<size_t>(index), &ndim);
  int32_t wantNdim = sae_rt_model_param_ndim(m, param);
  const int64_t *want = sae_rt_model_param_shape(m, param);
  bool same = ndim == wantNdim;
  for (int32_t i = 0; same && i < ndim; ++i)
    same = shape[i] == want[i];
  if (!same)
    fail(path + ": tensor '" + name + "' has shape " + shapeText(ndim, shape) +
         ", expected " + shapeText(wantNdim, want));
  ArrayHolder array;
  check(sae_rt_safetensors_read(st, name.c_str(), &array.array));
  if (array.array.dtype != SAE_RT_DTYPE_FLOAT32)
    fail(path + ": tensor '" + name + "' has dtype " +
         sae_rt_dtype_name(array.array.dtype) + ", expected float32");
  std::memcpy(dst, array.array.data,
              static_cast<size_t>(sae_rt_model_param_numel(m, param)) *
                  sizeof(float));
}

struct SafetensorsCloser {
  void operator()(sae_rt_safetensors *st) const {
    sae_rt_safetensors_close(st);
  }
};
using SafetensorsPtr = std::unique_ptr<sae_rt_safetensors, SafetensorsCloser>;

std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    return "?";
  long total = static_cast<long>(seconds + 0.5);
  char buffer[32];
  if (total >= 3600)
    std::snprintf(buffer, sizeof(buffer), "%ld:%02ld:%02ld", total / 3600,
                  total / 60 % 60, total % 60);
  else
    std::snprintf(buffer, sizeof(buffer), "%ld:%02ld", total / 60, total % 60);
  return buffer;
}

std::string shortNumber(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.4g", value);
  return buffer;
}

/// A non-negative count given by --NAME (at most 2^62).
int64_t parseCountOption(const Args &args, const std::string &name,
                         int64_t fallback, int64_t minimum) {
  if (!args.has(name))
    return fallback;
  uint64_t value = parseUnsigned(args, name, 0);
  if (value < static_cast<uint64_t>(minimum) || value > (uint64_t(1) << 62))
    throw UsageError{args.command, "--" + name + " must be between " +
                                       std::to_string(minimum) + " and 2^62"};
  return static_cast<int64_t>(value);
}

/// A real --NAME in [low, high) (high excluded when `open`), or >= low.
double parseRealOption(const Args &args, const std::string &name,
                       double fallback, double low, double high,
                       const char *range) {
  double value = parseDouble(args, name, fallback);
  if (args.has(name) && (value < low || !(value < high)))
    throw UsageError{args.command, "--" + name + " must be " + range};
  return value;
}

/// Everything a run needs to know, fixed at the start.
struct TrainRun {
  const sae_rt_model *m = nullptr;
  std::string library;
  sae_rt_train_config config{};
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t batch = 0;
  int64_t rows = 0;
  int64_t stepsPerEpoch = 0;
  int64_t totalSteps = 0;
  double normFactor = 1.0;
  bool normalizing = false;
  std::vector<size_t> folded; ///< params folded when normalising
  std::string out;
  std::string data;
};

/// Mutable training state, saved in checkpoints.
struct TrainProgress {
  int64_t step = 0;
  int64_t tokens = 0;
  std::vector<int64_t>
      lastFired; ///< tokens at the last step each fired; 0: never
};

Json trainerState(const TrainRun &run, const TrainProgress &progress) {
  const sae_rt_train_config &c = run.config;
  int64_t epoch = progress.step / run.stepsPerEpoch;
  Json hyper = Json::object();
  hyper["lr"] = c.lr;
  hyper["beta1"] = c.beta1;
  hyper["beta2"] = c.beta2;
  hyper["eps"] = c.eps;
  hyper["clip"] = c.clip;
  hyper["lr_warmup"] = c.lr_warmup;
  hyper["lr_decay"] = sae_rt_lr_decay_name(c.lr_decay);
  hyper["sparsity_warmup"] = c.sparsity_warmup;
  const char *unitNorm = sae_rt_model_train_unit_norm(run.m);
  Json state = Json::object();
  state["format"] = "saec-trainer-state";
  state["version"] = 1;
  state["model"] = sae_rt_model_name(run.m);
  state["library"] = run.library;
  state["abi_version"] = sae_rt_model_abi_version(run.m);
  state["step"] = progress.step;
  state["total_steps"] = run.totalSteps;
  state["tokens"] = progress.tokens;
  state["seed"] = run.seed;
  state["batch"] = run.batch;
  state["shuffle"] = run.shuffle;
  state["data"] = run.data;
  state["data_rows"] = run.rows;
  state["steps_per_epoch"] = run.stepsPerEpoch;
  state["epoch"] = epoch;
  state["batch_in_epoch"] = progress.step - epoch * run.stepsPerEpoch;
  state["hyper"] = hyper;
  state["unit_norm"] = unitNorm ? Json(unitNorm) : Json(nullptr);
  state["normalize"] = sae_rt_normalize_name(c.normalize);
  state["normalization_factor"] = run.normFactor;
  state["weights_folded"] = run.normalizing;
  state["dead_window_tokens"] = kDeadWindowTokens;
  state["last_fired_tokens"] = progress.lastFired;
  return state;
}

/// Writes the checkpoint of `progress` to run.out in one atomic swap.
void saveTrainCheckpoint(const TrainRun &run, const TrainProgress &progress,
                         float *const *params, float *const *adamM,
                         float *const *adamV, float *const *scratch) {
  const sae_rt_model *m = run.m;
  size_t count = sae_rt_model_param_count(m);
  // The weights as saved: folded for raw x when normalising.
  std::vector<float *> saved(params, params + count);
  if (run.normalizing) {
    for (size_t i = 0; i < count; ++i) {
      std::memcpy(scratch[i], params[i],
                  static_cast<size_t>(sae_rt_model_param_numel(m, i)) *
                      sizeof(float));
      saved[i] = scratch[i];
    }
    float c = static_cast<float>(run.normFactor);
    for (size_t k = 0; k < run.folded.size(); ++k) {
      size_t i = run.folded[k];
      int64_t numel = sae_rt_model_param_numel(m, i);
      for (int64_t j = 0; j < numel; ++j)
        scratch[i][j] = k == 0 ? scratch[i][j] * c : scratch[i][j] / c;
    }
  }

  std::vector<std::string> names;
  std::vector<sae_rt_array> arrays;
  auto add = [&](const std::string &name, size_t param, float *data) {
    names.push_back(name);
    sae_rt_array array{};
    array.dtype = SAE_RT_DTYPE_FLOAT32;
    array.ndim = sae_rt_model_param_ndim(m, param);
    const int64_t *shape = sae_rt_model_param_shape(m, param);
    for (int32_t d = 0; d < array.ndim; ++d)
      array.shape[d] = shape[d];
    array.data = data;
    arrays.push_back(array);
  };
  size_t slot = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!sae_rt_model_param_trainable(m, i))
      continue;
    std::string name = sae_rt_model_param_name(m, i);
    add(name + ".exp_avg", i, adamM[slot]);
    add(name + ".exp_avg_sq", i, adamV[slot]);
    ++slot;
  }
  if (run.normalizing)
    for (size_t i : run.folded)
      add(std::string(sae_rt_model_param_name(m, i)) + ".training", i,
          params[i]);
  std::vector<const char *> namePointers;
  for (const std::string &name : names)
    namePointers.push_back(name.c_str());

  std::string state = trainerState(run, progress).dump(2) + "\n";
  sae_rt_checkpoint_file files[2] = {};
  files[0].name = kOptimizerFile;
  files[0].tensor_count = names.size();
  files[0].tensor_names = namePointers.data();
  files[0].tensors = arrays.data();
  files[1].name = kTrainerStateFile;
  files[1].text = state.c_str();
  check(
      sae_rt_checkpoint_save_files(m, run.out.c_str(), saved.data(), 2, files));
}

/// An existing --out must be a directory that is empty or a checkpoint
/// (checked before training rather than at the first save).
void checkOutDir(const std::string &out) {
  struct stat info;
  if (::stat(out.c_str(), &info) != 0)
    return;
  if (!S_ISDIR(info.st_mode))
    fail("--out " + out + ": exists and is not a directory");
  bool empty = true, checkpoint = false;
  for (const auto &entry : std::filesystem::directory_iterator(out)) {
    std::string name = entry.path().filename().string();
    empty = false;
    checkpoint =
        checkpoint || name == "cfg.json" || name == "sae_weights.safetensors";
  }
  if (!empty && !checkpoint)
    fail("--out " + out +
         ": refusing to replace an existing directory that is not a "
         "checkpoint");
}

/// Moving statistics between two progress reports.
struct Window {
  int64_t steps = 0;
  int64_t rows = 0;
  double sse = 0, sst = 0, active = 0;
  std::vector<double> lossSums;

  void reset(size_t losses) {
    steps = rows = 0;
    sse = sst = active = 0;
    lossSums.assign(losses, 0.0);
  }
};

int runTrain(int argc, char **argv) {
  Args args;
  if (!parseArgs("train", kTrainHelp, argc, argv, 2,
                 {{"threads", true},
                  {"data", true},
                  {"tensor", true},
                  {"input-data", true, true},
                  {"input-tensor", true, true},
                  {"steps", true},
                  {"tokens", true},
                  {"batch", true},
                  {"lr", true},
                  {"beta1", true},
                  {"beta2", true},
                  {"eps", true},
                  {"clip", true},
                  {"lr-warmup", true},
                  {"lr-decay", true},
                  {"sparsity-warmup", true},
                  {"seed", true},
                  {"init", true},
                  {"out", true},
                  {"checkpoint-every", true},
                  {"resume", true},
                  {"no-shuffle", false},
                  {"metrics-json", true},
                  {"log-every", true},
                  {"stop-after", true},
                  {"D", true, true}},
                 args))
    return 0;

  // Usage checks, before anything is loaded.
  std::string target = args.library();
  args.required("data");
  if (args.has("steps") && args.has("tokens"))
    throw UsageError{args.command, "--steps and --tokens exclude each other"};
  if (args.has("init") && args.has("resume"))
    throw UsageError{args.command,
                     "--init and --resume exclude each other (a resumed run "
                     "has its parameters)"};
  if (!args.has("out") && !args.has("resume"))
    throw UsageError{args.command, "missing required option --out"};
  std::vector<std::string> defines = args.all("D");
  for (const std::string &define : defines)
    splitAssignment(args, "-D", define);
  bool isSpec = endsWith(target, ".sae");
  if (!isSpec && !defines.empty())
    throw UsageError{args.command, "-D overrides a dimension of a .sae spec; " +
                                       target + " is already compiled"};
  int64_t steps = parseCountOption(args, "steps", 0, 1);
  int64_t tokensWanted = parseCountOption(args, "tokens", 0, 1);
  int64_t batchFlag = args.has("batch") ? parseRowCount(args, "batch", 1) : 0;
  double lrFlag =
      parseRealOption(args, "lr", 0, 0.0, INFINITY, "a finite number >= 0");
  double beta1Flag = parseRealOption(args, "beta1", 0, 0.0, 1.0, "in [0, 1)");
  double beta2Flag = parseRealOption(args, "beta2", 0, 0.0, 1.0, "in [0, 1)");
  double epsFlag =
      parseRealOption(args, "eps", 0, 0.0, INFINITY, "a finite number >= 0");
  double clipFlag = parseRealOption(args, "clip", 0, 0.0, INFINITY,
                                    "a finite number >= 0 (0: no clipping)");
  int64_t lrWarmupFlag = parseCountOption(args, "lr-warmup", 0, 0);
  int64_t sparsityWarmupFlag = parseCountOption(args, "sparsity-warmup", 0, 0);
  sae_rt_lr_decay decayFlag = SAE_RT_LR_DECAY_NONE;
  if (args.has("lr-decay")) {
    std::string decay = args.get("lr-decay");
    if (decay == "none")
      decayFlag = SAE_RT_LR_DECAY_NONE;
    else if (decay == "linear")
      decayFlag = SAE_RT_LR_DECAY_LINEAR;
    else if (decay == "cosine")
      decayFlag = SAE_RT_LR_DECAY_COSINE;
    else
      throw UsageError{args.command, "--lr-decay must be none, linear or "
                                     "cosine, got '" +
                                         decay + "'"};
  }
  uint64_t seedFlag = parseUnsigned(args, "seed", 0);
  int64_t checkpointEvery = parseCountOption(args, "checkpoint-every", 0, 0);
  int64_t logEveryFlag = parseCountOption(args, "log-every", -1, 0);
  int64_t stopAfter = parseCountOption(args, "stop-after", 0, 1);

  // The model.
  std::string library = isSpec ? compileSpec(target, defines) : target;
  ModelPtr model = openModel(library, &args);
  const sae_rt_model *m = model.get();
  if (!sae_rt_model_entry_points(m)->train_step)
    fail(modelLabel(m) + " has no entry point " SAE_SYM_TRAIN_STEP
                         " (a library compiled for ABI 3 with training "
                         "lists it in its description); it cannot be "
                         "trained by sae");

  TrainRun run;
  run.m = m;
  run.library = library;
  run.config = *sae_rt_model_train_config(m);
  run.seed = seedFlag;
  run.shuffle = !args.has("no-shuffle");
  run.out = args.has("out") ? args.get("out") : args.get("resume");
  run.data = args.get("data");
  TrainProgress progress;
  int64_t n = sae_rt_model_latents(m);
  progress.lastFired.assign(static_cast<size_t>(n), 0);

  // A resumed run: its recorded settings are the defaults.
  Json state;
  std::string resumeDir = args.get("resume");
  std::string statePath = resumeDir + "/" + kTrainerStateFile;
  int64_t recordedTotal = 0;
  if (!resumeDir.empty()) {
    state = readJsonFile(statePath);
    if (!state.is_object() || state.value("format", "") != "saec-trainer-state")
      fail(statePath + ": not a trainer state written by sae train");
    std::string recordedModel =
        stateField(state, statePath, "model").is_string()
            ? state["model"].get<std::string>()
            : "";
    if (recordedModel != sae_rt_model_name(m))
      fail(resumeDir + " is a checkpoint of model '" + recordedModel +
           "', not of " + modelLabel(m));
    uint64_t recordedSeed = stateUnsigned(state, statePath, "seed");
    int64_t recordedBatch =
        static_cast<int64_t>(stateUnsigned(state, statePath, "batch"));
    const Json &shuffle = stateField(state, statePath, "shuffle");
    if (!shuffle.is_boolean())
      fail(statePath + ": \"shuffle\" is not a boolean");
    if (args.has("seed") && seedFlag != recordedSeed)
      fail("--seed " + std::to_string(seedFlag) + " differs from the seed " +
           std::to_string(recordedSeed) + " of the run in " + resumeDir +
           " (a resumed run keeps its seed)");
    if (args.has("batch") && batchFlag != recordedBatch)
      fail("--batch " + std::to_string(batchFlag) +
           " differs from the batch size " + std::to_string(recordedBatch) +
           " of the run in " + resumeDir +
           " (a resumed run keeps its batch size)");
    if (args.has("no-shuffle") && shuffle.get<bool>())
      fail("--no-shuffle: the run in " + resumeDir +
           " shuffled its rows (a resumed run keeps its order)");
    run.seed = recordedSeed;
    run.shuffle = shuffle.get<bool>();
    run.config.batch = recordedBatch;
    const Json &hyper = stateField(state, statePath, "hyper");
    if (!hyper.is_object())
      fail(statePath + ": \"hyper\" is not an object");
    run.config.lr = stateReal(hyper, statePath, "lr");
    run.config.beta1 = stateReal(hyper, statePath, "beta1");
    run.config.beta2 = stateReal(hyper, statePath, "beta2");
    run.config.eps = stateReal(hyper, statePath, "eps");
    run.config.clip = stateReal(hyper, statePath, "clip");
    run.config.lr_warmup =
        static_cast<int64_t>(stateUnsigned(hyper, statePath, "lr_warmup"));
    run.config.sparsity_warmup = static_cast<int64_t>(
        stateUnsigned(hyper, statePath, "sparsity_warmup"));
    std::string decay = stateField(hyper, statePath, "lr_decay").is_string()
                            ? hyper["lr_decay"].get<std::string>()
                            : "";
    if (decay == "none")
      run.config.lr_decay = SAE_RT_LR_DECAY_NONE;
    else if (decay == "linear")
      run.config.lr_decay = SAE_RT_LR_DECAY_LINEAR;
    else if (decay == "cosine")
      run.config.lr_decay = SAE_RT_LR_DECAY_COSINE;
    else
      fail(statePath + ": unknown lr_decay '" + decay + "'");
    progress.step =
        static_cast<int64_t>(stateUnsigned(state, statePath, "step"));
    progress.tokens =
        static_cast<int64_t>(stateUnsigned(state, statePath, "tokens"));
    recordedTotal =
        static_cast<int64_t>(stateUnsigned(state, statePath, "total_steps"));
    const Json &fired = stateField(state, statePath, "last_fired_tokens");
    if (!fired.is_array() || fired.size() != static_cast<size_t>(n))
      fail(statePath + ": \"last_fired_tokens\" is not an array of " +
           std::to_string(n) + " counts");
    for (size_t j = 0; j < fired.size(); ++j) {
      if (!fired[j].is_number_integer())
        fail(statePath + ": \"last_fired_tokens\" holds a non-integer");
      progress.lastFired[j] = fired[j].get<int64_t>();
    }
  }

  // Flags override the library's (or the resumed run's) settings.
  sae_rt_train_config &config = run.config;
  if (args.has("batch"))
    config.batch = batchFlag;
  if (args.has("lr"))
    config.lr = lrFlag;
  if (args.has("beta1"))
    config.beta1 = beta1Flag;
  if (args.has("beta2"))
    config.beta2 = beta2Flag;
  if (args.has("eps"))
    config.eps = epsFlag;
  if (args.has("clip"))
    config.clip = clipFlag;
  if (args.has("lr-warmup"))
    config.lr_warmup = lrWarmupFlag;
  if (args.has("lr-decay"))
    config.lr_decay = decayFlag;
  if (args.has("sparsity-warmup"))
    config.sparsity_warmup = sparsityWarmupFlag;
  check(sae_rt_train_config_validate(&config));
  run.batch = config.batch;
  run.normalizing = config.normalize == SAE_RT_NORMALIZE_EXPECTED_NORM;
  if (run.normalizing)
    run.folded = foldedParamIndices(m);
  checkOutDir(run.out);

  // The data.
  TrainInputs in(m, args);
  run.rows = in.getRows();
  run.stepsPerEpoch = run.rows / run.batch;
  if (run.stepsPerEpoch == 0)
    fail(in.getPath() + " has " + std::to_string(run.rows) +
         " rows, fewer than one batch of " + std::to_string(run.batch) +
         " (lower --batch)");
  if (!resumeDir.empty()) {
    int64_t recordedRows =
        static_cast<int64_t>(stateUnsigned(state, statePath, "data_rows"));
    if (recordedRows != run.rows)
      fail(in.getPath() + " has " + std::to_string(run.rows) +
           " rows, but the run in " + resumeDir + " trained on " +
           std::to_string(recordedRows) + " (resume with the same data)");
  }
  if (args.has("steps"))
    run.totalSteps = steps;
  else if (args.has("tokens"))
    run.totalSteps = tokensWanted / run.batch + (tokensWanted % run.batch != 0);
  else if (!resumeDir.empty())
    run.totalSteps = recordedTotal;
  else
    run.totalSteps = run.stepsPerEpoch;
  int64_t stopAt = run.totalSteps;
  if (stopAfter > 0)
    stopAt = std::min(stopAt, stopAfter);
  int64_t firstStep = progress.step;
  int64_t logEvery = logEveryFlag >= 0
                         ? logEveryFlag
                         : std::max<int64_t>(1, run.totalSteps / 100);
  bool timedLogs = logEveryFlag < 0;

  int64_t d = sae_rt_model_input_dim(m);
  int64_t sampleRows = std::min(run.rows, kSampleRows);
  if (run.normalizing) {
    if (!resumeDir.empty()) {
      run.normFactor = stateReal(state, statePath, "normalization_factor");
      if (!(run.normFactor > 0) || !std::isfinite(run.normFactor))
        fail(statePath + ": \"normalization_factor\" is not a positive number");
    } else {
      std::vector<int64_t> ids(static_cast<size_t>(sampleRows));
      std::iota(ids.begin(), ids.end(), int64_t(0));
      in.allocate(sampleRows);
      in.gather(ids.data(), sampleRows);
      double normSum = 0;
      const float *x = in.x();
      for (int64_t r = 0; r < sampleRows; ++r) {
        double sum = 0;
        for (int64_t j = 0; j < d; ++j)
          sum += static_cast<double>(x[r * d + j]) * x[r * d + j];
        normSum += std::sqrt(sum);
      }
      double meanNorm = normSum / static_cast<double>(sampleRows);
      if (!(meanNorm > 0))
        fail(in.getPath() + ": the first " + std::to_string(sampleRows) +
             " rows are all zero; they cannot set the normalisation factor");
      run.normFactor = std::sqrt(static_cast<double>(d)) / meanNorm;
    }
  }
  float scale = static_cast<float>(run.normFactor);

  // Parameters and optimizer state.
  ParamBuffers params, scratch, adamM, adamV;
  check(sae_rt_params_alloc(m, params.out()));
  check(sae_rt_trainable_alloc(m, adamM.out()));
  check(sae_rt_trainable_alloc(m, adamV.out()));
  if (run.normalizing)
    check(sae_rt_params_alloc(m, scratch.out()));
  size_t paramCount = sae_rt_model_param_count(m);
  if (!resumeDir.empty()) {
    check(sae_rt_checkpoint_load(m, resumeDir.c_str(), params.get()));
    std::string optimizerPath = resumeDir + "/" + kOptimizerFile;
    sae_rt_safetensors *raw = nullptr;
    check(sae_rt_safetensors_open(optimizerPath.c_str(), &raw));
    SafetensorsPtr st(raw);
    size_t slot = 0;
    for (size_t i = 0; i < paramCount; ++i) {
      if (!sae_rt_model_param_trainable(m, i))
        continue;
      std::string name = sae_rt_model_param_name(m, i);
      readTensor(st.get(), optimizerPath, name + ".exp_avg", m, i,
                 adamM.get()[slot]);
      readTensor(st.get(), optimizerPath, name + ".exp_avg_sq", m, i,
                 adamV.get()[slot]);
      ++slot;
    }
    // The saved weights are folded; the exact training values are kept.
    if (run.normalizing)
      for (size_t i : run.folded)
        readTensor(st.get(), optimizerPath,
                   std::string(sae_rt_model_param_name(m, i)) + ".training", m,
                   i, params.get()[i]);
  } else if (args.has("init")) {
    check(sae_rt_checkpoint_load(m, args.get("init").c_str(), params.get()));
  } else {
    std::vector<float> sample;
    int64_t initRows = 0;
    if (sae_rt_model_init_needs_data(m)) {
      initRows = sampleRows;
      std::vector<int64_t> ids(static_cast<size_t>(initRows));
      std::iota(ids.begin(), ids.end(), int64_t(0));
      in.allocate(initRows);
      in.gather(ids.data(), initRows);
      sample.assign(in.x(), in.x() + elements(initRows, d));
      if (run.normalizing)
        for (float &value : sample)
          value *= scale;
    }
    check(sae_rt_model_init(m, run.seed, initRows,
                            initRows ? sample.data() : nullptr, params.get()));
  }

  // Buffers of a step.
  in.allocate(run.batch);
  size_t termCount = sae_rt_model_loss_term_count(m);
  std::vector<float> losses(termCount + 1), metrics(SAE_METRIC_COUNT),
      fired(static_cast<size_t>(n)), hyper(SAE_HYPER_COUNT);
  std::vector<int64_t> order, batchRows(static_cast<size_t>(run.batch));
  int64_t orderEpoch = -1;
  Window window;
  window.reset(losses.size());
  Json history = Json::array();
  Json lastReport;
  double lastLr = NAN;

  bool tty = ::isatty(STDERR_FILENO) == 1;
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now(), lastLog = start;
  int64_t lastSaved =
      resumeDir.empty() || run.out != resumeDir ? -1 : firstStep;
  bool wroteLine = false;

  auto deadCount = [&]() {
    int64_t dead = 0;
    for (int64_t fire : progress.lastFired)
      dead += fire == 0 ? progress.tokens > 0
                        : progress.tokens - fire >= kDeadWindowTokens;
    return dead;
  };
  auto keptText = [&]() {
    if (lastSaved >= 0)
      return "the checkpoint of step " + std::to_string(lastSaved) + " in " +
             run.out + " is kept";
    return "no checkpoint was written to " + run.out;
  };

  // A progress report over the window; prints it when `print`.
  auto report = [&](bool print) {
    double seconds =
        std::chrono::duration<double>(Clock::now() - start).count();
    double runTokens =
        static_cast<double>(progress.tokens) -
        static_cast<double>(firstStep) * static_cast<double>(run.batch);
    double rate = seconds > 0 ? runTokens / seconds : 0.0;
    int64_t doneHere = progress.step - firstStep;
    double eta = doneHere > 0 ? seconds / static_cast<double>(doneHere) *
                                    static_cast<double>(stopAt - progress.step)
                              : NAN;
    double stepsInWindow = static_cast<double>(window.steps);
    Json entry = Json::object();
    entry["step"] = progress.step;
    entry["tokens"] = progress.tokens;
    entry["seconds"] = seconds;
    entry["tokens_per_s"] = rate;
    entry["lr"] = number(lastLr);
    entry["loss"] = number(window.lossSums[0] / stepsInWindow);
    Json terms = Json::object();
    for (size_t i = 0; i < termCount; ++i)
      terms[sae_rt_model_loss_term_name(m, i)] =
          number(window.lossSums[i + 1] / stepsInWindow);
    entry["terms"] = terms;
    entry["l0"] = number(window.active / static_cast<double>(window.rows));
    entry["fvu"] = number(window.sst > 0 ? window.sse / window.sst : NAN);
    int64_t dead = deadCount();
    entry["dead_latents"] = dead;
    entry["dead_fraction"] = static_cast<double>(dead) / static_cast<double>(n);
    history.push_back(entry);
    lastReport = entry;
    if (print) {
      std::string line = "sae train: step " + std::to_string(progress.step) +
                         "/" + std::to_string(run.totalSteps) + " | " +
                         shortNumber(rate) + " tok/s | ETA " +
                         formatDuration(eta) + " | loss " +
                         shortNumber(window.lossSums[0] / stepsInWindow);
      for (size_t i = 0; i < termCount; ++i)
        line += std::string(i ? ", " : " (") +
                sae_rt_model_loss_term_name(m, i) + " " +
                shortNumber(window.lossSums[i + 1] / stepsInWindow);
      if (termCount)
        line += ")";
      line += " | L0 " +
              shortNumber(window.active / static_cast<double>(window.rows)) +
              " | FVU " +
              (window.sst > 0 ? shortNumber(window.sse / window.sst) : "n/a") +
              " | dead " +
              shortNumber(100.0 * static_cast<double>(dead) /
                          static_cast<double>(n)) +
              "% | lr " + shortNumber(lastLr);
      if (tty)
        std::fprintf(stderr, "\r\033[K%s", line.c_str());
      else
        std::fprintf(stderr, "%s\n", line.c_str());
      std::fflush(stderr);
      wroteLine = true;
    }
    window.reset(losses.size());
    lastLog = Clock::now();
  };

  std::signal(SIGINT, onStopSignal);
  std::signal(SIGTERM, onStopSignal);
  while (progress.step < stopAt && !stopSignal) {
    int64_t t = progress.step + 1;
    // The rows of step t.
    int64_t index = t - 1;
    int64_t epoch = index / run.stepsPerEpoch;
    int64_t position = (index % run.stepsPerEpoch) * run.batch;
    if (run.shuffle && epoch != orderEpoch) {
      order.resize(static_cast<size_t>(run.rows));
      check(sae_rt_train_permutation(run.seed, static_cast<uint64_t>(epoch),
                                     run.rows, order.data()));
      orderEpoch = epoch;
    }
    for (int64_t r = 0; r < run.batch; ++r)
      batchRows[static_cast<size_t>(r)] =
          run.shuffle ? order[static_cast<size_t>(position + r)] : position + r;
    try {
      in.gather(batchRows.data(), run.batch);
    } catch (const ToolError &error) {
      fail("step " + std::to_string(t) + ": " + error.message +
           "; training stopped, " + keptText());
    }
    if (run.normalizing) {
      float *x = in.x();
      size_t count = elements(run.batch, d);
      for (size_t i = 0; i < count; ++i)
        x[i] *= scale;
    }
    check(sae_rt_train_hyper(&config, t, run.totalSteps, hyper.data()));
    lastLr = floatValue(hyper[SAE_HYPER_LR]);
    uint64_t stepSeed =
        sae_rt_train_step_seed(run.seed, static_cast<uint64_t>(t));
    sae_rt_status status = sae_rt_model_train_step(
        m, run.batch, in.get(), params.get(), adamM.get(), adamV.get(),
        hyper.data(), stepSeed, losses.data(), metrics.data(), fired.data());
    if (status != SAE_RT_OK)
      fail("step " + std::to_string(t) + ": " + sae_rt_last_error() +
           "; training stopped without saving this step's parameters; " +
           keptText());
    for (size_t i = 0; i < losses.size(); ++i) {
      if (std::isfinite(losses[i]))
        continue;
      std::string values;
      for (size_t j = 0; j < losses.size(); ++j)
        values +=
            (j ? ", " : "") +
            std::string(j ? sae_rt_model_loss_term_name(m, j - 1) : "total") +
            " " + realText(losses[j]);
      fail("step " + std::to_string(t) + ": loss is " + realText(losses[i]) +
           " (" + values +
           "); training stopped without saving this step's parameters; " +
           keptText());
    }
    progress.step = t;
    progress.tokens += run.batch;
    for (int64_t j = 0; j < n; ++j)
      if (fired[static_cast<size_t>(j)] > 0)
        progress.lastFired[static_cast<size_t>(j)] = progress.tokens;
    ++window.steps;
    window.rows += run.batch;
    window.sse += metrics[SAE_METRIC_SSE];
    window.sst += metrics[SAE_METRIC_SST];
    window.active += metrics[SAE_METRIC_ACTIVE];
    for (size_t i = 0; i < losses.size(); ++i)
      window.lossSums[i] += losses[i];

    bool last = t == stopAt || stopSignal;
    bool due = logEvery > 0 && t % logEvery == 0;
    bool timed =
        timedLogs && Clock::now() - lastLog >= std::chrono::seconds(10);
    if (last || due || timed)
      report(logEvery > 0 || timedLogs);
    if (!last && checkpointEvery > 0 && t % checkpointEvery == 0) {
      saveTrainCheckpoint(run, progress, params.get(), adamM.get(), adamV.get(),
                          scratch.get());
      lastSaved = t;
    }
  }
  if (tty && wroteLine)
    std::fputc('\n', stderr);
  bool ranSteps = progress.step > firstStep;
  if (ranSteps) {
    saveTrainCheckpoint(run, progress, params.get(), adamM.get(), adamV.get(),
                        scratch.get());
    lastSaved = progress.step;
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  double runTokens = static_cast<double>(progress.step - firstStep) *
                     static_cast<double>(run.batch);

  Json summary = Json::object();
  summary["steps"] = progress.step;
  summary["total_steps"] = run.totalSteps;
  summary["tokens"] = progress.tokens;
  summary["seconds"] = seconds;
  summary["tokens_per_s"] = seconds > 0 ? runTokens / seconds : 0.0;
  summary["threads"] = sae_rt_model_threads(m);
  summary["loss"] = ranSteps ? lastReport["loss"] : Json(nullptr);
  Json terms = Json::object();
  for (size_t i = 0; i < termCount; ++i) {
    const char *name = sae_rt_model_loss_term_name(m, i);
    terms[name] = ranSteps ? lastReport["terms"][name] : Json(nullptr);
  }
  summary["terms"] = terms;
  summary["fvu"] = ranSteps ? lastReport["fvu"] : Json(nullptr);
  summary["l0"] = ranSteps ? lastReport["l0"] : Json(nullptr);
  int64_t dead = deadCount();
  summary["dead_latents"] = dead;
  summary["dead_fraction"] = static_cast<double>(dead) / static_cast<double>(n);
  summary["lr"] = number(lastLr);
  summary["normalization_factor"] =
      run.normalizing ? Json(run.normFactor) : Json(nullptr);
  summary["completed"] = progress.step >= run.totalSteps;
  summary["out"] = run.out;
  std::printf("%s\n", flatJson(summary).c_str());
  if (args.has("metrics-json")) {
    Json full = summary;
    full["history"] = history;
    writeFileAtomically(args.get("metrics-json"), full.dump(2) + "\n");
  }
  if (stopSignal) {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "sae train: interrupted after step %" PRId64
                 "; the checkpoint is in %s (continue with --resume %s)\n",
                 progress.step, run.out.c_str(), run.out.c_str());
    return 130;
  }
  return 0;
}

int dispatch(int argc, char **argv) {
  if (argc < 2) {
    std::fputs(kMainHelp, stderr);
    return 2;
  }
  std::string command = argv[1];
  if (command == "-h" || command == "--help" || command == "help") {
    std::fputs(kMainHelp, stdout);
    return 0;
  }
  if (command == "--version") {
    std::printf("sae (saec runtime, ABI version %u)\n", SAE_ABI_VERSION);
    return 0;
  }
  if (command == "info")
    return runInfo(argc, argv);
  if (command == "init")
    return runInit(argc, argv);
  if (command == "encode")
    return runEncode(argc, argv);
  if (command == "decode")
    return runDecode(argc, argv);
  if (command == "forward")
    return runForward(argc, argv);
  if (command == "eval")
    return runEval(argc, argv);
  if (command == "synth")
    return runSynth(argc, argv);
  if (command == "train")
    return runTrain(argc, argv);
  throw UsageError{"", "unknown command '" + command + "'"};
}

} // namespace

/// The runtime's fault-injection hook (status.cpp; not in the public
/// header): the unit tests arm it through $SAE_TESTING_FAULTS to kill the
/// tool in the middle of a checkpoint write.
extern "C" void sae_rt_testing_set_fault(const char *points);

int main(int argc, char **argv) {
  // The tool allocates and frees the same large arrays batch after batch
  // (inputs, codes, outputs). glibc would hand each one back to the kernel
  // (mmap above 128 KiB, trimming above 128 KiB free) and fault its pages
  // in again on the next batch; keeping them in the heap makes later
  // batches reuse them. (Model entry points keep their own work memory:
  // runtime/src/cpu/workspace.c.)
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (const char *faults = std::getenv("SAE_TESTING_FAULTS"))
    sae_rt_testing_set_fault(faults);
  try {
    int status = dispatch(argc, argv);
    if (std::fflush(stdout) != 0) {
      std::fprintf(stderr, "sae: error: cannot write to stdout\n");
      return 1;
    }
    return status;
  } catch (const UsageError &error) {
    std::string where = error.command.empty() ? "sae" : "sae " + error.command;
    std::fprintf(stderr, "%s: usage error: %s\nRun '%s --help' for usage.\n",
                 where.c_str(), error.message.c_str(), where.c_str());
    return 2;
  } catch (const ToolError &error) {
    std::fprintf(stderr, "sae: error: %s\n", error.message.c_str());
    return 1;
  } catch (const std::bad_alloc &) {
    std::fprintf(stderr,
                 "sae: error: out of memory (try a smaller --batch-size)\n");
    return 1;
  } catch (const std::exception &error) {
    std::fprintf(stderr, "sae: error: %s\n", error.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "sae: error: unexpected failure\n");
    return 1;
  }
}
