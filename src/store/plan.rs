//! Batch planning shared by both backends: which writes are duplicates, and which version each new
//! event gets. Pure functions over the contract's types, so the two backends cannot drift apart.
//!
//! Declared from `sqlite.rs` (`#[path]`) only because `store/mod.rs` is a frozen contract for now;
//! it belongs beside the backends as `store::plan` once `mod.rs` is next changed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::store::{
    ExpectedVersion, IdempotencyKey, IdempotencyRecord, InboundStatus, IngestOutcome, IngestWrite,
    NewEvent, StoreError,
};

/// One outcome per write: a write whose key is in `existing` (records found in the store) or
/// was claimed by an earlier write of the batch is a duplicate of that original; all others
/// (including every write without an idempotency record) are stored.
pub(crate) fn dedup(batch: &[IngestWrite], existing: &[IdempotencyRecord]) -> Vec<IngestOutcome> {
    let mut known: HashMap<&IdempotencyKey, &IdempotencyRecord> =
        existing.iter().map(|r| (&r.key, r)).collect();
    batch
        .iter()
        .map(|w| match &w.idempotency {
            None => IngestOutcome::Stored,
            Some(record) => match known.entry(&record.key) {
                Entry::Occupied(original) => {
                    let original = original.get();
                    IngestOutcome::Duplicate {
                        content_hash: original.content_hash.clone(),
                        ack: original.ack.clone(),
                        inbound_id: original.inbound_id,
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(record);
                    IngestOutcome::Stored
                }
            },
        })
        .collect()
}
/// True when two writes of the batch carry the same idempotency key (a resend racing its
/// original): such a batch needs the lookup-first path, which answers the second as a duplicate.
pub(crate) fn repeats_a_key(batch: &[IngestWrite]) -> bool {
    let mut seen = std::collections::HashSet::new();
    batch
        .iter()
        .filter_map(|w| w.idempotency.as_ref())
        .any(|r| !seen.insert(&r.key))
}

/// Refuses a batch the store cannot hold as it is, on both backends alike:
/// * a NUL character in any text column or JSON string: PostgreSQL's TEXT and JSONB cannot hold
///   U+0000, and a store that accepted on SQLite what it refuses on PostgreSQL would make the
///   backends behave differently. Raw bytes (BYTEA) may contain anything;
/// * an idempotency record that points at another message's inbound row: a resend would be
///   answered from the wrong message (on PostgreSQL nothing else checks that link, see
///   `migrations/postgres/0006_idempotency_link.sql`);
/// * an accepted message with a control ID but without an idempotency record of that tenant and
///   control ID, or a record on a message that is not accepted: accepted messages are found by
///   control ID through their records, rejected ones through an index of their own
///   (`migrations/sqlite/0004_control_id_lookup.sql`).
///
/// Not transient: retrying the same batch fails the same way.
pub(crate) fn check_storable(batch: &[IngestWrite]) -> Result<(), StoreError> {
    fn text(value: &str, column: &str, id: &uuid::Uuid) -> Result<(), StoreError> {
        if value.contains('\0') {
            return Err(StoreError::Corrupt(format!(
                "{column} of inbound message {id} contains a NUL character, which the store \
                 cannot hold as text"
            )));
        }
        Ok(())
    }
    /// JSON text: a NUL in one of its strings is written `\u0000`.
    fn json_text(value: &str, column: &str, id: &uuid::Uuid) -> Result<(), StoreError> {
        if has_escaped_nul(value) {
            return Err(StoreError::Corrupt(format!(
                "{column} of inbound message {id} contains a NUL character, which the store \
                 cannot hold as text"
            )));
        }
        text(value, column, id)
    }
    fn json(value: &serde_json::Value, column: &str, id: &uuid::Uuid) -> Result<(), StoreError> {
        match value {
            serde_json::Value::String(s) => text(s, column, id),
            serde_json::Value::Array(items) => items.iter().try_for_each(|v| json(v, column, id)),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                text(k, column, id)?;
                json(v, column, id)
            }),
            _ => Ok(()),
        }
    }
    for w in batch {
        let m = &w.inbound;
        let id = &m.id;
        for (value, column) in [
            (Some(&m.hospital_id), "inbound_messages.hospital_id"),
            (Some(&m.listener), "inbound_messages.listener"),
            (Some(&m.peer), "inbound_messages.peer"),
            (m.decoded.as_ref(), "inbound_messages.decoded"),
            (m.charset.as_ref(), "inbound_messages.charset"),
            (
                m.sending_application.as_ref(),
                "inbound_messages.sending_application",
            ),
            (
                m.sending_facility.as_ref(),
                "inbound_messages.sending_facility",
            ),
            (m.control_id.as_ref(), "inbound_messages.control_id"),
            (m.message_type.as_ref(), "inbound_messages.message_type"),
            (m.ack_code.as_ref(), "inbound_messages.ack_code"),
            (m.error.as_ref(), "inbound_messages.error"),
        ] {
            if let Some(value) = value {
                text(value, column, id)?;
            }
        }
        let keyed = match (&w.idempotency, m.status, &m.control_id) {
            (Some(r), InboundStatus::Accepted, Some(control_id)) => {
                r.key.hospital_id == m.hospital_id && r.key.control_id == *control_id
            }
            (Some(_), _, _) | (None, InboundStatus::Accepted, Some(_)) => false,
            (None, _, _) => true,
        };
        if !keyed {
            return Err(StoreError::Corrupt(format!(
                "inbound message {id}: an accepted message with a control ID needs an idempotency \
                 record of its tenant and control ID, and only accepted messages have one"
            )));
        }
        if let Some(r) = &w.idempotency {
            // The record answers resends of this message: it must point at this message's row.
            if r.inbound_id != *id {
                return Err(StoreError::Corrupt(format!(
                    "the idempotency record of inbound message {id} points at inbound message {}",
                    r.inbound_id
                )));
            }
            text(
                &r.key.sending_application,
                "idempotency.sending_application",
                id,
            )?;
            text(&r.key.sending_facility, "idempotency.sending_facility", id)?;
            text(&r.key.control_id, "idempotency.control_id", id)?;
            text(&r.key.hospital_id, "idempotency.hospital_id", id)?;
        }
        for e in &w.events {
            text(&e.stream_id, "events.stream_id", id)?;
            text(&e.event_type, "events.event_type", id)?;
            json_text(e.payload.as_str(), "events.payload", id)?;
            json(&e.metadata, "events.metadata", id)?;
        }
    }
    Ok(())
}

