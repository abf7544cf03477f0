#include "buffer_uses.h"

#include <algorithm>
#include <functional>

#include "schedule.h"

namespace at::mps::threadsafe {

namespace {
// Adds a use to a set holding at most one use per stream, keeping the latest batch.
void addLatestPerStream(std::vector<StreamUse>& uses, StreamUse use) {
  for (StreamUse& existing : uses) {
    if (existing.stream == use.stream) {
      existing.batch = std::max(existing.batch, use.batch);
      return;
    }
  }
  uses.push_back(use);
}

// Whether `ordered` holds a use on the same stream at the same batch or later.
bool covers(const std::vector<StreamUse>& ordered, const StreamUse& use) {
  return std::any_of(ordered.begin(), ordered.end(), [&](const StreamUse& o) {
    return o.stream == use.stream && o.batch >= use.batch;
  });
}

// Adds a use to a list unless it holds that very use.
void addOnce(std::vector<StreamUse>& uses, StreamUse use) {
  if (std::none_of(uses.begin(), uses.end(), [&](const StreamUse& u) {
        return u.stream == use.stream && u.batch == use.batch;
      })) {
    uses.push_back(use);
  }
}

// Whether `use` inherits the failure of the writes it waits for (Note [Overwriting a failed
// write]): every read, and a write that leaves part of the buffer as it was.
bool inheritsWriters(const BufferUse& use) {
  return use.access == BufferUse::Access::Read || !use.coversBuffer;
}
} // namespace

BufferUseTracker::Shard& BufferUseTracker::shardOf(const void* buffer) const {
  // Allocations are aligned, so the low bits carry no information.
  const size_t hash = std::hash<const void*>{}(buffer) >> 6;
  return shards_[hash % kShards];
}

void BufferUseTracker::dependenciesOf(const History& history, const Stream& self,
                                      const BufferUse& use, std::vector<StreamUse>& out,
                                      std::vector<StreamUse>* inherited) {
  for (const StreamUse& write : history.writes) {
    if (write.stream != &self) {
      addLatestPerStream(out, write);
      if (inherited != nullptr && inheritsWriters(use)) {
        addOnce(*inherited, write); // each batch read from: not merged (header)
      }
    }
  }
  if (use.access == BufferUse::Access::Write) {
    // Ordering only (WAR): a failed reader left nothing in the buffer.
    for (const StreamUse& read : history.reads) {
      if (read.stream != &self) {
        addLatestPerStream(out, read);
      }
    }
  }
}

void BufferUseTracker::dependencies(const Stream& self, const BufferUse* uses, size_t count,
                                    std::vector<StreamUse>& out) const {
  for (size_t i = 0; i < count; ++i) {
    const Shard& shard = shardOf(uses[i].buffer);
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.buffers.find(uses[i].buffer);
    if (it != shard.buffers.end()) {
      dependenciesOf(it->second, self, uses[i], out, nullptr);
    }
  }
}

void BufferUseTracker::dependOnAndRecord(Stream& self, const BufferUse* uses, size_t count,
                                         uint64_t batch, std::vector<StreamUse>& out,
                                         std::vector<StreamUse>* ownWrites,
                                         std::vector<uint64_t>* previous,
                                         std::vector<StreamUse>* inherited) {
  if (previous != nullptr) {
    previous->assign(count, 0);
  }
  for (size_t i = 0; i < count; ++i) {
    Shard& shard = shardOf(uses[i].buffer);
    std::lock_guard<std::mutex> lock(shard.mutex);
    History& history = shard.buffers[uses[i].buffer];
    dependenciesOf(history, self, uses[i], out, inherited);
    if (ownWrites != nullptr && inheritsWriters(uses[i])) {
      for (const StreamUse& write : history.writes) {
        if (write.stream == &self && write.batch < batch) {
          addOnce(*ownWrites, write); // each batch read from: not merged (header)
        }
      }
    }
    std::vector<StreamUse>& set =
        uses[i].access == BufferUse::Access::Write ? history.writes : history.reads;
    if (previous != nullptr) {
      for (const StreamUse& existing : set) {
        if (existing.stream == &self) {
          (*previous)[i] = existing.batch;
        }
      }
    }
    addLatestPerStream(set, {&self, batch});
  }
}

void BufferUseTracker::undoRecord(Stream& self, const BufferUse* uses, size_t count,
                                  uint64_t batch, const std::vector<uint64_t>& previous) {
  // In reverse, so a buffer named twice gets back what it had before the first record.
  for (size_t i = count; i-- > 0;) {
    Shard& shard = shardOf(uses[i].buffer);
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.buffers.find(uses[i].buffer);
    if (it == shard.buffers.end()) {
      continue;
    }
    History& history = it->second;
    std::vector<StreamUse>& set =
        uses[i].access == BufferUse::Access::Write ? history.writes : history.reads;
    for (auto use = set.begin(); use != set.end(); ++use) {
      if (use->stream == &self && use->batch == batch) {
        if (i < previous.size() && previous[i] != 0) {
          use->batch = previous[i];
        } else {
          set.erase(use);
        }
        break;
      }
    }
    if (history.writes.empty() && history.reads.empty()) {
      shard.buffers.erase(it);
    }
  }
}

void BufferUseTracker::settle(Stream& self, const BufferUse* uses, size_t count, uint64_t batch,
                              const std::vector<StreamUse>& waited) {
  for (size_t i = 0; i < count; ++i) {
    Shard& shard = shardOf(uses[i].buffer);
    std::lock_guard<std::mutex> lock(shard.mutex);
    History& history = shard.buffers[uses[i].buffer];
    if (uses[i].access == BufferUse::Access::Write) {
      // The ordering point: what this write waited for, and this stream's earlier uses (its
      // queue orders them), are before it; uses recorded meanwhile on other streams are not.
      auto orderedBefore = [&](const StreamUse& use) {
        return use.stream == &self || covers(waited, use);
      };
      std::erase_if(history.writes, orderedBefore);
      std::erase_if(history.reads, orderedBefore);
      history.writes.push_back({&self, batch});
    } else {
      addLatestPerStream(history.reads, {&self, batch});
    }
  }
}

void BufferUseTracker::record(Stream& self, const BufferUse* uses, size_t count, uint64_t batch) {
  for (size_t i = 0; i < count; ++i) {
    Shard& shard = shardOf(uses[i].buffer);
    std::lock_guard<std::mutex> lock(shard.mutex);
    History& history = shard.buffers[uses[i].buffer];
    addLatestPerStream(uses[i].access == BufferUse::Access::Write ? history.writes : history.reads,
                       {&self, batch});
  }
}

std::vector<StreamUse> BufferUseTracker::release(const void* buffer) {
  Shard& shard = shardOf(buffer);
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.buffers.find(buffer);
  if (it == shard.buffers.end()) {
    return {};
  }
  std::vector<StreamUse> uses = std::move(it->second.reads);
  for (const StreamUse& write : it->second.writes) {
    addLatestPerStream(uses, write);
  }
  shard.buffers.erase(it);
  return uses;
}

size_t BufferUseTracker::trackedBuffers() const {
  size_t total = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    total += shard.buffers.size();
  }
  return total;
}

