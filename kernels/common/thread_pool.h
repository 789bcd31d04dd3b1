// A fixed pool of worker threads that kernels use to spread a batch over cores.
#ifndef TENSORPREP_KERNELS_COMMON_THREAD_POOL_H_
#define TENSORPREP_KERNELS_COMMON_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tensorprep::kernels {

// Thread-safe: any number of threads may call ParallelFor at once; their tasks share the workers.
// The calling thread works on its own loop too, so a pool of size 1 has no worker threads and runs
// everything inline, and a small loop never waits for a hand-off it does not need.
class ThreadPool {
 public:
  // `threads` <= 0 means std::thread::hardware_concurrency(). Starts threads - 1 workers.
  explicit ThreadPool(int threads);
  ~ThreadPool();  // Joins the workers; no ParallelFor may be running.

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads that may work on one loop (workers + the caller).
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n) and returns when all have finished. Indices are claimed in
  // order by the caller and by idle workers. `fn` must not throw.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  struct Loop;
  void WorkerMain();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Loop*> loops_;  // GUARDED_BY(mu_): loops with unclaimed indices
  bool stop_ = false;        // GUARDED_BY(mu_)
};

// Runs fn(i) for i in [0, n) on `pool`, or inline when `pool` is null.
void ParallelFor(ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_THREAD_POOL_H_
