#include "quarantine.h"


namespace at::mps::threadsafe::sim {

Quarantine::~Quarantine() {
  close();
}

void Quarantine::admit(Poisonable* object) noexcept {
  object->released_.store(true, std::memory_order_release);
  object->onRelease();
  // Declared first, destroyed last: the free happens after the lock is gone, and may end
  // the device state that owns *this, so nothing below it may touch a member.
  std::unique_ptr<Poisonable> freed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_ || capacity_ == 0) {
      freed.reset(object);
    } else {
      ring_.push_back(object);
      if (ring_.size() > capacity_) {
        // The object just parked keeps the state alive, so freeing the oldest is safe.
        freed.reset(ring_.front());
        ring_.pop_front();
      }
    }
  }
}

void Quarantine::close() noexcept {
  std::deque<Poisonable*> parked;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    parked.swap(ring_);
  }
  // Freeing an encoder may release its command buffer, which comes back through admit()
  // and, the quarantine being closed, is freed at once.
  for (Poisonable* object : parked) {
    delete object;
  }
}

size_t Quarantine::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return ring_.size();
}

} // namespace at::mps::threadsafe::sim
