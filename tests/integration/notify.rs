//! Notifications against a local HTTP server the test runs: the JSON
//! event of a backup that succeeded and of an expire that failed, the
//! healthchecks.io-style pings, a status level change, and a server that
//! never answers, which costs a bounded wait and never the exit status.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pitr::{Backend, Setup};

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: String,
}

/// A webhook receiver: records every request; answers 200, or never.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(answer: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let request = loop {
                        let Ok(n) = stream.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .and_then(|v| v.trim().parse().ok())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let mut first = head.lines().next().unwrap_or("").split(' ');
                            break Request {
                                method: first.next().unwrap_or("").to_string(),
                                path: first.next().unwrap_or("").to_string(),
                                body: body.to_string(),
                            };
                        }
                    };
                    log.lock().unwrap().push(request);
                    if answer {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    } else {
                        std::thread::sleep(Duration::from_secs(30));
                    }
                });
            }
        });
        Receiver { url, seen }
    }

    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn event(requests: &[Request], path: &str) -> serde_json::Value {
    let r = requests
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no request to {path}: {requests:?}"));
    assert_eq!(r.method, "POST");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn events_and_pings_tell_what_ended_and_never_change_the_result() {
    let server = Receiver::start(true);
    // A second repository, for the event of a copy.
    let offsite = crate::harness::TestDir::new("notify-offsite");
    crate::harness::give_to_postgres(offsite.path());
    let setup = Setup::with_config(
        "notify",
        Backend::Local,
        Some(&format!(
            "notify_timeout_secs = 2\n[repo2]\nrepo = \"{}\"\n",
            offsite.path().join("repo2").display()
        )),
    );
    let p = &setup.primary;
    let hook = format!("{}/hook/secret-part", server.url);
    let ping = format!("{}/ping/uuid", server.url);
    let notify = [
        "--notify-url",
        hook.as_str(),
        "--notify-ping-url",
        ping.as_str(),
    ];

    // A backup that succeeds.
    let conninfo = Setup::conninfo(p);
    let mut args = notify.to_vec();
    args.extend([
        "backup",
        "--pgdata",
        p.data.to_str().unwrap(),
        "--dbname",
        &conninfo,
        "--no-progress",
    ]);
    let out = setup.walvault(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = server.take();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert!(
        paths.contains(&"/ping/uuid/start") && paths.contains(&"/ping/uuid"),
        "{paths:?}"
    );
    let e = event(&seen, "/hook/secret-part");
    assert_eq!(
        (e["command"].as_str(), e["result"].as_str()),
        (Some("backup"), Some("success")),
        "{e}"
    );
    assert!(e["size_bytes"].as_u64().unwrap() > 0, "{e}");
    assert!(e["duration_secs"].as_f64().unwrap() > 0.0, "{e}");
    let repo = setup.local_repo.clone().unwrap();
    assert!(
        e["repository"]
            .as_str()
            .unwrap()
            .contains(repo.to_str().unwrap()),
        "{e}"
    );
    assert!(!e["host"].as_str().unwrap().is_empty(), "{e}");
    assert!(
        e["text"]
            .as_str()
            .unwrap()
            .starts_with("walvault backup succeeded on "),
        "{e}"
    );

    // A verify and a copy that succeed.
    for (command, args) in [
        ("verify", vec!["verify"]),
        ("copy", vec!["copy", "--to", "repo2"]),
    ] {
        let mut all = notify.to_vec();
        all.extend(args);
        let out = setup.walvault(&all);
        assert_eq!(out.code, 0, "{command}: {}{}", out.stdout, out.stderr);
        let seen = server.take();
        let e = event(&seen, "/hook/secret-part");
        assert_eq!(
            (e["command"].as_str(), e["result"].as_str()),
            (Some(command), Some("success")),
            "{e}"
        );
        assert!(seen.iter().any(|r| r.path == "/ping/uuid"), "{seen:?}");
    }

    // An expire that fails (no policy): the event says why, the ping
    // goes to /fail, and the exit status is expire's own.
    let mut args = notify.to_vec();
    args.push("expire");
    let out = setup.walvault(&args);
    assert_ne!(out.code, 0);
    let code = out.code;
    let seen = server.take();
    let e = event(&seen, "/hook/secret-part");
    assert_eq!(e["result"], "failure", "{e}");
    assert!(e["message"].as_str().unwrap().contains("keep"), "{e}");
    assert!(seen.iter().any(|r| r.path == "/ping/uuid/fail"), "{seen:?}");
    let out = setup.walvault(&["expire"]);
    assert_eq!(out.code, code, "the same exit status without notifications");

    // status: the first run records the level; a change is told once.
    let mut args = notify.to_vec();
    args.extend(["status", "--verify-stale-days", "0"]);
    let out = setup.walvault(&args);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(server.take().is_empty(), "no change, no event");
    let mut warn = args.clone();
    warn.extend(["--backup-warn-hours", "0"]);
    std::thread::sleep(Duration::from_millis(1100));
    let out = setup.walvault(&warn);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let seen = server.take();
    let e = event(&seen, "/hook/secret-part");
    assert_eq!(
        (e["command"].as_str(), e["result"].as_str()),
        (Some("status"), Some("WARNING")),
        "{e}"
    );
    assert!(
        e["text"].as_str().unwrap().contains("GOOD -> WARNING"),
        "{e}"
    );
    assert!(seen.iter().any(|r| r.path == "/ping/uuid/fail"), "{seen:?}");
    let out = setup.walvault(&warn);
    assert_eq!(out.code, 1);
    assert!(server.take().is_empty(), "told once");

    // A receiver that never answers: the command waits at most the
    // timeout (2 s here) per notification, keeps its exit status, and
    // says so without the URL's secret path.
    let silent = Receiver::start(false);
    let hook = format!("{}/hook/secret-part", silent.url);
    let started = Instant::now();
    let out = setup.walvault(&["--notify-url", &hook, "expire", "--keep-full", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("notification not sent"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret-part"), "{}", out.stderr);
    assert_eq!(silent.take().len(), 1);
}
