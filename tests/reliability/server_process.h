// The real tensorprep-server binary as a child process on 127.0.0.1, for tests that need what
// only a process has: signals, an exit code, its own resident memory.
#ifndef TENSORPREP_TESTS_RELIABILITY_SERVER_PROCESS_H_
#define TENSORPREP_TESTS_RELIABILITY_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace tensorprep::testing {

class ServerProcess {
 public:
  // Starts `binary` with `args` (plus --host 127.0.0.1 --port 0 --metrics-port 0 unless given)
  // and waits for its ready line. ok() is false when it did not start; error() says why.
  ServerProcess(const std::string& binary, std::vector<std::string> args);
  // Kills the process if it is still running.
  ~ServerProcess();

  bool ok() const { return port_ > 0; }
  const std::string& error() const { return error_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

  void Signal(int sig) const;
  bool Running() const;
  // Waits up to `seconds` for exit; the exit code, or -1 (still running / killed by a signal).
  int Wait(double seconds);
  // Everything the process wrote to stderr so far.
  std::string Stderr() const;
  // Waits up to `seconds` for `text` to appear in stderr; whether it did.
  bool WaitForStderr(const std::string& text, double seconds) const;
  // Resident set size in bytes (VmRSS), 0 if unknown.
  long long RssBytes() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool reaped_ = false;
  std::string error_;
  std::string stderr_path_;
};

}  // namespace tensorprep::testing

#endif  // TENSORPREP_TESTS_RELIABILITY_SERVER_PROCESS_H_
