//! The outbox contract on both backends: rows queued in the event's transaction, lanes taken with
//! leases, order within a lane, backoff, dead letters blocking their lane, retry and discard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::both_backends;
use ferry::store::outbox::{Attempt, AttemptResult, DlqFilter, ReplayDelivery};
use ferry::store::{
    DynStore, ExpectedVersion, InboundRecord, InboundStatus, IngestWrite, NewDelivery, NewEvent,
};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

both_backends!(
    deliveries_are_queued_with_their_event,
    a_lane_goes_to_one_owner_until_its_lease_lapses,
    backoff_holds_a_lane_back,
    a_dead_letter_blocks_its_lane_until_retried_or_discarded,
    replay_queues_stored_events_again,
    a_drained_lane_rests_until_something_is_queued,
);

/// A lane given back as drained is not taken again until something new is queued in it, and
/// something queued while it was being drained keeps it due.
async fn a_drained_lane_rests_until_something_is_queued(store: DynStore) {
    store
        .commit_ingest(&[write("a", vec![to("pacs", "L1")])])
        .await
        .unwrap();
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1"]);
    let batch = store.outbox().lane_items("pacs", "L1", 10).await.unwrap();
    assert_eq!((batch.items.len(), batch.enqueued), (1, 1));
    // Queued after the dispatcher read the lane, before it recorded the delivery.
    store
        .commit_ingest(&[write("b", vec![to("pacs", "L1")])])
        .await
        .unwrap();
    let mut last = attempt(batch.items[0].id, "L1", "me", AttemptResult::Delivered);
    last.release = Some(batch.enqueued);
    let held = store.outbox().record_attempts(&[last]).await.unwrap();
    assert_eq!(held, vec![true]);
    // Released (another owner may take it) and still due: "b" is waiting.
    assert_eq!(claim(&store, "other", 5, LEASE).await, vec!["L1"]);
    let batch = store.outbox().lane_items("pacs", "L1", 10).await.unwrap();
    assert_eq!((batch.items.len(), batch.enqueued), (1, 2));
    let mut last = attempt(batch.items[0].id, "L1", "other", AttemptResult::Delivered);
    last.release = Some(batch.enqueued);
    store.outbox().record_attempts(&[last]).await.unwrap();
    // Drained: nothing to take until the next row.
    assert!(claim(&store, "me", 5, LEASE).await.is_empty());
    store
        .commit_ingest(&[write("c", vec![to("pacs", "L1")])])
        .await
        .unwrap();
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1"]);
    // An empty read releases it drained too.
    let batch = store.outbox().lane_items("pacs", "L1", 10).await.unwrap();
    let id = batch.items[0].id;
    store
        .outbox()
        .record_attempts(&[attempt(id, "L1", "me", AttemptResult::Delivered)])
        .await
        .unwrap();
    let empty = store.outbox().lane_items("pacs", "L1", 10).await.unwrap();
    assert!(empty.items.is_empty());
    store
        .outbox()
        .release_lane(
            "pacs",
            "L1",
            "me",
            OffsetDateTime::now_utc(),
            Some(empty.enqueued),
        )
        .await
        .unwrap();
    assert!(claim(&store, "me", 5, LEASE).await.is_empty());
}

fn write(stream: &str, deliveries: Vec<NewDelivery>) -> IngestWrite {
    let id = Uuid::now_v7();
    IngestWrite {
        inbound: InboundRecord {
            id,
            hospital_id: "H1".into(),
            listener: "mllp".into(),
            peer: "127.0.0.1:1".into(),
            received_at: OffsetDateTime::now_utc(),
            raw: b"MSH|^~\\&|A|B\r".to_vec(),
            decoded: None,
            charset: None,
            sending_application: None,
            sending_facility: None,
            control_id: None,
            message_type: None,
            status: InboundStatus::Accepted,
            ack_code: Some("AA".into()),
            error: None,
        },
        idempotency: None,
        events: vec![NewEvent {
            stream_id: stream.into(),
            expected_version: ExpectedVersion::Any,
            deliveries,
            event_type: "TestHappened".into(),
            schema_version: 1,
            payload: ferry::domain::Payload::from(&json!({"n": stream})),
            metadata: json!({}),
        }],
        preconditions: Vec::new(),
    }
}

fn to(destination: &str, lane: &str) -> NewDelivery {
    NewDelivery {
        destination: destination.into(),
        lane: lane.into(),
        subscription: format!("{destination}/outbound/test"),
        mapping: "outbound/test".into(),
    }
}

