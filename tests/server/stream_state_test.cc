// StreamState, the flow control of one ProcessStream call, without gRPC: every transition, the
// interleaving that once let a stream finish with a request still about to be queued (issue 13),
// and a randomised model of a reactor that checks the invariants after every event.
#include "server/stream_state.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <random>
#include <utility>
#include <vector>

namespace tensorprep::server {
namespace {

using Phase = StreamState::ReadPhase;

std::unique_ptr<StreamState::Outgoing> Out(uint64_t bytes) {
  auto o = std::make_unique<StreamState::Outgoing>();
  o->bytes = bytes;
  return o;
}

// accepted == answered + cancelled + in flight + invalid messages not yet settled.
void ExpectBalanced(const StreamState& s) {
  const StreamState::Snapshot v = s.snapshot();
  EXPECT_EQ(v.accepted, v.answered + v.cancelled_requests + static_cast<uint64_t>(v.in_flight) +
                            static_cast<uint64_t>(v.invalid_pending));
}

// Starts a stream and completes the first StartRead.
void Open(StreamState& s) {
  StreamState::Actions a = s.Start();
  ASSERT_TRUE(a.start_read);
  ASSERT_FALSE(s.ReadStarted().finish);
}

// One message read, parsed and prepared; returns the actions of MessagePrepared.
StreamState::Actions ReadAndPrepare(StreamState& s, uint64_t wire, uint64_t bytes) {
  StreamState::Arrival arrival = s.MessageArrived(wire);
  EXPECT_TRUE(arrival.accepted);
  StreamState::Actions a = s.MessagePrepared(wire, bytes);
  if (a.start_read) EXPECT_FALSE(s.ReadStarted().finish);
  return a;
}

TEST(StreamStateTest, StartReadsAndAMessageIsInFlightFromItsArrival) {
  StreamState s({8, 1000});
  Open(s);
  EXPECT_EQ(s.snapshot().read, Phase::kReading);
  const StreamState::Arrival a = s.MessageArrived(10);
  ASSERT_TRUE(a.accepted);
  EXPECT_EQ(a.index, 1u);
  StreamState::Snapshot v = s.snapshot();
  EXPECT_EQ(v.in_flight, 1);
  EXPECT_EQ(v.in_flight_bytes, 10u);
  EXPECT_EQ(v.read, Phase::kHolding);  // the next read waits for the parse
  EXPECT_EQ(v.accepted, 1u);
  // Prepared: holds its real bytes, and the next read starts.
  StreamState::Actions p = s.MessagePrepared(10, 100);
  EXPECT_TRUE(p.start_read);
  EXPECT_FALSE(p.finish);
  v = s.snapshot();
  EXPECT_EQ(v.in_flight_bytes, 100u);
  EXPECT_EQ(v.read, Phase::kReading);
  EXPECT_TRUE(v.read_starting);
  EXPECT_FALSE(s.ReadStarted().finish);
  EXPECT_FALSE(s.snapshot().read_starting);
  EXPECT_EQ(s.MessageArrived(5).index, 2u);
  ExpectBalanced(s);
}

TEST(StreamStateTest, ReadingPausesAtTheRequestLimitAndResumesWhenAResponseIsWritten) {
  StreamState s({2, 1000});
  Open(s);
  EXPECT_TRUE(ReadAndPrepare(s, 1, 10).start_read);
  EXPECT_FALSE(ReadAndPrepare(s, 1, 10).start_read);  // 2 in flight: the window is full
  EXPECT_EQ(s.snapshot().read, Phase::kPaused);
  StreamState::Actions c = s.Completed(Out(10));
  ASSERT_NE(c.start_write, nullptr);
  EXPECT_FALSE(c.start_read);  // still 2 in flight until the write is done
  StreamState::Actions w = s.WriteDone(true);
  EXPECT_EQ(w.answered, 1);
  EXPECT_TRUE(w.start_read);
  EXPECT_EQ(s.snapshot().in_flight, 1);
  EXPECT_EQ(s.snapshot().in_flight_bytes, 10u);
  ExpectBalanced(s);
}

TEST(StreamStateTest, ReadingPausesAtTheByteLimitAndResumesBelowIt) {
  StreamState s({8, 100});
  Open(s);
  EXPECT_TRUE(ReadAndPrepare(s, 10, 60).start_read);
  EXPECT_FALSE(ReadAndPrepare(s, 10, 60).start_read);  // 120 >= 100
  EXPECT_EQ(s.snapshot().read, Phase::kPaused);
  s.Completed(Out(60));
  EXPECT_TRUE(s.WriteDone(true).start_read);  // 60 < 100
}

TEST(StreamStateTest, OneWriteAtATimeInCompletionOrder) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 1);
  ReadAndPrepare(s, 1, 2);
  ReadAndPrepare(s, 1, 3);
  auto a = Out(2), b = Out(1), c = Out(3);
  StreamState::Outgoing* pa = a.get();
  StreamState::Outgoing* pb = b.get();
  StreamState::Outgoing* pc = c.get();
  EXPECT_EQ(s.Completed(std::move(a)).start_write, pa);
  EXPECT_EQ(s.Completed(std::move(b)).start_write, nullptr);  // one write in flight
  EXPECT_EQ(s.Completed(std::move(c)).start_write, nullptr);
  EXPECT_TRUE(s.snapshot().writing);
  EXPECT_EQ(s.snapshot().queued_writes, 2u);
  StreamState::Actions w = s.WriteDone(true);
  EXPECT_EQ(w.start_write, pb);
  ASSERT_EQ(w.dropped.size(), 1u);  // the written one, to be freed by the caller
  EXPECT_EQ(w.dropped[0].get(), pa);
  EXPECT_EQ(s.WriteDone(true).start_write, pc);
  StreamState::Actions last = s.WriteDone(true);
  EXPECT_EQ(last.start_write, nullptr);
  EXPECT_FALSE(s.snapshot().writing);
  EXPECT_EQ(s.snapshot().in_flight, 0);
  EXPECT_EQ(s.snapshot().in_flight_bytes, 0u);
  EXPECT_EQ(s.snapshot().answered, 3u);
  EXPECT_FALSE(last.finish);  // the client may still send
}

