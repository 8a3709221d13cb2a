//! Packaging (issue 15): the Dockerfile, the systemd unit (deploy/systemd) and the Kubernetes
//! manifests (deploy/kubernetes) must agree with config.yaml.example, with each other and with
//! the binary: ports, probe, health check and scrape paths, the configuration file's path, the
//! user, the stop timing, the PROXY protocol on both sides of a load balancer.
//!
//! No Docker engine or Kubernetes cluster runs here or in CI, so this is what checks them: the
//! files are parsed, the configurations the ConfigMaps embed go through the real binary's
//! `check`, and one of them runs, laid out as the kubelet lays out its projected volume, to
//! answer the probes and the Dockerfile's HEALTHCHECK command and to reload a rotated
//! certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "common/process.rs"]
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process::{free_port, Guard, TempDir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-sidecar");

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// --- config.yaml ---------------------------------------------------------------------------

/// "host:port" (IPv6 in brackets) split at the last colon.
fn host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?}: no port"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("{addr:?}: bad port"));
    (host.to_owned(), port)
}

/// An address reachable only from inside the host, container or pod.
fn loopback(host: &str) -> bool {
    host.starts_with("127.") || host == "[::1]" || host == "localhost"
}

/// A duration of the configuration ("30s", "5m", "500ms", "1h") or of systemd ("45", "45s")
/// in whole seconds, rounded up.
fn seconds(text: &str) -> u64 {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n.parse().unwrap();
    match unit {
        "ms" => n.div_ceil(1000),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => panic!("duration {text:?}"),
    }
}

/// What the packaging needs to know of a configuration file.
#[derive(Debug)]
struct SidecarConfig {
    /// metrics.listen
    metrics: (String, u16),
    /// Each listener: its listen address, whether it expects a PROXY header.
    listeners: Vec<((String, u16), bool)>,
    state_dir: String,
    /// shutdown_grace in seconds (default 30 s, SPEC §2).
    grace: u64,
    /// Every certificate and key path of `certificates`.
    files: Vec<String>,
}

impl SidecarConfig {
    fn parse(yaml: &str) -> SidecarConfig {
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        let str_at = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let listeners = v["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|l| {
                let listen = l["listen"].as_str().expect("listen");
                (host_port(listen), l["proxy_protocol"] == Value::Bool(true))
            })
            .collect();
        let files = v["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| [c["cert"].as_str(), c["key"].as_str()])
            .map(|p| p.expect("cert and key").to_owned())
            .collect();
        SidecarConfig {
            metrics: host_port(&str_at("/metrics/listen").expect("metrics.listen")),
            listeners,
            state_dir: str_at("/state_dir").unwrap_or_else(|| "/var/lib/smtp-sidecar".into()),
            grace: str_at("/shutdown_grace").map_or(30, |d| seconds(&d)),
            files,
        }
    }

    /// The ports of the listeners that accept from outside (not on loopback).
    fn public_ports(&self) -> BTreeSet<u16> {
        self.listeners
            .iter()
            .filter(|((host, _), _)| !loopback(host))
            .map(|((_, port), _)| *port)
            .collect()
    }

    fn proxy_protocol_on(&self, port: u16) -> bool {
        self.listeners
            .iter()
            .any(|((_, p), proxy)| *p == port && *proxy)
    }
}

fn example() -> SidecarConfig {
    SidecarConfig::parse(&repo_file("config.yaml.example"))
}

// --- Dockerfile ------------------------------------------------------------------------------

/// The instructions of the Dockerfile, continuation lines joined and comments dropped, by
/// stage (each FROM starts one).
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = repo_file("Dockerfile");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let instruction = std::mem::take(&mut pending);
        let (word, rest) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((&instruction, ""));
        let word = word.to_ascii_uppercase();
        if word == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("FROM first")
            .push((word, rest.trim().to_owned()));
    }
    stages
}

/// What the runtime image (the last stage) says.
#[derive(Debug)]
struct Image {
    expose: BTreeSet<u16>,
    /// USER as uid and gid.
    user: (u32, u32),
    /// The HEALTHCHECK command (exec form).
    healthcheck: Vec<String>,
    /// ENTRYPOINT followed by CMD.
    argv: Vec<String>,
    /// The RUN steps of the stages before.
    build_steps: Vec<String>,
    /// The images each stage is FROM.
    bases: Vec<String>,
}

