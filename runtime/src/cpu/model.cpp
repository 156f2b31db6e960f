//===- model.cpp - Loading saec-compiled model libraries (dlopen) ---------===//
//
// sae_rt_model_open() dlopens a library produced by saec, checks its ABI
// version, validates the JSON returned by sae_model_describe() against the
// schema in abi.h, refuses libraries compiled for CPU features this host
// lacks, and resolves the entry points. Also the checked entry-point
// wrappers (inference and, from ABI 3, training) and the parameter-buffer
// helpers.
//
//===----------------------------------------------------------------------===//

#include "../common/internal.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>

#include <dlfcn.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

using namespace sae::rt;
using Json = nlohmann::ordered_json;

namespace {

struct InputInfo {
  std::string name;
  int64_t dim = 0;
};

struct ParamInfo {
  std::string name;
  std::string init;
  bool trainable = true;
  int32_t ndim = 0;
  int64_t shape[SAE_RT_MAX_NDIM] = {};
  int64_t numel = 0;
};

struct LibraryCloser {
  void operator()(void *handle) const {
    if (handle)
      dlclose(handle);
  }
};
using LibraryHandle = std::unique_ptr<void, LibraryCloser>;

//===----------------------------------------------------------------------===//
// CPU features
//===----------------------------------------------------------------------===//

struct FeatureCheck {
  const char *name;
  bool (*supported)();
};

#if defined(__x86_64__) || defined(__i386__)

#define SAE_CPU_FEATURE(NAME)                                                  \
  {                                                                            \
    NAME, [] { return __builtin_cpu_supports(NAME) != 0; }                     \
  }

#if defined(__clang__)
/// Clang's __builtin_cpu_supports does not know every name GCC knows; for
/// those, read CPUID directly. `reg` is 0..3 for EAX..EDX.
bool cpuidBit(unsigned leaf, unsigned subleaf, int reg, int bit) {
  unsigned regs[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, subleaf, &regs[0], &regs[1], &regs[2], &regs[3]))
    return false;
  return (regs[reg] >> bit) & 1u;
}
/// `BASE` names a feature whose OS support (register state) the extra one
/// depends on; __builtin_cpu_supports checks that for us.
#define SAE_CPU_FEATURE_EXTRA(NAME, LEAF, SUB, REG, BIT, BASE)                 \
  {                                                                            \
    NAME, [] {                                                                 \
      return cpuidBit(LEAF, SUB, REG, BIT) &&                                  \
             __builtin_cpu_supports(BASE) != 0;                                \
    }                                                                          \
  }
#else
#define SAE_CPU_FEATURE_EXTRA(NAME, LEAF, SUB, REG, BIT, BASE)                 \
  SAE_CPU_FEATURE(NAME)
#endif

const FeatureCheck kFeatures[] = {
    SAE_CPU_FEATURE("cmov"),
    SAE_CPU_FEATURE("mmx"),
    SAE_CPU_FEATURE("popcnt"),
    SAE_CPU_FEATURE("sse"),
    SAE_CPU_FEATURE("sse2"),
    SAE_CPU_FEATURE("sse3"),
    SAE_CPU_FEATURE("ssse3"),
    SAE_CPU_FEATURE("sse4.1"),
    SAE_CPU_FEATURE("sse4.2"),
    SAE_CPU_FEATURE("sse4a"),
    SAE_CPU_FEATURE("avx"),
    SAE_CPU_FEATURE("avx2"),
    SAE_CPU_FEATURE("fma"),
    SAE_CPU_FEATURE("fma4"),
    SAE_CPU_FEATURE("xop"),
    SAE_CPU_FEATURE("bmi"),
    SAE_CPU_FEATURE("bmi2"),
    SAE_CPU_FEATURE("aes"),
    SAE_CPU_FEATURE("pclmul"),
    SAE_CPU_FEATURE("gfni"),
    SAE_CPU_FEATURE("vpclmulqdq"),
    SAE_CPU_FEATURE("avx512f"),
    SAE_CPU_FEATURE("avx512vl"),
    SAE_CPU_FEATURE("avx512bw"),
    SAE_CPU_FEATURE("avx512dq"),
    SAE_CPU_FEATURE("avx512cd"),
    SAE_CPU_FEATURE("avx512er"),
    SAE_CPU_FEATURE("avx512pf"),
    SAE_CPU_FEATURE("avx512vbmi"),
    SAE_CPU_FEATURE("avx512ifma"),
    SAE_CPU_FEATURE("avx5124vnniw"),
    SAE_CPU_FEATURE("avx5124fmaps"),
    SAE_CPU_FEATURE("avx512vpopcntdq"),
    SAE_CPU_FEATURE("avx512vbmi2"),
    SAE_CPU_FEATURE("avx512vnni"),
    SAE_CPU_FEATURE("avx512bitalg"),
    SAE_CPU_FEATURE("avx512bf16"),
    SAE_CPU_FEATURE("avx512vp2intersect"),
    SAE_CPU_FEATURE_EXTRA("f16c", 1, 0, 2, 29, "avx"),
    SAE_CPU_FEATURE_EXTRA("movbe", 1, 0, 2, 22, "sse"),
    SAE_CPU_FEATURE_EXTRA("rdrnd", 1, 0, 2, 30, "sse"),
    SAE_CPU_FEATURE_EXTRA("lzcnt", 0x80000001u, 0, 2, 5, "sse"),
    SAE_CPU_FEATURE_EXTRA("adx", 7, 0, 1, 19, "sse"),
    SAE_CPU_FEATURE_EXTRA("rdseed", 7, 0, 1, 18, "sse"),
    SAE_CPU_FEATURE_EXTRA("sha", 7, 0, 1, 29, "sse2"),
    SAE_CPU_FEATURE_EXTRA("avxvnni", 7, 1, 0, 4, "avx2"),
    SAE_CPU_FEATURE_EXTRA("avx512fp16", 7, 0, 3, 23, "avx512bw"),
};

#undef SAE_CPU_FEATURE
#undef SAE_CPU_FEATURE_EXTRA

#else
// Other architectures: no named features are known; a library that
// requires any is refused.
const FeatureCheck kFeatures[] = {{"", [] { return false; }}};
#endif

/// Returns 1 if supported, 0 if not, -1 if the name is unknown.
int hostSupports(const std::string &feature) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#endif
  if (feature.empty())
    return -1;
  for (const FeatureCheck &check : kFeatures)
    if (feature == check.name)
      return check.supported() ? 1 : 0;
  return -1;
}

} // namespace

