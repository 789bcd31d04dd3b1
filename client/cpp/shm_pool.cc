#include "client/cpp/shm_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tensorprep::client {

// One registered object, mapped. Owned by the pool; slots point to it.
struct ShmRegionState {
  std::string handle;
  uint8_t* base = nullptr;
  uint64_t size = 0;
  ShmArena arena;
  explicit ShmRegionState(uint64_t bytes) : size(bytes), arena(bytes) {}
  ~ShmRegionState() {
    if (base != nullptr) munmap(base, size);
  }
};

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// NAME_MAX for the object's file in /dev/shm, with its leading '/'.
constexpr size_t kMaxKeyBytes = 255;

absl::Status Local(const std::string& what, int err) {
  return absl::FailedPreconditionError(
      absl::StrCat("shared memory cannot be set up here: ", what, ": ", std::strerror(err)));
}

absl::StatusOr<std::string> RandomBytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = getrandom(out.data() + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Local("getrandom", errno);
    }
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string Hex(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

// Closes the descriptor and removes the name when the region is set up (or fails).
class ObjectName {
 public:
  ObjectName(std::string key, int fd) : key_(std::move(key)), fd_(fd) {}
  ~ObjectName() {
    close(fd_);
    shm_unlink(key_.c_str());
  }
  int fd() const { return fd_; }

 private:
  std::string key_;
  int fd_;
};

}  // namespace

uint64_t DTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_UINT8:
      return 1;
    case v1::DTYPE_FLOAT16:
      return 2;
    case v1::DTYPE_INT32:
    case v1::DTYPE_FLOAT32:
      return 4;
    default:
      return 0;
  }
}

// ---- ShmArena ---------------------------------------------------------------------------------

ShmArena::ShmArena(uint64_t size) : size_(size) {
  if (size > 0) free_.emplace(0, size);
}

uint64_t ShmArena::RoundUp(uint64_t bytes) {
  if (bytes == 0) return kShmAlign;
  return (bytes + kShmAlign - 1) / kShmAlign * kShmAlign;
}

std::optional<uint64_t> ShmArena::Alloc(uint64_t bytes) {
  if (bytes > size_) return std::nullopt;
  const uint64_t n = RoundUp(bytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < n) continue;
    const uint64_t offset = it->first, left = it->second - n;
    free_.erase(it);
    if (left > 0) free_.emplace(offset + n, left);
    used_ += n;
    return offset;
  }
  return std::nullopt;
}

absl::Status ShmArena::Free(uint64_t offset, uint64_t bytes) {
  const uint64_t n = RoundUp(bytes);
  if (offset % kShmAlign != 0 || offset > size_ || n > size_ - offset) {
    return absl::InternalError(
        absl::StrCat("free of [", offset, ", ", offset + n, ") outside the arena of ", size_));
  }
  auto next = free_.lower_bound(offset);
  auto prev = next == free_.begin() ? free_.end() : std::prev(next);
  if ((prev != free_.end() && prev->first + prev->second > offset) ||
      (next != free_.end() && offset + n > next->first)) {
    return absl::InternalError(absl::StrCat("double free of [", offset, ", ", offset + n, ")"));
  }
  used_ -= n;
  uint64_t start = offset, length = n;
  if (prev != free_.end() && prev->first + prev->second == offset) {
    start = prev->first;
    length += prev->second;
    free_.erase(prev);
  }
  if (next != free_.end() && offset + n == next->first) {
    length += next->second;
    free_.erase(next);
  }
  free_.emplace(start, length);
  return absl::OkStatus();
}

uint64_t ShmArena::largest_free() const {
  uint64_t best = 0;
  for (const auto& [offset, length] : free_) best = std::max(best, length);
  return best;
}

// ---- ShmSlot ----------------------------------------------------------------------------------

ShmSlot::ShmSlot(ShmSlot&& other) noexcept
    : pool_(std::move(other.pool_)),
      region_(std::exchange(other.region_, nullptr)),
      offset_(std::exchange(other.offset_, 0)),
      size_(std::exchange(other.size_, 0)) {}

