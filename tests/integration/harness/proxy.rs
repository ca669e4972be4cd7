//! An HTTP-level fault injector between walvault and the S3 server.
//!
//! It forwards bytes unchanged (so AWS SigV4 signatures, which cover the
//! Host header the client sent, still verify at the server), and on a
//! share of connections, chosen by a seeded generator, injects a fault
//! instead: a 503 with an S3 error body, a connection reset in the middle
//! of the request or of the response, a response cut short by a clean
//! close (a truncated body), or a stall longer than the client's timeouts.
//! A fault acts on the connection's first request; the client then opens
//! a new connection.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Pass,
    ServerError,
    ResetInRequest,
    ResetInResponse,
    TruncatedResponse,
    Stall,
}

const FAULTS: [Fault; 5] = [
    Fault::ServerError,
    Fault::ResetInRequest,
    Fault::ResetInResponse,
    Fault::TruncatedResponse,
    Fault::Stall,
];

/// How the proxy treats `If-None-Match: *` (conditional create).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// Forwarded: the server's own behaviour.
    Forward,
    /// Removed before forwarding, as a server that ignores it. The header
    /// is signed, so in every conditional mode the proxy forwards requests
    /// without their signature, to an S3 server that checks none.
    Ignore,
    /// Answered 501 Not Implemented by the proxy itself.
    NotImplemented,
    /// `Range` headers removed, as a server that ignores them (every
    /// ranged read gets the whole object).
    IgnoreRange,
    /// Listings cut after their first page (`IsTruncated` false, no
    /// continuation token), as a server whose pagination is broken.
    OnePageListings,
}

pub struct FaultProxy {
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    percent: Arc<AtomicU32>,
    conditional: Arc<AtomicU32>,
    counts: Arc<Mutex<BTreeMap<Fault, u64>>>,
}

impl FaultProxy {
    /// Listens on a free port and forwards to `upstream` (host:port).
    /// `fault_percent` of new connections get a fault.
    pub fn start(upstream: &str, seed: u64, fault_percent: u32) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let percent = Arc::new(AtomicU32::new(fault_percent));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let conditional = Arc::new(AtomicU32::new(0));
        let state = Arc::new(AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1));
        let upstream = upstream.to_string();
        {
            let (stop, percent, counts, conditional) = (
                stop.clone(),
                percent.clone(),
                counts.clone(),
                conditional.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let roll = next(&state);
                            let fault = if (roll % 100) < u64::from(percent.load(Ordering::SeqCst))
                            {
                                FAULTS[((roll >> 8) % FAULTS.len() as u64) as usize]
                            } else {
                                Fault::Pass
                            };
                            *counts.lock().unwrap().entry(fault).or_default() += 1;
                            let upstream = upstream.clone();
                            let cut = (roll >> 16) as usize;
                            let mode = conditional.load(Ordering::SeqCst);
                            std::thread::spawn(move || {
                                if mode != 0 && fault == Fault::Pass {
                                    serve_conditional(client, &upstream, mode);
                                } else {
                                    serve(client, &upstream, fault, cut);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop,
            percent,
            conditional,
            counts,
        }
    }

    pub fn set_conditional(&self, mode: Conditional) {
        let n = match mode {
            Conditional::Forward => 0,
            Conditional::Ignore => 1,
            Conditional::NotImplemented => 2,
            Conditional::IgnoreRange => 3,
            Conditional::OnePageListings => 4,
        };
        self.conditional.store(n, Ordering::SeqCst);
    }

    pub fn set_fault_percent(&self, percent: u32) {
        self.percent.store(percent, Ordering::SeqCst);
    }

    /// How many connections got each treatment so far.
    pub fn counts(&self) -> BTreeMap<Fault, u64> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn next(state: &AtomicU64) -> u64 {
    // xorshift64*, shared by the accept loop only.
    let mut x = state.load(Ordering::SeqCst);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.store(x, Ordering::SeqCst);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Closes with a TCP reset instead of a clean close.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads one request's head and body (Content-Length) from the client.
fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

fn serve(mut client: TcpStream, upstream: &str, fault: Fault, cut: usize) {
    match fault {
        Fault::ServerError => {
            if read_request(&mut client).is_some() {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::ResetInRequest => {
            let mut buf = vec![0u8; 1 + cut % 4096];
            let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = client.read(&mut buf);
            reset(&client);
        }
        Fault::Stall => {
            let _ = read_request(&mut client);
            std::thread::sleep(Duration::from_secs(12));
            reset(&client);
        }
        Fault::Pass | Fault::ResetInResponse | Fault::TruncatedResponse => {
            let Ok(server) = TcpStream::connect(upstream) else {
                reset(&client);
                return;
            };
            let limit = match fault {
                Fault::Pass => usize::MAX,
                _ => 1 + cut % 2048,
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            let mut sent = 0usize;
            let mut chunk = [0u8; 16 << 10];
            loop {
                let n = match s_read.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let take = n.min(limit - sent);
                if c_write.write_all(&chunk[..take]).is_err() {
                    break;
                }
                sent += take;
                if sent >= limit {
                    if fault == Fault::ResetInResponse {
                        reset(&c_write);
                    } else {
                        let _ = c_write.shutdown(Shutdown::Both);
                    }
                    reset(&s_read);
                    break;
                }
            }
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = up.join();
        }
    }
}

/// One request per connection, its conditional header treated as `mode`
/// says (1: removed, 2: answered 501), then forwarded with
/// `Connection: close` and the response copied back to the end.
fn serve_conditional(mut client: TcpStream, upstream: &str, mode: u32) {
    let Some(request) = read_request(&mut client) else {
        return;
    };
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let conditional = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("if-none-match:"));
    if mode == 2 && conditional {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            // The server behind checks no signature: requests go unsigned.
            !l.starts_with("connection:")
                && !l.starts_with("authorization:")
                && !(mode == 1 && l.starts_with("if-none-match:"))
                && !(mode == 3 && l.starts_with("range:"))
        })
        .collect();
    lines.insert(1, "Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&request[head_end..]);
    let Ok(mut server) = TcpStream::connect(upstream) else {
        reset(&client);
        return;
    };
    if server.write_all(&out).is_err() {
        reset(&client);
        return;
    }
    if mode == 4 {
        // The whole response, its listing said to be complete.
        let mut response = Vec::new();
        let _ = server.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if body.contains("<IsTruncated>true</IsTruncated>") {
                let mut body = body.replace(
                    "<IsTruncated>true</IsTruncated>",
                    "<IsTruncated>false</IsTruncated>",
                );
                if let (Some(start), Some(end)) = (
                    body.find("<NextContinuationToken>"),
                    body.find("</NextContinuationToken>"),
                ) {
                    body.replace_range(start..end + "</NextContinuationToken>".len(), "");
                }
                let head: Vec<String> = head
                    .split("\r\n")
                    .map(|l| {
                        if l.to_ascii_lowercase().starts_with("content-length:") {
                            format!("Content-Length: {}", body.len())
                        } else {
                            l.to_string()
                        }
                    })
                    .collect();
                let _ = client.write_all(format!("{}\r\n\r\n{body}", head.join("\r\n")).as_bytes());
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = client.write_all(&response);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
}
