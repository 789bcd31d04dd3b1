#include "server/security.h"

#include <grpcpp/security/server_credentials.h>

#include <cstddef>
#include <iterator>

namespace tensorprep::server {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walks the expected value's length whatever `b` holds; a length difference is folded into the
  // same accumulator instead of returning early.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    const unsigned char x = static_cast<unsigned char>(a[i]);
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

absl::Status CheckBearerToken(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                              const std::string& token) {
  if (token.empty()) return absl::OkStatus();
  const auto range = metadata.equal_range(kAuthMetadataKey);
  if (range.first == range.second) {
    return absl::UnauthenticatedError(
        "authorization: expected metadata 'authorization: Bearer <token>', got none");
  }
  if (std::next(range.first) != range.second) {
    return absl::UnauthenticatedError(
        "authorization: expected one 'authorization' metadata entry, got several");
  }
  const absl::string_view value(range.first->second.data(), range.first->second.size());
  constexpr size_t kPrefix = sizeof(kBearerPrefix) - 1;
  // The scheme name is case-insensitive (RFC 7235); the token is not.
  if (value.size() < kPrefix || !(value.substr(0, 6) == "Bearer" || value.substr(0, 6) == "bearer") ||
      value[6] != ' ') {
    return absl::UnauthenticatedError(
        "authorization: expected the 'Bearer' scheme ('authorization: Bearer <token>')");
  }
  if (!ConstantTimeEquals(token, value.substr(kPrefix))) {
    return absl::UnauthenticatedError("authorization: the bearer token is not valid");
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsPem& pem) {
  if (pem.cert_chain.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      pem.client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pem.client_ca;
  options.pem_key_cert_pairs.push_back({pem.private_key, pem.cert_chain});
  return grpc::SslServerCredentials(options);
}

}  // namespace tensorprep::server