ShmSlot& ShmSlot::operator=(ShmSlot&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::move(other.pool_);
    region_ = std::exchange(other.region_, nullptr);
    offset_ = std::exchange(other.offset_, 0);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

ShmSlot::~ShmSlot() { Release(); }

uint8_t* ShmSlot::data() const { return region_ == nullptr ? nullptr : region_->base + offset_; }

v1::SharedMemoryRef ShmSlot::Ref(uint64_t bytes) const {
  v1::SharedMemoryRef ref;
  if (region_ == nullptr) return ref;
  ref.set_region(region_->handle);
  ref.set_offset(offset_);
  ref.set_byte_size(bytes == 0 ? size_ : bytes);
  return ref;
}

void ShmSlot::Release() {
  if (region_ == nullptr) return;
  pool_->FreeBlock(region_, offset_, size_);
  region_ = nullptr;
  offset_ = size_ = 0;
  pool_.reset();  // may destroy the pool, and unmap, when this was the last reference
}

// ---- Buffer -----------------------------------------------------------------------------------

Buffer Buffer::Owned(std::string bytes) {
  Buffer b;
  b.size_ = bytes.size();
  b.owned_ = std::move(bytes);
  return b;
}

Buffer Buffer::InSlot(ShmSlot slot, uint64_t size) {
  Buffer b;
  b.size_ = static_cast<size_t>(std::min(size, slot.size()));
  b.slot_ = std::move(slot);
  return b;
}

Buffer Buffer::Copy() const {
  return Owned(std::string(reinterpret_cast<const char*>(data()), size_));
}

// ---- ShmPool ----------------------------------------------------------------------------------

ShmPool::ShmPool(const ShmPoolOptions& options, ShmServerCalls calls)
    : options_(options), calls_(std::move(calls)) {}

absl::StatusOr<std::shared_ptr<ShmPool>> ShmPool::Create(const ShmPoolOptions& options,
                                                         ShmServerCalls calls,
                                                         ShmSetupFailure* failure) {
  ShmSetupFailure local_failure = ShmSetupFailure::kNone;
  if (failure == nullptr) failure = &local_failure;
  *failure = ShmSetupFailure::kNone;
  ShmPoolOptions o = options;
  o.initial_bytes = ShmArena::RoundUp(std::max<uint64_t>(o.initial_bytes, kShmNonceBytes));
  if (o.max_bytes < o.initial_bytes || o.max_regions < 1 || !calls.register_region) {
    *failure = ShmSetupFailure::kLocal;
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory pool: need initial_bytes <= max_bytes and max_regions >= 1, got ",
        o.initial_bytes, ", ", o.max_bytes, " and ", o.max_regions));
  }
  std::shared_ptr<ShmPool> pool(new ShmPool(o, std::move(calls)));
  auto region = pool->NewRegion(o.initial_bytes, failure);
  if (!region.ok()) return region.status();
  std::lock_guard<std::mutex> lock(pool->mu_);
  pool->regions_.push_back(std::move(*region));
  return pool;
}

ShmPool::~ShmPool() { Close(); }  // the regions unmap themselves

absl::StatusOr<std::unique_ptr<ShmRegionState>> ShmPool::NewRegion(uint64_t bytes,
                                                                   ShmSetupFailure* failure) {
  *failure = ShmSetupFailure::kLocal;
  const std::string& prefix = options_.key_prefix;
  if (prefix.empty() || prefix[0] != '/' || prefix.find('/', 1) != std::string::npos) {
    return absl::FailedPreconditionError(
        "shared memory cannot be set up here: the server's key prefix is not '/' followed by a "
        "name without '/'");
  }
  auto random = RandomBytes(12);
  if (!random.ok()) return random.status();
  const std::string key = absl::StrCat(prefix, getpid(), "-", Hex(*random));
  if (key.size() > kMaxKeyBytes) {
    return absl::FailedPreconditionError(
        "shared memory cannot be set up here: the server's key prefix is too long for an "
        "object name");
  }
  // shm_open adds O_NOFOLLOW and O_CLOEXEC; O_EXCL makes sure the object is a new one.
  const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) return Local("cannot create a shared-memory object", errno);
  ObjectName name(key, fd);  // registered or not, the name goes when this returns
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    return Local(absl::StrFormat("cannot size a %.1f MB object", bytes / double(kMiB)), errno);
  }
  // Reserve the pages now: on a full /dev/shm a later write would raise SIGBUS instead.
  if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
      err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    return Local(absl::StrFormat("cannot reserve %.1f MB of shared memory", bytes / double(kMiB)),
                 err);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Local("cannot map a shared-memory object", errno);
  auto region = std::make_unique<ShmRegionState>(bytes);
  region->base = static_cast<uint8_t*>(p);
  auto nonce = RandomBytes(kShmNonceBytes);
  if (!nonce.ok()) return nonce.status();
  std::memcpy(region->base, nonce->data(), nonce->size());
  *failure = ShmSetupFailure::kServer;
  auto handle = calls_.register_region(key, bytes, *nonce);
  if (!handle.ok()) return handle.status();
  region->handle = std::move(*handle);
  *failure = ShmSetupFailure::kNone;
  return region;
}

