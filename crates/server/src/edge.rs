//! The connection layer: the accept loop (plain TCP or TLS), the caps and timeouts that keep
//! the server answering under hostile or careless clients, and graceful shutdown with a
//! deadline. Nothing here knows about routes; it hands each request to the router.
//!
//! Per connection, a watchdog closes it when
//! - a request head has been arriving for longer than `header_timeout` (slowloris; noticed
//!   within 1.5 of it on a kept-alive connection),
//! - no request has been in flight for `idle_timeout` (idle keep-alive),
//! - a response has been unable to write a byte for `body_timeout` (a client that stopped
//!   reading; noticed between one and two such periods),
//! - a response body moved fewer than `min_body_rate` × `body_timeout` bytes in a window of
//!   `body_timeout` (a client that reads a few bytes a minute, or an HTTP/2 client that never
//!   grants flow-control window: hyper then waits without writing, which no write deadline
//!   sees).
//!
//! A request body is held to the same rate by [`PacedBody`] while its handler reads it, so a
//! trickling upload is cut, its handler fails and stores nothing. The rate is measured per
//! window, never over the whole body: a 64 GiB upload over a slow link passes as long as
//! each window carries its share. At `max_connections` the connection idle the longest is
//! closed to make room; failing that, the busy one whose bodies have been stalled longest
//! (for [`STALLED_EVICTABLE`] at least); only when every connection is busy and moving is a
//! new one answered `503` and closed.
//!
//! Connections are served on [`Workers`]: one single-threaded runtime per core, as nginx
//! serves them with one worker process per core.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::throttle::Throttle;

/// The edge's limits; every one is a setting (README, "Configuration").
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    /// Longest time a request head may take to arrive, from its first byte (TLS handshake
    /// included).
    pub header_timeout: Duration,
    /// Longest time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Longest time a request body may send nothing, or a response may write nothing; also
    /// the window over which `min_body_rate` is measured.
    pub body_timeout: Duration,
    /// Bytes per second a request or response body must move, on average over each window of
    /// `body_timeout` (0: only "nothing at all for `body_timeout`" is cut).
    pub min_body_rate: u64,
    /// Open connections at most.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_streams: u32,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub shutdown_grace: Duration,
    /// Requests and connections per client address (and, in [`crate::auth`], per tenant).
    pub throttle: Arc<Throttle>,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            // Apache's mod_reqtimeout default (`MinRate=500`): far below any link a person
            // would upload over, far above a trickle meant to hold a connection.
            min_body_rate: 500,
            max_connections: 8192,
            h2_max_streams: 128,
            shutdown_grace: Duration::from_secs(30),
            throttle: Arc::default(),
        }
    }
}

/// An HTTP/1 connection's read and write buffer bound (hyper's `max_buf_size`): a request
/// head must fit, and a response is taken from its body while less than this is queued.
const H1_MAX_BUF: usize = 64 * 1024;
/// Largest HTTP/2 header list.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// How long a busy connection's bodies must have moved nothing before, at the connection
/// cap, it may be closed to make room for a new one.
pub const STALLED_EVICTABLE: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive: a PING after this much silence (or half the idle timeout, if shorter),
/// and the connection closed when its PONG does not come back within `H2_PING_TIMEOUT` (or
/// the body timeout, if shorter): a peer that vanished while a request waits (a long-poll) is
/// noticed without a write to time.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections that may wait (at most a second) for another one to be closed at the cap;
/// beyond them a new connection is answered `503` at once.
const MAX_WAITING: usize = 256;

/// Milliseconds of the monotonic clock, never 0 (0 means "not set" below). The coarse clock
/// is the kernel's last tick, read without the TSC: a few milliseconds of granularity are
/// nothing beside timeouts of seconds, and a request reads this clock several times.
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call writes nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