TEST(StreamStateTest, HalfCloseFinishesOkOnceEverythingIsWritten) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 5);
  StreamState::Actions r = s.ReadsDone();
  EXPECT_FALSE(r.finish);  // one request still in flight
  EXPECT_EQ(s.snapshot().read, Phase::kDone);
  EXPECT_NE(s.Completed(Out(5)).start_write, nullptr);
  StreamState::Actions w = s.WriteDone(true);
  EXPECT_FALSE(w.start_read);
  ASSERT_TRUE(w.finish);
  EXPECT_TRUE(w.finish_status.ok());
  EXPECT_TRUE(s.snapshot().finished);
  EXPECT_FALSE(s.ReadsDone().finish);  // exactly once
  ExpectBalanced(s);
}

TEST(StreamStateTest, IdleHalfCloseFinishesAtOnce) {
  StreamState s({8, 1000});
  Open(s);
  StreamState::Actions r = s.ReadsDone();
  EXPECT_TRUE(r.finish);
  EXPECT_TRUE(r.finish_status.ok());
}

TEST(StreamStateTest, AFailedWriteDropsTheQueuedResponsesAndFinishesWhenNothingIsLeft) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 1);
  ReadAndPrepare(s, 1, 2);
  ReadAndPrepare(s, 1, 4);
  s.Completed(Out(1));
  s.Completed(Out(2));  // queued behind the first
  StreamState::Actions w = s.WriteDone(false);
  EXPECT_EQ(w.cancelled, 2);  // the failed one and the queued one
  EXPECT_EQ(w.dropped.size(), 2u);
  EXPECT_EQ(w.start_write, nullptr);
  EXPECT_FALSE(w.start_read);
  EXPECT_FALSE(w.finish);  // the third still runs
  EXPECT_TRUE(s.ShouldDrop());
  EXPECT_EQ(s.snapshot().in_flight, 1);
  EXPECT_EQ(s.snapshot().in_flight_bytes, 4u);
  StreamState::Actions c = s.Completed(Out(4));
  EXPECT_EQ(c.cancelled, 1);
  EXPECT_EQ(c.dropped.size(), 1u);
  EXPECT_EQ(c.start_write, nullptr);
  EXPECT_TRUE(c.finish);
  EXPECT_EQ(s.snapshot().in_flight_bytes, 0u);
  EXPECT_EQ(s.snapshot().cancelled_requests, 3u);
  ExpectBalanced(s);
}

