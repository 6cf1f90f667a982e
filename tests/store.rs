//! The store contract, one suite run against both backends (SQLite always, PostgreSQL when
//! `FERRY_TEST_POSTGRES_URL` is set; see `tests/common/mod.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use ferry::domain::Payload;
use ferry::store::{
    DynStore, ExpectedVersion, IdempotencyKey, IdempotencyRecord, InboundRecord, InboundStatus,
    IngestOutcome, IngestWrite, NewEvent, StoreCounts, StoreError,
};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

use common::both_backends;

both_backends!(
    migrate_twice_is_fine,
    every_column_reads_back_byte_exact,
    duplicate_of_stored_key_returns_original_and_writes_nothing,
    duplicate_within_one_batch,
    writes_without_idempotency_are_always_stored,
    events_get_consecutive_versions_per_stream,
    any_appends_continue_streams_across_batches_and_resends,
    expected_version_success_and_conflict,
    conflict_inside_batch_rolls_back_everything,
    duplicates_append_no_events,
    tenants_are_isolated,
    concurrent_commits_all_succeed,
    nul_characters_in_text_are_refused_alike,
    an_idempotency_record_of_another_message_is_refused_alike,
    an_accepted_message_needs_its_record_alike,
    lookup_by_control_id_finds_accepted_and_rejected,
    batch_beyond_bind_parameter_limits,
    reused_inbound_id_is_not_a_version_conflict,
    a_catalogue_event_the_projections_cannot_read_fails_the_batch,
);

/// Projections never swallow errors: a `PatientAdmitted` whose payload is not a patient
/// admission fails its batch, and nothing of it is written.
async fn a_catalogue_event_the_projections_cannot_read_fails_the_batch(store: DynStore) {
    let mut bad = event("encounter-1", ExpectedVersion::Any, 1);
    bad.event_type = "PatientAdmitted".into();
    let w = with_events(accepted("H1", "BAD-1"), vec![bad]);
    let before = store.counts().await.unwrap();
    let err = store.commit_ingest(&[w]).await.unwrap_err();
    assert!(
        matches!(err, ferry::store::StoreError::Projection(_)),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(store.counts().await.unwrap(), before);
}

/// Microsecond precision: what both backends keep.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_microsecond(now.microsecond()).unwrap()
}

fn key(hospital: &str, control_id: &str) -> IdempotencyKey {
    IdempotencyKey {
        hospital_id: hospital.into(),
        sending_application: "LAB".into(),
        sending_facility: "NORTH".into(),
        control_id: control_id.into(),
    }
}

/// An accepted message with an idempotency record under `control_id`.
fn accepted(hospital: &str, control_id: &str) -> IngestWrite {
    let id = Uuid::now_v7();
    let raw =
        format!("MSH|^~\\&|LAB|NORTH|FERRY|H|20261122||ADT^A01|{control_id}|P|2.5\r").into_bytes();
    IngestWrite {
        inbound: InboundRecord {
            id,
            hospital_id: hospital.into(),
            listener: "mllp-main".into(),
            peer: "10.0.0.7:40001".into(),
            received_at: now_micros(),
            decoded: Some(String::from_utf8(raw.clone()).unwrap()),
            raw,
            charset: Some("UNICODE UTF-8".into()),
            sending_application: Some("LAB".into()),
            sending_facility: Some("NORTH".into()),
            control_id: Some(control_id.into()),
            message_type: Some("ADT^A01^ADT_A01".into()),
            status: InboundStatus::Accepted,
            ack_code: Some("AA".into()),
            error: None,
        },
        idempotency: Some(IdempotencyRecord {
            key: key(hospital, control_id),
            content_hash: format!("hash-{id}").into_bytes(),
            ack: format!("MSH|ACK|{id}\rMSA|AA|{control_id}\r").into_bytes(),
            inbound_id: id,
        }),
        events: Vec::new(),

        preconditions: Vec::new(),
    }
}

/// A rejected message: no idempotency record.
fn rejected(hospital: &str, control_id: &str) -> IngestWrite {
    let mut w = accepted(hospital, control_id);
    w.idempotency = None;
    w.inbound.status = InboundStatus::Rejected;
    w.inbound.ack_code = Some("AE".into());
    w.inbound.error = Some("PID-3 is empty".into());
    w
}

/// An event of a type outside the domain catalogue: the store takes any event, and only catalogue
/// events have read models, so these tests are about the store alone.
fn event(stream: &str, expected: ExpectedVersion, n: u32) -> NewEvent {
    NewEvent {
        stream_id: stream.into(),
        expected_version: expected,
        deliveries: Vec::new(),
        event_type: "TestEventRecorded".into(),
        schema_version: 2,
        payload: Payload::from(
            &json!({"n": n, "name": "Müller", "nested": {"list": [1, 2.5, null, true]}}),
        ),
        metadata: json!({"channel": "adt", "control_id": format!("C{n}")}),
    }
}