fn attempt(id: i64, lane: &str, owner: &str, result: AttemptResult) -> Attempt {
    let now = OffsetDateTime::now_utc();
    Attempt {
        id,
        destination: "pacs".into(),
        lane: lane.into(),
        owner: owner.into(),
        at: now,
        error: (!matches!(result, AttemptResult::Delivered))
            .then(|| "the receiver answered AR".into()),
        response: Some(b"MSA|AR|1\r".to_vec()),
        result,
        lease_until: now + Duration::from_secs(30),
        release: None,
    }
}

async fn claim(store: &DynStore, owner: &str, limit: i64, lease: Duration) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let mut lanes = store
        .outbox()
        .claim_lanes("pacs", owner, limit, now, now + lease)
        .await
        .unwrap();
    lanes.sort();
    lanes
}

async fn ids(store: &DynStore, lane: &str) -> Vec<i64> {
    store
        .outbox()
        .lane_items("pacs", lane, 100)
        .await
        .unwrap()
        .items
        .iter()
        .map(|i| i.id)
        .collect()
}

const LEASE: Duration = Duration::from_secs(30);

async fn deliveries_are_queued_with_their_event(store: DynStore) {
    store
        .commit_ingest(&[write("s1", vec![to("pacs", "L1"), to("his", "L1")])])
        .await
        .unwrap();
    let items = store
        .outbox()
        .lane_items("pacs", "L1", 10)
        .await
        .unwrap()
        .items;
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.event.stream_id, "s1");
    assert_eq!(item.event.payload, json!({"n": "s1"}));
    assert_eq!(item.mapping, "outbound/test");
    assert_eq!(item.attempts, 0);
    assert_eq!(
        store
            .outbox()
            .lane_items("his", "L1", 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // A batch that fails writes no outbox rows either.
    let mut conflict = write("s1", vec![to("pacs", "L1")]);
    conflict.events[0].expected_version = ExpectedVersion::NoStream;
    assert!(store.commit_ingest(&[conflict]).await.is_err());
    assert_eq!(ids(&store, "L1").await.len(), 1);

    let status = store.outbox().outbox_status().await.unwrap();
    let pacs = status.iter().find(|s| s.destination == "pacs").unwrap();
    assert_eq!((pacs.pending, pacs.dead), (1, 0));
    assert_eq!(pacs.lanes[0].lane, "L1");

    assert_eq!(claim(&store, "me", 4, LEASE).await, vec!["L1"]);
    let held = store
        .outbox()
        .record_attempts(&[attempt(item.id, "L1", "me", AttemptResult::Delivered)])
        .await
        .unwrap();
    assert_eq!(held, vec![true]);
    assert!(ids(&store, "L1").await.is_empty());
    let done = store.outbox().delivered_after("pacs", 0, 10).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].attempts, 1);
    let status = store.outbox().outbox_status().await.unwrap();
    assert!(status.iter().all(|s| s.destination != "pacs"), "{status:?}");
}

async fn a_lane_goes_to_one_owner_until_its_lease_lapses(store: DynStore) {
    let batch: Vec<IngestWrite> = ["a", "b", "c"]
        .iter()
        .map(|s| write(s, vec![to("pacs", "L1")]))
        .chain([write("d", vec![to("pacs", "L2")])])
        .collect();
    store.commit_ingest(&batch).await.unwrap();
    // Strict order within the lane.
    let l1 = ids(&store, "L1").await;
    assert_eq!(l1.len(), 3);
    assert!(l1.windows(2).all(|w| w[0] < w[1]));

    let first = claim(&store, "one", 1, LEASE).await;
    assert_eq!(first.len(), 1);
    let second = claim(&store, "two", 5, LEASE).await;
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
    assert!(claim(&store, "three", 5, LEASE).await.is_empty());

    // A record by an owner that does not hold the lane says so.
    let lane = &first[0];
    let head = ids(&store, lane).await[0];
    let held = store
        .outbox()
        .record_attempts(&[attempt(head, lane, "two", AttemptResult::Delivered)])
        .await
        .unwrap();
    assert_eq!(held, vec![false]);

    // Released lanes are free at once; lapsed leases are taken over.
    store
        .outbox()
        .release_lane("pacs", &second[0], "two", OffsetDateTime::now_utc(), None)
        .await
        .unwrap();
    let short = claim(&store, "four", 5, Duration::from_secs(1)).await;
    assert_eq!(short, second);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // "one" still renews its lease (heartbeat); "four" does not.
    store
        .outbox()
        .renew_leases("one", OffsetDateTime::now_utc() + LEASE)
        .await
        .unwrap();
    assert_eq!(claim(&store, "five", 5, LEASE).await, second);
}

