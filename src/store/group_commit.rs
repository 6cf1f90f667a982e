//! Group commit: gathers ingest writes from many connections into shared transactions.
//!
//! Each connection hands its write to [`GroupCommitter::commit`] and waits. Worker tasks take what is
//! queued (up to `max_batch` writes), commit it as one transaction through
//! [`EventStore::commit_ingest`], and only then answer each waiter. So every ACK still follows its
//! own durable commit, while one fsync serves many messages: throughput grows with the number of
//! connections.
//!
//! **Waiting for the writers just answered** (`max_wait` > 0). A sender waits for its ACK before it
//! sends the next message, so with one committer the connections fall into two groups that take
//! turns: one commits while the other gathers, each commit holding half of them. Where a commit
//! costs much more than a sender's turn-around (PostgreSQL: a round trip and a WAL flush, about
//! 0.4 ms, against about 0.2 ms from ACK to the next message), one commit for everyone beats two
//! for half each. So a batch waits, at most `max_wait` after its first write, until it holds as
//! many writes as there were writers around the last commit: those it answered and those that
//! queued meanwhile. It never waits for more than that, so a lone sender is not delayed, and a
//! sender that goes quiet costs one wait, after which the count has shrunk to the writers left.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;

use super::{DynStore, ExpectedVersion, IngestOutcome, IngestWrite, NewEvent, StoreError};

/// Decides the outbox rows of each event before it is committed (its subscriptions), and hears
/// when a commit queued some. Delivery implements it (`delivery::Router`); the store only carries
/// the rows, so it knows nothing of subscriptions.
pub trait Route: Send + Sync {
    /// Fills `event.deliveries` for an event of `tenant`.
    fn route(&self, tenant: &str, event: &mut NewEvent);
    /// A commit that queued deliveries returned: the dispatcher may start at once.
    fn queued(&self);
}

/// Tuning of the committer.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// How long a batch may wait, after its first write, for the writers around the last commit
    /// (module docs). Zero: commit whatever is queued at once.
    pub max_wait: Duration,
    /// Upper bound of writes per transaction.
    pub max_batch: usize,
    /// Batches gathered and committed concurrently.
    pub workers: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(1),
            max_batch: 256,
            workers: 1,
        }
    }
}

/// Why a write was not committed. Nothing of it is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The store failed; the message was not stored and may be resent.
    #[error("{0}")]
    Store(Arc<StoreError>),
    /// The committer has stopped (shutdown).
    #[error("the committer has stopped")]
    Stopped,
}

struct Request {
    write: IngestWrite,
    reply: oneshot::Sender<Result<IngestOutcome, CommitError>>,
}

/// Handle to the running committer; clone it freely. The workers stop once every handle is dropped
/// and the queue is drained.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Request>,
    /// Subscriptions, when delivery is configured.
    router: Option<Arc<dyn Route>>,
}

impl GroupCommitter {
    /// Starts the workers. Await the returned set to know they have finished after the last handle
    /// was dropped.
    pub fn start(store: DynStore, config: GroupCommitConfig) -> (Self, JoinSet<()>) {
        let capacity = config.max_batch.max(1) * config.workers.max(1) * 4;
        let (tx, rx) = mpsc::channel(capacity);
        // Workers share the receiver; the one holding the lock gathers the next batch while the
        // others commit theirs.
        let rx = Arc::new(Mutex::new(rx));
        let mut set = JoinSet::new();
        for _ in 0..config.workers.max(1) {
            // Weak: the workers only read the queue's length through it, and must not keep the
            // channel open after the last handle is dropped.
            set.spawn(worker(store.clone(), rx.clone(), tx.downgrade(), config));
        }
        (Self { tx, router: None }, set)
    }

    /// Every write committed through this handle (and its clones) gets its outbox rows from
    /// `router`.
    pub fn with_router(mut self, router: Arc<dyn Route>) -> Self {
        self.router = Some(router);
        self
    }

