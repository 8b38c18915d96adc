// essctl: the ops command line over ReplayService.
//
//   essctl --addr 127.0.0.1:50051 get --correlation VIS-77
//   essctl --addr 127.0.0.1:50051 get --direction outbound --partner prison --message_id m-1
//   essctl --addr 127.0.0.1:50051 list [--partner P] [--status delivered] [--direction outbound]
//                                      [--event_type T] [--since T] [--until T]
//                                      [--received_since T] [--received_until T] [--unconfirmed]
//                                      [--limit N]
//   essctl --addr 127.0.0.1:50051 stats [--partner P]
//   essctl --addr 127.0.0.1:50051 replay --partner probation --status dead
//          --received_since 2026-11-29T22:00:00Z --received_until 2026-11-30T06:00:00Z
//          --reason "partner SFTP down overnight" [--dry_run]
//   essctl --addr 127.0.0.1:50051 replay --direction outbound --partner prison
//          --message_id m-1,m-2 --reason "partner lost them"
//
// replay republishes each record (ReplayService.Replay, a page of up to 1000 per call) and
// prints one line per record: replayed (with where to), skipped (with why) or failed.
//
// Exit codes: 0 success; 1 the call failed (the gRPC status is printed), or a replay left a
// record skipped or failed; 2 usage error (among them a flag the command does not take, which
// would otherwise be ignored, and a bearer token that cannot be sent).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "common/replay_client.h"
#include "common/wiring.h"
#include "grpcpp/grpcpp.h"
#include "replay_svc/records.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "ReplayService address, HOST:PORT.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10), "Deadline of each call.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA certificate(s): dial with TLS and check replay_svc's certificate against them.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate presented to replay_svc (mutual TLS), with --tls_key_file.");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file.");
ABSL_FLAG(std::string, token_env, "ESS_REPLAY_TOKEN",
          "Environment variable holding the bearer token sent to ReplayService (replay.auth); "
          "nothing is sent while the default one is unset.");
ABSL_FLAG(std::string, correlation, "", "get/list/replay: the correlation id (the event's id).");
ABSL_FLAG(std::string, partner, "", "get/list/stats/replay: the partner name.");
ABSL_FLAG(std::string, direction, "", "get/list/replay: outbound or inbound.");
ABSL_FLAG(std::string, message_id, "",
          "get: the message id of one record; replay: one or more, comma-separated (any number, "
          "sent 1000 per call; with "
          "--direction and --partner only: no filter flag).");
ABSL_FLAG(std::string, status, "",
          "list/replay: received, delivered, dry_run, failed, dead or published.");
ABSL_FLAG(std::string, event_type, "", "list/replay: the event type, e.g. VisitScheduleUpdated.");
ABSL_FLAG(absl::Time, since, absl::InfinitePast(),
          "list/replay: updated at or after this RFC 3339 time, e.g. 2024-05-01T00:00:00Z.");
ABSL_FLAG(absl::Time, until, absl::InfiniteFuture(),
          "list/replay: updated before this RFC 3339 time.");
ABSL_FLAG(absl::Time, received_since, absl::InfinitePast(),
          "list/replay: entered the hub at or after this RFC 3339 time (a window that retries and "
          "replays do not move).");
ABSL_FLAG(absl::Time, received_until, absl::InfiniteFuture(),
          "list/replay: entered the hub before this RFC 3339 time.");
ABSL_FLAG(bool, unconfirmed, false,
          "list/replay: only records whose correlation id no inbound event has confirmed yet "
          "(with --direction outbound --status delivered --until T: what partners accepted "
          "before T and never confirmed).");
ABSL_FLAG(int32_t, limit, 50, "list: most records shown (fetched in pages of up to 1000).");
ABSL_FLAG(bool, dry_run, false, "replay: say what would be replayed; publish nothing.");
ABSL_FLAG(std::string, reason, "", "replay: why (required unless --dry_run; audited).");
ABSL_FLAG(bool, include_in_flight, false,
          "replay: also records the hub has on their way, which are skipped by default (a "
          "second copy would reach the partner): outbound RECEIVED or FAILED (in a retry "
          "queue), inbound RECEIVED within the claim lease. For a record known to be stuck.");
ABSL_FLAG(std::string, requested_by, "", "replay: who asks (default $USER@host; audited).");
ABSL_FLAG(int32_t, max_records, 0, "replay: stop after this many records (0: all that match).");
ABSL_FLAG(absl::Duration, wait, absl::ZeroDuration(),
          "replay: then wait up to this long (e.g. 60s) for the outbound lane to settle every "
          "replayed outbound record, and say how many were delivered, parked again or pending.");

