//! The dispatcher: per destination, take lanes with pending messages and deliver each lane's
//! messages strictly in order, up to `parallel_lanes` lanes at a time, each worker on its own
//! connection.
//!
//! * **Leases.** A lane is taken in the store with an expiring lease (PostgreSQL: `FOR UPDATE SKIP
//!   LOCKED`), so across instances each lane, and so each message, is in flight in one place. A
//!   heartbeat renews this instance's leases; a crashed instance's lanes are free once they lapse.
//! * **Recording.** An attempt's outcome is recorded before the lane's next message is sent, so a
//!   crash resends at most the message that was in flight. Attempts of all lanes that finish
//!   together share one transaction (the same group-commit idea as ingest).
//! * **Retries.** Exponential backoff with jitter and a cap, per lane (the lane waits, others go
//!   on); after `max_attempts` or `max_age_secs`, or at once for a permanent failure, the message
//!   is dead-lettered, which blocks its lane until it is retried or discarded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::http::{HttpSender, HttpSetupError};
use super::mllp::{Connection, MllpSender, TlsError};
use super::render::Render;
use super::router::Router;
use super::settings::{DeliverySettings, DestinationSettings, RetrySettings};
use super::{Failure, FailureKind};
use crate::store::DynStore;
use crate::store::outbox::{Attempt, AttemptResult, OutboxItem};

/// Why delivery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("destination {name:?}: {source}")]
    Tls { name: String, source: TlsError },
    #[error("destination {name:?}: {source}")]
    Http {
        name: String,
        source: HttpSetupError,
    },
}

/// The running dispatcher of one Ferry instance.
pub struct Delivery {
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// This instance's lease owner id.
    pub owner: String,
}

/// How a destination sends.
enum Sender {
    Mllp(MllpSender),
    Http(HttpSender),
}

/// Everything a destination's lanes share.
struct Destination {
    name: String,
    sender: Sender,
    retry: RetrySettings,
    parallel_lanes: usize,
    wake: Arc<Notify>,
    metrics: DestinationMetrics,
}

/// The per-message metrics of a destination, registered once (not looked up per message).
struct DestinationMetrics {
    delivered: metrics::Counter,
    retried: metrics::Counter,
    dead: metrics::Counter,
    send: metrics::Histogram,
    latency: metrics::Histogram,
}

impl DestinationMetrics {
    fn new(destination: &str) -> Self {
        let attempts = |outcome: &'static str| metrics::counter!("ferry_delivery_attempts_total", "destination" => destination.to_owned(), "outcome" => outcome);
        DestinationMetrics {
            delivered: attempts("delivered"),
            retried: attempts("retry"),
            dead: attempts("dead"),
            send: metrics::histogram!("ferry_delivery_send_seconds", "destination" => destination.to_owned()),
            latency: metrics::histogram!("ferry_delivery_latency_seconds", "destination" => destination.to_owned()),
        }
    }
}

struct Shared {
    store: DynStore,
    renderer: Arc<dyn Render>,
    owner: String,
    settings: DeliverySettings,
    recorder: mpsc::Sender<(Attempt, oneshot::Sender<bool>)>,
    shutdown: CancellationToken,
}

