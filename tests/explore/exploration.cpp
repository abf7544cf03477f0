#include "exploration.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "aten_mps/errors.h"
#include "aten_mps/events.h"
#include "aten_mps/runtime.h"
#include "aten_mps/schedule.h"
#include "aten_mps/sim/sim_device.h"

namespace mpsts::explore {

using namespace at::mps::threadsafe; // NOLINT(google-build-using-namespace)
namespace sim = at::mps::threadsafe::sim;

namespace {

constexpr int kWords = 32; // words per row / block
const char* const kOpNames[] = {"Dispatch",  "Commit",      "CommitAndContinue", "CommitAdaptive",
                                "CommitAndWait", "CloseRequest", "WaitStream",    "TrackedRead",
                                "EventWait", "Reuse",       "SetThreadsafe",     "DeviceSync",
                                "ThreadExit", "GpuError"};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == kOpCount);

uint64_t mix(uint64_t x) {
  return schedule::splitmix64(x);
}

bool isConsumer(Op op) {
  switch (op) {
    case Op::CloseRequest:
    case Op::WaitStream:
    case Op::TrackedRead:
    case Op::EventWait:
    case Op::Reuse:
      return true;
    default:
      return false;
  }
}

struct Block {
  uint64_t words[kWords] = {};
};

// A small caching allocator over PendingFrees, as python/csrc/allocator.cpp uses it: a freed
// block waits in PendingFrees until every other stream that used it has completed that use;
// then it moves to the free list of the stream that may reuse it.
class MiniAllocator {
 public:
  explicit MiniAllocator(Runtime& runtime) : runtime_(runtime) {}

  Block* get(Stream& stream) {
    collect(&stream, stream.id());
    std::lock_guard<std::mutex> lock(mutex_);
    for (int list : {stream.id(), kShared}) {
      auto& blocks = free_[list];
      if (!blocks.empty()) {
        Block* block = blocks.back();
        blocks.pop_back();
        ++reuses;
        return block;
      }
    }
    arena_.emplace_back();
    return &arena_.back();
  }

  // `owner`: the stream freeing it (its own uses do not defer the free: its queue orders them).
  void free(Block* block, const Stream* owner) {
    std::vector<StreamUse> uses = runtime_.bufferUses().release(block);
    ++frees;
    if (runtime_.protections().deferredFrees) {
      runtime_.pendingFrees().add(block, std::move(uses), owner);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_); // the unsafe mode: reusable at once
    free_[kShared].push_back(block);
  }

  // Every pending free whose uses completed, to the shared list.
  void collectCompleted() {
    collect(nullptr, kShared);
  }

  std::atomic<uint64_t> reuses{0};
  std::atomic<uint64_t> frees{0};

 private:
  static constexpr int kShared = -1;
  void collect(const Stream* requester, int list) {
    std::vector<void*> reusable = runtime_.pendingFrees().takeReusable(requester);
    std::lock_guard<std::mutex> lock(mutex_);
    for (void* block : reusable) {
      free_[list].push_back(static_cast<Block*>(block));
    }
  }

  Runtime& runtime_;
  std::mutex mutex_;
  std::map<int, std::vector<Block*>> free_;
  std::deque<Block> arena_; // stable addresses
};

// Exits the process, naming the round, if a round does not finish in time: a deadlock in the
// runtime cannot be joined, so nothing else is safe. The seed is printed for the replay.
class RoundWatchdog {
 public:
  static RoundWatchdog& instance() {
    static auto* watchdog = new RoundWatchdog(); // leaked: its thread is detached
    return *watchdog;
  }
  void arm(const std::string& round, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    round_ = round;
    deadline_ = std::chrono::steady_clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    armed_ = true;
    changed_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
    changed_.notify_all();
  }

 private:
  RoundWatchdog() {
    std::thread([this] {
      std::unique_lock<std::mutex> lock(mutex_);
      for (;;) {
        changed_.wait(lock, [&] { return armed_; });
        if (!changed_.wait_until(lock, deadline_, [&] { return !armed_; }) &&
            std::chrono::steady_clock::now() >= deadline_) {
          std::fprintf(stderr, "FATAL: schedule exploration round hung (deadlock?): %s\n",
                       round_.c_str());
          std::fflush(stderr);
          std::_Exit(72);
        }
      }
    }).detach();
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string round_;
  std::chrono::steady_clock::time_point deadline_;
  bool armed_ = false;
};

// One round's shared state. The workers never use Catch2; they record what they saw.
class Round {
 public:
  Round(const RoundSpec& spec, const ExploreOptions& options)
      : spec_(spec), options_(options), n_(static_cast<int>(spec.ops.size())), rng_(mix(spec.seed)) {
    for (Op op : spec.ops) {
      errorRound_ = errorRound_ || op == Op::GpuError;
    }
    partners_ = spec.partners;
    if (partners_.empty()) {
      for (int i = 0; i < n_; ++i) {
        partners_.push_back(n_ == 1 ? 0 : (i + 1) % n_);
      }
    }
    salt_ = 1 + bits(10);
    base_.assign(static_cast<size_t>(n_) * kWords, 0);
    check_.assign(static_cast<size_t>(n_) * kWords, 0);
    aux_.resize(static_cast<size_t>(n_));
    errorRows_.resize(static_cast<size_t>(n_));
    raised_.assign(static_cast<size_t>(n_), 0);
    auxSource_.assign(static_cast<size_t>(n_), -1);
    streams_ = std::make_unique<std::atomic<Stream*>[]>(static_cast<size_t>(n_));
    batches_ = std::make_unique<std::atomic<uint64_t>[]>(static_cast<size_t>(n_));
    produced_ = std::make_unique<std::atomic<bool>[]>(static_cast<size_t>(n_));
    for (int i = 0; i < n_; ++i) {
      streams_[i] = nullptr;
      batches_[i] = 0;
      produced_[i] = false;
    }
    for (int w = 0; w < kWords; ++w) {
      inputValues_[w] = (static_cast<uint64_t>(w) * 7 + salt_) % 1000 + 1;
    }
  }

