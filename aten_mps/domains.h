#pragma once

// Serialization domains: a lock per object the driver does not make safe to encode from two
// threads at once even on different command buffers (a cached MPSGraph executable, a pipeline
// state some kernels mutate through a shared helper), or per op class where the op's cached
// state cannot be split per object (layer_norm, gatherViewTensor). Everything else runs
// unlocked on its own stream.
//
// Note [Domain lock order]
// A domain is taken inside a stream's queue, around the encode of the shared object, and
// released before leaving it: queue -> domain, never the other way. Entering a queue or
// waiting for another stream while holding a domain raises ContractError (stream.cpp), which
// is what keeps the cross-stream waits of Note [Closing a batch on request] deadlock-free.
//
// Note [Retiring a cached object]
// A cache that drops an object (empty_cache) retires its domain first: retire() takes the
// domain's lock, so it returns only once nobody is encoding the object, and unpublishes it;
// guards already holding the domain keep it alive. The cache must still hold the object
// itself by reference count, so a thread that looked it up before the clear can finish.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "diagnostics.h"

namespace at::mps::threadsafe {

class DomainRegistry;

class Domain {
 public:
  explicit Domain(std::string name) : name_(std::move(name)) {}
  const std::string& name() const {
    return name_;
  }
  DomainCounters& counters() {
    return counters_;
  }
  const DomainCounters& counters() const {
    return counters_;
  }

 private:
  friend class DomainGuard;
  friend class DomainRegistry;
  std::mutex mutex_;
  std::string name_;
  DomainCounters counters_;
};

// Holds a domain for the encode of its object. With domains switched off (the deliberately
// unprotected mode) it holds nothing.
class DomainGuard {
 public:
  DomainGuard(std::shared_ptr<Domain> domain, bool enabled);
  ~DomainGuard();
  DomainGuard(const DomainGuard&) = delete;
  DomainGuard& operator=(const DomainGuard&) = delete;

  // Domains the calling thread holds now (Note [Domain lock order]).
  static int heldByThisThread();

 private:
  std::shared_ptr<Domain> domain_;
  bool locked_ = false;
};

class DomainRegistry {
 public:
  // The domain of one shared object, created on first use; `kind` names it in stats.
  std::shared_ptr<Domain> forObject(const void* object, std::string_view kind);
  // The domain of an op class ("layer_norm", "gatherViewTensor").
  std::shared_ptr<Domain> forClass(std::string_view opClass);
  // Note [Retiring a cached object]. No-op for an unknown object.
  void retire(const void* object);
  std::vector<DomainStats> stats() const;

 private:
  mutable std::shared_mutex mutex_;
  std::unordered_map<const void*, std::shared_ptr<Domain>> byObject_;
  std::unordered_map<std::string, std::shared_ptr<Domain>> byClass_;
  void mergeReleased() const; // mutex_ held exclusively
  // Counters of retired domains nobody holds any more, by name; and retired domains still
  // held by a thread that looked them up before the retire (counted live).
  mutable std::unordered_map<std::string, DomainStats> retired_;
  mutable std::vector<std::shared_ptr<Domain>> retiring_;
};

} // namespace at::mps::threadsafe
