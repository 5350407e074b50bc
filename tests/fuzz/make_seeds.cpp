// make_seeds.cpp: writes small real heaps, prefixed with the harness's switch
// byte, into a corpus directory, so fuzzing starts from valid files.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "sheaf/containers.hpp"
#include "sheaf/heap.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  for (int variant = 0; variant < 3; ++variant) {
    const std::string path = dir + "/seed" + std::to_string(variant) + ".heap";
    {
      sheaf::CreateOptions options;
      options.initial_size = 0;  // the smallest heap
      sheaf::Heap heap = sheaf::Heap::create(path, options).value();
      for (int i = 0; i < variant * 5; ++i) {
        heap.construct<std::int64_t>("n" + std::to_string(i))(i);
        heap.allocate(40 + i * 30);
      }
      if (variant == 2) heap.construct<sheaf::vector<int>>("v")(heap)->push_back(1);
    }
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
    std::remove(path.c_str());
    std::ofstream out(path + ".seed", std::ios::binary);
    out.put(1);  // ask the harness to fix the checksum after mutation
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  return 0;
}