namespace {

using ess::replay::DirectionName;
using ess::replay::StatusName;

constexpr char kUsage[] =
    "essctl --addr HOST:PORT COMMAND [flags]\n"
    "\n"
    "Commands:\n"
    "  get --correlation ID                           records of one correlation id and its "
    "trail\n"
    "  get --direction D --partner P --message_id M   one record in full\n"
    "  list [--partner P] [--direction D] [--status S] [--event_type T] [--correlation ID]\n"
    "       [--since T] [--until T] [--received_since T] [--received_until T] [--unconfirmed]\n"
    "       [--limit N]                               records, newest first (since/until: the\n"
    "                                                 last change; received_*: entering the hub;\n"
    "                                                 unconfirmed: no inbound event confirmed\n"
    "                                                 their correlation id yet)\n"
    "  stats [--partner P]                            counts per partner and direction\n"
    "  replay --reason R [--dry_run] [--max_records N] [--wait 60s] [--include_in_flight]\n"
    "       (--direction D --partner P --message_id M[,M...]\n"
    "       | --partner P | --correlation ID [--direction D] [--status S] [--event_type T]\n"
    "         [--since T] [--until T] [--received_since T] [--received_until T]\n"
    "         [--unconfirmed])\n"
    "                                                 send records through the hub again;\n"
    "                                                 records in flight (outbound RECEIVED or\n"
    "                                                 FAILED, inbound RECEIVED within the claim\n"
    "                                                 lease) are skipped unless\n"
    "                                                 --include_in_flight\n";

constexpr int kExitCallFailed = 1;
constexpr int kExitUsage = 2;

// A usage error: the message and exit code 2.
int Usage(absl::string_view message) {
  std::cerr << "error: " << message << "\n\nusage: " << kUsage;
  return kExitUsage;
}

int CallFailed(const grpc::Status& status) {
  std::cerr << "error: "
            << absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())) << ": "
            << status.error_message() << "\n";
  return kExitCallFailed;
}

std::string FormatTimestamp(const google::protobuf::Timestamp& ts) {
  if (ess::replay::IsUnset(ts)) return "-";
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// Bytes as text when printable, C-escaped otherwise.
std::string Printable(absl::string_view bytes) {
  if (bytes.empty()) return "-";
  return absl::CHexEscape(bytes);
}

std::string Shorten(absl::string_view text, size_t max) {
  if (text.size() <= max) return std::string(text);
  return absl::StrCat(text.substr(0, max - 3), "...");
}

// Prints rows as left-aligned columns; the first row is the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i + 1 == row.size()) {
        absl::StrAppend(&line, row[i]);
      } else {
        absl::StrAppend(&line, row[i], std::string(widths[i] - row[i].size() + 2, ' '));
      }
    }
    std::cout << line << "\n";
  }
}

std::vector<std::string> RecordHeader() {
  return {"RECEIVED", "UPDATED",     "DIRECTION",  "PARTNER", "STATUS",
          "ATTEMPTS", "CORRELATION", "MESSAGE_ID", "EVENT",   "ERROR"};
}

std::vector<std::string> RecordRow(const ess::v1::MessageRecord& r) {
  return {FormatTimestamp(r.received_at()),
          FormatTimestamp(r.updated_at()),
          DirectionName(r.direction()),
          r.partner(),
          StatusName(r.status()) +
              (r.dry_run() && r.status() != ess::v1::MESSAGE_STATUS_DRY_RUN ? " (dry-run)" : ""),
          absl::StrCat(r.attempts()),
          r.correlation_id(),
          r.message_id(),
          r.event_type().empty() ? "-" : r.event_type(),
          r.error().empty() ? "-" : Shorten(r.error(), 60)};
}

void PrintRecordInFull(const ess::v1::MessageRecord& r) {
  PrintTable({
      {"direction", DirectionName(r.direction())},
      {"partner", r.partner()},
      {"message_id", r.message_id()},
      {"correlation_id", r.correlation_id()},
      {"event_type", r.event_type().empty() ? "-" : r.event_type()},
      {"status", StatusName(r.status())},
      {"dry_run", r.dry_run() ? "yes" : "no"},
      {"attempts", absl::StrCat(r.attempts())},
      {"error", r.error().empty() ? "-" : r.error()},
      {"maybe_delivered_as", r.maybe_delivered_as().empty() ? "-" : r.maybe_delivered_as()},
      {"source", r.source().empty() ? "-" : r.source()},
      {"received_at", FormatTimestamp(r.received_at())},
      {"updated_at", FormatTimestamp(r.updated_at())},
      {"payload", Printable(r.payload())},
      {"rendered", Printable(r.rendered())},
  });
}

