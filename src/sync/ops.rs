//! The operations endpoint: `/livez`, `/readyz` and `/metrics` over a small
//! HTTP/1.1 responder. Probes and scrapes are tiny GET requests, one per
//! connection, so answering each with `Connection: close` keeps this correct
//! without an HTTP stack.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What the endpoints report.
pub trait Probe: Send + Sync + 'static {
    /// `Err(why)` while the daemon should not count as ready.
    fn readiness(&self) -> Result<(), String>;
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// Requests larger than this are not probes.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// Serves until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "ops endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            handle(socket, probe.as_ref()).await;
            drop(slot);
        });
    }
}

async fn handle(mut socket: TcpStream, probe: &dyn Probe) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut socket)).await {
        Ok(Ok(head)) => respond(&head, probe),
        Ok(Err(status)) => Response::text(status, status_text(status)),
        Err(_) => Response::text(408, "request timeout\n"),
    };
    let _ = socket.write_all(&response.encode()).await;
    let _ = socket.shutdown().await;
    // Closing with unread request bytes would reset the connection and could
    // discard the answer before the client reads it.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads up to the end of the request head; the status code on failure.
async fn read_head(socket: &mut TcpStream) -> Result<String, u16> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| 400);
        }
        if buf.len() > MAX_REQUEST {
            return Err(431);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// HEAD: the headers of a GET, without its body.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
            allow: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            status_text(self.status).trim_end(),
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK\n",
        400 => "Bad Request\n",
        404 => "Not Found\n",
        405 => "Method Not Allowed\n",
        408 => "Request Timeout\n",
        431 => "Request Header Fields Too Large\n",
        503 => "Service Unavailable\n",
        _ => "Error\n",
    }
}

fn respond(head: &str, probe: &dyn Probe) -> Response {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text(405, "Method Not Allowed\n");
            r.allow = true;
            return r;
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/livez" => Response::text(200, "ok\n"),
        "/readyz" => match probe.readiness() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let mut r = Response::text(200, probe.metrics());
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        _ => Response::text(404, "Not Found\n"),
    };
    response.head_only = head_only;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        ready: AtomicBool,
    }

    impl Probe for Fake {
        fn readiness(&self) -> Result<(), String> {
            if self.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("NATS is not connected".into())
            }
        }
        fn metrics(&self) -> String {
            "# TYPE x counter\nx 1\n".into()
        }
    }

    async fn start() -> (std::net::SocketAddr, Arc<Fake>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
        });
        tokio::spawn(serve(listener, fake.clone()));
        (addr, fake)
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(request).await.unwrap();
        let mut out = String::new();
        socket.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
    }

    #[tokio::test]
    async fn endpoints_answer_with_status_length_and_body() {
        let (addr, fake) = start().await;
        let live = get(addr, "/livez").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.contains("Content-Length: 3\r\n"), "{live}");
        assert!(live.contains("Connection: close\r\n"), "{live}");
        assert!(live.ends_with("\r\n\r\nok\n"), "{live}");

        assert!(get(addr, "/readyz").await.ends_with("\r\n\r\nready\n"));
        fake.ready.store(false, Ordering::Relaxed);
        let unready = get(addr, "/readyz?verbose").await;
        assert!(
            unready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{unready}"
        );
        assert!(unready.ends_with("not ready: NATS is not connected\n"));

        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(metrics.ends_with("\r\n\r\n# TYPE x counter\nx 1\n"));
        assert!(
            get(addr, "/nope")
                .await
                .starts_with("HTTP/1.1 404 Not Found\r\n")
        );
    }

    #[tokio::test]
    async fn head_other_methods_and_garbage() {
        let (addr, _) = start().await;
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {head}"
        );
        assert!(head.contains("Content-Length: 21\r\n"), "{head}");

        let post = exchange(addr, b"POST /livez HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");

        for garbage in [
            &b"hello\r\n\r\n"[..],
            b"GET /livez SPDY/3\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            let answer = exchange(addr, garbage).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        }
        let mut huge = b"GET /livez HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 10));
        let answer = exchange(addr, &huge).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_request_split_across_packets_is_read_whole() {
        let (addr, _) = start().await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"GET /li").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket.write_all(b"vez HTTP/1.0\r\n\r").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket.write_all(b"\n").await.unwrap();
        let mut out = String::new();
        socket.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    }
}
