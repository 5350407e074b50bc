// auth.hpp: who may talk to a listener that other hosts can reach. Internal.
//
// A manager or channel owner listening on an address that is not loopback
// asks every connection that does not come from loopback to prove that it
// knows the user's shared secret, and proves it knows it too, so that a
// client never talks to an impostor either. Challenge-response with
// HMAC-SHA-256 (libsodium): the secret never travels, a proof is good for one
// connection only (both sides' random nonces are in it), and proofs are
// compared in constant time. Before the hello (docs/protocols.md):
//
//   owner  -> client  challenge      32 random bytes, Ns
//   client -> owner   authenticate   32 random bytes, Nc, then
//                                    HMAC(secret, "sheaf-msg-v1 client" Ns Nc)
//   owner  -> client  authenticated  HMAC(secret, "sheaf-msg-v1 owner" Nc Ns)
//
// A wrong proof gets an error frame (EACCES, "authentication failed") and the
// connection is closed. Loopback needs no secret: what reaches it is on this
// host, where sockets and directories are the user's (docs/msg.md).
#pragma once

#include <array>
#include <asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "link.hpp"

namespace sheaf::msg {

// Where the secret is looked for when no file is named: $SHEAF_SECRET_FILE,
// then ~/.config/sheaf/secret, then /etc/sheaf/secret.
inline constexpr const char* kSecretEnv = "SHEAF_SECRET_FILE";
inline constexpr std::size_t kMinSecretBytes = 16;

struct Secret {
  std::vector<unsigned char> key;  // the file's bytes, a trailing newline dropped
  std::string file;                // where it came from
};
// The secret in `file`, or (empty) the first of the places above that
// exists. Throws kNotFound naming where it looked, kInvalidArgument for a
// file group or others may read, or shorter than kMinSecretBytes; each
// message begins with `who` (what needed the secret) when it is given.
Secret load_secret(const std::string& file, const std::string& who = "");

bool is_loopback(const asio::ip::address& address);

inline constexpr std::size_t kNonceBytes = 32;
inline constexpr std::size_t kProofBytes = 32;
// What a client that must authenticate may send, and how long it has.
inline constexpr std::uint32_t kAuthenticateBytes = kNonceBytes + kProofBytes;
// The longest payload a client takes from a listener before it has proved
// itself (a challenge, an answer, or an error's text).
inline constexpr std::uint32_t kHandshakeMaxPayload = 4096;
inline constexpr std::chrono::seconds kHandshakeTime{5};
using Nonce = std::array<std::byte, kNonceBytes>;
Nonce random_nonce();

// The listener's side. After sending challenge(Ns): checks that `frame` is
// the client's authenticate frame with a right proof; on success returns the
// authenticated frame's payload. Throws Error(kSystem, EACCES)
// "authentication failed", naming `listener`, otherwise.
std::vector<std::byte> answer_client(const Secret& secret, const Nonce& ours, const Frame& frame,
                                     const std::string& listener);

// The client's side, on a fresh link to a host that is not this one: the
// whole exchange, before anything else is sent. Throws the owner's refusal
// (EACCES), or EACCES if the owner's proof is wrong.
void authenticate_to(Link& link, const Secret& secret, const std::string& address,
                     Deadline deadline);

}  // namespace sheaf::msg