  Tally run();

 private:
  // Deterministic choices of the round (shape, SyncTypes), from the seed.
  uint64_t bits(int count) {
    return mix(rng_++) & ((uint64_t{1} << count) - 1);
  }
  uint64_t expected(int row, int w) const {
    return inputValues_[w] * static_cast<uint64_t>(row + 1) + salt_;
  }
  uint64_t* row(int i) {
    return base_.data() + static_cast<size_t>(i) * kWords;
  }
  bool failing(int slot) const {
    return spec_.ops[static_cast<size_t>(slot)] == Op::GpuError;
  }
  // Where slot i's output lives, and the buffer a reader declares.
  uint64_t* output(int i) {
    return failing(i) ? errorRows_[static_cast<size_t>(i)].words : row(i);
  }
  const void* outputBuffer(int i) {
    return failing(i) ? static_cast<const void*>(&errorRows_[static_cast<size_t>(i)])
                      : static_cast<const void*>(base_.data());
  }
  void fail(uint64_t& counter, const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counter;
    if (messages_.size() < 8) {
      messages_.push_back(message);
    }
  }
  void encode(Stream& stream, std::function<void()> kernel) {
    EncoderLease lease = stream.leaseEncoder();
    sim::simEncoder(lease.encoder()).dispatch(std::move(kernel));
    kernelsEncoded_.fetch_add(1, std::memory_order_relaxed);
  }
  // dst[w] = src[w] for a row, with a race point in the middle (a torn copy shows up).
  void encodeCopy(Stream& stream, const uint64_t* src, uint64_t* dst) {
    encode(stream, [src, dst] {
      for (int w = 0; w < kWords; ++w) {
        dst[w] = src[w];
        if (w == kWords / 2) {
          racePoint(SchedulePoint::GpuKernel);
        }
      }
    });
  }
  bool rowMatches(const uint64_t* words, int expectedRow) const {
    for (int w = 0; w < kWords; ++w) {
      if (words[w] != expected(expectedRow, w)) {
        return false;
      }
    }
    return true;
  }
  int compareRow(const uint64_t* words, int expectedRow, const char* what, int slot) {
    int wrong = 0;
    for (int w = 0; w < kWords; ++w) {
      if (words[w] != expected(expectedRow, w)) {
        ++wrong;
      }
    }
    valuesChecked_.fetch_add(kWords, std::memory_order_relaxed);
    if (wrong > 0) {
      uint64_t dummy = 0;
      fail(dummy, std::string(what) + " of slot " + std::to_string(slot) + " (" +
               opName(spec_.ops[static_cast<size_t>(slot)]) + ", reading row " +
               std::to_string(expectedRow) + "): " + std::to_string(wrong) + "/" +
               std::to_string(kWords) + " words wrong, e.g. " + std::to_string(words[0]) +
               " instead of " + std::to_string(expected(expectedRow, 0)));
      wrongResults_.fetch_add(static_cast<uint64_t>(wrong), std::memory_order_relaxed);
    }
    return wrong;
  }

  void setup(Runtime& rt);
  void worker(Runtime& rt, int slot);
  void produce(Runtime& rt, int slot, Op op, SyncType sync);
  void consume(Runtime& rt, int slot, Op op);
  bool awaitPartner(int slot, int partner);
  void finalCheck(Runtime& rt, bool tracked);
  // synchronizeDevice; in an error round a GPU error it raises is counted, and it is
  // repeated until it raises none (Note [GPU errors belong to batches]).
  void synchronizeAll(Runtime& rt) {
    for (int attempt = 0;; ++attempt) {
      try {
        rt.synchronizeDevice();
        return;
      } catch (const CommandBufferError&) {
        if (!errorRound_) {
          throw;
        }
        errorsDelivered_.fetch_add(1);
        mainRaised_ = true;
        if (attempt >= 3) {
          // Observed (reported): a failure on another thread's stream is raised again by every
          // device synchronize, since only the caller's own stream counts as told.
          stickyErrors_ = true;
          return;
        }
      }
    }
  }
  void checkErrorDelivery();
  // Note [Forcing the reuse window] (exploration.h). The stale writes wait for a Reuse
  // consumer's copy into its block (or, if no consumer encoded one, for the main thread once
  // the workers are joined: a consumer's batch left open runs only after its thread exits);
  // the consumer's copy out waits for the stale writes. Nothing else waits for the stale
  // writes' batch: the input is committed in a batch of its own, no thread synchronizes the
  // device while workers run, and no consumer is on the main stream (pool >= 2N+1, policy on),
  // so the latches cannot deadlock. With deferred frees on, the consumer's block is never
  // one the stale writes target (it is still pending), and the round stays right.
  bool forceReuseWindow_ = false;
  std::atomic<bool> reuseBlockWritten_{false};
  std::atomic<int> staleWritesDone_{0};
  std::atomic<int> reuseLatchesEncoded_{0};
  static constexpr int kStaleBlocks = 2;
  static void awaitFlag(const std::atomic<bool>& flag) {
    while (!flag.load(std::memory_order_acquire)) {
      std::this_thread::yield();
    }
  }
  bool mainRaised_ = false;
  bool stickyErrors_ = false;
  void reconcile(Runtime& rt, sim::SimDevice& device);

