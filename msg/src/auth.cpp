#include "auth.hpp"

#include <sodium.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "control.hpp"
#include "posix.hpp"
#include "sheaf/error.hpp"

namespace sheaf::msg {
namespace {

constexpr std::string_view kClientLabel = "sheaf-msg-v1 client";
constexpr std::string_view kOwnerLabel = "sheaf-msg-v1 owner";

void init_sodium() {
  if (::sodium_init() < 0) throw Error(Errc::kSystem, "libsodium failed to initialise");
}

using Proof = std::array<unsigned char, crypto_auth_hmacsha256_BYTES>;
static_assert(kProofBytes == crypto_auth_hmacsha256_BYTES);

// HMAC-SHA-256(secret, label | first | second).
Proof proof(const Secret& secret, std::string_view label, const Nonce& first, const Nonce& second) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, secret.key.data(), secret.key.size());
  crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(label.data()),
                                label.size());
  crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(first.data()),
                                first.size());
  crypto_auth_hmacsha256_update(&state, reinterpret_cast<const unsigned char*>(second.data()),
                                second.size());
  Proof out;
  crypto_auth_hmacsha256_final(&state, out.data());
  sodium_memzero(&state, sizeof(state));
  return out;
}

bool same(const Proof& expected, std::span<const std::byte> given) {
  return given.size() == expected.size() &&
         ::sodium_memcmp(expected.data(), given.data(), expected.size()) == 0;  // constant time
}

[[noreturn]] void refuse(const std::string& why) {
  throw Error(Errc::kSystem, why, EACCES);
}

std::vector<std::string> default_secret_files() {
  std::vector<std::string> files;
  if (const char* env = std::getenv(kSecretEnv); env != nullptr && *env != '\0') {
    files.emplace_back(env);
    return files;  // named: nothing else is tried
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home == '/') {
    files.push_back(std::string(home) + "/.config/sheaf/secret");
  }
  files.emplace_back("/etc/sheaf/secret");
  return files;
}

}  // namespace

Secret load_secret(const std::string& file, const std::string& who) {
  if (!who.empty()) {
    try {
      return load_secret(file);
    } catch (const Error& e) {
      throw Error(e.code(), who + ": " + e.message(), e.sys_errno());
    }
  }
  const std::vector<std::string> candidates =
      file.empty() ? default_secret_files() : std::vector<std::string>{file};
  for (const std::string& path : candidates) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT && candidates.size() > 1) continue;
      throw Error::from_errno(errno, "shared secret " + path);
    }
    if (!S_ISREG(st.st_mode)) {
      throw Error(Errc::kInvalidArgument, "shared secret " + path + ": not a regular file");
    }
    if ((st.st_mode & 077) != 0) {
      throw Error(Errc::kInvalidArgument,
                  "shared secret " + path + ": group or others may read it (chmod 600 it)");
    }
    std::ifstream in(path, std::ios::binary);
    Secret secret;
    secret.file = path;
    secret.key.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (!in.eof() && in.fail()) throw Error::from_errno(errno, "shared secret " + path);
    while (!secret.key.empty() && (secret.key.back() == '\n' || secret.key.back() == '\r')) {
      secret.key.pop_back();
    }
    if (secret.key.size() < kMinSecretBytes) {
      throw Error(Errc::kInvalidArgument, "shared secret " + path + ": shorter than " +
                                              std::to_string(kMinSecretBytes) + " bytes");
    }
    return secret;
  }
  std::string looked;
  for (const std::string& path : candidates) looked += (looked.empty() ? "" : ", ") + path;
  throw Error(Errc::kNotFound, "no shared secret (looked in " + looked + "; `sheaf msg secret " +
                                   "FILE` makes one, $" + kSecretEnv + " names it)");
}

