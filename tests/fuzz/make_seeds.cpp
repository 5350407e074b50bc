// make_seeds.cpp: writes small real heaps and bags, prefixed with the
// harnesses' switch byte, into CORPUS/heap and CORPUS/bag, so fuzzing starts
// from valid files.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "frame.hpp"
#include "sheaf/containers.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/store.hpp"

namespace {

// Copies `path` to `seed`, with the byte that asks for a fixed-up checksum first.
void write_seed(const std::string& path, const std::string& seed) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
  std::ofstream out(seed, std::ios::binary);
  out.put(1);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (with heap/, bag/ and frames/ in it)\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  for (int variant = 0; variant < 3; ++variant) {
    const std::string path = dir + "/heap/seed" + std::to_string(variant) + ".heap";
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
    write_seed(path, path + ".seed");
    std::remove(path.c_str());
  }
  const std::string store_dir = dir + "/bag/store";
  sheaf::Store store = sheaf::Store::init(store_dir).value();
  const std::vector<float> values = {1.5f, 2.5f, 3.5f};
  auto typed = sheaf::BagWriteOptions::of<float>();
  typed.tags = {{"model", "tiny"}, {"stage", "test"}};
  store.put_bag("typed", std::as_bytes(std::span(values)), typed);
  store.put_bag("empty", {});
  for (const char* name : {"typed", "empty"}) {
    write_seed(store.bag_path(name), dir + "/bag/" + name + ".seed");
  }
  std::system(("rm -rf '" + store_dir + "'").c_str());

  // A stream of message frames: a send with bytes, a heap reference, a ping.
  // (First byte: the harness's piece size; second: its choice of the size
  // from which payloads are gathered directly, here 65 bytes, so that the
  // control frames below take that path.)
  std::string stream("\x07\x02", 2);
  auto append = [&](sheaf::msg::FrameHeader header, std::span<const std::byte> payload) {
    header.payload_bytes = static_cast<std::uint32_t>(payload.size());
    const auto bytes = sheaf::msg::encode_header(header);
    stream.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    stream.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  };
  sheaf::msg::FrameHeader send;
  send.type = sheaf::msg::FrameType::kSend;
  send.channel = 3;
  send.request_id = 1;
  const std::string text = "hello";
  append(send, std::as_bytes(std::span(text)));
  sheaf::msg::FrameHeader ref = send;
  ref.flags = sheaf::msg::kFlagHeapRef;
  ref.request_id = 2;
  const auto heap_ref = sheaf::msg::encode_heap_ref({{}, 4096, 64, 9});
  append(ref, heap_ref);
  append(sheaf::msg::FrameHeader{}, {});
  // Control frames as clients send them: a hello listing a heap, a channel
  // created with its address and heaps.
  sheaf::msg::FrameHeader hello;
  hello.type = sheaf::msg::FrameType::kHello;
  const std::string hello_json =
      R"({"id":"client","pid":42,"token":"00112233445566778899aabbccddeeff","heaps":[{"uuid":"00112233-4455-6677-8899-aabbccddeeff","session":7}]})";
  append(hello, std::as_bytes(std::span(hello_json)));
  sheaf::msg::FrameHeader create;
  create.type = sheaf::msg::FrameType::kCreateChannel;
  create.value = 64;
  const std::string create_json =
      R"({"name":"jobs","address":"unix:/tmp/sheaf-0/c-1-0.sock tcp:127.0.0.1:9300","heaps":[]})";
  append(create, std::as_bytes(std::span(create_json)));
  // A client's answer to a challenge: its nonce and a proof (made up).
  sheaf::msg::FrameHeader authenticate;
  authenticate.type = sheaf::msg::FrameType::kAuthenticate;
  const std::vector<std::byte> proof(64, std::byte{0x5a});
  append(authenticate, proof);
  std::ofstream(dir + "/frames/stream.seed", std::ios::binary) << stream;
  return 0;
}
