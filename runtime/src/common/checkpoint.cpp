//===- checkpoint.cpp - Atomic checkpoint save and validated load ---------===//
//
// A checkpoint is a directory holding sae_weights.safetensors (one F32
// tensor per model parameter) and cfg.json (the model's "cfg" plus
// saec_abi_version and saec_model), the layout SAE tooling expects, plus
// whatever extra files the caller adds (a trainer's optimizer state).
//
// Saving is atomic: the directory is assembled and fsync'ed under a sibling
// temporary name, then swapped into place (renameat2 RENAME_EXCHANGE where
// the filesystem supports it, otherwise rename-aside + rename), so `dir` is
// always either the old checkpoint or the new one, never a mix.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace sae::rt;

namespace {

constexpr const char *kWeightsFile = "sae_weights.safetensors";
constexpr const char *kCfgFile = "cfg.json";

std::string label(const std::string &dir) { return "checkpoint " + quote(dir); }

/// Splits "a/b/ckpt///" into parent "a/b" and base "ckpt".
void splitDir(const std::string &dir, std::string &parent, std::string &base) {
  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/')
    trimmed.pop_back();
  size_t slash = trimmed.find_last_of('/');
  if (slash == std::string::npos) {
    parent = ".";
    base = trimmed;
  } else {
    parent = slash == 0 ? "/" : trimmed.substr(0, slash);
    base = trimmed.substr(slash + 1);
  }
}

std::string joinPath(const std::string &parent, const std::string &name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

void syncPath(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

/// Removes a directory tree on destruction unless disarmed.
class TreeRemover {
public:
  explicit TreeRemover(std::string path) : path(std::move(path)) {}
  ~TreeRemover() {
    if (!path.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  }
  void disarm() { path.clear(); }
  void rearm(std::string newPath) { path = std::move(newPath); }

private:
  std::string path;
};

std::string makeTempDir(const std::string &parent, const std::string &base,
                        const char *tag, const std::string &dir) {
  std::string pattern = joinPath(parent, base + tag + "XXXXXX");
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (!::mkdtemp(buffer.data()))
    fail(SAE_RT_ERR_IO, label(dir) +
                            ": cannot create a temporary directory "
                            "in " +
                            quote(parent) + ": " + errnoText());
  return buffer.data();
}

/// An existing `dir` is replaced only if it is empty or looks like a
/// checkpoint, so a mistyped --out never wipes an unrelated directory.
void checkReplaceable(const std::string &dir) {
  DIR *stream = ::opendir(dir.c_str());
  if (!stream)
    fail(SAE_RT_ERR_IO,
         label(dir) + ": cannot read the existing directory: " + errnoText());
  bool empty = true, checkpoint = false;
  while (struct dirent *entry = ::readdir(stream)) {
    std::string name = entry->d_name;
    if (name == "." || name == "..")
      continue;
    empty = false;
    if (name == kWeightsFile || name == kCfgFile)
      checkpoint = true;
  }
  ::closedir(stream);
  if (!empty && !checkpoint)
    fail(SAE_RT_ERR_ARG,
         label(dir) +
             ": refusing to replace an existing directory that is "
             "not a checkpoint (it has neither " +
             kCfgFile + " nor " + kWeightsFile + ")");
}

bool renameExchange(const std::string &from, const std::string &to) {
#if defined(RENAME_EXCHANGE)
  if (faultArmed("checkpoint.no_exchange")) {
    errno = EINVAL;
    return false;
  }
  return ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(),
                     RENAME_EXCHANGE) == 0;
#else
  (void)from;
  (void)to;
  errno = ENOSYS;
  return false;
#endif
}

/// Checks the extra files' names and contents before anything is written.
void checkExtraFiles(const std::string &dir, size_t count,
                     const sae_rt_checkpoint_file *files) {
  std::set<std::string> seen;
  for (size_t i = 0; i < count; ++i) {
    const sae_rt_checkpoint_file &file = files[i];
    std::string where = label(dir) + ": extra file " + std::to_string(i);
    if (!file.name || !*file.name)
      fail(SAE_RT_ERR_ARG, where + " has no name");
    std::string name = file.name;
    where += " (" + quote(name) + ")";
    if (name == "." || name == ".." || name.find('/') != std::string::npos)
      fail(SAE_RT_ERR_ARG, where + ": expected a plain file name");
    if (name == kWeightsFile || name == kCfgFile)
      fail(SAE_RT_ERR_ARG, where + ": that name is the checkpoint's own");
    if (!seen.insert(name).second)
      fail(SAE_RT_ERR_ARG, where + ": given twice");
    if (!file.text && file.tensor_count > 0 &&
        (!file.tensor_names || !file.tensors))
      fail(SAE_RT_ERR_ARG, where + ": tensor names or arrays are NULL");
  }
}

void saveCheckpoint(const sae_rt_model *model, const std::string &dir,
                    float *const *params, size_t extraCount,
                    const sae_rt_checkpoint_file *extras) {
  size_t count = sae_rt_model_param_count(model);
  for (size_t i = 0; i < count; ++i)
    if (!params[i])
      fail(SAE_RT_ERR_ARG,
           label(dir) + ": params[" + std::to_string(i) + "] (" +
               quote(sae_rt_model_param_name(model, i)) + ") is NULL");
  std::string parent, base;
  splitDir(dir, parent, base);
  if (base.empty() || base == "." || base == ".." || base == "/")
    fail(SAE_RT_ERR_ARG, label(dir) + ": give the checkpoint a directory name "
                                      "of its own");

  struct stat info;
  bool exists = ::stat(dir.c_str(), &info) == 0;
  if (exists && !S_ISDIR(info.st_mode))
    fail(SAE_RT_ERR_IO, label(dir) + ": exists and is not a directory");
  if (!exists && errno != ENOENT)
    fail(SAE_RT_ERR_IO, label(dir) + ": " + errnoText());
  if (exists)
    checkReplaceable(dir);
  checkExtraFiles(dir, extraCount, extras);

  std::string target = joinPath(parent, base);
  std::string temp = makeTempDir(parent, base, ".tmp-", dir);
  TreeRemover removeTemp(temp);

  // The weights.
  std::vector<const char *> names(count);
  std::vector<sae_rt_array> arrays(count);
  for (size_t i = 0; i < count; ++i) {
    names[i] = sae_rt_model_param_name(model, i);
    sae_rt_array &array = arrays[i];
    array.dtype = SAE_RT_DTYPE_FLOAT32;
    array.ndim = sae_rt_model_param_ndim(model, i);
    const int64_t *shape = sae_rt_model_param_shape(model, i);
    for (int32_t d = 0; d < SAE_RT_MAX_NDIM; ++d)
      array.shape[d] = d < array.ndim ? shape[d] : 0;
    array.data = params[i];
  }
  const char *metadataKeys[] = {"format", "saec_model"};
  const char *metadataValues[] = {"pt", sae_rt_model_name(model)};
  writeSafetensors(joinPath(temp, kWeightsFile), count, names.data(),
                   arrays.data(), 2, metadataKeys, metadataValues);
  faultPoint("checkpoint.weights", label(dir));

  // The configuration.
  {
    OutputFile cfg(joinPath(temp, kCfgFile));
    cfg.write(std::string(sae_rt_model_cfg_json(model)));
    cfg.commit();
  }

  // The caller's files.
  for (size_t i = 0; i < extraCount; ++i) {
    const sae_rt_checkpoint_file &file = extras[i];
    std::string path = joinPath(temp, file.name);
    if (file.text) {
      OutputFile out(path);
      out.write(std::string(file.text));
      out.commit();
    } else {
      const char *keys[] = {"format"};
      const char *values[] = {"pt"};
      writeSafetensors(path, file.tensor_count, file.tensor_names, file.tensors,
                       1, keys, values);
    }
  }
  faultPoint("checkpoint.files", label(dir));
  syncPath(temp);
  faultPoint("checkpoint.swap", label(dir));

  if (!exists) {
    if (::rename(temp.c_str(), target.c_str()) != 0)
      fail(SAE_RT_ERR_IO, label(dir) + ": cannot rename " + quote(temp) +
                              " into place: " + errnoText());
    removeTemp.disarm();
    syncPath(parent);
    return;
  }

  // Swap atomically where possible; `temp` then names the old checkpoint.
  if (renameExchange(temp, target)) {
    syncPath(parent);
    return; // removeTemp deletes the old checkpoint
  }

  // Fallback: move the old checkpoint aside, move the new one in.
  std::string aside = makeTempDir(parent, base, ".old-", dir);
  if (::rename(target.c_str(), aside.c_str()) != 0) {
    std::string reason = errnoText();
    ::rmdir(aside.c_str());
    fail(SAE_RT_ERR_IO, label(dir) +
                            ": cannot move the old checkpoint "
                            "aside: " +
                            reason);
  }
  try {
    faultPoint("checkpoint.aside", label(dir));
    if (::rename(temp.c_str(), target.c_str()) != 0)
      fail(SAE_RT_ERR_IO, label(dir) + ": cannot rename " + quote(temp) +
                              " into place: " + errnoText());
  } catch (const Error &error) {
    // Put the old checkpoint back; `temp` is removed by removeTemp.
    if (::rename(aside.c_str(), target.c_str()) != 0)
      fail(SAE_RT_ERR_IO, error.getMessage() +
                              "; the old checkpoint could not be restored "
                              "and is at " +
                              quote(aside));
    throw;
  }
  removeTemp.rearm(aside);
  syncPath(parent);
}

void loadCheckpoint(const sae_rt_model *model, const std::string &dir,
                    float *const *params) {
  struct stat info;
  if (::stat(dir.c_str(), &info) != 0)
    fail(SAE_RT_ERR_IO, label(dir) + ": " + errnoText());
  if (!S_ISDIR(info.st_mode))
    fail(SAE_RT_ERR_IO, label(dir) + ": not a directory");
  std::string weightsPath = joinPath(dir, kWeightsFile);
  if (::access(weightsPath.c_str(), F_OK) != 0)
    fail(SAE_RT_ERR_IO, label(dir) + ": no " + kWeightsFile +
                            " in it (is it a checkpoint directory?)");

  sae_rt_safetensors *raw = nullptr;
  check(sae_rt_safetensors_open(weightsPath.c_str(), &raw));
  std::unique_ptr<sae_rt_safetensors, void (*)(sae_rt_safetensors *)> st(
      raw, sae_rt_safetensors_close);

  // Validate everything before touching `params`.
  size_t count = sae_rt_model_param_count(model);
  std::vector<size_t> indices(count);
  for (size_t i = 0; i < count; ++i) {
    const char *name = sae_rt_model_param_name(model, i);
    if (!params[i])
      fail(SAE_RT_ERR_ARG, label(dir) + ": params[" + std::to_string(i) +
                               "] (" + quote(name) + ") is NULL");
    int64_t index = sae_rt_safetensors_find(st.get(), name);
    if (index < 0)
      fail(SAE_RT_ERR_SHAPE, label(dir) + ": missing tensor " + quote(name));
    indices[i] = static_cast<size_t>(index);
    int32_t ndim = 0;
    const int64_t *shape =
        sae_rt_safetensors_shape(st.get(), indices[i], &ndim);
    int32_t expectedNdim = sae_rt_model_param_ndim(model, i);
    const int64_t *expected = sae_rt_model_param_shape(model, i);
    bool same = ndim == expectedNdim;
    for (int32_t d = 0; same && d < ndim; ++d)
      same = shape[d] == expected[d];
    if (!same)
      fail(SAE_RT_ERR_SHAPE, label(dir) + ": tensor " + quote(name) +
                                 " has shape " + formatShape(ndim, shape) +
                                 ", expected " +
                                 formatShape(expectedNdim, expected));
    std::string dtype = sae_rt_safetensors_dtype_name(st.get(), indices[i]);
    if (dtype != "F32" && dtype != "F16" && dtype != "BF16")
      fail(SAE_RT_ERR_SHAPE, label(dir) + ": tensor " + quote(name) +
                                 " has dtype " + dtype +
                                 ", expected F32 (F16 and BF16 are widened)");
  }

  for (size_t i = 0; i < count; ++i) {
    const char *name = sae_rt_model_param_name(model, i);
    size_t numel = static_cast<size_t>(sae_rt_model_param_numel(model, i));
    std::string dtype = sae_rt_safetensors_dtype_name(st.get(), indices[i]);
    if (dtype == "F32") {
      readSafetensorsInto(st.get(), indices[i], params[i],
                          numel * sizeof(float));
      continue;
    }
    OwnedArray half;
    check(sae_rt_safetensors_read(st.get(), name, &half.get()));
    OwnedArray widened;
    check(sae_rt_array_to_float32(&half.get(), &widened.get()));
    std::memcpy(params[i], widened.get().data, numel * sizeof(float));
  }
}

} // namespace

extern "C" {

sae_rt_status sae_rt_checkpoint_save(const sae_rt_model *model, const char *dir,
                                     float *const *params) {
  return guard([&] {
    if (!model || !dir || !*dir || !params)
      fail(SAE_RT_ERR_ARG, "sae_rt_checkpoint_save: NULL or empty argument");
    saveCheckpoint(model, dir, params, 0, nullptr);
  });
}

sae_rt_status
sae_rt_checkpoint_save_files(const sae_rt_model *model, const char *dir,
                             float *const *params, size_t file_count,
                             const sae_rt_checkpoint_file *files) {
  return guard([&] {
    if (!model || !dir || !*dir || !params || (file_count > 0 && !files))
      fail(SAE_RT_ERR_ARG,
           "sae_rt_checkpoint_save_files: NULL or empty argument");
    saveCheckpoint(model, dir, params, file_count, files);
  });
}

sae_rt_status sae_rt_checkpoint_load(const sae_rt_model *model, const char *dir,
                                     float *const *params) {
  return guard([&] {
    if (!model || !dir || !*dir || !params)
      fail(SAE_RT_ERR_ARG, "sae_rt_checkpoint_load: NULL or empty argument");
    loadCheckpoint(model, dir, params);
  });
}

} // extern "C"