fn with_events(mut w: IngestWrite, events: Vec<NewEvent>) -> IngestWrite {
    w.events = events;
    w
}

fn is_conflict(result: &Result<Vec<IngestOutcome>, StoreError>) -> bool {
    matches!(result, Err(StoreError::VersionConflict { .. }))
}

async fn counts(store: &DynStore) -> StoreCounts {
    store.counts().await.unwrap()
}

async fn migrate_twice_is_fine(store: DynStore) {
    // The harness migrated once already.
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(counts(&store).await, StoreCounts::default());
}

async fn every_column_reads_back_byte_exact(store: DynStore) {
    let mut full = accepted("H1", "MSG-1");
    // Latin-1 bytes (not UTF-8), CR segment separators, a NUL byte and a 0xFF.
    full.inbound.raw = b"MSH|^~\\&|LAB|NORTH|||20261122||ADT^A01|MSG-1|P|2.5\rPID|||1||M\xfcller^J\xf6rg\r\x00\xff"
        .to_vec();
    full.inbound.decoded = Some("MSH|^~\\&|LAB|NORTH\rPID|||1||Müller^Jörg\r".into());
    full.inbound.charset = Some("8859/1".into());
    full.inbound.received_at = datetime!(2026-11-22 08:00:42.123456 UTC);
    full.idempotency.as_mut().unwrap().content_hash = (0u8..32).collect();
    full.idempotency.as_mut().unwrap().ack = b"MSH|^~\\&|FERRY\rMSA|AA|MSG-1\r\xe9".to_vec();

    // Every optional column empty.
    let mut sparse = rejected("H1", "MSG-2");
    sparse.inbound.decoded = None;
    sparse.inbound.charset = None;
    sparse.inbound.sending_application = None;
    sparse.inbound.sending_facility = None;
    sparse.inbound.control_id = None;
    sparse.inbound.message_type = None;
    sparse.inbound.ack_code = None;
    sparse.inbound.error = None;
    sparse.inbound.raw = Vec::new();
    sparse.inbound.received_at = datetime!(1999-12-31 23:59:59.999999 -05:00);

    let outcomes = store
        .commit_ingest(&[full.clone(), sparse.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![IngestOutcome::Stored, IngestOutcome::Stored]);

    let got = store.inbound(full.inbound.id).await.unwrap().unwrap();
    assert_eq!(got, full.inbound);
    assert_eq!(got.raw, full.inbound.raw, "raw bytes");
    let got = store.inbound(sparse.inbound.id).await.unwrap().unwrap();
    assert_eq!(got, sparse.inbound);
    assert_eq!(
        got.received_at.unix_timestamp_nanos(),
        sparse.inbound.received_at.unix_timestamp_nanos()
    );
    assert!(store.inbound(Uuid::now_v7()).await.unwrap().is_none());

    let by_control = store.inbound_by_control_id("H1", "MSG-1").await.unwrap();
    assert_eq!(by_control, vec![full.inbound.clone()]);
    assert!(
        store
            .inbound_by_control_id("H2", "MSG-1")
            .await
            .unwrap()
            .is_empty()
    );

    let record = full.idempotency.clone().unwrap();
    assert_eq!(store.idempotency(&record.key).await.unwrap(), Some(record));
    assert_eq!(store.idempotency(&key("H1", "MSG-2")).await.unwrap(), None);

    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 2,
            idempotency: 1,
            events: 0
        }
    );
}

async fn duplicate_of_stored_key_returns_original_and_writes_nothing(store: DynStore) {
    let original = with_events(
        accepted("H1", "DUP"),
        vec![event("patient-1", ExpectedVersion::NoStream, 1)],
    );
    store
        .commit_ingest(std::slice::from_ref(&original))
        .await
        .unwrap();
    let before = counts(&store).await;
    assert_eq!(
        before,
        StoreCounts {
            inbound: 1,
            idempotency: 1,
            events: 1
        }
    );

    let resend = with_events(
        accepted("H1", "DUP"),
        vec![event("patient-1", ExpectedVersion::Any, 2)],
    );
    let fresh = accepted("H1", "OTHER");
    let outcomes = store.commit_ingest(&[resend.clone(), fresh]).await.unwrap();
    let orig = original.idempotency.unwrap();
    assert_eq!(
        outcomes,
        vec![
            IngestOutcome::Duplicate {
                content_hash: orig.content_hash,
                ack: orig.ack,
                inbound_id: original.inbound.id,
            },
            IngestOutcome::Stored,
        ]
    );
    assert!(store.inbound(resend.inbound.id).await.unwrap().is_none());
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 2,
            idempotency: 2,
            events: 1
        }
    );
    assert_eq!(store.read_stream("H1", "patient-1").await.unwrap().len(), 1);
}

