#pragma once

// Runs a workload in a child process. The deliberately unprotected mode may do what Metal
// does to an unprotected app — crash, or hang on a command buffer that never completes — and
// the tool must report that outcome, not die of it. The child writes its results, as it goes,
// into a page shared with the parent, so what it counted before a crash is still read. A
// crash or a hang is reported, never retried.

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

namespace mpsts::tools {

// `Report` lives in memory shared by parent and child: plain data and lock-free atomics only.
template <class Report>
class SharedReport {
 public:
  SharedReport() {
    void* page =
        mmap(nullptr, sizeof(Report), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
      throw std::runtime_error(std::string("mmap of the shared report failed: ") +
                               std::strerror(errno));
    }
    report_ = new (page) Report();
  }
  ~SharedReport() {
    report_->~Report();
    munmap(report_, sizeof(Report));
  }
  SharedReport(const SharedReport&) = delete;
  SharedReport& operator=(const SharedReport&) = delete;
  Report& operator*() const {
    return *report_;
  }
  Report* operator->() const {
    return report_;
  }

 private:
  Report* report_;
};

struct ChildOutcome {
  bool exited = false; // ended by exit(): exitStatus is valid
  int exitStatus = 0;
  int signal = 0; // ended by this signal (a crash, or our kill after a timeout)
  bool timedOut = false;

  std::string describe() const {
    if (timedOut) {
      return "hung (killed after the timeout)";
    }
    if (signal != 0) {
      return std::string("crashed with signal ") + std::to_string(signal) + " (" +
             strsignal(signal) + ")";
    }
    return "exited with status " + std::to_string(exitStatus);
  }
};

// Forks, runs `body` in the child (which then exits at once with status 0, or 1 if body
// threw), and waits at most `timeoutSeconds` for it. Call while the process has one thread.
template <class Body>
ChildOutcome runInChild(Body&& body, double timeoutSeconds) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  }
  if (pid == 0) {
    int status = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      status = 1;
    }
    std::fflush(nullptr);
    // _exit: the parent owns everything inherited; nothing of it is torn down twice.
    _exit(status);
  }

  ChildOutcome outcome;
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(timeoutSeconds));
  int status = 0;
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      break;
    }
    if (done < 0 && errno != EINTR) {
      throw std::runtime_error(std::string("waitpid failed: ") + std::strerror(errno));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      outcome.timedOut = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) {
    outcome.exited = true;
    outcome.exitStatus = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    outcome.signal = WTERMSIG(status);
  }
  return outcome;
}

} // namespace mpsts::tools
