//! Subscriptions: which stored events are queued for which destination, in which lane.
//!
//! The router runs inside the ingest commit path (through [`crate::store::group_commit::Route`]),
//! so it is plain, allocation-light matching over the event payload: event type, tenant, and the
//! `when` conditions (a dotted payload path and the values it may have).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Notify;

use super::settings::{DestinationSettings, LaneBy, SubscriptionSettings};
use crate::domain::PayloadRef;
use crate::store::group_commit::Route;
use crate::store::{NewDelivery, NewEvent};

/// One subscription, ready to match.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    pub destination: String,
    pub events: HashSet<String>,
    pub when: Vec<(Vec<String>, HashSet<String>)>,
    pub mapping: String,
    pub tenants: HashSet<String>,
    pub lane_by: LaneBy,
}

impl Subscription {
    /// Whether an event of `tenant` with this type and payload goes to this subscription.
    pub fn matches(&self, tenant: &str, event_type: &str, payload: &Value) -> bool {
        self.matches_with(tenant, event_type, || Some(payload))
    }

    /// As [`Subscription::matches`], with the payload as a `Value` asked for only when a `when`
    /// condition needs it (a new event's payload is JSON text until then). A payload that cannot be
    /// read matches no condition.
    fn matches_with<'p>(
        &self,
        tenant: &str,
        event_type: &str,
        payload: impl FnOnce() -> Option<&'p Value>,
    ) -> bool {
        if !self.events.contains(event_type)
            || !(self.tenants.is_empty() || self.tenants.contains(tenant))
        {
            return false;
        }
        if self.when.is_empty() {
            return true;
        }
        payload().is_some_and(|payload| {
            self.when
                .iter()
                .all(|(path, values)| any_value(payload, path, values))
        })
    }

    /// The lane of an event: its patient's (or order's) stream, else its own stream.
    pub fn lane(&self, stream_id: &str, metadata: &Value) -> String {
        let kind = match self.lane_by {
            LaneBy::Patient => "patient",
            LaneBy::Order => "order",
        };
        metadata
            .get("streams")
            .and_then(|s| s.get(kind))
            .and_then(Value::as_str)
            .unwrap_or(stream_id)
            .to_owned()
    }

    pub fn delivery(&self, stream_id: &str, metadata: &Value) -> NewDelivery {
        NewDelivery {
            destination: self.destination.clone(),
            lane: self.lane(stream_id, metadata),
            subscription: self.name.clone(),
            mapping: self.mapping.clone(),
        }
    }
}

/// True when the value at `path` (through objects; a list holds if any item does) is one of
/// `values`. Numbers and booleans compare by their JSON text.
fn any_value(v: &Value, path: &[String], values: &HashSet<String>) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| any_value(i, path, values)),
        _ => match path.split_first() {
            Some((first, rest)) => v
                .get(first.as_str())
                .is_some_and(|next| any_value(next, rest, values)),
            None => match v {
                Value::String(s) => values.contains(s),
                Value::Number(_) | Value::Bool(_) => values.contains(&v.to_string()),
                _ => false,
            },
        },
    }
}

/// The subscriptions of a configuration, and the wake-up signal of each destination's dispatcher.
pub struct Router {
    subscriptions: Vec<Subscription>,
    wake: HashMap<String, Arc<Notify>>,
}

impl Router {
    pub fn new(
        destinations: &[DestinationSettings],
        subscriptions: &[SubscriptionSettings],
    ) -> Self {
        let lane_by: HashMap<&str, LaneBy> = destinations
            .iter()
            .map(|d| (d.name(), d.lane_by()))
            .collect();
        let subscriptions = subscriptions
            .iter()
            .map(|s| Subscription {
                name: s.display_name(),
                destination: s.destination.clone(),
                events: s.events.iter().cloned().collect(),
                when: s
                    .when
                    .iter()
                    .map(|(path, values)| {
                        (
                            path.split('.').map(str::to_owned).collect(),
                            values.iter().cloned().collect(),
                        )
                    })
                    .collect(),
                mapping: s.mapping.clone(),
                tenants: s.hospital_ids.iter().cloned().collect(),
                lane_by: lane_by
                    .get(s.destination.as_str())
                    .copied()
                    .unwrap_or_default(),
            })
            .collect();
        let wake = destinations
            .iter()
            .map(|d| (d.name().to_owned(), Arc::new(Notify::new())))
            .collect();
        Router {
            subscriptions,
            wake,
        }
    }

    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// The signal a destination's dispatcher waits on.
    pub fn wake(&self, destination: &str) -> Arc<Notify> {
        self.wake
            .get(destination)
            .cloned()
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }

    /// Wakes every destination's dispatcher: something was queued (a commit, a DLQ retry, a
    /// replay).
    pub fn wake_all(&self) {
        for notify in self.wake.values() {
            notify.notify_one();
        }
    }

    /// The deliveries of one event.
    pub fn deliveries(
        &self,
        tenant: &str,
        event_type: &str,
        stream_id: &str,
        payload: PayloadRef<'_>,
        metadata: &Value,
    ) -> Vec<NewDelivery> {
        // Read once, and only if some subscription's `when` needs it.
        let value = std::cell::OnceCell::new();
        let value = || value.get_or_init(|| payload.value().ok()).as_deref();
        self.subscriptions
            .iter()
            .filter(|s| s.matches_with(tenant, event_type, value))
            .map(|s| s.delivery(stream_id, metadata))
            .collect()
    }
}

