#pragma once

#include <cstdint>
#include <string>

namespace mpsts::tools {

// 1234567 -> "1,234,567". (Built forwards: std::string::insert trips GCC 12's false
// -Wrestrict positive at -O3, GCC bug 105329.)
inline std::string withCommas(uint64_t value) {
  std::string digits = std::to_string(value);
  std::string out;
  out.reserve(digits.size() + digits.size() / 3);
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      out.push_back(',');
    }
    out.push_back(digits[i]);
  }
  return out;
}

inline std::string withCommas(double value) {
  return withCommas(static_cast<uint64_t>(value < 0 ? 0 : value + 0.5));
}

} // namespace mpsts::tools
