#pragma once

// The one place the C++ tests include Catch2 from, so they build with Catch2 v3 (Ubuntu 24.04,
// Debian 13, Homebrew) and v2 (Debian 12). cmake/tests.cmake finds either and defines
// MPSTS_CATCH2_MAJOR to the version found.
//
// Note [Catch2 v2 and v3 spellings]
// The tests are written in the subset both versions share, plus the two v2 names that v3
// moved, which this header brings back under their v2 spelling when building with v3:
//   - Catch::MatcherBase<T> (v2) is Catch::Matchers::MatcherBase<T> in v3.
//   - Catch::Matchers::Contains(std::string) (v2: "the string contains this substring") is
//     ContainsSubstring in v3, where Contains(x) means "the range contains the element x".
//     The overload below takes the string literals the tests pass; as a non-template it wins
//     over v3's Contains(T&&) template for a `const char*` argument, so
//     REQUIRE_THAT(message, Contains("text")) keeps its v2 meaning. A test that wants v3's
//     range Contains still gets it for any other argument type.
// Everything else the tests use (TEST_CASE, SECTION, GENERATE, REQUIRE_THROWS_AS/_WITH/_MATCHES,
// REQUIRE_THAT) is spelled the same in both.

#if !defined(MPSTS_CATCH2_MAJOR)
#error "MPSTS_CATCH2_MAJOR is not set: build the tests through cmake/tests.cmake"
#endif

#if MPSTS_CATCH2_MAJOR >= 3

#include <catch2/catch_all.hpp>

namespace Catch {
using Matchers::MatcherBase;
namespace Matchers {
inline StringContainsMatcher Contains(const char* substring,
                                      CaseSensitive caseSensitivity = CaseSensitive::Yes) {
  return ContainsSubstring(substring, caseSensitivity);
}
} // namespace Matchers
} // namespace Catch

#else

#include <catch2/catch.hpp>

#endif