  const RoundSpec& spec_;
  const ExploreOptions& options_;
  const int n_;
  uint64_t rng_;
  std::vector<int> partners_;
  bool errorRound_ = false;
  uint64_t salt_ = 0;
  uint64_t inputValues_[kWords] = {};
  Block input_;
  std::vector<uint64_t> base_; // one buffer, a row per slot: disjoint views of one tensor
  std::vector<uint64_t> check_; // the main thread's tracked copy of base_
  std::vector<Block> aux_; // consumer outputs
  std::vector<Block> errorRows_; // what a GpuError op writes (not base_: only its readers depend on it)
  std::vector<int> raised_; // CommandBufferErrors each worker received
  bool isolated_ = false; // error round where each thread has its own stream: exact checks
  bool valuesValid_ = true; // results are checked (not in error rounds on shared streams)
  uint64_t errorsLost_ = 0;
  uint64_t readersWithoutError_ = 0; // readers that waited on a failed batch, no error
  uint64_t silentGarbage_ = 0; // guarded by mutex_
  uint64_t phantomFrees_ = 0;
  std::vector<int> auxSource_; // row aux_[i] must equal (-1: not to check)
  std::vector<SyncType> consumerSync_;
  std::unique_ptr<std::atomic<Stream*>[]> streams_; // stream each slot produced on
  std::unique_ptr<std::atomic<uint64_t>[]> batches_; // batch its row write belongs to
  std::unique_ptr<std::atomic<bool>[]> produced_;
  std::unique_ptr<MiniAllocator> allocator_;
  std::atomic<bool> abandon_{false};
  std::atomic<uint64_t> kernelsEncoded_{0};
  std::atomic<uint64_t> failingKernels_{0};
  std::atomic<uint64_t> valuesChecked_{0};
  std::atomic<uint64_t> wrongResults_{0};
  std::atomic<uint64_t> errorsDelivered_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> probe_{0};

