//! A loopback TCP proxy in front of a service (Consul, the simulator, moto) that a test turns
//! faulty and back: cut (Consul out of reach), answering every request with a canned HTTP
//! answer (throttling, a 5xx), or holding every request unanswered (a timeout).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Relays it to the upstream.
    Pass,
    /// Closes it at once.
    Cut,
    /// Reads the request's head and answers this raw HTTP response, then closes it.
    Answer(String),
    /// Reads and never answers, until the client gives up (its timeout) or the mode changes.
    Hold,
}

/// A loopback TCP proxy in front of `upstream`. Changing the mode drops every open connection,
/// so a kept-alive one cannot carry on past a fault.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Rc<RefCell<Mode>>,
    /// Requests answered with a canned answer.
    answered: Rc<Cell<u64>>,
    /// Held requests whose client gave up.
    abandoned: Rc<Cell<u64>>,
    conns: Rc<RefCell<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Reads an HTTP request's head (up to the blank line), at most 64 KiB; false at EOF first.
async fn read_head(inbound: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match inbound.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Rc::new(RefCell::new(Mode::Pass));
        let (answered, abandoned) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let conns: Rc<RefCell<Vec<tokio::task::JoinHandle<()>>>> = Rc::default();
        let (m, open, a, gone) = (
            mode.clone(),
            conns.clone(),
            answered.clone(),
            abandoned.clone(),
        );
        let accept = actix_rt::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let now = m.borrow().clone();
                let (a, gone) = (a.clone(), gone.clone());
                let h = match now {
                    Mode::Cut => {
                        drop(inbound);
                        continue;
                    }
                    Mode::Pass => actix_rt::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }),
                    Mode::Answer(response) => actix_rt::spawn(async move {
                        if read_head(&mut inbound).await
                            && inbound.write_all(response.as_bytes()).await.is_ok()
                        {
                            a.set(a.get() + 1);
                        }
                        let _ = inbound.shutdown().await;
                    }),
                    Mode::Hold => actix_rt::spawn(async move {
                        let mut buf = [0u8; 4096];
                        loop {
                            match inbound.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                        gone.set(gone.get() + 1);
                    }),
                };
                let mut open = open.borrow_mut();
                open.retain(|h| !h.is_finished());
                open.push(h);
            }
        });
        Self {
            addr,
            mode,
            answered,
            abandoned,
            conns,
            accept,
        }
    }

    /// From now on, `mode`; every open connection is dropped.
    pub fn set(&self, mode: Mode) {
        *self.mode.borrow_mut() = mode;
        for h in self.conns.borrow_mut().drain(..) {
            h.abort();
        }
    }

    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    pub fn restore(&self) {
        self.set(Mode::Pass);
    }

    /// Requests answered with a canned answer so far.
    pub fn answered(&self) -> u64 {
        self.answered.get()
    }

    /// Held requests whose client gave up so far.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.get()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.borrow_mut().drain(..) {
            h.abort();
        }
    }
}
