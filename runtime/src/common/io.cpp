//===- io.cpp - Files: bounds-checked reads, atomic writes, byte order ----===//
//
// InputFile reads byte ranges of a file with explicit bounds; OutputFile
// writes under a temporary name in the destination directory and renames it
// into place on commit(), so readers never see a half-written file.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sae {
namespace rt {

//===----------------------------------------------------------------------===//
// Byte order
//===----------------------------------------------------------------------===//

void putLE16(std::string &out, uint16_t value) {
  out.push_back(static_cast<char>(value & 0xff));
  out.push_back(static_cast<char>(value >> 8));
}

void putLE32(std::string &out, uint32_t value) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

void putLE64(std::string &out, uint64_t value) {
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint16_t getLE16(const unsigned char *p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

uint32_t getLE32(const unsigned char *p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

uint64_t getLE64(const unsigned char *p) {
  return static_cast<uint64_t>(getLE32(p)) |
         (static_cast<uint64_t>(getLE32(p + 4)) << 32);
}

//===----------------------------------------------------------------------===//
// InputFile
//===----------------------------------------------------------------------===//

InputFile::InputFile(const std::string &path) : path(path) {
  fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail(SAE_RT_ERR_IO, path + ": cannot open: " + errnoText());
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    std::string reason = errnoText();
    ::close(fd);
    fd = -1;
    fail(SAE_RT_ERR_IO, path + ": cannot stat: " + reason);
  }
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    fd = -1;
    fail(SAE_RT_ERR_IO, path + ": is a directory, expected a file");
  }
  size = info.st_size > 0 ? static_cast<uint64_t>(info.st_size) : 0;
}

InputFile::~InputFile() {
  if (fd >= 0)
    ::close(fd);
}

void InputFile::readAt(uint64_t offset, void *dst, size_t count) const {
  char *out = static_cast<char *>(dst);
  while (count > 0) {
    // Keep single reads modest; some kernels cap pread at ~2 GiB anyway.
    size_t chunk = count < (size_t(1) << 30) ? count : (size_t(1) << 30);
    ssize_t got = ::pread(fd, out, chunk, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR)
        continue;
      fail(SAE_RT_ERR_IO, path + ": read error: " + errnoText());
    }
    if (got == 0)
      fail(SAE_RT_ERR_IO, path + ": unexpected end of file at byte " +
                              std::to_string(offset) +
                              " (was the file modified while being read?)");
    out += got;
    offset += static_cast<uint64_t>(got);
    count -= static_cast<size_t>(got);
  }
}

std::string InputFile::readString(uint64_t offset, size_t count) const {
  std::string text(count, '\0');
  if (count)
    readAt(offset, &text[0], count);
  return text;
}

//===----------------------------------------------------------------------===//
// OutputFile
//===----------------------------------------------------------------------===//

namespace {
constexpr size_t kBufferSize = size_t(1) << 20;

std::string uniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  uint64_t seed =
      static_cast<uint64_t>(
          std::chrono::steady_clock::now().time_since_epoch().count()) ^
      (static_cast<uint64_t>(::getpid()) << 32) ^
      (counter++ * 0x9e3779b97f4a7c15ull);
  // splitmix64 finaliser, then base-36 digits.
  seed ^= seed >> 30;
  seed *= 0xbf58476d1ce4e5b9ull;
  seed ^= seed >> 27;
  seed *= 0x94d049bb133111ebull;
  seed ^= seed >> 31;
  static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string suffix;
  for (int i = 0; i < 8; ++i) {
    suffix.push_back(digits[seed % 36]);
    seed /= 36;
  }
  return suffix;
}

void splitPath(const std::string &path, std::string &dir, std::string &base) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) {
    dir = ".";
    base = path;
  } else {
    dir = slash == 0 ? "/" : path.substr(0, slash);
    base = path.substr(slash + 1);
  }
}

/// Best effort: makes a rename in `dir` durable.
void syncDirectory(const std::string &dir) {
  int dirFd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirFd >= 0) {
    ::fsync(dirFd);
    ::close(dirFd);
  }
}
} // namespace