  std::mutex mutex_; // guards what follows
  std::vector<std::string> messages_;
  std::vector<std::string> gapMessages_; // known gaps, reported with the tally
  uint64_t unexpected_ = 0;
  uint64_t violations_ = 0;
  uint64_t reconcile_ = 0;
  uint64_t hangs_ = 0;
};

void Round::setup(Runtime& rt) {
  // The input, written on the main thread's stream; left open half the time, so readers get
  // the batch closed on request (Note [Closing a batch on request]).
  Stream& main = rt.currentStream();
  // Forced window: the input in a batch of its own, which readers may wait for while the
  // stale writes' batch is held.
  const bool commitInput = bits(1) != 0 || forceReuseWindow_;
  main.dispatch([&] {
    BufferUse use{&input_, BufferUse::Access::Write};
    main.useBuffers(&use, 1);
    uint64_t* words = input_.words;
    const uint64_t* values = inputValues_;
    encode(main, [words, values] {
      for (int w = 0; w < kWords; ++w) {
        words[w] = values[w];
        if (w == kWords / 2) {
          racePoint(SchedulePoint::GpuKernel);
        }
      }
    });
    main.synchronize(commitInput ? SyncType::COMMIT : SyncType::NONE);
  });
  // Blocks the main stream still writes when they are freed: handing one to another stream
  // before that write ran would let the write land in the new owner's data.
  const bool commitGarbage = bits(1) != 0 || forceReuseWindow_; // held, never left open
  Block* blocks[2] = {allocator_->get(main), allocator_->get(main)};
  main.dispatch([&] {
    for (Block* block : blocks) {
      BufferUse use{block, BufferUse::Access::Write};
      main.useBuffers(&use, 1);
      uint64_t* words = block->words;
      encode(main, [this, words] {
        if (forceReuseWindow_) {
          awaitFlag(reuseBlockWritten_);
        }
        for (int w = 0; w < kWords; ++w) {
          words[w] = 0xdead0000 + static_cast<uint64_t>(w);
          if (w == kWords / 2) {
            racePoint(SchedulePoint::GpuKernel);
          }
        }
        staleWritesDone_.fetch_add(1, std::memory_order_release);
      });
    }
    main.synchronize(commitGarbage ? SyncType::COMMIT : SyncType::NONE);
  });
  for (Block* block : blocks) {
    allocator_->free(block, &main);
  }
}

void Round::produce(Runtime& rt, int slot, Op op, SyncType sync) {
  Stream& mine = rt.currentStream();
  uint64_t* out = output(slot);
  const uint64_t* in = input_.words;
  const uint64_t factor = static_cast<uint64_t>(slot + 1);
  const uint64_t salt = salt_;
  mine.dispatch([&] {
    BufferUse uses[2] = {{&input_, BufferUse::Access::Read},
                         {outputBuffer(slot), BufferUse::Access::Write}};
    mine.useBuffers(uses, 2);
    batches_[slot].store(mine.openBatch(), std::memory_order_release);
    if (op == Op::GpuError) { // fails first: the row kernel after it is skipped (zeros left)
      failingKernels_.fetch_add(1, std::memory_order_relaxed);
      encode(mine, [slot] {
        throw std::runtime_error("injected GPU fault of slot " + std::to_string(slot));
      });
    }
    if (op == Op::Dispatch) { // two kernels into the one coalesced encoder
      encode(mine, [out, in, factor] {
        for (int w = 0; w < kWords; ++w) {
          out[w] = in[w] * factor;
        }
      });
      encode(mine, [out, salt] {
        for (int w = 0; w < kWords; ++w) {
          out[w] += salt;
          if (w == kWords / 2) {
            racePoint(SchedulePoint::GpuKernel);
          }
        }
      });
    } else {
      encode(mine, [out, in, factor, salt] {
        for (int w = 0; w < kWords; ++w) {
          out[w] = in[w] * factor + salt;
          if (w == kWords / 2) {
            racePoint(SchedulePoint::GpuKernel);
          }
        }
      });
    }
    mine.synchronize(sync);
  });
  streams_[slot].store(&mine, std::memory_order_release);
}

bool Round::awaitPartner(int slot, int partner) {
  const auto deadline = std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(options_.hangSeconds * 500));
  while (!produced_[partner].load(std::memory_order_acquire)) {
    if (abandon_.load(std::memory_order_relaxed)) {
      return false;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++hangs_;
      messages_.push_back("slot " + std::to_string(slot) + " waited too long for slot " +
                          std::to_string(partner) + " to produce (hang)");
      abandon_ = true;
      return false;
    }
    std::this_thread::yield();
  }
  return true;
}

void Round::consume(Runtime& rt, int slot, Op op) {
  const int partner = partners_[static_cast<size_t>(slot)];
  if (!awaitPartner(slot, partner)) {
    return;
  }
  Stream* produced = streams_[partner].load(std::memory_order_acquire);
  if (produced == nullptr) {
    return; // the partner failed before it produced (an error round): nothing to read
  }
  Stream& mine = rt.currentStream();
  Stream& other = *produced;
  const uint64_t* src = output(partner);
  uint64_t* dst = aux_[static_cast<size_t>(slot)].words;
  const SyncType sync = consumerSync_[static_cast<size_t>(slot)];
  switch (op) {
    case Op::WaitStream:
      waitStream(mine, other);
      mine.dispatch([&] {
        encodeCopy(mine, src, dst);
        mine.synchronize(sync);
      });
      break;
    case Op::CloseRequest: {
      const uint64_t batch = batches_[partner].load(std::memory_order_acquire);
      mine.dispatch([&] {
        mine.waitForStream(other, batch);
        encodeCopy(mine, src, dst);
        mine.synchronize(sync);
      });
      break;
    }
    case Op::TrackedRead:
      mine.dispatch([&] {
        BufferUse uses[2] = {{outputBuffer(partner), BufferUse::Access::Read},
                             {&aux_[static_cast<size_t>(slot)], BufferUse::Access::Write}};
        mine.useBuffers(uses, 2);
        encodeCopy(mine, src, dst);
        mine.synchronize(sync);
      });
      break;
    case Op::EventWait: {
      Event event;
      event.record(other);
      if (sync == SyncType::NONE) { // the CPU waits, then reads directly
        event.synchronize();
        if (valuesValid_ && !failing(partner)) {
          compareRow(src, partner, "row read after Event.synchronize", slot);
        } else if (!failing(partner) && !rowMatches(src, partner)) {
          // Finding F1 (fixed; soak replay --seed 4839 ...): on a stream shared with a
          // failing op, the partner's kernels were skipped with the failed batch, and
          // Event.synchronize raised nothing: zeros, silently. Required to be 0.
          std::lock_guard<std::mutex> lock(mutex_);
          ++silentGarbage_;
          if (gapMessages_.size() < 4) {
            gapMessages_.push_back("slot " + std::to_string(slot) +
                                   " (EventWait) read wrong values of slot " +
                                   std::to_string(partner) +
                                   " after Event.synchronize raised no error (its kernels were "
                                   "skipped with a failed batch of a shared stream)");
          }
        }
        return;
      }
      event.wait(mine);
      mine.dispatch([&] {
        encodeCopy(mine, src, dst);
        mine.synchronize(sync);
      });
      break;
    }
    case Op::Reuse: {
      Block* block = allocator_->get(mine);
      // Freed however the op ends (a GPU error may be raised from the synchronize below).
      std::unique_ptr<Block, std::function<void(Block*)>> freeLater(
          block, [this, &mine](Block* b) { allocator_->free(b, &mine); });
      uint64_t* tmp = block->words;
      mine.dispatch([&] {
        BufferUse uses[2] = {{outputBuffer(partner), BufferUse::Access::Read},
                             {block, BufferUse::Access::Write}};
        mine.useBuffers(uses, 2);
        encodeCopy(mine, src, tmp);
        if (forceReuseWindow_) { // the stale writes land now, between our copy in and out
          reuseLatchesEncoded_.fetch_add(1, std::memory_order_relaxed);
          encode(mine, [this] {
            reuseBlockWritten_.store(true, std::memory_order_release);
            while (staleWritesDone_.load(std::memory_order_acquire) < kStaleBlocks) {
              std::this_thread::yield();
            }
          });
        }
        BufferUse uses2[2] = {{block, BufferUse::Access::Read},
                              {&aux_[static_cast<size_t>(slot)], BufferUse::Access::Write}};
        mine.useBuffers(uses2, 2);
        encodeCopy(mine, tmp, dst);
        mine.synchronize(sync);
      });
      break;
    }
    default:
      return;
  }
  auxSource_[static_cast<size_t>(slot)] = partner; // read by the main thread after join
}

void Round::worker(Runtime& rt, int slot) {
  schedule::setThreadOrdinal(static_cast<uint32_t>(slot + 1));
  const Op op = spec_.ops[static_cast<size_t>(slot)];
  const int partner = partners_[static_cast<size_t>(slot)];
  try {
    switch (op) {
      case Op::Dispatch:
        produce(rt, slot, op, SyncType::NONE);
        break;
      case Op::Commit:
        produce(rt, slot, op, SyncType::COMMIT);
        break;
      case Op::CommitAndContinue:
        produce(rt, slot, op, SyncType::COMMIT_AND_CONTINUE);
        break;
      case Op::CommitAdaptive:
        produce(rt, slot, op, SyncType::COMMIT_ADAPTIVE);
        break;
      case Op::CommitAndWait:
        produce(rt, slot, op, SyncType::COMMIT_AND_WAIT);
        break;
      case Op::SetThreadsafe:
        try {
          rt.setThreadsafe(!rt.threadsafe());
        } catch (const WorkInFlightError&) {
          refused_.fetch_add(1, std::memory_order_relaxed);
        }
        produce(rt, slot, op, SyncType::COMMIT);
        break;
      case Op::DeviceSync: {
        produce(rt, slot, op, SyncType::NONE);
        // Note [Device-wide synchronize]: it covers the work every thread has encoded, even
        // in a batch its thread left open, so a partner that produced before it is covered.
        const bool partnerProduced =
            partner != slot && produced_[partner].load(std::memory_order_acquire);
        rt.synchronizeDevice();
        if (valuesValid_) {
          compareRow(row(slot), slot, "own row read after synchronizeDevice", slot);
          if (partnerProduced && !failing(partner)) {
            compareRow(row(partner), partner, "partner's row read after synchronizeDevice", slot);
          }
        }
        break;
      }
      case Op::ThreadExit: {
        std::exception_ptr childError;
        std::thread child([&] {
          schedule::setThreadOrdinal(static_cast<uint32_t>(100 + slot));
          try {
            produce(rt, slot, op, SyncType::NONE);
          } catch (...) {
            childError = std::current_exception();
          }
          // Exits with its batch open: the thread policy commits it and gives the stream back.
        });
        child.join();
        if (childError) {
          std::rethrow_exception(childError);
        }
        produced_[slot].store(true, std::memory_order_release);
        rt.synchronizeDevice();
        if (valuesValid_) {
          compareRow(row(slot), slot, "exited thread's row read after join + synchronizeDevice",
                     slot);
        }
        return;
      }
      case Op::GpuError:
        produce(rt, slot, op, (spec_.seed >> 3) % 2 ? SyncType::COMMIT : SyncType::NONE);
        break;
      default: // consumers produce too, then read their partner's row
        produce(rt, slot, op, consumerSync_[static_cast<size_t>(slot)]);
        break;
    }
    produced_[slot].store(true, std::memory_order_release);
    if (isConsumer(op)) {
      consume(rt, slot, op);
    }
  } catch (const CommandBufferError& e) {
    raised_[static_cast<size_t>(slot)] += 1; // read by the main thread after join
    if (errorRound_) {
      errorsDelivered_.fetch_add(1, std::memory_order_relaxed);
    } else {
      fail(unexpected_, std::string("GPU error in a round without a failing kernel: ") + e.what());
    }
  } catch (const sim::MetalViolation& e) {
    fail(violations_, std::string("MetalViolation: ") + e.what());
  } catch (const std::exception& e) {
    fail(unexpected_, std::string(opName(op)) + " threw: " + e.what());
  }
  produced_[slot].store(true, std::memory_order_release); // never leave a partner waiting
}

void Round::finalCheck(Runtime& rt, bool tracked) {
  Stream& main = rt.currentStream();
  if (tracked) {
    // Through the tracker: a read of `base` must wait for every writer of a row.
    main.dispatch([&] {
      BufferUse uses[2] = {{base_.data(), BufferUse::Access::Read},
                           {check_.data(), BufferUse::Access::Write}};
      main.useBuffers(uses, 2);
      for (int i = 0; i < n_; ++i) {
        encodeCopy(main, row(i), check_.data() + static_cast<size_t>(i) * kWords);
      }
      main.synchronize(SyncType::COMMIT_AND_WAIT);
    });
    synchronizeAll(rt);
  } else {
    // The device-wide synchronize must cover the work of threads that have exited.
    synchronizeAll(rt);
    check_ = base_;
  }
}

void Round::reconcile(Runtime& rt, sim::SimDevice& device) {
  auto bad = [&](const std::string& message) { fail(reconcile_, message); };
  uint64_t ownersTotal = 0;
  for (Stream* stream : rt.createdStreams()) {
    const std::string name = "stream " + std::to_string(stream->id());
    if (stream->hasUncommittedWork()) {
      bad(name + " still holds uncommitted work after every worker left and the device "
                 "synchronized (work nobody will commit)");
    }
    if (stream->submittedBatch() != stream->completedBatch()) {
      bad(name + ": submitted batch " + std::to_string(stream->submittedBatch()) +
          " != completed " + std::to_string(stream->completedBatch()) + " after synchronize");
    }
    const StreamStats stats = stream->stats();
    if (stats.commandBuffersSubmitted != stream->submittedBatch()) {
      bad(name + ": " + std::to_string(stats.commandBuffersSubmitted) +
          " command buffers submitted but the timeline is at batch " +
          std::to_string(stream->submittedBatch()));
    }
    ownersTotal += static_cast<uint64_t>(stream->owners().load());
  }
  const RuntimeStats stats = rt.stats();
  const uint64_t bound = stats.threadsBound - stats.threadsReleased;
  if (bound != ownersTotal || bound > 1) {
    bad("thread bindings: " + std::to_string(stats.threadsBound) + " bound - " +
        std::to_string(stats.threadsReleased) + " released = " + std::to_string(bound) +
        ", streams' owners sum " + std::to_string(ownersTotal) +
        " (only the main thread may still hold one)");
  }
  if (stats.contractViolations != 0) {
    fail(violations_, std::to_string(stats.contractViolations) + " contract violations counted");
  }
  const sim::Stats sim = device.stats();
  if (sim.violations != 0) {
    const auto messages = device.violationMessages();
    fail(violations_, std::to_string(sim.violations) + " sim violations, first: " +
                          (messages.empty() ? std::string("?") : messages.front()));
  }
  if (sim.segmentsCommitted != sim.segmentsCompleted) {
    bad(std::to_string(sim.segmentsCommitted) + " segments committed, " +
        std::to_string(sim.segmentsCompleted) + " completed");
  }
  const uint64_t encoded = kernelsEncoded_.load();
  if (sim.kernelsEncoded != encoded) {
    bad("sim counted " + std::to_string(sim.kernelsEncoded) + " kernels encoded, the round " +
        std::to_string(encoded));
  }
  if (!errorRound_) {
    if (sim.kernelsExecuted != encoded || sim.kernelsFailed != 0) {
      bad(std::to_string(sim.kernelsExecuted) + " kernels ran (" +
          std::to_string(sim.kernelsFailed) + " failed) of " + std::to_string(encoded) +
          " encoded");
    }
  } else if (sim.kernelsFailed < 1 || sim.kernelsFailed > failingKernels_.load() ||
             sim.kernelsExecuted + sim.kernelsFailed > encoded) {
    bad("error round: " + std::to_string(sim.kernelsFailed) + " kernels failed of " +
        std::to_string(failingKernels_.load()) + " failing ones encoded");
  }
  // Every pending free is reusable once the device is idle, and the tracker forgets every
  // buffer the round released.
  allocator_->collectCompleted();
  if (rt.pendingFrees().size() != 0) {
    if (errorRound_) {
      // Known gap (reported): a useBuffers whose wait raised (a dependency failed) leaves its
      // use recorded in an open batch that nothing commits, so a free waits for it.
      phantomFrees_ += rt.pendingFrees().size();
    } else {
      bad(std::to_string(rt.pendingFrees().size()) +
          " frees still pending after the device synchronized");
    }
  }
  if (stats.deferredFrees > allocator_->frees.load()) {
    bad(std::to_string(stats.deferredFrees) + " deferred frees counted for " +
        std::to_string(allocator_->frees.load()) + " frees");
  }
  rt.bufferUses().release(&input_);
  rt.bufferUses().release(base_.data());
  rt.bufferUses().release(check_.data());
  for (Block& block : aux_) {
    rt.bufferUses().release(&block);
  }
  for (Block& block : errorRows_) {
    rt.bufferUses().release(&block);
  }
  if (rt.bufferUses().trackedBuffers() != 0) {
    bad(std::to_string(rt.bufferUses().trackedBuffers()) +
        " buffers still tracked after every buffer of the round was released");
  }
}

// Note [GPU errors belong to batches] (aten_mps/stream.h), checked where each thread has a
// stream of its own (isolated_): a consumer that reads a failed op's output and waits for its
// own batch (COMMIT_AND_WAIT, or Event.synchronize) receives the error; a thread whose work
// depends on no failed batch never does. Dependencies run through `base_` too (every op
// writes it), so once a consumer of a failed op exists, later users of `base_` may depend on
// its poisoned batch: then only the first half is checked.
void Round::checkErrorDelivery() {
  if (!isolated_) {
    if (errorsDelivered_.load() == 0) {
      ++errorsLost_; // known gap on shared streams (reported), not counted as a failure
    }
    return;
  }
  if (errorsDelivered_.load() == 0) {
    // Finding F2 (fixed; replay: soak replay --seed 19 --ops CommitAndContinue,GpuError): no
    // synchronize raised the failure at all. Counted, and required to be 0 by the [schedule]
    // tests.
    ++errorsLost_;
  }
  bool baseTainted = false;
  for (int c = 0; c < n_; ++c) {
    const Op op = spec_.ops[static_cast<size_t>(c)];
    const int partner = partners_[static_cast<size_t>(c)];
    if (!isConsumer(op) || failing(c) || !failing(partner)) {
      continue;
    }
    baseTainted = true;
    const SyncType sync = consumerSync_[static_cast<size_t>(c)];
    const bool mustRaise = sync == SyncType::COMMIT_AND_WAIT ||
        (op == Op::EventWait && sync == SyncType::NONE);
    if (mustRaise && raised_[static_cast<size_t>(c)] == 0 &&
        streams_[partner].load() != nullptr) {
      // Finding F5 (fixed; soak replay --seed 17 --ops EventWait,GpuError --pool 8
      // --threadsafe 1, 37/300 before): the reader read the failed op's output (zeros, the
      // skipped kernel never wrote it) after a wait that covers the failed batch (an Event
      // recorded on the partner's stream after it produced, waitStream on that stream, or
      // waitForStream naming the batch), and no error reached its thread. In every case seen
      // the pool had bound the reader to the stream the failed op's thread had just given
      // back (the lowest unbound id), so it waited on its own stream: still a dependency on
      // the failed batch. Required to be 0.
      ++readersWithoutError_;
      std::lock_guard<std::mutex> lock(mutex_);
      if (gapMessages_.size() < 4) {
        gapMessages_.push_back(std::string("slot ") + std::to_string(c) + " (" + opName(op) +
                               ") read the output of failed slot " + std::to_string(partner) +
                               " and waited for it, but received no error");
      }
    }
  }
  for (int i = 0; i < n_ && !baseTainted; ++i) {
    const Op op = spec_.ops[static_cast<size_t>(i)];
    if (op == Op::DeviceSync || op == Op::ThreadExit || isConsumer(op)) {
      continue; // a device synchronize raises every failure; consumers may depend on one
    }
    if (raised_[static_cast<size_t>(i)] > 0) {
      fail(unexpected_, std::string("slot ") + std::to_string(i) + " (" + opName(op) +
                            ") received a GPU error although its work depends on no failed "
                            "batch");
    }
  }
}

Tally Round::run() {
  RoundWatchdog::instance().arm(describe(spec_) + "; replay: " + replayCommand(spec_),
                                options_.hangSeconds);
  sim::Config config;
  config.policy = sim::ViolationPolicy::Count;
  auto device = std::make_unique<sim::SimDevice>(config);
  sim::SimDevice& sim = *device;
  RuntimeOptions runtimeOptions;
  const int pools[] = {1, 2, 4, 8};
  runtimeOptions.poolSize = pools[bits(2)];
  runtimeOptions.threadsafe = bits(2) != 0; // on 3 rounds in 4
  if (spec_.poolSize > 0) {
    runtimeOptions.poolSize = spec_.poolSize;
  }
  if (spec_.threadsafe >= 0) {
    runtimeOptions.threadsafe = spec_.threadsafe != 0;
  }
  // Each thread (workers, a ThreadExit child, the main thread) on a stream of its own: a
  // failed batch then holds only the failing op's work, and delivery is checked exactly.
  isolated_ = errorRound_ && runtimeOptions.threadsafe &&
      runtimeOptions.poolSize >= 2 * n_ + 1 &&
      std::none_of(spec_.ops.begin(), spec_.ops.end(),
                   [](Op op) { return op == Op::SetThreadsafe; });
  valuesValid_ = !errorRound_ || isolated_;
  forceReuseWindow_ = options_.forceReuseWindow && runtimeOptions.threadsafe &&
      runtimeOptions.poolSize >= 2 * n_ + 1 &&
      std::any_of(spec_.ops.begin(), spec_.ops.end(), [](Op op) { return op == Op::Reuse; }) &&
      std::none_of(spec_.ops.begin(), spec_.ops.end(), [](Op op) {
        return op == Op::DeviceSync || op == Op::SetThreadsafe;
      });
  runtimeOptions.protections = options_.protections;
  auto runtime = std::make_unique<Runtime>(std::move(device), runtimeOptions);
  Runtime& rt = *runtime;
  rt.setMemoryPressureProbe([this] { return probe_.fetch_add(1) % 2 == 0; });
  allocator_ = std::make_unique<MiniAllocator>(rt);
  const SyncType consumerSyncs[] = {SyncType::NONE, SyncType::COMMIT, SyncType::COMMIT_AND_WAIT,
                                    SyncType::COMMIT_AND_CONTINUE};
  for (int i = 0; i < n_; ++i) {
    consumerSync_.push_back(consumerSyncs[bits(2)]);
  }
  const bool trackedCheck = bits(1) != 0;

  schedule::setThreadOrdinal(0);
  if (options_.schedule) {
    schedule::Options scheduleOptions;
    scheduleOptions.maxSleepUs = options_.maxSleepUs;
    scheduleOptions.maxSpinUs = options_.maxSpinUs;
    schedule::enable(spec_.seed, scheduleOptions);
  }
  Tally tally;
  bool finalCheckRaised = false; // then check_ holds nothing the main thread read
  try {
    setup(rt);
    std::vector<std::thread> threads;
    for (int i = 0; i < n_; ++i) {
      threads.emplace_back([this, &rt, i] { worker(rt, i); });
    }
    for (std::thread& thread : threads) {
      thread.join();
    }
    if (reuseLatchesEncoded_.load() == 0) {
      reuseBlockWritten_.store(true, std::memory_order_release); // no consumer will write one
    }
    tally.racePointHits = schedule::stats().hits;
    schedule::disable();
    finalCheck(rt, trackedCheck);
  } catch (const CommandBufferError& e) {
    schedule::disable();
    if (errorRound_) {
      // The main thread's read of `base` depends on every row's batch; one that waited on a
      // failed batch is poisoned (Note [GPU errors belong to batches]), so it may raise.
      errorsDelivered_.fetch_add(1);
      finalCheckRaised = true;
    } else {
      fail(unexpected_, std::string("main thread: GPU error in a round without a failing "
                                    "kernel: ") + e.what());
    }
  } catch (const std::exception& e) {
    schedule::disable();
    fail(unexpected_, std::string("main thread: ") + e.what());
  }
  reuseBlockWritten_.store(true, std::memory_order_release); // also when the round threw early
  if (errorRound_) {
    synchronizeAll(rt); // drain what is left
    checkErrorDelivery();
  }
  if (valuesValid_ && !abandon_) {
    for (int i = 0; i < n_; ++i) {
      if (!failing(i) && !finalCheckRaised) {
        compareRow(check_.data() + static_cast<size_t>(i) * kWords, i,
                   trackedCheck ? "row read by the main thread through the tracker"
                                : "row read after join + synchronizeDevice",
                   i);
      }
      const int source = auxSource_[static_cast<size_t>(i)];
      if (source >= 0 && !failing(source)) {
        compareRow(aux_[static_cast<size_t>(i)].words, source,
                   "partner's row as read by the consumer", i);
      }
    }
  }
  reconcile(rt, sim);
  tally.parallelRounds = rt.stats().maxActiveStreams > 1 ? 1 : 0;
  tally.reuseWindowsForced = forceReuseWindow_ ? 1 : 0;
  allocator_.reset();
  runtime.reset();
  RoundWatchdog::instance().disarm();

  tally.rounds = 1;
  tally.opRounds = static_cast<uint64_t>(n_);
  tally.valuesChecked = valuesChecked_.load();
  tally.wrongResults = wrongResults_.load();
  tally.errorsDelivered = errorsDelivered_.load();
  tally.refusedSwitches = refused_.load();
  tally.isolatedErrorRounds = isolated_ ? 1 : 0;
  tally.errorsLost = errorsLost_;
  tally.readersWithoutError = readersWithoutError_;
  tally.phantomFrees = phantomFrees_;
  tally.stickyErrorRounds = stickyErrors_ ? 1 : 0;
  std::lock_guard<std::mutex> lock(mutex_);
  tally.unexpectedErrors = unexpected_ + hangs_;
  tally.violations = violations_;
  tally.reconcileFailures = reconcile_;
  tally.silentGarbage = silentGarbage_;
  for (const std::string& gap : gapMessages_) {
    tally.gaps.push_back(describe(spec_) + ": " + gap + "\n    replay: " + replayCommand(spec_));
  }
  if (!messages_.empty()) {
    tally.failedRounds = 1;
    std::string text = describe(spec_) + ": ";
    for (size_t i = 0; i < messages_.size(); ++i) {
      if (i > 0) {
        text += "; ";
      }
      text += messages_[i];
    }
    text += "\n    replay: " + replayCommand(spec_);
    tally.failures.push_back(text);
  }
  return tally;
}

} // namespace

