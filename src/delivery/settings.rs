//! The `[[destinations]]`, `[[subscriptions]]` and `[delivery]` sections of the configuration.
//!
//! Plain structs with `deny_unknown_fields`, like every other section: a typo is a start-up error.
//! Units are in the names; `endpoint` is what Ferry calls (STYLE.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::auth::Secret;

/// A receiver Ferry delivers to, picked by its `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DestinationSettings {
    Mllp(MllpDestination),
    Http(HttpDestination),
}

impl DestinationSettings {
    pub fn name(&self) -> &str {
        match self {
            DestinationSettings::Mllp(d) => &d.name,
            DestinationSettings::Http(d) => &d.name,
        }
    }

    /// How many lanes are delivered in parallel (one connection each).
    pub fn parallel_lanes(&self) -> usize {
        match self {
            DestinationSettings::Mllp(d) => d.parallel_lanes,
            DestinationSettings::Http(d) => d.parallel_lanes,
        }
    }

    pub fn lane_by(&self) -> LaneBy {
        match self {
            DestinationSettings::Mllp(d) => d.lane_by,
            DestinationSettings::Http(d) => d.lane_by,
        }
    }

    pub fn retry(&self) -> &RetrySettings {
        match self {
            DestinationSettings::Mllp(d) => &d.retry,
            DestinationSettings::Http(d) => &d.retry,
        }
    }

    /// `mllp` or `http`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationSettings::Mllp(_) => "mllp",
            DestinationSettings::Http(_) => "http",
        }
    }
}

/// An HL7 v2 receiver over MLLP (a HIS, a PACS, another interface engine).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MllpDestination {
    pub name: String,
    /// `host:port` of the receiver.
    pub endpoint: String,
    /// TLS towards the receiver; absent for plain TCP.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// How long to wait for the receiver's ACK before counting the attempt as failed (retried).
    #[serde(default = "defaults::ack_timeout_secs")]
    pub ack_timeout_secs: f64,
    /// What an AE answer means: `retry` (the default: a receiver that had a passing problem) or
    /// `dead_letter`.
    #[serde(default)]
    pub on_ae: AeAction,
    /// How many lanes are delivered in parallel (one connection each). Order holds within a
    /// lane; lanes are independent.
    #[serde(default = "defaults::parallel_lanes")]
    pub parallel_lanes: usize,
    /// What a lane is: `patient` (the default: every message about one patient, in order) or
    /// `order` (every message about one order). Events without that stream use their own.
    #[serde(default)]
    pub lane_by: LaneBy,
    #[serde(default)]
    pub retry: RetrySettings,
}

/// What an AE (or CE) answer from a receiver means.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AeAction {
    #[default]
    Retry,
    DeadLetter,
}

/// TLS towards an MLLP receiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust; absent: the platform's trust store.
    pub ca_file: Option<PathBuf>,
    /// The name the receiver's certificate must carry; absent: the endpoint's host.
    pub server_name: Option<String>,
    /// PEM certificate chain and key for mutual TLS, when the receiver asks for a client
    /// certificate.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// An HTTP receiver (a FHIR server, a webhook).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpDestination {
    pub name: String,
    /// The URL each message is POSTed to.
    pub endpoint: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer …`.
    #[serde(default, skip_serializing)]
    pub bearer_token: Option<Secret>,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Whole request, answer included.
    #[serde(default = "defaults::request_timeout_secs")]
    pub timeout_secs: f64,
    /// How many lanes are delivered in parallel (one connection each). Order holds within a
    /// lane; lanes are independent.
    #[serde(default = "defaults::parallel_lanes")]
    pub parallel_lanes: usize,
    /// What a lane is: `patient` (the default: every message about one patient, in order) or
    /// `order` (every message about one order). Events without that stream use their own.
    #[serde(default)]
    pub lane_by: LaneBy,
    #[serde(default)]
    pub retry: RetrySettings,
}

/// See `lane_by` of a destination.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LaneBy {
    #[default]
    Patient,
    Order,
}

/// Retries: exponential backoff with jitter and a cap, then the dead-letter queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Wait before the second attempt; each further attempt doubles it, up to `max_backoff_secs`.
    pub initial_backoff_millis: u64,
    pub max_backoff_secs: u64,
    /// After this many failed attempts the message is dead-lettered (0: never by count).
    pub max_attempts: u32,
    /// A message still undelivered this long after it was queued is dead-lettered at its next
    /// failure (0: never by age).
    pub max_age_secs: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial_backoff_millis: 500,
            max_backoff_secs: 300,
            max_attempts: 50,
            max_age_secs: 24 * 3600,
        }
    }
}

/// Which events go to which destination, rendered by which outbound mapping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// Shown in the outbox and DLQ; defaults to `<destination>/<mapping file>`.
    #[serde(default)]
    pub name: Option<String>,
    pub destination: String,
    /// Event types, e.g. `["OrderPlaced", "OrderCancelled"]`.
    pub events: Vec<String>,
    /// Conditions on the event payload, all of which must hold: a dotted field path and the values
    /// it may have, e.g. `{ "order.diagnostic_service_section" = ["CT", "MR"] }`. A path through a
    /// list holds when any item has one of the values.
    #[serde(default)]
    pub when: BTreeMap<String, Vec<String>>,
    /// The outbound mapping file under the mappings folder, without `.yaml`:
    /// `outbound/pacs_orm_o01`.
    pub mapping: String,
    /// Only events of these tenants (`hospital_id`); empty: every tenant.
    #[serde(default)]
    pub hospital_ids: Vec<String>,
}

impl SubscriptionSettings {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.destination, self.mapping))
    }
}

/// How the dispatcher runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Off: messages are still queued in the outbox (nothing is lost), but this instance sends
    /// nothing. For a maintenance window, or an instance meant only for ingest.
    pub enabled: bool,
    /// How often an idle dispatcher looks for work queued by other instances (its own commits
    /// wake it at once).
    pub poll_interval_millis: u64,
    /// A lane taken by an instance is its own for this long, renewed with every delivery; a
    /// crashed instance's lanes are taken over once it runs out.
    pub lease_secs: u64,
    /// Messages delivered from one lane before it is put back for others to have a turn.
    pub lane_batch: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            enabled: true,
            poll_interval_millis: 200,
            lease_secs: 30,
            lane_batch: 64,
        }
    }
}

mod defaults {
    pub fn parallel_lanes() -> usize {
        4
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn ack_timeout_secs() -> f64 {
        30.0
    }
    pub fn request_timeout_secs() -> f64 {
        30.0
    }
}
