//! Connection handling shared by the plain and the TLS listener: a cap on
//! open connections per listener, and the timeouts that stop slow or idle
//! clients from holding connections (and descriptors) forever.
//!
//! - **Cap**: each connection holds a permit of its listener's semaphore
//!   (`server.max_connections`); a connection accepted when none is left is
//!   closed at once, logged (at most once a second) and counted in
//!   `hsm_kms_connections_refused_total{listener}`.
//! - **Request head** (`server.header_read_timeout_secs`): from the first
//!   byte of a request (and, on the TLS listener, for the handshake).
//! - **Keep-alive idle** (`server.idle_timeout_secs`): no request in
//!   progress and no byte of a new one.
//! - **Request body** (`server.body_read_timeout_secs`): from the end of the
//!   head; a body still incomplete then fails to read, the handler answers
//!   400 in its dialect's envelope and the connection closes.
//!
//! A per-connection watchdog enforces the first two by dropping the
//! connection: hyper's own header timer cannot tell an idle keep-alive
//! connection from a half-sent head.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::ServerConfig;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to send a whole request head, from its first byte (and the TLS
    /// handshake).
    pub header_read: Duration,
    /// Time to send a whole request body, from the end of its head.
    pub body_read: Duration,
    /// Time a connection may sit with no request in progress.
    pub idle: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// `server.lean_requests`: a request's body timer is made only when its
    /// body has not fully arrived with the head.
    pub lean: bool,
}

impl ConnLimits {
    /// The limits of `[server]` (they apply to the `[tls]` listener too).
    pub fn from_config(s: &ServerConfig) -> Self {
        let secs = |v: u64| Duration::from_secs(v.max(1));
        ConnLimits {
            header_read: secs(s.header_read_timeout_secs),
            body_read: secs(s.body_read_timeout_secs),
            idle: secs(s.idle_timeout_secs),
            max_connections: s.max_connections.max(1),
            lean: s.lean_requests,
        }
    }
}

/// What a connection is doing, for its watchdog.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests handed to the router and not answered yet.
    in_flight: usize,
    /// When the connection last became idle (accepted, or a request answered).
    idle_since: Instant,
    /// First byte received while idle: a request head has begun.
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
        }
    }

    fn request_started(&self) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.head_started = None;
    }

    fn request_answered(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
    }

    /// When the connection must be closed if nothing changes, and why;
    /// `None` while a request is in progress.
    fn deadline(&self, l: &ConnLimits) -> Option<(Instant, &'static str)> {
        let s = self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_started {
            Some(t) => (t + l.header_read, "request head not received in time"),
            None => (s.idle_since + l.idle, "idle"),
        })
    }
}

/// Ends when the connection has to be closed: a request head that did not
/// arrive in time, or a connection idle for too long.
async fn watchdog(act: &Activity, l: &ConnLimits) -> &'static str {
    loop {
        match act.deadline(l) {
            Some((at, why)) if at <= Instant::now() => return why,
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => tokio::time::sleep(l.header_read.min(l.idle)).await,
        }
    }
}

/// The connection's byte stream, noting every read for the watchdog.
struct WatchedIo<T> {
    inner: T,
    act: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    /// The timer; with `server.lean_requests`, made at the first poll that
    /// finds the body incomplete (most bodies arrive with their head and
    /// never need one), for the same deadline.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The end of the head plus the limit.
    due: Instant,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, limit: Duration, lean: bool) -> Self {
        let due = Instant::now() + limit;
        DeadlineBody {
            inner,
            deadline: (!lean).then(|| Box::pin(tokio::time::sleep_until(due))),
            due,
            limit,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let due = self.due;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if deadline.as_mut().poll(cx).is_ready() {
                    let secs = self.limit.as_secs();
                    Poll::Ready(Some(Err(format!(
                        "the request body did not arrive within {secs} s"
                    )
                    .into())))
                } else {
                    Poll::Pending
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

/// Notes a request's end even when its future is dropped.
struct Answered(Arc<Activity>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// Turns an accepted TCP connection into the stream HTTP is served on (the
/// plain listener: itself; TLS: after the handshake), with extensions to add
/// to each of its requests. `None` drops the connection.
pub trait Upgrade: Clone + Send + Sync + 'static {
    /// The stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Upgrades `tcp` from `peer`.
    fn upgrade(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, http::Extensions)>> + Send;
}

/// The plain listener: HTTP straight on TCP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Upgrade for Plain {
    type Io = TcpStream;

    async fn upgrade(
        &self,
        tcp: TcpStream,
        _peer: SocketAddr,
    ) -> Option<(TcpStream, http::Extensions)> {
        Some((tcp, http::Extensions::new()))
    }
}

/// Serves `app` on `listener` (named `name` in logs and metrics) under
/// `limits` until `shutdown` turns true; then stops accepting, lets open
/// connections finish their requests, and returns when all are closed.
pub async fn serve<U: Upgrade>(
    listener: TcpListener,
    name: &'static str,
    limits: ConnLimits,
    upgrade: U,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused_since_log = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { shutdown.wait_for(|v| *v).await.is_ok() } => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            metrics::counter!("hsm_kms_connections_refused_total", "listener" => name).increment(1);
            refused_since_log += 1;
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(
                    listener = name,
                    max_connections = limits.max_connections,
                    refused = refused_since_log,
                    "connection limit reached; closing new connections"
                );
                refused_since_log = 0;
                last_log = Some(Instant::now());
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tracing::trace!(listener = name, %peer, "connection accepted");
        let upgrade = upgrade.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics::gauge!("hsm_kms_connections_open", "listener" => name).increment(1.0);
            connection(tcp, peer, limits, upgrade, app, shutdown).await;
            tracing::trace!(listener = name, %peer, "connection closed");
            metrics::gauge!("hsm_kms_connections_open", "listener" => name).decrement(1.0);
        });
    }
    // Graceful: wait until every connection has given its slot back.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

async fn connection<U: Upgrade>(
    tcp: TcpStream,
    peer: SocketAddr,
    limits: ConnLimits,
    upgrade: U,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(Some((io, ext))) =
        tokio::time::timeout(limits.header_read, upgrade.upgrade(tcp, peer)).await
    else {
        return;
    };
    let act = Arc::new(Activity::new());
    let svc = {
        let act = act.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            act.request_started();
            let answered = Answered(act.clone());
            let mut req = req.map(|inner| {
                axum::body::Body::new(DeadlineBody::new(inner, limits.body_read, limits.lean))
            });
            req.extensions_mut().extend(ext.clone());
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let fut = tower::ServiceExt::oneshot(app.clone(), req);
            async move {
                let resp = fut.await;
                drop(answered);
                resp
            }
        })
    };
    let io = hyper_util::rt::TokioIo::new(WatchedIo {
        inner: io,
        act: act.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        why = watchdog(&act, &limits) => {
            tracing::debug!(%peer, reason = why, "closing connection");
            return;
        }
        _ = async { shutdown.wait_for(|v| *v).await.is_ok() } => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = watchdog(&act, &limits) => {}
    }
}
