//! Receivers that outbound delivery is tested against: real servers on real loopback sockets.
//!
//! * [`MllpReceiver`]: an HIS/PACS stand-in. It reads MLLP frames on any number of connections,
//!   records each message, and answers as its policy says: an ACK with any code, an ACK naming
//!   another control ID, a frame that is not HL7, silence, a close before or in the middle of the
//!   answer, or an ACK after a delay.
//! * [`HttpReceiver`]: a webhook stand-in. It records each request and answers as its policy says:
//!   a status with an optional `Retry-After` and body, after an optional delay, or never.
//!
//! Both can be stopped (the listener and every open connection close: the receiver "goes away")
//! and restarted on the same port (it "comes back"); what they recorded is kept across restarts.
//! A policy gets the request and how many times the same request has been seen (1 the first
//! time), so "fail twice, then accept" is one line.
//!
//! The ACKs are built here, by hand, rather than by Ferry's ACK code: the receiver stands for a
//! system that is not Ferry, and a fault in Ferry's builder must not hide a fault in its reader.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::hl7::ack::AckCode;
use ferry::mllp::codec::{self, Frame, MllpCodec};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Largest frame the MLLP receiver reads (bigger ones are recorded by their first 64 KiB).
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest HTTP body the HTTP receiver reads.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long `restart` keeps trying to bind a port still held by the old listener's sockets.
const REBIND_FOR: Duration = Duration::from_secs(5);
/// How long `stop` waits for connection tasks to end; they end at once unless a test wedged one.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A `wait_for` that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("waited {waited:?} for {wanted} received, got {got}")]
pub struct WaitTimeout {
    pub wanted: usize,
    pub got: usize,
    pub waited: Duration,
}

// ---------------------------------------------------------------------------------------------
// What both receivers share: the journal of what arrived, and the running listener.
// ---------------------------------------------------------------------------------------------

/// Everything received, in arrival order, with per-key counts; survives restarts.
struct Journal<T> {
    entries: Mutex<Vec<T>>,
    seen: Mutex<HashMap<String, u32>>,
    /// The number of entries, so waiters wake when it grows.
    count: watch::Sender<usize>,
    started: Instant,
}

impl<T: Clone> Journal<T> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            count: watch::Sender::new(0),
            started: Instant::now(),
        }
    }

    /// Counts one more sighting of `key` and returns the count (1 the first time).
    fn sighting(&self, key: &str) -> u32 {
        let mut seen = lock(&self.seen);
        let n = seen.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    /// Appends an entry built from its index, and wakes the waiters.
    fn push(&self, make: impl FnOnce(usize) -> T) -> T {
        let entry = {
            let mut entries = lock(&self.entries);
            let entry = make(entries.len());
            entries.push(entry.clone());
            entry
        };
        self.count.send_modify(|n| *n += 1);
        entry
    }

    fn snapshot(&self) -> Vec<T> {
        lock(&self.entries).clone()
    }

    fn len(&self) -> usize {
        *self.count.borrow()
    }

    async fn wait_for(&self, count: usize, timeout: Duration) -> Result<Vec<T>, WaitTimeout> {
        let mut rx = self.count.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|n| *n >= count)).await {
            Ok(Ok(_)) => Ok(self.snapshot()),
            _ => Err(WaitTimeout {
                wanted: count,
                got: self.len(),
                waited: timeout,
            }),
        }
    }
}

/// A poisoned lock only means another test thread panicked; the data is still what it was.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tasks of one run of a receiver (accept loop and connections), ended together.
struct Running {
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Cancels every task and waits until they have ended, so that the listener and every
    /// connection are closed when this returns.
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(STOP_WAIT, self.tracker.wait()).await;
    }
}

