//! A TCP proxy a test can sever: the network partition of a fault test, on one machine.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection to a target.
//! [`Proxy::cut`] closes every connection it carries and refuses new ones (accepted, then
//! closed at once) until [`Proxy::heal`]. [`Proxy::connections`] counts the connections it
//! carried.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy; it stops taking connections when dropped.
pub struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopped: Arc<AtomicBool>,
    carried: Arc<AtomicUsize>,
}

impl Proxy {
    /// Forwards `127.0.0.1:PORT` to `target` (`host:port`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("its address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let carried = Arc::new(AtomicUsize::new(0));
        let target = target.to_owned();
        {
            let (cut, open, stopped, carried) =
                (cut.clone(), open.clone(), stopped.clone(), carried.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let mut list = open.lock().expect("the proxy's connections");
                    for stream in [&client, &server] {
                        if let Ok(clone) = stream.try_clone() {
                            list.push(clone);
                        }
                    }
                    drop(list);
                    carried.fetch_add(1, Ordering::SeqCst);
                    pipe(&client, &server);
                    pipe(&server, &client);
                }
            });
        }
        Proxy {
            port,
            cut,
            open,
            stopped,
            carried,
        }
    }

    /// How many connections it has carried to the target so far.
    pub fn connections(&self) -> usize {
        self.carried.load(Ordering::SeqCst)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Severs every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("the proxy's connections").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Carries connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