//===----------------------------------------------------------------------===//
// The model
//===----------------------------------------------------------------------===//

struct sae_rt_model {
  LibraryHandle handle;
  std::string path;
  std::string name;
  std::string describeText;
  std::string describePretty;
  std::string source;
  std::vector<std::pair<std::string, std::string>> encoderAttrs;
  std::string cfgText;
  std::string encoderOp;
  std::string loss;
  std::string triple;
  std::string cpu;
  std::vector<std::string> features;
  std::vector<std::string> lossTerms;
  uint32_t abiVersion = 0;
  int64_t inputDim = 0;
  std::vector<InputInfo> inputs;
  int64_t latents = 0;
  sae_rt_codes_kind codesKind = SAE_RT_CODES_DENSE;
  sae_rt_codes_layout layout = SAE_RT_LAYOUT_ROWS;
  int64_t k = 0;
  bool initNeedsData = false;
  bool stochastic = false;
  std::vector<ParamInfo> params;
  size_t trainableCount = 0;
  sae_rt_train_config train = {};
  bool hasTrain = false;
  std::string unitNorm;
  bool hasUnitNorm = false;
  sae_rt_entry_points entries = {};
};

namespace {

class DescribeParser {
public:
  DescribeParser(sae_rt_model &model) : model(model) {}

  void parse(const char *text) {
    try {
      json = Json::parse(text);
    } catch (const nlohmann::json::exception &error) {
      fail(SAE_RT_ERR_ABI, prefix() +
                               "sae_model_describe() returned invalid "
                               "JSON: " +
                               std::string(error.what()));
    }
    if (!json.is_object())
      invalid("the document", "is not an object");

    if (json.contains("abi_version")) {
      int64_t version = integer(json["abi_version"], "abi_version", 0);
      if (version != static_cast<int64_t>(model.abiVersion))
        invalid("abi_version", "is " + std::to_string(version) +
                                   " but sae_abi_version() returned " +
                                   std::to_string(model.abiVersion));
    }
    model.name = string(member(json, "name", "name"), "name");
    if (model.name.empty())
      invalid("name", "is empty");

    parseInputs();
    model.latents = integer(member(json, "latents", "latents"), "latents", 1);

    const Json &codes = member(json, "codes", "codes");
    std::string kind =
        string(member(codes, "kind", "codes.kind"), "codes.kind");
    if (kind == "sparse") {
      model.codesKind = SAE_RT_CODES_SPARSE;
      model.k = integer(member(codes, "k", "codes.k"), "codes.k", 1);
      if (model.k > model.latents)
        invalid("codes.k", "(" + std::to_string(model.k) +
                               ") exceeds the number of latents (" +
                               std::to_string(model.latents) + ")");
      // Libraries from before layouts existed have "rows" codes.
      if (codes.contains("layout")) {
        std::string layout = string(codes["layout"], "codes.layout");
        if (layout == "rows")
          model.layout = SAE_RT_LAYOUT_ROWS;
        else if (layout == "batch")
          model.layout = SAE_RT_LAYOUT_BATCH;
        else
          invalid("codes.layout",
                  "is " + quote(layout) + ", expected 'rows' or 'batch'");
      }
    } else if (kind == "dense") {
      model.codesKind = SAE_RT_CODES_DENSE;
      model.k = 0;
    } else {
      invalid("codes.kind", "is " + quote(kind) +
                                ", expected 'sparse' or "
                                "'dense'");
    }

    if (json.contains("encoder")) {
      const Json &encoder = json["encoder"];
      if (!encoder.is_object())
        invalid("encoder", "is not an object");
      for (auto it = encoder.begin(); it != encoder.end(); ++it) {
        if (it.key() == "op")
          model.encoderOp = string(it.value(), "encoder.op");
        else
          model.encoderAttrs.emplace_back(it.key(), dump(it.value(), -1));
      }
    }
    if (json.contains("loss"))
      model.loss = string(json["loss"], "loss");
    parseLossTerms();
    if (json.contains("init_needs_data"))
      model.initNeedsData = boolean(json["init_needs_data"], "init_needs_data");
    if (json.contains("stochastic"))
      model.stochastic = boolean(json["stochastic"], "stochastic");
    if (json.contains("source"))
      model.source = string(json["source"], "source");
    model.describePretty = dump(json, 2) + "\n";

    parseParams(member(json, "params", "params"));
    parseTrain();
    parseTarget();
    buildCfg();
  }

  /// Names listed in "entry_points" ([] when absent).
  std::vector<std::string> entryPoints() {
    std::vector<std::string> names;
    if (!json.contains("entry_points"))
      return names;
    const Json &list = json["entry_points"];
    if (!list.is_array())
      invalid("entry_points", "is not an array");
    for (const Json &entry : list)
      names.push_back(string(entry, "entry_points[]"));
    return names;
  }

private:
  std::string prefix() const { return quote(model.path) + ": "; }

  [[noreturn]] void invalid(const std::string &field,
                            const std::string &problem) {
    fail(SAE_RT_ERR_ABI,
         prefix() + "invalid model description: " + field + " " + problem);
  }

  const Json &member(const Json &object, const char *key,
                     const std::string &field) {
    if (!object.is_object())
      invalid(field, "cannot be read: its parent is not an object");
    auto it = object.find(key);
    if (it == object.end())
      invalid(field, "is missing");
    return *it;
  }

  /// Serialises with replacement of invalid UTF-8 (never throws).
  static std::string dump(const Json &value, int indent) {
    return value.dump(indent, ' ', false, Json::error_handler_t::replace);
  }

  std::string string(const Json &value, const std::string &field) {
    if (!value.is_string())
      invalid(field, "is not a string");
    return value.get<std::string>();
  }

  /// A finite JSON number (integer or not).
  double real(const Json &value, const std::string &field) {
    if (!value.is_number())
      invalid(field, "is not a number");
    double result = value.get<double>();
    if (!std::isfinite(result))
      invalid(field, "is not finite");
    return result;
  }

  bool boolean(const Json &value, const std::string &field) {
    if (!value.is_boolean())
      invalid(field, "is not a boolean");
    return value.get<bool>();
  }