fn json_argv(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not exec form {text:?}: {e}"))
}

fn image() -> Image {
    let stages = dockerfile_stages();
    let (runtime, builders) = stages.split_last().expect("a stage");
    let one = |name: &str| -> &str {
        let found: Vec<&str> = runtime
            .iter()
            .filter(|(w, _)| w == name)
            .map(|(_, rest)| rest.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one {name} in the runtime stage: {found:?}");
        found[0]
    };
    let expose = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let user = one("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let user = (
        uid.parse()
            .unwrap_or_else(|_| panic!("USER {user:?}: numeric, so runAsNonRoot can check it")),
        gid.parse()
            .unwrap_or_else(|_| panic!("USER {user:?}: numeric group")),
    );
    let (_, cmd) = one("HEALTHCHECK")
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD");
    let mut argv = json_argv(one("ENTRYPOINT"));
    argv.extend(json_argv(one("CMD")));
    Image {
        expose,
        user,
        healthcheck: json_argv(cmd.trim()),
        argv,
        build_steps: builders
            .iter()
            .flatten()
            .filter(|(w, _)| w == "RUN")
            .map(|(_, rest)| rest.clone())
            .collect(),
        bases: stages.iter().map(|s| s[0].1.clone()).collect(),
    }
}

/// The value after `-c` in a command line.
fn config_arg<'a>(argv: impl IntoIterator<Item = &'a str>) -> String {
    let argv: Vec<&str> = argv.into_iter().collect();
    let i = argv
        .iter()
        .position(|a| *a == "-c" || *a == "--config")
        .unwrap_or_else(|| panic!("no -c in {argv:?}"));
    argv[i + 1].to_owned()
}

/// The port and path the HEALTHCHECK command asks, from its `/dev/tcp/HOST/PORT` and `GET PATH`.
fn healthcheck_target(argv: &[String]) -> (u16, String) {
    let script = argv.join(" ");
    let tcp = script
        .split("/dev/tcp/")
        .nth(1)
        .expect("/dev/tcp/HOST/PORT");
    let port = tcp
        .split('/')
        .nth(1)
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let path = script
        .split("GET ")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .expect("GET PATH");
    (port, path.to_owned())
}

#[test]
fn the_dockerfile_agrees_with_the_example() {
    let image = image();
    let example = example();
    assert!(
        image.bases.len() >= 2,
        "multi-stage: a build stage and a runtime stage: {:?}",
        image.bases
    );
    assert!(
        image
            .build_steps
            .iter()
            .any(|s| s.contains("cargo build --release --locked")),
        "the binary is built from Cargo.lock as it is: {:?}",
        image.build_steps
    );
    assert_ne!(image.user.0, 0, "USER: not root");
    let mut ports = example.public_ports();
    ports.insert(example.metrics.1);
    assert_eq!(
        image.expose, ports,
        "EXPOSE = the example's listener ports and metrics port"
    );
    let (port, path) = healthcheck_target(&image.healthcheck);
    assert_eq!(port, example.metrics.1, "HEALTHCHECK asks the metrics port");
    assert_eq!(path, "/healthz");
    assert_eq!(
        image.argv[1..3],
        ["run", "-c"],
        "the image runs `run -c FILE`: {:?}",
        image.argv
    );
    assert_eq!(
        config_arg(image.argv.iter().map(String::as_str)),
        unit_config_path(),
        "the same configuration file as the systemd unit"
    );
}

// --- systemd ---------------------------------------------------------------------------------

const UNIT: &str = "deploy/systemd/smtp-sidecar.service";

/// `Section.Key` → every value given, in order.
fn unit() -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in repo_file(UNIT).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=value");
        keys.entry(format!("{section}.{}", key.trim()))
            .or_default()
            .push(value.trim().to_owned());
    }
    keys
}

fn unit_value(keys: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    let values = keys.get(key).unwrap_or_else(|| panic!("{UNIT}: no {key}"));
    values.last().unwrap().clone()
}