const char* opName(Op op) {
  const auto index = static_cast<size_t>(op);
  return index < static_cast<size_t>(kOpCount) ? kOpNames[index] : "?";
}

bool parseOp(const std::string& name, Op& op) {
  auto lower = [](std::string s) {
    for (char& c : s) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
  };
  for (int i = 0; i < kOpCount; ++i) {
    if (lower(kOpNames[i]) == lower(name)) {
      op = static_cast<Op>(i);
      return true;
    }
  }
  return false;
}

void Tally::add(const Tally& other) {
  rounds += other.rounds;
  opRounds += other.opRounds;
  valuesChecked += other.valuesChecked;
  failedRounds += other.failedRounds;
  wrongResults += other.wrongResults;
  violations += other.violations;
  unexpectedErrors += other.unexpectedErrors;
  reconcileFailures += other.reconcileFailures;
  errorsDelivered += other.errorsDelivered;
  isolatedErrorRounds += other.isolatedErrorRounds;
  errorsLost += other.errorsLost;
  readersWithoutError += other.readersWithoutError;
  phantomFrees += other.phantomFrees;
  stickyErrorRounds += other.stickyErrorRounds;
  silentGarbage += other.silentGarbage;
  refusedSwitches += other.refusedSwitches;
  racePointHits += other.racePointHits;
  parallelRounds += other.parallelRounds;
  reuseWindowsForced += other.reuseWindowsForced;
  for (const std::string& failure : other.failures) {
    if (failures.size() < 20) {
      failures.push_back(failure);
    }
  }
  for (const std::string& gap : other.gaps) {
    if (gaps.size() < 10) {
      gaps.push_back(gap);
    }
  }
}