  int64_t integer(const Json &value, const std::string &field,
                  int64_t minimum) {
    if (!value.is_number_integer())
      invalid(field, "is not an integer");
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      invalid(field, "is too large");
    int64_t result = value.get<int64_t>();
    if (result < minimum)
      invalid(field, "is " + std::to_string(result) + ", expected at least " +
                         std::to_string(minimum));
    return result;
  }

  /// "inputs" (ABI order) and the older "input" (the first input). Either
  /// may be absent, not both; when both are there they must agree.
  void parseInputs() {
    bool hasList = json.contains("inputs");
    if (!hasList && !json.contains("input"))
      invalid("input", "is missing (and there is no \"inputs\" list)");
    if (hasList) {
      const Json &list = json["inputs"];
      if (!list.is_array() || list.empty())
        invalid("inputs", "must be a non-empty array");
      std::set<std::string> names;
      for (size_t i = 0; i < list.size(); ++i) {
        std::string field = "inputs[" + std::to_string(i) + "]";
        const Json &entry = list[i];
        if (!entry.is_object())
          invalid(field, "is not an object");
        InputInfo input;
        input.name =
            string(member(entry, "name", field + ".name"), field + ".name");
        if (input.name.empty() || !names.insert(input.name).second)
          invalid(field + ".name",
                  "is empty or duplicated: " + quote(input.name));
        input.dim =
            integer(member(entry, "dim", field + ".dim"), field + ".dim", 1);
        model.inputs.push_back(std::move(input));
      }
    }
    if (json.contains("input")) {
      const Json &input = json["input"];
      int64_t dim = integer(member(input, "dim", "input.dim"), "input.dim", 1);
      std::string name = "x";
      if (input.contains("name"))
        name = string(input["name"], "input.name");
      if (!hasList) {
        model.inputs.push_back(InputInfo{name.empty() ? "x" : name, dim});
      } else {
        const InputInfo &first = model.inputs.front();
        if (dim != first.dim || (input.contains("name") && name != first.name))
          invalid("input", "(" + quote(name) + ", dim " + std::to_string(dim) +
                               ") does not match inputs[0] (" +
                               quote(first.name) + ", dim " +
                               std::to_string(first.dim) + ")");
      }
    }
    model.inputDim = model.inputs.front().dim;
  }

  /// "loss_terms": the names of losses[1..] of sae_forward.
  void parseLossTerms() {
    if (!json.contains("loss_terms"))
      return;
    const Json &list = json["loss_terms"];
    if (!list.is_array())
      invalid("loss_terms", "is not an array");
    std::set<std::string> names;
    for (size_t i = 0; i < list.size(); ++i) {
      std::string field = "loss_terms[" + std::to_string(i) + "]";
      std::string name = string(list[i], field);
      if (name.empty() || !names.insert(name).second)
        invalid(field, "is empty or duplicated: " + quote(name));
      model.lossTerms.push_back(std::move(name));
    }
  }

  void parseParams(const Json &list) {
    if (!list.is_array())
      invalid("params", "is not an array");
    std::set<std::string> names;
    for (size_t i = 0; i < list.size(); ++i) {
      const Json &entry = list[i];
      std::string field = "params[" + std::to_string(i) + "]";
      if (!entry.is_object())
        invalid(field, "is not an object");
      ParamInfo param;
      param.name =
          string(member(entry, "name", field + ".name"), field + ".name");
      if (param.name.empty() || !names.insert(param.name).second)
        invalid(field + ".name",
                "is empty or duplicated: " + quote(param.name));
      field = "param " + quote(param.name);
      const Json &shape = member(entry, "shape", field + " shape");
      if (!shape.is_array() || shape.empty() || shape.size() > SAE_RT_MAX_NDIM)
        invalid(field + " shape", "must be an array of 1 to " +
                                      std::to_string(SAE_RT_MAX_NDIM) +
                                      " dimensions");
      param.ndim = static_cast<int32_t>(shape.size());
      for (int32_t d = 0; d < param.ndim; ++d)
        param.shape[d] = integer(shape[d], field + " shape", 1);
      param.numel = static_cast<int64_t>(
          checkedNumel(SAE_RT_DTYPE_FLOAT32, param.ndim, param.shape,
                       prefix() + field, SAE_RT_ERR_ABI));
      toSize(checkedMul(static_cast<uint64_t>(param.numel), sizeof(float),
                        prefix() + field),
             prefix() + field);
      if (entry.contains("dtype")) {
        std::string dtype = string(entry["dtype"], field + " dtype");
        if (dtype != "float32")
          invalid(field + " dtype", "is " + quote(dtype) +
                                        "; this runtime supports float32 "
                                        "parameters only");
      }
      if (entry.contains("init"))
        param.init = string(entry["init"], field + " init");
      if (entry.contains("trainable"))
        param.trainable = boolean(entry["trainable"], field + " trainable");
      model.trainableCount += param.trainable;
      model.params.push_back(std::move(param));
    }
  }

  /// "train" (ABI 3): the spec's train section; absent fields keep their
  /// defaults, unknown ones are ignored.
  void parseTrain() {
    sae_rt_train_config_default(&model.train);
    if (!json.contains("train"))
      return;
    const Json &train = json["train"];
    if (!train.is_object())
      invalid("train", "is not an object");
    model.hasTrain = true;
    sae_rt_train_config &config = model.train;
    auto realField = [&](const char *key, double &out) {
      if (train.contains(key))
        out = real(train[key], std::string("train.") + key);
    };
    auto intField = [&](const char *key, int64_t &out, int64_t minimum) {
      if (train.contains(key))
        out = integer(train[key], std::string("train.") + key, minimum);
    };
    realField("lr", config.lr);
    realField("beta1", config.beta1);
    realField("beta2", config.beta2);
    realField("eps", config.eps);
    realField("clip", config.clip);
    intField("lr_warmup", config.lr_warmup, 0);
    intField("sparsity_warmup", config.sparsity_warmup, 0);
    intField("batch", config.batch, 1);
    if (train.contains("lr_decay")) {
      std::string decay = string(train["lr_decay"], "train.lr_decay");
      if (!parseLrDecay(decay, config.lr_decay))
        invalid("train.lr_decay", "is " + quote(decay) +
                                      ", expected 'none', 'linear' or "
                                      "'cosine'");
    }
    if (train.contains("normalize")) {
      std::string normalize = string(train["normalize"], "train.normalize");
      if (!parseNormalize(normalize, config.normalize))
        invalid("train.normalize", "is " + quote(normalize) +
                                       ", expected 'none' or 'expected_norm'");
    }
    std::string field, problem;
    if (!checkTrainConfig(config, field, problem))
      invalid("train." + field, problem);
    if (train.contains("unit_norm") && !train["unit_norm"].is_null()) {
      model.unitNorm = string(train["unit_norm"], "train.unit_norm");
      model.hasUnitNorm = true;
      auto it = std::find_if(
          model.params.begin(), model.params.end(),
          [&](const ParamInfo &param) { return param.name == model.unitNorm; });
      if (it == model.params.end())
        invalid("train.unit_norm", "names " + quote(model.unitNorm) +
                                       ", which is not a parameter");
      if (it->ndim != 2 || !it->trainable)
        invalid("train.unit_norm", "names " + quote(model.unitNorm) +
                                       ", which is not a trainable 2-D "
                                       "parameter (its rows are kept at "
                                       "norm 1)");
    }
  }