fn unit_config_path() -> String {
    let exec = unit_value(&unit(), "Service.ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[1], "run", "ExecStart runs `run`: {exec}");
    config_arg(argv)
}

#[test]
fn the_systemd_unit_is_hardened_and_agrees_with_the_example() {
    let keys = unit();
    let example = example();
    for (key, want) in [
        ("Service.ProtectSystem", "strict"),
        ("Service.NoNewPrivileges", "yes"),
        ("Service.ProtectHome", "yes"),
        ("Service.PrivateTmp", "yes"),
        ("Service.CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        // Port 25 without root, and no other capability.
        ("Service.AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ] {
        assert_eq!(unit_value(&keys, key), want, "{key}");
    }
    assert_ne!(unit_value(&keys, "Service.User"), "root");
    // ProtectSystem=strict leaves only StateDirectory writable: it must be state_dir.
    assert_eq!(
        format!("/var/lib/{}", unit_value(&keys, "Service.StateDirectory")),
        example.state_dir,
        "StateDirectory = the example's state_dir"
    );
    let reload = unit_value(&keys, "Service.ExecReload");
    assert!(
        reload.ends_with("kill -HUP $MAINPID"),
        "ExecReload sends SIGHUP: {reload}"
    );
    if let Some(signal) = keys.get("Service.KillSignal") {
        assert_eq!(signal.last().unwrap(), "SIGTERM", "SIGTERM drains");
    }
    let stop = seconds(&unit_value(&keys, "Service.TimeoutStopSec").replace("sec", "s"));
    assert!(
        stop > example.grace,
        "TimeoutStopSec {stop} s must outlast shutdown_grace {} s, or systemd kills the drain",
        example.grace
    );
    let exec = unit_value(&keys, "Service.ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/smtp-sidecar "),
        "the installed binary, as the Dockerfile installs it: {exec}"
    );
    assert_eq!(
        image().argv[0],
        "/usr/local/bin/smtp-sidecar",
        "the image's binary is where the unit expects it"
    );
}

/// `systemd-analyze verify` on the unit (it needs the binary to exist: the copy checked names
/// the one cargo built). scripts/test.sh installs Debian's `systemd` for it.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze not found: install the Debian package systemd");
    };
    assert!(version.status.success());
    let dir = TempDir::new("unit");
    let unit = repo_file(UNIT).replace("/usr/local/bin/smtp-sidecar", BIN);
    let path = dir.0.join("smtp-sidecar.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // Warnings about this unit (unknown keys, bad values) come with success too.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("smtp-sidecar.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:?}");
}

// --- Kubernetes ------------------------------------------------------------------------------

/// Every file of deploy/kubernetes with its documents.
fn manifests() -> Vec<(String, Vec<Value>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let docs: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, docs)
        })
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &'static str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

fn named<'a>(docs: &'a [Value], kind: &'static str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the same file"))
}

