//===- internal.h - Shared internals of the saec host runtime
//--------------===//
//
// Everything the runtime's translation units share but do not export: the
// exception type used internally and the guard that turns it into a status
// at the C boundary, checked size arithmetic, RAII wrappers for files and
// arrays, the .npy header codec (used by .npy and .npz) and fault injection
// for tests.
//
//===----------------------------------------------------------------------===//
#ifndef SAE_RUNTIME_SRC_COMMON_INTERNAL_H
#define SAE_RUNTIME_SRC_COMMON_INTERNAL_H

#include "sae/runtime/runtime.h"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace sae {
namespace rt {

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

/// The one exception type thrown inside the runtime. Never crosses the C API.
class Error : public std::exception {
public:
  Error(sae_rt_status status, std::string message)
      : status(status), message(std::move(message)) {}
  const char *what() const noexcept override { return message.c_str(); }
  sae_rt_status getStatus() const { return status; }
  const std::string &getMessage() const { return message; }

private:
  sae_rt_status status;
  std::string message;
};

[[noreturn]] void fail(sae_rt_status status, std::string message);

/// Records `message` as the calling thread's last error.
void setLastError(std::string message);

/// Runs `body` (returning void) and converts whatever it throws into a status
/// plus a last-error message. Used by every C entry point.
template <typename Fn> sae_rt_status guard(Fn &&body) noexcept {
  try {
    body();
    return SAE_RT_OK;
  } catch (const Error &error) {
    setLastError(error.getMessage());
    return error.getStatus();
  } catch (const std::bad_alloc &) {
    setLastError("out of memory");
    return SAE_RT_ERR_NOMEM;
  } catch (const std::exception &error) {
    setLastError(std::string("internal error: ") + error.what());
    return SAE_RT_ERR_EXEC;
  } catch (...) {
    setLastError("internal error: unknown exception");
    return SAE_RT_ERR_EXEC;
  }
}

/// Quotes a path or name for messages: 'x'.
std::string quote(const std::string &text);

/// "strerror(errno)" for the current errno.
std::string errnoText();

//===----------------------------------------------------------------------===//
// Checked arithmetic
//===----------------------------------------------------------------------===//

/// a * b, or throws SAE_RT_ERR_NOMEM ("<what>: size overflow").
uint64_t checkedMul(uint64_t a, uint64_t b, const std::string &what);
/// a + b, or throws SAE_RT_ERR_NOMEM.
uint64_t checkedAdd(uint64_t a, uint64_t b, const std::string &what);
/// Converts to size_t, or throws SAE_RT_ERR_NOMEM.
size_t toSize(uint64_t value, const std::string &what);

//===----------------------------------------------------------------------===//
// Arrays
//===----------------------------------------------------------------------===//

/// Validates dtype/ndim/shape and returns the number of elements; throws
/// `status` with "<what>: ..." when invalid or overflowing.
uint64_t checkedNumel(sae_rt_dtype dtype, int32_t ndim, const int64_t *shape,
                      const std::string &what, sae_rt_status status);
/// numel * element size, checked.
uint64_t checkedNbytes(sae_rt_dtype dtype, int32_t ndim, const int64_t *shape,
                       const std::string &what, sae_rt_status status);

/// "[256, 768]".
std::string formatShape(int32_t ndim, const int64_t *shape);
/// "256x768" ("scalar" for ndim 0).
std::string formatShapeX(int32_t ndim, const int64_t *shape);

/// 64-byte aligned allocation of `bytes` (at least 1) zero-filled bytes;
/// throws std::bad_alloc. Release with std::free.
void *allocAligned(size_t bytes);

/// Owns a sae_rt_array until released.
class OwnedArray {
public:
  OwnedArray();
  ~OwnedArray();
  OwnedArray(const OwnedArray &) = delete;
  OwnedArray &operator=(const OwnedArray &) = delete;
  OwnedArray(OwnedArray &&other) noexcept;
  OwnedArray &operator=(OwnedArray &&other) noexcept;

  /// Allocates zero-filled storage for the given description.
  void allocate(sae_rt_dtype dtype, int32_t ndim, const int64_t *shape,
                const std::string &what);
  sae_rt_array &get() { return array; }
  const sae_rt_array &get() const { return array; }
  /// Hands the array to the caller (who must free it).
  sae_rt_array release();

private:
  sae_rt_array array;
};

//===----------------------------------------------------------------------===//
// Files
//===----------------------------------------------------------------------===//

/// A read-only file with bounds-checked positional reads.
class InputFile {
public:
  /// Opens `path`; SAE_RT_ERR_IO on failure. Refuses directories.
  explicit InputFile(const std::string &path);
  ~InputFile();
  InputFile(const InputFile &) = delete;
  InputFile &operator=(const InputFile &) = delete;