  void parseTarget() {
    if (!json.contains("target"))
      return;
    const Json &target = json["target"];
    if (!target.is_object())
      invalid("target", "is not an object");
    if (target.contains("triple"))
      model.triple = string(target["triple"], "target.triple");
    if (target.contains("cpu"))
      model.cpu = string(target["cpu"], "target.cpu");
    if (target.contains("required_features")) {
      const Json &features = target["required_features"];
      if (!features.is_array())
        invalid("target.required_features", "is not an array");
      for (const Json &feature : features)
        model.features.push_back(string(feature, "target.required_features[]"));
    }
  }

  void buildCfg() {
    Json cfg;
    if (json.contains("cfg")) {
      cfg = json["cfg"];
      if (!cfg.is_object())
        invalid("cfg", "is not an object");
    } else {
      cfg = Json::object();
      cfg["d_in"] = model.inputDim;
      cfg["d_sae"] = model.latents;
      cfg["dtype"] = "float32";
    }
    cfg["saec_abi_version"] = model.abiVersion;
    cfg["saec_model"] = model.name;
    model.cfgText = dump(cfg, 2) + "\n";
  }

  sae_rt_model &model;
  Json json;
};

template <typename Fn> Fn lookup(void *handle, const char *symbol) {
  dlerror();
  void *address = dlsym(handle, symbol);
  if (!address)
    return nullptr;
  Fn fn;
  static_assert(sizeof(fn) == sizeof(address), "function pointer size");
  std::memcpy(&fn, &address, sizeof(fn));
  return fn;
}

std::unique_ptr<sae_rt_model> openModel(const std::string &path) {
  if (path.empty())
    fail(SAE_RT_ERR_ARG, "model library path is empty");
  auto model = std::make_unique<sae_rt_model>();
  model->path = path;
  // dlopen searches the library path for names without a slash; a user
  // naming a file means that file.
  std::string loadPath =
      path.find('/') == std::string::npos ? "./" + path : path;
  dlerror();
  void *handle = dlopen(loadPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char *reason = dlerror();
    bool exists = ::access(loadPath.c_str(), F_OK) == 0;
    fail(exists ? SAE_RT_ERR_ABI : SAE_RT_ERR_IO,
         "cannot load model library " + quote(path) + ": " +
             (reason ? reason : "unknown dlopen error"));
  }
  model->handle.reset(handle);

  sae_rt_entry_points &entries = model->entries;
  entries.abi_version = lookup<sae_abi_version_fn>(handle, SAE_SYM_ABI_VERSION);
  if (!entries.abi_version)
    fail(SAE_RT_ERR_ABI, quote(path) + " is not a saec library (no symbol " +
                             SAE_SYM_ABI_VERSION + ")");
  model->abiVersion = entries.abi_version();
  if (model->abiVersion != SAE_ABI_VERSION)
    fail(SAE_RT_ERR_ABI, quote(path) + " was built for saec ABI version " +
                             std::to_string(model->abiVersion) +
                             ", but this runtime implements version " +
                             std::to_string(SAE_ABI_VERSION) +
                             "; recompile it with a matching saec");
  entries.describe = lookup<sae_model_describe_fn>(handle, SAE_SYM_DESCRIBE);
  if (!entries.describe)
    fail(SAE_RT_ERR_ABI, quote(path) + " is not a saec library (no symbol " +
                             SAE_SYM_DESCRIBE + ")");
  const char *text = entries.describe();
  if (!text)
    fail(SAE_RT_ERR_ABI, quote(path) + ": sae_model_describe() returned NULL");
  model->describeText = text;

  DescribeParser parser(*model);
  parser.parse(model->describeText.c_str());

  // Refuse code this CPU cannot run before any entry point is called.
  std::string missing;
  for (const std::string &feature : model->features) {
    int supported = hostSupports(feature);
    if (supported < 0)
      fail(SAE_RT_ERR_ABI, quote(path) + " requires the CPU feature " +
                               quote(feature) +
                               ", which this runtime cannot check; recompile "
                               "it with saec on this machine");
    if (!supported)
      missing += (missing.empty() ? "" : ", ") + feature;
  }
  if (!missing.empty())
    fail(SAE_RT_ERR_ABI, quote(path) + " was compiled for a CPU with " +
                             missing +
                             ", which this CPU lacks; recompile it with saec "
                             "on this machine, or with saec --target-cpu "
                             "naming this CPU");

  entries.init = lookup<sae_init_fn>(handle, SAE_SYM_INIT);
  entries.encode_dense =
      lookup<sae_encode_dense_fn>(handle, SAE_SYM_ENCODE_DENSE);
  entries.encode_sparse =
      lookup<sae_encode_sparse_fn>(handle, SAE_SYM_ENCODE_SPARSE);
  entries.decode_dense =
      lookup<sae_decode_dense_fn>(handle, SAE_SYM_DECODE_DENSE);
  entries.decode_sparse =
      lookup<sae_decode_sparse_fn>(handle, SAE_SYM_DECODE_SPARSE);
  entries.encode_batch =
      lookup<sae_encode_batch_fn>(handle, SAE_SYM_ENCODE_BATCH);
  entries.decode_batch =
      lookup<sae_decode_batch_fn>(handle, SAE_SYM_DECODE_BATCH);
  entries.forward = lookup<sae_forward_fn>(handle, SAE_SYM_FORWARD);
  std::vector<std::string> listed = parser.entryPoints();
  for (const std::string &name : listed) {
    if (!lookup<void *>(handle, name.c_str()))
      fail(SAE_RT_ERR_ABI, quote(path) +
                               ": the model description lists "
                               "the entry point " +
                               quote(name) +
                               " but the library does not export it");
  }
  // The training entry points count only when the description lists them
  // (a library may export code it does not vouch for).
  auto isListed = [&](const char *symbol) {
    return std::find(listed.begin(), listed.end(), symbol) != listed.end();
  };
  if (isListed(SAE_SYM_GRADIENT))
    entries.gradient = lookup<sae_gradient_fn>(handle, SAE_SYM_GRADIENT);
  if (isListed(SAE_SYM_TRAIN_STEP))
    entries.train_step = lookup<sae_train_step_fn>(handle, SAE_SYM_TRAIN_STEP);
  return model;
}

const ParamInfo *paramAt(const sae_rt_model *model, size_t index) {
  if (!model || index >= model->params.size())
    return nullptr;
  return &model->params[index];
}

//===----------------------------------------------------------------------===//
// Entry-point wrappers
//===----------------------------------------------------------------------===//

std::string modelLabel(const sae_rt_model *model) {
  return "model " + quote(model->name);
}

void checkCall(const sae_rt_model *model, bool present, const char *symbol,
               int64_t batch, bool needsBatch) {
  if (!model)
    fail(SAE_RT_ERR_ARG, std::string(symbol) + ": model is NULL");
  if (!present)
    fail(SAE_RT_ERR_ABI, modelLabel(model) + " has no entry point " + symbol);
  if (needsBatch && batch < 1)
    fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": batch is " +
                             std::to_string(batch) + ", expected >= 1");
}

