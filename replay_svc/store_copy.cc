#include "replay_svc/store_copy.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "replay_svc/records.h"
#include "replay_svc/store_rules.h"

namespace ess::replay {

absl::StatusOr<CopyCount> CopyStore(ReplayStore& from, ReplayStore& to,
                                    const CopyOptions& options) {
  CopyCount count;
  ListQuery query{.limit = std::max<size_t>(options.page_size, 1), .oldest_first = true};
  for (;;) {
    absl::StatusOr<ListPage> page = from.List(query);
    if (!page.ok()) return rules::WithPrefix("reading the source: ", page.status());
    google::protobuf::RepeatedPtrField<ess::v1::MessageRecord> batch;
    batch.Reserve(static_cast<int>(page->records.size()));
    for (ess::v1::MessageRecord& r : page->records) *batch.Add() = std::move(r);
    absl::StatusOr<uint32_t> written = to.Import(batch);
    if (!written.ok() && !absl::IsUnavailable(written.status())) {
      // Which record: the page again, one record at a time.
      uint32_t one_by_one = 0;
      for (const ess::v1::MessageRecord& r : batch) {
        google::protobuf::RepeatedPtrField<ess::v1::MessageRecord> one;
        *one.Add() = r;
        absl::StatusOr<uint32_t> w = to.Import(one);
        if (!w.ok()) {
          return rules::WithPrefix(
              absl::StrCat("writing direction=", DirectionName(r.direction()),
                           " partner=", r.partner(), " message_id=", r.message_id(), ": "),
              w.status());
        }
        one_by_one += *w;
      }
      written = one_by_one;
    }
    if (!written.ok()) return rules::WithPrefix("writing the target: ", written.status());
    count.read += static_cast<uint64_t>(batch.size());
    count.written += *written;
    if (options.progress) options.progress(count);
    if (!page->next.has_value()) break;
    query.after = page->next;
  }
  if (count.written > 0) {
    if (absl::Status s = to.RefreshStatistics(); !s.ok()) {
      return rules::WithPrefix("refreshing the target's statistics: ", s);
    }
  }
  return count;
}

}  // namespace ess::replay