/// Binds with SO_REUSEADDR, retrying while the port is still in use (the previous run's
/// connections in TIME_WAIT, or its listener not yet dropped).
async fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_FOR;
    loop {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A policy that answers in turn: the n-th call gets `answers[n]`, later calls the last one.
fn in_turn<A: Clone + Send + Sync>(answers: Vec<A>) -> impl Fn() -> Option<A> + Send + Sync {
    let calls = AtomicUsize::new(0);
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        answers.get(n).or(answers.last()).cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// MLLP
// ---------------------------------------------------------------------------------------------

/// What the MLLP receiver does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpAnswer {
    /// A well-formed ACK with this MSA-1 code and MSA-2 = the message's MSH-10.
    Ack(AckCode),
    /// A well-formed AA whose MSA-2 names another control ID (`NOT-` + MSH-10).
    WrongMsa2,
    /// A frame that is not HL7 at all.
    Garbage,
    /// No answer; the connection stays open and later messages on it are still read.
    Silent,
    /// The connection is closed after reading the message.
    CloseBeforeAnswer,
    /// The first half of the ACK's frame is written, then the connection is closed.
    CloseMidAnswer,
    /// The ACK with this code, after waiting this long (later messages on the connection wait).
    Delay(Duration, AckCode),
}

/// One message as the MLLP receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedMllp {
    /// Position in arrival order over the receiver's life (0 for the first message).
    pub index: usize,
    /// Which connection it came on, numbered in accept order over the receiver's life, restarts
    /// included (0 for the first connection).
    pub connection: usize,
    /// The frame's payload, without the framing bytes.
    pub payload: Bytes,
    /// MSH-10 as written (empty when the first segment is not a readable MSH).
    pub control_id: String,
    /// How many times this MSH-10 has arrived, this time included (1 the first time).
    pub seen: u32,
    /// Time since the receiver was created.
    pub at: Duration,
    /// What the receiver did with it.
    pub answer: MllpAnswer,
}

impl ReceivedMllp {
    /// The payload as text (lossy: for assertions).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Decides the answer to a message, given the message and how often its MSH-10 has been seen.
type MllpPolicy = Arc<dyn Fn(&ReceivedMllp, u32) -> MllpAnswer + Send + Sync>;

struct MllpShared {
    journal: Journal<ReceivedMllp>,
    policy: Mutex<MllpPolicy>,
    connections: AtomicUsize,
}

/// An MLLP receiver on a loopback port.
///
/// ```ignore
/// let his = MllpReceiver::start().await;                 // answers AA
/// his.set_policy(|_, seen| if seen < 3 { MllpAnswer::Ack(AckCode::AE) } else { MllpAnswer::Ack(AckCode::AA) });
/// // … deliver to his.addr() …
/// let got = his.wait_for(3, Duration::from_secs(5)).await.expect("three attempts");
/// assert!(got.iter().all(|m| m.control_id == "MSG-1"));
/// ```
pub struct MllpReceiver {
    addr: SocketAddr,
    shared: Arc<MllpShared>,
    running: Mutex<Option<Running>>,
}

impl MllpReceiver {
    /// A receiver on 127.0.0.1 and a free port, answering AA to everything.
    pub async fn start() -> Self {
        Self::bind(loopback())
            .await
            .expect("bind an MLLP receiver on 127.0.0.1")
    }

    /// A receiver on `addr` (port 0 for a free one), answering AA to everything.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = bind_reusable(addr).await?;
        let addr = listener.local_addr()?;
        let policy: MllpPolicy = Arc::new(|_, _| MllpAnswer::Ack(AckCode::AA));
        let receiver = Self {
            addr,
            shared: Arc::new(MllpShared {
                journal: Journal::new(),
                policy: Mutex::new(policy),
                connections: AtomicUsize::new(0),
            }),
            running: Mutex::new(None),
        };
        receiver.run(listener);
        Ok(receiver)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the policy; messages already being answered keep the old one.
    pub fn set_policy(
        &self,
        policy: impl Fn(&ReceivedMllp, u32) -> MllpAnswer + Send + Sync + 'static,
    ) {
        *lock(&self.shared.policy) = Arc::new(policy);
    }

    /// The same answer to every message.
    pub fn answer_always(&self, answer: MllpAnswer) {
        self.set_policy(move |_, _| answer.clone());
    }

    /// The n-th message from now (whatever its MSH-10) gets `answers[n]`; once they are used up,
    /// the last one repeats.
    pub fn answer_in_turn(&self, answers: Vec<MllpAnswer>) {
        let next = in_turn(answers);
        self.set_policy(move |_, _| next().unwrap_or(MllpAnswer::Ack(AckCode::AA)));
    }