/// What the watchdog, the I/O wrapper and the request guard share about one connection.
struct ConnState {
    in_flight: AtomicU32,
    /// When the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while no request was in flight.
    head_since: AtomicU64,
    /// When a write last found the socket full, while it still is.
    write_stalled_since: AtomicU64,
    /// Response bodies alive (hyper holds them until their last byte is handed on), and the
    /// bytes written to the socket: the watchdog's measure of a response's rate.
    sending: AtomicU32,
    sent: AtomicU64,
    /// Bodies (request bodies being read, response bodies alive) and when one of them last
    /// moved a byte (or started): what marks a busy connection stalled at the cap.
    bodies: AtomicU32,
    progress_at: AtomicU64,
    /// Set (with the reason) when the connection must close now; `drain` when it is to
    /// finish its request and close (shutdown). The connection's task reads both each time
    /// it is woken, through `waker`: nothing is polled beside the connection on its path.
    close: OnceLock<&'static str>,
    drain: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_since: AtomicU64::new(0),
            write_stalled_since: AtomicU64::new(0),
            sending: AtomicU32::new(0),
            sent: AtomicU64::new(0),
            bodies: AtomicU32::new(0),
            progress_at: AtomicU64::new(0),
            close: OnceLock::new(),
            drain: AtomicBool::new(false),
            waker: futures::task::AtomicWaker::new(),
        }
    }

    /// Tells the connection's task to close the connection now.
    fn close_now(&self, reason: &'static str) {
        let _ = self.close.set(reason);
        self.waker.wake();
    }

    /// Since when the connection has been idle or reading a head, if no request is in flight.
    fn idle_for_eviction(&self) -> Option<u64> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => Some(self.idle_since.load(Ordering::Acquire)),
            since => Some(since),
        }
    }

    /// Since when a busy connection's bodies have moved nothing, if that is at least
    /// [`STALLED_EVICTABLE`] (a socket that accepts no write counts too).
    fn stalled_for_eviction(&self, now: u64) -> Option<u64> {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut since = match self.write_stalled_since.load(Ordering::Acquire) {
            0 => u64::MAX,
            since => since,
        };
        if self.bodies.load(Ordering::Acquire) > 0 {
            since = since.min(self.progress_at.load(Ordering::Acquire));
        }
        (since != u64::MAX && now.saturating_sub(since) >= STALLED_EVICTABLE.as_millis() as u64)
            .then_some(since)
    }

    /// Notes that a body moved bytes (or started) now.
    fn progressed(&self) {
        self.progress_at.store(now_ms(), Ordering::Release);
    }

    /// Runs beside the connection (a task of its own) until the connection must close or
    /// the server stops; then tells the connection's task.
    async fn watchdog(&self, limits: &EdgeLimits, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            reason = self.deadline(limits) => self.close_now(reason),
            () = stopped(&mut stop) => {
                self.drain.store(true, Ordering::Release);
                self.waker.wake();
            }
        }
    }

    /// Resolves when a deadline of the connection has passed, with the reason.
    async fn deadline(&self, limits: &EdgeLimits) -> &'static str {
        let ms = |d: Duration| d.as_millis() as u64;
        // Nothing on a request's path wakes the watchdog (a timer moved earlier for every
        // request cost ~8 % of small-range throughput): an idle connection is looked at every
        // half header timeout, so a head that starts meanwhile is cut within 1.5 of it, and a
        // response's rate window starts when the watchdog first sees it.
        let glance = (limits.header_timeout / 2).max(Duration::from_millis(50));
        let window = ms(limits.body_timeout);
        // Bytes a response must move per window; at least one (a window of nothing is cut
        // even with no rate set).
        let least = (limits.min_body_rate.saturating_mul(window) / 1000).max(1);
        // The response window under way: when it began and `sent` then.
        let mut sending_window: Option<(u64, u64)> = None;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let now = now_ms();
            let (expiry, reason, most) = if self.in_flight.load(Ordering::Acquire) > 0 {
                let stalled = match self.write_stalled_since.load(Ordering::Acquire) {
                    0 => None,
                    since => Some((since + window, "send stalled")),
                };
                let slow = if self.sending.load(Ordering::Acquire) > 0 {
                    let sent = self.sent.load(Ordering::Acquire);
                    let (began, at_start) = *sending_window.get_or_insert((now, sent));
                    if now >= began + window {
                        if sent - at_start < least {
                            return "response body too slow";
                        }
                        sending_window = Some((now, sent));
                        Some((now + window, "response body too slow"))
                    } else {
                        Some((began + window, "response body too slow"))
                    }
                } else {
                    sending_window = None;
                    None
                };
                match [stalled, slow]
                    .into_iter()
                    .flatten()
                    .min_by_key(|(at, _)| *at)
                {
                    Some((at, reason)) => (Some(at), reason, limits.body_timeout),
                    None => (None, "", limits.body_timeout),
                }
            } else {
                sending_window = None;
                match self.head_since.load(Ordering::Acquire) {
                    0 => (
                        Some(self.idle_since.load(Ordering::Acquire) + ms(limits.idle_timeout)),
                        "idle",
                        glance,
                    ),
                    since => (
                        Some(since + ms(limits.header_timeout)),
                        "request head too slow",
                        limits.header_timeout,
                    ),
                }
            };
            let wait = match expiry {
                Some(at) if at <= now => return reason,
                Some(at) => Duration::from_millis(at - now).min(most),
                None => most,
            };
            sleep.as_mut().reset(tokio::time::Instant::now() + wait);
            sleep.as_mut().await;
        }
    }
}