void checkParams(const sae_rt_model *model, float *const *params,
                 const char *symbol) {
  if (!params)
    fail(SAE_RT_ERR_ARG,
         modelLabel(model) + ": " + symbol + ": params is NULL");
  for (size_t i = 0; i < model->params.size(); ++i)
    if (!params[i])
      fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": params[" +
                               std::to_string(i) + "] (" +
                               quote(model->params[i].name) + ") is NULL");
}

void checkBuffer(const sae_rt_model *model, const void *buffer,
                 const char *what, const char *symbol) {
  if (!buffer)
    fail(SAE_RT_ERR_ARG,
         modelLabel(model) + ": " + symbol + ": " + what + " is NULL");
}

void checkInputs(const sae_rt_model *model, const float *const *inputs,
                 const char *symbol) {
  if (!inputs)
    fail(SAE_RT_ERR_ARG,
         modelLabel(model) + ": " + symbol + ": inputs is NULL");
  for (size_t i = 0; i < model->inputs.size(); ++i)
    if (!inputs[i])
      fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": inputs[" +
                               std::to_string(i) + "] (" +
                               quote(model->inputs[i].name) + ") is NULL");
}

const char *layoutText(const sae_rt_model *model) {
  if (model->codesKind != SAE_RT_CODES_SPARSE)
    return "dense codes";
  return model->layout == SAE_RT_LAYOUT_BATCH ? "sparse codes of layout 'batch'"
                                              : "sparse codes of layout 'rows'";
}

/// The sparse entry points exist for one layout each (abi.h).
void checkLayout(const sae_rt_model *model, sae_rt_codes_layout layout,
                 const char *symbol) {
  if (model->codesKind == SAE_RT_CODES_SPARSE && model->layout == layout)
    return;
  fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol +
                           " is for models with sparse codes of layout " +
                           quote(sae_rt_codes_layout_name(layout)) +
                           ", but the model has " + layoutText(model));
}

/// The batch*k entries of layout "batch": indices in [0, n), rows in
/// [0, batch) and non-decreasing. `separator` follows the symbol.
void checkEntries(const sae_rt_model *model, int64_t batch,
                  const int32_t *indices, const int32_t *rows,
                  const char *symbol, sae_rt_status status,
                  const char *separator) {
  uint64_t count = checkedMul(static_cast<uint64_t>(batch),
                              static_cast<uint64_t>(model->k), symbol);
  std::string where = modelLabel(model) + ": " + symbol + separator;
  for (uint64_t i = 0; i < count; ++i) {
    int32_t index = indices[i], row = rows[i];
    std::string entry = where + "entry " + std::to_string(i) + ": ";
    if (index < 0 || index >= model->latents)
      fail(status, entry + "index " + std::to_string(index) +
                       " is out of range [0, " +
                       std::to_string(model->latents) + ")");
    if (row < 0 || row >= batch)
      fail(status, entry + "row " + std::to_string(row) +
                       " is out of range [0, " + std::to_string(batch) + ")");
    if (i > 0 && row < rows[i - 1])
      fail(status, entry + "row " + std::to_string(row) + " follows row " +
                       std::to_string(rows[i - 1]) +
                       "; entries must be sorted by row");
  }
}

/// One non-NULL buffer per trainable parameter in `buffers`.
void checkTrainableBuffers(const sae_rt_model *model, float *const *buffers,
                           const char *what, const char *symbol) {
  if (!buffers)
    fail(SAE_RT_ERR_ARG,
         modelLabel(model) + ": " + symbol + ": " + what + " is NULL");
  size_t slot = 0;
  for (const ParamInfo &param : model->params) {
    if (!param.trainable)
      continue;
    if (!buffers[slot])
      fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": " + what +
                               "[" + std::to_string(slot) + "] (" +
                               quote(param.name) + ") is NULL");
    ++slot;
  }
}

/// The `hyper` array of sae_train_step (abi.h, SAE_HYPER_*).
void checkHyper(const sae_rt_model *model, const float *hyper,
                const char *symbol) {
  if (!hyper)
    fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": hyper is NULL");
  static const char *const names[SAE_HYPER_COUNT] = {
      "lr", "beta1", "beta2", "eps", "bc1", "bc2", "clip", "sparsity"};
  for (int i = 0; i < SAE_HYPER_COUNT; ++i) {
    float value = hyper[i];
    bool ok = std::isfinite(value);
    const char *expected = "a finite value >= 0";
    switch (i) {
    case SAE_HYPER_BETA1:
    case SAE_HYPER_BETA2:
      ok = ok && value >= 0.0f && value < 1.0f;
      expected = "a value in [0, 1)";
      break;
    case SAE_HYPER_BC1:
    case SAE_HYPER_BC2:
      ok = ok && value > 0.0f && value <= 1.0f;
      expected = "a value in (0, 1]";
      break;
    default:
      ok = ok && value >= 0.0f;
      break;
    }
    if (!ok)
      fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": hyper[" +
                               std::to_string(i) + "] (" + names[i] + ") is " +
                               formatFloat(value) + ", expected " + expected);
  }
}

