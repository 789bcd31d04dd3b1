// The request executor: a fixed set of threads running queued requests in arrival order. gRPC
// reactions never block on kernels; they enqueue here and return.
#ifndef TENSORPREP_SERVER_WORK_QUEUE_H_
#define TENSORPREP_SERVER_WORK_QUEUE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace tensorprep::server {

// Thread-safe. Tasks must not throw.
class WorkQueue {
 public:
  explicit WorkQueue(int threads);
  // Runs every task already queued, then joins the threads.
  ~WorkQueue();

  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Submit(absl::AnyInvocable<void() &&> task);
  // Tasks queued and not yet started.
  int64_t depth() const;

 private:
  void Worker();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_;  // GUARDED_BY(mu_)
  bool stop_ = false;                                // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_WORK_QUEUE_H_