void ShmPool::Close() {
  std::lock_guard<std::mutex> grow(grow_mu_);  // no registration in flight while closing
  std::vector<std::string> handles;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    quarantine_.clear();
    for (const auto& r : regions_) handles.push_back(r->handle);
  }
  if (calls_.unregister_region) {
    for (const std::string& h : handles) calls_.unregister_region(h).IgnoreError();
  }
  calls_ = ShmServerCalls();  // the client that supplied them may go now
}

bool ShmPool::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

std::vector<ShmPool::Held> ShmPool::AllocLocked(const std::vector<uint64_t>& sizes) {
  std::vector<Held> got;
  got.reserve(sizes.size());
  for (uint64_t n : sizes) {
    bool placed = false;
    for (const auto& region : regions_) {
      if (auto offset = region->arena.Alloc(n)) {
        got.push_back({region.get(), *offset, n});
        placed = true;
        break;
      }
    }
    if (!placed) {
      // All or nothing: hand back what this call took.
      for (const Held& h : got) h.region->arena.Free(h.offset, h.bytes).IgnoreError();
      return {};
    }
  }
  return got;
}

std::vector<ShmSlot> ShmPool::ToSlots(const std::vector<Held>& held) {
  std::vector<ShmSlot> slots(held.size());
  for (size_t i = 0; i < held.size(); ++i) {
    slots[i].pool_ = shared_from_this();
    slots[i].region_ = held[i].region;
    slots[i].offset_ = held[i].offset;
    slots[i].size_ = held[i].bytes;
  }
  return slots;
}

absl::StatusOr<std::vector<ShmSlot>> ShmPool::AllocMany(const std::vector<uint64_t>& asked) {
  std::vector<uint64_t> sizes;
  sizes.reserve(asked.size());
  uint64_t need = 0;
  for (uint64_t n : asked) {
    sizes.push_back(std::max<uint64_t>(n, 1));
    need += ShmArena::RoundUp(sizes.back());
  }
  if (sizes.empty()) return std::vector<ShmSlot>();
  const absl::Status closed = absl::FailedPreconditionError("the shared-memory pool is closed");
  // Slots are made outside mu_: each holds a reference to the pool, and none may be dropped
  // (possibly the last one) while the lock is held.
  std::vector<Held> got;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return closed;
    got = AllocLocked(sizes);
  }
  if (!got.empty()) return ToSlots(got);
  std::lock_guard<std::mutex> grow(grow_mu_);
  // Another thread may have grown the pool or freed slots meanwhile.
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return closed;
    got = AllocLocked(sizes);
  }
  if (!got.empty()) return ToSlots(got);
  if (ReclaimQuarantine()) {
    std::lock_guard<std::mutex> lock(mu_);
    got = AllocLocked(sizes);
  }
  if (!got.empty()) return ToSlots(got);
  if (absl::Status s = Grow(need); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    got = AllocLocked(sizes);
  }
  if (got.empty()) return absl::ResourceExhaustedError("the shared-memory pool is full");
  return ToSlots(got);
}

absl::StatusOr<ShmSlot> ShmPool::Alloc(uint64_t bytes) {
  auto slots = AllocMany({bytes});
  if (!slots.ok()) return slots.status();
  return std::move((*slots)[0]);
}

