//===- sae.cpp - The `sae` command-line tool ------------------------------===//
//
// `sae` runs models compiled by saec through libsae_runtime: it shows what a
// library contains (info), creates checkpoints (init), and encodes, decodes
// and reconstructs .npy data in bounded-memory chunks (encode, decode,
// forward). Usage errors exit with 2, runtime errors with 1.
//
//===----------------------------------------------------------------------===//

#include "sae/runtime/runtime.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

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
    "  encode   encode input rows (.npy) into codes (.npy or .npz)\n"
    "  decode   decode codes (.npy or .npz) into reconstructions (.npy)\n"
    "  forward  reconstruct inputs and report the loss (and its terms),\n"
    "           MSE, FVU and L0\n"
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
    "whether the forward pass is stochastic, parameters (shape and\n"
    "initialiser), the target CPU and the entry points.\n"
    "\n"
    "options:\n"
    "  --json       print the library's model description (JSON), indented\n"
    "  -h, --help   show this help\n";

const char *const kInitHelp =
    "usage: sae init LIB.so --out CKPT_DIR [--seed S] [--data X.npy]\n"
    "                [--data-rows N]\n"
    "\n"
    "Initialises every parameter with the model's initialisers and saves a\n"
    "checkpoint (CKPT_DIR/sae_weights.safetensors and CKPT_DIR/cfg.json).\n"
    "The checkpoint is written atomically; an existing checkpoint at\n"
    "CKPT_DIR is replaced.\n"
    "\n"
    "Models with data-dependent initialisers (data_mean, geometric_median;\n"
    "'sae info' shows 'init data') need a sample of their input x: give it\n"
    "with --data, a .npy or IDX file read like the input of 'sae encode'.\n"
    "Other models accept --data and ignore it.\n"
    "\n"
    "options:\n"
    "  --out DIR      checkpoint directory to write (required)\n"
    "  --seed S       random seed, an unsigned 64-bit integer (default 0)\n"
    "  --data X       data sample for data-dependent initialisers, .npy or\n"
    "                 IDX (required by such models, ignored by others)\n"
    "  --data-rows N  use the first N rows of --data (default 4096; all of\n"
    "                 them if the file has fewer)\n"
    "  -h, --help     show this help\n";

const char *const kEncodeHelp =
    "usage: sae encode LIB.so --checkpoint DIR --input X.npy --output OUT\n"
    "                  [--grad G.npy] [--sparse] [--batch-size N]\n"
    "\n"
    "Encodes the rows of X.npy, a float32 [B, d] array (or [d], one row)\n"
    "whose d is the model's input dimension, or of an IDX file such as\n"
    "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz (plain or\n"
    "gzip; names ending in -ubyte[.gz] or .idx[.gz]; pixels scaled to\n"
    "[0, 1], each image one row). Writes dense codes [B, n] as\n"
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
    "  --input X         input rows, .npy or IDX (required)\n"
    "  --output OUT      output file (required)\n"
    "  --grad G          the model's auxiliary input (e.g. the downstream\n"
    "                    gradient of grad_topk), .npy or IDX, one row per\n"
    "                    row of --input; required by models with an\n"
    "                    auxiliary input, refused by the others\n"
    "  --sparse          write sparse codes (models with sparse codes only)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  -h, --help        show this help\n";

const char *const kDecodeHelp =
    "usage: sae decode LIB.so --checkpoint DIR --input Z.npy|Z.npz\n"
    "                  --output XHAT.npy [--batch-size N]\n"
    "\n"
    "Decodes codes into reconstructions XHAT [B, d] (float32 .npy). The\n"
    "input is one of\n"
    "  - dense codes, a float32 [B, n] .npy;\n"
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
    "  --output XHAT.npy output file (required)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  -h, --help        show this help\n";

const char *const kForwardHelp =
    "usage: sae forward LIB.so --checkpoint DIR --input X.npy\n"
    "                   [--grad G.npy] [--output XHAT.npy] [--seed S]\n"
    "                   [--batch-size N]\n"
    "\n"
    "Runs the model's forward pass (its training form: batch-level\n"
    "selection per chunk of --batch-size rows, sampling when stochastic)\n"
    "over X.npy (float32 [B, d] or [d], or an IDX file as for 'sae encode')\n"
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
    "  --input X         input rows, .npy or IDX (required)\n"
    "  --grad G          the model's auxiliary input, as for 'sae encode'\n"
    "  --output XHAT.npy also write the reconstructions\n"
    "  --seed S          seed of stochastic models, an unsigned 64-bit\n"
    "                    integer (default 0); chunk i (from 0) gets S + i\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  -h, --help        show this help\n";

//===----------------------------------------------------------------------===//
// Command-line parsing
//===----------------------------------------------------------------------===//

