#include "msg_commands.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <iostream>
#include <memory>
#include <string>

#include "io.hpp"
#include "msg_bench.hpp"
#include "output.hpp"
#include "sheaf/error.hpp"
#include "sheaf/msg.hpp"
#include "sheaf/msg_manager.hpp"
#include "units.hpp"

namespace sheaf::cli {
namespace {

using namespace std::chrono_literals;

// What every verb that talks to a manager takes.
struct Common {
  std::string manager;      // empty: SHEAF_MANAGER, /etc/sheaf/manager, 127.0.0.1:9200
  std::string id;           // empty: cli-PID
  std::string secret_file;  // empty: $SHEAF_SECRET_FILE, ~/.config/sheaf/secret, /etc/sheaf/secret
  int timeout_ms = 5000;
  bool json = false;

  msg::Client connect() const {
    const std::string who = id.empty() ? "cli-" + std::to_string(::getpid()) : id;
    return msg::Client::connect(
        who, {.manager = manager, .timeout = msg::Timeout(timeout_ms), .secret_file = secret_file});
  }
  msg::Timeout timeout() const { return msg::Timeout(timeout_ms); }
};

void add_secret_option(CLI::App& verb, std::string& file) {
  verb.add_option("--secret-file", file,
                  "The shared secret for managers and channels on other hosts (default: "
                  "$SHEAF_SECRET_FILE if set, and then only it; else the first of "
                  "~/.config/sheaf/secret and /etc/sheaf/secret that exists)")
      ->type_name("FILE");
}

void add_common(CLI::App& verb, Common& common, bool with_json = true) {
  verb.add_option("--manager", common.manager,
                  "The manager, HOST:PORT (default: $SHEAF_MANAGER, then the first line of "
                  "/etc/sheaf/manager, then 127.0.0.1:9200)")
      ->type_name("HOST:PORT");
  verb.add_option("--id", common.id, "The client id to connect as (default: cli-PID)")
      ->type_name("ID");
  add_secret_option(verb, common.secret_file);
  verb.add_option("--timeout", common.timeout_ms,
                  "Milliseconds to wait for the manager, the channel and answers (default 5000; "
                  "-1: forever)")
      ->type_name("MS");
  if (with_json) add_json_flag(verb, common.json);
}

std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '\n' || (c >= ' ' && c <= '~')) {
      out += c;
    } else {
      out += '.';
    }
  }
  return out;
}

struct ManagerArgs {
  std::string listen = "127.0.0.1:" + std::to_string(msg::kDefaultManagerPort);
  std::string secret_file;
};

struct SendArgs {
  Common common;
  std::string channel;
  std::string data;  // "-" or absent: standard input
  bool data_given = false;
  std::int32_t type = 0;
  bool buffered = false;
};

struct ListenArgs {
  Common common;
  std::string channel;
  std::uint64_t count = 0;  // 0: until interrupted
  std::string reply;
  bool echo = false;
  std::uint32_t max_buffered = 64;
  std::string tcp;  // also listen there
};

struct PingArgs {
  Common common;
  std::string channel;
  int count = 1;
};

volatile std::sig_atomic_t interrupted = 0;

void run_listen(const ListenArgs& args) {
  msg::Client client = args.common.connect();
  msg::Channel channel = client.create_channel(
      args.channel, {.max_buffered = args.max_buffered, .tcp_listen = args.tcp});
  std::signal(SIGINT, [](int) { interrupted = 1; });
  std::signal(SIGTERM, [](int) { interrupted = 1; });
  if (!args.common.json) {
    std::cerr << "sheaf msg listen: channel " << args.channel << " at " << channel.address()
              << '\n';
  }
  std::uint64_t seen = 0;
  while (interrupted == 0 && (args.count == 0 || seen < args.count)) {
    msg::Message m = channel.receive(200ms);
    if (m.event == msg::Event::kTimeout) continue;
    const bool is_message = m.event == msg::Event::kMessage || m.event == msg::Event::kBuffered;
    if (args.common.json) {
      Json line{{"event", msg::event_name(m.event)},
                {"sender", m.sender},
                {"type", m.type},
                {"bytes", m.payload.size()},
                {"by_reference", m.payload.by_reference()},
                {"text", std::string(m.payload.text())}};
      std::cout << line.dump() << '\n' << std::flush;  // one JSON object per line
    } else {
      std::cout << msg::event_name(m.event) << " from " << (m.sender.empty() ? "-" : m.sender)
                << " type " << m.type;
      if (is_message)
        std::cout << " (" << m.payload.size() << " bytes): " << printable(m.payload.text());
      std::cout << '\n' << std::flush;
    }
    if (m.event == msg::Event::kMessage) {
      if (args.echo) {
        channel.reply(m.index, m.type, m.payload.bytes());
      } else {
        channel.reply(m.index, 0, std::as_bytes(std::span(args.reply.data(), args.reply.size())));
      }
    }
    if (is_message) ++seen;
  }
}

}  // namespace

