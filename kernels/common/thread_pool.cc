#include "kernels/common/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace tensorprep::kernels {

struct ThreadPool::Loop {
  int64_t n = 0;
  const std::function<void(int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int helpers = 0;  // GUARDED_BY(pool mu_): workers currently inside this loop
  std::mutex mu;
  std::condition_variable finished;
};

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(threads - 1);
  for (int i = 0; i + 1 < threads; ++i) workers_.emplace_back([this] { WorkerMain(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
// Claims and runs indices until none are left; returns how many this thread ran.
int64_t Drain(std::atomic<int64_t>& next, int64_t n, const std::function<void(int64_t)>& fn) {
  int64_t ran = 0;
  for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
    fn(i);
    ++ran;
  }
  return ran;
}
}  // namespace

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Loop loop;
  loop.n = n;
  loop.fn = &fn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    loops_.push_back(&loop);
  }
  // Wake only as many workers as there is work for beyond the caller's own share.
  const int64_t wake = std::min<int64_t>(n - 1, static_cast<int64_t>(workers_.size()));
  for (int64_t i = 0; i < wake; ++i) cv_.notify_one();

  const int64_t ran = Drain(loop.next, n, fn);
  {
    std::lock_guard<std::mutex> lock(mu_);
    // No worker may pick this loop up once the caller leaves it.
    auto it = std::find(loops_.begin(), loops_.end(), &loop);
    if (it != loops_.end()) loops_.erase(it);
  }
  std::unique_lock<std::mutex> lock(loop.mu);
  loop.done.fetch_add(ran);
  loop.finished.wait(lock, [&] { return loop.done.load() == n && loop.helpers == 0; });
}

void ThreadPool::WorkerMain() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !loops_.empty(); });
    if (stop_) return;
    Loop* loop = loops_.front();
    if (loop->next.load() >= loop->n) {
      loops_.pop_front();  // fully claimed; its owner finishes it
      continue;
    }
    {
      std::lock_guard<std::mutex> loop_lock(loop->mu);
      ++loop->helpers;
    }
    lock.unlock();
    const int64_t ran = Drain(loop->next, loop->n, *loop->fn);
    {
      std::lock_guard<std::mutex> loop_lock(loop->mu);
      loop->done.fetch_add(ran);
      --loop->helpers;
      // Notify under the lock: once it is released the owner may return and destroy `loop`.
      loop->finished.notify_all();
    }
    lock.lock();
  }
}

void ParallelFor(ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& fn) {
  if (pool == nullptr) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  } else {
    pool->ParallelFor(n, fn);
  }
}

}  // namespace tensorprep::kernels