  const std::string &getPath() const { return path; }
  uint64_t getSize() const { return size; }
  /// Reads exactly `count` bytes at `offset`. The caller must have checked
  /// that the range lies within getSize(); a short read (the file shrank)
  /// is reported as SAE_RT_ERR_IO.
  void readAt(uint64_t offset, void *dst, size_t count) const;
  /// Reads [offset, offset + count) into a string.
  std::string readString(uint64_t offset, size_t count) const;

private:
  std::string path;
  int fd = -1;
  uint64_t size = 0;
};

/// A file written under a temporary name in the destination's directory and
/// renamed into place by commit(). Destroying it uncommitted removes the
/// temporary file.
class OutputFile {
public:
  explicit OutputFile(const std::string &path);
  ~OutputFile();
  OutputFile(const OutputFile &) = delete;
  OutputFile &operator=(const OutputFile &) = delete;

  const std::string &getPath() const { return path; }
  void write(const void *data, size_t count);
  void write(const std::string &text) { write(text.data(), text.size()); }
  /// Overwrites already-written bytes at `offset`.
  void writeAt(uint64_t offset, const void *data, size_t count);
  uint64_t getOffset() const { return offset; }
  /// fsyncs, closes and renames the file into place.
  void commit();

private:
  void flushBuffer();

  std::string path;
  std::string tempPath;
  int fd = -1;
  uint64_t offset = 0;
  std::vector<char> buffer;
  bool committed = false;
};

//===----------------------------------------------------------------------===//
// .npy headers
//===----------------------------------------------------------------------===//

struct NpyHeader {
  sae_rt_dtype dtype = SAE_RT_DTYPE_FLOAT32;
  int32_t ndim = 0;
  int64_t shape[SAE_RT_MAX_NDIM] = {};
  uint64_t dataOffset = 0; ///< From the start of the .npy stream.
  uint64_t dataBytes = 0;  ///< numel * element size.
};

/// Parses and validates the .npy stream stored in `file` at
/// [base, base + length): magic, version, header dict, and that the data
/// fits. Messages start with `what` (the file, or "Z.npz: member 'x.npy'").
NpyHeader parseNpyHeader(const InputFile &file, uint64_t base, uint64_t length,
                         const std::string &what);

/// Builds the magic, version, header length and header dict of a .npy file
/// (padded so the data starts at a multiple of 64). Only float32, int32 and
/// float16 have a .npy dtype.
std::string makeNpyHeader(sae_rt_dtype dtype, int32_t ndim,
                          const int64_t *shape, const std::string &what);

//===----------------------------------------------------------------------===//
// Misc
//===----------------------------------------------------------------------===//

/// Throws SAE_RT_ERR_IO "<what>: injected failure at <point>" when the test
/// hook armed `point`, and kills the process (SIGKILL) when it armed
/// "kill:<point>" (see sae_rt_testing_set_fault in status.cpp).
void faultPoint(const char *point, const std::string &what);
/// True when the test hook armed `point` (used for test-only switches).
bool faultArmed(const char *point);

/// Throws the last error when `status` is not SAE_RT_OK (for calling the C
/// API from inside the runtime).
void check(sae_rt_status status);

//===----------------------------------------------------------------------===//
// Training configuration (train.cpp)
//===----------------------------------------------------------------------===//

/// "none" / "linear" / "cosine"; false for other names.
bool parseLrDecay(const std::string &name, sae_rt_lr_decay &out);
/// "none" / "expected_norm"; false for other names.
bool parseNormalize(const std::string &name, sae_rt_normalize &out);
/// Checks the ranges of every field; on failure names the field ("lr") and
/// the problem ("is -1, expected a finite value >= 0").
bool checkTrainConfig(const sae_rt_train_config &config, std::string &field,
                      std::string &problem);
/// A real number for messages (shortest form that reads back the same).
std::string formatFloat(double value);

//===----------------------------------------------------------------------===//
// safetensors internals used by checkpoints
//===----------------------------------------------------------------------===//

void writeSafetensors(const std::string &path, size_t count,
                      const char *const *names, const sae_rt_array *arrays,
                      size_t metadataCount, const char *const *keys,
                      const char *const *values);
/// Reads the raw bytes of tensor `index` into `dst`, which must hold exactly
/// `bytes` (its data size).
void readSafetensorsInto(const sae_rt_safetensors *st, size_t index, void *dst,
                         size_t bytes);

/// The absolute byte offset in the file of the data of tensor `index`.
uint64_t safetensorsDataOffset(const sae_rt_safetensors *st, size_t index);

/// IEEE CRC-32 (as ZIP uses), continuing from `crc`.
uint32_t crc32Update(uint32_t crc, const void *data, size_t count);

/// Little-endian stores/loads.
void putLE16(std::string &out, uint16_t value);
void putLE32(std::string &out, uint32_t value);
void putLE64(std::string &out, uint64_t value);
uint16_t getLE16(const unsigned char *p);
uint32_t getLE32(const unsigned char *p);
uint64_t getLE64(const unsigned char *p);

} // namespace rt
} // namespace sae

/// Test hook, exported but not declared in the public header: arms the
/// comma-separated fault points in `points` (NULL or "" disarms all),
/// process-wide.
extern "C" SAE_RT_API void sae_rt_testing_set_fault(const char *points);

#endif // SAE_RUNTIME_SRC_COMMON_INTERNAL_H
