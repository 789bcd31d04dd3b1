// Backends run a Plan on one kind of device. The CPU backend always exists; a CUDA backend exists
// when the build has CUDA (it may still find no usable device at run time).
#ifndef TENSORPREP_HANDLERS_BACKEND_H_
#define TENSORPREP_HANDLERS_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "handlers/plan.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::handlers {

enum class DeviceKind : int { kCpu = 0, kCuda = 1 };
const char* DeviceKindName(DeviceKind d);  // "cpu", "cuda"

struct ExecInputs {
  kernels::ConstTensorView main;
  std::vector<kernels::ConstTensorView> aux;
};

// Pre-sized by the caller: main has the plan's output dtype and the input's shape; each aux keeps
// its input dtype and shape.
struct ExecOutputs {
  kernels::TensorView main;
  std::vector<kernels::TensorView> aux;
};

struct StepTiming {
  KernelKind kind = KernelKind::kWarp;
  double seconds = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  // Whether the device can run work now, with a human-readable name and, if not, why.
  virtual bool usable() const = 0;
  virtual std::string name() const = 0;
  virtual std::string detail() const = 0;
  // Whether this backend has a kernel for `kind`. The processor routes a plan only to a backend
  // that implements every step's kind, and ListOps lists an op's devices from it.
  virtual bool Implements(KernelKind) const { return true; }
  // Runs `plan` over `in`, writing `out` (which must not overlap `in`). Appends one timing per
  // step to `timings` (may be null). Errors are returned, never thrown; a device error fails only
  // this call. Thread-safe: many calls may run at once.
  virtual absl::Status Execute(const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                               std::vector<StepTiming>* timings) = 0;
};

// Runs plans with the CPU kernels, spreading each step over `pool`.
class CpuBackend : public Backend {
 public:
  // `pool` is not owned and must outlive the backend.
  explicit CpuBackend(kernels::ThreadPool* pool) : pool_(pool) {}
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  bool usable() const override { return true; }
  std::string name() const override;
  std::string detail() const override { return ""; }
  absl::Status Execute(const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                       std::vector<StepTiming>* timings) override;

 private:
  kernels::ThreadPool* pool_;
};

// The CUDA backend when built with CUDA, else null. Never fails: a backend without a usable
// device reports usable() == false with the reason in detail().
std::unique_ptr<Backend> MakeCudaBackend();

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_BACKEND_H_
