#include "server/stream_state.h"

#include <utility>

namespace tensorprep::server {

namespace {

StreamLimits AtLeastOne(StreamLimits l) {
  if (l.max_inflight < 1) l.max_inflight = 1;
  if (l.max_bytes < 1) l.max_bytes = 1;
  return l;
}

}  // namespace

StreamState::StreamState(StreamLimits limits) : limits_(AtLeastOne(limits)) {}

StreamState::Actions StreamState::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  if (read_ != ReadPhase::kIdle || finished_) return a;
  if (cancelled_) {
    read_ = ReadPhase::kPaused;
    MaybeFinishLocked(a);
    return a;
  }
  read_ = ReadPhase::kReading;
  read_starting_ = true;
  a.start_read = true;
  return a;
}

StreamState::Actions StreamState::Refuse(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  if (finished_) return a;
  read_ = ReadPhase::kDone;
  finished_ = true;
  a.finish = true;
  a.finish_status = std::move(status);
  return a;
}

StreamState::Actions StreamState::ReadStarted() {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  read_starting_ = false;
  MaybeFinishLocked(a);
  return a;
}

StreamState::Arrival StreamState::MessageArrived(uint64_t wire_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Arrival arrival;
  if (finished_ || cancelled_ || write_failed_) {
    // Nothing read now can be answered. The read that brought it is over, and none follows.
    if (read_ == ReadPhase::kReading) read_ = ReadPhase::kPaused;
    return arrival;
  }
  ++in_flight_;
  in_flight_bytes_ += wire_bytes;
  read_ = ReadPhase::kHolding;
  arrival.accepted = true;
  arrival.index = ++messages_;
  return arrival;
}

StreamState::Actions StreamState::ReadsDone() {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  read_ = ReadPhase::kDone;
  MaybeFinishLocked(a);
  return a;
}

StreamState::Actions StreamState::MessageInvalid(uint64_t wire_bytes, absl::Status error) {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  --in_flight_;
  in_flight_bytes_ -= wire_bytes;
  ++invalid_pending_;
  if (error_.ok()) error_ = std::move(error);
  // Its request id is unknown, so nothing after it can be matched to it: read no further.
  read_ = ReadPhase::kDone;
  MaybeFinishLocked(a);
  return a;
}

StreamState::Actions StreamState::MessagePrepared(uint64_t wire_bytes, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  in_flight_bytes_ = in_flight_bytes_ - wire_bytes + bytes;
  if (read_ == ReadPhase::kHolding) {
    if (CanReadLocked()) {
      read_ = ReadPhase::kReading;
      read_starting_ = true;
      a.start_read = true;
    } else {
      read_ = ReadPhase::kPaused;
    }
  }
  // The message is still in flight: nothing can finish here.
  return a;
}

StreamState::Actions StreamState::Completed(std::unique_ptr<Outgoing> out) {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  if (cancelled_ || write_failed_) {
    --in_flight_;
    in_flight_bytes_ -= out->bytes;
    ++cancelled_requests_;
    ++a.cancelled;
    a.dropped.push_back(std::move(out));
    MaybeFinishLocked(a);
    return a;
  }
  writes_.push_back(std::move(out));
  if (!writing_) {
    writing_ = true;
    a.start_write = writes_.front().get();
  }
  return a;
}

StreamState::Actions StreamState::WriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  if (writes_.empty()) return a;  // not a write of ours; cannot happen with one write at a time
  std::unique_ptr<Outgoing> written = std::move(writes_.front());
  writes_.pop_front();
  --in_flight_;
  in_flight_bytes_ -= written->bytes;
  a.dropped.push_back(std::move(written));
  if (ok) {
    ++answered_;
    ++a.answered;
  } else {
    // The client can no longer be written to: neither this response nor any queued one arrives.
    write_failed_ = true;
    ++cancelled_requests_;
    ++a.cancelled;
    DropQueuedLocked(a);
  }
  if (!writes_.empty()) {
    a.start_write = writes_.front().get();
  } else {
    writing_ = false;
  }
  MaybeResumeLocked(a);
  MaybeFinishLocked(a);
  return a;
}

StreamState::Actions StreamState::Cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  Actions a;
  cancelled_ = true;
  // Queued responses stay until the outstanding write fails (it must, the call being gone):
  // then WriteDone drops them.
  MaybeFinishLocked(a);
  return a;
}

bool StreamState::ShouldDrop() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_ || write_failed_;
}

StreamState::Snapshot StreamState::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  Snapshot s;
  s.in_flight = in_flight_;
  s.in_flight_bytes = in_flight_bytes_;
  s.read = read_;
  s.read_starting = read_starting_;
  s.writing = writing_;
  s.queued_writes = writes_.empty() ? 0 : writes_.size() - (writing_ ? 1 : 0);
  s.write_failed = write_failed_;
  s.cancelled = cancelled_;
  s.finished = finished_;
  s.invalid_pending = invalid_pending_;
  s.accepted = messages_;
  s.answered = answered_;
  s.cancelled_requests = cancelled_requests_;
  return s;
}

bool StreamState::CanReadLocked() const {
  return !finished_ && !cancelled_ && !write_failed_ && in_flight_ < limits_.max_inflight &&
         in_flight_bytes_ < limits_.max_bytes;
}

void StreamState::MaybeResumeLocked(Actions& a) {
  if (read_ == ReadPhase::kPaused && CanReadLocked()) {
    read_ = ReadPhase::kReading;
    read_starting_ = true;
    a.start_read = true;
  }
}

void StreamState::MaybeFinishLocked(Actions& a) {
  if (finished_ || read_starting_ || in_flight_ != 0 || writing_ || !writes_.empty()) return;
  if (!(read_ == ReadPhase::kDone || write_failed_ || cancelled_)) return;
  finished_ = true;
  a.finish = true;
  const bool gone = cancelled_ || write_failed_;
  if (invalid_pending_ > 0) {
    // The stream's error status is the answer to the message that was not a request.
    if (gone) {
      cancelled_requests_ += invalid_pending_;
      a.cancelled += invalid_pending_;
    } else {
      answered_ += invalid_pending_;
      a.answered += invalid_pending_;
    }
    invalid_pending_ = 0;
  }
  if (cancelled_) {
    a.finish_status = absl::CancelledError("");
  } else if (!error_.ok()) {
    a.finish_status = error_;
  }
}

void StreamState::DropQueuedLocked(Actions& a) {
  for (std::unique_ptr<Outgoing>& p : writes_) {
    --in_flight_;
    in_flight_bytes_ -= p->bytes;
    ++cancelled_requests_;
    ++a.cancelled;
    a.dropped.push_back(std::move(p));
  }
  writes_.clear();
}

}  // namespace tensorprep::server
