//! Operations on the outbox shared by the CLI (`ferry outbox …`, `ferry dlq …`) and the HTTP admin
//! API (`/admin/…`): replay, and reading the operator's filters.

use time::OffsetDateTime;

use super::router::Router;
use crate::store::outbox::ReplayDelivery;
use crate::store::{DynStore, RecordedEvent, StoreError};

/// Which stored events to send (again) to a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayRequest {
    pub destination: String,
    /// Events recorded at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Events recorded before this time.
    pub to: Option<OffsetDateTime>,
    /// Only this stream (of `hospital_id`, which is then required).
    pub stream: Option<String>,
    pub hospital_id: Option<String>,
}

/// Why a replay cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no subscription sends to destination {0:?}")]
    UnknownDestination(String),
    #[error("a stream replay needs the stream's hospital_id")]
    StreamWithoutTenant,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Queues every matching event again for `request.destination`, through that destination's
/// subscriptions (the events they would have matched at the time), in store order; returns how
/// many messages were queued. They join the end of their lanes.
pub async fn replay(
    store: &DynStore,
    router: &Router,
    request: &ReplayRequest,
) -> Result<u64, ReplayError> {
    let subscriptions: Vec<_> = router
        .subscriptions()
        .iter()
        .filter(|s| s.destination == request.destination)
        .collect();
    if subscriptions.is_empty() {
        return Err(ReplayError::UnknownDestination(request.destination.clone()));
    }
    let wanted = |e: &RecordedEvent| {
        request.from.is_none_or(|t| e.recorded_at >= t)
            && request.to.is_none_or(|t| e.recorded_at < t)
            && request
                .hospital_id
                .as_deref()
                .is_none_or(|h| e.hospital_id == h)
    };
    let deliveries = |events: &[RecordedEvent]| -> Vec<ReplayDelivery> {
        events
            .iter()
            .filter(|e| wanted(e))
            .flat_map(|e| {
                subscriptions
                    .iter()
                    .filter(|s| s.matches(&e.hospital_id, &e.event_type, &e.payload))
                    .map(|s| ReplayDelivery {
                        hospital_id: e.hospital_id.clone(),
                        stream_id: e.stream_id.clone(),
                        stream_version: e.stream_version,
                        event_type: e.event_type.clone(),
                        delivery: s.delivery(&e.stream_id, &e.metadata),
                    })
            })
            .collect()
    };
    let now = OffsetDateTime::now_utc();
    let outbox = store.outbox();
    if let Some(stream) = &request.stream {
        let tenant = request
            .hospital_id
            .as_deref()
            .ok_or(ReplayError::StreamWithoutTenant)?;
        let events = store.read_stream(tenant, stream).await?;
        return Ok(outbox.enqueue(&deliveries(&events), now).await?);
    }
    // Without a stream: the whole store in order, a page at a time (events carry no time index;
    // a replay is a rare operator action).
    let mut position = 0;
    let mut queued = 0;
    loop {
        let page = store.events_after(position, 2000).await?;
        let Some(last) = page.last() else { break };
        position = last.global_position;
        queued += outbox.enqueue(&deliveries(&page), now).await?;
    }
    Ok(queued)
}

/// Reads an age such as `90s`, `15m`, `2h`, `3d` (a bare number is seconds).
pub fn parse_age(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_age("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_age("3d"), Some(Duration::from_secs(259_200)));
        assert_eq!(parse_age("2w"), None);
        assert_eq!(parse_age("h"), None);
    }
}
