// Transport security and call authentication: TLS / mutual-TLS server credentials and the bearer
// token every tensorprep.v1.Preprocessor call must carry when one is configured. Health checks,
// reflection and /metrics are separate services and never ask for the token.
#ifndef TENSORPREP_SERVER_SECURITY_H_
#define TENSORPREP_SERVER_SECURITY_H_

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tensorprep::server {

// The metadata key and scheme a client sends the token with: "authorization: Bearer <token>".
inline constexpr char kAuthMetadataKey[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";

// True when `a` equals `b`. Runs in time that depends on the lengths only, never on where the
// first differing byte is, so a caller cannot find the token byte by byte by timing refusals.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Checks the call's metadata for `authorization: Bearer <token>`. OK when `token` is empty (no
// token configured) or when it matches; UNAUTHENTICATED otherwise. The message says what was
// wrong (missing, wrong scheme, wrong token) and never contains the token or what was sent.
// Thread-safe.
absl::Status CheckBearerToken(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                              const std::string& token);

// PEM contents (not file names).
struct TlsPem {
  std::string cert_chain;
  std::string private_key;
  std::string client_ca;  // non-empty: require and verify client certificates (mutual TLS)
};

// Insecure credentials when `pem.cert_chain` is empty, else TLS (mutual when client_ca is set).
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsPem& pem);

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_SECURITY_H_