struct OptionSpec {
  const char *name; ///< Without the leading "--".
  bool takesValue;
};

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;

  bool has(const std::string &name) const { return values.count(name) != 0; }

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
    if (arg.compare(0, 2, "--") != 0)
      throw UsageError{command, "unknown option '" + arg + "'"};
    std::string name = arg.substr(2), value;
    bool inlineValue = false;
    size_t equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
      inlineValue = true;
    }
    const OptionSpec *spec = nullptr;
    for (const OptionSpec &candidate : specs)
      if (name == candidate.name)
        spec = &candidate;
    if (!spec)
      throw UsageError{command, "unknown option '--" + name + "'"};
    if (spec->takesValue) {
      if (!inlineValue) {
        if (i + 1 >= argc)
          throw UsageError{command, "option --" + name + " needs a value"};
        value = argv[++i];
      }
      if (value.empty())
        throw UsageError{command, "option --" + name + " needs a value"};
    } else if (inlineValue) {
      throw UsageError{command, "option --" + name + " takes no value"};
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

//===----------------------------------------------------------------------===//
// RAII handles and helpers
//===----------------------------------------------------------------------===//

struct ModelCloser {
  void operator()(sae_rt_model *model) const { sae_rt_model_close(model); }
};
struct ReaderCloser {
  void operator()(sae_rt_npy_reader *r) const { sae_rt_npy_reader_close(r); }
};
struct WriterCloser {
  void operator()(sae_rt_npy_writer *w) const { sae_rt_npy_writer_close(w); }
};
struct NpzCloser {
  void operator()(sae_rt_npz *npz) const { sae_rt_npz_close(npz); }
};
using ModelPtr = std::unique_ptr<sae_rt_model, ModelCloser>;
using ReaderPtr = std::unique_ptr<sae_rt_npy_reader, ReaderCloser>;
using WriterPtr = std::unique_ptr<sae_rt_npy_writer, WriterCloser>;
using NpzPtr = std::unique_ptr<sae_rt_npz, NpzCloser>;

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

ModelPtr openModel(const std::string &path) {
  sae_rt_model *model = nullptr;
  check(sae_rt_model_open(path.c_str(), &model));
  return ModelPtr(model);
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
  loaded.model = openModel(args.library());
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

/// A float32 [B, width] or [width] input read in chunks of rows: a .npy
/// file streamed from disk, or an IDX file (plain or gzip) read whole.
class RowInput {
public:
  RowInput(const std::string &path, int64_t width, const std::string &what)
      : path(path), width(width) {
    int32_t ndim;
    const int64_t *shape;
    if (isIdxPath(path)) {
      check(sae_rt_idx_read(path.c_str(), &idx));
      ownsIdx = true;
      ndim = idx.ndim;
      shape = idx.shape;
    } else {
      sae_rt_npy_reader *raw = nullptr;
      check(sae_rt_npy_reader_open(path.c_str(), &raw));
      reader.reset(raw);
      ndim = sae_rt_npy_reader_ndim(raw);
      shape = sae_rt_npy_reader_shape(raw);
      sae_rt_dtype dtype = sae_rt_npy_reader_dtype(raw);
      if (dtype != SAE_RT_DTYPE_FLOAT32)
        fail(path + ": dtype " + sae_rt_dtype_name(dtype) +
             ", expected float32");
    }
    if (ndim == 1) {
      oneRow = true;
      rows = 1;
      if (shape[0] != width)
        fail(path + ": shape " + shapeText(ndim, shape) + " does not match " +
             what);
    } else if (ndim == 2) {
      rows = shape[0];
      if (shape[1] != width)
        fail(path + ": shape " + shapeText(ndim, shape) + " does not match " +
             what);
    } else {
      fail(path + ": shape " + shapeText(ndim, shape) + " is not [B, " +
           std::to_string(width) + "] or [" + std::to_string(width) + "]");
    }
  }
  ~RowInput() {
    if (ownsIdx)
      sae_rt_array_free(&idx);
  }
  RowInput(const RowInput &) = delete;
  RowInput &operator=(const RowInput &) = delete;

  int64_t getRows() const { return rows; }
  int64_t getWidth() const { return width; }
  const std::string &getPath() const { return path; }

  /// Reads rows [first, first + count) into `dst`; a NaN or infinity in
  /// them is an error naming its row and column (the model would otherwise
  /// turn it into garbage codes silently).
  void read(int64_t first, int64_t count, float *dst) {
    readRaw(first, count, dst);
    int64_t n = (oneRow ? 1 : count) * width;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(dst[i]))
        fail(path + ": row " + std::to_string(first + i / width) + ", column " +
             std::to_string(i % width) + " is " +
             (std::isnan(dst[i]) ? "NaN" : "infinite") +
             "; inputs must be finite");
  }

private:
  void readRaw(int64_t first, int64_t count, float *dst) {
    if (ownsIdx) {
      const float *src = static_cast<const float *>(idx.data);
      std::memcpy(dst, src + first * width,
                  static_cast<size_t>(count * width) * sizeof(float));
    } else if (oneRow) {
      check(sae_rt_npy_reader_read_rows(reader.get(), 0, width, dst));
    } else {
      check(sae_rt_npy_reader_read_rows(reader.get(), first, count, dst));
    }
  }

  std::string path;
  int64_t width;
  ReaderPtr reader;
  sae_rt_array idx{};
  bool ownsIdx = false;
  int64_t rows = 0;
  bool oneRow = false;
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

/// The model's inputs bound to files (--input, and --grad when the model
/// has an auxiliary input), read chunk by chunk into buffers that the
/// entry points take as their `inputs` array.
class ModelInputs {
public:
  ModelInputs(const sae_rt_model *m, const Args &args) {
    int64_t d = sae_rt_model_input_dim(m);
    files.push_back(std::make_unique<RowInput>(args.get("input"), d,
                                               "the model's input dimension " +
                                                   std::to_string(d)));
    if (sae_rt_model_input_count(m) > 1) {
      int64_t dim = sae_rt_model_input_dim_at(m, 1);
      files.push_back(std::make_unique<RowInput>(
          args.get("grad"), dim,
          "the dimension " + std::to_string(dim) + " of the model's input '" +
              sae_rt_model_input_name(m, 1) + "'"));
      const RowInput &x = *files[0], &aux = *files[1];
      if (aux.getRows() != x.getRows())
        fail(aux.getPath() + " has " + std::to_string(aux.getRows()) +
             " rows, but " + x.getPath() + " has " +
             std::to_string(x.getRows()) +
             "; --grad needs one row per row of --input");
    }
    buffers.resize(files.size());
    pointers.resize(files.size(), nullptr);
  }

  int64_t getRows() const { return files[0]->getRows(); }

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
    std::printf("  %-*s  %-*s  float32  %s\n", static_cast<int>(nameWidth),
                sae_rt_model_param_name(m, i), static_cast<int>(shapeWidth),
                shape.c_str(), *init ? init : "-");
  }

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
          {{"seed", true}, {"out", true}, {"data", true}, {"data-rows", true}},
          args))
    return 0;
  std::string library = args.library();
  std::string out = args.required("out");
  uint64_t seed = parseUnsigned(args, "seed", 0);
  int64_t dataRows = parseRowCount(args, "data-rows", 4096);
  if (args.has("data-rows") && !args.has("data"))
    throw UsageError{args.command, "--data-rows needs --data"};
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
    RowInput data(args.get("data"), d,
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
                 {{"checkpoint", true},
                  {"input", true},
                  {"output", true},
                  {"grad", true},
                  {"sparse", false},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  args.required("input");
  std::string output = args.required("output");
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
                 {{"checkpoint", true},
                  {"input", true},
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
    decodeSparse(loaded, input, output, batchSize);
    return 0;
  }
  const sae_rt_model *m = loaded.model.get();
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  RowInput in(input, n, "the model's " + std::to_string(n) + " latents");
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

int runForward(int argc, char **argv) {
  Args args;
  if (!parseArgs("forward", kForwardHelp, argc, argv, 2,
                 {{"checkpoint", true},
                  {"input", true},
                  {"grad", true},
                  {"output", true},
                  {"seed", true},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  std::string input = args.required("input");
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
  // Per-dimension mean and sum of squared deviations of x, merged chunk by
  // chunk (Chan et al.), for the FVU denominator.
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  std::vector<double> m2(static_cast<size_t>(d), 0.0);
  std::vector<double> chunkMean(static_cast<size_t>(d));
  double seen = 0;
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
    double c = static_cast<double>(count);
    for (int64_t j = 0; j < d; ++j) {
      double sum = 0;
      for (int64_t r = 0; r < count; ++r)
        sum += x[r * d + j];
      chunkMean[j] = sum / c;
    }
    for (int64_t j = 0; j < d; ++j) {
      double chunkM2 = 0;
      for (int64_t r = 0; r < count; ++r) {
        double dev = x[r * d + j] - chunkMean[j];
        chunkM2 += dev * dev;
      }
      double total = seen + c;
      double delta = chunkMean[j] - mean[j];
      mean[j] += delta * c / total;
      m2[j] += chunkM2 + delta * delta * seen * c / total;
    }
    seen += c;

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

  double totalVariance = 0;
  for (double value : m2)
    totalVariance += value;
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
  throw UsageError{"", "unknown command '" + command + "'"};
}

} // namespace

int main(int argc, char **argv) {
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