fn string(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn number(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Whether `selector` (matchLabels, or a Service's plain map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.get("matchLabels").unwrap_or(selector);
    let map = selector.as_object().expect("a selector");
    !map.is_empty() && map.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The smtp-sidecar container of a pod spec: the one running our image.
fn sidecar_container(pod: &Value) -> &Value {
    let found: Vec<&Value> = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter(|c| {
            let image = string(&c["image"]);
            let repo = image.rsplit('/').next().unwrap();
            repo.split(':').next() == Some("smtp-sidecar")
        })
        .collect();
    assert_eq!(found.len(), 1, "one smtp-sidecar container");
    found[0]
}

/// A container port, by number or by name.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = string(port);
    let p = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(number(&p["containerPort"])).unwrap()
}

/// The seconds of an `exec: sleep N` preStop hook (or the native `sleep` action); 0 without.
fn pre_stop_sleep(container: &Value) -> u64 {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(s) = hook["sleep"]["seconds"].as_u64() {
        return s;
    }
    match hook["exec"]["command"].as_array() {
        Some(argv) => {
            assert_eq!(argv[0], "sleep", "a preStop that waits: {argv:?}");
            string(&argv[1]).parse().unwrap()
        }
        None => 0,
    }
}

/// A file mode as Kubernetes reads it: its YAML (1.1) takes `0440` as octal, where
/// serde-saphyr (YAML 1.2) reads the digits as a decimal number. A mode written with a leading
/// 0 in the file is read as octal here too.
fn file_mode(v: &Value, raw: &str) -> u32 {
    let n = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(n.fract() == 0.0 && n >= 0.0, "mode {n}");
    let digits = format!("{n:.0}");
    if raw.contains(&format!("defaultMode: 0{digits}")) {
        u32::from_str_radix(&digits, 8).unwrap_or_else(|_| panic!("mode 0{digits}"))
    } else {
        digits.parse().unwrap()
    }
}

/// Where a file of the container comes from: the volume mounted at its directory, and the
/// ConfigMap or Secret item that volume shows under its name.
#[derive(Debug, PartialEq)]
enum Source {
    ConfigMap { name: String, key: String },
    Secret { name: String, key: String },
}

/// The source of `path` in `container`, and the volume's file mode (0644 by default).
fn file_source(pod: &Value, container: &Value, path: &str, raw: &str) -> (Source, u32) {
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir} for {path}"));
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    let (sources, mode): (Vec<Value>, &Value) = if let Some(p) = volume.get("projected") {
        (p["sources"].as_array().unwrap().clone(), &p["defaultMode"])
    } else if let Some(c) = volume.get("configMap") {
        (
            vec![serde_json::json!({ "configMap": c })],
            &c["defaultMode"],
        )
    } else if let Some(s) = volume.get("secret") {
        let mut s = s.clone();
        s["name"] = s["secretName"].clone();
        (
            vec![serde_json::json!({ "secret": s })],
            &volume["secret"]["defaultMode"],
        )
    } else {
        panic!("volume {volume} for {path}: not from a ConfigMap or Secret")
    };
    let mode = if mode.is_null() {
        0o644
    } else {
        file_mode(mode, raw)
    };
    for source in sources {
        for (kind, v) in [
            ("configMap", &source["configMap"]),
            ("secret", &source["secret"]),
        ] {
            let Some(items) = v["items"].as_array() else {
                continue;
            };
            if let Some(item) = items.iter().find(|i| i["path"] == file) {
                let (name, key) = (string(&v["name"]), string(&item["key"]));
                let source = if kind == "configMap" {
                    Source::ConfigMap { name, key }
                } else {
                    Source::Secret { name, key }
                };
                return (source, mode);
            }
        }
    }
    panic!(
        "{path}: no ConfigMap or Secret item {file} in volume {}",
        volume["name"]
    )
}

/// One Deployment running the sidecar, with what the checks need.
struct Deployment<'a> {
    file: String,
    raw: String,
    docs: &'a [Value],
    deployment: &'a Value,
    /// The configuration the container runs with, from its ConfigMap.
    config_text: String,
    config: SidecarConfig,
}

impl Deployment<'_> {
    fn pod(&self) -> &Value {
        &self.deployment["spec"]["template"]["spec"]
    }
    fn container(&self) -> &Value {
        sidecar_container(self.pod())
    }
    fn labels(&self) -> &Value {
        &self.deployment["spec"]["template"]["metadata"]["labels"]
    }
}

fn deployments(manifests: &[(String, Vec<Value>)]) -> Vec<Deployment<'_>> {
    let mut found = Vec::new();
    for (file, docs) in manifests {
        let raw = repo_file(&format!("deploy/kubernetes/{file}"));
        for deployment in of_kind(docs, "Deployment") {
            let pod = &deployment["spec"]["template"]["spec"];
            let container = sidecar_container(pod);
            let args: Vec<&str> = container["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(args[0], "run", "{file}: the container runs `run`");
            let path = config_arg(args);
            let (source, _) = file_source(pod, container, &path, &raw);
            let Source::ConfigMap { name, key } = source else {
                panic!("{file}: {path} is not from a ConfigMap");
            };
            let config_text = string(&named(docs, "ConfigMap", &name)["data"][key.as_str()]);
            let config = SidecarConfig::parse(&config_text);
            found.push(Deployment {
                file: file.clone(),
                raw: raw.clone(),
                docs,
                deployment,
                config_text,
                config,
            });
        }
    }
    found
}

