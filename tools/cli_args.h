#pragma once

// A small command-line parser for the tools: `--name value`, `--name=value` and flags. A bad
// or unknown argument prints what is wrong and the usage, then exits with status 2.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace mpsts::tools {

class CliArgs {
 public:
  CliArgs(int argc, char** argv, std::string usage) : usage_(std::move(usage)) {
    for (int i = 1; i < argc; ++i) {
      args_.emplace_back(argv[i]);
    }
    if (flag("--help") || flag("-h")) {
      std::printf("%s", usage_.c_str());
      std::exit(0);
    }
  }

  bool flag(std::string_view name) {
    for (size_t i = 0; i < args_.size(); ++i) {
      if (args_[i] == name) {
        args_.erase(args_.begin() + static_cast<long>(i));
        return true;
      }
    }
    return false;
  }

  std::string text(std::string_view name, std::string fallback) {
    std::string value;
    return take(name, value) ? value : fallback;
  }

  long integer(std::string_view name, long fallback, long min, long max) {
    std::string value;
    if (!take(name, value)) {
      return fallback;
    }
    char* end = nullptr;
    long parsed = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || parsed < min || parsed > max) {
      fail(std::string(name) + " takes an integer in [" + std::to_string(min) + ", " +
           std::to_string(max) + "], got '" + value + "'");
    }
    return parsed;
  }

  double real(std::string_view name, double fallback, double min, double max) {
    std::string value;
    if (!take(name, value)) {
      return fallback;
    }
    char* end = nullptr;
    double parsed = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !(parsed >= min && parsed <= max)) {
      fail(std::string(name) + " takes a number in [" + std::to_string(min) + ", " +
           std::to_string(max) + "], got '" + value + "'");
    }
    return parsed;
  }

  // Comma-separated positive integers, e.g. --threads 1,2,4,8.
  std::vector<int> integerList(std::string_view name, std::vector<int> fallback, int max) {
    std::string value;
    if (!take(name, value)) {
      return fallback;
    }
    std::vector<int> list;
    size_t start = 0;
    while (start <= value.size()) {
      size_t comma = value.find(',', start);
      std::string item =
          value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      char* end = nullptr;
      long parsed = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || parsed < 1 || parsed > max) {
        fail(std::string(name) + " takes a comma-separated list of integers in [1, " +
             std::to_string(max) + "], got '" + value + "'");
      }
      list.push_back(static_cast<int>(parsed));
      if (comma == std::string::npos) {
        break;
      }
      start = comma + 1;
    }
    return list;
  }

  // Call after reading every option: anything left over is an error.
  void finish() {
    if (!args_.empty()) {
      fail("unknown argument '" + args_.front() + "'");
    }
  }

  [[noreturn]] void fail(const std::string& message) const {
    std::fprintf(stderr, "error: %s\n\n%s", message.c_str(), usage_.c_str());
    std::exit(2);
  }

 private:
  bool take(std::string_view name, std::string& value) {
    for (size_t i = 0; i < args_.size(); ++i) {
      const std::string& arg = args_[i];
      if (arg == name) {
        if (i + 1 >= args_.size()) {
          fail(std::string(name) + " needs a value");
        }
        value = args_[i + 1];
        args_.erase(args_.begin() + static_cast<long>(i), args_.begin() + static_cast<long>(i) + 2);
        return true;
      }
      if (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 &&
          arg[name.size()] == '=') {
        value = arg.substr(name.size() + 1);
        args_.erase(args_.begin() + static_cast<long>(i));
        return true;
      }
    }
    return false;
  }

  std::string usage_;
  std::vector<std::string> args_;
};

} // namespace mpsts::tools
