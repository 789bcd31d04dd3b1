#include "server/admission.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tensorprep::server {

AdmissionTicket::AdmissionTicket(AdmissionTicket&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

AdmissionTicket& AdmissionTicket::operator=(AdmissionTicket&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

AdmissionTicket::~AdmissionTicket() { Release(); }

void AdmissionTicket::Release() {
  if (owner_ != nullptr) owner_->Release(bytes_);
  owner_ = nullptr;
  bytes_ = 0;
}

Admission::Admission(AdmissionLimits limits) : limits_(limits) {}

absl::StatusOr<AdmissionTicket> Admission::Acquire(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (requests_ >= limits_.max_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is at its limit of ", limits_.max_requests,
        " requests in flight (--max-inflight-requests); retry later"));
  }
  if (bytes > limits_.max_bytes - bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", bytes, " bytes in flight, but the server's in-flight budget (",
        limits_.max_bytes, " bytes, --max-inflight-mb) has ", limits_.max_bytes - bytes_,
        " free", bytes > limits_.max_bytes ? "; it can never fit" : "; retry later"));
  }
  bytes_ += bytes;
  ++requests_;
  return AdmissionTicket(this, bytes);
}

void Admission::Release(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  bytes_ -= bytes;
  --requests_;
}

uint64_t Admission::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

int64_t Admission::requests_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

}  // namespace tensorprep::server
