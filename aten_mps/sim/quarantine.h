#pragma once

// Poisoning of released objects. Encoders and command buffers are handed out as shared_ptrs
// whose deleter does not free them: it marks them released and parks them in the device's
// quarantine, a ring of the most recently released objects. Every method checks the mark
// first, so a message sent to a released object is reported (UseAfterRelease) instead of
// being undefined behaviour, for as long as the object stays in the ring.

#include <atomic>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>

namespace at::mps::threadsafe::sim {

class Quarantine;

class Poisonable {
 public:
  Poisonable() = default;
  Poisonable(const Poisonable&) = delete;
  Poisonable& operator=(const Poisonable&) = delete;
  virtual ~Poisonable() = default;

  bool released() const noexcept {
    return released_.load(std::memory_order_acquire);
  }

 protected:
  // Drops what the object holds for work that will never run now (uncommitted kernels,
  // handlers), so parked objects stay small. Called once, on release, from any thread.
  virtual void onRelease() noexcept {}

 private:
  friend class Quarantine;
  std::atomic<bool> released_{false};
};

class Quarantine {
 public:
  explicit Quarantine(size_t capacity) : capacity_(capacity) {}
  ~Quarantine();

  // Marks `object` released and parks it; frees the oldest parked object beyond capacity.
  // May free `object` (and with it, possibly, the device state that owns this quarantine)
  // when the quarantine is closed: it touches nothing of `this` afterwards.
  void admit(Poisonable* object) noexcept;
  // Frees every parked object; later releases free at once (the device is gone, so nothing
  // is left to report a use to, and parked objects would keep the device state alive).
  void close() noexcept;
  size_t size() const;

 private:
  const size_t capacity_;
  mutable std::mutex mutex_;
  bool closed_ = false;
  std::deque<Poisonable*> ring_;
};

// Hands out `object` as a shared_ptr that releases it into `quarantine`. The object must
// keep the quarantine's owner alive (it holds the device state).
template <class T>
std::shared_ptr<T> handOut(Quarantine& quarantine, T* object) {
  Quarantine* q = &quarantine;
  return std::shared_ptr<T>(object, [q](T* released) { q->admit(released); });
}

} // namespace at::mps::threadsafe::sim
