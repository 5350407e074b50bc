// msg_bench.cpp: `sheaf msg bench`, what heap references buy, measured.
//
// Two processes: this one and a peer it forks, which owns a channel and
// answers each message after reading its first and last byte (or, between
// two hosts, a peer another `sheaf msg bench --serve` runs there). For each
// payload size, the same bytes go to the peer by reference (a Loan in a heap
// both map: only a 48-byte reference travels) and by copy (the bytes go
// through the socket), `rounds` times each, and the times of the round trips
// are reported as p50 and p99. A manager of its own runs on a thread unless
// --manager names one.
#include "msg_bench.hpp"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include "output.hpp"
#include "progress.hpp"
#include "sheaf/error.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/msg.hpp"
#include "sheaf/msg_manager.hpp"
#include "units.hpp"

namespace sheaf::cli {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Result {
  std::uint64_t bytes = 0;
  double ref_p50_us = 0, ref_p99_us = 0, copy_p50_us = 0, copy_p99_us = 0;
};

double percentile(std::vector<double> us, double p) {
  std::sort(us.begin(), us.end());
  const auto at = static_cast<std::size_t>(p * static_cast<double>(us.size() - 1) + 0.5);
  return us[std::min(at, us.size() - 1)];
}

// The peer: owns the channel, reads each payload's ends, answers, until
// the benchmark says goodbye (or dies, or is quiet for 30 s). `ready`
// (called once the channel exists) tells whoever waits for it.
void serve(const MsgBenchArgs& args, const std::string& manager, const std::string& heap_path,
           const std::string& channel_name, const std::function<void()>& ready) {
  Heap heap = Heap::open(heap_path).value();
  msg::Client me =
      msg::Client::connect("bench-peer", {.manager = manager, .secret_file = args.secret_file});
  me.attach(heap);
  msg::Channel channel = me.create_channel(channel_name, {.tcp_listen = args.tcp});
  ready();
  bool served = false;
  for (;;) {
    msg::Message m = channel.receive(30s);
    if (m.event == msg::Event::kMessage) {
      served = true;
      const auto b = m.payload.bytes();
      const int ends = b.empty() ? 0 : static_cast<int>(b.front()) + static_cast<int>(b.back());
      channel.reply(m.index, ends);
    } else if (m.event == msg::Event::kTimeout && !served && !args.serve.empty()) {
      continue;  // `--serve`: waiting for the other host's benchmark to begin
    } else if (m.event != msg::Event::kTimer) {
      break;
    }
  }
}

// The peer in a child of ours, on this host.
[[noreturn]] void serve_in_child(const MsgBenchArgs& args, const std::string& manager,
                                 const std::string& heap_path, const std::string& channel_name,
                                 int ready_fd) {
  int code = 0;
  try {
    serve(args, manager, heap_path, channel_name, [&] {
      const char byte = 1;
      if (::write(ready_fd, &byte, 1) != 1) _exit(1);
      ::close(ready_fd);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sheaf msg bench: peer: %s\n", e.what());
    code = 1;
  }
  _exit(code);
}

void plot(const std::string& png, const std::vector<Result>& results) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("sheaf-msg-plot-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string data = (dir / "data").string();
  {
    std::ofstream out(data);
    for (const Result& r : results) {
      out << r.bytes << ' ' << r.ref_p50_us << ' ' << r.copy_p50_us << ' ' << r.ref_p99_us << ' '
          << r.copy_p99_us << '\n';
    }
  }
  const std::string script = (dir / "plot.gp").string();
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,560\n"
       << "set output '" << png << "'\n"
       << "set title 'Sheaf: payload sent by heap reference and by copy (round trip)'\n"
       << "set logscale xy\nset xlabel 'payload (bytes)'\nset ylabel 'round trip (us)'\n"
       << "set key top left\nset grid\n"
       << "plot '" << data << "' using 1:2 with linespoints title 'by reference, p50', "
       << "'' using 1:4 with lines dashtype 2 title 'by reference, p99', "
       << "'' using 1:3 with linespoints title 'by copy, p50', "
       << "'' using 1:5 with lines dashtype 2 title 'by copy, p99'\n";
  }
  const int status = std::system(("gnuplot '" + script + "'").c_str());
  std::filesystem::remove_all(dir);
  if (status != 0) {
    throw Error(Errc::kSystem, "gnuplot failed (status " + std::to_string(status) +
                                   "); is it installed? (apt-get install gnuplot-nox)");
  }
}

}  // namespace

void run_msg_bench(const MsgBenchArgs& args) {
  if (!args.serve.empty() || !args.to.empty()) {
    if (!args.serve.empty() && !args.to.empty()) {
      throw Error(Errc::kInvalidArgument, "msg bench: --serve and --to: one or the other");
    }
    if (args.heap.empty() || args.manager.empty()) {
      throw Error(Errc::kInvalidArgument,
                  "msg bench: --serve and --to need --heap (on a filesystem both hosts mount) "
                  "and --manager (one both hosts reach)");
    }
  }
  if (!args.serve.empty()) {
    return serve(args, args.manager, args.heap, args.serve, [&] {
      std::cout << "serving channel " << args.serve << " for one `sheaf msg bench --to "
                << args.serve << "`" << std::endl;
    });
  }
  if (args.sizes.empty()) throw Error(Errc::kInvalidArgument, "msg bench: no sizes");
  if (args.rounds < 3) throw Error(Errc::kInvalidArgument, "msg bench: at least 3 rounds");
  const std::uint64_t largest = *std::max_element(args.sizes.begin(), args.sizes.end());
  if (largest > (std::uint64_t{1} << 30)) {
    throw Error(Errc::kInvalidArgument, "msg bench: sizes up to 1G (a message's limit)");
  }

  // The heap both processes map: room for the largest payload, twice.
  std::string heap_path = args.heap;
  const bool own_heap = heap_path.empty();
  if (own_heap) {
    heap_path =
        (std::filesystem::exists("/dev/shm") ? std::string("/dev/shm")
                                             : std::filesystem::temp_directory_path().string()) +
        "/sheaf-msg-bench-" + std::to_string(::getpid()) + ".heap";
    Heap::create(heap_path, {.initial_size = 2 * largest + (64 << 20)}).value().close().value();
  }
  struct Cleanup {
    std::string path;
    bool remove;
    ~Cleanup() {
      if (remove) std::filesystem::remove(path);
    }
  } cleanup{heap_path, own_heap};

  std::unique_ptr<msg::Manager> manager;
  std::string manager_address = args.manager;
  if (manager_address.empty()) {
    manager = std::make_unique<msg::Manager>(msg::ManagerOptions{.listen = "127.0.0.1:0"});
    manager_address = manager->address();
  }
  std::string channel_name = args.to;
  pid_t peer = -1;
  int ready[2] = {-1, -1};
  if (channel_name.empty()) {  // a peer of our own
    channel_name = "bench-" + std::to_string(::getpid());
    if (::pipe(ready) != 0) throw Error::from_errno(errno, "pipe");
    std::fflush(nullptr);
    peer = ::fork();
    if (peer < 0) throw Error::from_errno(errno, "fork");
    if (peer == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the command
      ::close(ready[0]);
      serve_in_child(args, manager_address, heap_path, channel_name, ready[1]);
    }
    ::close(ready[1]);
  }
  std::thread manager_thread;
  if (manager) manager_thread = std::thread([&] { manager->run(); });
  struct Stop {
    msg::Manager* manager;
    std::thread& thread;
    pid_t peer;
    ~Stop() {
      if (peer > 0) {
        ::kill(peer, SIGKILL);
        ::waitpid(peer, nullptr, 0);
      }
      if (manager != nullptr) manager->stop();
      if (thread.joinable()) thread.join();
    }
  } stop{manager.get(), manager_thread, peer};
  if (peer > 0) {
    char byte = 0;
    if (::read(ready[0], &byte, 1) != 1) {
      ::close(ready[0]);
      throw Error(Errc::kSystem, "msg bench: the peer process did not start");
    }
    ::close(ready[0]);
  }

  Heap heap = Heap::open(heap_path).value();
  msg::Client me =
      msg::Client::connect("bench", {.manager = manager_address, .secret_file = args.secret_file});
  me.attach(heap);
  msg::Connection to = me.connect_channel(channel_name, 10s, /*wait=*/!args.to.empty());
  if (!to.by_reference(heap))
    throw Error(Errc::kSystem, "msg bench: the peer does not map the heap");

  std::uint64_t total = 0;
  for (const std::uint64_t n : args.sizes) total += 2 * n * static_cast<std::uint64_t>(args.rounds);
  ProgressBar progress("bench", total);
  std::uint64_t done = 0;
  std::vector<Result> results;
  for (const std::uint64_t n : args.sizes) {
    Result r;
    r.bytes = n;
    std::vector<std::byte> copy_source(n, std::byte{0});
    if (n > 0) {
      copy_source.front() = std::byte{1};
      copy_source.back() = std::byte{2};
    }
    const int expected = 1 + 2;  // the first and the last byte, as the peer reads them
    // All the rounds by reference, then all by copy: interleaved, a round
    // would also pay for the peer still freeing the previous copy (a 64 MiB
    // buffer takes milliseconds to give back).
    // `rounds` round trips of `send` (after `warm_up` not counted), each
    // checked for what the peer saw; their times in microseconds.
    auto time_rounds = [&](int warm_up, auto&& send) {
      std::vector<double> us;
      for (int round = -warm_up; round < args.rounds; ++round) {
        const auto started = Clock::now();
        const msg::Reply reply = send();
        const double took =
            std::chrono::duration<double, std::micro>(Clock::now() - started).count();
        if (n > 1 && reply.answer != expected) {
          throw Error(Errc::kCorrupted, "msg bench: the peer saw other bytes than were sent");
        }
        if (round < 0) continue;
        us.push_back(took);
        done += n;
        progress.update(done);
      }
      return us;
    };
    // References get 16 warm-up rounds: both sides adapt their spin to how
    // long their last waits took (docs/msg.md, Transports), and after the
    // copies of the size before, which take milliseconds, the first few
    // round trips by reference would sleep and be woken (tens of us) until
    // the spin comes back. Copies, long anyway, get one.
    const std::vector<double> by_ref = time_rounds(16, [&] {
      msg::Loan loan = msg::Loan::allocate(heap, n);
      if (n > 0) {
        loan.bytes().front() = std::byte{1};
        loan.bytes().back() = std::byte{2};
      }
      return to.send(1, std::move(loan), 30s);
    });
    const std::vector<double> by_copy =
        time_rounds(1, [&] { return to.send(1, copy_source, 60s); });
    r.ref_p50_us = percentile(by_ref, 0.5);
    r.ref_p99_us = percentile(by_ref, 0.99);
    r.copy_p50_us = percentile(by_copy, 0.5);
    r.copy_p99_us = percentile(by_copy, 0.99);
    results.push_back(r);
  }
  progress.finish();
  to.disconnect();

  if (!args.plot.empty()) plot(args.plot, results);
  if (args.json) {
    Json out = Json::array();
    for (const Result& r : results) {
      out.push_back({{"bytes", r.bytes},
                     {"by_reference_p50_us", r.ref_p50_us},
                     {"by_reference_p99_us", r.ref_p99_us},
                     {"by_copy_p50_us", r.copy_p50_us},
                     {"by_copy_p99_us", r.copy_p99_us},
                     {"rounds", args.rounds}});
    }
    return print_json(out);
  }
  std::vector<std::vector<std::string>> rows{
      {"PAYLOAD", "BY REF p50", "p99", "BY COPY p50", "p99", "COPY/REF"}};
  auto us = [](double v) {
    char text[32];
    std::snprintf(text, sizeof text, v >= 10000 ? "%.0f us" : "%.1f us", v);
    return std::string(text);
  };
  for (const Result& r : results) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.1fx", r.copy_p50_us / r.ref_p50_us);
    rows.push_back({format_size(r.bytes), us(r.ref_p50_us), us(r.ref_p99_us), us(r.copy_p50_us),
                    us(r.copy_p99_us), ratio});
  }
  print_table(rows, {true, true, true, true, true, true});
  std::cout << "(round trips between two processes, " << args.rounds
            << " of each; by reference only a 48-byte reference travels)\n";
  if (!args.plot.empty()) std::cout << "plot: " << args.plot << '\n';
}

}  // namespace sheaf::cli
