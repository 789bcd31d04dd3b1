#include "tests/reliability/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace tensorprep::testing {

ServerProcess::ServerProcess(const std::string& binary, std::vector<std::string> args) {
  auto has = [&](const std::string& flag) {
    for (const auto& a : args) {
      if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
    }
    return false;
  };
  if (!has("--host")) args.insert(args.end(), {"--host", "127.0.0.1"});
  if (!has("--port")) args.insert(args.end(), {"--port", "0"});
  if (!has("--metrics-port")) args.insert(args.end(), {"--metrics-port", "0"});
  char path_template[] = "/tmp/tensorprep-server-stderr-XXXXXX";
  const int err_fd = mkstemp(path_template);
  stderr_path_ = path_template;
  int out[2];
  if (err_fd < 0 || pipe(out) != 0) {
    error_ = "cannot create pipes";
    return;
  }
  pid_ = fork();
  if (pid_ == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    close(out[0]);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(binary.c_str()));
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(out[1]);
  close(err_fd);
  // The ready line: "tensorprep-server ready on HOST:PORT (...)".
  std::string line;
  char ch;
  while (read(out[0], &ch, 1) == 1 && ch != '\n') line += ch;
  close(out[0]);
  std::smatch m;
  if (std::regex_search(line, m, std::regex("ready on [^ ]+:(\\d+)"))) {
    port_ = std::stoi(m[1]);
  } else {
    error_ = "no ready line; stdout '" + line + "', stderr '" + Stderr() + "'";
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (!stderr_path_.empty()) std::remove(stderr_path_.c_str());
}

void ServerProcess::Signal(int sig) const {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

bool ServerProcess::Running() const {
  if (pid_ <= 0 || reaped_) return false;
  // A zombie still answers kill(0); look at its state instead.
  std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
  std::string pid, comm, state;
  stat >> pid >> comm >> state;
  return stat && state != "Z";
}

int ServerProcess::Wait(double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!reaped_) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (std::chrono::steady_clock::now() > end) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

std::string ServerProcess::Stderr() const {
  std::ifstream in(stderr_path_);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

bool ServerProcess::WaitForStderr(const std::string& text, double seconds) const {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (Stderr().find(text) == std::string::npos) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

long long ServerProcess::RssBytes() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}

}  // namespace tensorprep::testing
