//! Figure 3: GET /metrics under load, with a minimal HTTP/1.1 keep-alive client on
//! tokio, and a no-op "canned" server as the control.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use pgwarden_bench::interrupted;

pub const OPEN_LOOP_CONNECTIONS: usize = 8;
pub const CLOSED_LOOP_CONNECTIONS: usize = 4;
pub const CLOSED_LOOP_SECONDS: u64 = 5;
/// Longest any single request may take before it counts as an error.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

// ---- the client ---------------------------------------------------------------------

/// One keep-alive HTTP/1.1 connection that sends GETs and reads Content-Length bodies:
/// just enough for the daemon's API.
struct HttpConn {
    stream: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufReader::new(stream),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends `GET path`, reads the whole response and returns its status; the body is
    /// left in `self.body`.
    async fn get(&mut self, path: &str) -> io::Result<u16> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        self.read_line().await?;
        let status = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", self.line)))?;
        let mut length = None;
        loop {
            self.read_line().await?;
            let line = self.line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().map_err(invalid)?);
                }
            }
        }
        let length = length.ok_or_else(|| invalid("a response without Content-Length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }

    async fn read_line(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// One GET on a fresh connection: status and body.
pub fn get_once(rt: &Runtime, addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    // The timeout is built inside the runtime: it needs the runtime's timer.
    rt.block_on(async {
        tokio::time::timeout(HTTP_TIMEOUT, async {
            let mut conn = HttpConn::connect(addr).await?;
            let status = conn.get(path).await?;
            Ok::<_, io::Error>((status, conn.body))
        })
        .await
    })
    .with_context(|| format!("GET {path}: no answer within {HTTP_TIMEOUT:?}"))?
    .with_context(|| format!("GET {path}"))
}

/// One GET /metrics on `conn`, reconnecting if an earlier error dropped it. Ok only
/// for a 200 within [`HTTP_TIMEOUT`].
async fn get_metrics(conn: &mut Option<HttpConn>, addr: SocketAddr) -> io::Result<()> {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(HttpConn::connect(addr).await?);
        }
        conn.as_mut()
            .expect("connected above")
            .get("/metrics")
            .await
    };
    let outcome = match tokio::time::timeout(HTTP_TIMEOUT, attempt).await {
        Ok(Ok(200)) => return Ok(()),
        Ok(Ok(status)) => Err(io::Error::other(format!("HTTP status {status}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(format!(
            "no answer within {HTTP_TIMEOUT:?}"
        ))),
    };
    // The connection may be mid-response: start afresh.
    *conn = None;
    outcome
}

async fn connect_all(addr: SocketAddr, n: usize) -> Result<Vec<HttpConn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let conn = HttpConn::connect(addr).await;
        conns.push(conn.with_context(|| format!("connecting to {addr}"))?);
    }
    Ok(conns)
}

// ---- results ------------------------------------------------------------------------

/// What one load phase measured.
#[derive(Default)]
pub struct LoadResult {
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Open loop: how late the client's own timer woke it for a request, sorted. Not in
    /// the latency; a long tail here means the machine stalled the bench itself.
    pub wake_lateness: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first due time (or the start) to the last answer.
    pub elapsed: Duration,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.latencies.extend(other.latencies);
        self.wake_lateness.extend(other.wake_lateness);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn record(&mut self, outcome: io::Result<()>, latency: Duration) {
        match outcome {
            Ok(()) => self.latencies.push(latency),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn finish(mut self, elapsed: Duration) -> LoadResult {
        self.elapsed = elapsed;
        self.latencies.sort_unstable();
        self.wake_lateness.sort_unstable();
        self
    }

    pub fn requests_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile of the latencies in ms, `p` in 0..=100 (100: the max).
    pub fn ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }
}

/// Nearest-rank percentile in ms (`p` in 0..=100) of sorted durations; NaN when empty.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    // The epsilon keeps 0.999 * 1000 = 999.0000000000001 at rank 999.
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, n) - 1].as_secs_f64() * 1000.0
}

// ---- open loop ----------------------------------------------------------------------

