#include "domains.h"

#include <algorithm>
#include <chrono>

namespace at::mps::threadsafe {

namespace {
thread_local int tlsDomainsHeld = 0;

void mergeInto(DomainStats& into, const Domain& domain) {
  into.acquisitions += domain.counters().acquisitions.get();
  into.waits += domain.counters().waits.get();
  into.waitNs += domain.counters().waitNs.get();
}
} // namespace

DomainGuard::DomainGuard(std::shared_ptr<Domain> domain, bool enabled) : domain_(std::move(domain)) {
  if (!enabled || !domain_) {
    return;
  }
  domain_->counters_.acquisitions.add();
  if (!domain_->mutex_.try_lock()) {
    const auto start = std::chrono::steady_clock::now();
    domain_->mutex_.lock();
    domain_->counters_.waits.add();
    domain_->counters_.waitNs.add(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
            .count()));
  }
  locked_ = true;
  ++tlsDomainsHeld;
}

DomainGuard::~DomainGuard() {
  if (locked_) {
    domain_->mutex_.unlock();
    --tlsDomainsHeld;
  }
}

int DomainGuard::heldByThisThread() {
  return tlsDomainsHeld;
}

std::shared_ptr<Domain> DomainRegistry::forObject(const void* object, std::string_view kind) {
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = byObject_.find(object);
    if (it != byObject_.end()) {
      return it->second;
    }
  }
  std::unique_lock<std::shared_mutex> lock(mutex_);
  auto [it, inserted] = byObject_.try_emplace(object);
  if (inserted) {
    it->second = std::make_shared<Domain>(std::string(kind));
  }
  return it->second;
}

std::shared_ptr<Domain> DomainRegistry::forClass(std::string_view opClass) {
  const std::string key(opClass);
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto it = byClass_.find(key);
    if (it != byClass_.end()) {
      return it->second;
    }
  }
  std::unique_lock<std::shared_mutex> lock(mutex_);
  auto [it, inserted] = byClass_.try_emplace(key);
  if (inserted) {
    it->second = std::make_shared<Domain>(key);
  }
  return it->second;
}

void DomainRegistry::retire(const void* object) {
  std::shared_ptr<Domain> domain;
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    auto it = byObject_.find(object);
    if (it == byObject_.end()) {
      return;
    }
    domain = std::move(it->second);
    byObject_.erase(it);
  }
  // Wait for an encode in progress to finish (Note [Retiring a cached object]).
  { std::lock_guard<std::mutex> drained(domain->mutex_); }
  std::unique_lock<std::shared_mutex> lock(mutex_);
  // A thread that looked the domain up before the retire may still take it: its counters are
  // merged only once nobody else holds it (issue 8.8: they were merged here, and later
  // acquisitions were lost).
  retiring_.push_back(std::move(domain));
  mergeReleased();
}

void DomainRegistry::mergeReleased() const {
  auto released = std::partition(retiring_.begin(), retiring_.end(),
                                 [](const std::shared_ptr<Domain>& d) { return d.use_count() > 1; });
  for (auto it = released; it != retiring_.end(); ++it) {
    DomainStats& stats = retired_[(*it)->name()];
    stats.name = (*it)->name();
    mergeInto(stats, **it);
  }
  retiring_.erase(released, retiring_.end());
}

std::vector<DomainStats> DomainRegistry::stats() const {
  std::unordered_map<std::string, DomainStats> merged;
  std::unique_lock<std::shared_mutex> lock(mutex_);
  mergeReleased();
  merged = retired_;
  for (const auto& domain : retiring_) {
    DomainStats& stats = merged[domain->name()];
    stats.name = domain->name();
    mergeInto(stats, *domain);
  }
  auto add = [&](const std::shared_ptr<Domain>& domain) {
    DomainStats& stats = merged[domain->name()];
    stats.name = domain->name();
    mergeInto(stats, *domain);
  };
  for (const auto& [object, domain] : byObject_) {
    add(domain);
  }
  for (const auto& [name, domain] : byClass_) {
    add(domain);
  }
  std::vector<DomainStats> result;
  result.reserve(merged.size());
  for (auto& [name, stats] : merged) {
    result.push_back(std::move(stats));
  }
  return result;
}

} // namespace at::mps::threadsafe