#[test]
fn the_kubernetes_manifests_agree_with_the_image_and_the_example() {
    let manifests = manifests();
    let deployments = deployments(&manifests);
    assert_eq!(
        deployments.len(),
        manifests.len(),
        "one Deployment of the sidecar per file"
    );
    let image = image();
    let example = example();
    for d in &deployments {
        let file = &d.file;
        let c = d.container();
        let pod = d.pod();
        let config = &d.config;

        // The configuration file is where the image and the systemd unit read it.
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(config_arg(args), unit_config_path(), "{file}: config path");

        // The admin endpoint: reachable from outside the container, on the example's port.
        let (metrics_host, metrics_port) = config.metrics.clone();
        assert!(
            metrics_host == "0.0.0.0" || metrics_host == "[::]",
            "{file}: metrics.listen on {metrics_host}: probes and scrapes come from outside"
        );
        assert_eq!(metrics_port, example.metrics.1, "{file}: metrics port");
        assert!(image.expose.contains(&metrics_port));

        // Container ports: exactly the listeners reachable from outside, and the admin port.
        let declared: BTreeSet<u16> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| u16::try_from(number(&p["containerPort"])).unwrap())
            .collect();
        let mut wanted = config.public_ports();
        wanted.insert(metrics_port);
        assert_eq!(
            declared, wanted,
            "{file}: container ports = listeners + metrics"
        );
        assert!(
            wanted.is_subset(&image.expose),
            "{file}: the image EXPOSEs {:?}, the pod listens on {wanted:?}",
            image.expose
        );

        // Probes on the admin endpoint's paths.
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{file}: {probe} path");
            assert_eq!(
                container_port(c, &get["port"]),
                metrics_port,
                "{file}: {probe} port"
            );
        }

        // Prometheus scrape annotations.
        let annotations = &d.deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{file}");
        assert_eq!(
            annotations["prometheus.io/port"],
            metrics_port.to_string().as_str(),
            "{file}: scrape port"
        );
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{file}");

        // The user of the image, never root, unable to gain privileges.
        let security = &c["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{file}");
        assert_eq!(
            (
                number(&security["runAsUser"]),
                number(&security["runAsGroup"])
            ),
            (u64::from(image.user.0), u64::from(image.user.1)),
            "{file}: the image's user"
        );
        assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");

        // That user may bind the listeners' ports under 1024.
        if let Some(lowest) = config.public_ports().first().copied().filter(|p| *p < 1024) {
            let start = pod["securityContext"]["sysctls"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "net.ipv4.ip_unprivileged_port_start")
                .map(|s| string(&s["value"]).parse::<u16>().unwrap());
            assert!(
                start.is_some_and(|s| s <= lowest),
                "{file}: an unprivileged user binds port {lowest} only with \
                 net.ipv4.ip_unprivileged_port_start <= {lowest} ({start:?})"
            );
        }

        // state_dir is writable on the read-only root file system.
        let state = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == config.state_dir.as_str())
            .unwrap_or_else(|| panic!("{file}: nothing mounted at state_dir"));
        assert_ne!(state["readOnly"], true, "{file}: state_dir writable");

        // Certificates from the Secret, readable by the sidecar's user.
        assert!(
            !config.files.is_empty(),
            "{file}: replicas share the Secret's certificate"
        );
        for path in &config.files {
            let (source, mode) = file_source(pod, c, path, &d.raw);
            assert!(
                matches!(source, Source::Secret { .. }),
                "{file}: {path} from a Secret: {source:?}"
            );
            let readable = mode & 0o004 != 0
                || (mode & 0o040 != 0
                    && pod["securityContext"]["fsGroup"].as_u64() == Some(u64::from(image.user.1)));
            assert!(
                readable,
                "{file}: {path} (mode {mode:o}) unreadable by uid {}",
                image.user.0
            );
        }

        // Stopping: preStop, then SIGTERM and shutdown_grace, all within the grace period.
        let period = number(&pod["terminationGracePeriodSeconds"]);
        let pre_stop = pre_stop_sleep(c);
        let drain = pre_stop + config.grace;
        assert!(
            period > drain,
            "{file}: terminationGracePeriodSeconds {period} must outlast preStop {pre_stop} s + \
             shutdown_grace {} s",
            config.grace
        );
        // Any other container (the legacy MTA) stays up until the sidecar has drained.
        for other in pod["containers"].as_array().unwrap() {
            if other["name"] == c["name"] {
                continue;
            }
            let wait = pre_stop_sleep(other);
            assert!(
                wait >= drain && wait < period,
                "{file}: container {} must outlive the sidecar's drain ({drain} s) within the \
                 grace period ({period} s): preStop {wait} s",
                other["name"]
            );
        }

        services_agree(d, metrics_port);
        autoscaling_agrees(d);
    }
    // Nothing in a file points past its sidecar: each Service, budget and autoscaler is one
    // of a Deployment checked above.
    for (file, docs) in &manifests {
        let ours: Vec<&Deployment<'_>> = deployments.iter().filter(|d| d.file == *file).collect();
        let selected = |selector: &Value| ours.iter().any(|d| selects(selector, d.labels()));
        for s in of_kind(docs, "Service") {
            assert!(
                selected(&s["spec"]["selector"]),
                "{file}: Service selects no sidecar pod"
            );
        }
        for p in of_kind(docs, "PodDisruptionBudget") {
            assert!(
                selected(&p["spec"]["selector"]),
                "{file}: budget for no sidecar pod"
            );
        }
        for h in of_kind(docs, "HorizontalPodAutoscaler") {
            let target = &h["spec"]["scaleTargetRef"]["name"];
            assert!(
                ours.iter()
                    .any(|d| d.deployment["metadata"]["name"] == *target),
                "{file}: autoscaler of {target}, no Deployment of this file"
            );
        }
    }
    let kinds: BTreeSet<String> = manifests
        .iter()
        .flat_map(|(_, docs)| docs.iter().map(|d| string(&d["kind"])))
        .collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
}

