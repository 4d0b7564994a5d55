//! A recording webhook receiver: a real HTTP/1.1 server on 127.0.0.1 that keeps every request
//! it is sent and answers `500` while the test says it is failing, `200` otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One request the receiver was sent, and what it answered.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request's path.
    pub path: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its body, as JSON (`Null` when it was none).
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    failing: bool,
}

/// The receiver; it serves for as long as the test process runs.
pub struct Receiver {
    port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// A receiver answering `200`.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().expect("its address").port();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Arc::clone(&inner);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { port, inner }
    }

    /// Its URL with `path` (`/hooks/T0/SECRET`, say).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// From now on, answer `500` (`true`) or `200` (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.inner.lock().expect("receiver").failing = failing;
    }

    /// Every request so far, in the order received.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("receiver").received.clone()
    }

    /// The bodies it accepted (answered `200`), in order.
    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .collect()
    }

    /// The accepted JSON notifications of `event` (`"deployed"`, ...).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.accepted()
            .into_iter()
            .filter(|b| b["event"] == event)
            .collect()
    }
}

/// A port nothing listens on (bound, then let go): a receiver that is down for good.
pub fn dead_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}{path}")
}

fn serve(stream: TcpStream, inner: &Mutex<Inner>) {
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut inner = inner.lock().expect("receiver");
            let status = if inner.failing { 500 } else { 200 };
            inner.received.push(Received {
                path,
                content_type,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                status,
            });
            status
        };
        let reason = if status == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        if write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
        )
        .is_err()
        {
            return;
        }
    }
}
