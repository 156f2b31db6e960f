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
    "  forward  reconstruct inputs and report loss, MSE, FVU and L0\n"
    "\n"
    "Run 'sae <command> --help' for the options of a command.\n"
    "Exit status: 0 on success, 1 on errors, 2 on usage errors.\n";

const char *const kInfoHelp =
    "usage: sae info LIB.so [--json]\n"
    "\n"
    "Shows the model compiled into LIB.so: name, ABI version, input\n"
    "dimension, latents, codes, encoder and its hyperparameters, loss,\n"
    "parameters (shape and initialiser) and the target CPU.\n"
    "\n"
    "options:\n"
    "  --json       print the library's model description (JSON), indented\n"
    "  -h, --help   show this help\n";

const char *const kInitHelp =
    "usage: sae init LIB.so --out CKPT_DIR [--seed S]\n"
    "\n"
    "Initialises every parameter with the model's initialisers and saves a\n"
    "checkpoint (CKPT_DIR/sae_weights.safetensors and CKPT_DIR/cfg.json).\n"
    "The checkpoint is written atomically; an existing checkpoint at\n"
    "CKPT_DIR is replaced.\n"
    "\n"
    "options:\n"
    "  --out DIR    checkpoint directory to write (required)\n"
    "  --seed S     random seed, an unsigned 64-bit integer (default 0)\n"
    "  -h, --help   show this help\n";

const char *const kEncodeHelp =
    "usage: sae encode LIB.so --checkpoint DIR --input X.npy --output OUT\n"
    "                  [--sparse] [--batch-size N]\n"
    "\n"
    "Encodes the rows of X.npy, a float32 [B, d] array (or [d], one row)\n"
    "whose d is the model's input dimension, or of an IDX file such as\n"
    "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz (plain or\n"
    "gzip; names ending in -ubyte[.gz] or .idx[.gz]; pixels scaled to\n"
    "[0, 1], each image one row). Writes dense codes [B, n] as\n"
    "float32 .npy, or with --sparse an .npz holding 'values' [B, k] float32\n"
    "and 'indices' [B, k] int32. The output is written atomically.\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input X         input rows, .npy or IDX (required)\n"
    "  --output OUT      output file (required)\n"
    "  --sparse          write sparse codes (models with sparse codes only)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  -h, --help        show this help\n";

const char *const kDecodeHelp =
    "usage: sae decode LIB.so --checkpoint DIR --input Z.npy|Z.npz\n"
    "                  --output XHAT.npy [--batch-size N]\n"
    "\n"
    "Decodes codes into reconstructions XHAT [B, d] (float32 .npy). The\n"
    "input is either dense codes, a float32 [B, n] .npy, or sparse codes, an\n"
    ".npz with 'values' [B, k] float32 and 'indices' [B, k] int32 as written\n"
    "by 'sae encode --sparse' (every index must lie in [0, n)).\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input Z         codes to decode (required)\n"
    "  --output XHAT.npy output file (required)\n"
    "  --batch-size N    rows per call into the model (default 1024)\n"
    "  -h, --help        show this help\n";

const char *const kForwardHelp =
    "usage: sae forward LIB.so --checkpoint DIR --input X.npy\n"
    "                   [--output XHAT.npy] [--batch-size N]\n"
    "\n"
    "Runs the model's forward pass over X.npy (float32 [B, d] or [d], or an\n"
    "IDX file as for 'sae encode') and\n"
    "prints one JSON object to stdout:\n"
    "  {\"loss\": ..., \"mse\": ..., \"fvu\": ..., \"l0\": ...}\n"
    "loss: the model's own loss, averaged over chunks weighted by rows;\n"
    "mse:  mean over rows of sum_d (xhat - x)^2;\n"
    "fvu:  sum ||xhat - x||^2 / sum ||x - mean(x)||^2 (null if x is "
    "constant);\n"
    "l0:   mean number of nonzero codes per row (from the encoder).\n"
    "All statistics are accumulated in double precision.\n"
    "\n"
    "options:\n"
    "  --checkpoint DIR  checkpoint to load the parameters from (required)\n"
    "  --input X         input rows, .npy or IDX (required)\n"
    "  --output XHAT.npy also write the reconstructions\n"
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

