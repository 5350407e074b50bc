// fill_heap.cpp: several processes fill one shared heap at once.
//
//   sheaf-fill-heap HEAP [PROCESSES] [OBJECTS]      (HEAP: a path, or STORE/NAME)
//
// Creates HEAP (or opens it if it exists), then forks PROCESSES workers. Each
// opens the heap on its own (so each maps it at its own address), constructs
// OBJECTS named records, and appends a line to a shared journal (a vector of
// strings inside the heap) under the heap's lock. The parent waits, then
// prints what the heap holds. Try `sheaf heap ls HEAP` afterwards.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "sheaf/containers.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/store.hpp"

struct Reading {
  std::int32_t worker;
  std::int32_t sequence;
  double value;
};
SHEAF_TYPE_NAME(Reading, "example::Reading");

using Journal = sheaf::vector<sheaf::string>;
SHEAF_TYPE_NAME(Journal, "example::Journal");

static void work(const std::string& path, int worker, int objects) {
  sheaf::Heap heap = sheaf::Heap::open(path).value();
  auto* journal = heap.find<Journal>("journal");
  auto* total = heap.find<std::int64_t>("total");
  for (int i = 0; i < objects; ++i) {
    const std::string name = "reading/" + std::to_string(worker) + "/" + std::to_string(i);
    heap.construct<Reading>(name)(Reading{worker, i, worker + i / 1000.0});
  }
  heap.exclusive([&] {
    *total += objects;
    const std::string line = "worker " + std::to_string(worker) + " (pid " +
                             std::to_string(getpid()) + ") added " + std::to_string(objects) +
                             " readings";
    journal->emplace_back(line.c_str(), heap);
  });
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s HEAP [PROCESSES] [OBJECTS]\n", argv[0]);
    return 2;
  }
  const std::string path = sheaf::Store::resolve_heap(argv[1]);  // a path, or STORE/NAME
  const int processes = argc > 2 ? std::atoi(argv[2]) : 4;
  const int objects = argc > 3 ? std::atoi(argv[3]) : 1000;
  try {
    {
      auto created = sheaf::Heap::create(path);
      sheaf::Heap heap =
          created.ok() ? std::move(created).value() : sheaf::Heap::open(path).value();
      heap.find_or_construct<Journal>("journal")(heap);
      heap.find_or_construct<std::int64_t>("total")(0);
    }
    for (int worker = 0; worker < processes; ++worker) {
      if (fork() == 0) {
        int code = 0;
        try {
          work(path, worker, objects);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "worker %d: %s\n", worker, e.what());
          code = 1;
        }
        _exit(code);
      }
    }
    int failed = 0;
    for (int worker = 0; worker < processes; ++worker) {
      int status = 0;
      wait(&status);
      failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    sheaf::Heap heap = sheaf::Heap::open(path).value();
    heap.shared([&] {
      for (const auto& line : *heap.find<Journal>("journal")) std::printf("  %s\n", line.c_str());
      std::printf("total readings: %lld, named objects: %llu\n",
                  static_cast<long long>(*heap.find<std::int64_t>("total")),
                  static_cast<unsigned long long>(heap.info().objects));
    });
    const Reading* sample = heap.find<Reading>("reading/1/42");
    if (sample) {
      std::printf("reading/1/42 = {worker %d, sequence %d, value %.3f}\n", sample->worker,
                  sample->sequence, sample->value);
    }
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sheaf-fill-heap: %s\n", e.what());
    return 1;
  }
}