async fn duplicate_within_one_batch(store: DynStore) {
    let first = accepted("H1", "SAME");
    let second = accepted("H1", "SAME");
    let third = accepted("H1", "DIFFERENT");
    let fourth = accepted("H1", "SAME");
    let outcomes = store
        .commit_ingest(&[first.clone(), second.clone(), third, fourth])
        .await
        .unwrap();
    let orig = first.idempotency.clone().unwrap();
    let dup = IngestOutcome::Duplicate {
        content_hash: orig.content_hash.clone(),
        ack: orig.ack.clone(),
        inbound_id: first.inbound.id,
    };
    assert_eq!(
        outcomes,
        vec![
            IngestOutcome::Stored,
            dup.clone(),
            IngestOutcome::Stored,
            dup
        ]
    );
    assert!(store.inbound(second.inbound.id).await.unwrap().is_none());
    assert_eq!(store.idempotency(&orig.key).await.unwrap(), Some(orig));
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 2,
            idempotency: 2,
            events: 0
        }
    );
}

async fn writes_without_idempotency_are_always_stored(store: DynStore) {
    let a = rejected("H1", "R1");
    let b = rejected("H1", "R1");
    assert_eq!(
        store.commit_ingest(&[a.clone(), b.clone()]).await.unwrap(),
        vec![IngestOutcome::Stored, IngestOutcome::Stored]
    );
    let c = rejected("H1", "R1");
    assert_eq!(
        store.commit_ingest(std::slice::from_ref(&c)).await.unwrap(),
        vec![IngestOutcome::Stored]
    );
    // A later accepted resend of the fixed message is processed, not answered from a record.
    let fixed = accepted("H1", "R1");
    assert_eq!(
        store
            .commit_ingest(std::slice::from_ref(&fixed))
            .await
            .unwrap(),
        vec![IngestOutcome::Stored]
    );
    let rows = store.inbound_by_control_id("H1", "R1").await.unwrap();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![a.inbound.id, b.inbound.id, c.inbound.id, fixed.inbound.id]
    );
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 4,
            idempotency: 1,
            events: 0
        }
    );
}

/// Mapped messages append at `ExpectedVersion::Any`, which SQLite writes in one statement that reads
/// the streams' current versions itself: versions must continue across batches, stay consecutive
/// when a batch touches one stream several times, keep the batch's order in the global position,
/// and a resend in a later batch (which falls back to the general path) must append nothing.
async fn any_appends_continue_streams_across_batches_and_resends(store: DynStore) {
    let any = |stream: &str, n| event(stream, ExpectedVersion::Any, n);
    let first = with_events(
        accepted("H1", "A1"),
        vec![any("s1", 1), any("s1", 2), any("s2", 3)],
    );
    store
        .commit_ingest(std::slice::from_ref(&first))
        .await
        .unwrap();
    let outcomes = store
        .commit_ingest(&[
            with_events(accepted("H1", "A2"), vec![any("s1", 4)]),
            with_events(accepted("H1", "A3"), vec![any("s2", 5), any("s1", 6)]),
            with_events(accepted("H2", "A4"), vec![any("s1", 7)]),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![IngestOutcome::Stored; 3]);
    let outcomes = store
        .commit_ingest(&[
            // A resend: same key, a new inbound row id, the same events.
            with_events(accepted("H1", "A1"), first.events.clone()),
            with_events(accepted("H1", "A5"), vec![any("s1", 8)]),
        ])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[0], IngestOutcome::Duplicate { .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], IngestOutcome::Stored);

    let versions_and_ns = |events: Vec<ferry::store::RecordedEvent>| {
        events
            .iter()
            .map(|e| (e.stream_version, e.payload["n"].as_u64().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions_and_ns(store.read_stream("H1", "s1").await.unwrap()),
        vec![(1, 1), (2, 2), (3, 4), (4, 6), (5, 8)]
    );
    assert_eq!(
        versions_and_ns(store.read_stream("H1", "s2").await.unwrap()),
        vec![(1, 3), (2, 5)]
    );
    assert_eq!(
        versions_and_ns(store.read_stream("H2", "s1").await.unwrap()),
        vec![(1, 7)]
    );
    let mut all: Vec<_> = ["s1", "s2"]
        .into_iter()
        .map(|s| store.read_stream("H1", s))
        .collect::<futures::future::JoinAll<_>>()
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    all.sort_by_key(|e| e.global_position);
    let order: Vec<u64> = all
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5, 6, 8]);
    assert_eq!(counts(&store).await.events, 8);
}