/// Each Service in front of the sidecar sends to its listeners, with the PROXY protocol on
/// both sides or on neither, and a load balancer health check on the admin endpoint.
fn services_agree(d: &Deployment<'_>, metrics_port: u16) {
    let file = &d.file;
    let services: Vec<&Value> = of_kind(d.docs, "Service")
        .filter(|s| selects(&s["spec"]["selector"], d.labels()))
        .collect();
    assert!(!services.is_empty(), "{file}: no Service selects the pods");
    for s in services {
        let annotations = s["metadata"]["annotations"].as_object();
        let annotation = |suffix: &str| {
            annotations.and_then(|a| {
                a.iter()
                    .find(|(k, _)| k.ends_with(suffix))
                    .map(|(_, v)| string(v))
            })
        };
        let sends_proxy = annotations.is_some_and(|a| {
            a.keys().any(|k| {
                let k = k.replace(['-', '_'], "");
                k.contains("proxyprotocol")
            })
        });
        for port in s["spec"]["ports"].as_array().expect("ports") {
            let target = container_port(d.container(), &port["targetPort"]);
            assert!(
                d.config.public_ports().contains(&target),
                "{file}: Service port {} sends to {target}, where no listener is",
                port["port"]
            );
            assert_eq!(
                d.config.proxy_protocol_on(target),
                sends_proxy,
                "{file}: the load balancer sends PROXY headers ({sends_proxy}) iff the listener \
                 on {target} expects them"
            );
        }
        if let Some(port) = annotation("healthcheck-port") {
            assert_eq!(
                port,
                metrics_port.to_string(),
                "{file}: LB health check port"
            );
        }
        if let Some(path) = annotation("healthcheck-path") {
            assert!(
                path == "/readyz" || path == "/healthz",
                "{file}: LB health check path {path}"
            );
        }
    }
}

