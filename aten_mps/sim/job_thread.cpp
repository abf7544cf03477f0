#include "job_thread.h"

#include <cstdio>
#include <exception>

#include "thread_token.h"

namespace at::mps::threadsafe::sim {

JobThread::JobThread() : shared_(std::make_shared<Shared>()) {}

JobThread::~JobThread() {
  stop();
}

void JobThread::post(std::function<void()> job) {
  // Our own reference: once the lock is released the job may run and destroy *this.
  const std::shared_ptr<Shared> shared = shared_;
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->jobs.push_back(std::move(job));
  ++shared->unfinished;
  if (!shared->running) {
    // Thread state (running, thread) changes only under the mutex, so two posts never
    // start two threads and a retiring thread never runs a job of its successor.
    shared->thread = std::thread(&JobThread::loop, shared, shared->generation);
    shared->running = true;
    shared->retireWhenIdle = false;
  }
  lock.unlock();
  shared->wake.notify_one();
}

bool JobThread::isCurrent() const {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  return shared_->runner == threadToken();
}

void JobThread::drain() {
  std::unique_lock<std::mutex> lock(shared_->mutex);
  if (shared_->runner == threadToken()) {
    return;
  }
  shared_->idle.wait(lock, [&] { return shared_->unfinished == 0; });
}

void JobThread::stop() {
  std::thread retired;
  {
    std::unique_lock<std::mutex> lock(shared_->mutex);
    if (shared_->runner == threadToken()) {
      // Called from one of our own jobs (the owner is being destroyed by it): the thread
      // cannot join itself, so it finishes the queue detached and then retires.
      shared_->retireWhenIdle = true;
      retired = std::move(shared_->thread);
      lock.unlock();
      if (retired.joinable()) {
        retired.detach();
      }
      return;
    }
    shared_->idle.wait(lock, [&] { return shared_->unfinished == 0; });
    if (!shared_->running) {
      return;
    }
    ++shared_->generation;
    shared_->running = false;
    shared_->runner = 0;
    retired = std::move(shared_->thread);
  }
  shared_->wake.notify_all();
  if (retired.joinable()) {
    retired.join();
  }
}

void JobThread::loop(const std::shared_ptr<Shared>& sharedRef, uint64_t generation) {
  // Keep our own reference: the JobThread may be destroyed while we run (Note [Job thread
  // lifetime]).
  std::shared_ptr<Shared> shared = sharedRef;
  std::unique_lock<std::mutex> lock(shared->mutex);
  if (shared->generation == generation) {
    shared->runner = threadToken();
  }
  for (;;) {
    shared->wake.wait(lock, [&] {
      return shared->generation != generation || !shared->jobs.empty() || shared->retireWhenIdle;
    });
    if (shared->generation != generation) {
      return; // stop() drained the queue and retired us; a successor may be running
    }
    if (shared->jobs.empty()) {
      shared->running = false;
      shared->retireWhenIdle = false;
      shared->runner = 0;
      return;
    }
    std::function<void()> job = std::move(shared->jobs.front());
    shared->jobs.pop_front();
    lock.unlock();
    try {
      job();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sim device: a job threw on its worker thread: %s\n", e.what());
      std::fflush(stderr);
    } catch (...) {
      std::fprintf(stderr, "sim device: a job threw on its worker thread\n");
      std::fflush(stderr);
    }
    job = nullptr; // what the job captured dies here, outside the lock
    lock.lock();
    if (--shared->unfinished == 0) {
      shared->idle.notify_all();
    }
  }
}

} // namespace at::mps::threadsafe::sim
