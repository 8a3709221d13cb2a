//! Reload under load (issue 15): the real binary in front of a recording backend while eight
//! clients send without pause, through five reloads of every kind (SIGHUP with a new policy,
//! an invalid file, an edit in place and an editor's rename over the file, both seen by the
//! file watcher, SIGHUP again). No session may fail, every message answered `250` must be at
//! the backend exactly once and byte for byte, every session must have the policy in force
//! when it began, and a session open across a reload must keep the one it began with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;
#[path = "common/load.rs"]
mod load;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{start_binary, Binary};
use common::process::free_port;
use common::{config_yaml, recording_backend};
use load::{message, message_id, Conn, Session};

/// Clients that open a new session for each message (even: plaintext, odd: STARTTLS).
const SHORT_CLIENTS: usize = 6;
/// Clients that send a message every 50 ms in STARTTLS sessions of `LONG_SPAN` each.
const LONG_CLIENTS: usize = 2;
const LONG_SPAN: Duration = Duration::from_secs(3);
/// Traffic under each configuration before the next change.
const SETTLE: Duration = Duration::from_millis(1500);

/// A configuration that came into force: its `max_message_size`, when the change that
/// brought it was made (the file written, the signal sent) and when the log said it was in
/// force. A session got it if it began after `made` and before the next one's `in_force`.
#[derive(Debug, Clone, Copy)]
struct Generation {
    size: u64,
    made: Instant,
    in_force: Instant,
}

fn config_with(template: &str, size: u64) -> String {
    template.replace(
        "max_message_size: 100000",
        &format!("max_message_size: {size}"),
    )
}