async fn events_get_consecutive_versions_per_stream(store: DynStore) {
    let started = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let batch = vec![
        with_events(
            accepted("H1", "E1"),
            vec![
                event("s1", ExpectedVersion::NoStream, 1),
                event("s1", ExpectedVersion::Any, 2),
                event("s2", ExpectedVersion::NoStream, 3),
            ],
        ),
        with_events(
            accepted("H1", "E2"),
            vec![event("s1", ExpectedVersion::Exactly(2), 4)],
        ),
        with_events(
            rejected("H1", "E3"),
            vec![event("s2", ExpectedVersion::Exactly(1), 5)],
        ),
    ];
    store.commit_ingest(&batch).await.unwrap();
    store
        .commit_ingest(&[with_events(
            accepted("H1", "E4"),
            vec![event("s1", ExpectedVersion::Exactly(3), 6)],
        )])
        .await
        .unwrap();

    let s1 = store.read_stream("H1", "s1").await.unwrap();
    let s2 = store.read_stream("H1", "s2").await.unwrap();
    assert_eq!(
        s1.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        s2.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let ns: Vec<u64> = s1
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 4, 6]);

    let mut all: Vec<_> = s1.iter().chain(&s2).collect();
    all.sort_by_key(|e| e.global_position);
    let order: Vec<u64> = all
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![1, 2, 3, 4, 5, 6],
        "global positions follow batch order"
    );
    for pair in all.windows(2) {
        assert!(pair[0].global_position < pair[1].global_position);
    }

    let e = &s1[0];
    let expected = event("s1", ExpectedVersion::NoStream, 1);
    assert_eq!(e.hospital_id, "H1");
    assert_eq!(e.stream_id, "s1");
    assert_eq!(e.event_type, expected.event_type);
    assert_eq!(e.schema_version, 2);
    assert_eq!(e.payload, expected.payload.to_value().unwrap());
    assert_eq!(e.metadata, expected.metadata);
    let now = OffsetDateTime::now_utc() + time::Duration::seconds(5);
    assert!(
        e.recorded_at > started && e.recorded_at < now,
        "recorded_at {}",
        e.recorded_at
    );
    assert_eq!(counts(&store).await.events, 6);
    assert!(store.read_stream("H1", "nope").await.unwrap().is_empty());
}