// "Bearer TOKEN" from --token_env, or empty (see main).
std::string& Authorization() {
  static std::string* const value = new std::string();
  return *value;
}

std::unique_ptr<grpc::ClientContext> NewContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  if (!Authorization().empty()) context->AddMetadata("authorization", Authorization());
  return context;
}

// The flags every command takes: where and how to call.
const std::set<std::string>& CommonFlags() {
  static const auto* const flags = new std::set<std::string>{
      "addr", "timeout", "tls_ca_file", "tls_cert_file", "tls_key_file", "token_env"};
  return *flags;
}

// The flags each command takes besides CommonFlags(), in the order of kUsage's commands.
const std::vector<std::pair<std::string, std::set<std::string>>>& CommandFlags() {
  static const auto* const flags = new std::vector<std::pair<std::string, std::set<std::string>>>{
      {"get", {"correlation", "direction", "partner", "message_id"}},
      {"list",
       {"partner", "direction", "status", "event_type", "correlation", "since", "until",
        "received_since", "received_until", "unconfirmed", "limit"}},
      {"stats", {"partner"}},
      {"replay",
       {"reason", "dry_run", "max_records", "wait", "include_in_flight", "requested_by",
        "direction", "partner", "message_id", "correlation", "status", "event_type", "since",
        "until", "received_since", "received_until", "unconfirmed"}},
  };
  return *flags;
}

// The names of the flags on the command line (after ess::cli::Parse, which checked them and
// wrote their dashes as underscores), in their order.
std::vector<std::string> FlagsGiven(int argc, char** argv) {
  std::vector<std::string> given;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    const size_t eq = arg.find('=');
    absl::string_view name = arg.substr(0, eq);
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::ConsumePrefix(&name, "no")) {  // --nodry_run
      flag = absl::FindCommandLineFlag(name);
    } else if (flag != nullptr && eq == absl::string_view::npos && !flag->IsOfType<bool>()) {
      ++i;  // its value
    }
    given.emplace_back(name);
  }
  return given;
}

// A usage error's message when a flag given on the command line is not one `command` takes
// (it would be ignored: `replay --limit 1` would replay every match), or nullopt. Only
// essctl's own flags (and --config, which essctl does not read) are looked at.
std::optional<std::string> FlagNotTaken(const std::string& command,
                                        const std::vector<std::string>& flags_given) {
  const std::set<std::string>* taken = nullptr;
  for (const auto& [name, flags] : CommandFlags()) {
    if (name == command) taken = &flags;
  }
  std::vector<std::string> given;
  for (const std::string& name : flags_given) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr || (flag->Filename() != __FILE__ && name != "config")) continue;
    if (CommonFlags().contains(name) || taken->contains(name)) continue;
    given.push_back(name);
  }
  if (given.empty()) return std::nullopt;
  const std::string& flag = given.front();  // the first one given
  // What was meant, where a command has a flag of its own for it.
  static const auto* const meant = new std::map<std::pair<std::string, std::string>, std::string>{
      {{"replay", "limit"}, "did you mean --max_records?"},
      {{"list", "max_records"}, "did you mean --limit?"},
      {{"list", "message_id"}, "show one record with get --direction D --partner P --message_id M"},
  };
  std::string hint;
  if (auto it = meant->find({command, flag}); it != meant->end()) {
    hint = it->second;
  } else {
    std::vector<std::string> takers;
    for (const auto& [name, flags] : CommandFlags()) {
      if (flags.contains(flag)) takers.push_back(name);
    }
    hint = takers.empty() ? "no command takes it"
                          : absl::StrCat(absl::StrJoin(takers, " and "),
                                         takers.size() == 1 ? " takes it" : " take it");
  }
  return absl::StrCat(command, " does not take --", flag, " (", hint, ")");
}

// HOST:PORT with a port of 1 to 65535 (the host may be "[::1]"): gRPC would dial an address
// without a port at port 0.
bool IsHostPort(absl::string_view addr) {
  const size_t colon = addr.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  const absl::string_view port = addr.substr(colon + 1);
  uint32_t number = 0;
  return !port.empty() && port.find_first_not_of("0123456789") == absl::string_view::npos &&
         absl::SimpleAtoi(port, &number) && number >= 1 && number <= 65535;
}

