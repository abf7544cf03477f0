// The mps_sim DeviceGuardImpl: c10's view of the device's streams and events, mapped onto the
// runtime. A c10::Stream's id is the runtime stream id (0: default stream, 1..32: the pool),
// a c10 event is a runtime Event. Everything generic in torch (torch.Stream, torch.Event,
// torch.accelerator, StreamGuard, record_stream) goes through here.

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "guard.h"
#include "allocator.h"
#include "events.h"
#include "runtime_access.h"

namespace mps_sim {
namespace {

constexpr c10::DeviceType kType = c10::DeviceType::PrivateUse1;

void checkDevice(const c10::Device& d) {
  TORCH_CHECK(d.type() == kType, "mps_sim: expected an mps_sim device, got ", d);
  TORCH_CHECK(!d.has_index() || d.index() == 0, "mps_sim: device index ", int(d.index()),
              " is out of range: the sim has one device (mps_sim:0)");
}

ts::Stream& runtimeStream(const c10::Stream& s) {
  TORCH_CHECK(s.device_type() == kType, "mps_sim: expected a stream of the mps_sim device, got a ",
              c10::DeviceTypeName(s.device_type()), " stream; use torch.mps_sim.Stream()");
  const auto id = s.id();
  TORCH_CHECK(id >= 0 && id <= runtime().poolSize(), "mps_sim: stream id ", id,
              " is not one of this device's streams (0..", runtime().poolSize(), ")");
  return runtime().stream(static_cast<int>(id));
}

c10::Stream toC10(const ts::Stream& s) {
  return c10::Stream(c10::Stream::UNSAFE, device(), s.id());
}

// Note [Restoring the thread policy]
// A stream guard saves the current stream and restores it on exit. When the thread had no
// explicit stream (the thread policy chose it), restoring must give the choice back to the
// policy, not pin the policy's stream: otherwise set_threadsafe(False) after a `with stream()`
// block would leave the thread on a pool stream. Each exchange therefore remembers the
// explicit stream it replaced (nullptr: the policy's choice).
//
// Note [Invalid streams in a guard]
// exchangeStream is noexcept by interface, and torch.Stream.__enter__ / torch.accelerator.
// set_stream reach it with whatever id the user built (torch.Stream(stream_id=999, ...)) without
// asking the backend first. Swallowing the error would leave the thread on its old stream while
// the user believes otherwise. Instead the thread is marked as being on the invalid stream:
// every op it encodes raises (checkThreadStream) until a valid stream replaces it or the
// block's exit restores the previous one.
struct SavedStream {
  int64_t id; // what exchangeStream returned (may be an invalid id)
  ts::Stream* explicitBefore;
  std::optional<int64_t> invalidBefore;
};
// Note [A bounded guard stack]
// A stream guard's exchanges nest (enter pushes, exit pops), but torch.accelerator.set_stream
// is an exchange nobody restores: a loop of set_stream calls grew the stack without bound
// (66 MB after 1.5 million calls). Guards never nest deeper than a few levels, so the stack
// keeps the latest kMaxSavedExchanges and forgets the oldest; an exit of a guard that deep
// would restore as a plain exchange. (A set_stream to the very stream the last exchange
// replaced is taken as that exchange's restore: the thread gets back exactly what it had,
// the policy's choice included, which is also what a guard would give it.)
constexpr size_t kMaxSavedExchanges = 64;
thread_local std::vector<SavedStream> tlsSaved;
thread_local std::optional<int64_t> tlsInvalidStream; // the invalid id made current, if any

bool isValidStreamId(int64_t id) {
  return id >= 0 && id <= runtime().poolSize();
}

// A pool stream for a new torch.mps_sim.Stream() / torch.Stream(device=...): like
// torch.cuda.Stream(), never the calling thread's current stream (which the thread policy may
// have taken from the pool), and preferably one no thread is bound to.
c10::Stream newPoolStream() {
  ts::Runtime& rt = runtime();
  const ts::Stream* current = &rt.currentStream();
  ts::Stream* fallback = nullptr;
  for (int attempt = 0; attempt < rt.poolSize(); ++attempt) {
    ts::Stream& candidate = rt.streamFromPool();
    if (&candidate == current) {
      continue;
    }
    if (candidate.owners().load(std::memory_order_relaxed) == 0) {
      return toC10(candidate);
    }
    if (fallback == nullptr) {
      fallback = &candidate;
    }
  }
  return toC10(fallback != nullptr ? *fallback : rt.streamFromPool());
}

class SimGuardImpl final : public c10::impl::DeviceGuardImplInterface {
 public:
  c10::DeviceType type() const override {
    return kType;
  }
  c10::Device exchangeDevice(c10::Device d) const override {
    checkDevice(d);
    return device();
  }
  c10::Device getDevice() const override {
    return device();
  }
  void setDevice(c10::Device d) const override {
    checkDevice(d);
  }
  void uncheckedSetDevice(c10::Device) const noexcept override {}

