//===- status.cpp - Status codes, the thread-local last error, test faults ===//
//
// Implements sae_rt_status_string / sae_rt_last_error, the internal fail()
// helper, and the fault-injection hook that unit tests use to simulate a
// failure (or, armed as "kill:POINT", a SIGKILL) in the middle of an atomic
// write.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <set>

namespace sae {
namespace rt {

namespace {
thread_local std::string lastError;

std::mutex faultMutex;
std::set<std::string> armedFaults;
} // namespace

void setLastError(std::string message) {
  // Assigning may throw bad_alloc; keep the previous message in that case
  // rather than letting an exception escape a noexcept guard.
  try {
    lastError = std::move(message);
  } catch (...) {
  }
}

void fail(sae_rt_status status, std::string message) {
  throw Error(status, std::move(message));
}

std::string quote(const std::string &text) { return "'" + text + "'"; }

std::string errnoText() { return std::strerror(errno); }

void faultPoint(const char *point, const std::string &what) {
  // "kill:POINT" simulates the process being killed there (a power cut or
  // SIGKILL in the middle of an atomic write).
  if (faultArmed(("kill:" + std::string(point)).c_str()))
    ::raise(SIGKILL);
  if (faultArmed(point))
    fail(SAE_RT_ERR_IO, what + ": injected failure at " + point);
}

void check(sae_rt_status status) {
  if (status != SAE_RT_OK)
    fail(status, sae_rt_last_error());
}

bool faultArmed(const char *point) {
  std::lock_guard<std::mutex> lock(faultMutex);
  return armedFaults.count(point) != 0;
}

} // namespace rt
} // namespace sae

using namespace sae::rt;

extern "C" {

const char *sae_rt_status_string(sae_rt_status status) {
  switch (status) {
  case SAE_RT_OK:
    return "ok";
  case SAE_RT_ERR_IO:
    return "I/O error";
  case SAE_RT_ERR_FORMAT:
    return "malformed or unsupported file";
  case SAE_RT_ERR_SHAPE:
    return "shape or dtype mismatch";
  case SAE_RT_ERR_ABI:
    return "model library ABI error";
  case SAE_RT_ERR_ARG:
    return "invalid argument";
  case SAE_RT_ERR_NOMEM:
    return "out of memory";
  case SAE_RT_ERR_EXEC:
    return "execution failed";
  default:
    return "unknown status";
  }
}

const char *sae_rt_last_error(void) { return lastError.c_str(); }

void sae_rt_testing_set_fault(const char *points) {
  std::lock_guard<std::mutex> lock(faultMutex);
  armedFaults.clear();
  try {
    std::string list = points ? points : "";
    size_t start = 0;
    while (start <= list.size()) {
      size_t comma = list.find(',', start);
      if (comma == std::string::npos)
        comma = list.size();
      if (comma > start)
        armedFaults.insert(list.substr(start, comma - start));
      start = comma + 1;
    }
  } catch (...) {
    armedFaults.clear();
  }
}

} // extern "C"