impl Delivery {
    /// Builds every destination (TLS files and HTTP clients are checked here, so a mistake stops
    /// the start) and starts dispatching.
    pub fn start(
        store: DynStore,
        destinations: &[DestinationSettings],
        settings: &DeliverySettings,
        router: &Router,
        renderer: Arc<dyn Render>,
    ) -> Result<Delivery, DeliveryError> {
        let mut built = Vec::new();
        for d in destinations {
            let sender = match d {
                DestinationSettings::Mllp(m) => {
                    Sender::Mllp(MllpSender::new(m).map_err(|source| DeliveryError::Tls {
                        name: m.name.clone(),
                        source,
                    })?)
                }
                DestinationSettings::Http(h) => {
                    Sender::Http(HttpSender::new(h).map_err(|source| DeliveryError::Http {
                        name: h.name.clone(),
                        source,
                    })?)
                }
            };
            built.push(Arc::new(Destination {
                name: d.name().to_owned(),
                sender,
                retry: d.retry().clone(),
                parallel_lanes: d.parallel_lanes(),
                wake: router.wake(d.name()),
                metrics: DestinationMetrics::new(d.name()),
            }));
        }
        let owner = format!(
            "{}/{}/{}",
            hostname(),
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let shutdown = CancellationToken::new();
        let (recorder, records) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            store: store.clone(),
            renderer,
            owner: owner.clone(),
            settings: settings.clone(),
            recorder,
            shutdown: shutdown.clone(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(record_attempts(store.clone(), records));
        tasks.spawn(heartbeat(shared.clone()));
        let names = destinations.iter().map(|d| d.name().to_owned()).collect();
        tasks.spawn(publish_depth(store, names, shutdown.clone()));
        for d in built {
            tasks.spawn(dispatch(shared.clone(), d));
        }
        tracing::info!(owner = %owner, destinations = destinations.len(), "Delivery started.");
        Ok(Delivery {
            tasks,
            shutdown,
            owner,
        })
    }

    /// Stops taking lanes, lets each lane finish the message in flight (recording it), gives the
    /// lanes back and returns.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("Delivery did not stop within the grace period; its leases will lapse.");
            self.tasks.abort_all();
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_owned())
}

/// Lanes this instance has taken and no worker has started yet.
struct LaneQueue {
    lanes: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// A lane was queued (workers wait on it).
    ready: Notify,
    /// A worker took a lane (the claimer tops the queue up).
    taken: Notify,
}

impl LaneQueue {
    fn pop(&self) -> Option<String> {
        let lane = self.lanes.lock().ok()?.pop_front();
        if lane.is_some() {
            self.taken.notify_one();
        }
        lane
    }