/// Open loop: request k is due at `start + k / rate` whatever happened before, and goes
/// to connection k mod [`OPEN_LOOP_CONNECTIONS`]. The connections are opened before the
/// schedule starts.
pub async fn open_loop(addr: SocketAddr, rate: u64, seconds: u64) -> Result<LoadResult> {
    let total = rate * seconds;
    let conns = connect_all(addr, OPEN_LOOP_CONNECTIONS).await?;
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let due = (c as u64..total)
            .step_by(OPEN_LOOP_CONNECTIONS)
            .map(move |k| start + Duration::from_nanos(k * 1_000_000_000 / rate));
        tasks.push(tokio::spawn(run_schedule(addr, conn, due)));
    }
    let mut result = LoadResult::default();
    let mut last_done = start;
    for task in tasks {
        let (part, done) = task.await.context("a load task panicked")?;
        result.merge(part);
        last_done = last_done.max(done);
    }
    Ok(result.finish(last_done - start))
}

/// Sends one GET /metrics per due time on one connection.
///
/// A request's latency runs from its due time when the connection was still busy with
/// the previous answer at that time: the wait is the server's doing, and measuring from
/// the actual send would hide it (coordinated omission). When the connection was idle,
/// it runs from the actual send, so the client's own timer slack (tokio timers have
/// 1 ms granularity) is not charged to the server.
async fn run_schedule(
    addr: SocketAddr,
    conn: HttpConn,
    due: impl Iterator<Item = Instant>,
) -> (LoadResult, Instant) {
    let mut conn = Some(conn);
    let mut result = LoadResult::default();
    let mut last_done = Instant::now();
    for due in due {
        if interrupted() {
            break;
        }
        let from = if Instant::now() < due {
            tokio::time::sleep_until(due).await;
            let woke = Instant::now();
            result.wake_lateness.push(woke - due);
            woke
        } else {
            due
        };
        let outcome = get_metrics(&mut conn, addr).await;
        last_done = Instant::now();
        result.record(outcome, last_done - from);
    }
    (result, last_done)
}

// ---- closed loop --------------------------------------------------------------------

/// Closed loop: each connection sends its next request as soon as the previous answer is
/// in, for [`CLOSED_LOOP_SECONDS`]: the most this client and the server manage together.
pub async fn closed_loop(addr: SocketAddr) -> Result<LoadResult> {
    let conns = connect_all(addr, CLOSED_LOOP_CONNECTIONS).await?;
    let start = Instant::now();
    let end = start + Duration::from_secs(CLOSED_LOOP_SECONDS);
    let mut tasks = Vec::new();
    for conn in conns {
        tasks.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            let mut result = LoadResult::default();
            while Instant::now() < end && !interrupted() {
                let sent = Instant::now();
                let outcome = get_metrics(&mut conn, addr).await;
                result.record(outcome, sent.elapsed());
            }
            result
        }));
    }
    let mut result = LoadResult::default();
    for task in tasks {
        result.merge(task.await.context("a load task panicked")?);
    }
    Ok(result.finish(start.elapsed()))
}

// ---- the control: a server that does nothing ----------------------------------------

/// An HTTP server that answers every request at once with the same canned response
/// (the daemon's /metrics body), on its own 2-worker tokio runtime like the daemon's.
/// The open loop against it shows what this machine and this client cost on their own:
/// the floor under the daemon's figures. Stops when dropped.
pub struct CannedServer {
    _rt: Runtime,
    pub addr: SocketAddr,
}

impl CannedServer {
    pub fn start(body: &[u8]) -> Result<CannedServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the control server's runtime")?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        let response: Arc<[u8]> = response.into();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_canned(stream, response.clone()));
            }
        });
        Ok(CannedServer { _rt: rt, addr })
    }
}

/// Answers every request head on the connection with `response`.
async fn serve_canned(stream: TcpStream, response: Arc<[u8]>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    loop {
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line.trim_end().is_empty() {
                break;
            }
        }
        stream.get_mut().write_all(&response).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 50.0), 500.0);
        assert_eq!(percentile_ms(&sorted, 99.0), 990.0);
        assert_eq!(percentile_ms(&sorted, 99.9), 999.0);
        assert_eq!(percentile_ms(&sorted, 100.0), 1000.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    /// The client against the control server: keep-alive requests with full bodies.
    #[test]
    fn the_client_reads_keep_alive_responses() {
        let server = CannedServer::start(b"hello").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, body) = get_once(&rt, server.addr, "/metrics").unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        let r = rt.block_on(open_loop(server.addr, 400, 1)).unwrap();
        assert_eq!((r.latencies.len(), r.errors), (400, 0));
    }
}