void checkResult(const sae_rt_model *model, int32_t result,
                 const char *symbol) {
  if (result != 0)
    fail(SAE_RT_ERR_EXEC, modelLabel(model) + ": " + symbol + " returned " +
                              std::to_string(result));
}

} // namespace

extern "C" {

sae_rt_status sae_rt_model_open(const char *path, sae_rt_model **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_model_open: NULL argument");
    *out = openModel(path).release();
  });
}

void sae_rt_model_close(sae_rt_model *model) { delete model; }

const char *sae_rt_model_name(const sae_rt_model *model) {
  return model ? model->name.c_str() : nullptr;
}
const char *sae_rt_model_path(const sae_rt_model *model) {
  return model ? model->path.c_str() : nullptr;
}
const char *sae_rt_model_describe_json(const sae_rt_model *model) {
  return model ? model->describeText.c_str() : nullptr;
}
const char *sae_rt_model_describe_pretty(const sae_rt_model *model) {
  return model ? model->describePretty.c_str() : nullptr;
}
const char *sae_rt_model_source(const sae_rt_model *model) {
  return model ? model->source.c_str() : nullptr;
}
size_t sae_rt_model_encoder_attr_count(const sae_rt_model *model) {
  return model ? model->encoderAttrs.size() : 0;
}
const char *sae_rt_model_encoder_attr_name(const sae_rt_model *model,
                                           size_t index) {
  if (!model || index >= model->encoderAttrs.size())
    return nullptr;
  return model->encoderAttrs[index].first.c_str();
}
const char *sae_rt_model_encoder_attr_value(const sae_rt_model *model,
                                            size_t index) {
  if (!model || index >= model->encoderAttrs.size())
    return nullptr;
  return model->encoderAttrs[index].second.c_str();
}
const char *sae_rt_model_cfg_json(const sae_rt_model *model) {
  return model ? model->cfgText.c_str() : nullptr;
}
uint32_t sae_rt_model_abi_version(const sae_rt_model *model) {
  return model ? model->abiVersion : 0;
}
int64_t sae_rt_model_input_dim(const sae_rt_model *model) {
  return model ? model->inputDim : 0;
}
size_t sae_rt_model_input_count(const sae_rt_model *model) {
  return model ? model->inputs.size() : 0;
}
const char *sae_rt_model_input_name(const sae_rt_model *model, size_t index) {
  if (!model || index >= model->inputs.size())
    return nullptr;
  return model->inputs[index].name.c_str();
}
int64_t sae_rt_model_input_dim_at(const sae_rt_model *model, size_t index) {
  if (!model || index >= model->inputs.size())
    return 0;
  return model->inputs[index].dim;
}
sae_rt_codes_layout sae_rt_model_codes_layout(const sae_rt_model *model) {
  return model && model->codesKind == SAE_RT_CODES_SPARSE ? model->layout
                                                          : SAE_RT_LAYOUT_ROWS;
}
const char *sae_rt_codes_layout_name(sae_rt_codes_layout layout) {
  switch (layout) {
  case SAE_RT_LAYOUT_ROWS:
    return "rows";
  case SAE_RT_LAYOUT_BATCH:
    return "batch";
  default:
    return "invalid";
  }
}
size_t sae_rt_model_loss_term_count(const sae_rt_model *model) {
  return model ? model->lossTerms.size() : 0;
}
const char *sae_rt_model_loss_term_name(const sae_rt_model *model,
                                        size_t index) {
  if (!model || index >= model->lossTerms.size())
    return nullptr;
  return model->lossTerms[index].c_str();
}
int32_t sae_rt_model_init_needs_data(const sae_rt_model *model) {
  return model && model->initNeedsData ? 1 : 0;
}
int32_t sae_rt_model_stochastic(const sae_rt_model *model) {
  return model && model->stochastic ? 1 : 0;
}
int64_t sae_rt_model_latents(const sae_rt_model *model) {
  return model ? model->latents : 0;
}
sae_rt_codes_kind sae_rt_model_codes_kind(const sae_rt_model *model) {
  return model ? model->codesKind : SAE_RT_CODES_DENSE;
}
int64_t sae_rt_model_codes_k(const sae_rt_model *model) {
  return model ? model->k : 0;
}
const char *sae_rt_model_encoder_op(const sae_rt_model *model) {
  return model ? model->encoderOp.c_str() : nullptr;
}
const char *sae_rt_model_loss(const sae_rt_model *model) {
  return model ? model->loss.c_str() : nullptr;
}
const char *sae_rt_model_target_triple(const sae_rt_model *model) {
  return model ? model->triple.c_str() : nullptr;
}
const char *sae_rt_model_target_cpu(const sae_rt_model *model) {
  return model ? model->cpu.c_str() : nullptr;
}
size_t sae_rt_model_feature_count(const sae_rt_model *model) {
  return model ? model->features.size() : 0;
}
const char *sae_rt_model_feature(const sae_rt_model *model, size_t index) {
  if (!model || index >= model->features.size())
    return nullptr;
  return model->features[index].c_str();
}

size_t sae_rt_model_param_count(const sae_rt_model *model) {
  return model ? model->params.size() : 0;
}
const char *sae_rt_model_param_name(const sae_rt_model *model, size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param ? param->name.c_str() : nullptr;
}
int32_t sae_rt_model_param_ndim(const sae_rt_model *model, size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param ? param->ndim : 0;
}
const int64_t *sae_rt_model_param_shape(const sae_rt_model *model,
                                        size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param ? param->shape : nullptr;
}
int64_t sae_rt_model_param_numel(const sae_rt_model *model, size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param ? param->numel : 0;
}
const char *sae_rt_model_param_init(const sae_rt_model *model, size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param ? param->init.c_str() : nullptr;
}
int32_t sae_rt_model_param_trainable(const sae_rt_model *model, size_t index) {
  const ParamInfo *param = paramAt(model, index);
  return param && param->trainable ? 1 : 0;
}
size_t sae_rt_model_trainable_count(const sae_rt_model *model) {
  return model ? model->trainableCount : 0;
}
const sae_rt_train_config *
sae_rt_model_train_config(const sae_rt_model *model) {
  return model ? &model->train : nullptr;
}
int32_t sae_rt_model_has_train_config(const sae_rt_model *model) {
  return model && model->hasTrain ? 1 : 0;
}
const char *sae_rt_model_train_unit_norm(const sae_rt_model *model) {
  return model && model->hasUnitNorm ? model->unitNorm.c_str() : nullptr;
}

