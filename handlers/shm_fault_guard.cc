#include "handlers/shm_fault_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <cstdint>
#include <mutex>

namespace tensorprep::handlers {

namespace {

// A slot is live while `end` is non-zero. The handler reads slots without locks (it may run on
// any thread, at any instruction): writers publish begin and flag before end, and retract end
// first.
struct Slot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<std::atomic<bool>*> broken{nullptr};
};

Slot g_slots[ShmFaultGuard::kMaxRanges];
std::atomic<uint64_t> g_faults{0};
std::mutex g_mu;  // serialises Add/Remove and the one-time install
bool g_installed = false;  // GUARDED_BY(g_mu)
struct sigaction g_previous;  // written once before the handler can run

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    const uintptr_t end = s.end.load(std::memory_order_acquire);
    if (end == 0) continue;
    const uintptr_t begin = s.begin.load(std::memory_order_relaxed);
    if (addr < begin || addr >= end) continue;
    // Fresh private zero pages over the whole range: the retried access and all later ones
    // succeed, and nothing of the shrunken object is touched again.
    void* p = mmap(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) break;  // cannot repair: fall through to the previous action
    std::atomic<bool>* flag = s.broken.load(std::memory_order_relaxed);
    if (flag != nullptr) flag->store(true, std::memory_order_release);
    g_faults.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Not ours: behave as if the guard were not there.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) {
      g_previous.sa_sigaction(sig, info, context);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-runs the access, which now takes the default action
}

void InstallLocked() {
  if (g_installed) return;
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_previous);
  g_installed = true;
}

}  // namespace

int ShmFaultGuard::Add(void* base, size_t bytes, std::atomic<bool>* broken) {
  std::lock_guard<std::mutex> lock(g_mu);
  InstallLocked();
  for (int i = 0; i < kMaxRanges; ++i) {
    Slot& s = g_slots[i];
    if (s.end.load(std::memory_order_relaxed) != 0) continue;
    s.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_relaxed);
    s.broken.store(broken, std::memory_order_relaxed);
    s.end.store(reinterpret_cast<uintptr_t>(base) + bytes, std::memory_order_release);
    return i;
  }
  return -1;
}

void ShmFaultGuard::Remove(int slot) {
  if (slot < 0 || slot >= kMaxRanges) return;
  std::lock_guard<std::mutex> lock(g_mu);
  Slot& s = g_slots[slot];
  s.end.store(0, std::memory_order_release);
  s.broken.store(nullptr, std::memory_order_relaxed);
  s.begin.store(0, std::memory_order_relaxed);
}

uint64_t ShmFaultGuard::faults() { return g_faults.load(std::memory_order_relaxed); }

}  // namespace tensorprep::handlers