/// Whether JSON text holds the escape `\u0000` (a NUL in a string), as opposed to an escaped
/// backslash followed by `u0000`.
fn has_escaped_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &bytes[i..]) {
        let esc = i + at;
        match bytes.get(esc + 1) {
            Some(b'u') if bytes.get(esc + 2..esc + 6) == Some(b"0000".as_slice()) => return true,
            // The escaped character, whatever it is, is not the start of another escape.
            Some(_) => i = esc + 2,
            None => return false,
        }
    }
    false
}

/// The distinct (hospital_id, stream_id) pairs the stored writes append to, in first-use order.
pub(crate) fn touched_streams<'a>(
    batch: &'a [IngestWrite],
    outcomes: &[IngestOutcome],
) -> Vec<(&'a str, &'a str)> {
    let mut seen = std::collections::HashSet::new();
    let mut streams = Vec::new();
    for (w, o) in batch.iter().zip(outcomes) {
        if !matches!(o, IngestOutcome::Stored) {
            continue;
        }
        for e in &w.events {
            let pair = (w.inbound.hospital_id.as_str(), e.stream_id.as_str());
            if seen.insert(pair) {
                streams.push(pair);
            }
        }
    }
    streams
}

/// The embedded migrations `(version, description, sql)` of one backend as a migrator.
///
/// This is what `sqlx::migrate!` expands to (same checksums, so the two are interchangeable),
/// written out because the macro needs sqlx's `macros` feature, which would compile the whole
/// compile-time query checker for one call.
pub(crate) fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// An event with the version it will be stored under.
pub(crate) struct PlannedEvent<'a> {
    pub(crate) hospital_id: &'a str,
    pub(crate) event: &'a NewEvent,
    pub(crate) version: i64,
}

impl<'a> PlannedEvent<'a> {
    /// The event as the projections see it.
    pub(crate) fn view(&self) -> crate::projections::EventView<'a> {
        self.event.view(self.hospital_id)
    }
}

/// Assigns consecutive versions to the events of the stored writes, in batch order, starting
/// from each stream's `current` version (absent = 0). The expected version of a write's first
/// event on a stream is checked against the version as it stands at that point of the batch.
pub(crate) fn assign_versions<'a>(
    batch: &'a [IngestWrite],
    outcomes: &[IngestOutcome],
    current: &HashMap<(String, String), i64>,
) -> Result<Vec<PlannedEvent<'a>>, StoreError> {
    let mut versions: HashMap<(&str, &str), i64> = HashMap::new();
    let mut planned = Vec::new();
    for (w, o) in batch.iter().zip(outcomes) {
        if !matches!(o, IngestOutcome::Stored) {
            continue;
        }
        let hospital_id = w.inbound.hospital_id.as_str();
        let mut checked: Vec<&str> = Vec::new();
        for event in &w.events {
            let stream_id = event.stream_id.as_str();
            let version = versions.entry((hospital_id, stream_id)).or_insert_with(|| {
                current
                    .get(&(hospital_id.to_owned(), stream_id.to_owned()))
                    .copied()
                    .unwrap_or(0)
            });
            if !checked.contains(&stream_id) {
                checked.push(stream_id);
                let ok = match event.expected_version {
                    ExpectedVersion::Any => true,
                    ExpectedVersion::NoStream => *version == 0,
                    ExpectedVersion::Exactly(n) => *version == n,
                };
                if !ok {
                    return Err(StoreError::VersionConflict {
                        stream_id: stream_id.to_owned(),
                        expected: event.expected_version.to_string(),
                        actual: *version,
                    });
                }
            }
            *version += 1;
            planned.push(PlannedEvent {
                hospital_id,
                event,
                version: *version,
            });
        }
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::has_escaped_nul;

    #[test]
    fn a_nul_is_found_by_its_escape_and_only_there() {
        let with_nul = serde_json::json!({ "name": ["x\u{0}y"] }).to_string();
        assert!(has_escaped_nul(&with_nul), "{with_nul}");
        // A backslash followed by `u0000` is text, not a NUL; so are other escapes.
        let backslash = serde_json::json!({ "name": "C:\\u0000", "x": "\u{1}\"\\" }).to_string();
        assert!(!has_escaped_nul(&backslash), "{backslash}");
        assert!(has_escaped_nul(r#""\\\u0000""#));
        assert!(!has_escaped_nul(r#""\\u0000""#));
        assert!(!has_escaped_nul(r#""\"#));
        assert!(!has_escaped_nul(""));
    }
}