/// An autoscaled Deployment: replicas left to the autoscaler, what it measures requested, and
/// a disruption budget that lets a drain proceed.
fn autoscaling_agrees(d: &Deployment<'_>) {
    let file = &d.file;
    let name = &d.deployment["metadata"]["name"];
    let Some(hpa) = of_kind(d.docs, "HorizontalPodAutoscaler")
        .find(|h| h["spec"]["scaleTargetRef"]["name"] == *name)
    else {
        return;
    };
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"], "Deployment",
        "{file}"
    );
    assert!(
        d.deployment["spec"].get("replicas").is_none(),
        "{file}: replicas set in the Deployment and by the autoscaler: an apply resets it"
    );
    let min = number(&hpa["spec"]["minReplicas"]);
    assert!(
        min >= 2,
        "{file}: minReplicas {min}: one pod is no scale-out"
    );
    assert!(number(&hpa["spec"]["maxReplicas"]) > min, "{file}");
    for metric in hpa["spec"]["metrics"].as_array().expect("metrics") {
        if metric["type"] == "Resource" {
            let resource = string(&metric["resource"]["name"]);
            assert!(
                !d.container()["resources"]["requests"][resource.as_str()].is_null(),
                "{file}: the autoscaler measures {resource} against its request: none"
            );
        }
    }
    let pdb = of_kind(d.docs, "PodDisruptionBudget")
        .find(|p| selects(&p["spec"]["selector"], d.labels()))
        .unwrap_or_else(|| panic!("{file}: no PodDisruptionBudget for the autoscaled pods"));
    let spec = &pdb["spec"];
    let allows_one = match (
        spec["maxUnavailable"].as_u64(),
        spec["minAvailable"].as_u64(),
    ) {
        (Some(max), _) => max >= 1,
        (None, Some(least)) => least < min,
        _ => panic!("{file}: PodDisruptionBudget without a number"),
    };
    assert!(
        allows_one,
        "{file}: the PodDisruptionBudget blocks every drain at {min} pods"
    );
}

// --- the binary on the ConfigMaps' configurations ---------------------------------------

