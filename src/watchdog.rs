//! Closes client connections that hold a slot without using it: a request head that does not
//! arrive in time (slowloris), a keep-alive connection idle too long, or an answer the client
//! stops reading.
//!
//! hyper can time request heads itself, but it arms a fresh timer in tokio's wheel for every
//! request (an allocation, a registration and a deregistration under the wheel's lock), which
//! cost about 8% of a cache hit's instructions. Here a connection costs a registration when it
//! opens and a few relaxed atomic stores per request; one task sweeps every connection once a
//! second, on a clock with one-second ticks.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::sync::{watch, Notify};

/// The connections of one listener.
pub(crate) struct Watchdog {
    timeout: u64,
    /// Seconds since the watchdog started, advanced by [`Watchdog::run`].
    now: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// One connection's state, shared by its IO, its requests and the sweeper.
pub(crate) struct Conn {
    /// Requests being answered (HTTP/2 can have several).
    in_flight: AtomicU32,
    /// When the connection last became idle: opened, or answered its last request.
    idle_since: AtomicU64,
    /// When the client last accepted bytes we wrote.
    last_write: AtomicU64,
    kill: Notify,
}

impl Watchdog {
    /// A watchdog allowing `timeout` (rounded up to whole seconds) for each wait.
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        Arc::new(Watchdog {
            timeout: secs.max(1),
            now: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Registers a new connection; it is forgotten when the returned guard is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> Guard {
        let now = self.now.load(Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            last_write: AtomicU64::new(now),
            kill: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        Guard {
            id,
            tracker: Tracker {
                conn,
                dog: self.clone(),
            },
        }
    }

    /// Advances the clock and signals every connection past its time, once a second, until
    /// `stop` changes.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = stop.changed() => return,
            }
        }
    }

    fn sweep(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for conn in conns.values() {
            if conn.in_flight.load(Ordering::Acquire) > 0 {
                continue;
            }
            let since = conn
                .idle_since
                .load(Ordering::Relaxed)
                .max(conn.last_write.load(Ordering::Relaxed));
            if now.saturating_sub(since) >= self.timeout {
                conn.kill.notify_one();
            }
        }
    }
}

/// A registered connection.
pub(crate) struct Guard {
    id: u64,
    tracker: Tracker,
}

/// What a connection's service and IO hold to report progress.
#[derive(Clone)]
pub(crate) struct Tracker {
    conn: Arc<Conn>,
    dog: Arc<Watchdog>,
}

impl Guard {
    /// Resolves when the connection has overstayed with no request in progress; the caller
    /// then drops it.
    pub(crate) async fn expired(&self) {
        loop {
            self.tracker.conn.kill.notified().await;
            if self.tracker.conn.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }

    /// Drives `conn` until it ends (`Some(output)`) or overstays (`None`, and it is dropped).
    pub(crate) async fn run<F: std::future::Future>(&self, conn: F) -> Option<F::Output> {
        tokio::select! {
            ended = conn => Some(ended),
            () = self.expired() => None,
        }
    }

    /// The handle the connection's service reports requests through.
    pub(crate) fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Wraps the connection's IO so that writes the client accepts count as progress.
    pub(crate) fn io<T>(&self, inner: T) -> WatchedIo<T> {
        WatchedIo {
            inner,
            tracker: self.tracker.clone(),
        }
    }
}

impl Tracker {
    /// Marks one request as being answered until the returned value is dropped.
    pub(crate) fn request(&self) -> InFlight {
        self.conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let conns = &self.tracker.dog.conns;
        conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// One request in progress on a watched connection.
pub(crate) struct InFlight(Tracker);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Idle from now: the answer's body may still be on its way, which the write clock covers.
        let now = self.0.dog.now.load(Ordering::Relaxed);
        self.0.conn.idle_since.store(now, Ordering::Relaxed);
        self.0.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connection IO that records when the client last accepted bytes.
pub(crate) struct WatchedIo<T> {
    inner: T,
    tracker: Tracker,
}

impl<T: Read + Unpin> Read for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> WatchedIo<T> {
    fn wrote<R>(&self, r: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if let Poll::Ready(Ok(_)) = r {
            let now = self.tracker.dog.now.load(Ordering::Relaxed);
            self.tracker.conn.last_write.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<T: Write + Unpin> Write for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