async fn backoff_holds_a_lane_back(store: DynStore) {
    store
        .commit_ingest(&[
            write("a", vec![to("pacs", "L1")]),
            write("b", vec![to("pacs", "L1")]),
        ])
        .await
        .unwrap();
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1"]);
    let head = ids(&store, "L1").await[0];
    let retry_at = OffsetDateTime::now_utc() + Duration::from_millis(1500);
    let held = store
        .outbox()
        .record_attempts(&[attempt(head, "L1", "me", AttemptResult::Retry { retry_at })])
        .await
        .unwrap();
    assert_eq!(held, vec![true], "the failed attempt released the lane");
    assert!(claim(&store, "other", 5, LEASE).await.is_empty());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(claim(&store, "other", 5, LEASE).await, vec!["L1"]);
    let items = store
        .outbox()
        .lane_items("pacs", "L1", 10)
        .await
        .unwrap()
        .items;
    assert_eq!(items[0].id, head, "the failed message is still first");
    assert_eq!(items[0].attempts, 1);
}

async fn a_dead_letter_blocks_its_lane_until_retried_or_discarded(store: DynStore) {
    store
        .commit_ingest(&[
            write("a", vec![to("pacs", "L1")]),
            write("b", vec![to("pacs", "L1")]),
            write("c", vec![to("pacs", "L2")]),
        ])
        .await
        .unwrap();
    let l1 = ids(&store, "L1").await;
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1", "L2"]);
    store
        .outbox()
        .record_attempts(&[attempt(l1[0], "L1", "me", AttemptResult::Dead)])
        .await
        .unwrap();
    store
        .outbox()
        .release_lane("pacs", "L2", "me", OffsetDateTime::now_utc(), None)
        .await
        .unwrap();
    // L1 is blocked; L2 goes on.
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L2"]);
    let dead = store
        .outbox()
        .dlq_list(&DlqFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, l1[0]);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("the receiver answered AR")
    );
    assert_eq!(dead[0].last_response.as_deref(), Some("MSA|AR|1\r"));
    assert!(dead[0].dead_at.is_some());
    let other_tenant = DlqFilter {
        hospital_id: Some("H2".into()),
        ..DlqFilter::default()
    };
    assert!(
        store
            .outbox()
            .dlq_list(&other_tenant)
            .await
            .unwrap()
            .is_empty()
    );
    let status = store.outbox().outbox_status().await.unwrap();
    assert_eq!(status[0].dead, 1);

    // Retry: back in its lane, first, attempts from zero.
    let by_id = DlqFilter {
        id: Some(l1[0]),
        ..DlqFilter::default()
    };
    let now = OffsetDateTime::now_utc();
    assert_eq!(store.outbox().dlq_retry(&by_id, now).await.unwrap(), 1);
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1"]);
    let items = store
        .outbox()
        .lane_items("pacs", "L1", 10)
        .await
        .unwrap()
        .items;
    assert_eq!((items[0].id, items[0].attempts), (l1[0], 0));

    // Dead again, then discarded: the lane moves on to its next message.
    store
        .outbox()
        .record_attempts(&[attempt(l1[0], "L1", "me", AttemptResult::Dead)])
        .await
        .unwrap();
    let older = DlqFilter {
        dead_before: Some(OffsetDateTime::now_utc() - Duration::from_secs(3600)),
        ..DlqFilter::default()
    };
    assert_eq!(store.outbox().dlq_discard(&older, now).await.unwrap(), 0);
    let pacs = DlqFilter {
        destination: Some("pacs".into()),
        ..DlqFilter::default()
    };
    assert_eq!(store.outbox().dlq_discard(&pacs, now).await.unwrap(), 1);
    assert!(store.outbox().dlq_list(&pacs).await.unwrap().is_empty());
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L1"]);
    assert_eq!(ids(&store, "L1").await, vec![l1[1]]);
}

async fn replay_queues_stored_events_again(store: DynStore) {
    store.commit_ingest(&[write("a", vec![])]).await.unwrap();
    assert!(claim(&store, "me", 5, LEASE).await.is_empty());
    let replay = ReplayDelivery {
        hospital_id: "H1".into(),
        stream_id: "a".into(),
        stream_version: 1,
        event_type: "TestHappened".into(),
        delivery: to("pacs", "L9"),
    };
    let n = store
        .outbox()
        .enqueue(&[replay.clone(), replay], OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(claim(&store, "me", 5, LEASE).await, vec!["L9"]);
    assert_eq!(ids(&store, "L9").await.len(), 2);
    // An event that is not stored cannot be queued.
    let missing = ReplayDelivery {
        hospital_id: "H1".into(),
        stream_id: "nope".into(),
        stream_version: 1,
        event_type: "TestHappened".into(),
        delivery: to("pacs", "L9"),
    };
    assert!(
        store
            .outbox()
            .enqueue(&[missing], OffsetDateTime::now_utc())
            .await
            .is_err()
    );
}