    /// Commits one write together with whatever else is queued, and returns its outcome once the
    /// transaction is durable.
    pub async fn commit(&self, mut write: IngestWrite) -> Result<IngestOutcome, CommitError> {
        let mut queues = false;
        if let Some(router) = &self.router {
            for event in &mut write.events {
                router.route(&write.inbound.hospital_id, event);
                queues |= !event.deliveries.is_empty();
            }
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { write, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let outcome = answer.await.map_err(|_| CommitError::Stopped)??;
        if queues
            && matches!(outcome, IngestOutcome::Stored)
            && let Some(router) = &self.router
        {
            router.queued();
        }
        Ok(outcome)
    }
}

/// Takes the next batch: the first write to arrive, whatever is queued behind it, and, when
/// `expected` is more than that, the writes that arrive within `max_wait` until it holds `expected`.
async fn gather(
    rx: &Mutex<mpsc::Receiver<Request>>,
    config: GroupCommitConfig,
    expected: usize,
) -> Option<Vec<Request>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(config.max_batch.min(64));
    batch.push(first);
    while batch.len() < config.max_batch {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    let target = expected.min(config.max_batch);
    if batch.len() < target && !config.max_wait.is_zero() {
        let deadline = tokio::time::Instant::now() + config.max_wait;
        while batch.len() < target {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => break,
                Err(_) => {
                    metrics::counter!("ferry_commit_wait_expired_total").increment(1);
                    break;
                }
            }
        }
    }
    Some(batch)
}

async fn worker(
    store: DynStore,
    rx: Arc<Mutex<mpsc::Receiver<Request>>>,
    queue: mpsc::WeakSender<Request>,
    config: GroupCommitConfig,
) {
    // The writers around the last commit: the next batch waits for as many (module docs).
    let mut expected = 0;
    while let Some(batch) = gather(&rx, config, expected).await {
        let (writes, replies): (Vec<IngestWrite>, Vec<_>) =
            batch.into_iter().map(|r| (r.write, r.reply)).unzip();
        let len = writes.len();
        let started = std::time::Instant::now();
        let results = commit_with_retry(&store, &writes).await;
        metrics::histogram!("ferry_commit_batch_size").record(len as f64);
        metrics::histogram!("ferry_commit_seconds").record(started.elapsed().as_secs_f64());
        if !config.max_wait.is_zero() {
            let queued = queue
                .upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity());
            expected = len + queued;
        }
        for (reply, result) in replies.into_iter().zip(results) {
            // A waiter that went away (connection closed) simply never sends its ACK.
            let _ = reply.send(result);
        }
    }
}

/// How often a batch appending at `Any` is tried when other instances keep appending to its
/// streams first. Such a conflict is only ever a race (the batch expects nothing), so it is worth
/// many tries: with two instances hammering one stream on a CPU-starved machine, 12 were seen to
/// run out (about 40 ms of pauses in all); 40 give the loser about half a second.
const ANY_RACE_ATTEMPTS: u32 = 40;

fn appends_at_any(writes: &[IngestWrite]) -> bool {
    writes
        .iter()
        .flat_map(|w| &w.events)
        .all(|e| e.expected_version == ExpectedVersion::Any)
}

/// Up to `attempt` × 500 µs (at most 10 ms), random (from the clock's nanoseconds: no need for a
/// random generator to spread retries).
fn jitter(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_micros(u64::from(nanos % 500) * u64::from(attempt.min(20)))
}