    /// Every message received so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedMllp> {
        self.shared.journal.snapshot()
    }

    pub fn received_count(&self) -> usize {
        self.shared.journal.len()
    }

    /// Connections accepted so far, restarts included.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` messages have arrived in total; returns them all.
    pub async fn wait_for(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMllp>, WaitTimeout> {
        self.shared.journal.wait_for(count, timeout).await
    }

    /// Closes the listener and every open connection (the receiver goes away). Connections are
    /// closed without an answer to anything in flight.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.stop().await;
        }
    }

    /// Listens again on the same port (the receiver comes back), with the same policy and journal.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = bind_reusable(self.addr).await?;
        self.run(listener);
        Ok(())
    }

    fn run(&self, listener: TcpListener) {
        let running = Running::new();
        running.tracker.spawn(mllp_accept_loop(
            listener,
            self.shared.clone(),
            running.shutdown.clone(),
            running.tracker.clone(),
        ));
        *lock(&self.running) = Some(running);
    }
}

impl Drop for MllpReceiver {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            running.shutdown.cancel();
        }
    }
}

async fn mllp_accept_loop(
    listener: TcpListener,
    shared: Arc<MllpShared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let number = shared.connections.fetch_add(1, Ordering::SeqCst);
                tracker.spawn(mllp_connection(
                    stream,
                    number,
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn mllp_connection(
    stream: TcpStream,
    connection: usize,
    shared: Arc<MllpShared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, MllpCodec::new(MAX_FRAME_BYTES));
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            frame = framed.next() => frame,
        };
        let payload = match frame {
            Some(Ok(Frame::Message(payload))) => payload,
            Some(Ok(Frame::Oversized { head, .. })) => head,
            Some(Err(_)) | None => return,
        };
        let control_id = msh_10(&payload);
        let seen = shared.journal.sighting(&control_id);
        let policy = lock(&shared.policy).clone();
        let mut message = ReceivedMllp {
            index: 0,
            connection,
            payload,
            control_id,
            seen,
            at: shared.journal.started.elapsed(),
            answer: MllpAnswer::Silent,
        };
        message.answer = policy(&message, seen);
        let message = shared
            .journal
            .push(|index| ReceivedMllp { index, ..message });
        let reply: Vec<u8> = match &message.answer {
            MllpAnswer::Ack(code) => ack(&message.payload, *code, &message.control_id),
            MllpAnswer::WrongMsa2 => ack(
                &message.payload,
                AckCode::AA,
                &format!("NOT-{}", message.control_id),
            ),
            MllpAnswer::Garbage => b"this is not an HL7 message".to_vec(),
            MllpAnswer::Silent => continue,
            MllpAnswer::CloseBeforeAnswer => return,
            MllpAnswer::CloseMidAnswer => {
                let wire = codec::frame(&ack(&message.payload, AckCode::AA, &message.control_id));
                let stream = framed.get_mut();
                let _ = stream.write_all(&wire[..wire.len() / 2]).await;
                let _ = stream.flush().await;
                return;
            }
            MllpAnswer::Delay(delay, code) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(*delay) => {}
                }
                ack(&message.payload, *code, &message.control_id)
            }
        };
        if framed.send(reply).await.is_err() {
            return;
        }
    }
}

/// The fields of the message's MSH line (field separator from MSH-1), `fields[n]` being MSH-(n+1)
/// for n ≥ 1; empty when the first segment is not an MSH.
fn msh_fields(payload: &[u8]) -> (char, Vec<String>) {
    let text = String::from_utf8_lossy(payload);
    let line = text.split(['\r', '\n']).next().unwrap_or("");
    let Some(rest) = line.strip_prefix("MSH") else {
        return ('|', Vec::new());
    };
    let Some(fs) = rest.chars().next() else {
        return ('|', Vec::new());
    };
    let mut fields = vec![String::from("MSH")];
    fields.extend(rest[fs.len_utf8()..].split(fs).map(str::to_owned));
    (fs, fields)
}

fn msh_10(payload: &[u8]) -> String {
    let (_, fields) = msh_fields(payload);
    fields.get(9).cloned().unwrap_or_default()
}

