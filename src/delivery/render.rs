//! Turning an outbox row and its event into the bytes to send, through the outbound mapping the
//! subscription names (`mappings/outbound/…`). Rendering happens at send time with the mapping set
//! active then, so a fixed mapping plus a DLQ retry repairs messages that failed to render; the
//! control id is the outbox row id, so every attempt of one message carries the same MSH-10.

use crate::store::outbox::OutboxItem;

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub body: Vec<u8>,
    /// `x-application/hl7-v2+er7` or `application/fhir+json`.
    pub content_type: String,
    /// MSH-10 of an HL7 message: what the receiver's MSA-2 must name.
    pub control_id: Option<String>,
}

/// Renders outbox rows. Implemented by the live mapping set; tests may bring their own.
pub trait Render: Send + Sync {
    /// The message for `item`; `Err` is a plain sentence (the row is dead-lettered with it).
    fn render(&self, item: &OutboxItem) -> Result<Rendered, String>;
}

/// The live mapping set as the renderer: each row through the outbound file it names, with the
/// set active at send time (hot reload applies to queued messages too).
pub struct MappingRenderer {
    pub mappings: crate::pipeline::Mappings,
}

impl Render for MappingRenderer {
    fn render(&self, item: &OutboxItem) -> Result<Rendered, String> {
        let set = self.mappings.load();
        let delivery_id = item.id.to_string();
        let input = crate::mapping::OutboundInput {
            tenant: &item.hospital_id,
            event_type: &item.event.event_type,
            payload: &item.event.payload,
            metadata: &item.event.metadata,
            recorded_at: item.event.recorded_at,
            stream_id: &item.event.stream_id,
            stream_version: item.event.stream_version,
            delivery_id: &delivery_id,
            destination: &item.destination,
        };
        let rendered = set
            .render_outbound(&item.mapping, &input)
            .map_err(|e| e.to_string())?;
        Ok(Rendered {
            body: rendered.body,
            content_type: rendered.content_type.to_owned(),
            control_id: rendered.control_id,
        })
    }
}