// An optional enum flag: `unset` when empty, nullopt when the name is unknown.
template <typename Enum>
std::optional<Enum> EnumFlag(const std::string& value, Enum unset,
                             std::optional<Enum> (*parse)(absl::string_view)) {
  if (value.empty()) return unset;
  return parse(value);
}

int Get(ess::v1::ReplayService::Stub& stub) {
  const std::string correlation = absl::GetFlag(FLAGS_correlation);
  const std::string message_id = absl::GetFlag(FLAGS_message_id);
  ess::v1::GetRequest request;
  if (!correlation.empty() && !message_id.empty()) {
    return Usage("get takes --correlation or --message_id, not both");
  }
  if (!correlation.empty()) {
    request.set_correlation_id(correlation);
  } else if (!message_id.empty()) {
    ess::v1::RecordKey* key = request.mutable_record();
    std::optional<ess::v1::Direction> direction =
        ess::replay::ParseDirection(absl::GetFlag(FLAGS_direction));
    if (!direction.has_value()) {
      return Usage("get --message_id needs --direction outbound|inbound");
    }
    if (absl::GetFlag(FLAGS_partner).empty()) return Usage("get --message_id needs --partner");
    key->set_direction(*direction);
    key->set_partner(absl::GetFlag(FLAGS_partner));
    key->set_message_id(message_id);
  } else {
    return Usage("get needs --correlation ID, or --direction, --partner and --message_id");
  }

  ess::v1::GetResponse response;
  grpc::Status status = stub.Get(NewContext().get(), request, &response);
  if (!status.ok()) return CallFailed(status);

  if (request.has_record()) {
    for (const ess::v1::MessageRecord& r : response.records()) PrintRecordInFull(r);
    return 0;
  }
  const ess::v1::CorrelationTrail& trail = response.trail();
  PrintTable({
      {"correlation", trail.correlation_id()},
      {"stage", trail.stage().empty() ? "-" : trail.stage()},
      {"pushed", trail.has_pushed_at() ? FormatTimestamp(trail.pushed_at()) : "-"},
      {"delivered", trail.has_delivered_at() ? FormatTimestamp(trail.delivered_at()) : "-"},
      {"confirmed", trail.has_confirmed_at() ? FormatTimestamp(trail.confirmed_at()) : "-"},
  });
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows = {RecordHeader()};
  for (const ess::v1::MessageRecord& r : response.records()) rows.push_back(RecordRow(r));
  PrintTable(rows);
  return 0;
}

// The list/replay filter from the flags; a usage error's message when a flag is bad.
std::optional<std::string> BuildFilter(ess::v1::ListRequest& request) {
  request.set_partner(absl::GetFlag(FLAGS_partner));
  request.set_correlation_id(absl::GetFlag(FLAGS_correlation));
  request.set_event_type(absl::GetFlag(FLAGS_event_type));
  std::optional<ess::v1::Direction> direction = EnumFlag(
      absl::GetFlag(FLAGS_direction), ess::v1::DIRECTION_UNSPECIFIED, &ess::replay::ParseDirection);
  if (!direction.has_value()) {
    return absl::StrCat("--direction: unknown value \"", absl::GetFlag(FLAGS_direction),
                        "\" (outbound or inbound)");
  }
  request.set_direction(*direction);
  std::optional<ess::v1::MessageStatus> message_status = EnumFlag(
      absl::GetFlag(FLAGS_status), ess::v1::MESSAGE_STATUS_UNSPECIFIED, &ess::replay::ParseStatus);
  if (!message_status.has_value()) {
    return absl::StrCat("--status: unknown value \"", absl::GetFlag(FLAGS_status),
                        "\" (received, delivered, dry_run, failed, dead, published)");
  }
  request.set_status(*message_status);
  if (const absl::Time since = absl::GetFlag(FLAGS_since); since != absl::InfinitePast()) {
    *request.mutable_since() = ess::replay::FromUnixMicros(absl::ToUnixMicros(since));
  }
  if (const absl::Time until = absl::GetFlag(FLAGS_until); until != absl::InfiniteFuture()) {
    *request.mutable_until() = ess::replay::FromUnixMicros(absl::ToUnixMicros(until));
  }
  if (const absl::Time t = absl::GetFlag(FLAGS_received_since); t != absl::InfinitePast()) {
    *request.mutable_received_since() = ess::replay::FromUnixMicros(absl::ToUnixMicros(t));
  }
  if (const absl::Time t = absl::GetFlag(FLAGS_received_until); t != absl::InfiniteFuture()) {
    *request.mutable_received_until() = ess::replay::FromUnixMicros(absl::ToUnixMicros(t));
  }
  request.set_unconfirmed(absl::GetFlag(FLAGS_unconfirmed));
  return std::nullopt;
}

