// Error plumbing shared by every layer below the RPC layer.
#ifndef TENSORPREP_KERNELS_COMMON_STATUS_H_
#define TENSORPREP_KERNELS_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
// Debian 12's abseil predates ABSL's own macro.
#define TP_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status tp_status_ = (expr);           \
    if (!tp_status_.ok()) return tp_status_;      \
  } while (0)

#define TP_CONCAT_INNER_(a, b) a##b
#define TP_CONCAT_(a, b) TP_CONCAT_INNER_(a, b)

// `TP_ASSIGN_OR_RETURN(auto x, StatusOrExpr());` assigns the value or returns the error.
#define TP_ASSIGN_OR_RETURN(lhs, expr) \
  TP_ASSIGN_OR_RETURN_IMPL_(TP_CONCAT_(tp_statusor_, __LINE__), lhs, expr)
#define TP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

#endif  // TENSORPREP_KERNELS_COMMON_STATUS_H_
