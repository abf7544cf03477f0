#include "test_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

extern char** environ;

namespace mpsts_test {

double stressScale() {
  static const double scale = [] {
    if (const char* text = std::getenv("MPSTS_STRESS_SCALE")) {
      double value = std::atof(text);
      if (value > 0) {
        return value;
      }
    }
    return MPSTS_SANITIZED ? 0.1 : 1.0;
  }();
  return scale;
}

int scaled(int count, int minimum) {
  int value = static_cast<int>(count * stressScale());
  return value < minimum ? minimum : value;
}

double slowdown() {
  return MPSTS_SANITIZED ? 5.0 : 1.0;
}

sim::Config throwingConfig() {
  sim::Config config;
  config.policy = sim::ViolationPolicy::Throw;
  return config;
}

SimRuntime::SimRuntime(RuntimeOptions options, sim::Config config) {
  auto device = std::make_unique<sim::SimDevice>(config);
  sim = device.get();
  runtime = std::make_unique<Runtime>(std::move(device), options);
}

void encodeKernel(Stream& stream, std::function<void()> kernel) {
  EncoderLease lease = stream.leaseEncoder();
  sim::simEncoder(lease.encoder()).dispatch(std::move(kernel));
}

void runKernel(Stream& stream, std::function<void()> kernel, SyncType sync) {
  stream.dispatch([&] {
    encodeKernel(stream, std::move(kernel));
    stream.synchronize(sync);
  });
}

// ---- ThreadGroup -------------------------------------------------------------------------------

struct ThreadGroup::Shared {
  std::mutex mutex;
  std::condition_variable done;
  int running = 0;
  std::vector<std::string> errors;
  std::exception_ptr first;
};

std::shared_ptr<ThreadGroup::Shared> ThreadGroup::makeShared() {
  return std::make_shared<Shared>();
}

void ThreadGroup::spawn(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    ++shared_->running;
  }
  threads_.emplace_back([shared = shared_, fn = std::move(fn)] {
    std::exception_ptr error;
    std::string message;
    try {
      fn();
    } catch (const std::exception& e) {
      error = std::current_exception();
      message = e.what();
    } catch (...) {
      error = std::current_exception();
      message = "non-std exception";
    }
    std::lock_guard<std::mutex> lock(shared->mutex);
    if (error) {
      shared->errors.push_back(message);
      if (!shared->first) {
        shared->first = error;
      }
    }
    --shared->running;
    shared->done.notify_all();
  });
}

std::vector<std::string> ThreadGroup::join(std::chrono::milliseconds limit, const char* what) {
  auto deadline = std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::milliseconds>(limit * slowdown());
  {
    std::unique_lock<std::mutex> lock(shared_->mutex);
    if (!shared_->done.wait_until(lock, deadline, [&] { return shared_->running == 0; })) {
      std::fprintf(stderr,
                   "FATAL: %d of %zu %s still running after %lld ms: deadlock or hang. "
                   "Exiting: hung threads cannot be joined.\n",
                   shared_->running, threads_.size(), what,
                   static_cast<long long>(limit.count() * slowdown()));
      std::fflush(stderr);
      std::_Exit(70);
    }
  }
  for (auto& thread : threads_) {
    thread.join();
  }
  threads_.clear();
  std::lock_guard<std::mutex> lock(shared_->mutex);
  return shared_->errors;
}

void ThreadGroup::joinAndRethrow(std::chrono::milliseconds limit, const char* what) {
  join(limit, what);
  std::exception_ptr first;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    first = shared_->first;
  }
  if (first) {
    std::rethrow_exception(first);
  }
}

ThreadGroup::~ThreadGroup() {
  if (!threads_.empty()) {
    join(60000ms, "threads (at ThreadGroup destruction)");
  }
}

struct Gate::State {
  mutable std::mutex mutex;
  mutable std::condition_variable opened;
  bool open = false;
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    opened.wait(lock, [&] { return open; });
  }
};

Gate::Gate() : state_(std::make_shared<State>()) {}

Gate::~Gate() {
  open();
}

void Gate::open() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->open = true;
  state_->opened.notify_all();
}

bool Gate::isOpen() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->open;
}

void Gate::wait() const {
  state_->wait();
}

std::function<void()> Gate::waiter() const {
  return [state = state_] { state->wait(); };
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::milliseconds>(limit * slowdown());
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return condition();
    }
    std::this_thread::sleep_for(200us);
  }
  return true;
}

void spinFor(std::chrono::microseconds us) {
  auto end = std::chrono::steady_clock::now() + us;
  while (std::chrono::steady_clock::now() < end) {
  }
}

// ---- Child processes -----------------------------------------------------------------------------

namespace {

std::string selfPath() {
  char buffer[4096];
  ssize_t length = readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (length <= 0) {
    throw std::runtime_error("cannot read /proc/self/exe");
  }
  buffer[length] = '\0';
  return buffer;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

ChildResult runSelf(const std::string& testName, const std::vector<std::string>& env,
                    std::chrono::milliseconds limit) {
  std::string exe = selfPath();
  char outputTemplate[] = "/tmp/mpsts_child_XXXXXX";
  int outputFd = mkstemp(outputTemplate);
  if (outputFd < 0) {
    throw std::runtime_error("mkstemp failed");
  }
  std::string outputPath = outputTemplate;

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, outputFd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, outputFd, STDERR_FILENO);

  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    environment.emplace_back(*entry);
  }
  for (const auto& extra : env) {
    std::string name = extra.substr(0, extra.find('='));
    std::string value = extra.substr(extra.find('=') + 1);
    bool merged = false;
    for (auto& existing : environment) {
      if (existing.rfind(name + "=", 0) == 0) {
        // Options-style variables (TSAN_OPTIONS, ASAN_OPTIONS) are appended to, others replaced.
        bool isOptions = name.size() > 8 && name.compare(name.size() - 8, 8, "_OPTIONS") == 0;
        existing = isOptions ? existing + ":" + value : extra;
        merged = true;
      }
    }
    if (!merged) {
      environment.push_back(extra);
    }
  }
  std::vector<char*> envp;
  for (auto& entry : environment) {
    envp.push_back(entry.data());
  }
  envp.push_back(nullptr);
  std::vector<std::string> args = {exe, testName};
  std::vector<char*> argv;
  for (auto& arg : args) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);

  pid_t pid = 0;
  int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(outputFd);
  if (rc != 0) {
    unlink(outputPath.c_str());
    throw std::runtime_error("posix_spawn failed: " + std::to_string(rc));
  }

  ChildResult result;
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::milliseconds>(limit * slowdown());
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      result.timedOut = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(2ms);
  }
  if (WIFEXITED(status)) {
    result.exited = !result.timedOut;
    result.exitCode = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  result.output = readFile(outputPath);
  unlink(outputPath.c_str());
  return result;
}

std::string describe(const ChildResult& result) {
  std::ostringstream text;
  if (result.timedOut) {
    text << "timed out (killed)";
  } else if (result.exited) {
    text << "exited with code " << result.exitCode;
  } else {
    text << "killed by signal " << result.signal;
  }
  std::string output = result.output;
  if (output.size() > 3000) {
    output = "..." + output.substr(output.size() - 3000);
  }
  text << "; output:\n" << output;
  return text.str();
}

} // namespace mpsts_test
