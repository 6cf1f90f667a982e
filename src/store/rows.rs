//! Reading rows back into the contract's types, once for both backends.
//!
//! The backends differ only in how a column decodes (SQLite keeps times as RFC 3339 text,
//! PostgreSQL as `timestamptz`), so each implements [`StoreRow`]'s few typed getters and the
//! mapping of whole rows is written here. A value that does not decode is a corrupt row naming its
//! column, never a panic.

use time::OffsetDateTime;
use uuid::Uuid;

use super::fhir::StoredResource;
use crate::projections::{Loaded, ResourceKey, ResourceType};

use super::{
    IdempotencyKey, IdempotencyRecord, InboundRecord, InboundStatus, RecordedEvent, StoreError,
};

/// Typed column access; `name` is the `table.column` used in error messages.
pub(super) trait StoreRow {
    fn text(&self, column: &str, name: &str) -> Result<String, StoreError>;
    fn optional_text(&self, column: &str, name: &str) -> Result<Option<String>, StoreError>;
    fn bytes(&self, column: &str, name: &str) -> Result<Vec<u8>, StoreError>;
    fn integer(&self, column: &str, name: &str) -> Result<i64, StoreError>;
    fn time(&self, column: &str, name: &str) -> Result<OffsetDateTime, StoreError>;
    fn optional_time(&self, column: &str, name: &str)
    -> Result<Option<OffsetDateTime>, StoreError>;
    fn optional_bytes(&self, column: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn optional_integer(&self, column: &str, name: &str) -> Result<Option<i64>, StoreError>;
}

fn uuid(row: &impl StoreRow, column: &str, name: &str) -> Result<Uuid, StoreError> {
    let text = row.text(column, name)?;
    Uuid::parse_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{name}: {text:?} is not a UUID: {e}")))
}

fn json(row: &impl StoreRow, column: &str, name: &str) -> Result<serde_json::Value, StoreError> {
    let text = row.text(column, name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

pub(super) fn inbound(row: &impl StoreRow) -> Result<InboundRecord, StoreError> {
    let t = |c: &str| row.optional_text(c, &format!("inbound_messages.{c}"));
    let status = row.text("status", "inbound_messages.status")?;
    Ok(InboundRecord {
        id: uuid(row, "id", "inbound_messages.id")?,
        hospital_id: row.text("hospital_id", "inbound_messages.hospital_id")?,
        listener: row.text("listener", "inbound_messages.listener")?,
        peer: row.text("peer", "inbound_messages.peer")?,
        received_at: row.time("received_at", "inbound_messages.received_at")?,
        raw: row.bytes("raw", "inbound_messages.raw")?,
        decoded: t("decoded")?,
        charset: t("charset")?,
        sending_application: t("sending_application")?,
        sending_facility: t("sending_facility")?,
        control_id: t("control_id")?,
        message_type: t("message_type")?,
        status: InboundStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("inbound_messages.status: unknown value {status:?}"))
        })?,
        ack_code: t("ack_code")?,
        error: t("error")?,
    })
}

pub(super) fn idempotency(row: &impl StoreRow) -> Result<IdempotencyRecord, StoreError> {
    let t = |c: &str| row.text(c, &format!("idempotency.{c}"));
    Ok(IdempotencyRecord {
        key: IdempotencyKey {
            hospital_id: t("hospital_id")?,
            sending_application: t("sending_application")?,
            sending_facility: t("sending_facility")?,
            control_id: t("control_id")?,
        },
        content_hash: row.bytes("content_hash", "idempotency.content_hash")?,
        ack: row.bytes("ack", "idempotency.ack")?,
        inbound_id: uuid(row, "inbound_id", "idempotency.inbound_id")?,
    })
}

pub(super) fn event(row: &impl StoreRow) -> Result<RecordedEvent, StoreError> {
    let schema_version = row.integer("schema_version", "events.schema_version")?;
    Ok(RecordedEvent {
        global_position: row.integer("global_position", "events.global_position")?,
        hospital_id: row.text("hospital_id", "events.hospital_id")?,
        stream_id: row.text("stream_id", "events.stream_id")?,
        stream_version: row.integer("stream_version", "events.stream_version")?,
        event_type: row.text("event_type", "events.event_type")?,
        schema_version: i32::try_from(schema_version).map_err(|_| {
            StoreError::Corrupt(format!(
                "events.schema_version: {schema_version} out of range"
            ))
        })?,
        payload: json(row, "payload", "events.payload")?,
        metadata: json(row, "metadata", "events.metadata")?,
        recorded_at: row.time("recorded_at", "events.recorded_at")?,
    })
}

fn resource_type(row: &impl StoreRow, name: &str) -> Result<ResourceType, StoreError> {
    let text = row.text("resource_type", name)?;
    ResourceType::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("{name}: unknown resource type {text:?}")))
}

/// `resource_type, id, version_id, last_updated, body` of `fhir_resources` or `fhir_history`.
pub(super) fn stored_resource(row: &impl StoreRow) -> Result<StoredResource, StoreError> {
    Ok(StoredResource {
        resource_type: resource_type(row, "fhir_resources.resource_type")?,
        id: row.text("id", "fhir_resources.id")?,
        version: row.integer("version_id", "fhir_resources.version_id")?,
        last_updated: row.time("last_updated", "fhir_resources.last_updated")?,
        body: row.text("body", "fhir_resources.body")?,
    })
}