/// An ACK as a plain receiver writes one: sender and receiver swapped, MSA-1 `code`, MSA-2
/// `msa_2`, and MSA-3 text for a negative code.
fn ack(payload: &[u8], code: AckCode, msa_2: &str) -> Vec<u8> {
    let (fs, fields) = msh_fields(payload);
    let f = |n: usize| fields.get(n - 1).map(String::as_str).unwrap_or("");
    let encoding = if f(2).is_empty() { "^~\\&" } else { f(2) };
    let component = encoding.chars().next().unwrap_or('^');
    let trigger = f(9).split(component).nth(1).unwrap_or("");
    let version = if f(12).is_empty() { "2.5" } else { f(12) };
    let mut ack = format!(
        "MSH{fs}{encoding}{fs}{}{fs}{}{fs}{}{fs}{}{fs}20261122083000{fs}{fs}ACK{component}{trigger}{fs}ACK-{}{fs}P{fs}{version}\rMSA{fs}{}{fs}{msa_2}",
        f(5),
        f(6),
        f(3),
        f(4),
        f(10),
        code.as_str(),
    );
    if !code.is_accept() {
        ack.push_str(&format!("{fs}the test receiver answered {}", code.as_str()));
    }
    ack.push('\r');
    ack.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// What the HTTP receiver answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The `Retry-After` header's value, as written (seconds or an HTTP date).
    pub retry_after: Option<String>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (the connection stays open until the client gives up or the receiver stops).
    pub silent: bool,
}

impl HttpAnswer {
    /// This status, no `Retry-After`, an empty body, at once.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: String::new(),
            delay: Duration::ZERO,
            silent: false,
        }
    }

    /// No answer at all.
    pub fn silent() -> Self {
        Self {
            silent: true,
            ..Self::status(200)
        }
    }

    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the HTTP receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedHttp {
    /// Position in arrival order over the receiver's life (0 for the first request).
    pub index: usize,
    pub method: String,
    /// Path and query, as requested.
    pub path: String,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How many times the same method, path and body have arrived, this time included.
    pub seen: u32,
    /// Time since the receiver was created.
    pub at: Duration,
    /// What the receiver answered.
    pub answer: HttpAnswer,
}

impl ReceivedHttp {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy: for assertions).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.text()))
    }
}

/// Decides the answer to a request, given the request and how often the same one has been seen.
type HttpPolicy = Arc<dyn Fn(&ReceivedHttp, u32) -> HttpAnswer + Send + Sync>;

struct HttpShared {
    journal: Journal<ReceivedHttp>,
    policy: Mutex<HttpPolicy>,
}

/// An HTTP/1.1 receiver (webhook) on a loopback port.
///
/// ```ignore
/// let hook = HttpReceiver::start().await;                // answers 200
/// hook.answer_in_turn(vec![HttpAnswer::status(503).retry_after("1"), HttpAnswer::status(204)]);
/// // … deliver to hook.url("/events") …
/// let got = hook.wait_for(2, Duration::from_secs(5)).await.expect("retried once");
/// assert_eq!(got[1].json()["type"], "PatientAdmitted");
/// ```
pub struct HttpReceiver {
    addr: SocketAddr,
    shared: Arc<HttpShared>,
    running: Mutex<Option<Running>>,
}

impl HttpReceiver {
    /// A receiver on 127.0.0.1 and a free port, answering 200 with an empty body to everything.
    pub async fn start() -> Self {
        Self::bind(loopback())
            .await
            .expect("bind an HTTP receiver on 127.0.0.1")
    }

    /// A receiver on `addr` (port 0 for a free one), answering 200 to everything.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = bind_reusable(addr).await?;
        let addr = listener.local_addr()?;
        let policy: HttpPolicy = Arc::new(|_, _| HttpAnswer::status(200));
        let receiver = Self {
            addr,
            shared: Arc::new(HttpShared {
                journal: Journal::new(),
                policy: Mutex::new(policy),
            }),
            running: Mutex::new(None),
        };
        receiver.run(listener);
        Ok(receiver)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replaces the policy; requests already being answered keep the old one.
    pub fn set_policy(
        &self,
        policy: impl Fn(&ReceivedHttp, u32) -> HttpAnswer + Send + Sync + 'static,
    ) {
        *lock(&self.shared.policy) = Arc::new(policy);
    }