/// The socket (or TLS stream) with the bookkeeping the watchdog reads.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    /// Set once the write side is shut: the lingering close's deadline (see `poll_shutdown`).
    lingering: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
}

impl<S> Tracked<S> {
    fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            lingering: None,
        }
    }
}

/// How long, and for how many bytes, a closing connection reads and drops what its client is
/// still sending (see `Tracked::poll_shutdown`).
const LINGER: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: u64 = 64 << 20;

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let state = &self.state;
        if buf.filled().len() > before
            && state.in_flight.load(Ordering::Acquire) == 0
            && state.head_since.load(Ordering::Acquire) == 0
        {
            state.head_since.store(now_ms(), Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    /// Notes a write's outcome: a full socket starts the stall clock; bytes written stop it
    /// and count toward the response rate (measured at the socket, so a client's reading pace
    /// is seen as it is, whatever hyper buffers or HTTP/2 multiplexes).
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        let state = &self.state;
        let stalled = &state.write_stalled_since;
        match polled {
            Poll::Pending => {
                if stalled.load(Ordering::Relaxed) == 0 {
                    stalled.store(now_ms(), Ordering::Release);
                }
            }
            Poll::Ready(written) => {
                if stalled.load(Ordering::Relaxed) != 0 {
                    stalled.store(0, Ordering::Release);
                }
                if let Ok(n @ 1..) = written {
                    state.sent.fetch_add(*n as u64, Ordering::Relaxed);
                    state.progressed();
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// A lingering close, as nginx's: after the response, shut the write side, then read and
    /// drop what the client still sends until it closes too (or [`LINGER`] or
    /// [`LINGER_MAX_BYTES`] pass). Closing with unread bytes in the receive buffer resets the
    /// connection, and a reset can destroy the response in the client's buffer before it is
    /// read: a client still sending a body refused early (`413`, `401`) would see a broken
    /// pipe instead of the answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.lingering = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
        }
        let Some((deadline, dropped)) = this.lingering.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *dropped > LINGER_MAX_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *dropped += buf.filled().len() as u64;
                }
                // The client's end, or an error: nothing left to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Counts a request in flight from its head to the end of its response body.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_since.store(0, Ordering::Release);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until hyper drops it, and tells the
/// watchdog a response is under way (whose rate it then measures).
struct Guarded {
    body: Body,
    in_flight: InFlight,
}

impl Guarded {
    fn new(body: Body, in_flight: InFlight) -> Self {
        let state = &in_flight.0;
        state.sending.fetch_add(1, Ordering::AcqRel);
        state.bodies.fetch_add(1, Ordering::AcqRel);
        state.progressed();
        Self { body, in_flight }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let state = &self.in_flight.0;
        state.sending.fetch_sub(1, Ordering::AcqRel);
        state.bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body held to a minimum rate while it is read: each window of `window` during
/// which its handler waits for bytes must bring at least `least` of them (one, with no rate
/// set), or the body fails. A window is judged only by a timer that runs while the handler
/// waits, so time the handler spends elsewhere (writing, hashing) is never the client's. Says
/// in `ended` when the body has been read to its end.
pub struct PacedBody {
    inner: Body,
    window: Duration,
    least: u64,
    /// When the window under way began, and the bytes it has brought.
    began: tokio::time::Instant,
    brought: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: Arc<AtomicBool>,
    state: Arc<ConnState>,
}

impl PacedBody {
    fn wrap(
        inner: Body,
        limits: &EdgeLimits,
        ended: Arc<AtomicBool>,
        state: Arc<ConnState>,
    ) -> Body {
        let window = limits.body_timeout;
        let least = (limits
            .min_body_rate
            .saturating_mul(window.as_millis() as u64)
            / 1000)
            .max(1);
        state.bodies.fetch_add(1, Ordering::AcqRel);
        state.progressed();
        Body::new(Self {
            inner,
            window,
            least,
            began: tokio::time::Instant::now(),
            brought: 0,
            sleep: None,
            ended,
            state,
        })
    }

    /// Starts a new window now.
    fn roll(&mut self) {
        self.began = tokio::time::Instant::now();
        self.brought = 0;
        self.sleep = None;
    }
}

impl Drop for PacedBody {
    fn drop(&mut self) {
        self.state.bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The error a [`PacedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body brought fewer than {least} bytes in {window:?}")]
pub struct BodyTooSlow {
    least: u64,
    window: Duration,
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(Ok(f)) = &frame
                        && let Some(data) = f.data_ref()
                    {
                        this.brought += data.len() as u64;
                        this.state.progressed();
                    }
                    // A window that ran out while the handler was elsewhere is not judged:
                    // the client may have been waiting for it to read.
                    if this.began.elapsed() >= this.window {
                        this.roll();
                    }
                    if frame.is_none() || this.inner.is_end_stream() {
                        this.ended.store(true, Ordering::Release);
                    }
                    return Poll::Ready(frame);
                }
                Poll::Pending => {
                    let deadline = this.began + this.window;
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if this.brought < this.least {
                        this.sleep = None;
                        let error = BodyTooSlow {
                            least: this.least,
                            window: this.window,
                        };
                        return Poll::Ready(Some(Err(axum::Error::new(error))));
                    }
                    // The window brought its share: the next one starts now (and its timer
                    // is registered by polling once more).
                    this.roll();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The open connections, so that the one idle longest can be closed at the cap.
#[derive(Default)]
struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Connections {
    fn add(&self, state: Arc<ConnState>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, state);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that has had no request in flight for the longest time; failing
    /// that, the busy one whose bodies have been stalled the longest.
    fn evict_one(&self) -> bool {
        let open = self.lock();
        let live = || open.values().filter(|s| s.close.get().is_none());
        let now = now_ms();
        let idle = live()
            .filter_map(|s| s.idle_for_eviction().map(|since| (since, s)))
            .min_by_key(|(since, _)| *since);
        let victim = idle.or_else(|| {
            live()
                .filter_map(|s| s.stalled_for_eviction(now).map(|since| (since, s)))
                .min_by_key(|(since, _)| *since)
        });
        match victim {
            Some((_, state)) => {
                state.close_now("evicted at the connection cap");
                true
            }
            None => false,
        }
    }
}

/// The service a connection's requests go to: [`crate::app`].
pub trait App:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The threads connections are served on: one single-threaded runtime each, one per core. A
/// connection stays on the runtime it was handed to, so its requests never move between
/// threads; on the multi-threaded runtime most small requests cost a wake-up of an idle worker
/// (a futex call and a context switch) that found nothing to do (measured: 18.5 µs of server
/// CPU per 4 KiB range request there, 13.7 µs on one thread). Background work (the SQLite
/// writer, the event follower, sweeps) stays on the main runtime. Dropping this stops the
/// threads once what runs on them has ended; keep it until the stores are closed, since a
/// database or S3 connection opened by a request lives on the runtime that opened it.
pub struct Workers {
    runtimes: Vec<tokio::runtime::Handle>,
    next: AtomicU64,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    /// One runtime per available core (at least one). With `pin`, and as many threads as
    /// CPUs the process may run on, each thread is held to its own CPU: left to the scheduler,
    /// both would now and then share one core while the other ran something else (measured on
    /// one two-core host with wrk: 4 KiB range reads' p99 1.8-3.4 ms unpinned, 0.8-0.9 ms
    /// pinned; on another, no difference either way).
    pub fn start(pin: bool) -> io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        // A cgroup quota below the CPUs allowed gives fewer threads than CPUs: no pinning.
        let pinning =
            affinity::allowed().filter(|(_, cpus)| pin && count > 1 && cpus.len() == count);
        if let Some((_, cpus)) = &pinning {
            tracing::info!(?cpus, "connection threads pinned one per CPU");
        }
        let mut runtimes = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all().thread_name("artifactstore-blocking");
            if let Some((all, _)) = &pinning {
                // A blocking thread (file I/O, SQLite) inherits the pinned thread's one CPU;
                // it gets back every CPU the process may use.
                let all = *all;
                builder.on_thread_start(move || affinity::set(&all));
            }
            let runtime = builder.build()?;
            runtimes.push(runtime.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stop.push(tx);
            let cpu = pinning.as_ref().map(|(_, cpus)| cpus[i]);
            std::thread::Builder::new()
                .name(format!("artifactstore-http-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        affinity::set(&affinity::only(cpu));
                    }
                    runtime.block_on(async {
                        let _ = rx.await;
                    });
                    // A blocking task still writing a blob gets time to finish.
                    runtime.shutdown_timeout(Duration::from_secs(10));
                })?;
        }
        Ok(Self {
            runtimes,
            next: AtomicU64::new(0),
            _stop: stop,
        })
    }

    /// The runtime for the next connection, in turn.
    fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.runtimes.len();
        &self.runtimes[i]
    }
}

/// The calling thread's CPU affinity (Linux; elsewhere nothing is pinned).
mod affinity {
    #[cfg(target_os = "linux")]
    pub type Set = libc::cpu_set_t;
    #[cfg(not(target_os = "linux"))]
    pub type Set = ();

    /// The set of CPUs the calling thread may run on, and those CPUs in order.
    #[cfg(target_os = "linux")]
    pub fn allowed() -> Option<(Set, Vec<usize>)> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set; the call writes at most
        // `size_of::<Set>()` bytes into it, and CPU_ISSET only reads it below its capacity.
        let mut set: Set = unsafe { std::mem::zeroed() };
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<Set>(), &mut set) } != 0 {
            return None;
        }
        let cpus = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect();
        Some((set, cpus))
    }

    #[cfg(target_os = "linux")]
    pub fn only(cpu: usize) -> Set {
        // SAFETY: as in `allowed`; CPU_SET ignores an index beyond the set's capacity.
        let mut set: Set = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        set
    }

    /// Holds the calling thread to `set`. A refusal (a container's seccomp policy, CPUs
    /// taken away meanwhile) leaves it where it was: pinning is an optimisation only.
    #[cfg(target_os = "linux")]
    pub fn set(set: &Set) {
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let ok = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<Set>(), set) };
        if ok != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "CPU affinity not set");
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed() -> Option<(Set, Vec<usize>)> {
        None
    }
    #[cfg(not(target_os = "linux"))]
    pub fn only(_: usize) -> Set {}
    #[cfg(not(target_os = "linux"))]
    pub fn set(_: &Set) {}
}

/// Serves `app` on `listener` until `stop` turns true, then lets in-flight requests finish
/// for at most `limits.shutdown_grace` and closes what is left.
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    tls: Option<TlsAcceptor>,
    limits: EdgeLimits,
    workers: &Workers,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watchdog keeps the head deadline: hyper's own would also bound idle time.
        .header_read_timeout(None)
        // Request heads carry at most 100 header fields (`431` beyond): hyper's default, kept
        // on the stack. Set explicitly (`max_headers`), hyper fills two 100-entry vectors on
        // the heap for every request (~1 % of the CPU of a 4 KiB range read).
        // hyper takes body chunks while its write queue holds less than this: for a client
        // that stopped reading, what it holds of the response (default ~400 KiB).
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(Some(limits.h2_max_streams as usize))
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL.min(limits.idle_timeout / 2)))
        .keep_alive_timeout(H2_PING_TIMEOUT.min(limits.body_timeout));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let connections = Arc::new(Connections::default());
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or an aborted handshake: nothing to do but wait.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Without TCP_NODELAY a response whose head and body go out in two writes waits for
        // the client's delayed ACK (~40 ms): small range reads would crawl.
        let _ = tcp.set_nodelay(true);
        // Re-registered on the worker's runtime, whose reactor then drives it.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "dropping an accepted connection");
                continue;
            }
        };
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            tls: tls.clone(),
            limits: limits.clone(),
            connections: connections.clone(),
            stop: stop.clone(),
        };
        // Over its address's share: answered `429` and closed, taking no slot of the cap.
        let Some(slot) = limits.throttle.connect(peer.ip()) else {
            if tls.is_none()
                && let Ok(tcp) = TcpStream::from_std(tcp)
            {
                let refused = ApiError::throttled("address", Duration::from_secs(1));
                tasks.spawn(refuse(tcp, refused));
            }
            continue;
        };
        // Taken here, in accept order; only a connection at the cap waits, on its worker.
        let permit = permits.clone().try_acquire_owned().ok();
        let (permits, waiting) = (permits.clone(), waiting.clone());
        let task = async move {
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => return tracing::debug!(error = %e, "registering a connection failed"),
            };
            let permit = match permit {
                Some(permit) => permit,
                None => match connection.wait_for_room(&permits, &waiting).await {
                    Some(permit) => permit,
                    None if connection.tls.is_none() => {
                        return refuse(tcp, ApiError::Overloaded).await;
                    }
                    None => return,
                },
            };
            connection.run(tcp, peer.ip(), permit).await;
            drop(slot);
        };
        tasks.spawn_on(task, workers.next());
    }
    drop(listener);
    let grace = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if grace.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "shutdown deadline passed: closing the connections still busy"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// What one connection's task needs.
struct Connection<A> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: A,
    tls: Option<TlsAcceptor>,
    limits: Arc<EdgeLimits>,
    connections: Arc<Connections>,
    stop: watch::Receiver<bool>,
}

impl<A: App> Connection<A> {
    /// At the cap: closes the connection idle the longest and waits up to a second for its
    /// permit.
    async fn wait_for_room(
        &self,
        permits: &Arc<Semaphore>,
        waiting: &Semaphore,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let _waiting = waiting.try_acquire().ok()?;
        if !self.connections.evict_one() {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(1), permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    async fn run(
        self,
        tcp: TcpStream,
        peer: std::net::IpAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let state = Arc::new(ConnState::new());
        // Counts from accept: a TLS handshake is part of the first head's time.
        state.head_since.store(now_ms(), Ordering::Release);
        let id = self.connections.add(state.clone());
        let tracked = Tracked::new(tcp, state.clone());
        match self.tls.clone() {
            None => self.serve_io(tracked, peer, &state).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.header_timeout, acceptor.accept(tracked));
                match handshake.await {
                    Ok(Ok(tls)) => self.serve_io(tls, peer, &state).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
        self.connections.remove(id);
        drop(permit);
    }

    async fn serve_io<I>(&self, io: I, peer: std::net::IpAddr, state: &Arc<ConnState>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let conn_state = state.clone();
        let limits = self.limits.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&conn_state);
            // The client's rate, by its real address behind a trusted proxy.
            let throttle = &limits.throttle;
            let throttled = match throttle.per_address {
                Some(_) => throttle
                    .request(throttle.trusted.client(peer, request.headers()))
                    .err(),
                None => None,
            };
            // A request without a body (most reads) has nothing to time.
            let mut body_ended = None;
            let http1 = request.version() < axum::http::Version::HTTP_2;
            let request = request.map(|body| {
                if http_body::Body::is_end_stream(&body) {
                    Body::new(body)
                } else {
                    let ended = body_ended.insert(Arc::new(AtomicBool::new(false))).clone();
                    PacedBody::wrap(Body::new(body), &limits, ended, conn_state.clone())
                }
            });
            let app = app.clone();
            async move {
                let mut response = match throttled {
                    Some(wait) => axum::response::IntoResponse::into_response(ApiError::throttled(
                        "address", wait,
                    )),
                    None => app.oneshot(request).await?,
                };
                // hyper closes an HTTP/1 connection whose request body was left unread (a body
                // refused early) once the response is out; saying so keeps the client from
                // sending its next request on it, which would race that close.
                if http1 && body_ended.is_some_and(|ended| !ended.load(Ordering::Acquire)) {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(Guarded::new(body, in_flight))),
                )
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        let watchdog = {
            let (state, limits, stop) = (state.clone(), self.limits.clone(), self.stop.clone());
            tokio::spawn(async move { state.watchdog(&limits, stop).await })
        };
        let ended = Driven {
            conn: Box::pin(conn),
            state,
            draining: false,
        }
        .await;
        watchdog.abort();
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
            Err(reason) => tracing::debug!(reason, "closing connection"),
        }
    }
}

/// The connection, and the watchdog's word on it read each time it is polled.
struct Driven<'a, C> {
    conn: C,
    state: &'a ConnState,
    draining: bool,
}

impl<C> Future for Driven<'_, Pin<Box<C>>>
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConn,
{
    /// The connection's own end, or the reason it was closed.
    type Output = Result<Result<(), Box<dyn std::error::Error + Send + Sync>>, &'static str>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Registered before the flags are read, so a flag set after the read still wakes us.
        this.state.waker.register(cx.waker());
        if let Some(reason) = this.state.close.get() {
            return Poll::Ready(Err(reason));
        }
        if !this.draining && this.state.drain.load(Ordering::Acquire) {
            this.draining = true;
            this.conn.as_mut().shut_down_gracefully();
        }
        this.conn.as_mut().poll(cx).map(Ok)
    }
}

/// hyper-util's connection, whose graceful shutdown [`Driven`] starts.
trait GracefulConn {
    fn shut_down_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConn for auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answers a connection refused before any request (`503` at the cap, `429` over its
/// address's share) with a problem document and closes it.
async fn refuse(mut tcp: TcpStream, refusal: ApiError) {
    let (status, body) = refusal.problem_bytes();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Raises the soft limit on open files to the hard one, so the connection cap, not the
/// descriptor table, is what bounds connections; returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUs the calling thread may run on (empty where affinity is not read).
    fn my_cpus() -> Vec<usize> {
        affinity::allowed().map_or_else(Vec::new, |(_, cpus)| cpus)
    }

    /// What `task` returns, run on `runtime`'s own thread.
    fn on<T: Send + 'static>(
        runtime: &tokio::runtime::Handle,
        task: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move { tx.send(task.await) });
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn connection_threads_are_pinned_and_blocking_threads_are_not() {
        let all = my_cpus();
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pinned = all.len() == count && count > 1;
        let workers = Workers::start(true).unwrap();
        let mut seen = Vec::new();
        for runtime in &workers.runtimes {
            let (on_worker, on_blocking) = on(runtime, async {
                let blocking = tokio::task::spawn_blocking(my_cpus).await.unwrap();
                (my_cpus(), blocking)
            });
            assert_eq!(on_blocking, all, "a blocking thread gets every CPU back");
            if pinned {
                assert_eq!(on_worker.len(), 1, "{on_worker:?}");
                seen.extend(on_worker);
            } else {
                assert_eq!(on_worker, all);
            }
        }
        if pinned {
            seen.sort_unstable();
            assert_eq!(seen, all, "one thread per CPU");
        }
        let unpinned = Workers::start(false).unwrap();
        for runtime in &unpinned.runtimes {
            assert_eq!(on(runtime, async { my_cpus() }), all);
        }
    }
}