Tally runRound(const RoundSpec& spec, const ExploreOptions& options) {
  if (spec.ops.empty()) {
    throw std::invalid_argument("a round needs at least one op");
  }
  auto round = std::make_unique<Round>(spec, options);
  return round->run();
}

RoundSpec randomRound(int threads, uint64_t seed) {
  RoundSpec spec;
  spec.seed = seed;
  // GpuError rounds check less (see the TODO in Round::run): weight it 1, the others 3.
  const uint64_t weights = static_cast<uint64_t>(kOpCount - 1) * 3 + 1;
  for (int i = 0; i < threads; ++i) {
    const uint64_t roll = mix(seed * 0x100000001b3ULL + static_cast<uint64_t>(i)) % weights;
    spec.ops.push_back(roll == weights - 1 ? Op::GpuError : static_cast<Op>(roll / 3));
    const uint64_t step = threads > 1
        ? 1 + mix(seed ^ (0xabcdefULL + static_cast<uint64_t>(i))) % static_cast<uint64_t>(threads - 1)
        : 0;
    spec.partners.push_back(static_cast<int>((static_cast<uint64_t>(i) + step) %
                                             static_cast<uint64_t>(threads)));
  }
  return spec;
}

std::vector<std::pair<Op, Op>> allPairs() {
  std::vector<std::pair<Op, Op>> pairs;
  for (int a = 0; a < kOpCount; ++a) {
    for (int b = a; b < kOpCount; ++b) {
      pairs.emplace_back(static_cast<Op>(a), static_cast<Op>(b));
    }
  }
  return pairs;
}