    /// The same answer to every request.
    pub fn answer_always(&self, answer: HttpAnswer) {
        self.set_policy(move |_, _| answer.clone());
    }

    /// The n-th request from now gets `answers[n]`; once they are used up, the last one repeats.
    pub fn answer_in_turn(&self, answers: Vec<HttpAnswer>) {
        let next = in_turn(answers);
        self.set_policy(move |_, _| next().unwrap_or_else(|| HttpAnswer::status(200)));
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedHttp> {
        self.shared.journal.snapshot()
    }

    pub fn received_count(&self) -> usize {
        self.shared.journal.len()
    }

    /// Waits until at least `count` requests have arrived in total; returns them all.
    pub async fn wait_for(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedHttp>, WaitTimeout> {
        self.shared.journal.wait_for(count, timeout).await
    }

    /// Closes the listener and every open connection, idle or waiting for an answer.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.stop().await;
        }
    }

    /// Listens again on the same port, with the same policy and journal.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = bind_reusable(self.addr).await?;
        self.run(listener);
        Ok(())
    }

    fn run(&self, listener: TcpListener) {
        let running = Running::new();
        let app = axum::Router::new()
            .fallback(http_handler)
            .with_state(HttpState {
                shared: self.shared.clone(),
                shutdown: running.shutdown.clone(),
            });
        let listener = StoppableListener {
            listener,
            shutdown: running.shutdown.clone(),
            tracker: running.tracker.clone(),
        };
        let shutdown = running.shutdown.clone();
        running.tracker.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        *lock(&self.running) = Some(running);
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            running.shutdown.cancel();
        }
    }
}

#[derive(Clone)]
struct HttpState {
    shared: Arc<HttpShared>,
    shutdown: CancellationToken,
}

async fn http_handler(
    axum::extract::State(state): axum::extract::State<HttpState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let method = parts.method.to_string();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let shared = &state.shared;
    let key = format!("{method} {path} {}", String::from_utf8_lossy(&body));
    let seen = shared.journal.sighting(&key);
    let policy = lock(&shared.policy).clone();
    let mut request = ReceivedHttp {
        index: 0,
        method,
        path,
        headers,
        body,
        seen,
        at: shared.journal.started.elapsed(),
        answer: HttpAnswer::status(200),
    };
    request.answer = policy(&request, seen);
    let answer = shared
        .journal
        .push(|index| ReceivedHttp { index, ..request })
        .answer;
    if answer.silent {
        state.shutdown.cancelled().await;
    } else if !answer.delay.is_zero() {
        tokio::select! {
            _ = state.shutdown.cancelled() => {}
            _ = tokio::time::sleep(answer.delay) => {}
        }
    }
    // After a stop the connection refuses to write (see `Stoppable`), so this goes nowhere.
    let status = axum::http::StatusCode::from_u16(answer.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    if let Some(value) = answer.retry_after
        && let Ok(value) = axum::http::HeaderValue::from_str(&value)
    {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// A listener whose connections all fail at once when the receiver stops, so that `stop` closes
/// even a connection whose request is still waiting (hyper alone would wait for it).
struct StoppableListener {
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl axum::serve::Listener for StoppableListener {
    type Io = Stoppable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stoppable, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let io = Stoppable {
                        stream,
                        stopped: Box::pin(self.shutdown.clone().cancelled_owned()),
                        shutdown: self.shutdown.clone(),
                        _alive: self.tracker.token(),
                    };
                    return (io, peer);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that errors on every read and write once the receiver stops, and that counts as
/// a task of the run until dropped (so `stop` waits for the socket to be closed).
struct Stoppable {
    stream: TcpStream,
    /// Polled so that a connection waiting to read is woken by the stop.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown: CancellationToken,
    _alive: TaskTrackerToken,
}

impl Stoppable {
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.shutdown.is_cancelled() || self.stopped.as_mut().poll(cx).is_ready() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the test receiver stopped",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Stoppable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stoppable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