void register_msg_commands(CLI::App& app) {
  CLI::App* noun = app.add_subcommand(
      "msg", "Channels between processes: a manager that names them, send, listen, ping");
  noun->require_subcommand(1);

  auto manager = std::make_shared<ManagerArgs>();
  CLI::App* verb = noun->add_subcommand(
      "manager", "Run a manager (the name service of channels) until interrupted");
  verb->add_option("--listen", manager->listen,
                   "Where to listen, HOST:PORT (default 127.0.0.1:9200); beyond loopback, "
                   "clients of other hosts must know the shared secret")
      ->type_name("HOST:PORT");
  add_secret_option(*verb, manager->secret_file);
  verb->callback([manager] {
    msg::Manager server(
        {.listen = manager->listen, .secret_file = manager->secret_file, .stop_on_signals = true});
    std::cout << "sheaf msg manager: listening on " << server.address() << std::endl;
    server.run();
  });

  auto secret = std::make_shared<std::string>();
  verb = noun->add_subcommand(
      "secret", "Make a new shared secret (32 random bytes, hex) in FILE, readable by you only");
  verb->add_option("FILE", *secret, "Where to write it (it must not exist)")
      ->required()
      ->type_name("");
  verb->callback([secret] {
    msg::create_secret_file(*secret);
    std::cerr << "sheaf msg secret: wrote " << *secret
              << " (copy it to the other hosts, mode 600)\n";
  });

  auto channels = std::make_shared<Common>();
  verb = noun->add_subcommand("channels", "List the channels the manager knows");
  add_common(*verb, *channels);
  verb->callback([channels] {
    msg::Client client = channels->connect();
    const auto list = client.channels(channels->timeout());
    if (channels->json) {
      Json out = Json::array();
      for (const auto& c : list) {
        out.push_back({{"name", c.name},
                       {"owner", c.owner},
                       {"pid", c.pid},
                       {"max_buffered", c.max_buffered},
                       {"address", c.address}});
      }
      return print_json(out);
    }
    std::vector<std::vector<std::string>> rows{{"NAME", "OWNER", "PID", "BUFFERED", "ADDRESS"}};
    for (const auto& c : list) {
      rows.push_back(
          {c.name, c.owner, std::to_string(c.pid), std::to_string(c.max_buffered), c.address});
    }
    print_table(rows, {false, false, true, true, false});
  });

  auto send = std::make_shared<SendArgs>();
  verb = noun->add_subcommand(
      "send", "Send a message to a channel and print the reply (or, --buffered, do not wait)");
  verb->add_option("CHANNEL", send->channel, "The channel's name")->required()->type_name("");
  verb->add_option("DATA", send->data, "The message (default, or '-': standard input)")
      ->type_name("");
  verb->add_option("--type", send->type, "The message type, an integer (default 0)");
  verb->add_flag("--buffered", send->buffered,
                 "Queue it at the receiver and return (an asynchronous message)");
  add_common(*verb, send->common);
  verb->callback([send] {
    const std::vector<std::byte> bytes =
        send->data.empty() || send->data == "-"
            ? read_input("-")
            : std::vector<std::byte>(
                  reinterpret_cast<const std::byte*>(send->data.data()),
                  reinterpret_cast<const std::byte*>(send->data.data()) + send->data.size());
    msg::Client client = send->common.connect();
    msg::Connection to = client.connect_channel(send->channel, send->common.timeout());
    if (send->buffered) {
      to.buffered_send(send->type, bytes, send->common.timeout());
      if (send->common.json) print_json({{"sent", bytes.size()}});
      return;
    }
    msg::Reply reply = to.send(send->type, bytes, send->common.timeout());
    if (send->common.json) {
      return print_json({{"answer", reply.answer},
                         {"bytes", reply.payload.size()},
                         {"text", std::string(reply.payload.text())}});
    }
    write_output(reply.payload.bytes());
  });

  auto listen = std::make_shared<ListenArgs>();
  verb = noun->add_subcommand(
      "listen", "Create a channel and print what arrives on it, answering each message");
  verb->add_option("CHANNEL", listen->channel, "The channel's name")->required()->type_name("");
  verb->add_option("--count", listen->count, "Stop after this many messages (default: never)")
      ->type_name("N");
  verb->add_option("--reply", listen->reply, "The answer to each message (default: empty)")
      ->type_name("TEXT");
  verb->add_flag("--echo", listen->echo, "Answer each message with its own bytes and type");
  verb->add_option("--max-buffered", listen->max_buffered,
                   "Buffered messages a sender may have waiting (default 64)")
      ->type_name("N");
  verb->add_option("--tcp", listen->tcp,
                   "Also listen on TCP there, HOST:PORT (port 0: any), for clients of other hosts "
                   "(who must know the shared secret unless HOST is loopback)")
      ->type_name("HOST:PORT");
  add_common(*verb, listen->common);
  verb->callback([listen] { run_listen(*listen); });

  auto bench = std::make_shared<MsgBenchArgs>();
  auto sizes = std::make_shared<std::vector<std::string>>(
      std::vector<std::string>{"64", "4K", "64K", "1M", "16M", "64M"});
  verb = noun->add_subcommand(
      "bench",
      "Measure sending payloads by heap reference and by copy between two processes, by size");
  verb->add_option("--sizes", *sizes, "Payload sizes (default 64,4K,64K,1M,16M,64M)")
      ->delimiter(',')
      ->type_name("LIST");
  verb->add_option("--rounds", bench->rounds, "Round trips per size and path (default 20)")
      ->check(CLI::Range(3, 100000))
      ->type_name("N");
  verb->add_option("--heap", bench->heap,
                   "The heap to put payloads in (default: a temporary one in /dev/shm)")
      ->type_name("PATH");
  verb->add_option("--manager", bench->manager,
                   "A manager to use, HOST:PORT (default: one of its own, on loopback)")
      ->type_name("HOST:PORT");
  verb->add_option("--plot", bench->plot, "Also draw time against size into this PNG (gnuplot)")
      ->type_name("FILE.png");
  verb->add_option("--serve", bench->serve,
                   "Between two hosts: be the peer, owning this channel, for one `--to` run "
                   "(needs --heap on a filesystem both hosts mount, --manager, and --tcp)")
      ->type_name("CHANNEL");
  verb->add_option("--to", bench->to,
                   "Between two hosts: measure against the peer `--serve CHANNEL` runs on the "
                   "other host (needs the same --heap and --manager)")
      ->type_name("CHANNEL");
  verb->add_option("--tcp", bench->tcp,
                   "With --serve: listen on TCP there, HOST:PORT, for the other host (who must "
                   "know the shared secret unless HOST is loopback)")
      ->type_name("HOST:PORT");
  verb->add_option("--secret-file", bench->secret_file,
                   "The shared secret for a manager or peer on another host (default: as for "
                   "the other verbs)")
      ->type_name("FILE");
  add_json_flag(*verb, bench->json);
  verb->callback([bench, sizes] {
    bench->sizes.clear();
    for (const std::string& s : *sizes) {
      try {
        bench->sizes.push_back(parse_size(s));
      } catch (const std::invalid_argument& e) {
        throw Error(Errc::kInvalidArgument, std::string("--sizes: ") + e.what());
      }
    }
    run_msg_bench(*bench);
  });

  auto ping = std::make_shared<PingArgs>();
  verb = noun->add_subcommand("ping", "Check that a channel's owner answers, and how fast");
  verb->add_option("CHANNEL", ping->channel, "The channel's name")->required()->type_name("");
  verb->add_option("-c,--count", ping->count, "Pings to send (default 1)")
      ->check(CLI::Range(1, 1000000))
      ->type_name("N");
  add_common(*verb, ping->common);
  verb->callback([ping] {
    msg::Client client = ping->common.connect();
    msg::Connection to = client.connect_channel(ping->channel, ping->common.timeout());
    Json times = Json::array();
    for (int i = 0; i < ping->count; ++i) {
      const auto took = to.ping(ping->common.timeout());
      const double us = std::chrono::duration<double, std::micro>(took).count();
      if (ping->common.json) {
        times.push_back(us);
      } else {
        std::cout << "answer from " << ping->channel << ": " << us << " us\n";
      }
    }
    if (ping->common.json) print_json({{"channel", ping->channel}, {"round_trips_us", times}});
  });
}

}  // namespace sheaf::cli
