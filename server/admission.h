// Server-wide admission control: a budget of bytes and of requests held by accepted work. Both
// the unary and the stream paths reserve here before they enqueue, so overload is answered with
// RESOURCE_EXHAUSTED instead of growing memory until the process dies.
#ifndef TENSORPREP_SERVER_ADMISSION_H_
#define TENSORPREP_SERVER_ADMISSION_H_

#include <cstdint>
#include <mutex>

#include "absl/status/statusor.h"

namespace tensorprep::server {

struct AdmissionLimits {
  uint64_t max_bytes = uint64_t{2048} << 20;  // --max-inflight-mb
  int64_t max_requests = 1024;                // --max-inflight-requests
};

class Admission;

// A reservation; gives its bytes and its request slot back when destroyed. Move-only. An empty
// ticket (default-constructed or moved from) holds nothing.
class AdmissionTicket {
 public:
  AdmissionTicket() = default;
  AdmissionTicket(AdmissionTicket&& other) noexcept;
  AdmissionTicket& operator=(AdmissionTicket&& other) noexcept;
  AdmissionTicket(const AdmissionTicket&) = delete;
  AdmissionTicket& operator=(const AdmissionTicket&) = delete;
  ~AdmissionTicket();

  uint64_t bytes() const { return bytes_; }
  // Gives the reservation back now.
  void Release();

 private:
  friend class Admission;
  AdmissionTicket(Admission* owner, uint64_t bytes) : owner_(owner), bytes_(bytes) {}
  Admission* owner_ = nullptr;
  uint64_t bytes_ = 0;
};

// Thread-safe. Must outlive every ticket it issued.
class Admission {
 public:
  explicit Admission(AdmissionLimits limits);

  // Reserves one request slot and `bytes`. RESOURCE_EXHAUSTED naming the limit and its flag when
  // either budget would be exceeded (nothing is reserved then). A request bigger than the whole
  // byte budget is refused even when nothing else is in flight.
  absl::StatusOr<AdmissionTicket> Acquire(uint64_t bytes);

  uint64_t bytes_in_use() const;
  int64_t requests_in_use() const;
  const AdmissionLimits& limits() const { return limits_; }

 private:
  friend class AdmissionTicket;
  void Release(uint64_t bytes);

  const AdmissionLimits limits_;
  mutable std::mutex mu_;
  uint64_t bytes_ = 0;    // GUARDED_BY(mu_)
  int64_t requests_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_ADMISSION_H_
