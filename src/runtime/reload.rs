//! Reloading the configuration (SPEC §2): on SIGHUP or when the file changes on disk. The file,
//! the certificates and the trust are read again and a new [`Snapshot`] built with the same
//! metrics; any problem refuses the whole reload (every problem logged at error) and the
//! configuration in force stays. Otherwise listeners that keep their `listen` address get the
//! new runtime for their new sessions (sessions in flight keep the one they started with),
//! new addresses are bound and old ones closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{
    build, listener_infos, load_files, log_trust, log_warnings, names, spawn_expiry_warnings,
    spawn_health_checks, spawn_listener, warn_expired, Running,
};
use crate::clock::unix_now;
use crate::config::{self, Config, ListenerMode, NextHopConfig};
use crate::listener::Limits;

impl Running {
    /// The file a reload re-reads (the one this configuration came from).
    pub fn set_config_path(&mut self, path: PathBuf) {
        self.config_path = Some(path);
    }

    /// How long a reload may take to read its files and build on them (tests shorten it).
    pub fn set_reload_deadline(&mut self, deadline: Duration) {
        self.reload_deadline = deadline;
    }

    /// The file a reload re-reads, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Reload the configuration from its file; true if the new one is in force. A refusal
    /// is logged (every problem) and counted; the configuration in force stays.
    pub async fn reload(&mut self) -> bool {
        let Some(path) = self.config_path.clone() else {
            tracing::error!("reload: the configuration was not read from a file");
            return false;
        };
        match self.try_reload(&path).await {
            Ok(()) => {
                let m = &self.metrics;
                m.config_reloads_total.with_label_values(&["success"]).inc();
                m.config_generation.inc();
                m.config_last_reload_timestamp_seconds.set(unix_now());
                true
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(config = %path.display(), "reload: {p}");
                }
                tracing::error!(
                    config = %path.display(),
                    problems = problems.len(),
                    "reload refused: the configuration in force stays"
                );
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failure"])
                    .inc();
                false
            }
        }
    }

    async fn try_reload(&mut self, path: &Path) -> Result<(), Vec<String>> {
        // Reading the file, certificates, CRLs and the system's roots and building on them
        // takes a while: not on a thread that runs sessions (with one core, the only one), and
        // within a deadline, since signals wait meanwhile: a file on a stalled mount (or a
        // FIFO) refuses the reload instead of holding up a SIGTERM for ever.
        let deadline = (
            tokio::time::Instant::now() + self.reload_deadline,
            self.reload_deadline,
        );
        let read = path.to_owned();
        let mut config = within(deadline, move |_| {
            config::load(&read).map_err(|e| e.problems)
        })
        .await?;
        self.needs_restart(&mut config);
        let (metrics, current) = (self.metrics.clone(), Arc::clone(&self.snapshot));
        let (config, snapshot, unsaved) = within(deadline, move |abandoned| {
            let (store, trust, unsaved) = load_files(&config)?;
            // Files read past the deadline: building would register the series of a
            // configuration that is never in force.
            if abandoned.load(Ordering::Relaxed) {
                return Err(Vec::new());
            }
            let snapshot = build(&config, store, trust, &metrics, Some(&current))?;
            Ok::<_, Vec<String>>((config, snapshot, unsaved))
        })
        .await?;
        // Every new address is bound before anything changes: a failure leaves all as it was.
        let mut fresh = Vec::new();
        let mut problems = Vec::new();
        for (addr, rt) in &snapshot.listeners {
            if self.active.iter().any(|(a, _)| a == addr) {
                continue;
            }
            match crate::listener::bind(addr) {
                Ok(tcp) => {
                    let local = tcp.local_addr().unwrap_or(*addr);
                    fresh.push((*addr, tcp, local));
                }
                Err(e) => problems.push(format!(
                    "listener {}: cannot listen on {addr}: {e}",
                    rt.name
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let Some(alive) = self.alive_tx.clone() else {
            return Err(vec!["shutting down".to_owned()]);
        };
        // In force from here: a newly generated self-signed certificate replaces the kept one
        // (not before, so that a refused reload leaves it, and what pins it, alone). In memory
        // it serves whatever the write does; a failed write is regenerated at the next start.
        if let Some(unsaved) = unsaved {
            // Within what is left of the reload's deadline: a stalled `state_dir` holds up no
            // signal either (the write then ends, or not, on its own).
            let save = tokio::task::spawn_blocking(move || unsaved.save());
            let failed = match tokio::time::timeout_at(deadline.0, save).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(e.to_string()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("state_dir did not take it in time".to_owned()),
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "the new self-signed certificate is in use but not kept in state_dir");
            }
        }
        log_trust(&snapshot.trust);
        log_warnings(&snapshot);
        warn_expired(&snapshot);
        let shutdown = self.shutdown.subscribe();
        // Where its listeners are bound, known before any session of it starts: kept ones
        // where they were, new ones where just bound. (A listener removed still accepts
        // until its loop sees the stop below, a few milliseconds, without being counted.)
        let locals = snapshot.listeners.iter().filter_map(|(addr, _)| {
            let kept = self
                .active
                .iter()
                .find(|(a, _)| a == addr)
                .map(|(_, a)| a.local);
            kept.or_else(|| fresh.iter().find(|(a, _, _)| a == addr).map(|f| f.2))
        });
        snapshot.bound.set(locals.collect());
        let old_config = &self.snapshot.config;
        let mut old = std::mem::take(&mut self.active);
        // A listener added under the name of one moved or removed whose sessions still run
        // counts on with its limits; the counts of the ones all of whose sessions ended go.
        self.retired.retain(|(_, limits)| limits.strong_count() > 0);
        // Of the old listeners, only those this reload removes (their address is gone): one
        // kept at its address under a new name keeps its own counts, not to share them.
        let removing = old
            .iter()
            .filter(|(addr, _)| !snapshot.listeners.iter().any(|(a, _)| a == addr))
            .map(|(_, a)| (a.current.load().name.clone(), a.limits.clone()));
        let running: Vec<(String, Weak<Limits>)> =
            removing.chain(self.retired.iter().cloned()).collect();
        let counts_of = |name: &str| {
            running
                .iter()
                .filter(|(n, _)| n == name)
                .find_map(|(_, limits)| limits.upgrade())
                .unwrap_or_else(|| Limits::new(alive.clone()))
        };
        let (mut added, mut changed, mut moved) = (Vec::new(), Vec::new(), Vec::new());
        for (addr, rt) in &snapshot.listeners {
            let rt = Arc::clone(rt);
            if let Some(i) = old.iter().position(|(a, _)| a == addr) {
                let (_, mut a) = old.swap_remove(i);
                if listener_config(old_config, *addr) != listener_config(&config, *addr) {
                    changed.push(rt.name.clone());
                }
                // A pool kept by the build keeps its checks; otherwise the old pool's end
                // (their sender dropped) and the new one's start.
                if !Arc::ptr_eq(&a.current.load().pool, &rt.pool) {
                    a.checks = spawn_health_checks(&rt, shutdown.clone());
                }
                a.current.store(rt);
                self.active.push((*addr, a));
            } else if let Some(j) = fresh.iter().position(|(a, _, _)| a == addr) {
                let (_, tcp, local) = fresh.swap_remove(j);
                added.push(format!("{}@{local}", rt.name));
                let limits = counts_of(&rt.name);
                let a = spawn_listener(tcp, local, rt, &shutdown, limits);
                self.active.push((*addr, a));
            }
        }
        let mut removed = Vec::new();
        for (_, a) in old {
            let name = a.current.load().name.clone();
            // The accept loop ends and closes the socket; its sessions go on.
            let _ = a.stop.send(true);
            tracing::info!(listener = %name, addr = %a.local, "stopped listening");
            if !self.retired.iter().any(|(_, r)| r.ptr_eq(&a.limits)) {
                self.retired.push((name.clone(), a.limits.clone()));
            }
            removed.push(format!("{name}@{}", a.local));
        }
        // Counts a listener in force took up again (moved, or added back) are its own now.
        let active = &self.active;
        self.retired
            .retain(|(_, r)| !active.iter().any(|(_, a)| a.limits.ptr_eq(r)));
        for r in &removed {
            let name = r.split('@').next().unwrap_or_default();
            if let Some(a) = added.iter().find(|a| a.split('@').next() == Some(name)) {
                moved.push(format!(
                    "{r} -> {}",
                    a.split('@').nth(1).unwrap_or_default()
                ));
            }
        }
        let kept = backend_servers(&config);
        for (listener, server) in backend_servers(old_config) {
            if !kept.contains(&(listener.clone(), server.clone())) {
                self.metrics.forget_backend(&listener, &server);
            }
        }
        self.metrics.set_certificates(&snapshot.store);
        // The replaced snapshot's daily warnings end as their sender is dropped.
        self.expiry = spawn_expiry_warnings(&snapshot, &shutdown);
        self.grace = config.shutdown_grace;
        self.snapshot = Arc::new(snapshot);
        self.listeners = names(&self.active);
        self.infos.store(Arc::new(listener_infos(&self.active)));
        tracing::info!(
            generation = self.metrics.config_generation.get() + 1,
            added = %added.join(","),
            removed = %removed.join(","),
            moved = %moved.join(","),
            changed = %changed.join(","),
            "configuration reloaded"
        );
        Ok(())
    }

    /// What a reload cannot change is logged and kept as it is in `new`.
    fn needs_restart(&self, new: &mut Config) {
        let old = &self.snapshot.config;
        if new.metrics_listen != old.metrics_listen {
            tracing::warn!("reload: metrics.listen changed: needs a restart; unchanged until then");
            new.metrics_listen = old.metrics_listen;
        }
        if new.state_dir != old.state_dir {
            tracing::warn!("reload: state_dir changed: needs a restart; unchanged until then");
            new.state_dir.clone_from(&old.state_dir);
        }
        if new.log.level != old.log.level || new.log.format != old.log.format {
            tracing::warn!(
                "reload: log.level or log.format changed: needs a restart; unchanged until then"
            );
            new.log.level.clone_from(&old.log.level);
            new.log.format = old.log.format;
        }
    }
}

/// Each listener's backend servers (a relay next hop included), as `backend_up` labels them.
fn backend_servers(config: &Config) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for l in &config.listeners {
        match &l.mode {
            ListenerMode::Terminate(t) => {
                for s in &t.backend.servers {
                    all.push((l.name.clone(), s.clone()));
                }
            }
            ListenerMode::Originate(o) => {
                if let NextHopConfig::Relay { .. } = o.next_hop {
                    all.push((l.name.clone(), o.next_hop.to_string()));
                }
            }
        }
    }
    all
}

/// The configuration a listener on `addr` is built from, to tell whether a reload changed it.
fn listener_config(config: &Config, addr: SocketAddr) -> String {
    let l = config.listeners.iter().find(|l| l.listen == addr);
    format!(
        "{l:?} {} {:?} {:?} {:?} {:?}",
        config.hostname, config.log, config.certificates, config.trust, config.resolver
    )
}

/// Whether the configuration file changed on disk, polled (every second by the caller): its
/// modification time, size, inode and device, so that an editor's rename over it is seen. A
/// change counts once the file has looked the same on two polls in a row (debounced: an
/// editor still writing is not read half-way).
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// What the configuration in force was read from.
    loaded: Option<Stamp>,
    /// A change seen on the last poll, not yet stable.
    pending: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

/// How long a reload may take to read its files and build on them.
pub const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

/// `work` on a blocking thread, by `deadline`. Past it the reload is refused and the work is
/// left to end on its own (a blocking read cannot be cancelled), told so by the flag it is
/// given; what it returns then is dropped.
async fn within<T: Send + 'static>(
    (deadline, limit): (tokio::time::Instant, Duration),
    work: impl FnOnce(&AtomicBool) -> Result<T, Vec<String>> + Send + 'static,
) -> Result<T, Vec<String>> {
    let abandoned = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&abandoned);
    let running = tokio::task::spawn_blocking(move || work(&flag));
    match tokio::time::timeout_at(deadline, running).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Err(vec![format!("the reload's build failed: {e}")]),
        Err(_) => {
            abandoned.store(true, Ordering::Relaxed);
            Err(vec![format!(
                "reading and building the configuration took longer than {limit:?} (a file \
                 on a stalled mount, or a FIFO?)"
            )])
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

impl FileWatch {
    /// Watch `path` as it is now (the configuration in force was just read from it).
    pub fn new(path: &Path) -> FileWatch {
        FileWatch {
            path: path.to_owned(),
            loaded: stamp(path),
            pending: None,
        }
    }

    /// The file as it is now is the one in force (after a reload by signal).
    pub fn reset(&mut self) {
        self.loaded = stamp(&self.path);
        self.pending = None;
    }

    /// One poll: true when the file changed and has stayed the same since the last poll.
    /// A missing file (between an editor's unlink and rename) is not a change.
    pub fn poll(&mut self) -> bool {
        let Some(now) = stamp(&self.path) else {
            self.pending = None;
            return false;
        };
        if self.loaded.as_ref() == Some(&now) {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.loaded = Some(now);
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_is_stable() {
        let dir = std::env::temp_dir().join(format!("filewatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut w = FileWatch::new(&path);
        assert!(!w.poll(), "unchanged");
        std::fs::write(&path, "a: 22\n").unwrap();
        assert!(
            !w.poll(),
            "first sight of a change: wait for it to be stable"
        );
        assert!(w.poll(), "stable: reload");
        assert!(!w.poll(), "reported once");
        // An editor's rename over the file: same size, another inode.
        let tmp = dir.join("c.yaml.tmp");
        std::fs::write(&tmp, "a: 33\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(!w.poll());
        assert!(w.poll(), "a rename over the file is a change");
        std::fs::remove_file(&path).unwrap();
        assert!(!w.poll() && !w.poll(), "a missing file is not a change");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