async fn expected_version_success_and_conflict(store: DynStore) {
    let setup = with_events(
        accepted("H1", "V0"),
        vec![
            event("s", ExpectedVersion::NoStream, 1),
            event("s", ExpectedVersion::Any, 2),
        ],
    );
    store.commit_ingest(&[setup]).await.unwrap();
    let before = counts(&store).await;

    // NoStream on an existing stream.
    let r = store
        .commit_ingest(&[with_events(
            accepted("H1", "V1"),
            vec![event("s", ExpectedVersion::NoStream, 3)],
        )])
        .await;
    match r {
        Err(StoreError::VersionConflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, "s");
            assert_eq!(expected, "no stream");
            assert_eq!(actual, 2);
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    // Exactly, wrong version.
    let r = store
        .commit_ingest(&[with_events(
            accepted("H1", "V1"),
            vec![event("s", ExpectedVersion::Exactly(1), 3)],
        )])
        .await;
    assert!(
        matches!(r, Err(StoreError::VersionConflict { actual: 2, .. })),
        "{r:?}"
    );
    // Exactly on a missing stream.
    let r = store
        .commit_ingest(&[with_events(
            accepted("H1", "V1"),
            vec![event("t", ExpectedVersion::Exactly(3), 3)],
        )])
        .await;
    assert!(
        matches!(r, Err(StoreError::VersionConflict { actual: 0, .. })),
        "{r:?}"
    );
    assert_eq!(counts(&store).await, before, "conflicts write nothing");
    // The key of the failed write is still free.
    assert_eq!(store.idempotency(&key("H1", "V1")).await.unwrap(), None);

    // Successes.
    store
        .commit_ingest(&[with_events(
            accepted("H1", "V1"),
            vec![event("s", ExpectedVersion::Exactly(2), 3)],
        )])
        .await
        .unwrap();
    store
        .commit_ingest(&[with_events(
            accepted("H1", "V2"),
            vec![event("s", ExpectedVersion::Any, 4)],
        )])
        .await
        .unwrap();
    store
        .commit_ingest(&[with_events(
            accepted("H1", "V3"),
            vec![event("t", ExpectedVersion::NoStream, 5)],
        )])
        .await
        .unwrap();
    let s = store.read_stream("H1", "s").await.unwrap();
    assert_eq!(
        s.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(store.read_stream("H1", "t").await.unwrap().len(), 1);
}

async fn conflict_inside_batch_rolls_back_everything(store: DynStore) {
    store
        .commit_ingest(&[with_events(
            accepted("H1", "B0"),
            vec![event("s", ExpectedVersion::NoStream, 1)],
        )])
        .await
        .unwrap();
    let before = counts(&store).await;
    // Fine on its own, but the third write expects the version before the second write's append.
    let batch = vec![
        with_events(
            accepted("H1", "B1"),
            vec![event("new", ExpectedVersion::NoStream, 2)],
        ),
        with_events(
            rejected("H1", "B2"),
            vec![event("s", ExpectedVersion::Exactly(1), 3)],
        ),
        with_events(
            accepted("H1", "B3"),
            vec![event("s", ExpectedVersion::Exactly(1), 4)],
        ),
    ];
    let r = store.commit_ingest(&batch).await;
    assert!(
        matches!(&r, Err(StoreError::VersionConflict { actual: 2, .. })),
        "{r:?}"
    );
    assert_eq!(counts(&store).await, before);
    assert!(store.inbound(batch[0].inbound.id).await.unwrap().is_none());
    assert!(store.read_stream("H1", "new").await.unwrap().is_empty());

    // Two NoStream appends to one new stream in one batch: the second conflicts.
    let batch = vec![
        with_events(
            accepted("H1", "B4"),
            vec![event("fresh", ExpectedVersion::NoStream, 5)],
        ),
        with_events(
            accepted("H1", "B5"),
            vec![event("fresh", ExpectedVersion::NoStream, 6)],
        ),
    ];
    assert!(is_conflict(&store.commit_ingest(&batch).await));
    assert_eq!(counts(&store).await, before);
}

async fn duplicates_append_no_events(store: DynStore) {
    store
        .commit_ingest(&[with_events(
            accepted("H1", "D1"),
            vec![event("s", ExpectedVersion::NoStream, 1)],
        )])
        .await
        .unwrap();
    // The resend's events would conflict, but a duplicate writes (and checks) nothing.
    let resend = with_events(
        accepted("H1", "D1"),
        vec![event("s", ExpectedVersion::NoStream, 1)],
    );
    let outcomes = store.commit_ingest(&[resend]).await.unwrap();
    assert!(matches!(outcomes[0], IngestOutcome::Duplicate { .. }));
    assert_eq!(counts(&store).await.events, 1);
}

async fn tenants_are_isolated(store: DynStore) {
    let a = with_events(
        accepted("HA", "K1"),
        vec![event("patient-1", ExpectedVersion::NoStream, 1)],
    );
    let b = with_events(
        accepted("HB", "K1"),
        vec![event("patient-1", ExpectedVersion::NoStream, 2)],
    );
    assert_eq!(
        store.commit_ingest(&[a.clone(), b.clone()]).await.unwrap(),
        vec![IngestOutcome::Stored, IngestOutcome::Stored]
    );
    assert_eq!(
        store
            .idempotency(&key("HA", "K1"))
            .await
            .unwrap()
            .unwrap()
            .inbound_id,
        a.inbound.id
    );
    assert_eq!(
        store
            .idempotency(&key("HB", "K1"))
            .await
            .unwrap()
            .unwrap()
            .inbound_id,
        b.inbound.id
    );
    let sa = store.read_stream("HA", "patient-1").await.unwrap();
    let sb = store.read_stream("HB", "patient-1").await.unwrap();
    assert_eq!(sa.len(), 1);
    assert_eq!(sb.len(), 1);
    assert_eq!(
        (
            sa[0].hospital_id.as_str(),
            sa[0].stream_version,
            sa[0].payload["n"].as_u64()
        ),
        ("HA", 1, Some(1))
    );
    assert_eq!(
        (
            sb[0].hospital_id.as_str(),
            sb[0].stream_version,
            sb[0].payload["n"].as_u64()
        ),
        ("HB", 1, Some(2))
    );
    assert_eq!(
        store.inbound_by_control_id("HA", "K1").await.unwrap().len(),
        1
    );
    assert!(
        store
            .read_stream("HC", "patient-1")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_commits_all_succeed(store: DynStore) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                let batch: Vec<IngestWrite> = (0..4)
                    .map(|i| {
                        with_events(
                            accepted("H1", &format!("T{t}-R{round}-{i}")),
                            vec![event(&format!("task-{t}"), ExpectedVersion::Any, round)],
                        )
                    })
                    .collect();
                let outcomes = store
                    .commit_ingest(&batch)
                    .await
                    .expect("commit must not fail");
                assert!(outcomes.iter().all(|o| *o == IngestOutcome::Stored));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 640,
            idempotency: 640,
            events: 640
        }
    );
    let s = store.read_stream("H1", "task-3").await.unwrap();
    assert_eq!(
        s.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
}

/// Two Ferry instances (two pools) commit the same key at the same time: exactly one stores it; the
/// other sees a duplicate or, if it lost the race mid-flight, a retryable `IdempotencyRace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_race_on_one_key() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let a = db.store.clone();
    let b = db.another_store().await;
    let mut races = 0;
    for round in 0..40 {
        let control_id = format!("RACE-{round}");
        let wa = accepted("H1", &control_id);
        let wb = accepted("H1", &control_id);
        let (ra, rb) = tokio::join!(
            a.commit_ingest(std::slice::from_ref(&wa)),
            b.commit_ingest(std::slice::from_ref(&wb))
        );
        let mut stored = 0;
        for (r, store) in [(ra, &a), (rb, &b)] {
            match r {
                Ok(o) if o == vec![IngestOutcome::Stored] => stored += 1,
                Ok(o) => assert!(matches!(o[0], IngestOutcome::Duplicate { .. }), "{o:?}"),
                Err(StoreError::IdempotencyRace) => {
                    races += 1;
                    let retry = store
                        .commit_ingest(std::slice::from_ref(&wb))
                        .await
                        .unwrap();
                    assert!(
                        matches!(retry[0], IngestOutcome::Duplicate { .. }),
                        "{retry:?}"
                    );
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(stored, 1, "round {round}");
    }
    assert_eq!(counts(&a).await.inbound, 40);
    assert_eq!(counts(&a).await.idempotency, 40);
    eprintln!("idempotency races seen: {races} of 40 rounds");
}

/// Throughput of `commit_ingest` with batches of 32 (~1.5 kB raw + decoded each). Run with
/// `cargo test --release --test store -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, not a check"]
async fn throughput() {
    let (sqlite, _dir) = common::sqlite_store().await;
    for (batch, tasks) in [(32, 1), (32, 4), (64, 1)] {
        measure("sqlite", &sqlite, batch, tasks).await;
    }
    if let Some(db) = common::postgres_store().await {
        for (batch, tasks) in [(32, 1), (32, 4), (64, 1), (64, 4)] {
            measure("postgres", &db.store, batch, tasks).await;
        }
    }
}

async fn measure(name: &str, store: &DynStore, batch_size: usize, tasks: usize) {
    const MESSAGES: usize = 20_000;
    let padding = "OBX|1|TX|NOTE||".to_owned() + &"x".repeat(1400) + "\r";
    let prefix = Uuid::now_v7().simple().to_string();
    let batches: Vec<Vec<IngestWrite>> = (0..MESSAGES / batch_size)
        .map(|b| {
            (0..batch_size)
                .map(|i| {
                    let mut w = accepted("H1", &format!("{prefix}-{b}-{i}"));
                    w.inbound.raw.extend_from_slice(padding.as_bytes());
                    w.inbound.decoded = Some(String::from_utf8(w.inbound.raw.clone()).unwrap());
                    w
                })
                .collect()
        })
        .collect();
    let per_task = batches.len().div_ceil(tasks);
    let started = Instant::now();
    let mut handles = Vec::new();
    for chunk in batches.chunks(per_task) {
        let chunk = chunk.to_vec();
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for batch in &chunk {
                store.commit_ingest(batch).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = (MESSAGES / batch_size) * batch_size;
    println!(
        "{name}: {n} messages, batches of {batch_size}, {tasks} concurrent committer(s): {secs:.2} s, {:.0} msg/s",
        n as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Two instances appending at `Any` to one stream (as mapped HL7 messages about one patient do)
/// race between reading the version and inserting; the group committer retries the loser, so every
/// message is stored and the stream stays gap-free.
async fn postgres_two_instances_append_any_to_one_stream() {
    use ferry::store::group_commit::{GroupCommitConfig, GroupCommitter};
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let config = GroupCommitConfig {
        max_wait: std::time::Duration::ZERO,
        max_batch: 8,
        workers: 2,
    };
    let (a, _ja) = GroupCommitter::start(db.store.clone(), config);
    let (b, _jb) = GroupCommitter::start(db.another_store().await, config);
    let mut tasks = Vec::new();
    for i in 0..200_u32 {
        let committer = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let w = with_events(
                accepted("H1", &format!("ANY-{i}")),
                vec![event("shared", ExpectedVersion::Any, i)],
            );
            committer.commit(w).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), IngestOutcome::Stored);
    }
    let versions: Vec<i64> = db
        .store
        .read_stream("H1", "shared")
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=200).collect::<Vec<_>>());
}

/// Two instances append to the same new stream at the same time: one wins, the other gets a version
/// conflict (from its own check, or from the unique constraint when both read the stream as empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_race_on_one_stream() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let a = db.store.clone();
    let b = db.another_store().await;
    for round in 0..30 {
        let stream = format!("patient-{round}");
        let wa = with_events(
            accepted("H1", &format!("A-{round}")),
            vec![event(&stream, ExpectedVersion::NoStream, 1)],
        );
        let wb = with_events(
            accepted("H1", &format!("B-{round}")),
            vec![event(&stream, ExpectedVersion::NoStream, 2)],
        );
        let (ra, rb) = tokio::join!(
            a.commit_ingest(std::slice::from_ref(&wa)),
            b.commit_ingest(std::slice::from_ref(&wb))
        );
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {ra:?} / {rb:?}");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                match e {
                    StoreError::VersionConflict {
                        stream_id, actual, ..
                    } => {
                        assert_eq!(stream_id, &stream);
                        assert_eq!(*actual, 1);
                    }
                    other => panic!("round {round}: unexpected {other:?}"),
                }
            }
        }
        assert_eq!(a.read_stream("H1", &stream).await.unwrap().len(), 1);
    }
    assert_eq!(counts(&a).await.events, 30);
}

