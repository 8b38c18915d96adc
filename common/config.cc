#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/mapping.h"
#include "common/queue_names.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/message.h"

namespace ess::config {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Sv(std::string_view s) { return std::string(s); }

std::string Resolve(std::string_view base_dir, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(std::string(base_dir)) / path).lexically_normal().string();
}

// Walks a YAML document against a proto schema, remembering where each field path was written
// so that validation errors after parsing can point at the line too.
class Converter {
 public:
  // `base_dir`: where relative file settings of the adapters are taken from.
  Converter(std::string file, std::string base_dir, const SettingsTypeResolver& resolver)
      : file_(std::move(file)), base_dir_(std::move(base_dir)), resolver_(resolver) {}

  absl::Status Convert(const YAML::Node& node, const std::string& path, Message* msg) {
    if (!node.IsMap()) {
      if (node.IsNull() && path.empty()) return absl::OkStatus();  // empty file
      return Error(node, path, "expected a map");
    }
    Remember(path, node);
    const Descriptor* desc = msg->GetDescriptor();
    std::vector<std::pair<const FieldDescriptor*, YAML::Node>> deferred_any;
    // YAML takes a repeated key, the last one winning: a second `port:` or `partners:` would
    // quietly override the first.
    absl::flat_hash_map<const FieldDescriptor*, YAML::Mark> seen;
    for (const auto& kv : node) {
      std::string key = kv.first.as<std::string>();
      const FieldDescriptor* field = desc->FindFieldByName(key);
      if (field == nullptr) field = FindByJsonName(desc, key);
      std::string field_path = path.empty() ? key : absl::StrCat(path, ".", key);
      if (field == nullptr) {
        return Error(
            kv.first, field_path,
            absl::StrCat("unknown field (", desc->name(), " has: ", FieldNames(desc), ")"));
      }
      if (auto [it, first] = seen.try_emplace(field, kv.first.Mark()); !first) {
        return Repeated(kv.first, field_path, it->second);
      }
      if (field->message_type() != nullptr &&
          field->message_type()->full_name() == "google.protobuf.Any") {
        deferred_any.emplace_back(field, kv.second);  // needs its sibling `adapter` first
        continue;
      }
      absl::Status s = ConvertField(kv.second, field_path, field, msg);
      if (!s.ok()) return s;
    }
    for (auto& [field, value] : deferred_any) {
      std::string field_path =
          path.empty() ? Sv(field->name()) : absl::StrCat(path, ".", field->name());
      absl::Status s = ConvertAny(value, field_path, field, msg);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // "FILE:LINE:COL: PATH: what", pointing at where PATH (or its closest parent) was written.
  absl::Status ErrorAt(const std::string& path, std::string_view what) const {
    std::string p = path;
    while (true) {
      auto it = marks_.find(p);
      if (it != marks_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            file_, ":", it->second.first, ":", it->second.second, ": ", path, ": ", Sv(what)));
      }
      if (p.empty()) break;
      size_t cut = p.find_last_of(".[");
      p = cut == std::string::npos ? "" : p.substr(0, cut);
    }
    return absl::InvalidArgumentError(absl::StrCat(file_, ": ", path, ": ", Sv(what)));
  }

 private:
  static const FieldDescriptor* FindByJsonName(const Descriptor* desc, const std::string& key) {
    for (int i = 0; i < desc->field_count(); ++i) {
      if (desc->field(i)->json_name() == key) return desc->field(i);
    }
    return nullptr;
  }

  static std::string FieldNames(const Descriptor* desc) {
    std::vector<std::string> names;
    for (int i = 0; i < desc->field_count(); ++i) names.push_back(desc->field(i)->name());
    return absl::StrJoin(names, ", ");
  }

  void Remember(const std::string& path, const YAML::Node& node) {
    YAML::Mark m = node.Mark();
    if (m.line >= 0) marks_.try_emplace(path, m.line + 1, m.column + 1);
  }

  absl::Status Error(const YAML::Node& node, const std::string& path, std::string_view what) {
    Remember(path, node);
    return ErrorAt(path, what);
  }

  // At the second time a key is written.
  absl::Status Repeated(const YAML::Node& key, const std::string& path, const YAML::Mark& first) {
    marks_.erase(path);  // point at the repeat, not the first
    return Error(key, path,
                 absl::StrCat("repeated (first at line ", first.line + 1, ", column ",
                              first.column + 1, ")"));
  }

