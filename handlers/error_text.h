// Caller-supplied strings (request ids, aux names) quoted into error messages with a bound.
// A status message travels as gRPC trailing metadata, and clients refuse metadata past a few
// KiB: echoing a long id whole would turn an INVALID_ARGUMENT into the client's own
// RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit"), which a retrying client
// would retry forever. Every error message that names a caller's string goes through here.
// Header-only, no dependencies beyond the standard library; pure functions, thread-safe.
#ifndef TENSORPREP_HANDLERS_ERROR_TEXT_H_
#define TENSORPREP_HANDLERS_ERROR_TEXT_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace tensorprep::handlers {

// Bytes of a caller's string that an error message quotes.
inline constexpr size_t kQuotedPrefixBytes = 64;

// `s` in single quotes when it has at most kQuotedPrefixBytes bytes ("'r1'"); otherwise its
// first bytes (cut back to a UTF-8 character boundary, so that the message stays valid UTF-8),
// an ellipsis and its length: "'abc...' (5000 bytes)". The result is at most
// kQuotedPrefixBytes + 32 bytes long whatever `s` is.
inline std::string QuoteCallerString(std::string_view s) {
  if (s.size() <= kQuotedPrefixBytes) {
    std::string out;
    out.reserve(s.size() + 2);
    out += '\'';
    out.append(s);
    out += '\'';
    return out;
  }
  size_t cut = kQuotedPrefixBytes;
  // Step back over UTF-8 continuation bytes (10xxxxxx) so a multi-byte character is not split.
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  std::string out;
  out.reserve(cut + 32);
  out += '\'';
  out.append(s.substr(0, cut));
  out += "...' (";
  out += std::to_string(s.size());
  out += " bytes)";
  return out;
}

// The prefix of every per-request error: "request 'r1': ". Empty for an empty id.
inline std::string RequestIdPrefix(std::string_view id) {
  if (id.empty()) return std::string();
  return "request " + QuoteCallerString(id) + ": ";
}

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_ERROR_TEXT_H_