void create_secret_file(const std::string& file) {
  const std::string text = posix::random_hex(32) + '\n';
  posix::Fd fd = posix::open_file(file, O_WRONLY | O_CREAT | O_EXCL, "shared secret " + file, 0600);
  posix::write_all(fd.get(), std::as_bytes(std::span(text.data(), text.size())),
                   "shared secret " + file);
  if (const int error = posix::fsync(fd.get()); error != 0) {
    throw Error::from_errno(error, "shared secret " + file + ": fsync");
  }
}

bool is_loopback(const asio::ip::address& address) {
  if (address.is_loopback()) return true;
  if (address.is_v4()) return (address.to_v4().to_uint() >> 24) == 127;
  // An IPv4 client of an IPv6 socket: ::ffff:127.x.y.z.
  const auto v6 = address.to_v6();
  return v6.is_v4_mapped() &&
         (asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_uint() >> 24) == 127;
}

Nonce random_nonce() {
  init_sodium();
  Nonce nonce;
  ::randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

std::vector<std::byte> answer_client(const Secret& secret, const Nonce& ours, const Frame& frame,
                                     const std::string& listener) {
  if (frame.header.type != FrameType::kAuthenticate) {
    refuse("authentication failed: " + listener +
           " takes connections from other hosts only with the shared secret");
  }
  const std::span<const std::byte> authenticate = frame.payload;
  if (authenticate.size() != kAuthenticateBytes) refuse("authentication failed");
  Nonce theirs;
  std::copy_n(authenticate.begin(), kNonceBytes, theirs.begin());
  if (!same(proof(secret, kClientLabel, ours, theirs), authenticate.subspan(kNonceBytes))) {
    refuse("authentication failed: the client does not know this host's shared secret");
  }
  const Proof mine = proof(secret, kOwnerLabel, theirs, ours);
  const auto* first = reinterpret_cast<const std::byte*>(mine.data());
  return {first, first + mine.size()};
}

void authenticate_to(Link& link, const Secret& secret, const std::string& address,
                     Deadline deadline) {
  const std::string what = "authenticating to " + address;
  // Until the listener has proved it knows the secret, it may send no more
  // than the handshake's frames need (an error's text included): a header
  // that announced a large payload would otherwise have this process set
  // room aside for it (FrameReader).
  link.limit_payload(kHandshakeMaxPayload);
  auto expect = [&](FrameType type) {
    auto frame = link.receive(deadline);
    if (!frame) throw Error(Errc::kTimedOut, what + ": no answer in time", ETIMEDOUT);
    if (frame->header.type == FrameType::kError) throw_error_frame(*frame, what);
    if (frame->header.type != type) {
      throw Error(Errc::kCorrupted,
                  what + ": expected '" + frame_type_name(type) + "', got '" +
                      frame_type_name(frame->header.type) + "'",
                  EPROTO);
    }
    return std::move(*frame);
  };
  const Frame challenge = expect(FrameType::kChallenge);
  if (challenge.payload.size() != kNonceBytes) {
    throw Error(Errc::kCorrupted,
                what + ": a challenge of " + std::to_string(challenge.payload.size()) + " bytes",
                EPROTO);
  }
  Nonce theirs;
  std::copy_n(challenge.payload.begin(), kNonceBytes, theirs.begin());
  const Nonce ours = random_nonce();
  const Proof mine = proof(secret, kClientLabel, theirs, ours);
  std::vector<std::byte> payload(ours.begin(), ours.end());
  const auto* first = reinterpret_cast<const std::byte*>(mine.data());
  payload.insert(payload.end(), first, first + mine.size());
  link.send({FrameType::kAuthenticate}, payload, deadline);
  const Frame answer = expect(FrameType::kAuthenticated);
  if (!same(proof(secret, kOwnerLabel, ours, theirs), answer.payload)) {
    refuse(what + ": the server does not know the shared secret (" + secret.file + ")");
  }
  link.limit_payload(kLinkMaxPayload);
}

}  // namespace sheaf::msg