bool PendingFrees::passed(const StreamUse& use, const Stream* requester) {
  return use.stream == requester || use.stream->completedBatch() >= use.batch;
}

bool PendingFrees::add(void* buffer, std::vector<StreamUse> uses, const Stream* owner) {
  racePoint(SchedulePoint::PendingFreesAdd);
  const bool deferred = std::any_of(uses.begin(), uses.end(),
                                    [&](const StreamUse& use) { return !passed(use, owner); });
  if (deferred) {
    deferred_.add();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.push_back({buffer, std::move(uses)});
  return deferred;
}

std::vector<void*> PendingFrees::takeReusable(const Stream* requester) {
  racePoint(SchedulePoint::PendingFreesTake);
  std::vector<void*> reusable;
  std::lock_guard<std::mutex> lock(mutex_);
  auto stillPending = std::stable_partition(entries_.begin(), entries_.end(), [&](const Entry& entry) {
    return !std::all_of(entry.uses.begin(), entry.uses.end(),
                        [&](const StreamUse& use) { return passed(use, requester); });
  });
  for (auto it = stillPending; it != entries_.end(); ++it) {
    reusable.push_back(it->buffer);
  }
  entries_.erase(stillPending, entries_.end());
  return reusable;
}

size_t PendingFrees::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

} // namespace at::mps::threadsafe
