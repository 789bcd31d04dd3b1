// Bearer token, TLS and mutual TLS over real gRPC on loopback, with certificates made by the
// openssl command line at test start (a throw-away CA, a server and two clients).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "server/config.h"
#include "server/security.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using Code = absl::StatusCode;

constexpr char kToken[] = "s3cret-Token_0123456789";

v1::ProcessRequest FlipRequest() {
  v1::ProcessRequest r;
  auto* t = r.mutable_images();
  t->set_dtype(v1::DTYPE_UINT8);
  for (int64_t d : {1, 2, 3, 1}) t->add_shape(d);
  t->set_data(std::string("\x01\x02\x03\x04\x05\x06", 6));
  r.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  return r;
}
const std::string kFlipped("\x03\x02\x01\x06\x05\x04", 6);

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// ---- pieces -----------------------------------------------------------------------------------

TEST(ConstantTimeEqualsTest, ComparesWholeValues) {
  EXPECT_TRUE(server::ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(server::ConstantTimeEquals("", ""));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", ""));
  EXPECT_FALSE(server::ConstantTimeEquals("", "a"));
  EXPECT_FALSE(server::ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(CheckBearerTokenTest, AcceptsOnlyTheExactTokenAndNeverEchoesIt) {
  using Meta = std::multimap<grpc::string_ref, grpc::string_ref>;
  EXPECT_TRUE(server::CheckBearerToken(Meta{}, "").ok()) << "no token configured";
  const std::string good = std::string("Bearer ") + kToken;
  const std::string lower = std::string("bearer ") + kToken;
  EXPECT_TRUE(server::CheckBearerToken(Meta{{"authorization", good}}, kToken).ok());
  EXPECT_TRUE(server::CheckBearerToken(Meta{{"authorization", lower}}, kToken).ok());
  const std::string wrong = std::string("Bearer ") + kToken + "x";
  const std::string basic = std::string("Basic ") + kToken;
  const std::string bare = kToken;
  for (const Meta& m : {Meta{}, Meta{{"authorization", wrong}}, Meta{{"authorization", basic}},
                        Meta{{"authorization", bare}}, Meta{{"authorization", "Bearer"}},
                        Meta{{"authorization", "Bearer "}}, Meta{{"x-token", good}},
                        Meta{{"authorization", good}, {"authorization", good}}}) {
    const absl::Status s = server::CheckBearerToken(m, kToken);
    EXPECT_EQ(s.code(), Code::kUnauthenticated);
    EXPECT_EQ(s.message().find(kToken), std::string::npos) << s;
    EXPECT_EQ(s.message().rfind("authorization: ", 0), 0u) << s;
  }
}

TEST(SecurityConfigTest, FlagsAndEnvironmentAreParsedAndCheckedTogether) {
  char dir_template[] = "/tmp/tensorprep-config-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string token_file = dir + "/token";
  std::ofstream(token_file) << kToken << "\n";
  auto c = server::ParseConfig({"--auth-token-file", token_file, "--max-inflight-mb=64",
                                "--max-inflight-requests", "7", "--stream-inflight-mb", "3"},
                               {"TENSORPREP_MAX_TENSOR_MB=5"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->auth_token, kToken);
  EXPECT_EQ(c->max_inflight_mb, 64);
  EXPECT_EQ(c->max_inflight_requests, 7);
  EXPECT_EQ(c->stream_inflight_mb, 3);
  EXPECT_EQ(c->max_tensor_mb, 5);
  c = server::ParseConfig({}, {std::string("TENSORPREP_AUTH_TOKEN=") + kToken});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->auth_token, kToken);

  auto bad = server::ParseConfig({"--auth-token", "has space"}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("has space"), std::string::npos) << "token echoed";
  bad = server::ParseConfig({"--tls-cert", token_file}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--tls-cert and --tls-key"), std::string::npos);
  bad = server::ParseConfig({"--tls-client-ca", token_file}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--tls-client-ca"), std::string::npos);
  bad = server::ParseConfig({"--tls-cert", dir + "/missing", "--tls-key", token_file}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--tls-cert: cannot read"), std::string::npos);
  bad = server::ParseConfig({"--max-inflight-requests", "0"}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--max-inflight-requests"), std::string::npos);
  bad = server::ParseConfig({}, {"TENSORPREP_MAX_INFLIGHT_MB=lots"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("TENSORPREP_MAX_INFLIGHT_MB"), std::string::npos);
  std::remove(token_file.c_str());
  rmdir(dir.c_str());
}

TEST(ShutdownConfigTest, DrainDelayAndConnectionAgeFromFlagsAndEnvironment) {
  auto c = server::ParseConfig({}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->drain_delay_seconds, 0);
  EXPECT_EQ(c->max_connection_age_seconds, 0);
  EXPECT_EQ(c->max_connection_age_grace_seconds, 0);

  c = server::ParseConfig(
      {}, {"TENSORPREP_DRAIN_DELAY_SECONDS=10", "TENSORPREP_MAX_CONNECTION_AGE_SECONDS=300",
           "TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS=0.5"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->drain_delay_seconds, 10);
  EXPECT_EQ(c->max_connection_age_seconds, 300);
  EXPECT_EQ(c->max_connection_age_grace_seconds, 0.5);

  // Flags win over the environment; both spellings of a flag work.
  c = server::ParseConfig(
      {"--drain-delay-seconds", "2.5", "--max-connection-age-seconds=1",
       "--max-connection-age-grace-seconds", "0"},
      {"TENSORPREP_DRAIN_DELAY_SECONDS=10", "TENSORPREP_MAX_CONNECTION_AGE_SECONDS=300",
       "TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS=7"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->drain_delay_seconds, 2.5);
  EXPECT_EQ(c->max_connection_age_seconds, 1);
  EXPECT_EQ(c->max_connection_age_grace_seconds, 0);
  c = server::ParseConfig(
      {"--max-connection-age-seconds", "0.001", "--drain-delay-seconds", "3600"}, {});
  ASSERT_TRUE(c.ok()) << c.status();

  // Each bad value is refused with the flag or variable's name, what was expected and what came.
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad_flags = {
      {{"--drain-delay-seconds", "-1"},
       "--drain-delay-seconds: expected seconds in [0, 3600], got '-1'"},
      {{"--drain-delay-seconds", "3601"},
       "--drain-delay-seconds: expected seconds in [0, 3600], got '3601'"},
      {{"--drain-delay-seconds", "soon"},
       "--drain-delay-seconds: expected seconds in [0, 3600], got 'soon'"},
      {{"--drain-delay-seconds", "nan"},
       "--drain-delay-seconds: expected seconds in [0, 3600], got 'nan'"},
      {{"--drain-delay-seconds"}, "--drain-delay-seconds: expected a value"},
      {{"--max-connection-age-seconds", "-5"},
       "--max-connection-age-seconds: expected 0 (no limit) or seconds in [0.001, 1000000], got "
       "'-5'"},
      {{"--max-connection-age-seconds", "0.0001"},
       "--max-connection-age-seconds: expected 0 (no limit) or seconds in [0.001, 1000000], got "
       "'0.0001'"},
      {{"--max-connection-age-seconds", "inf"},
       "--max-connection-age-seconds: expected 0 (no limit) or seconds in [0.001, 1000000], got "
       "'inf'"},
      {{"--max-connection-age-seconds", "1", "--max-connection-age-grace-seconds", "1e7"},
       "--max-connection-age-grace-seconds: expected 0 (no limit) or seconds in [0.001, "
       "1000000], got '1e7'"},
      {{"--max-connection-age-grace-seconds", "5"},
       "--max-connection-age-grace-seconds: expected --max-connection-age-seconds too"},
  };
  for (const auto& [args, want] : bad_flags) {
    auto bad = server::ParseConfig(args, {});
    ASSERT_FALSE(bad.ok()) << args[0];
    EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(bad.status().message().rfind(want, 0), 0u) << bad.status();
  }
  for (const std::string& env :
       {"TENSORPREP_DRAIN_DELAY_SECONDS=", "TENSORPREP_DRAIN_DELAY_SECONDS=1h",
        "TENSORPREP_MAX_CONNECTION_AGE_SECONDS=-1",
        "TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS=x"}) {
    auto bad = server::ParseConfig({}, {env});
    ASSERT_FALSE(bad.ok()) << env;
    EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
    const std::string name = env.substr(0, env.find('='));
    EXPECT_EQ(bad.status().message().rfind(name + ": expected", 0), 0u) << bad.status();
  }
  // A grace from the environment without an age is refused too, naming the flag it needs.
  auto bad = server::ParseConfig({}, {"TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS=5"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--max-connection-age-seconds"), std::string::npos);

  // --help documents each flag with its variable.
  const std::string usage = server::Usage();
  for (const char* name :
       {"--drain-delay-seconds", "TENSORPREP_DRAIN_DELAY_SECONDS", "--max-connection-age-seconds",
        "TENSORPREP_MAX_CONNECTION_AGE_SECONDS", "--max-connection-age-grace-seconds",
        "TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS"}) {
    EXPECT_NE(usage.find(name), std::string::npos) << name;
  }
}

// ---- the token over a plaintext loopback channel ---------------------------------------------

TEST(TokenTest, EveryPreprocessorCallNeedsTheTokenButHealthDoesNot) {
  TestServerOptions o;
  o.service.auth_token = kToken;
  TestServer server(o);
  client::ClientOptions none;
  client::ClientOptions wrong;
  wrong.auth_token = std::string(kToken).substr(1);
  client::ClientOptions right;
  right.auth_token = kToken;
  for (const client::ClientOptions& opts : {none, wrong}) {
    client::Client c = server.MakeClient(opts);
    auto p = c.Process(FlipRequest());
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), Code::kUnauthenticated) << p.status();
    EXPECT_EQ(p.status().message().find(kToken + 1), std::string::npos);
    auto l = c.ListOps();
    EXPECT_EQ(l.status().code(), Code::kUnauthenticated) << l.status();
    const v1::ProcessRequest r = FlipRequest();
    int responses = 0;
    absl::Status s = c.Stream({&r}, 1, [&](v1::ProcessResponse&) { ++responses; });
    EXPECT_EQ(s.code(), Code::kUnauthenticated) << s;
    EXPECT_EQ(responses, 0);
    auto h = c.Health("tensorprep.v1.Preprocessor");
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(*h, "SERVING");
  }
  client::Client c = server.MakeClient(right);
  auto p = c.Process(FlipRequest());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->images().data(), kFlipped);
  EXPECT_TRUE(c.ListOps().ok());
  const v1::ProcessRequest r = FlipRequest();
  std::string streamed;
  absl::Status s = c.Stream({&r}, 1, [&](v1::ProcessResponse& resp) {
    streamed = resp.images().data();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(streamed, kFlipped);
  // Refusals are counted like any other outcome.
  double unauthenticated = 0;
  for (const auto& f : server.registry().Collect()) {
    if (f.name != "tensorprep_requests_total") continue;
    for (const auto& m : f.metric) {
      for (const auto& l : m.label) {
        if (l.name == "code" && l.value == "UNAUTHENTICATED") unauthenticated += m.counter.value;
      }
    }
  }
  EXPECT_EQ(unauthenticated, 6);
}

// ---- TLS and mutual TLS ----------------------------------------------------------------------

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/tensorprep-tls-XXXXXX";
    dir_ = mkdtemp(dir_template);
    // Two CAs; a server certificate for localhost / 127.0.0.1 and a client certificate from
    // the first, and a client certificate from the second (which the server does not trust).
    const std::string script =
        "set -e; cd '" + dir_ + "'\n"
        "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key "
        "2>/dev/null; }\n"
        "ca() { key $1; openssl req -x509 -new -key $1.key -subj /CN=$1 -days 2 -out $1.crt; }\n"
        "leaf() { key $1; openssl req -new -key $1.key -subj /CN=$3 -out $1.csr; "
        "printf 'subjectAltName=%s\\nextendedKeyUsage=%s\\n' \"$4\" \"$5\" > $1.ext; "
        "openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 "
        "-extfile $1.ext -out $1.crt 2>/dev/null; }\n"
        "ca ca; ca other_ca\n"
        "leaf server ca localhost DNS:localhost,IP:127.0.0.1 serverAuth\n"
        "leaf client ca client DNS:client clientAuth\n"
        "leaf stranger other_ca stranger DNS:stranger clientAuth\n";
    const std::string path = dir_ + "/make.sh";
    std::ofstream(path) << script;
    ASSERT_EQ(std::system(("bash '" + path + "'").c_str()), 0) << "openssl failed";
  }
  static void TearDownTestSuite() {
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  static std::string Pem(const std::string& name) { return ReadFile(dir_ + "/" + name); }

  static server::TlsPem ServerPem(bool mutual) {
    server::TlsPem pem;
    pem.cert_chain = Pem("server.crt");
    pem.private_key = Pem("server.key");
    if (mutual) pem.client_ca = Pem("ca.crt");
    return pem;
  }
  static client::ClientOptions Tls(const std::string& cert = "") {
    client::ClientOptions o;
    o.tls = true;
    o.tls_root_certs = Pem("ca.crt");
    if (!cert.empty()) {
      o.tls_cert_chain = Pem(cert + ".crt");
      o.tls_private_key = Pem(cert + ".key");
    }
    o.timeout = std::chrono::milliseconds(10000);
    return o;
  }
  static void ExpectWorks(const client::Client& c) {
    auto p = c.Process(FlipRequest());
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->images().data(), kFlipped);
  }
  static void ExpectRefused(const client::Client& c) {
    auto p = c.Process(FlipRequest());
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), Code::kUnavailable) << p.status();
  }

  static std::string dir_;
};
std::string TlsTest::dir_;

TEST_F(TlsTest, ServerTlsServesTlsClientsThatTrustItsCaOnly) {
  TestServerOptions o;
  o.tls = ServerPem(false);
  TestServer server(o);
  ExpectWorks(server.MakeClient(Tls()));
  // Plaintext client, and a TLS client that trusts another CA.
  client::ClientOptions plain;
  plain.timeout = std::chrono::milliseconds(5000);
  ExpectRefused(server.MakeClient(plain));
  client::ClientOptions wrong_ca = Tls();
  wrong_ca.tls_root_certs = Pem("other_ca.crt");
  ExpectRefused(server.MakeClient(wrong_ca));
  // The name checked can be overridden, and a wrong one is refused.
  client::ClientOptions named = Tls();
  named.tls_server_name = "localhost";
  ExpectWorks(server.MakeClient(named));
  named.tls_server_name = "not-the-server";
  ExpectRefused(server.MakeClient(named));
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheTrustedCa) {
  TestServerOptions o;
  o.tls = ServerPem(true);
  TestServer server(o);
  ExpectWorks(server.MakeClient(Tls("client")));
  ExpectRefused(server.MakeClient(Tls()));            // no client certificate
  ExpectRefused(server.MakeClient(Tls("stranger")));  // signed by a CA the server does not trust
}

TEST_F(TlsTest, TokenAndMutualTlsTogether) {
  TestServerOptions o;
  o.tls = ServerPem(true);
  o.service.auth_token = kToken;
  TestServer server(o);
  auto p = server.MakeClient(Tls("client")).Process(FlipRequest());
  EXPECT_EQ(p.status().code(), Code::kUnauthenticated) << p.status();
  client::ClientOptions both = Tls("client");
  both.auth_token = kToken;
  ExpectWorks(server.MakeClient(both));
  auto h = server.MakeClient(Tls("client")).Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, "SERVING");
}

}  // namespace
}  // namespace tensorprep::testing