/// Wait (10 s at most) until the log holds `needle` `n` times; when it did.
async fn wait_log(b: &Binary, needle: &str, n: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if b.log().matches(needle).count() >= n {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {needle:?} ({n}) in the log:\n{}", b.log());
}

async fn metric(metrics: SocketAddr, series: &str) -> f64 {
    let text = admin_http::request(metrics, "GET", "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// A session per message until `stop`.
async fn short_client(i: usize, addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Session> {
    let tls = (i % 2 == 1).then(load::tls_config);
    let mut sessions = Vec::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("s{i}-{n}");
        let mut s = Session::new(i);
        let result = async {
            let mut c = Conn::open(addr, tls.as_ref(), &mut s).await?;
            c.transaction(&id, &mut s).await?;
            c.quit().await
        }
        .await;
        s.finish(result);
        sessions.push(s);
    }
    sessions
}

/// STARTTLS sessions of `LONG_SPAN`, each sending a message every 50 ms; before each, a
/// `MAIL` declaring one octet more than the session's first SIZE must be refused (the limit
/// the session began with, whatever is in force since), and an EHLO must offer that SIZE.
async fn long_client(i: usize, addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Session> {
    let tls = load::tls_config();
    let mut sessions = Vec::new();
    let mut n = 0u32;
    // The long clients begin their sessions at different times.
    tokio::time::sleep(LONG_SPAN * u32::try_from(i - SHORT_CLIENTS).unwrap() / 2).await;
    while !stop.load(Ordering::Relaxed) {
        let mut s = Session::new(i);
        let result = async {
            let mut c = Conn::open(addr, Some(&tls), &mut s).await?;
            let first = s.sizes[0];
            let until = Instant::now() + LONG_SPAN;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                let over = format!("MAIL FROM:<load@client.test> SIZE={}", first + 1);
                c.cmd(&over, "552").await?;
                c.cmd("RSET", "250").await?;
                n += 1;
                c.transaction(&format!("l{i}-{n}"), &mut s).await?;
                c.ehlo(&mut s).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.quit().await
        }
        .await;
        s.finish(result);
        sessions.push(s);
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_session_and_loses_no_message() {
    let t0 = Instant::now();
    let (backend, rec) = recording_backend().await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "metrics:\n  listen: {metrics}\n{}",
        config_yaml(backend, "starttls", "      max_message_size: 100000\n")
    );
    let b = start_binary(&yaml);
    let addr = b.addr("inbound").unwrap();
    // As written by start_binary (port and state_dir filled in).
    let template = b.config();
    let mut gens = vec![Generation {
        size: 100_000,
        made: t0,
        in_force: t0,
    }];

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..SHORT_CLIENTS + LONG_CLIENTS {
        let stop = Arc::clone(&stop);
        clients.push(if i < SHORT_CLIENTS {
            tokio::spawn(short_client(i, addr, stop))
        } else {
            tokio::spawn(long_client(i, addr, stop))
        });
    }
    tokio::time::sleep(SETTLE).await;

    // 1. SIGHUP with a new limit.
    std::fs::write(b.config_path(), config_with(&template, 110_000)).unwrap();
    let made = Instant::now();
    b.signal("HUP");
    let in_force = wait_log(&b, "configuration reloaded", 1).await;
    gens.push(Generation {
        size: 110_000,
        made,
        in_force,
    });
    tokio::time::sleep(SETTLE).await;

    // 2. SIGHUP with an invalid file: refused, 110000 stays.
    let invalid = config_with(&template, 150_000).replace(
        "max_message_size: 150000",
        "max_message_size: 150000\n      no_such_key: 1",
    );
    std::fs::write(b.config_path(), invalid).unwrap();
    b.signal("HUP");
    wait_log(&b, "reload refused", 1).await;
    tokio::time::sleep(SETTLE).await;

    // 3. Edited in place (same inode), no signal: the watcher.
    std::fs::write(b.config_path(), config_with(&template, 120_000)).unwrap();
    let made = Instant::now();
    let in_force = wait_log(&b, "configuration reloaded", 2).await;
    let watched_in_place = in_force - made;
    gens.push(Generation {
        size: 120_000,
        made,
        in_force,
    });
    tokio::time::sleep(SETTLE).await;

    // 4. An editor's save: a new file renamed over the old one, no signal: the watcher.
    let tmp = b.config_path().with_extension("yaml.swp");
    std::fs::write(&tmp, config_with(&template, 130_000)).unwrap();
    std::fs::rename(&tmp, b.config_path()).unwrap();
    let made = Instant::now();
    let in_force = wait_log(&b, "configuration reloaded", 3).await;
    let watched_rename = in_force - made;
    gens.push(Generation {
        size: 130_000,
        made,
        in_force,
    });
    tokio::time::sleep(SETTLE).await;

    // 5. SIGHUP again.
    std::fs::write(b.config_path(), config_with(&template, 140_000)).unwrap();
    let made = Instant::now();
    b.signal("HUP");
    let in_force = wait_log(&b, "configuration reloaded", 4).await;
    gens.push(Generation {
        size: 140_000,
        made,
        in_force,
    });
    tokio::time::sleep(SETTLE).await;

    stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    for c in clients {
        sessions.extend(c.await.unwrap());
    }
    eprintln!(
        "{} sessions, {} messages in {:?}; the watcher took {watched_in_place:?} (in place) \
         and {watched_rename:?} (rename)",
        sessions.len(),
        sessions.iter().map(|s| s.accepted.len()).sum::<usize>(),
        t0.elapsed()
    );

    // No session failed.
    let failed: Vec<&Session> = sessions.iter().filter(|s| s.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} sessions failed, the first ones: {:#?}",
        failed.len(),
        sessions.len(),
        &failed[..failed.len().min(5)]
    );

    // Every message answered 250 is at the backend, once, byte for byte; nothing else is.
    let mut at_backend: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for data in rec.messages() {
        let id = message_id(&data).expect("a Message-ID of ours");
        at_backend.entry(id).or_default().push(data);
    }
    let accepted: Vec<&String> = sessions.iter().flat_map(|s| &s.accepted).collect();
    for id in &accepted {
        let copies = at_backend.get(*id).map_or(0, Vec::len);
        assert_eq!(copies, 1, "message {id} at the backend {copies} times");
        assert_eq!(
            at_backend[*id][0],
            message(id),
            "message {id} altered on the way"
        );
    }
    assert_eq!(
        at_backend.len(),
        accepted.len(),
        "messages at the backend that no client had a 250 for"
    );

    check_policies(&sessions, &gens);

    // The invalid file was refused with its problem named; each reload came the way it
    // was made; the counters agree.
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("no_such_key")),
        "the problem named at error:\n{log}"
    );
    assert_eq!(log.matches("SIGHUP: reloading").count(), 3, "{log}");
    assert_eq!(
        log.matches("the configuration file changed: reloading")
            .count(),
        2,
        "the watcher reloads the edit and the rename, nothing else:\n{log}"
    );
    let reloads =
        |result: &str| format!("smtp_sidecar_config_reloads_total{{result=\"{result}\"}}");
    assert_eq!(metric(metrics, &reloads("success")).await, 4.0);
    assert_eq!(metric(metrics, &reloads("failure")).await, 1.0);
    assert_eq!(metric(metrics, "smtp_sidecar_config_generation").await, 5.0);
    for (what, took) in [("in place", watched_in_place), ("rename", watched_rename)] {
        assert!(took < Duration::from_secs(5), "watcher ({what}): {took:?}");
    }
}

/// Each session has the limit of a configuration in force at some moment between its
/// connect and its greeting (the listener reads its configuration when it accepts), and
/// keeps it to its end; every configuration was seen by sessions begun once it was in force;
/// some sessions kept theirs across a reload.
fn check_policies(sessions: &[Session], gens: &[Generation]) {
    let window = |k: usize| {
        let until = gens.get(k + 1).map(|g| g.in_force);
        (gens[k].made, until)
    };
    for s in sessions {
        let greeted = s.greeted.unwrap();
        let first = s.sizes[0];
        let possible: Vec<u64> = (0..gens.len())
            .filter(|&k| {
                let (from, until) = window(k);
                from <= greeted && until.is_none_or(|u| s.began <= u)
            })
            .map(|k| gens[k].size)
            .collect();
        assert!(
            possible.contains(&first),
            "client {} began {:?} after the start and was offered SIZE {first}; in force \
             then: {possible:?}",
            s.client,
            s.began - gens[0].made,
        );
        assert!(
            s.sizes.iter().all(|&size| size == first),
            "a session changed its limit: {:?}",
            s.sizes
        );
    }
    for (k, g) in gens.iter().enumerate() {
        let (_, until) = window(k);
        let under = sessions
            .iter()
            .filter(|s| s.began >= g.in_force && until.is_none_or(|u| s.greeted.unwrap() < u))
            .count();
        assert!(under > 0, "no session began under SIZE {}", g.size);
    }
    // A long session that began under configuration k and went on after k + 1 came into
    // force, sending messages (checked above: its limit stayed).
    let across = sessions
        .iter()
        .filter(|s| s.sizes.len() > 2)
        .filter(|s| {
            let k = gens.iter().rposition(|g| g.size == s.sizes[0]).unwrap();
            gens.get(k + 1).is_some_and(|next| s.ended > next.in_force)
        })
        .count();
    assert!(across > 0, "no session stayed open across a reload");
    eprintln!("{across} sessions kept their limit across a reload");
}