TEST(StreamStateTest, CancelDropsWhatCompletesAndFinishesCancelled) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 1);
  ReadAndPrepare(s, 1, 1);
  s.Completed(Out(1));  // being written
  StreamState::Actions k = s.Cancelled();
  EXPECT_FALSE(k.finish);
  EXPECT_TRUE(s.ShouldDrop());
  StreamState::Actions c = s.Completed(Out(1));
  EXPECT_EQ(c.cancelled, 1);
  EXPECT_FALSE(c.finish);  // the write is still outstanding
  StreamState::Actions w = s.WriteDone(false);
  EXPECT_EQ(w.cancelled, 1);
  ASSERT_TRUE(w.finish);
  EXPECT_EQ(w.finish_status.code(), absl::StatusCode::kCancelled);
  ExpectBalanced(s);
}

TEST(StreamStateTest, CancelWithAReadOutstandingFinishesAndTheLateMessageIsNotAccepted) {
  StreamState s({8, 1000});
  Open(s);
  StreamState::Actions k = s.Cancelled();
  ASSERT_TRUE(k.finish);
  EXPECT_EQ(k.finish_status.code(), absl::StatusCode::kCancelled);
  // The outstanding read may still bring a message: it is refused, and nothing is asked for.
  EXPECT_FALSE(s.MessageArrived(10).accepted);
  EXPECT_EQ(s.snapshot().accepted, 0u);
  EXPECT_EQ(s.snapshot().in_flight, 0);
  StreamState::Actions r = s.ReadsDone();
  EXPECT_FALSE(r.finish);
  EXPECT_FALSE(r.start_read);
}

TEST(StreamStateTest, AnInvalidMessageStopsReadingAndEndsTheStreamAfterTheEarlierRequests) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 7);
  ASSERT_TRUE(s.MessageArrived(11).accepted);
  StreamState::Actions inv = s.MessageInvalid(11, absl::InvalidArgumentError("message 2"));
  EXPECT_FALSE(inv.start_read);
  EXPECT_FALSE(inv.finish);  // the first request is still in flight
  EXPECT_EQ(s.snapshot().read, Phase::kDone);
  EXPECT_EQ(s.snapshot().invalid_pending, 1);
  ExpectBalanced(s);
  s.Completed(Out(7));
  StreamState::Actions w = s.WriteDone(true);
  ASSERT_TRUE(w.finish);
  EXPECT_EQ(w.finish_status, absl::InvalidArgumentError("message 2"));
  EXPECT_EQ(w.answered, 2);  // the first request, and the invalid one by the stream's status
  EXPECT_EQ(s.snapshot().accepted, 2u);
  ExpectBalanced(s);
}