  absl::Status ConvertField(const YAML::Node& node, const std::string& path,
                            const FieldDescriptor* field, Message* msg) {
    Remember(path, node);
    if (field->is_map()) {
      if (!node.IsMap()) return Error(node, path, "expected a map");
      const Descriptor* entry = field->message_type();
      absl::flat_hash_map<std::string, YAML::Mark> seen;
      for (const auto& kv : node) {
        std::string key = kv.first.as<std::string>();
        std::string epath = absl::StrCat(path, ".", key);
        if (auto [it, first] = seen.try_emplace(key, kv.first.Mark()); !first) {
          return Repeated(kv.first, epath, it->second);
        }
        Message* e = msg->GetReflection()->AddMessage(msg, field);
        absl::Status s = SetScalar(kv.first, epath, entry->map_key(), e);
        if (s.ok()) s = SetValue(kv.second, epath, entry->map_value(), e);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }
    if (field->is_repeated()) {
      if (node.IsNull()) return absl::OkStatus();
      if (!node.IsSequence()) return Error(node, path, "expected a list");
      for (size_t i = 0; i < node.size(); ++i) {
        absl::Status s = SetValue(node[i], absl::StrCat(path, "[", i, "]"), field, msg);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }
    return SetValue(node, path, field, msg);
  }

  // Sets (or, for a repeated field, adds) one value.
  absl::Status SetValue(const YAML::Node& node, const std::string& path,
                        const FieldDescriptor* field, Message* msg) {
    Remember(path, node);
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const Reflection* r = msg->GetReflection();
      Message* sub =
          field->is_repeated() ? r->AddMessage(msg, field) : r->MutableMessage(msg, field);
      return Convert(node, path, sub);
    }
    return SetScalar(node, path, field, msg);
  }

  absl::Status SetScalar(const YAML::Node& node, const std::string& path,
                         const FieldDescriptor* field, Message* msg) {
    if (!node.IsScalar()) return Error(node, path, "expected a single value");
    const std::string text = node.Scalar();
    const Reflection* r = msg->GetReflection();
    const bool rep = field->is_repeated();
    auto bad = [&](std::string_view kind) {
      return Error(node, path, absl::StrCat("expected ", Sv(kind), ", got \"", text, "\""));
    };
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        rep ? r->AddString(msg, field, text) : r->SetString(msg, field, text);
        return absl::OkStatus();
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool v;
        if (!absl::SimpleAtob(text, &v)) return bad("true or false");
        rep ? r->AddBool(msg, field, v) : r->SetBool(msg, field, v);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_INT32: {
        int32_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad("an integer");
        rep ? r->AddInt32(msg, field, v) : r->SetInt32(msg, field, v);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_INT64: {
        int64_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad("an integer");
        rep ? r->AddInt64(msg, field, v) : r->SetInt64(msg, field, v);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_UINT32: {
        uint32_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad("a non-negative integer");
        rep ? r->AddUInt32(msg, field, v) : r->SetUInt32(msg, field, v);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad("a non-negative integer");
        rep ? r->AddUInt64(msg, field, v) : r->SetUInt64(msg, field, v);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_DOUBLE:
      case FieldDescriptor::CPPTYPE_FLOAT: {
        double v;
        if (!absl::SimpleAtod(text, &v)) return bad("a number");
        if (field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
          rep ? r->AddFloat(msg, field, static_cast<float>(v))
              : r->SetFloat(msg, field, static_cast<float>(v));
        } else {
          rep ? r->AddDouble(msg, field, v) : r->SetDouble(msg, field, v);
        }
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_ENUM: {
        const auto* e = field->enum_type()->FindValueByName(absl::AsciiStrToUpper(text));
        if (e == nullptr) return bad(absl::StrCat("a value of ", field->enum_type()->name()));
        rep ? r->AddEnum(msg, field, e) : r->SetEnum(msg, field, e);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
    return Error(node, path, "unsupported field type");
  }

  // A partner's `settings`: parsed into the message type its `adapter` registers, then packed.
  absl::Status ConvertAny(const YAML::Node& node, const std::string& path,
                          const FieldDescriptor* field, Message* msg) {
    Remember(path, node);
    if (!resolver_) return absl::OkStatus();  // the caller does not need adapter settings
    const FieldDescriptor* adapter_field = msg->GetDescriptor()->FindFieldByName("adapter");
    std::string adapter =
        adapter_field ? msg->GetReflection()->GetString(*msg, adapter_field) : std::string();
    const Descriptor* type = resolver_(adapter);
    if (type == nullptr) return absl::OkStatus();  // reported by validation on `adapter`
    std::unique_ptr<Message> typed(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
    absl::Status s = Convert(node, path, typed.get());
    if (!s.ok()) return s;
    // Files the adapter reads (ca_file, private_key_file, known_hosts_file...), relative to the
    // config file's folder as every other path of the file.
    const google::protobuf::Reflection* r = typed->GetReflection();
    for (int i = 0; i < type->field_count(); ++i) {
      const FieldDescriptor* f = type->field(i);
      if (f->type() == FieldDescriptor::TYPE_STRING && !f->is_repeated() &&
          absl::EndsWith(f->name(), "_file")) {
        r->SetString(typed.get(), f, Resolve(base_dir_, r->GetString(*typed, f)));
      }
    }
    auto* any =
        static_cast<google::protobuf::Any*>(msg->GetReflection()->MutableMessage(msg, field));
    any->PackFrom(*typed);
    return absl::OkStatus();
  }

  std::string file_;
  std::string base_dir_;
  const SettingsTypeResolver& resolver_;
  absl::flat_hash_map<std::string, std::pair<int, int>> marks_;
};

// SftpPoll.max_file_bytes: when 0, and at most.
constexpr uint64_t kDefaultPollMaxFileBytes = uint64_t{64} << 20;
constexpr uint64_t kMaxPollMaxFileBytes = uint64_t{1} << 30;

void ApplyDefaults(std::string_view base_dir, ess::v1::HubConfig& c) {
  auto* bus = c.mutable_bus();
  if (bus->host().empty()) bus->set_host("127.0.0.1");
  if (bus->port() == 0) bus->set_port(5672);
  if (bus->vhost().empty()) bus->set_vhost("/");
  if (bus->user().empty()) bus->set_user("guest");
  if (bus->password().empty()) bus->set_password("guest");
  if (bus->heartbeat_seconds() == 0) bus->set_heartbeat_seconds(30);
  if (bus->events_exchange().empty()) bus->set_events_exchange("events");
  auto* replay = c.mutable_replay();
  if (replay->address().empty()) replay->set_address(replay->listen());
  replay->set_database_path(Resolve(base_dir, replay->database_path()));
  if (replay->has_tls()) {
    auto* tls = replay->mutable_tls();
    tls->set_cert_file(Resolve(base_dir, tls->cert_file()));
    tls->set_key_file(Resolve(base_dir, tls->key_file()));
    tls->set_ca_file(Resolve(base_dir, tls->ca_file()));
    tls->set_client_ca_file(Resolve(base_dir, tls->client_ca_file()));
    tls->set_client_cert_file(Resolve(base_dir, tls->client_cert_file()));
    tls->set_client_key_file(Resolve(base_dir, tls->client_key_file()));
  }
  if (replay->batch_max() == 0) replay->set_batch_max(256);
  if (replay->batch_delay_ms() == 0) replay->set_batch_delay_ms(2);
  if (replay->record_delay_ms() == 0) replay->set_record_delay_ms(20);
  if (replay->deadline_ms() == 0) replay->set_deadline_ms(5000);
  if (replay->has_retention() && replay->retention().sweep_interval_seconds() == 0) {
    replay->mutable_retention()->set_sweep_interval_seconds(300);
  }
  if (replay->drift().check_interval_seconds() == 0) {
    replay->mutable_drift()->set_check_interval_seconds(60);
  }
  if (replay->drift().window_seconds() == 0) replay->mutable_drift()->set_window_seconds(86400);
  if (replay->has_postgres() && replay->postgres().max_connections() == 0) {
    replay->mutable_postgres()->set_max_connections(8);
  }
  if (bus->delivery_limit() == 0) bus->set_delivery_limit(20);
  if (c.outbound().prefetch() == 0) c.mutable_outbound()->set_prefetch(256);
  if (c.outbound().shutdown_deadline_ms() == 0) {
    c.mutable_outbound()->set_shutdown_deadline_ms(10000);
  }
  if (c.outbound().max_event_bytes() == 0) c.mutable_outbound()->set_max_event_bytes(1 << 20);
  if (c.inbound().max_body_bytes() == 0) c.mutable_inbound()->set_max_body_bytes(1 << 20);
  if (c.inbound().dedupe_memory_ids() == 0) c.mutable_inbound()->set_dedupe_memory_ids(16384);
  if (c.inbound().dedupe_window_seconds() == 0) {
    c.mutable_inbound()->set_dedupe_window_seconds(600);
  }
  if (c.inbound().claim_lease_ms() == 0) c.mutable_inbound()->set_claim_lease_ms(35000);
  if (c.inbound().shutdown_deadline_ms() == 0) {
    c.mutable_inbound()->set_shutdown_deadline_ms(20000);
  }
  if (c.inbound().max_connections() == 0) c.mutable_inbound()->set_max_connections(10000);
  for (auto& p : *c.mutable_partners()) {
    if (p.has_inbound() && p.inbound().has_auth() && p.inbound().auth().tolerance_seconds() == 0) {
      p.mutable_inbound()->mutable_auth()->set_tolerance_seconds(300);
    }
    if (p.has_inbound() && p.inbound().has_poll()) {
      auto* poll = p.mutable_inbound()->mutable_poll();
      if (poll->interval_ms() == 0) poll->set_interval_ms(60000);
      if (poll->settle_ms() == 0) poll->set_settle_ms(2000);
      if (poll->suffix().empty()) poll->set_suffix(".csv");
      if (poll->max_file_bytes() == 0) poll->set_max_file_bytes(kDefaultPollMaxFileBytes);
    }
    if (!p.has_outbound()) continue;
    auto* out = p.mutable_outbound();
    if (out->max_in_flight() == 0) out->set_max_in_flight(64);
    auto* retry = out->mutable_retry();
    if (retry->max_attempts() == 0) retry->set_max_attempts(5);
    if (retry->initial_backoff_ms() == 0) retry->set_initial_backoff_ms(1000);
    if (retry->max_backoff_ms() == 0) retry->set_max_backoff_ms(60000);
    if (retry->max_age_ms() == 0) retry->set_max_age_ms(86400000);
    auto* breaker = out->mutable_circuit_breaker();
    if (breaker->failure_rate_percent() == 0) breaker->set_failure_rate_percent(50);
    if (breaker->window() == 0) breaker->set_window(20);
    if (breaker->open_ms() == 0) breaker->set_open_ms(1000);
    if (breaker->max_open_ms() == 0) breaker->set_max_open_ms(30000);
  }
}

absl::Status ValidateMapping(const Converter& conv, const std::string& path,
                             const google::protobuf::RepeatedPtrField<ess::v1::FieldMapping>& m) {
  if (m.empty()) return conv.ErrorAt(path, "must list at least one field");
  absl::StatusOr<Mapper> mapper = Mapper::Compile(m);
  if (!mapper.ok()) {
    // Mapper errors start with "[i].field: ...".
    std::string msg(mapper.status().message());
    size_t colon = msg.find(": ");
    std::string sub = colon == std::string::npos ? "" : msg.substr(0, colon);
    return conv.ErrorAt(path + sub, colon == std::string::npos ? msg : msg.substr(colon + 2));
  }
  return absl::OkStatus();
}

// Adapter kinds whose partners drop files the inbound lane can poll.
bool PullsFiles(std::string_view adapter) { return adapter == "sftp_csv"; }

bool IsAbsoluteRemotePath(const std::string& path) {
  return !path.empty() && path[0] == '/' && std::none_of(path.begin(), path.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
}

std::string_view TrimTrailingSlashes(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return path;
}

absl::Status ValidatePoll(const Converter& conv, const std::string& path,
                          const std::string& adapter, const ess::v1::SftpPoll& poll) {
  if (!PullsFiles(adapter)) {
    return conv.ErrorAt(
        path, absl::StrCat("adapter \"", adapter, "\" cannot pull files (a poll needs sftp_csv)"));
  }
  if (!IsAbsoluteRemotePath(poll.remote_dir())) {
    return conv.ErrorAt(path + ".remote_dir", "must be an absolute path");
  }
  if (!IsAbsoluteRemotePath(poll.processed_dir())) {
    return conv.ErrorAt(path + ".processed_dir", "must be an absolute path");
  }
  if (TrimTrailingSlashes(poll.remote_dir()) == TrimTrailingSlashes(poll.processed_dir())) {
    return conv.ErrorAt(path + ".processed_dir", "must differ from remote_dir");
  }
  if (poll.suffix().find('/') != std::string::npos) {
    return conv.ErrorAt(path + ".suffix", "must not contain '/'");
  }
  if (poll.max_file_bytes() > kMaxPollMaxFileBytes) {
    // A file is read whole into memory, and its rows' events and records with it.
    return conv.ErrorAt(path + ".max_file_bytes",
                        absl::StrCat("must be at most ", kMaxPollMaxFileBytes,
                                     " (1 GiB): a polled file is read whole into memory"));
  }
  return absl::OkStatus();
}

// The folder a poll of partner `p` reads, as "HOST:PORT:REMOTE_DIR" (the host and port of the
// adapter's settings, port 22 when unset), or nullopt when the settings are not read (no
// resolver) or have no host and port.
std::optional<std::string> PollTarget(const ess::v1::PartnerConfig& p,
                                      const ess::v1::SftpPoll& poll,
                                      const SettingsTypeResolver& resolver) {
  if (!resolver || !p.has_settings()) return std::nullopt;
  const Descriptor* type = resolver(p.adapter());
  if (type == nullptr) return std::nullopt;
  const FieldDescriptor* host = type->FindFieldByName("host");
  const FieldDescriptor* port = type->FindFieldByName("port");
  if (host == nullptr || host->cpp_type() != FieldDescriptor::CPPTYPE_STRING ||
      host->is_repeated() || port == nullptr ||
      port->cpp_type() != FieldDescriptor::CPPTYPE_UINT32 || port->is_repeated()) {
    return std::nullopt;
  }
  std::unique_ptr<Message> typed(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
  if (!p.settings().UnpackTo(typed.get())) return std::nullopt;
  const Reflection* r = typed->GetReflection();
  const uint32_t n = r->GetUInt32(*typed, port);
  return absl::StrCat(absl::AsciiStrToLower(r->GetString(*typed, host)), ":", n ? n : 22, ":",
                      Sv(TrimTrailingSlashes(poll.remote_dir())));
}

// The secrets themselves are read by inbound_svc at start (WebhookVerifier), not here: every
// service loads this file, and only the inbound lane may hold the partners' secrets.
absl::Status ValidateAuth(const Converter& conv, const std::string& path,
                          const ess::v1::InboundRoute& route) {
  if (route.webhook_path().empty()) {
    return conv.ErrorAt(path, "authenticates webhooks: needs a webhook_path");
  }
  const std::string& env = route.auth().secrets_env();
  if (env.empty()) return conv.ErrorAt(path + ".secrets_env", "must name an environment variable");
  return absl::OkStatus();
}

constexpr uint64_t kYearMs = uint64_t{365} * 24 * 3600 * 1000;

absl::Status Validate(const Converter& conv, const ess::v1::HubConfig& c,
                      const SettingsTypeResolver& resolver) {
  if (c.bus().port() > 65535) return conv.ErrorAt("bus.port", "must be at most 65535");
  if (c.bus().audit_batch_max() > 1000) {
    return conv.ErrorAt("bus.audit_batch_max", "must be at most 1000");
  }
  if (!c.bus().password_env().empty() && std::getenv(c.bus().password_env().c_str()) == nullptr) {
    return conv.ErrorAt("bus.password_env", absl::StrCat("environment variable ",
                                                         c.bus().password_env(), " is not set"));
  }
  if (const auto& retention = c.replay().retention();
      retention.max_age_seconds() > 0 &&
      retention.max_age_seconds() < c.inbound().dedupe_window_seconds()) {
    return conv.ErrorAt("replay.retention.max_age_seconds",
                        absl::StrCat("must be at least inbound.dedupe_window_seconds (",
                                     c.inbound().dedupe_window_seconds(),
                                     "): the lanes' idempotency reads those records"));
  }
  if (c.replay().has_postgres()) {
    // Read by replay_svc at start (only it needs the connection string).
    if (c.replay().postgres().dsn_env().empty()) {
      return conv.ErrorAt("replay.postgres.dsn_env", "must name an environment variable");
    }
    if (!c.replay().database_path().empty()) {
      return conv.ErrorAt("replay.database_path",
                          "the store is on PostgreSQL (replay.postgres): drop database_path");
    }
  }
  if (c.replay().drift().window_seconds() > kYearMs / 1000) {
    return conv.ErrorAt("replay.drift.window_seconds",
                        absl::StrCat("must be at most a year (", kYearMs / 1000, ")"));
  }
  if (const auto& tls = c.replay().tls();
      tls.client_cert_file().empty() != tls.client_key_file().empty()) {
    return conv.ErrorAt(tls.client_cert_file().empty() ? "replay.tls.client_cert_file"
                                                       : "replay.tls.client_key_file",
                        "client_cert_file and client_key_file go together");
  }
  if (const auto& tls = c.replay().tls();
      !tls.client_ca_file().empty() && tls.cert_file().empty()) {
    return conv.ErrorAt("replay.tls.client_ca_file",
                        "needs cert_file and key_file (mutual TLS is TLS)");
  }
  if (c.replay().tls().cert_file().empty() != c.replay().tls().key_file().empty()) {
    return conv.ErrorAt(
        c.replay().tls().cert_file().empty() ? "replay.tls.cert_file" : "replay.tls.key_file",
        "cert_file and key_file go together");
  }
  {
    // Tokens are read by replay_svc at start (replay_svc/authorizer.h): only it needs them.
    absl::flat_hash_set<std::string> names;
    for (int i = 0; i < c.replay().auth().callers_size(); ++i) {
      const ess::v1::ReplayCaller& caller = c.replay().auth().callers(i);
      const std::string at = absl::StrCat("replay.auth.callers[", i, "]");
      if (caller.name().empty()) return conv.ErrorAt(at + ".name", "must not be empty");
      if (!names.insert(caller.name()).second) {
        return conv.ErrorAt(at + ".name",
                            absl::StrCat("\"", caller.name(), "\" is already another caller's"));
      }
      if (caller.role() != "lane" && caller.role() != "viewer" && caller.role() != "ops") {
        return conv.ErrorAt(at + ".role", absl::StrCat("unknown role \"", caller.role(),
                                                       "\" (lane, viewer or ops)"));
      }
      if (caller.token_env().empty()) {
        return conv.ErrorAt(at + ".token_env", "must name an environment variable");
      }
    }
  }
  if (c.outbound().prefetch() > 65535) {
    return conv.ErrorAt("outbound.prefetch", "must be at most 65535");
  }
  if (c.outbound().max_event_bytes() > (8u << 20)) {
    return conv.ErrorAt("outbound.max_event_bytes",
                        "must be at most 8388608 (8 MiB): an event's record holds it and what the "
                        "adapter rendered of it, and one call to the replay store carries 32 MiB");
  }
  absl::flat_hash_set<std::string> names, queues, paths;
  absl::flat_hash_map<std::string, int> polled;  // PollTarget -> the partner's index
  for (int i = 0; i < c.partners_size(); ++i) {
    const auto& p = c.partners(i);
    const std::string at = absl::StrCat("partners[", i, "]");
    if (p.name().empty()) return conv.ErrorAt(at + ".name", "must not be empty");
    if (!names.insert(p.name()).second) {
      return conv.ErrorAt(at + ".name", absl::StrCat("duplicate partner name \"", p.name(), "\""));
    }
    if (p.adapter().empty()) return conv.ErrorAt(at + ".adapter", "must not be empty");
    if (resolver) {
      if (resolver(p.adapter()) == nullptr) {
        return conv.ErrorAt(at + ".adapter", absl::StrCat("unknown adapter \"", p.adapter(), "\""));
      }
      if (!p.has_settings()) return conv.ErrorAt(at + ".settings", "is required");
    }
    if (!p.has_outbound() && !p.has_inbound()) {
      return conv.ErrorAt(at, "needs an outbound or an inbound route (or both)");
    }
    if (p.has_outbound()) {
      const std::string o = at + ".outbound";
      if (p.outbound().queue().empty()) return conv.ErrorAt(o + ".queue", "must not be empty");
      if (!queues.insert(p.outbound().queue()).second) {
        return conv.ErrorAt(o + ".queue", absl::StrCat("queue \"", p.outbound().queue(),
                                                       "\" is already used by another partner"));
      }
      absl::Status s = ValidateMapping(conv, o + ".mapping", p.outbound().mapping());
      if (!s.ok()) return s;
      const auto& retry = p.outbound().retry();
      if (retry.max_backoff_ms() < retry.initial_backoff_ms()) {
        return conv.ErrorAt(o + ".retry.max_backoff_ms", "must not be below initial_backoff_ms");
      }
      // A year: past it a duration in milliseconds is a typo (and from 2^63 it turns negative).
      if (retry.max_age_ms() > kYearMs) {
        return conv.ErrorAt(o + ".retry.max_age_ms",
                            absl::StrCat("must be at most a year (", kYearMs, ")"));
      }
      const auto& breaker = p.outbound().circuit_breaker();
      if (breaker.failure_rate_percent() > 100) {
        return conv.ErrorAt(o + ".circuit_breaker.failure_rate_percent", "must be at most 100");
      }
      if (breaker.max_open_ms() < breaker.open_ms()) {
        return conv.ErrorAt(o + ".circuit_breaker.max_open_ms", "must not be below open_ms");
      }
      if (const uint64_t within = p.outbound().confirm_within_seconds(); within > 0) {
        // Deliveries are counted from confirm_within_seconds to window_seconds after them.
        if (within >= c.replay().drift().window_seconds()) {
          return conv.ErrorAt(o + ".confirm_within_seconds",
                              absl::StrCat("must be below replay.drift.window_seconds (",
                                           c.replay().drift().window_seconds(),
                                           "), or no delivery is ever counted"));
        }
        if (const uint64_t max_age = c.replay().retention().max_age_seconds();
            max_age > 0 && within >= max_age) {
          return conv.ErrorAt(
              o + ".confirm_within_seconds",
              absl::StrCat("must be below replay.retention.max_age_seconds (", max_age,
                           "): deliveries would be evicted before they could be counted"));
        }
      }
    }
    if (p.has_inbound()) {
      const std::string in = at + ".inbound";
      const ess::v1::InboundRoute& route = p.inbound();
      if (route.webhook_path().empty() && !route.has_poll()) {
        return conv.ErrorAt(in, "needs a webhook_path or a poll (or both)");
      }
      if (const std::string& wp = route.webhook_path(); !wp.empty()) {
        if (wp[0] != '/') return conv.ErrorAt(in + ".webhook_path", "must start with /");
        // inbound_svc serves these itself, on the same port: a webhook there would hide them.
        for (std::string_view reserved : {"/healthz", "/readyz", "/metrics"}) {
          if (wp == reserved) {
            return conv.ErrorAt(in + ".webhook_path",
                                absl::StrCat("\"", wp,
                                             "\" is inbound_svc's own (/healthz, /readyz and "
                                             "/metrics are reserved)"));
          }
        }
        if (!paths.insert(wp).second) {
          return conv.ErrorAt(in + ".webhook_path",
                              absl::StrCat("path \"", wp, "\" is already used by another partner"));
        }
      }
      if (route.has_poll()) {
        absl::Status s = ValidatePoll(conv, in + ".poll", p.adapter(), route.poll());
        if (!s.ok()) return s;
        // Two polls of one folder would each take every file of it.
        if (std::optional<std::string> target = PollTarget(p, route.poll(), resolver)) {
          auto [it, first] = polled.try_emplace(*target, i);
          if (!first) {
            return conv.ErrorAt(
                in + ".poll.remote_dir",
                absl::StrCat("partners[", it->second, "] (\"", c.partners(it->second).name(),
                             "\") polls the same folder (host, port and remote_dir)"));
          }
        }
      }
      if (const std::string& h = route.id_header(); !h.empty()) {
        if (route.webhook_path().empty()) {
          return conv.ErrorAt(in + ".id_header", "names a webhook header: needs a webhook_path");
        }
        if (route.has_auth()) {
          return conv.ErrorAt(in + ".id_header",
                              "a signed route's calls are known by their signed webhook-id");
        }
        // RFC 9110 token characters.
        if (!std::all_of(h.begin(), h.end(), [](char ch) {
              return absl::ascii_isalnum(static_cast<unsigned char>(ch)) ||
                     std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
            })) {
          return conv.ErrorAt(in + ".id_header", absl::StrCat("\"", h, "\" is not a header name"));
        }
      }
      if (route.has_auth()) {
        absl::Status s = ValidateAuth(conv, in + ".auth", route);
        if (!s.ok()) return s;
        // A signed call is taken up to tolerance_seconds either side of its timestamp; only a
        // dedupe window at least twice that long remembers every call that may be replayed.
        const uint64_t tolerance = route.auth().tolerance_seconds();
        if (2 * tolerance > c.inbound().dedupe_window_seconds()) {
          return conv.ErrorAt(
              in + ".auth.tolerance_seconds",
              absl::StrCat("must be at most half of inbound.dedupe_window_seconds (",
                           c.inbound().dedupe_window_seconds(),
                           "), or a captured call could be replayed after its id was forgotten"));
        }
      }
      absl::Status s = ValidateMapping(conv, in + ".mapping", route.mapping());
      if (!s.ok()) return s;
    }
  }
  // The lane consumes each work queue and moves failures to the partner's delay and parked
  // queues: a work queue that is another partner's delay or parked queue would have that
  // partner's parked (or waiting) events delivered to this one.
  absl::flat_hash_map<std::string, std::string> moves;  // delay or parked queue -> its partner
  for (const auto& p : c.partners()) {
    if (!p.has_outbound()) continue;
    const std::string& q = p.outbound().queue();
    moves.emplace(queues::ParkedQueueName(q), p.name());
    for (uint32_t delay : queues::RetryDelaysMs(p.outbound().retry())) {
      moves.emplace(queues::RetryQueueName(q, delay), p.name());
    }
  }
  for (int i = 0; i < c.partners_size(); ++i) {
    const auto& p = c.partners(i);
    if (!p.has_outbound()) continue;
    if (auto it = moves.find(p.outbound().queue()); it != moves.end()) {
      return conv.ErrorAt(
          absl::StrCat("partners[", i, "].outbound.queue"),
          absl::StrCat("queue \"", p.outbound().queue(),
                       "\" is a delay or parked queue of partner \"", it->second, "\""));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<webhook::SignatureVerifier> WebhookVerifier(const ess::v1::WebhookAuth& auth) {
  const char* value = std::getenv(auth.secrets_env().c_str());
  if (value == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("environment variable ", auth.secrets_env(), " is not set"));
  }
  std::vector<std::string> secrets =
      absl::StrSplit(value, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
  absl::StatusOr<webhook::SignatureVerifier> verifier =
      webhook::SignatureVerifier::Create(secrets, absl::Seconds(auth.tolerance_seconds()));
  if (!verifier.ok()) {
    return absl::Status(verifier.status().code(),
                        absl::StrCat("environment variable ", auth.secrets_env(), ": ",
                                     verifier.status().message()));
  }
  return verifier;
}

namespace {

// Runs `check` on each partner; its error, "partners[NAME].PATH: what", is placed at the
// line of partners[INDEX].PATH.
absl::Status CheckPartners(const Converter& conv, const ess::v1::HubConfig& config,
                           const PartnerCheck& check) {
  for (int i = 0; i < config.partners_size(); ++i) {
    const ess::v1::PartnerConfig& p = config.partners(i);
    absl::Status s = check(p);
    if (s.ok()) continue;
    const std::string named = absl::StrCat("partners[", p.name(), "]");
    const std::string message(s.message());
    const size_t colon = message.find(": ");
    if (!absl::StartsWith(message, named) || colon == std::string::npos) {
      return conv.ErrorAt(absl::StrCat("partners[", i, "]"), message);
    }
    return conv.ErrorAt(
        absl::StrCat("partners[", i, "]", message.substr(named.size(), colon - named.size())),
        message.substr(colon + 2));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ess::v1::HubConfig> LoadString(std::string_view text, std::string_view file_name,
                                              std::string_view base_dir,
                                              const SettingsTypeResolver& resolver,
                                              const PartnerCheck& check) {
  const std::string file(file_name);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  ess::v1::HubConfig config;
  Converter conv(file, std::string(base_dir), resolver);
  try {
    absl::Status s = conv.Convert(root, "", &config);
    if (!s.ok()) return s;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  ApplyDefaults(base_dir, config);
  absl::Status s = Validate(conv, config, resolver);
  if (!s.ok()) return s;
  if (check) {
    s = CheckPartners(conv, config, check);
    if (!s.ok()) return s;
  }
  if (!config.bus().password_env().empty()) {
    config.mutable_bus()->set_password(std::getenv(config.bus().password_env().c_str()));
  }
  return config;
}

absl::StatusOr<ess::v1::HubConfig> LoadFile(const std::string& path,
                                            const SettingsTypeResolver& resolver,
                                            const PartnerCheck& check) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": is a directory; --config takes the hub's YAML file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot read config file: ", std::strerror(errno)));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  std::string dir = std::filesystem::absolute(path).parent_path().string();
  return LoadString(buf.str(), path, dir, resolver, check);
}

}  // namespace ess::config