/// A store written before migration 0004 (the idempotency key reordered, the inbound log's
/// control-ID index made partial) keeps every record across it, and finds its messages by control
/// ID and answers their resends afterwards.
#[tokio::test]
async fn sqlite_records_survive_the_control_id_migration() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    for file in [
        "0001_initial.sql",
        "0002_projections.sql",
        "0003_outbox.sql",
    ] {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        std::fs::copy(repo.join(file), old.join(file)).unwrap();
    }
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let store = ferry::store::connect(&url, &Default::default())
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let before = [
        accepted("H1", "M1"),
        rejected("H1", "M1"),
        accepted("H2", "M1"),
    ];
    store.commit_ingest(&before).await.unwrap();

    store.migrate().await.unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbound_messages' \
         ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        indexes.contains(&"inbound_messages_rejected_control_id".to_string())
            && !indexes.contains(&"inbound_messages_hospital_control_id".to_string()),
        "{indexes:?}"
    );
    assert_eq!(
        store.inbound_by_control_id("H1", "M1").await.unwrap(),
        vec![before[0].inbound.clone(), before[1].inbound.clone()]
    );
    let resend = accepted("H1", "M1");
    let original = before[0].idempotency.clone().unwrap();
    assert_eq!(
        store
            .commit_ingest(std::slice::from_ref(&resend))
            .await
            .unwrap(),
        vec![IngestOutcome::Duplicate {
            content_hash: original.content_hash,
            ack: original.ack,
            inbound_id: original.inbound_id,
        }]
    );
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 3,
            idempotency: 2,
            events: 0
        }
    );
}