const sae_rt_entry_points *
sae_rt_model_entry_points(const sae_rt_model *model) {
  return model ? &model->entries : nullptr;
}

sae_rt_status sae_rt_model_set_threads(sae_rt_model *model, int32_t threads) {
  return guard([&] {
    if (!model)
      fail(SAE_RT_ERR_ARG, "sae_rt_model_set_threads: model is NULL");
    if (threads < 1)
      fail(SAE_RT_ERR_ARG, "the thread count must be at least 1, got " +
                               std::to_string(threads));
    // dlsym on the library's handle also searches its dependencies, which
    // is where its OpenMP runtime is.
    if (auto set = lookup<void (*)(int)>(model->handle.get(),
                                         "omp_set_num_threads"))
      set(threads);
  });
}

int32_t sae_rt_model_threads(const sae_rt_model *model) {
  if (!model)
    return 1;
  auto get = lookup<int (*)()>(model->handle.get(), "omp_get_max_threads");
  return get ? get() : 1;
}

sae_rt_status sae_rt_model_init(const sae_rt_model *model, uint64_t seed,
                                int64_t batch, const float *x,
                                float *const *params) {
  return guard([&] {
    const char *symbol = SAE_SYM_INIT;
    checkCall(model, model && model->entries.init, symbol, batch, false);
    if (model->initNeedsData) {
      if (batch < 1 || !x)
        fail(SAE_RT_ERR_ARG,
             modelLabel(model) + ": " + symbol +
                 ": the model has data-dependent initialisers and needs a "
                 "sample of its input " +
                 quote(model->inputs.front().name) +
                 " (batch >= 1 and x non-NULL); got batch " +
                 std::to_string(batch) + (x ? "" : " and x NULL"));
    } else {
      if (batch < 0)
        fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol + ": batch is " +
                                 std::to_string(batch) + ", expected >= 0");
      if (batch > 0 && !x)
        fail(SAE_RT_ERR_ARG, modelLabel(model) + ": " + symbol +
                                 ": x is NULL but batch is " +
                                 std::to_string(batch));
    }
    checkParams(model, params, symbol);
    checkResult(model, model->entries.init(seed, batch, x, params), symbol);
  });
}

sae_rt_status sae_rt_model_encode_dense(const sae_rt_model *model,
                                        int64_t batch,
                                        const float *const *inputs,
                                        float *const *params, float *codes) {
  return guard([&] {
    const char *symbol = SAE_SYM_ENCODE_DENSE;
    checkCall(model, model && model->entries.encode_dense, symbol, batch, true);
    checkInputs(model, inputs, symbol);
    checkBuffer(model, codes, "codes", symbol);
    checkParams(model, params, symbol);
    checkResult(model,
                model->entries.encode_dense(batch, inputs, params, codes),
                symbol);
  });
}

sae_rt_status sae_rt_model_encode_sparse(const sae_rt_model *model,
                                         int64_t batch,
                                         const float *const *inputs,
                                         float *const *params, float *values,
                                         int32_t *indices) {
  return guard([&] {
    const char *symbol = SAE_SYM_ENCODE_SPARSE;
    checkCall(model, model && model->entries.encode_sparse, symbol, batch,
              true);
    checkLayout(model, SAE_RT_LAYOUT_ROWS, symbol);
    checkInputs(model, inputs, symbol);
    checkBuffer(model, values, "values", symbol);
    checkBuffer(model, indices, "indices", symbol);
    checkParams(model, params, symbol);
    checkResult(
        model,
        model->entries.encode_sparse(batch, inputs, params, values, indices),
        symbol);
  });
}

sae_rt_status sae_rt_model_encode_batch(const sae_rt_model *model,
                                        int64_t batch,
                                        const float *const *inputs,
                                        float *const *params, float *values,
                                        int32_t *indices, int32_t *rows) {
  return guard([&] {
    const char *symbol = SAE_SYM_ENCODE_BATCH;
    checkCall(model, model && model->entries.encode_batch, symbol, batch, true);
    checkLayout(model, SAE_RT_LAYOUT_BATCH, symbol);
    checkInputs(model, inputs, symbol);
    checkBuffer(model, values, "values", symbol);
    checkBuffer(model, indices, "indices", symbol);
    checkBuffer(model, rows, "rows", symbol);
    checkParams(model, params, symbol);
    checkResult(model,
                model->entries.encode_batch(batch, inputs, params, values,
                                            indices, rows),
                symbol);
    // The entries must be decodable: a library breaking the contract is an
    // ABI error, not the caller's fault.
    checkEntries(model, batch, indices, rows, symbol, SAE_RT_ERR_ABI,
                 " returned entries that violate abi.h: ");
  });
}

sae_rt_status sae_rt_model_decode_dense(const sae_rt_model *model,
                                        int64_t batch, const float *codes,
                                        float *const *params, float *xhat) {
  return guard([&] {
    const char *symbol = SAE_SYM_DECODE_DENSE;
    checkCall(model, model && model->entries.decode_dense, symbol, batch, true);
    checkBuffer(model, codes, "codes", symbol);
    checkBuffer(model, xhat, "xhat", symbol);
    checkParams(model, params, symbol);
    checkResult(model, model->entries.decode_dense(batch, codes, params, xhat),
                symbol);
  });
}

