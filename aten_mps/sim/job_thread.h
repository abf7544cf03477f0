#pragma once

// One lazily started thread that runs posted jobs one at a time in posting order: a GPU
// queue's execution thread, its completion-handler thread.
//
// Note [Job thread lifetime]
// The thread holds its own reference to the shared queue state, never to the JobThread, so
// the JobThread (and whatever owns it) may be destroyed by a job running on that very
// thread: stop() from the thread itself detaches it and lets it retire once the queue is
// empty. stop() from any other thread waits for every posted job, then joins. A job posted
// after stop() starts a fresh thread, so owners can stop early (a device shutting down)
// without making later use unsafe.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace at::mps::threadsafe::sim {

class JobThread {
 public:
  JobThread();
  ~JobThread(); // stop()
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;

  void post(std::function<void()> job);
  // Waits until every job posted so far has run. No-op on the thread itself (it would wait
  // for its own job).
  void drain();
  // drain(), then ends the thread (Note [Job thread lifetime]).
  void stop();
  bool isCurrent() const;

 private:
  struct Shared {
    mutable std::mutex mutex;
    std::condition_variable wake; // a job arrived, or the thread was retired
    std::condition_variable idle; // unfinished dropped to 0
    std::deque<std::function<void()>> jobs;
    size_t unfinished = 0; // queued + running
    uint64_t generation = 0; // bumped by stop(); a thread of an older generation exits
    bool running = false; // a thread of the current generation exists
    bool retireWhenIdle = false; // set by stop() on the thread itself
    uint64_t runner = 0; // threadToken() of the current thread, 0 when none
    std::thread thread;
  };
  static void loop(const std::shared_ptr<Shared>& shared, uint64_t generation);

  std::shared_ptr<Shared> shared_;
};

} // namespace at::mps::threadsafe::sim