/// Commits a batch; on a race with another instance retries it; on a version conflict (which fails
/// the whole transaction) commits each write alone so that one message's conflict does not fail the
/// others.
async fn commit_with_retry(
    store: &DynStore,
    writes: &[IngestWrite],
) -> Vec<Result<IngestOutcome, CommitError>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = std::time::Instant::now();
        match store.commit_ingest(writes).await {
            Ok(outcomes) if outcomes.len() == writes.len() => {
                tracing::trace!(
                    batch = writes.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "Batch committed."
                );
                return outcomes.into_iter().map(Ok).collect();
            }
            Ok(outcomes) => {
                let error = Arc::new(StoreError::Corrupt(format!(
                    "store returned {} outcomes for {} writes",
                    outcomes.len(),
                    writes.len()
                )));
                tracing::error!(%error, "Batch commit returned a wrong number of outcomes.");
                return writes
                    .iter()
                    .map(|_| Err(CommitError::Store(error.clone())))
                    .collect();
            }
            // Writes that append at `Any` cannot conflict with what they expect; a conflict means
            // another instance appended to the same stream between our version read and insert.
            // The retry reads the new version; a short random pause keeps two instances that
            // collided from colliding again in lock-step.
            Err(StoreError::VersionConflict { .. })
                if attempt < ANY_RACE_ATTEMPTS && appends_at_any(writes) =>
            {
                tracing::debug!(
                    attempt,
                    "Version race with another writer on an append at any version; retrying batch."
                );
                tokio::time::sleep(jitter(attempt)).await;
                continue;
            }
            // Another instance updated the same read-model rows: the retry reads them anew.
            Err(StoreError::Contention) if attempt < ANY_RACE_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "Read-model race with another writer; retrying batch."
                );
                tokio::time::sleep(jitter(attempt)).await;
                continue;
            }
            Err(StoreError::IdempotencyRace) if attempt < 4 => {
                tracing::debug!(
                    attempt,
                    "Idempotency race with another writer; retrying batch."
                );
                continue;
            }
            // One write's conflict, or a row the database refuses, fails the whole transaction:
            // commit each write alone so that one poison message does not fail its neighbours.
            Err(
                StoreError::VersionConflict { .. }
                | StoreError::PreconditionFailed { .. }
                | StoreError::Database(_)
                | StoreError::Corrupt(_)
                | StoreError::Projection(_),
            ) if writes.len() > 1 => {
                tracing::debug!(
                    batch = writes.len(),
                    "Batch failed; committing its writes one by one."
                );
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.extend(Box::pin(commit_with_retry(store, std::slice::from_ref(w))).await);
                }
                return out;
            }
            Err(error) => {
                tracing::error!(%error, batch = writes.len(), "Batch commit failed; nothing of it was stored.");
                let error = Arc::new(error);
                return writes
                    .iter()
                    .map(|_| Err(CommitError::Store(error.clone())))
                    .collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::projections::ResourceType;
    use crate::store::{
        Backend, EventStore, HistoryQuery, IdempotencyKey, IdempotencyRecord, InboundRecord,
        InboundStatus, RecordedEvent, SearchPage, SearchQuery, StoreCounts, StoredResource,
    };

    /// Fails every batch that contains a write of tenant "poison"; records batch sizes; each commit
    /// takes `delay`.
    #[derive(Default)]
    struct PickyStore {
        batches: StdMutex<Vec<usize>>,
        delay: Duration,
    }

    impl EventStore for PickyStore {
        fn backend(&self) -> Backend {
            Backend::Sqlite
        }
        fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            async { Ok(()) }.boxed()
        }
        fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            async { Ok(()) }.boxed()
        }
        fn commit_ingest<'a>(
            &'a self,
            batch: &'a [IngestWrite],
        ) -> BoxFuture<'a, Result<Vec<IngestOutcome>, StoreError>> {
            async move {
                self.batches.lock().unwrap().push(batch.len());
                tokio::time::sleep(self.delay).await;
                if batch.iter().any(|w| w.inbound.hospital_id == "poison") {
                    return Err(StoreError::Corrupt("poison".into()));
                }
                Ok(batch.iter().map(|_| IngestOutcome::Stored).collect())
            }
            .boxed()
        }
        fn inbound(&self, _: Uuid) -> BoxFuture<'_, Result<Option<InboundRecord>, StoreError>> {
            async { Ok(None) }.boxed()
        }
        fn inbound_by_control_id<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<InboundRecord>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn idempotency<'a>(
            &'a self,
            _: &'a IdempotencyKey,
        ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
            async { Ok(None) }.boxed()
        }
        fn read_stream<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, StoreError>> {
            async { Ok(StoreCounts::default()) }.boxed()
        }
        fn fhir_read<'a>(
            &'a self,
            _: &'a str,
            _: ResourceType,
            _: &'a str,
            _: Option<i64>,
        ) -> BoxFuture<'a, Result<Option<StoredResource>, StoreError>> {
            async { Ok(None) }.boxed()
        }
        fn fhir_search<'a>(
            &'a self,
            _: &'a str,
            _: &'a SearchQuery,
        ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
            async {
                Ok(SearchPage {
                    total: 0,
                    resources: Vec::new(),
                })
            }
            .boxed()
        }
        fn fhir_history<'a>(
            &'a self,
            _: &'a str,
            _: &'a HistoryQuery,
        ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
            self.fhir_search("", &NO_QUERY)
        }
        fn events_after(
            &self,
            _: i64,
            _: i64,
        ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn rebuild_projections<'a>(
            &'a self,
            _: &'a (dyn Fn(u64) + Send + Sync),
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            async { Ok(0) }.boxed()
        }
        fn outbox(&self) -> &dyn crate::store::OutboxStore {
            unreachable!("the committer tests never touch the outbox")
        }
    }

    static NO_QUERY: SearchQuery = SearchQuery {
        resource_type: ResourceType::Patient,
        filters: Vec::new(),
        count: 0,
        offset: 0,
    };

    fn write(tenant: &str) -> IngestWrite {
        IngestWrite {
            inbound: InboundRecord {
                id: Uuid::now_v7(),
                hospital_id: tenant.into(),
                listener: "l".into(),
                peer: "p".into(),
                received_at: OffsetDateTime::now_utc(),
                raw: b"MSH|".to_vec(),
                decoded: None,
                charset: None,
                sending_application: None,
                sending_facility: None,
                control_id: None,
                message_type: None,
                status: InboundStatus::Rejected,
                ack_code: None,
                error: None,
            },
            idempotency: None,
            events: Vec::new(),

            preconditions: Vec::new(),
        }
    }

    /// Regression: one write the database refuses used to fail every message of its batch (they
    /// all got a "store unavailable" NAK).
    #[tokio::test]
    async fn a_poison_write_fails_alone() {
        let store = Arc::new(PickyStore::default());
        let (committer, mut workers) = GroupCommitter::start(
            store.clone(),
            GroupCommitConfig {
                max_wait: Duration::from_millis(50),
                max_batch: 16,
                workers: 1,
            },
        );
        let tenants = ["a", "b", "poison", "c", "d"];
        let results =
            futures::future::join_all(tenants.iter().map(|t| committer.commit(write(t)))).await;
        for (tenant, result) in tenants.iter().zip(&results) {
            match (*tenant, result) {
                ("poison", Err(CommitError::Store(_))) => {}
                ("poison", other) => panic!("poison write: {other:?}"),
                (_, Ok(IngestOutcome::Stored)) => {}
                (t, other) => panic!("{t}: {other:?}"),
            }
        }
        // One shared batch first, then each write alone.
        assert_eq!(store.batches.lock().unwrap().first(), Some(&5));
        drop(committer);
        while workers.join_next().await.is_some() {}
    }

    /// `writers` senders, each committing `rounds[i]` writes one after the other and pausing `i` ms
    /// between them (a turn-around), against commits of 10 ms. Returns the batch sizes and the
    /// (paused-clock) time it took.
    async fn take_turns(max_wait: Duration, rounds: &[usize]) -> (Vec<usize>, Duration) {
        let store = Arc::new(PickyStore {
            delay: Duration::from_millis(10),
            ..PickyStore::default()
        });
        let (committer, mut workers) = GroupCommitter::start(
            store.clone(),
            GroupCommitConfig {
                max_wait,
                max_batch: 16,
                workers: 1,
            },
        );
        let started = tokio::time::Instant::now();
        let senders = rounds.iter().enumerate().map(|(i, &n)| {
            let committer = committer.clone();
            async move {
                for _ in 0..n {
                    assert!(matches!(
                        committer.commit(write("t")).await,
                        Ok(IngestOutcome::Stored)
                    ));
                    tokio::time::sleep(Duration::from_millis(i as u64)).await;
                }
            }
        });
        futures::future::join_all(senders).await;
        let took = started.elapsed();
        drop(committer);
        while workers.join_next().await.is_some() {}
        let batches = store.batches.lock().unwrap().clone();
        (batches, took)
    }

    /// Four senders whose next writes come back 0–3 ms after their ACKs: without a wait they fall
    /// into groups that take turns; with one, every batch after the first two holds all four, and
    /// the wait ends when the last of them arrives, not when it runs out (20 ms).
    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_the_writers_it_answered() {
        let (batches, _) = take_turns(Duration::ZERO, &[10; 4]).await;
        assert!(batches.iter().any(|&b| b < 4), "{batches:?}");

        let (batches, took) = take_turns(Duration::from_millis(20), &[10; 4]).await;
        assert_eq!(batches.iter().sum::<usize>(), 40);
        assert!(batches[2..].iter().all(|&b| b == 4), "{batches:?}");
        // 10 rounds of a 10 ms commit and at most a 3 ms turn-around (plus the timer's
        // millisecond); a wait that ran out each time would take 30 ms a round.
        assert!(
            took < Duration::from_millis(160),
            "{took:?} for {batches:?}"
        );
    }

    /// A sender that stops costs one wait: the batches after it wait only for those left.
    #[tokio::test(start_paused = true)]
    async fn a_writer_that_goes_quiet_costs_one_wait() {
        let (batches, took) = take_turns(Duration::from_millis(20), &[10, 10, 10, 2]).await;
        assert_eq!(batches.iter().sum::<usize>(), 32);
        assert!(batches[2..].iter().all(|&b| b == 3), "{batches:?}");
        // One wait of 20 ms that ran out, on top of about 13 ms a round.
        assert!(
            took < Duration::from_millis(190),
            "{took:?} for {batches:?}"
        );
    }
}
