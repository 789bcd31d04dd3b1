// The flow-control state of one ProcessStream call, with no gRPC in it: which requests are in
// flight and the bytes they hold, whether the next message may be read, the queue of responses
// waiting to be written (one write at a time), and when the call may finish. The stream reactor
// (server/service.cc) only turns gRPC events into calls here and carries out the Actions each
// call returns; every rule lives here and is unit-tested (tests/server/stream_state_test.cc).
//
// A message's life: MessageArrived (the read completed: counted in flight at once, before any
// other work, so that nothing can finish the call under it) -> MessageInvalid (not a request:
// the stream ends after the requests before it) or MessagePrepared (parsed and validated: now
// holds its real bytes; the next read is decided here, so reads never run ahead of parsing)
// -> Completed (its response or error response is ready) -> WriteDone (written, or the write
// failed). A request is settled when its response is written (answered) or dropped because the
// client cancelled or can no longer be written to (cancelled); the stream's own error answers
// the invalid message when the call finishes.
//
// Invariants (checked by the tests after every transition):
//   accepted == answered + cancelled + in_flight + (an invalid message not yet settled);
//   Finish is handed out exactly once, and only when no request is in flight, no write is
//   outstanding or queued, and no read is being started: after Finish the reactor may be deleted
//   at any moment, so no work that refers to it may exist then.
//
// Thread-safe: every method takes the state's own mutex; the Actions it returns are carried out
// by the caller after the lock is released.
#ifndef TENSORPREP_SERVER_STREAM_STATE_H_
#define TENSORPREP_SERVER_STREAM_STATE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace tensorprep::server {

struct StreamLimits {
  // Requests in flight (read and not yet written or dropped) at which reading pauses (values
  // below 1 count as 1, as for max_bytes).
  int max_inflight = 8;
  // Bytes those requests hold at which reading pauses.
  uint64_t max_bytes = uint64_t{256} << 20;
};

class StreamState {
 public:
  // A response waiting to be written. The reactor derives its payload from this; the state owns
  // it from Completed until its write is done or it is dropped.
  struct Outgoing {
    virtual ~Outgoing() = default;
    uint64_t bytes = 0;  // what its request holds in the window; released with it
  };

  // What the caller must do, in this order: add `answered` / `cancelled` to the counts, free
  // `dropped`, start writing `start_write`, start a read (then call ReadStarted and carry out its
  // actions too), and last finish the call with `finish_status`; after Finish the reactor may be
  // deleted, so nothing of it may be touched afterwards.
  struct Actions {
    int answered = 0;   // requests settled as answered by this transition
    int cancelled = 0;  // requests settled as cancelled (dropped: the client is gone)
    std::vector<std::unique_ptr<Outgoing>> dropped;  // responses that will never be written
    Outgoing* start_write = nullptr;  // still owned by the state until WriteDone
    bool start_read = false;
    bool finish = false;
    absl::Status finish_status;  // OK, CANCELLED, or the stream's error
  };

  struct Arrival {
    // False when the stream is ending (cancelled, unwritable or finished): the message is
    // discarded unread and counted nowhere.
    bool accepted = false;
    uint64_t index = 0;  // 1-based number of the message on this stream, when accepted
  };

  // Where reading stands.
  enum class ReadPhase {
    kIdle,     // before Start
    kReading,  // a read is outstanding (or being started)
    kHolding,  // a message was read and is being parsed; the next read waits for it
    kPaused,   // the window is full (or the stream is ending): no read until there is room
    kDone,     // no more reads: the client half-closed, or a message was not a request
  };

  struct Snapshot {
    int in_flight = 0;
    uint64_t in_flight_bytes = 0;
    ReadPhase read = ReadPhase::kIdle;
    bool read_starting = false;
    bool writing = false;
    size_t queued_writes = 0;  // waiting behind the one being written
    bool write_failed = false;
    bool cancelled = false;
    bool finished = false;
    int invalid_pending = 0;  // messages that were not requests, settled when finishing
    uint64_t accepted = 0, answered = 0, cancelled_requests = 0;
  };

  explicit StreamState(StreamLimits limits);
  StreamState(const StreamState&) = delete;
  StreamState& operator=(const StreamState&) = delete;

  // The call is open and authorised: read the first message.
  Actions Start();
  // The call is refused before anything is read (e.g. unauthenticated): finish with `status`.
  Actions Refuse(absl::Status status);
  // The caller's StartRead (asked for by start_read) has returned. Until then Finish is held
  // back, so that no read is ever started on a finished call.
  Actions ReadStarted();

  // A read completed with a message of `wire_bytes`. Counts it in flight (and accepted) before
  // anything else, or refuses it when the stream is ending. Never starts a read or finishes.
  Arrival MessageArrived(uint64_t wire_bytes);
  // A read completed without a message: the client half-closed, or the call is gone.
  Actions ReadsDone();
  // The message that arrived with `wire_bytes` is not a request: nothing more is read, and once
  // the requests before it are settled the call finishes with `error` (the first such error).
  Actions MessageInvalid(uint64_t wire_bytes, absl::Status error);
  // The message that arrived with `wire_bytes` was parsed and prepared and holds `bytes` from now
  // on. Decides the next read: now, or when the window has room.
  Actions MessagePrepared(uint64_t wire_bytes, uint64_t bytes);
  // A request's response (or error response) is ready; `out->bytes` is what its request held.
  // Queued for writing, or dropped (cancelled) when the client is gone.
  Actions Completed(std::unique_ptr<Outgoing> out);
  // The write of the front response finished: `ok` false means the client can no longer be
  // written to, and every queued response is dropped with it.
  Actions WriteDone(bool ok);
  // The call was cancelled (client cancel, deadline, broken connection).
  Actions Cancelled();

  // True once the client cancelled or a write failed: work not yet run should be dropped.
  bool ShouldDrop() const;
  Snapshot snapshot() const;

 private:
  bool CanReadLocked() const;
  void MaybeResumeLocked(Actions& a);
  void MaybeFinishLocked(Actions& a);
  void DropQueuedLocked(Actions& a);

  const StreamLimits limits_;
  mutable std::mutex mu_;
  int in_flight_ = 0;                          // GUARDED_BY(mu_)
  uint64_t in_flight_bytes_ = 0;               // GUARDED_BY(mu_)
  ReadPhase read_ = ReadPhase::kIdle;          // GUARDED_BY(mu_)
  bool read_starting_ = false;                 // GUARDED_BY(mu_)
  std::deque<std::unique_ptr<Outgoing>> writes_;  // GUARDED_BY(mu_): front is being written
                                                  // when writing_
  bool writing_ = false;                       // GUARDED_BY(mu_)
  bool write_failed_ = false;                  // GUARDED_BY(mu_)
  bool cancelled_ = false;                     // GUARDED_BY(mu_)
  bool finished_ = false;                      // GUARDED_BY(mu_)
  int invalid_pending_ = 0;                     // GUARDED_BY(mu_): settled when finishing
  absl::Status error_;                         // GUARDED_BY(mu_)
  uint64_t messages_ = 0;                      // GUARDED_BY(mu_)
  uint64_t answered_ = 0;                      // GUARDED_BY(mu_)
  uint64_t cancelled_requests_ = 0;            // GUARDED_BY(mu_)
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_STREAM_STATE_H_