TEST(StreamStateTest, AnInvalidFirstMessageFinishesAtOnce) {
  StreamState s({8, 1000});
  Open(s);
  ASSERT_TRUE(s.MessageArrived(3).accepted);
  StreamState::Actions inv = s.MessageInvalid(3, absl::InvalidArgumentError("message 1"));
  ASSERT_TRUE(inv.finish);
  EXPECT_EQ(inv.finish_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(inv.answered, 1);
  ExpectBalanced(s);
}

TEST(StreamStateTest, AnInvalidMessageOnACancelledStreamCountsAsCancelled) {
  StreamState s({8, 1000});
  Open(s);
  ASSERT_TRUE(s.MessageArrived(3).accepted);
  EXPECT_FALSE(s.Cancelled().finish);  // the message is still being parsed
  StreamState::Actions inv = s.MessageInvalid(3, absl::InvalidArgumentError("message 1"));
  ASSERT_TRUE(inv.finish);
  EXPECT_EQ(inv.finish_status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(inv.cancelled, 1);
  EXPECT_EQ(inv.answered, 0);
  ExpectBalanced(s);
}

TEST(StreamStateTest, RefusedStreamFinishesWithItsStatusAndNothingElseHappens) {
  StreamState s({8, 1000});
  StreamState::Actions r = s.Refuse(absl::UnauthenticatedError("no token"));
  ASSERT_TRUE(r.finish);
  EXPECT_EQ(r.finish_status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(s.Start().start_read);
  EXPECT_FALSE(s.Cancelled().finish);
  EXPECT_FALSE(s.MessageArrived(1).accepted);
}

// Issue 13, item 1. The reactor once counted a message in flight only after parsing and
// preparing it, and decided to read more without looking at a failed write. This drives the
// interleaving that then freed the reactor under a queued job: a message arrives (thread A);
// before A gets further, the last response's write fails and the last running job completes
// (threads B and C). Counted at its arrival, the message keeps the call open; no read follows
// a failed write; the message's job runs as dropped and only its completion finishes the call.
TEST(StreamStateTest, AMessageArrivingAsTheLastWriteFailsKeepsTheCallOpenUntilItSettles) {
  StreamState s({8, 1000});
  Open(s);
  ReadAndPrepare(s, 1, 5);  // request 1: running
  ReadAndPrepare(s, 1, 5);  // request 2: its response is being written
  ASSERT_NE(s.Completed(Out(5)).start_write, nullptr);
  // Thread A: OnReadDone for message 3; counted before anything else.
  ASSERT_TRUE(s.MessageArrived(9).accepted);
  // Thread B: the write of request 2 fails (the client went away).
  StreamState::Actions w = s.WriteDone(false);
  EXPECT_FALSE(w.finish);
  EXPECT_FALSE(w.start_read);
  // Thread C: request 1, the last one running, completes and is dropped.
  StreamState::Actions c = s.Completed(Out(5));
  EXPECT_EQ(c.cancelled, 1);
  EXPECT_FALSE(c.finish) << "finished with message 3 still in flight: its job would outlive "
                            "the reactor";
  // Thread A goes on: prepared, but no read after a failed write.
  StreamState::Actions p = s.MessagePrepared(9, 20);
  EXPECT_FALSE(p.start_read);
  EXPECT_FALSE(p.finish);
  EXPECT_TRUE(s.ShouldDrop());  // its job runs nothing
  StreamState::Actions last = s.Completed(Out(20));
  EXPECT_EQ(last.cancelled, 1);
  EXPECT_TRUE(last.finish);  // now, with nothing left that refers to the reactor
  EXPECT_EQ(s.snapshot().in_flight_bytes, 0u);
  ExpectBalanced(s);
}

// A read decided on one thread (a resume) and a cancel on another: Finish waits until the
// StartRead has been made, so a read is never started on a finished call.
TEST(StreamStateTest, FinishWaitsForAReadBeingStarted) {
  StreamState s({1, 1000});
  Open(s);
  EXPECT_FALSE(ReadAndPrepare(s, 1, 1).start_read);  // paused at 1 in flight
  s.Completed(Out(1));
  StreamState::Actions w = s.WriteDone(true);  // thread B: room again
  ASSERT_TRUE(w.start_read);
  // Thread C: the client cancels before B has called StartRead.
  EXPECT_FALSE(s.Cancelled().finish);
  // B's StartRead returns.
  StreamState::Actions r = s.ReadStarted();
  ASSERT_TRUE(r.finish);
  EXPECT_EQ(r.finish_status.code(), absl::StatusCode::kCancelled);
}

// A model of the reactor and of gRPC driven by random, legal event orders: after every event the
// counts balance, no read or write is started on a finished call, no more than one of each is
// outstanding, and Finish comes exactly once and only when no job that refers to the reactor
// exists. Every run ends finished, with every accepted request settled.
TEST(StreamStateTest, RandomEventOrdersKeepEveryInvariant) {
  for (uint32_t seed = 1; seed <= 3000; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937 rng(seed);
    auto chance = [&](int percent) { return static_cast<int>(rng() % 100) < percent; };
    StreamState s({1 + static_cast<int>(rng() % 4), 20 + rng() % 60});
    bool read_outstanding = false, write_outstanding = false, finished = false;
    bool client_closed = false, cancelled = false;
    std::vector<uint64_t> holding;                 // arrived, being parsed (wire bytes)
    std::vector<uint64_t> running;                 // prepared, being run (bytes)
    std::function<void(StreamState::Actions)> apply = [&](StreamState::Actions a) {
      if (a.start_write != nullptr) {
        ASSERT_FALSE(finished);
        ASSERT_FALSE(write_outstanding);
        write_outstanding = true;
      }
      if (a.start_read) {
        ASSERT_FALSE(finished);
        ASSERT_FALSE(read_outstanding);
        read_outstanding = true;
        apply(s.ReadStarted());
        return;
      }
      if (a.finish) {
        ASSERT_FALSE(finished);
        ASSERT_TRUE(holding.empty() && running.empty() && !write_outstanding);
        finished = true;
      }
    };
    apply(s.Start());
    for (int step = 0; step < 400 && !(finished && !read_outstanding); ++step) {
      if (step > 300 && !cancelled) {  // make every run end
        cancelled = true;
        apply(s.Cancelled());
        continue;
      }
      const int pick = static_cast<int>(rng() % 6);
      if (pick == 0 && read_outstanding) {
        read_outstanding = false;
        if (client_closed || cancelled || finished || chance(5)) {
          client_closed = true;
          apply(s.ReadsDone());
        } else {
          const uint64_t wire = 1 + rng() % 10;
          if (s.MessageArrived(wire).accepted) holding.push_back(wire);
        }
      } else if (pick == 1 && !holding.empty()) {
        const uint64_t wire = holding.back();
        holding.pop_back();
        if (chance(5)) {
          apply(s.MessageInvalid(wire, absl::InvalidArgumentError("bad")));
        } else {
          const uint64_t bytes = wire + rng() % 40;
          running.push_back(bytes);
          apply(s.MessagePrepared(wire, bytes));
        }
      } else if (pick == 2 && !running.empty()) {
        const size_t i = rng() % running.size();
        const uint64_t bytes = running[i];
        running.erase(running.begin() + static_cast<long>(i));
        apply(s.Completed(Out(bytes)));
      } else if (pick == 3 && write_outstanding) {
        write_outstanding = false;
        apply(s.WriteDone(!cancelled && !chance(3)));
      } else if (pick == 4 && !cancelled && chance(3)) {
        cancelled = true;
        apply(s.Cancelled());
      }
      if (HasFatalFailure()) return;
      ExpectBalanced(s);
    }
    ASSERT_TRUE(finished);
    const StreamState::Snapshot v = s.snapshot();
    EXPECT_EQ(v.in_flight, 0);
    EXPECT_EQ(v.in_flight_bytes, 0u);
    EXPECT_EQ(v.accepted, v.answered + v.cancelled_requests);
  }
}

}  // namespace
}  // namespace tensorprep::server