int64_t parseBatchSize(const Args &args) {
  uint64_t value = parseUnsigned(args, "batch-size", 1024);
  if (value == 0 || value > (uint64_t(1) << 40))
    throw UsageError{args.command, "--batch-size must be between 1 and 2^40"};
  return static_cast<int64_t>(value);
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

/// rows * width elements, checked, as a vector size.
size_t elements(int64_t rows, int64_t width) {
  uint64_t count;
  if (rows < 0 || width < 0 ||
      __builtin_mul_overflow(static_cast<uint64_t>(rows),
                             static_cast<uint64_t>(width), &count) ||
      count > SIZE_MAX / sizeof(float))
    fail("buffer of " + std::to_string(rows) + " x " + std::to_string(width) +
         " elements is too large (lower --batch-size)");
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

  /// Reads rows [first, first + count) into `dst`; a NaN or infinity in
  /// them is an error naming its row and column (the model would otherwise
  /// turn it into garbage codes silently).
  void read(int64_t first, int64_t count, float *dst) {
    readRaw(first, count, dst);
    int64_t n = (oneRow ? 1 : count) * width;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(dst[i]))
        fail(path + ": row " + std::to_string(first + i / width) +
             ", column " + std::to_string(i % width) + " is " +
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
  row("latents", std::to_string(sae_rt_model_latents(m)));
  if (sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE)
    row("codes", "sparse, k = " + std::to_string(sae_rt_model_codes_k(m)));
  else
    row("codes", "dense");
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
  add(e->decode_dense, SAE_SYM_DECODE_DENSE);
  add(e->decode_sparse, SAE_SYM_DECODE_SPARSE);
  add(e->forward, SAE_SYM_FORWARD);
  row("entry points", entries);
  return 0;
}

//===----------------------------------------------------------------------===//
// sae init
//===----------------------------------------------------------------------===//

int runInit(int argc, char **argv) {
  Args args;
  if (!parseArgs("init", kInitHelp, argc, argv, 2,
                 {{"seed", true}, {"out", true}}, args))
    return 0;
  std::string library = args.library();
  std::string out = args.required("out");
  uint64_t seed = parseUnsigned(args, "seed", 0);
  ModelPtr model = openModel(library);
  ParamBuffers params;
  check(sae_rt_params_alloc(model.get(), params.out()));
  check(sae_rt_model_init(model.get(), seed, params.get()));
  check(sae_rt_checkpoint_save(model.get(), out.c_str(), params.get()));
  return 0;
}

//===----------------------------------------------------------------------===//
// sae encode
//===----------------------------------------------------------------------===//

int runEncode(int argc, char **argv) {
  Args args;
  if (!parseArgs("encode", kEncodeHelp, argc, argv, 2,
                 {{"checkpoint", true},
                  {"input", true},
                  {"output", true},
                  {"sparse", false},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  std::string input = args.required("input");
  std::string output = args.required("output");
  bool sparse = args.has("sparse");
  int64_t batchSize = parseBatchSize(args);

  LoadedModel loaded;
  loadModel(loaded, args, [&](const sae_rt_model *m) {
    if (sparse && sae_rt_model_codes_kind(m) != SAE_RT_CODES_SPARSE)
      fail("model '" + std::string(sae_rt_model_name(m)) +
           "' has dense codes; --sparse needs a model with sparse codes");
  });
  const sae_rt_model *m = loaded.model.get();
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  RowInput in(input, d, "the model's input dimension " + std::to_string(d));
  int64_t rows = in.getRows();
  int64_t chunk = std::min(batchSize, std::max<int64_t>(rows, 1));
  std::vector<float> x(elements(chunk, d));
  Progress progress("encode", rows, chunk);

  if (sparse) {
    std::vector<float> values(elements(rows, k));
    std::vector<int32_t> indices(elements(rows, k));
    for (int64_t done = 0; done < rows; done += chunk) {
      int64_t count = std::min(chunk, rows - done);
      in.read(done, count, x.data());
      size_t offset = elements(done, k);
      check(sae_rt_model_encode_sparse(m, count, x.data(), loaded.params.get(),
                                       values.data() + offset,
                                       indices.data() + offset));
      progress.update(done + count);
    }
    sae_rt_array arrays[2] = {};
    arrays[0].dtype = SAE_RT_DTYPE_FLOAT32;
    arrays[1].dtype = SAE_RT_DTYPE_INT32;
    for (sae_rt_array &array : arrays) {
      array.ndim = 2;
      array.shape[0] = rows;
      array.shape[1] = k;
    }
    arrays[0].data = values.data();
    arrays[1].data = indices.data();
    const char *names[2] = {"values", "indices"};
    check(sae_rt_npz_write(output.c_str(), 2, names, arrays));
    return 0;
  }

  std::vector<float> codes(elements(chunk, n));
  RowOutput out(output, rows, n);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count, x.data());
    check(sae_rt_model_encode_dense(m, count, x.data(), loaded.params.get(),
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

/// Decodes the sparse codes of an .npz (values/indices) into `output`.
void decodeSparse(const LoadedModel &loaded, const std::string &input,
                  const std::string &output, int64_t batchSize) {
  const sae_rt_model *m = loaded.model.get();
  const sae_rt_entry_points *entries = sae_rt_model_entry_points(m);
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  sae_rt_npz *raw = nullptr;
  check(sae_rt_npz_open(input.c_str(), &raw));
  NpzPtr npz(raw);
  const sae_rt_array *values = sae_rt_npz_find(raw, "values");
  const sae_rt_array *indices = sae_rt_npz_find(raw, "indices");
  if (!values || !indices)
    fail(input + ": expected arrays 'values' and 'indices' (as written by "
                 "'sae encode --sparse')");
  if (values->dtype != SAE_RT_DTYPE_FLOAT32)
    fail(input + ": 'values' has dtype " + sae_rt_dtype_name(values->dtype) +
         ", expected float32");
  if (indices->dtype != SAE_RT_DTYPE_INT32)
    fail(input + ": 'indices' has dtype " + sae_rt_dtype_name(indices->dtype) +
         ", expected int32");
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
                   width == sae_rt_model_codes_k(m) && entries->decode_sparse;
  if (!useSparse && !entries->decode_dense)
    fail("model '" + std::string(sae_rt_model_name(m)) +
         "' can decode neither these sparse codes (k = " +
         std::to_string(width) + ") nor dense codes");
  int64_t chunk = std::min(batchSize, std::max<int64_t>(rows, 1));
  std::vector<float> xhat(elements(chunk, d));
  std::vector<float> dense(useSparse ? 0 : elements(chunk, n));
  RowOutput out(output, rows, d);
  Progress progress("decode", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    size_t offset = elements(done, width);
    if (useSparse) {
      check(sae_rt_model_decode_sparse(m, count, v + offset, idx + offset,
                                       loaded.params.get(), xhat.data()));
    } else {
      // Scatter into dense codes; repeated indices add up, as a gather-sum
      // sparse decoder would.
      std::fill(dense.begin(), dense.end(), 0.0f);
      for (int64_t r = 0; r < count; ++r)
        for (int64_t c = 0; c < width; ++c)
          dense[r * n + idx[offset + r * width + c]] +=
              v[offset + r * width + c];
      check(sae_rt_model_decode_dense(m, count, dense.data(),
                                      loaded.params.get(), xhat.data()));
    }
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
                  {"output", true},
                  {"batch-size", true}},
                 args))
    return 0;
  args.library();
  args.required("checkpoint");
  std::string input = args.required("input");
  int64_t batchSize = parseBatchSize(args);

  LoadedModel loaded;
  loadModel(loaded, args, [](const sae_rt_model *) {});
  const sae_rt_model *m = loaded.model.get();
  const sae_rt_entry_points *entries = sae_rt_model_entry_points(m);
  if (!entries->forward)
    fail("model '" + std::string(sae_rt_model_name(m)) +
         "' has no entry point " SAE_SYM_FORWARD);
  int64_t d = sae_rt_model_input_dim(m);
  int64_t n = sae_rt_model_latents(m);
  int64_t k = sae_rt_model_codes_k(m);
  RowInput in(input, d, "the model's input dimension " + std::to_string(d));
  int64_t rows = in.getRows();
  if (rows == 0)
    fail(input + ": the input has no rows");
  int64_t chunk = std::min(batchSize, rows);
  std::vector<float> x(elements(chunk, d));
  std::vector<float> xhat(elements(chunk, d));

  // L0 comes from the encoder: the sparse one when it exists (k values per
  // row), the dense one otherwise.
  bool sparseL0 = sae_rt_model_codes_kind(m) == SAE_RT_CODES_SPARSE &&
                  entries->encode_sparse;
  bool haveL0 = sparseL0 || entries->encode_dense;
  std::vector<float> codeValues;
  std::vector<int32_t> codeIndices;
  if (sparseL0) {
    codeValues.resize(elements(chunk, k));
    codeIndices.resize(elements(chunk, k));
  } else if (haveL0) {
    codeValues.resize(elements(chunk, n));
  }

  std::unique_ptr<RowOutput> out;
  if (args.has("output"))
    out = std::make_unique<RowOutput>(args.get("output"), rows, d);

  double lossSum = 0, squaredError = 0, nonzero = 0;
  // Per-dimension mean and sum of squared deviations of x, merged chunk by
  // chunk (Chan et al.), for the FVU denominator.
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  std::vector<double> m2(static_cast<size_t>(d), 0.0);
  std::vector<double> chunkMean(static_cast<size_t>(d));
  double seen = 0;
  Progress progress("forward", rows, chunk);
  for (int64_t done = 0; done < rows; done += chunk) {
    int64_t count = std::min(chunk, rows - done);
    in.read(done, count, x.data());
    float loss = 0;
    check(sae_rt_model_forward(m, count, x.data(), loaded.params.get(),
                               xhat.data(), &loss));
    lossSum += static_cast<double>(loss) * static_cast<double>(count);
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

    if (sparseL0) {
      check(sae_rt_model_encode_sparse(m, count, x.data(), loaded.params.get(),
                                       codeValues.data(), codeIndices.data()));
      size_t total = elements(count, k);
      for (size_t i = 0; i < total; ++i)
        nonzero += codeValues[i] != 0.0f;
    } else if (haveL0) {
      check(sae_rt_model_encode_dense(m, count, x.data(), loaded.params.get(),
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
  std::printf("{\"loss\": %s, \"mse\": %s, \"fvu\": %s, \"l0\": %s}\n",
              formatNumber(lossSum / rowCount).c_str(),
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