/// `hospital_id, resource_type, id, version_id, state` of `fhir_resources`, for the projector.
pub(super) fn loaded(row: &impl StoreRow) -> Result<Loaded, StoreError> {
    Ok(Loaded {
        key: ResourceKey {
            tenant: row.text("hospital_id", "fhir_resources.hospital_id")?,
            resource_type: resource_type(row, "fhir_resources.resource_type")?,
            id: row.text("id", "fhir_resources.id")?,
        },
        version: row.integer("version_id", "fhir_resources.version_id")?,
        state: row.text("state", "fhir_resources.state")?,
    })
}

/// `outbox.attempts` (an INTEGER column) as the contract's `i32`.
fn attempts(row: &impl StoreRow, column: &str) -> Result<i32, StoreError> {
    i32::try_from(row.integer(column, "outbox.attempts")?)
        .map_err(|e| StoreError::Corrupt(format!("outbox.attempts: {e}")))
}

/// A queued message with its event: the outbox columns prefixed `o_`, the event's as
/// [`event`] reads them.
pub(super) fn outbox_item(row: &impl StoreRow) -> Result<super::outbox::OutboxItem, StoreError> {
    Ok(super::outbox::OutboxItem {
        id: row.integer("o_id", "outbox.id")?,
        hospital_id: row.text("hospital_id", "outbox.hospital_id")?,
        destination: row.text("o_destination", "outbox.destination")?,
        lane: row.text("o_lane", "outbox.lane")?,
        subscription: row.text("o_subscription", "outbox.subscription")?,
        mapping: row.text("o_mapping", "outbox.mapping")?,
        attempts: attempts(row, "o_attempts")?,
        created_at: row.time("o_created_at", "outbox.created_at")?,
        event: event(row)?,
    })
}

/// A dead letter (the columns of `outbox` by their own names).
pub(super) fn dead_letter(row: &impl StoreRow) -> Result<super::outbox::DeadLetter, StoreError> {
    Ok(super::outbox::DeadLetter {
        id: row.integer("id", "outbox.id")?,
        hospital_id: row.text("hospital_id", "outbox.hospital_id")?,
        destination: row.text("destination", "outbox.destination")?,
        lane: row.text("lane", "outbox.lane")?,
        subscription: row.text("subscription", "outbox.subscription")?,
        mapping: row.text("mapping", "outbox.mapping")?,
        event_type: row.text("event_type", "outbox.event_type")?,
        stream_id: row.text("stream_id", "outbox.stream_id")?,
        stream_version: row.integer("stream_version", "outbox.stream_version")?,
        attempts: attempts(row, "attempts")?,
        created_at: row.time("created_at", "outbox.created_at")?,
        dead_at: row.optional_time("finished_at", "outbox.finished_at")?,
        last_error: row.optional_text("last_error", "outbox.last_error")?,
        last_response: row
            .optional_bytes("last_response", "outbox.last_response")?
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
    })
}

/// One lane of the status listing.
pub(super) fn lane_status(row: &impl StoreRow) -> Result<super::outbox::LaneStatus, StoreError> {
    Ok(super::outbox::LaneStatus {
        lane: row.text("lane", "outbox.lane")?,
        pending: row.integer("pending", "outbox.pending")?,
        dead: row.integer("dead", "outbox.dead")?,
        oldest_at: row.optional_time("oldest_at", "outbox.created_at")?,
        lease_owner: row.optional_text("lease_owner", "outbox_lanes.lease_owner")?,
        ready_at: row.optional_time("ready_at", "outbox_lanes.ready_at")?,
    })
}

/// One destination's totals (lanes filled in by the caller).
pub(super) fn destination_status(
    row: &impl StoreRow,
) -> Result<super::outbox::DestinationStatus, StoreError> {
    Ok(super::outbox::DestinationStatus {
        destination: row.text("destination", "outbox.destination")?,
        pending: row.integer("pending", "outbox.pending")?,
        dead: row.integer("dead", "outbox.dead")?,
        oldest_pending_at: row.optional_time("oldest_at", "outbox.created_at")?,
        lanes: Vec::new(),
    })
}

/// A finished delivery.
pub(super) fn delivered_row(
    row: &impl StoreRow,
) -> Result<super::outbox::DeliveredRow, StoreError> {
    Ok(super::outbox::DeliveredRow {
        id: row.integer("id", "outbox.id")?,
        destination: row.text("destination", "outbox.destination")?,
        lane: row.text("lane", "outbox.lane")?,
        attempts: attempts(row, "attempts")?,
        created_at: row.time("created_at", "outbox.created_at")?,
        finished_at: row.time("finished_at", "outbox.finished_at")?,
    })
}

/// A lane's rows as `lane_items` selects them: the lane's `lane_enqueued` on every row, and the
/// outbox columns NULL when the lane has no pending message (the one row of the outer join).
pub(super) fn lane_batch<R: StoreRow>(rows: &[R]) -> Result<super::outbox::LaneBatch, StoreError> {
    let enqueued = match rows.first() {
        Some(row) => row.integer("lane_enqueued", "outbox_lanes.enqueued")?,
        None => 0,
    };
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if row.optional_integer("o_id", "outbox.id")?.is_some() {
            items.push(outbox_item(row)?);
        }
    }
    Ok(super::outbox::LaneBatch { items, enqueued })
}