// The filter flags given beyond --direction and --partner (which a key takes too), by name.
std::vector<std::string> FilterFlagsSet() {
  std::vector<std::string> set;
  if (!absl::GetFlag(FLAGS_status).empty()) set.push_back("--status");
  if (!absl::GetFlag(FLAGS_event_type).empty()) set.push_back("--event_type");
  if (!absl::GetFlag(FLAGS_correlation).empty()) set.push_back("--correlation");
  if (absl::GetFlag(FLAGS_since) != absl::InfinitePast()) set.push_back("--since");
  if (absl::GetFlag(FLAGS_until) != absl::InfiniteFuture()) set.push_back("--until");
  if (absl::GetFlag(FLAGS_received_since) != absl::InfinitePast()) {
    set.push_back("--received_since");
  }
  if (absl::GetFlag(FLAGS_received_until) != absl::InfiniteFuture()) {
    set.push_back("--received_until");
  }
  if (absl::GetFlag(FLAGS_unconfirmed)) set.push_back("--unconfirmed");
  return set;
}

int List(ess::v1::ReplayService::Stub& stub) {
  ess::v1::ListRequest request;
  if (std::optional<std::string> error = BuildFilter(request); error.has_value()) {
    return Usage(*error);
  }
  const int32_t limit = absl::GetFlag(FLAGS_limit);
  if (limit <= 0) return Usage("--limit must be at least 1");

  std::vector<std::vector<std::string>> rows = {RecordHeader()};
  int32_t shown = 0;
  bool more = false;
  for (;;) {
    request.set_page_size(static_cast<uint32_t>(std::min(limit - shown, 1000)));
    ess::v1::ListResponse response;
    grpc::Status status = stub.List(NewContext().get(), request, &response);
    if (!status.ok()) return CallFailed(status);
    for (const ess::v1::MessageRecord& r : response.records()) {
      rows.push_back(RecordRow(r));
      ++shown;
    }
    more = !response.next_page_token().empty();
    if (!more || shown >= limit || response.records().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  PrintTable(rows);
  std::cout << "(" << shown << " record" << (shown == 1 ? "" : "s")
            << (more ? "; more match, raise --limit" : "") << ")\n";
  return 0;
}

int Stats(ess::v1::ReplayService::Stub& stub) {
  ess::v1::StatsRequest request;
  request.set_partner(absl::GetFlag(FLAGS_partner));
  ess::v1::StatsResponse response;
  grpc::Status status = stub.Stats(NewContext().get(), request, &response);
  if (!status.ok()) return CallFailed(status);
  std::vector<std::vector<std::string>> rows = {{"PARTNER", "DIRECTION", "RECEIVED", "DELIVERED",
                                                 "DRY_RUN", "FAILED", "DEAD", "PUBLISHED",
                                                 "OLDEST_PENDING", "SUCCESS"}};
  for (const ess::v1::PartnerStats& p : response.partners()) {
    const bool outbound = p.direction() == ess::v1::DIRECTION_OUTBOUND;
    rows.push_back({p.partner(), DirectionName(p.direction()), absl::StrCat(p.received()),
                    absl::StrCat(p.delivered()), absl::StrCat(p.dry_run()),
                    absl::StrCat(p.failed()), absl::StrCat(p.dead()), absl::StrCat(p.published()),
                    p.has_oldest_pending() ? FormatTimestamp(p.oldest_pending()) : "-",
                    outbound && p.delivered() + p.failed() + p.dead() > 0
                        ? absl::StrFormat("%.1f%%", 100.0 * p.success_rate())
                        : "-"});
  }
  PrintTable(rows);
  return 0;
}

std::string OutcomeName(ess::v1::ReplayedRecord::Outcome outcome) {
  switch (outcome) {
    case ess::v1::ReplayedRecord::OUTCOME_REPLAYED:
      return "replayed";
    case ess::v1::ReplayedRecord::OUTCOME_SKIPPED:
      return "skipped";
    case ess::v1::ReplayedRecord::OUTCOME_FAILED:
      return "failed";
    case ess::v1::ReplayedRecord::OUTCOME_UNCONFIRMED:
      return "unconfirmed";
    default:
      return "unspecified";
  }
}

// Who runs this command: $USER@host.
std::string Operator() {
  const char* user = std::getenv("USER");
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(user != nullptr && *user != '\0' ? user : "unknown", "@",
                      host[0] != '\0' ? host : "localhost");
}

struct Settled {
  uint64_t delivered = 0, dry_run = 0, dead = 0, pending = 0;
};

// partner -> message id -> the record's updated_at (Unix micros) when the replay read it.
using ReplayedKeys = std::map<std::string, std::map<std::string, int64_t>>;

// Polls the store until every replayed outbound record is settled (delivered, dry-run, or dead
// again) or `wait` has passed. A record counts as settled only once it was written after the
// replay read it (its updated_at moved, in the store's own clock): until the replay's mark, or
// the lane, writes it, a record keeps its old status (DEAD when the broker's confirm is late).
// Reads the records by key (Lookup), so neither this machine's clock nor the number of other
// records matters.
absl::StatusOr<Settled> WaitForOutcomes(ess::v1::ReplayService::Stub& stub,
                                        const ReplayedKeys& keys, absl::Duration wait) {
  std::vector<ess::v1::LookupRequest> requests;
  std::vector<int64_t> read_at;  // per key, in the order of the requests' keys
  for (const auto& [partner, ids] : keys) {
    for (const auto& [id, updated_at] : ids) {
      read_at.push_back(updated_at);
      if (requests.empty() ||
          static_cast<size_t>(requests.back().keys_size()) == ess::kMaxLookupKeys) {
        requests.emplace_back();
      }
      ess::v1::RecordKey* key = requests.back().add_keys();
      key->set_direction(ess::v1::DIRECTION_OUTBOUND);
      key->set_partner(partner);
      key->set_message_id(id);
    }
  }
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    Settled settled;
    size_t k = 0;
    for (const ess::v1::LookupRequest& request : requests) {
      ess::v1::LookupResponse response;
      grpc::Status s = stub.Lookup(NewContext().get(), request, &response);
      if (!s.ok()) {
        return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
      }
      for (const ess::v1::LookupResult& r : response.results()) {
        // The replay's claim (written before its publish) is no outcome: still pending. (Every
        // result takes its read time, found or not, so that the next ones keep theirs.)
        const int64_t read = read_at[k++];
        const bool written_since =
            r.found() && ess::replay::ToUnixMicros(r.record().updated_at()).value_or(0) != read &&
            !ess::replay::IsReplayClaim(r.record());
        switch (written_since ? r.record().status() : ess::v1::MESSAGE_STATUS_RECEIVED) {
          case ess::v1::MESSAGE_STATUS_DELIVERED:
            ++settled.delivered;
            break;
          case ess::v1::MESSAGE_STATUS_DRY_RUN:  // the lane runs dry: nothing reached the partner
            ++settled.dry_run;
            break;
          case ess::v1::MESSAGE_STATUS_DEAD:
            ++settled.dead;
            break;
          default:
            // RECEIVED (as the replay marked it), FAILED and retrying, or not written since the
            // replay read it (its confirm not yet marked)
            ++settled.pending;
            break;
        }
      }
    }
    if (settled.pending == 0 || absl::Now() >= deadline) return settled;
    absl::SleepFor(absl::Milliseconds(250));
  }
}

int Replay(ess::v1::ReplayService::Stub& stub) {
  ess::v1::ReplayRequest request;
  request.set_dry_run(absl::GetFlag(FLAGS_dry_run));
  request.set_include_in_flight(absl::GetFlag(FLAGS_include_in_flight));
  request.set_reason(absl::GetFlag(FLAGS_reason));
  request.set_requested_by(
      absl::GetFlag(FLAGS_requested_by).empty() ? Operator() : absl::GetFlag(FLAGS_requested_by));
  if (!request.dry_run() && absl::StripAsciiWhitespace(request.reason()).empty()) {
    return Usage("replay needs --reason (it goes into the audit trail), or --dry_run");
  }
  const std::string message_ids = absl::GetFlag(FLAGS_message_id);
  // The keys of --message_id, replayed in calls of up to kMaxReplayKeys.
  std::vector<ess::v1::RecordKey> keys;
  size_t sent_keys = 0;
  const int32_t max_records = absl::GetFlag(FLAGS_max_records);
  if (max_records < 0) return Usage("--max_records must not be negative");
  if (!message_ids.empty()) {
    if (std::vector<std::string> filters = FilterFlagsSet(); !filters.empty()) {
      return Usage(absl::StrCat(
          "replay --message_id selects records by key only; it cannot be "
          "combined with ",
          absl::StrJoin(filters, ", "), " (drop them, or select by filter without --message_id)"));
    }
    std::optional<ess::v1::Direction> direction =
        ess::replay::ParseDirection(absl::GetFlag(FLAGS_direction));
    if (!direction.has_value()) {
      return Usage("replay --message_id needs --direction outbound|inbound");
    }
    if (absl::GetFlag(FLAGS_partner).empty()) return Usage("replay --message_id needs --partner");
    std::set<std::string> given;
    for (absl::string_view id : absl::StrSplit(message_ids, ',', absl::SkipWhitespace())) {
      ess::v1::RecordKey& key = keys.emplace_back();
      key.set_direction(*direction);
      key.set_partner(absl::GetFlag(FLAGS_partner));
      key.set_message_id(std::string(absl::StripAsciiWhitespace(id)));
      // Sent in calls of up to 1000 keys, a repeated id would be replayed twice.
      if (!given.insert(key.message_id()).second) {
        return Usage(absl::StrCat("--message_id: ", key.message_id(), " is given twice"));
      }
    }
  } else {
    if (std::optional<std::string> error = BuildFilter(*request.mutable_filter());
        error.has_value()) {
      return Usage(*error);
    }
    if (request.filter().partner().empty() && request.filter().correlation_id().empty()) {
      return Usage(
          "replay needs --partner or --correlation (or --message_id): it never "
          "replays the whole store by accident");
    }
  }

  std::vector<std::vector<std::string>> rows = {
      {"DIRECTION", "PARTNER", "MESSAGE_ID", "CORRELATION", "WAS", "OUTCOME", "TARGET / REASON"}};
  uint64_t replayed = 0, skipped = 0, failed = 0, unconfirmed = 0;
  int32_t seen = 0;
  bool more = false;
  // The outbound records replayed, for --wait.
  ReplayedKeys outbound;
  constexpr int32_t kPage = static_cast<int32_t>(ess::kMaxReplayKeys);
  for (;;) {
    if (request.has_filter()) {
      const int32_t left = max_records == 0 ? kPage : std::min(max_records - seen, kPage);
      request.mutable_filter()->set_page_size(static_cast<uint32_t>(left));
    } else {
      request.clear_keys();
      for (; sent_keys < keys.size() && request.keys_size() < kPage; ++sent_keys) {
        *request.add_keys() = keys[sent_keys];
      }
    }
    ess::v1::ReplayResponse response;
    grpc::Status status = stub.Replay(NewContext().get(), request, &response);
    if (!status.ok()) {
      if (seen > 0) {
        // What the earlier calls did is done: show it, as after a complete replay.
        std::cout << std::flush;
        PrintTable(rows);
        std::cout << std::flush;
        std::cerr << "after " << replayed << " replayed, " << skipped << " skipped, " << failed
                  << " failed and " << unconfirmed << " unconfirmed (above), the next call:\n";
      }
      return CallFailed(status);
    }
    for (const ess::v1::ReplayedRecord& r : response.records()) {
      rows.push_back({DirectionName(r.key().direction()), r.key().partner(), r.key().message_id(),
                      r.correlation_id().empty() ? "-" : r.correlation_id(),
                      r.previous_status() == ess::v1::MESSAGE_STATUS_UNSPECIFIED
                          ? "-"
                          : StatusName(r.previous_status()),
                      OutcomeName(r.outcome()), r.error().empty() ? r.target() : r.error()});
      // An unconfirmed publish is most likely on the queue all the same: wait for it too.
      if ((r.outcome() == ess::v1::ReplayedRecord::OUTCOME_REPLAYED ||
           r.outcome() == ess::v1::ReplayedRecord::OUTCOME_UNCONFIRMED) &&
          r.key().direction() == ess::v1::DIRECTION_OUTBOUND) {
        outbound[r.key().partner()][r.key().message_id()] =
            ess::replay::ToUnixMicros(r.previous_updated_at()).value_or(0);
      }
    }
    replayed += response.replayed();
    skipped += response.skipped();
    failed += response.failed();
    unconfirmed += response.unconfirmed();
    seen += response.records_size();
    if (!request.has_filter()) {
      if (sent_keys >= keys.size()) break;
      continue;
    }
    more = !response.next_page_token().empty();
    if (!more || response.records().empty() || (max_records > 0 && seen >= max_records)) break;
    request.mutable_filter()->set_page_token(response.next_page_token());
  }
  PrintTable(rows);
  std::cout << "("
            << (request.dry_run() ? "dry run, nothing published: would replay " : "replayed ")
            << replayed << ", skipped " << skipped << ", failed " << failed
            << (unconfirmed > 0 ? absl::StrCat(", unconfirmed ", unconfirmed,
                                               " (published; marked when the broker confirms)")
                                : "")
            << (more ? "; more match, raise --max_records" : "") << ")\n";
  int exit_code = skipped + failed + unconfirmed > 0 ? kExitCallFailed : 0;
  if (const absl::Duration wait = absl::GetFlag(FLAGS_wait);
      wait > absl::ZeroDuration() && !request.dry_run() && !outbound.empty()) {
    std::cout << std::flush;  // what was replayed, while the outcomes are awaited
    absl::StatusOr<Settled> settled = WaitForOutcomes(stub, outbound, wait);
    if (!settled.ok()) {
      std::cerr << "error: waiting for the outcomes: " << settled.status().message() << "\n";
      return kExitCallFailed;
    }
    std::cout << "(then: delivered " << settled->delivered << ", parked again " << settled->dead
              << ", still pending " << settled->pending
              << (settled->dry_run > 0
                      ? absl::StrCat(", dry-run by the lane (not sent) ", settled->dry_run)
                      : "")
              << ")\n";
    if (settled->dry_run + settled->dead + settled->pending > 0) exit_code = kExitCallFailed;
  }
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args = ess::cli::Parse(argc, argv, kUsage);
  const std::vector<std::string> flags_given = FlagsGiven(argc, argv);
  if (args.empty()) return Usage("no command given");
  if (args.size() > 1) {
    return Usage(absl::StrCat("unexpected arguments after ", args[0], ": ",
                              absl::StrJoin(args.begin() + 1, args.end(), " ")));
  }
  const std::string& command = args[0];
  if (command != "get" && command != "list" && command != "stats" && command != "replay") {
    return Usage(absl::StrCat("unknown command \"", command, "\""));
  }
  if (std::optional<std::string> error = FlagNotTaken(command, flags_given); error.has_value()) {
    return Usage(*error);
  }
  const std::string token_env = absl::GetFlag(FLAGS_token_env);
  if (const char* token = token_env.empty() ? nullptr : std::getenv(token_env.c_str());
      token != nullptr && *token != '\0') {
    // Checked before any call: gRPC would abort on it, printing it.
    if (const std::string problem = ess::BearerTokenProblem(token); !problem.empty()) {
      return Usage(absl::StrCat("--token_env: the token in ", token_env, " ", problem));
    }
    Authorization() = absl::StrCat("Bearer ", token);
  } else if (token_env != "ESS_REPLAY_TOKEN") {
    return Usage(absl::StrCat("--token_env: environment variable ", token_env, " is not set"));
  }
  const std::string addr = absl::GetFlag(FLAGS_addr);
  if (addr.empty()) return Usage("--addr must not be empty");
  if (!IsHostPort(addr)) {
    return Usage(absl::StrCat("--addr: \"", addr, "\" is not HOST:PORT (e.g. 127.0.0.1:50051)"));
  }
  ess::ReplayTls tls;
  if (absl::GetFlag(FLAGS_tls_cert_file).empty() != absl::GetFlag(FLAGS_tls_key_file).empty()) {
    return Usage("--tls_cert_file and --tls_key_file go together");
  }
  // Without a CA the channel would be plaintext: the client certificate unused, the server
  // unverified, the token sent in clear.
  if (!absl::GetFlag(FLAGS_tls_cert_file).empty() && absl::GetFlag(FLAGS_tls_ca_file).empty()) {
    return Usage(
        "--tls_cert_file needs --tls_ca_file (TLS is on only with a CA to verify the "
        "server)");
  }
  for (auto [flag, name, out] :
       {std::tuple{absl::GetFlag(FLAGS_tls_ca_file), "--tls_ca_file", &tls.ca_pem},
        std::tuple{absl::GetFlag(FLAGS_tls_cert_file), "--tls_cert_file", &tls.cert_pem},
        std::tuple{absl::GetFlag(FLAGS_tls_key_file), "--tls_key_file", &tls.key_pem}}) {
    if (flag.empty()) continue;
    absl::StatusOr<std::string> pem = ess::ReadPemFile(flag, name);
    if (!pem.ok()) return Usage(pem.status().message());
    *out = *std::move(pem);
  }
  std::unique_ptr<ess::v1::ReplayService::Stub> stub = ess::MakeReplayStub(addr, tls);
  if (command == "get") return Get(*stub);
  if (command == "list") return List(*stub);
  if (command == "replay") return Replay(*stub);
  return Stats(*stub);
}