impl Route for Router {
    fn route(&self, tenant: &str, event: &mut NewEvent) {
        event.deliveries = self.deliveries(
            tenant,
            &event.event_type,
            &event.stream_id,
            PayloadRef::Text(&event.payload),
            &event.metadata,
        );
    }

    fn queued(&self) {
        self.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::Payload;
    use serde_json::json;

    fn router(toml: &str) -> Router {
        let s = Settings::from_toml(toml).expect("settings");
        s.validate().expect("valid");
        Router::new(&s.destinations, &s.subscriptions)
    }

    const PACS: &str = r#"
        auth = "none"
        [[destinations]]
        name = "pacs"
        type = "mllp"
        endpoint = "10.1.2.3:2575"
        [[subscriptions]]
        destination = "pacs"
        events = ["OrderPlaced", "OrderCancelled"]
        when = { "order.diagnostic_service_section" = ["RAD", "CT", "MR", "US"] }
        mapping = "outbound/pacs_orm_o01"
    "#;

    #[test]
    fn the_issue_example_routes_imaging_orders_only() {
        let r = router(PACS);
        let meta = json!({"streams": {"patient": "patient-1", "order": "order-9"}});
        let ct = json!({"order": {"diagnostic_service_section": "CT"}});
        let lab = json!({"order": {"diagnostic_service_section": "LAB"}});
        let d = r.deliveries(
            "h",
            "OrderPlaced",
            "order-9",
            PayloadRef::Text(&Payload::from(&ct)),
            &meta,
        );
        assert_eq!(
            d,
            vec![NewDelivery {
                destination: "pacs".into(),
                lane: "patient-1".into(),
                subscription: "pacs/outbound/pacs_orm_o01".into(),
                mapping: "outbound/pacs_orm_o01".into(),
            }]
        );
        assert!(
            r.deliveries(
                "h",
                "OrderPlaced",
                "order-9",
                PayloadRef::Text(&Payload::from(&lab)),
                &meta
            )
            .is_empty()
        );
        assert!(
            r.deliveries(
                "h",
                "OrderChanged",
                "order-9",
                PayloadRef::Text(&Payload::from(&ct)),
                &meta
            )
            .is_empty()
        );
        // Without a patient stream the event's own stream is the lane.
        let d = r.deliveries(
            "h",
            "OrderCancelled",
            "order-9",
            PayloadRef::Text(&Payload::from(&ct)),
            &json!({}),
        );
        assert_eq!(d[0].lane, "order-9");
    }

    #[test]
    fn lists_tenants_and_lane_by_order() {
        let r = router(
            r#"
            auth = "none"
            [[destinations]]
            name = "lab"
            type = "http"
            endpoint = "http://127.0.0.1:9/hook"
            lane_by = "order"
            [[subscriptions]]
            destination = "lab"
            events = ["PatientUpdated"]
            when = { "patient.identifiers.type" = ["MR"] }
            mapping = "outbound/http_fhir_notification"
            hospital_ids = ["north"]
        "#,
        );
        let p = json!({"patient": {"identifiers": [{"type": "SS"}, {"type": "MR"}]}});
        let meta = json!({"streams": {"patient": "patient-1", "order": "order-2"}});
        assert_eq!(
            r.deliveries(
                "north",
                "PatientUpdated",
                "s",
                PayloadRef::Text(&Payload::from(&p)),
                &meta
            )[0]
            .lane,
            "order-2"
        );
        assert!(
            r.deliveries(
                "south",
                "PatientUpdated",
                "s",
                PayloadRef::Text(&Payload::from(&p)),
                &meta
            )
            .is_empty()
        );
        let no_mr = json!({"patient": {"identifiers": [{"type": "SS"}]}});
        assert!(
            r.deliveries(
                "north",
                "PatientUpdated",
                "s",
                PayloadRef::Text(&Payload::from(&no_mr)),
                &meta
            )
            .is_empty()
        );
    }

    #[test]
    fn configuration_mistakes_are_refused() {
        let bad = |extra: &str| {
            let text = format!("auth = \"none\"\n{extra}");
            match Settings::from_toml(&text) {
                Ok(s) => s.validate().is_err(),
                Err(_) => true,
            }
        };
        // Unknown destination, missing events, mapping outside outbound/, bad endpoint, typo.
        assert!(bad(
            "[[subscriptions]]\ndestination = \"x\"\nevents = [\"A\"]\nmapping = \"outbound/a\"\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"h:1\"\n[[subscriptions]]\ndestination = \"x\"\nevents = []\nmapping = \"outbound/a\"\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"h:1\"\n[[subscriptions]]\ndestination = \"x\"\nevents = [\"A\"]\nmapping = \"inbound/a\"\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"nohost\"\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"http\"\nendpoint = \"ftp://a\"\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"h:1\"\nparallel_lane = 3\n"
        ));
        assert!(bad(
            "[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"h:1\"\n[[destinations]]\nname = \"x\"\ntype = \"mllp\"\nendpoint = \"h:2\"\n"
        ));
    }
}