absl::Status ShmPool::Grow(uint64_t need) {
  uint64_t total = 0, in_use = 0;
  size_t count;
  {
    std::lock_guard<std::mutex> lock(mu_);
    count = regions_.size();
    for (const auto& r : regions_) {
      total += r->size;
      in_use += r->arena.used();
    }
  }
  // At least the first region's size and what is needed, in whole MiB, and as much as the pool
  // has already (so that the pool doubles: few regions, far below the server's per-client
  // limit, even for large batches), but never past the pool's cap.
  uint64_t size = std::max({options_.initial_bytes, (need + kMiB - 1) / kMiB * kMiB, total});
  if (options_.max_bytes > total) size = std::min(size, std::max(need, options_.max_bytes - total));
  if (count >= options_.max_regions || total + size > options_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the shared-memory pool is full (%.1f MB in %d regions, %.1f MB in use; %.1f MB more "
        "would pass the limit of %.1f MB / %d regions): release results sooner or raise the "
        "pool's maximum",
        total / double(kMiB), count, in_use / double(kMiB), need / double(kMiB),
        options_.max_bytes / double(kMiB), options_.max_regions));
  }
  if (!grow_refused_.empty()) return absl::ResourceExhaustedError(grow_refused_);
  ShmSetupFailure failure;
  auto region = NewRegion(size, &failure);
  if (!region.ok()) {
    if (failure == ShmSetupFailure::kServer) {
      // The server's answer will not change soon: stop asking it on every short allocation.
      grow_refused_ = absl::StrCat("the server refused another shared-memory region (",
                                   region.status().message(), ")");
      return absl::ResourceExhaustedError(grow_refused_);
    }
    return absl::ResourceExhaustedError(region.status().message());
  }
  // Close takes grow_mu_, which the caller holds, and the caller saw the pool open after taking
  // it: the pool is still open here.
  std::lock_guard<std::mutex> lock(mu_);
  regions_.push_back(std::move(*region));
  return absl::OkStatus();
}

bool ShmPool::ReclaimQuarantine() {
  std::vector<std::string> handles;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (quarantine_.empty() || !calls_.requests_in_use) return false;
    std::set<std::string> unique;
    for (const Held& h : quarantine_) unique.insert(h.region->handle);
    handles.assign(unique.begin(), unique.end());
  }
  auto in_use = calls_.requests_in_use(handles);
  if (!in_use.ok()) return false;  // try again at the next shortage
  bool freed = false;
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Held> keep;
  for (const Held& h : quarantine_) {
    auto it = in_use->find(h.region->handle);
    if (it != in_use->end() && it->second == 0) {
      h.region->arena.Free(h.offset, h.bytes).IgnoreError();
      freed = true;
    } else {
      keep.push_back(h);
    }
  }
  quarantine_ = std::move(keep);
  return freed;
}

void ShmPool::FreeBlock(ShmRegionState* region, uint64_t offset, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  // A failure here would be a double free: a bug in the pool, never the caller's data.
  region->arena.Free(offset, bytes).IgnoreError();
}

void ShmPool::Quarantine(std::vector<ShmSlot> slots) {
  std::vector<std::shared_ptr<ShmPool>> refs;  // dropped after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  for (ShmSlot& s : slots) {
    if (!s) continue;
    // After Close nothing is reused any more, so a quarantined block may simply stay taken.
    if (!closed_) quarantine_.push_back({s.region_, s.offset_, s.size_});
    s.region_ = nullptr;
    s.offset_ = s.size_ = 0;
    refs.push_back(std::move(s.pool_));
  }
}

std::optional<v1::SharedMemoryRef> ShmPool::Locate(const void* data, uint64_t bytes) const {
  if (data == nullptr || bytes == 0) return std::nullopt;
  const auto addr = reinterpret_cast<uintptr_t>(data);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& r : regions_) {
    const auto base = reinterpret_cast<uintptr_t>(r->base);
    if (addr >= base && addr - base <= r->size && bytes <= r->size - (addr - base)) {
      v1::SharedMemoryRef ref;
      ref.set_region(r->handle);
      ref.set_offset(addr - base);
      ref.set_byte_size(bytes);
      return ref;
    }
  }
  return std::nullopt;
}

ShmPoolStats ShmPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  ShmPoolStats s;
  s.regions = regions_.size();
  s.quarantined_slots = quarantine_.size();
  for (const auto& r : regions_) {
    s.mapped_bytes += r->size;
    s.in_use_bytes += r->arena.used();
  }
  return s;
}

}  // namespace tensorprep::client
