#pragma once

// One line naming the machine and the build, printed with every result so that a number is
// never separated from where it was measured.

#include <cstdint>
#include <fstream>
#include <string>
#include <thread>

#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace mpsts::tools {

inline std::string cpuModel() {
#if defined(__APPLE__)
  char brand[256] = {};
  size_t size = sizeof(brand);
  if (sysctlbyname("machdep.cpu.brand_string", brand, &size, nullptr, 0) == 0) {
    return brand;
  }
#else
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  // x86 says "model name"; some arm64 kernels say "Model" or only "CPU part".
  for (const char* key : {"model name", "Model", "Hardware"}) {
    cpuinfo.clear();
    cpuinfo.seekg(0);
    while (std::getline(cpuinfo, line)) {
      if (line.rfind(key, 0) == 0) {
        size_t colon = line.find(':');
        if (colon != std::string::npos) {
          size_t start = line.find_first_not_of(" \t", colon + 1);
          return start == std::string::npos ? std::string("unknown") : line.substr(start);
        }
      }
    }
  }
#endif
  return "unknown CPU";
}

inline std::string machineDescription() {
  std::string build = MPSTS_BUILD_TYPE;
  std::string sanitizers = MPSTS_SANITIZE_FLAGS;
  if (!sanitizers.empty()) {
    build += ", -fsanitize=" + sanitizers;
  }
#if defined(__clang__)
  std::string compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  std::string compiler = "g++ " __VERSION__;
#else
  std::string compiler = "unknown compiler";
#endif
  return cpuModel() + ", " + std::to_string(std::thread::hardware_concurrency()) +
         " hardware threads; " + compiler + ", " + build + " build";
}

} // namespace mpsts::tools
