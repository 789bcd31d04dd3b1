// The one place where absl::Status becomes grpc::Status.
#ifndef TENSORPREP_SERVER_STATUS_UTIL_H_
#define TENSORPREP_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tensorprep::server {

grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_STATUS_UTIL_H_