    fn len(&self) -> usize {
        self.lanes.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn push(&self, lanes: Vec<String>) {
        if let Ok(mut queue) = self.lanes.lock() {
            for lane in lanes {
                queue.push_back(lane);
                self.ready.notify_one();
            }
        }
    }

    fn drain(&self) -> Vec<String> {
        self.lanes
            .lock()
            .map(|mut l| l.drain(..).collect())
            .unwrap_or_default()
    }
}

/// One destination: `parallel_lanes` workers, each delivering one lane at a time on its own
/// connection, fed by a claimer that keeps up to `parallel_lanes` more lanes taken and waiting, so
/// a worker that finishes a lane starts the next without a round trip to the store. The claimer
/// looks for work when woken by this instance's commits, when a worker takes a lane, and every
/// poll interval (for work queued by other instances, or out of backoff).
async fn dispatch(shared: Arc<Shared>, dest: Arc<Destination>) {
    let queue = Arc::new(LaneQueue {
        lanes: std::sync::Mutex::new(std::collections::VecDeque::new()),
        ready: Notify::new(),
        taken: Notify::new(),
    });
    let mut workers = JoinSet::new();
    for _ in 0..dest.parallel_lanes {
        workers.spawn(lane_worker(shared.clone(), dest.clone(), queue.clone()));
    }
    let poll = Duration::from_millis(shared.settings.poll_interval_millis);
    let lease = Duration::from_secs(shared.settings.lease_secs);
    loop {
        let want = dest.parallel_lanes.saturating_sub(queue.len());
        if want > 0 {
            let now = OffsetDateTime::now_utc();
            match shared
                .store
                .outbox()
                .claim_lanes(&dest.name, &shared.owner, want as i64, now, now + lease)
                .await
            {
                Ok(claimed) => queue.push(claimed),
                Err(error) => {
                    tracing::warn!(destination = %dest.name, %error, "Cannot take lanes from the outbox.");
                }
            }
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = dest.wake.notified() => {}
            () = queue.taken.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    while workers.join_next().await.is_some() {}
    for lane in queue.drain() {
        release(&shared, &dest, &lane, OffsetDateTime::now_utc(), None).await;
    }
}

/// Delivers the lanes it takes from the queue, one after the other, keeping its connection.
async fn lane_worker(shared: Arc<Shared>, dest: Arc<Destination>, queue: Arc<LaneQueue>) {
    let mut conn: Option<Connection> = None;
    loop {
        let Some(lane) = queue.pop() else {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = queue.ready.notified() => continue,
            }
        };
        run_lane(&shared, &dest, &queue, &lane, &mut conn).await;
        if shared.shutdown.is_cancelled() {
            return;
        }
    }
}

/// One lane: its messages in order until it is empty, fails, has had its turn, or shutdown.
async fn run_lane(
    shared: &Shared,
    dest: &Destination,
    queue: &LaneQueue,
    lane: &str,
    conn: &mut Option<Connection>,
) {
    let batch = shared.settings.lane_batch;
    let mut sent = 0usize;
    // Some((time, drained)): give the lane back, due from then (drained up to that count, if
    // it ran dry); None: the lane is not ours any more (a recorded attempt released it, or
    // another instance took it over).
    let give_back = 'lane: loop {
        if shared.shutdown.is_cancelled() {
            break Some((OffsetDateTime::now_utc(), None));
        }
        if sent >= batch {
            if queue.len() == 0 {
                // Nobody is waiting for a turn: go on with this lane.
                sent = 0;
            } else {
                break Some((OffsetDateTime::now_utc(), None));
            }
        }
        let next = match shared
            .store
            .outbox()
            .lane_items(&dest.name, lane, batch as i64)
            .await
        {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(destination = %dest.name, %error, "Cannot read the outbox.");
                break Some((OffsetDateTime::now_utc() + Duration::from_secs(1), None));
            }
        };
        if next.items.is_empty() {
            break Some((OffsetDateTime::now_utc(), Some(next.enqueued)));
        }
        // Fewer than asked for: these are all the lane had, so the last one's record gives the
        // lane back in the same transaction.
        let drains = next.items.len() < batch;
        let last = next.items.len() - 1;
        for (i, item) in next.items.iter().enumerate() {
            let mut attempt = attempt(shared, dest, conn, item).await;
            let delivered = matches!(attempt.result, AttemptResult::Delivered);
            if delivered && drains && i == last {
                attempt.release = Some(next.enqueued);
            }
            let released = attempt.release.is_some();
            let (reply, held) = oneshot::channel();
            if shared.recorder.send((attempt, reply)).await.is_err() {
                break 'lane None;
            }
            let held = held.await.unwrap_or(false);
            if !delivered || released {
                // Recorded as retry or dead, or as the lane's last: the record released it.
                break 'lane None;
            }
            if !held {
                tracing::warn!(destination = %dest.name, "Lost the lease on a lane (another instance took it over); leaving it.");
                break 'lane None;
            }
            sent += 1;
            if shared.shutdown.is_cancelled() {
                break 'lane Some((OffsetDateTime::now_utc(), None));
            }
        }
    };
    if let Some((ready_at, drained)) = give_back {
        release(shared, dest, lane, ready_at, drained).await;
        if drained.is_none() {
            // Given back with work left (its turn is over): the claimer takes it up again.
            dest.wake.notify_one();
        }
    }
}

async fn release(
    shared: &Shared,
    dest: &Destination,
    lane: &str,
    ready_at: OffsetDateTime,
    drained: Option<i64>,
) {
    if let Err(error) = shared
        .store
        .outbox()
        .release_lane(&dest.name, lane, &shared.owner, ready_at, drained)
        .await
    {
        tracing::warn!(destination = %dest.name, %error, "Cannot give a lane back; its lease will lapse.");
    }
}

/// Renders and sends one message, and decides what its outcome means.
async fn attempt(
    shared: &Shared,
    dest: &Destination,
    conn: &mut Option<Connection>,
    item: &OutboxItem,
) -> Attempt {
    let started = Instant::now();
    let delivery_id = item.id.to_string();
    let sent: Result<Vec<u8>, (Failure, Option<Vec<u8>>)> = match shared.renderer.render(item) {
        Err(e) => Err((
            Failure::permanent(FailureKind::Render, format!("cannot render: {e}")),
            None,
        )),
        Ok(message) => match &dest.sender {
            Sender::Mllp(sender) => {
                let control_id = message.control_id.clone().unwrap_or(delivery_id.clone());
                let reused = conn.is_some();
                let mut result = send_on(sender, conn, &message.body, &control_id).await;
                // An idle connection the receiver has closed meanwhile (a restart, an idle
                // timeout) fails before any answer: that says nothing about the message, so it
                // goes once more on a fresh connection before counting as an attempt.
                if reused && matches!(&result, Err((f, None)) if f.kind == FailureKind::Closed) {
                    result = send_on(sender, conn, &message.body, &control_id).await;
                }
                result
            }
            Sender::Http(sender) => {
                sender
                    .send(
                        message.body,
                        &message.content_type,
                        &delivery_id,
                        &item.event.event_type,
                    )
                    .await
            }
        },
    };
    let now = OffsetDateTime::now_utc();
    let lease_until = now + Duration::from_secs(shared.settings.lease_secs);
    dest.metrics.send.record(started.elapsed().as_secs_f64());
    let destination = &dest.name;
    let base = Attempt {
        id: item.id,
        destination: destination.clone(),
        lane: item.lane.clone(),
        owner: shared.owner.clone(),
        at: now,
        result: AttemptResult::Delivered,
        error: None,
        response: None,
        lease_until,
        release: None,
    };
    match sent {
        Ok(response) => {
            dest.metrics.delivered.increment(1);
            let lag = (now - item.event.recorded_at).as_seconds_f64().max(0.0);
            dest.metrics.latency.record(lag);
            Attempt {
                response: Some(response),
                ..base
            }
        }
        Err((failure, response)) => {
            let attempts = u32::try_from(item.attempts).unwrap_or(0).saturating_add(1);
            let result = next_step(&dest.retry, &failure, attempts, item.created_at, now);
            match result {
                AttemptResult::Dead => dest.metrics.dead.increment(1),
                _ => dest.metrics.retried.increment(1),
            }
            metrics::counter!("ferry_delivery_failures_total", "destination" => destination.clone(), "reason" => failure.kind.as_str()).increment(1);
            // The receiver's own words (ERR-8, a response body) may carry patient data: debug only.
            tracing::debug!(destination = %destination, outbox_id = item.id, error = %failure.message, "Delivery attempt failed.");
            if matches!(result, AttemptResult::Dead) {
                tracing::warn!(destination = %destination, outbox_id = item.id, attempts, reason = failure.kind.as_str(), "Message dead-lettered; its lane waits until it is retried or discarded.");
            } else {
                tracing::info!(destination = %destination, outbox_id = item.id, attempts, reason = failure.kind.as_str(), "Delivery failed; will retry.");
            }
            Attempt {
                result,
                error: Some(failure.message),
                response,
                ..base
            }
        }
    }
}

/// Sends on the open connection, or a new one; keeps the connection only after a good answer.
async fn send_on(
    sender: &MllpSender,
    conn: &mut Option<Connection>,
    body: &[u8],
    control_id: &str,
) -> Result<Vec<u8>, (Failure, Option<Vec<u8>>)> {
    let mut open = match conn.take() {
        Some(c) => c,
        None => sender.connect().await.map_err(|f| (f, None))?,
    };
    let result = sender.send(&mut open, body, control_id).await;
    if result.is_ok() {
        *conn = Some(open);
    }
    result
}

/// After a failed attempt (the `attempts`-th): dead letter, or retry when.
pub fn next_step(
    retry: &RetrySettings,
    failure: &Failure,
    attempts: u32,
    queued_at: OffsetDateTime,
    now: OffsetDateTime,
) -> AttemptResult {
    let too_many = retry.max_attempts > 0 && attempts >= retry.max_attempts;
    let too_old = retry.max_age_secs > 0
        && (now - queued_at).whole_seconds()
            >= i64::try_from(retry.max_age_secs).unwrap_or(i64::MAX);
    if !failure.is_transient() || too_many || too_old {
        return AttemptResult::Dead;
    }
    let wait = backoff(retry, attempts).max(failure.retry_after.unwrap_or_default());
    AttemptResult::Retry {
        retry_at: now + wait,
    }
}

/// "Equal jitter": half the exponential step fixed, half random, so lanes that failed together
/// (a receiver restart) do not all come back at the same moment.
pub fn backoff(retry: &RetrySettings, attempts: u32) -> Duration {
    let cap = Duration::from_secs(retry.max_backoff_secs);
    let exp = attempts.saturating_sub(1).min(30);
    let step = Duration::from_millis(retry.initial_backoff_millis)
        .saturating_mul(1u32 << exp)
        .min(cap);
    let half = step / 2;
    let jitter_ms = fastrand::u64(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
    half + Duration::from_millis(jitter_ms)
}

/// Records attempts as they come, batching those that arrive together into one transaction (one
/// batch at a time: measured, parallel batches on PostgreSQL were no faster, only smaller).
async fn record_attempts(
    store: DynStore,
    mut rx: mpsc::Receiver<(Attempt, oneshot::Sender<bool>)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (attempts, replies): (Vec<Attempt>, Vec<_>) = batch.into_iter().unzip();
        let mut tries = 0;
        let held = loop {
            match store.outbox().record_attempts(&attempts).await {
                Ok(held) => break held,
                Err(error) if tries < 3 && error.is_transient() => {
                    tries += 1;
                    tracing::warn!(%error, "Recording delivery attempts failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(error) => {
                    // The lanes stop; their leases lapse and the messages are sent again.
                    tracing::error!(%error, "Cannot record delivery attempts.");
                    break vec![false; attempts.len()];
                }
            }
        };
        for (reply, held) in replies.into_iter().zip(held) {
            let _ = reply.send(held);
        }
    }
}

/// Renews this instance's leases while it lives, so a lane is lost only by a dead instance.
async fn heartbeat(shared: Arc<Shared>) {
    let lease = Duration::from_secs(shared.settings.lease_secs);
    let every = (lease / 3).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let until = OffsetDateTime::now_utc() + lease;
        if let Err(error) = shared
            .store
            .outbox()
            .renew_leases(&shared.owner, until)
            .await
        {
            tracing::warn!(%error, "Cannot renew lane leases.");
        }
    }
}

/// Queue depth, dead letters and the oldest pending age per destination, as gauges.
async fn publish_depth(store: DynStore, destinations: Vec<String>, shutdown: CancellationToken) {
    // Every destination ever shown stays shown: the status lists only those with rows, so one
    // whose queue emptied (or that never had any) reads as zeros.
    let mut known: std::collections::BTreeSet<String> = destinations.into_iter().collect();
    loop {
        if let Ok(status) = store.outbox().outbox_status().await {
            let now = OffsetDateTime::now_utc();
            let mut values: std::collections::BTreeMap<String, (f64, f64, f64)> =
                known.iter().map(|d| (d.clone(), (0.0, 0.0, 0.0))).collect();
            for s in status {
                let age = s
                    .oldest_pending_at
                    .map(|t| (now - t).as_seconds_f64().max(0.0))
                    .unwrap_or(0.0);
                known.insert(s.destination.clone());
                values.insert(s.destination, (s.pending as f64, s.dead as f64, age));
            }
            for (d, (pending, dead, age)) in values {
                metrics::gauge!("ferry_outbox_depth", "destination" => d.clone()).set(pending);
                metrics::gauge!("ferry_outbox_dead_letters", "destination" => d.clone()).set(dead);
                metrics::gauge!("ferry_outbox_oldest_age_seconds", "destination" => d).set(age);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let r = RetrySettings {
            initial_backoff_millis: 1000,
            max_backoff_secs: 10,
            max_attempts: 5,
            max_age_secs: 60,
        };
        for _ in 0..50 {
            let first = backoff(&r, 1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(1000));
            let third = backoff(&r, 3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(&r, 40);
            assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
        }
    }

    #[test]
    fn dead_letter_by_kind_count_or_age() {
        let r = RetrySettings {
            initial_backoff_millis: 100,
            max_backoff_secs: 1,
            max_attempts: 3,
            max_age_secs: 60,
        };
        let now = OffsetDateTime::now_utc();
        let t = Failure::transient(FailureKind::Timeout, "slow");
        let p = Failure::permanent(FailureKind::Rejected, "AR");
        assert!(matches!(
            next_step(&r, &t, 1, now, now),
            AttemptResult::Retry { .. }
        ));
        assert_eq!(next_step(&r, &t, 3, now, now), AttemptResult::Dead);
        assert_eq!(next_step(&r, &p, 1, now, now), AttemptResult::Dead);
        let old = now - Duration::from_secs(61);
        assert_eq!(next_step(&r, &t, 1, old, now), AttemptResult::Dead);
        let mut later = Failure::transient(FailureKind::HttpStatus, "429");
        later.retry_after = Some(Duration::from_secs(30));
        match next_step(&r, &later, 1, now, now) {
            AttemptResult::Retry { retry_at } => assert!(retry_at - now >= Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
    }
}
