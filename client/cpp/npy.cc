#include "client/cpp/npy.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tensorprep::client {

namespace {

constexpr char kMagic[] = "\x93NUMPY";

// The value of `key` in the header dict, e.g. 'descr': '<f4' -> <f4 (quotes kept for strings).
absl::StatusOr<std::string> HeaderValue(const std::string& header, const std::string& key,
                                        const std::string& what) {
  const std::string needle = absl::StrCat("'", key, "':");
  const size_t at = header.find(needle);
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": .npy header has no '", key, "'"));
  }
  size_t start = at + needle.size();
  while (start < header.size() && header[start] == ' ') ++start;
  size_t end = start;
  if (header[start] == '(') {
    end = header.find(')', start);
    if (end == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": malformed .npy shape"));
    }
    return header.substr(start, end - start + 1);
  }
  while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
  return std::string(absl::StripAsciiWhitespace(header.substr(start, end - start)));
}

absl::StatusOr<v1::DType> DTypeFromDescr(const std::string& descr, const std::string& what) {
  if (descr == "'|u1'" || descr == "'<u1'") return v1::DTYPE_UINT8;
  if (descr == "'<i4'") return v1::DTYPE_INT32;
  if (descr == "'<f4'") return v1::DTYPE_FLOAT32;
  if (descr == "'<f2'") return v1::DTYPE_FLOAT16;
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": dtype ", descr, " is not supported; expected uint8, <i4, <f4 or <f2"));
}

absl::StatusOr<std::string> DescrFromDType(int dtype) {
  switch (dtype) {
    case v1::DTYPE_UINT8:
      return std::string("|u1");
    case v1::DTYPE_INT32:
      return std::string("<i4");
    case v1::DTYPE_FLOAT32:
      return std::string("<f4");
    case v1::DTYPE_FLOAT16:
      return std::string("<f2");
    default:
      return absl::InvalidArgumentError(absl::StrCat("cannot write dtype ", dtype, " to .npy"));
  }
}

size_t ElementSize(v1::DType d) {
  switch (d) {
    case v1::DTYPE_UINT8:
      return 1;
    case v1::DTYPE_FLOAT16:
      return 2;
    default:
      return 4;
  }
}

}  // namespace

absl::StatusOr<v1::Tensor> ParseNpy(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a .npy file (bad magic)"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError(absl::StrCat(what, ": truncated"));
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = header_len << 8 | static_cast<unsigned char>(bytes[8 + i]);
    offset = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unsupported .npy version ", major));
  }
  if (bytes.size() < offset + header_len) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated .npy header"));
  }
  const std::string header = bytes.substr(offset, header_len);
  auto descr = HeaderValue(header, "descr", what);
  if (!descr.ok()) return descr.status();
  auto fortran = HeaderValue(header, "fortran_order", what);
  if (!fortran.ok()) return fortran.status();
  if (*fortran != "False") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": Fortran-order arrays are not supported; save a C-order copy"));
  }
  auto shape_text = HeaderValue(header, "shape", what);
  if (!shape_text.ok()) return shape_text.status();
  auto dtype = DTypeFromDescr(*descr, what);
  if (!dtype.ok()) return dtype.status();

  v1::Tensor t;
  t.set_dtype(*dtype);
  uint64_t elements = 1;
  const std::string inner(absl::StripSuffix(absl::StripPrefix(*shape_text, "("), ")"));
  for (absl::string_view part : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": bad shape ", *shape_text));
    }
    t.add_shape(d);
    elements *= static_cast<uint64_t>(d);
  }
  const size_t data_bytes = elements * ElementSize(*dtype);
  const size_t data_at = offset + header_len;
  if (bytes.size() - data_at != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected ", data_bytes,
                                                   " data bytes for shape ", *shape_text, ", got ",
                                                   bytes.size() - data_at));
  }
  t.set_data(bytes.substr(data_at));
  return t;
}

absl::StatusOr<v1::Tensor> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  return ParseNpy(buf.str(), path);
}

absl::StatusOr<std::string> SerializeNpy(const v1::Tensor& t) {
  auto descr = DescrFromDType(t.dtype());
  if (!descr.ok()) return descr.status();
  std::string shape = "(";
  for (int i = 0; i < t.shape_size(); ++i) absl::StrAppend(&shape, t.shape(i), ",");
  if (t.shape_size() > 1) shape.pop_back();  // (3,) keeps its comma; (2,3) has none
  shape += ")";
  std::string header = absl::StrCat("{'descr': '", *descr, "', 'fortran_order': False, 'shape': ",
                                    shape, ", }");
  // Pad so that magic + length + header + newline is a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out(kMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out += t.data();
  return out;
}

absl::Status WriteNpy(const std::string& path, v1::DType dtype, const std::vector<int64_t>& shape,
                      const void* data, size_t bytes) {
  v1::Tensor header_only;  // no data: SerializeNpy gives just the header
  header_only.set_dtype(dtype);
  for (int64_t d : shape) header_only.add_shape(d);
  auto header = SerializeNpy(header_only);
  if (!header.ok()) return header.status();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(header->data(), static_cast<std::streamsize>(header->size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status WriteNpy(const std::string& path, const v1::Tensor& t) {
  auto bytes = SerializeNpy(t);
  if (!bytes.ok()) return bytes.status();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace tensorprep::client