OutputFile::OutputFile(const std::string &path) : path(path) {
  std::string dir, base;
  splitPath(path, dir, base);
  if (base.empty())
    fail(SAE_RT_ERR_ARG, quote(path) + ": not a file name");
  struct stat info;
  if (::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
    fail(SAE_RT_ERR_IO, path + ": is a directory");
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string candidate = (dir == "/" ? std::string("/") : dir + "/") + "." +
                            base + ".tmp-" + uniqueSuffix();
    fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                0666);
    if (fd >= 0) {
      tempPath = candidate;
      break;
    }
    if (errno != EEXIST)
      fail(SAE_RT_ERR_IO, path + ": cannot create a file in " + quote(dir) +
                              ": " + errnoText());
  }
  if (fd < 0)
    fail(SAE_RT_ERR_IO, path + ": cannot create a unique temporary file");
  buffer.reserve(kBufferSize);
}

OutputFile::~OutputFile() {
  if (fd >= 0)
    ::close(fd);
  if (!committed && !tempPath.empty())
    ::unlink(tempPath.c_str());
}

static void writeAll(int fd, const char *data, size_t count, uint64_t offset,
                     const std::string &path) {
  while (count > 0) {
    size_t chunk = count < (size_t(1) << 30) ? count : (size_t(1) << 30);
    ssize_t wrote = ::pwrite(fd, data, chunk, static_cast<off_t>(offset));
    if (wrote < 0) {
      if (errno == EINTR)
        continue;
      fail(SAE_RT_ERR_IO, path + ": write error: " + errnoText());
    }
    if (wrote == 0)
      fail(SAE_RT_ERR_IO, path + ": write error: no progress");
    data += wrote;
    offset += static_cast<uint64_t>(wrote);
    count -= static_cast<size_t>(wrote);
  }
}

void OutputFile::flushBuffer() {
  if (buffer.empty())
    return;
  uint64_t start = offset - buffer.size();
  writeAll(fd, buffer.data(), buffer.size(), start, path);
  buffer.clear();
}

void OutputFile::write(const void *data, size_t count) {
  if (committed || fd < 0)
    fail(SAE_RT_ERR_ARG, path + ": write after commit");
  if (count == 0)
    return;
  checkedAdd(offset, count, path);
  const char *bytes = static_cast<const char *>(data);
  if (buffer.size() + count <= kBufferSize) {
    buffer.insert(buffer.end(), bytes, bytes + count);
    offset += count;
    return;
  }
  flushBuffer();
  if (count >= kBufferSize) {
    writeAll(fd, bytes, count, offset, path);
    offset += count;
  } else {
    buffer.insert(buffer.end(), bytes, bytes + count);
    offset += count;
  }
}

void OutputFile::writeAt(uint64_t at, const void *data, size_t count) {
  if (committed || fd < 0)
    fail(SAE_RT_ERR_ARG, path + ": write after commit");
  if (at > offset || count > offset - at)
    fail(SAE_RT_ERR_ARG, path + ": writeAt beyond the written data");
  flushBuffer();
  writeAll(fd, static_cast<const char *>(data), count, at, path);
}

void OutputFile::commit() {
  if (committed || fd < 0)
    fail(SAE_RT_ERR_ARG, path + ": committed twice");
  flushBuffer();
  if (::fsync(fd) != 0)
    fail(SAE_RT_ERR_IO, path + ": fsync failed: " + errnoText());
  int closing = fd;
  fd = -1;
  if (::close(closing) != 0)
    fail(SAE_RT_ERR_IO, path + ": close failed: " + errnoText());
  faultPoint("output.commit", path);
  if (::rename(tempPath.c_str(), path.c_str()) != 0)
    fail(SAE_RT_ERR_IO, path + ": cannot rename " + quote(tempPath) +
                            " into place: " + errnoText());
  committed = true;
  std::string dir, base;
  splitPath(path, dir, base);
  syncDirectory(dir);
}

} // namespace rt
} // namespace sae