/// `sqlite::memory:` must keep one database for the store's lifetime (a pool of several
/// connections would give each its own empty database).
#[tokio::test]
async fn sqlite_in_memory_keeps_its_data() {
    let store = ferry::store::connect("sqlite::memory:", &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let w = accepted("H1", "MEM");
    store.commit_ingest(std::slice::from_ref(&w)).await.unwrap();
    for _ in 0..4 {
        assert_eq!(
            store.inbound(w.inbound.id).await.unwrap(),
            Some(w.inbound.clone())
        );
    }
    assert_eq!(counts(&store).await.inbound, 1);
}

#[tokio::test]
async fn unknown_url_is_refused() {
    let r = ferry::store::connect("mysql://localhost/ferry", &Default::default()).await;
    assert!(matches!(r, Err(StoreError::UnsupportedUrl(_))));
}

/// A value that does not fit its column type comes back as `Corrupt` naming the column, not a panic.
#[tokio::test]
async fn sqlite_bad_values_are_reported_as_corrupt() {
    let (store, dir) = common::sqlite_store().await;
    let w = with_events(
        accepted("H1", "BAD"),
        vec![event("s", ExpectedVersion::Any, 1)],
    );
    store.commit_ingest(std::slice::from_ref(&w)).await.unwrap();
    let url = format!("sqlite://{}/data/ferry.db", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE inbound_messages SET received_at = 'yesterday'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = '{not json'")
        .execute(&pool)
        .await
        .unwrap();
    match store.inbound_by_control_id("H1", "BAD").await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("received_at"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.read_stream("H1", "s").await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("payload"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// PostgreSQL TEXT/JSONB cannot hold U+0000; both backends refuse it the same way (raw bytes may
/// contain NUL, see `every_column_reads_back_byte_exact`).
async fn nul_characters_in_text_are_refused_alike(store: DynStore) {
    let ok = accepted("H1", "N0");
    let mut bad_text = accepted("H1", "N1");
    bad_text.inbound.decoded = Some("MSH|^~\\&|A\0B\r".into());
    let r = store.commit_ingest(&[ok.clone(), bad_text]).await;
    match r {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("decoded"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let bad_json = with_events(
        accepted("H1", "N2"),
        vec![NewEvent {
            payload: Payload::from(&json!({"name": ["x\u{0}y"]})),
            ..event("s", ExpectedVersion::Any, 1)
        }],
    );
    let r = store.commit_ingest(&[ok, bad_json]).await;
    match r {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("payload"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(counts(&store).await, StoreCounts::default());
}

/// An idempotency record must point at its own message's inbound row, or a resend would be answered
/// from another message. Both backends refuse it before writing anything, also when the row it
/// points at exists (which a foreign key would have let through) and on PostgreSQL, which has no
/// foreign key for it any more (migration 0006).
async fn an_idempotency_record_of_another_message_is_refused_alike(store: DynStore) {
    let stored = accepted("H1", "L0");
    store
        .commit_ingest(std::slice::from_ref(&stored))
        .await
        .unwrap();
    for (n, points_at) in [(1, stored.inbound.id), (2, Uuid::now_v7())] {
        let ok = accepted("H1", &format!("L{n}-OK"));
        let mut bad = accepted("H1", &format!("L{n}"));
        if let Some(record) = &mut bad.idempotency {
            record.inbound_id = points_at;
        }
        match store.commit_ingest(&[ok, bad.clone()]).await {
            Err(StoreError::Corrupt(msg)) => {
                assert!(msg.contains(&bad.inbound.id.to_string()), "{msg}");
                assert!(msg.contains(&points_at.to_string()), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 1,
            idempotency: 1,
            events: 0
        }
    );
}

/// Accepted messages are found by control ID through their idempotency records (migrations
/// sqlite/0004, postgres/0007), so the store refuses an accepted message with a control ID but
/// no record of that tenant and control ID, and a record on a message that is not accepted.
async fn an_accepted_message_needs_its_record_alike(store: DynStore) {
    let mut without = accepted("H1", "N1");
    without.idempotency = None;
    let mut other_control_id = accepted("H1", "N2");
    if let Some(record) = &mut other_control_id.idempotency {
        record.key.control_id = "N2-ELSE".into();
    }
    let mut other_tenant = accepted("H1", "N3");
    if let Some(record) = &mut other_tenant.idempotency {
        record.key.hospital_id = "H2".into();
    }
    let mut rejected_with_record = accepted("H1", "N4");
    rejected_with_record.inbound.status = InboundStatus::Rejected;
    for bad in [
        without,
        other_control_id,
        other_tenant,
        rejected_with_record,
    ] {
        match store
            .commit_ingest(&[accepted("H1", "OK"), bad.clone()])
            .await
        {
            Err(StoreError::Corrupt(msg)) => {
                assert!(msg.contains(&bad.inbound.id.to_string()), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // Without a control ID (FHIR writes) an accepted message needs no record.
    let mut no_control_id = accepted("H1", "N5");
    no_control_id.idempotency = None;
    no_control_id.inbound.control_id = None;
    store
        .commit_ingest(std::slice::from_ref(&no_control_id))
        .await
        .unwrap();
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 1,
            idempotency: 0,
            events: 0
        }
    );
}

/// The lookup by control ID joins two paths (accepted through idempotency records, rejected
/// through their own index): both kinds come back, from every sender of the tenant, in the order
/// received, and nothing of another tenant or control ID.
async fn lookup_by_control_id_finds_accepted_and_rejected(store: DynStore) {
    let first = rejected("H1", "C1");
    let mut from_another_sender = accepted("H1", "C1");
    from_another_sender.inbound.sending_application = Some("RIS".into());
    if let Some(record) = &mut from_another_sender.idempotency {
        record.key.sending_application = "RIS".into();
    }
    let fixed = accepted("H1", "C1");
    let later_rejection = rejected("H1", "C1");
    let noise = [
        accepted("H2", "C1"),
        rejected("H2", "C1"),
        accepted("H1", "C10"),
        rejected("H1", "C"),
    ];
    for w in [&first, &from_another_sender, &fixed, &later_rejection]
        .into_iter()
        .chain(&noise)
    {
        store.commit_ingest(std::slice::from_ref(w)).await.unwrap();
    }
    let rows = store.inbound_by_control_id("H1", "C1").await.unwrap();
    assert_eq!(
        rows,
        vec![
            first.inbound,
            from_another_sender.inbound,
            fixed.inbound,
            later_rejection.inbound
        ]
    );
    assert!(
        store
            .inbound_by_control_id("H3", "C1")
            .await
            .unwrap()
            .is_empty()
    );
}

/// 3,000 writes: more inbound rows than one SQLite statement may bind (32,766 / 15 columns), so
/// the SQLite backend must split the inserts; everything still lands, with duplicates detected.
async fn batch_beyond_bind_parameter_limits(store: DynStore) {
    let mut batch: Vec<IngestWrite> = (0..3000)
        .map(|i| {
            with_events(
                accepted("H1", &format!("BIG-{i}")),
                vec![event("big", ExpectedVersion::Any, i)],
            )
        })
        .collect();
    batch.push(accepted("H1", "BIG-7"));
    let outcomes = store.commit_ingest(&batch).await.unwrap();
    assert!(outcomes[..3000].iter().all(|o| *o == IngestOutcome::Stored));
    assert!(matches!(outcomes[3000], IngestOutcome::Duplicate { .. }));
    assert_eq!(
        counts(&store).await,
        StoreCounts {
            inbound: 3000,
            idempotency: 3000,
            events: 3000
        }
    );
    let stream = store.read_stream("H1", "big").await.unwrap();
    assert_eq!(stream.last().map(|e| e.stream_version), Some(3000));
}

/// Only the events' unique constraint means a version conflict; a reused inbound id (a caller bug)
/// stays a database error, and the batch is rolled back.
async fn reused_inbound_id_is_not_a_version_conflict(store: DynStore) {
    let first = with_events(
        rejected("H1", "ID"),
        vec![event("s", ExpectedVersion::Any, 1)],
    );
    store
        .commit_ingest(std::slice::from_ref(&first))
        .await
        .unwrap();
    let before = counts(&store).await;
    let again = with_events(first.clone(), vec![event("s", ExpectedVersion::Any, 2)]);
    let r = store.commit_ingest(&[again]).await;
    assert!(matches!(r, Err(StoreError::Database(_))), "{r:?}");
    assert_eq!(counts(&store).await, before);
}