std::string describe(const RoundSpec& spec) {
  std::string text = "round seed=" + std::to_string(spec.seed) + " ops=";
  for (size_t i = 0; i < spec.ops.size(); ++i) {
    if (i > 0) {
      text += ',';
    }
    text += opName(spec.ops[i]);
  }
  if (!spec.partners.empty()) {
    text += " partners=";
    for (size_t i = 0; i < spec.partners.size(); ++i) {
      if (i > 0) {
        text += ',';
      }
      text += std::to_string(spec.partners[i]);
    }
  }
  return text;
}

std::string replayCommand(const RoundSpec& spec) {
  std::string text = "soak replay --seed " + std::to_string(spec.seed) + " --ops ";
  for (size_t i = 0; i < spec.ops.size(); ++i) {
    if (i > 0) {
      text += ',';
    }
    text += opName(spec.ops[i]);
  }
  if (!spec.partners.empty()) {
    text += " --partners ";
    for (size_t i = 0; i < spec.partners.size(); ++i) {
      if (i > 0) {
        text += ',';
      }
      text += std::to_string(spec.partners[i]);
    }
  }
  if (spec.poolSize > 0) {
    text += " --pool " + std::to_string(spec.poolSize);
  }
  if (spec.threadsafe >= 0) {
    text += " --threadsafe " + std::to_string(spec.threadsafe);
  }
  return text;
}

} // namespace mpsts::explore
