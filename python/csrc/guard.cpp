// The mps_sim DeviceGuardImpl: c10's view of the device's streams and events, mapped onto the
// runtime. A c10::Stream's id is the runtime stream id (0: default stream, 1..32: the pool),
// a c10 event is a runtime Event. Everything generic in torch (torch.Stream, torch.Event,
// torch.accelerator, StreamGuard, record_stream) goes through here.

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <vector>

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
// block would leave the thread on a pool stream. Each exchange therefore remembers whether
// the stream it replaced was explicit.
struct SavedStream {
  int id;
  bool wasExplicit;
};
thread_local std::vector<SavedStream> tlsSaved;

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
    return toC10(runtime().streamFromPool());
  }
  c10::Stream getNewStream(c10::Device d, int) const override {
    checkDevice(d);
    return toC10(runtime().streamFromPool());
  }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override {
    ts::Runtime& rt = runtime();
    ts::Stream* previousExplicit = rt.explicitStream();
    const int previous = previousExplicit ? previousExplicit->id() : rt.currentStream().id();
    try {
      ts::Stream& next = runtimeStream(s);
      if (!tlsSaved.empty() && tlsSaved.back().id == next.id()) {
        // Restoring what the matching exchange replaced.
        const bool wasExplicit = tlsSaved.back().wasExplicit;
        tlsSaved.pop_back();
        rt.setCurrentStream(wasExplicit ? &next : nullptr);
      } else {
        tlsSaved.push_back({previous, previousExplicit != nullptr});
        rt.setCurrentStream(&next);
      }
    } catch (...) {
      // noexcept by interface; a bad stream was already refused by the Python layer.
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
    runtime().synchronizeDevice();
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

C10_REGISTER_GUARD_IMPL(PrivateUse1, SimGuardImpl);

} // namespace mps_sim