  c10::Stream getStream(c10::Device) const noexcept override {
    try {
      return toC10(runtime().currentStream());
    } catch (...) {
      return getDefaultStream(device());
    }
  }
  c10::Stream getDefaultStream(c10::Device) const override {
    return c10::Stream(c10::Stream::DEFAULT, device());
  }
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool) const override {
    checkDevice(d);
    return newPoolStream();
  }
  c10::Stream getNewStream(c10::Device d, int) const override {
    checkDevice(d);
    return newPoolStream();
  }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override {
    try {
      return exchange(s);
    } catch (...) {
      // Only the runtime's own failures land here (ids are checked above); noexcept by
      // interface, so the thread keeps its stream.
      return getDefaultStream(device());
    }
  }
  c10::Stream exchange(c10::Stream s) const {
    ts::Runtime& rt = runtime();
    ts::Stream* explicitBefore = rt.explicitStream();
    const int64_t previous = tlsInvalidStream       ? *tlsInvalidStream
                             : explicitBefore != nullptr ? explicitBefore->id()
                                                         : rt.currentStream().id();
    if (!tlsSaved.empty() && tlsSaved.back().id == s.id()) {
      // Restoring what the matching exchange replaced.
      const SavedStream saved = tlsSaved.back();
      tlsSaved.pop_back();
      rt.setCurrentStream(saved.explicitBefore);
      tlsInvalidStream = saved.invalidBefore;
    } else {
      if (tlsSaved.size() >= kMaxSavedExchanges) {
        tlsSaved.erase(tlsSaved.begin());
      }
      tlsSaved.push_back({previous, explicitBefore, tlsInvalidStream});
      if (s.device_type() == kType && isValidStreamId(s.id())) {
        rt.setCurrentStream(&rt.stream(static_cast<int>(s.id())));
        tlsInvalidStream.reset();
      } else {
        tlsInvalidStream = s.id();
      }
    }
    return c10::Stream(c10::Stream::UNSAFE, device(), previous);
  }
  c10::DeviceIndex deviceCount() const noexcept override {
    return 1;
  }

  bool queryStream(const c10::Stream& s) const override {
    ts::Stream& stream = runtimeStream(s);
    return stream.completedBatch() >= stream.batchOfLatestWork();
  }
  void synchronizeStream(const c10::Stream& s) const override {
    // Commits the stream's open batch on its queue, then waits on the CPU; raises a failure
    // not yet told to the stream's owner (Note [GPU errors belong to batches]).
    ts::Stream& stream = runtimeStream(s);
    ts::runOnQueue(stream, [&] { stream.synchronize(ts::SyncType::COMMIT); });
    stream.waitCompleted(stream.submittedBatch());
    stream.rethrowGpuError();
  }
  void synchronizeDevice(const c10::DeviceIndex) const override {
    synchronizeDeviceAndSettleFrees();
  }

  void record(void** event, const c10::Stream& s, const c10::DeviceIndex,
              const c10::EventFlag) const override {
    ts::Stream& stream = runtimeStream(s);
    if (*event == nullptr) {
      *event = new ts::Event();
    }
    static_cast<ts::Event*>(*event)->record(stream);
  }
  void block(void* event, const c10::Stream& s) const override {
    if (event != nullptr) {
      static_cast<ts::Event*>(event)->wait(runtimeStream(s));
    }
  }
  bool queryEvent(void* event) const override {
    return event == nullptr || static_cast<ts::Event*>(event)->query();
  }
  void synchronizeEvent(void* event) const override {
    if (event != nullptr) {
      static_cast<ts::Event*>(event)->synchronize();
    }
  }
  void destroyEvent(void* event, const c10::DeviceIndex) const noexcept override {
    delete static_cast<ts::Event*>(event);
  }
  double elapsedTime(void*, void*, const c10::DeviceIndex) const override {
    TORCH_CHECK(false, "mps_sim: events do not record timestamps; elapsed_time is unsupported");
  }
};

} // namespace

void checkThreadStream() {
  if (C10_UNLIKELY(tlsInvalidStream.has_value())) {
    TORCH_CHECK_VALUE(false, "mps_sim: this thread's current stream (id ", *tlsInvalidStream,
                      ") is not one of this device's streams (0..", runtime().poolSize(),
                      "); it was set by a stream context or torch.accelerator.set_stream. Use "
                      "torch.mps_sim.Stream() or a stream_id in that range.");
  }
}

void setThreadStream(ts::Stream* stream) {
  runtime().setCurrentStream(stream);
  tlsInvalidStream.reset();
}

int savedExchangeDepth() {
  return static_cast<int>(tlsSaved.size());
}

C10_REGISTER_GUARD_IMPL(PrivateUse1, SimGuardImpl);

} // namespace mps_sim