/// A self-signed certificate and key for `name`, written as `dir/tls.crt` and `dir/tls.key`
/// (a kubernetes.io/tls Secret's keys); its SHA-1 thumbprint in upper-case hex.
fn write_certificate(dir: &Path, name: &str) -> String {
    use sha1::Digest;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    sha1::Sha1::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The configuration with its mounted paths (certificates, state_dir) moved into `dir`.
fn relocate(config: &SidecarConfig, text: &str, dir: &Path) -> String {
    let mut text = text.replace(&config.state_dir, &dir.join("state").display().to_string());
    for path in &config.files {
        let (_, file) = path.rsplit_once('/').unwrap();
        text = text.replace(path.as_str(), &dir.join(file).display().to_string());
    }
    text
}

fn check(path: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn the_configmaps_configurations_pass_check() {
    let manifests = manifests();
    for d in deployments(&manifests) {
        let dir = TempDir::new("pack-check");
        write_certificate(&dir.0, "mx1.example.com");
        let path = dir.0.join("config.yaml");
        let text = relocate(&d.config, &d.config_text, &dir.0);
        std::fs::write(&path, &text).unwrap();
        let (ok, said) = check(&path);
        assert!(ok, "{}: check failed:\n{said}", d.file);
    }
}

/// One GET on the admin endpoint: status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let status = all
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: {all:?}"));
    let body = all.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The Dockerfile's HEALTHCHECK command, run here against `port` instead of the image's.
fn run_healthcheck(image: &Image, port: u16) -> bool {
    let (image_port, _) = healthcheck_target(&image.healthcheck);
    let argv: Vec<String> = image
        .healthcheck
        .iter()
        .map(|a| {
            a.replace(
                &format!("/127.0.0.1/{image_port}"),
                &format!("/127.0.0.1/{port}"),
            )
        })
        .collect();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        assert!(Instant::now() < deadline, "HEALTHCHECK command hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The configuration with every listener and the admin endpoint on a free port of 127.0.0.1;
/// the admin endpoint's port.
fn on_free_ports(config: &SidecarConfig, text: &str) -> (String, u16) {
    let admin = free_port();
    let (host, port) = &config.metrics;
    let mut text = text.replace(
        &format!("listen: {host}:{port}"),
        &format!("listen: 127.0.0.1:{admin}"),
    );
    for ((host, port), _) in &config.listeners {
        text = text.replace(
            &format!("listen: {host}:{port}"),
            &format!("listen: 127.0.0.1:{}", free_port()),
        );
    }
    (text, admin)
}

/// A projected volume as the kubelet writes it: the files in a timestamped directory,
/// `..data` a symbolic link to it, each name a link through `..data`. A new version is a new
/// directory and `..data` replaced by rename, so every file changes at once.
fn project(dir: &Path, version: u32, files: &[(&str, &[u8])]) {
    let ts = format!("..2026_01_01_00_00_0{version}.{version}");
    std::fs::create_dir_all(dir.join(&ts)).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(&ts).join(name), content).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&ts, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn a_configmap_configuration_runs_answers_probes_and_reloads_a_rotated_secret() {
    let manifests = manifests();
    let deployments = deployments(&manifests);
    // The variant the test can run as it is: the scale-out one expects a PROXY header on every
    // connection.
    let d = deployments
        .iter()
        .find(|d| !d.config.listeners.iter().any(|(_, proxy)| *proxy))
        .expect("a configuration without proxy_protocol");
    let image = image();
    let scratch = TempDir::new("pack-run");
    let secret = scratch.0.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let first = write_certificate(&secret, "mx1.example.com");

    // The mounted directory: config.yaml with the listeners on free loopback ports (taken
    // again if another process got one first).
    let volume = scratch.0.join("etc");
    std::fs::create_dir_all(&volume).unwrap();
    let relocated = relocate(&d.config, &d.config_text, &volume);
    let read = |name: &str| std::fs::read(secret.join(name)).unwrap();
    let (crt, key) = (read("tls.crt"), read("tls.key"));
    let log = || std::fs::read_to_string(scratch.0.join("sidecar.log")).unwrap_or_default();
    let mut started = None;
    for attempt in 1..=3 {
        let (text, admin) = on_free_ports(&d.config, &relocated);
        project(
            &volume,
            attempt,
            &[
                ("config.yaml", text.as_bytes()),
                ("tls.crt", &crt),
                ("tls.key", &key),
            ],
        );
        let file = std::fs::File::create(scratch.0.join("sidecar.log")).unwrap();
        let mut child = Guard(
            Command::new(BIN)
                .args(["run", "-c"])
                .arg(volume.join("config.yaml"))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap(),
        );
        if process::wait_accepting(&mut child.0, admin) {
            started = Some((child, text, admin));
            break;
        }
        eprintln!("the sidecar exited (a port taken?):\n{}", log());
    }
    let (mut child, text, admin) = started.expect("the sidecar did not start");
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));

    // What the manifests and the Dockerfile ask of the admin endpoint.
    assert_eq!(http_get(addr, "/healthz").0, 200, "liveness");
    let (ready, why) = http_get(addr, "/readyz");
    // No MTA listens here: ready until a health check finds it down, then 503 with why.
    assert!(ready == 200 || ready == 503, "readiness: {ready} {why}");
    let (status, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "scrape");
    assert!(metrics.contains("smtp_sidecar_build_info"), "{metrics}");
    assert!(
        metrics.contains(&first),
        "the Secret's certificate is served: {first}\n{metrics}"
    );
    assert!(run_healthcheck(&image, admin), "HEALTHCHECK healthy");

    // The Secret renewed: the kubelet swaps the whole directory; config.yaml changes with it,
    // and the reload that follows reads the new certificate.
    let second = write_certificate(&secret, "mx1.example.com");
    let (crt, key) = (read("tls.crt"), read("tls.key"));
    project(
        &volume,
        4,
        &[
            ("config.yaml", text.as_bytes()),
            ("tls.crt", &crt),
            ("tls.key", &key),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = http_get(addr, "/metrics");
        if metrics.contains(&second) && metrics.contains("smtp_sidecar_config_generation 2") {
            assert!(!metrics.contains(&first), "the old certificate is gone");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not loaded:\n{metrics}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM, as `docker stop` and the kubelet send it: with no sessions, exit 0 at once.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(d.config.grace);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within shutdown_grace");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit 0 after SIGTERM:\n{}", log());
    assert!(
        !run_healthcheck(&image, admin),
        "HEALTHCHECK unhealthy when down"
    );
}