sae_rt_status sae_rt_model_decode_sparse(const sae_rt_model *model,
                                         int64_t batch, const float *values,
                                         const int32_t *indices,
                                         float *const *params, float *xhat) {
  return guard([&] {
    const char *symbol = SAE_SYM_DECODE_SPARSE;
    checkCall(model, model && model->entries.decode_sparse, symbol, batch,
              true);
    checkLayout(model, SAE_RT_LAYOUT_ROWS, symbol);
    checkBuffer(model, values, "values", symbol);
    checkBuffer(model, indices, "indices", symbol);
    checkBuffer(model, xhat, "xhat", symbol);
    checkParams(model, params, symbol);
    uint64_t count = checkedMul(static_cast<uint64_t>(batch),
                                static_cast<uint64_t>(model->k), symbol);
    for (uint64_t i = 0; i < count; ++i) {
      int32_t index = indices[i];
      if (index < 0 || index >= model->latents)
        fail(SAE_RT_ERR_ARG,
             modelLabel(model) + ": " + symbol + ": row " +
                 std::to_string(i / static_cast<uint64_t>(model->k)) +
                 ", column " +
                 std::to_string(i % static_cast<uint64_t>(model->k)) +
                 ": index " + std::to_string(index) + " is out of range [0, " +
                 std::to_string(model->latents) + ")");
    }
    checkResult(
        model,
        model->entries.decode_sparse(batch, values, indices, params, xhat),
        symbol);
  });
}

sae_rt_status sae_rt_model_decode_batch(const sae_rt_model *model,
                                        int64_t batch, const float *values,
                                        const int32_t *indices,
                                        const int32_t *rows,
                                        float *const *params, float *xhat) {
  return guard([&] {
    const char *symbol = SAE_SYM_DECODE_BATCH;
    checkCall(model, model && model->entries.decode_batch, symbol, batch, true);
    checkLayout(model, SAE_RT_LAYOUT_BATCH, symbol);
    checkBuffer(model, values, "values", symbol);
    checkBuffer(model, indices, "indices", symbol);
    checkBuffer(model, rows, "rows", symbol);
    checkBuffer(model, xhat, "xhat", symbol);
    checkParams(model, params, symbol);
    checkEntries(model, batch, indices, rows, symbol, SAE_RT_ERR_ARG, ": ");
    checkResult(
        model,
        model->entries.decode_batch(batch, values, indices, rows, params, xhat),
        symbol);
  });
}

sae_rt_status sae_rt_model_forward(const sae_rt_model *model, int64_t batch,
                                   const float *const *inputs,
                                   float *const *params, uint64_t seed,
                                   float *xhat, float *losses) {
  return guard([&] {
    const char *symbol = SAE_SYM_FORWARD;
    checkCall(model, model && model->entries.forward, symbol, batch, true);
    checkInputs(model, inputs, symbol);
    checkBuffer(model, xhat, "xhat", symbol);
    checkBuffer(model, losses, "losses", symbol);
    checkParams(model, params, symbol);
    checkResult(
        model,
        model->entries.forward(batch, inputs, params, seed, xhat, losses),
        symbol);
  });
}

sae_rt_status sae_rt_model_gradient(const sae_rt_model *model, int64_t batch,
                                    const float *const *inputs,
                                    float *const *params, uint64_t seed,
                                    float *const *grads, float *losses) {
  return guard([&] {
    const char *symbol = SAE_SYM_GRADIENT;
    checkCall(model, model && model->entries.gradient, symbol, batch, true);
    checkInputs(model, inputs, symbol);
    checkParams(model, params, symbol);
    checkTrainableBuffers(model, grads, "grads", symbol);
    checkBuffer(model, losses, "losses", symbol);
    checkResult(
        model,
        model->entries.gradient(batch, inputs, params, seed, grads, losses),
        symbol);
  });
}

sae_rt_status sae_rt_model_train_step(const sae_rt_model *model, int64_t batch,
                                      const float *const *inputs,
                                      float *const *params,
                                      float *const *adam_m,
                                      float *const *adam_v, const float *hyper,
                                      uint64_t seed, float *losses,
                                      float *metrics, float *fired) {
  return guard([&] {
    const char *symbol = SAE_SYM_TRAIN_STEP;
    checkCall(model, model && model->entries.train_step, symbol, batch, true);
    checkInputs(model, inputs, symbol);
    checkParams(model, params, symbol);
    checkTrainableBuffers(model, adam_m, "adam_m", symbol);
    checkTrainableBuffers(model, adam_v, "adam_v", symbol);
    checkHyper(model, hyper, symbol);
    checkBuffer(model, losses, "losses", symbol);
    checkBuffer(model, metrics, "metrics", symbol);
    checkBuffer(model, fired, "fired", symbol);
    checkResult(model,
                model->entries.train_step(batch, inputs, params, adam_m, adam_v,
                                          hyper, seed, losses, metrics, fired),
                symbol);
  });
}

} // extern "C"

namespace {

/// One zero-filled aligned buffer per selected parameter, with the count in
/// the slot before the returned array (see sae_rt_params_free).
float **allocParamBuffers(const sae_rt_model *model, bool trainableOnly) {
  std::vector<const ParamInfo *> selected;
  for (const ParamInfo &param : model->params)
    if (!trainableOnly || param.trainable)
      selected.push_back(&param);
  size_t count = selected.size();
  // Slot 0 remembers the count so sae_rt_params_free needs no model.
  void **block = static_cast<void **>(std::calloc(count + 1, sizeof(void *)));
  if (!block)
    throw std::bad_alloc();
  uintptr_t stored = count;
  std::memcpy(&block[0], &stored, sizeof(stored));
  float **params = reinterpret_cast<float **>(block + 1);
  try {
    for (size_t i = 0; i < count; ++i) {
      std::string what =
          modelLabel(model) + ": param " + quote(selected[i]->name);
      size_t bytes =
          toSize(checkedMul(static_cast<uint64_t>(selected[i]->numel),
                            sizeof(float), what),
                 what);
      params[i] = static_cast<float *>(allocAligned(bytes));
    }
  } catch (...) {
    sae_rt_params_free(params);
    throw;
  }
  return params;
}

} // namespace

extern "C" {

sae_rt_status sae_rt_trainable_alloc(const sae_rt_model *model, float ***out) {
  return guard([&] {
    if (!model || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_trainable_alloc: NULL argument");
    *out = allocParamBuffers(model, true);
  });
}

sae_rt_status sae_rt_params_alloc(const sae_rt_model *model, float ***out) {
  return guard([&] {
    if (!model || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_params_alloc: NULL argument");
    *out = allocParamBuffers(model, false);
  });
}

void sae_rt_params_free(float **params) {
  if (!params)
    return;
  void **block = reinterpret_cast<void **>(params) - 1;
  uintptr_t count;
  std::memcpy(&count, &block[0], sizeof(count));
  for (uintptr_t i = 0; i < count; ++i)
    std::free(params[i]);
  std::free(block);
}

} // extern "C"
