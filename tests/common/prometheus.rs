//! A real Prometheus server for the observability test (Debian's `prometheus` package, which
//! also provides `promtool`): started on 127.0.0.1 with a configuration file and a TSDB of its
//! own in a scratch directory, scraping given targets every second and loading given rule
//! files; queried over its HTTP API (`/api/v1/query`), killed when dropped. Also the promtool
//! checks, the PromQL expressions of `grafana/dashboard.json` and `grafana/alerts.yaml`, and
//! the left-hand side of an alert condition.
//!
//! Everything that waits is async (the sidecar under test runs on the same tokio runtime)
//! and has a deadline. A missing binary is a failure naming its Debian package, never a skip.
//!
//! Included with `#[path = "common/prometheus.rs"] mod prom;` next to `mod common;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::process::{free_port, Guard, TempDir};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Both binaries are there, or the test fails saying what to install.
pub fn require_binaries() {
    for bin in [PROMETHEUS, PROMTOOL] {
        assert!(
            Path::new(bin).is_file(),
            "{bin} not found: apt-get install prometheus (Debian's package provides prometheus \
             and promtool; scripts/test.sh installs it)"
        );
    }
}

/// The repository's `grafana/` folder.
pub fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

/// `promtool check metrics` on an exposition: its findings (stdout and stderr) if it found
/// any or failed, `Ok` when it is silent and successful.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

/// `promtool check rules FILE`: its output either way.
pub fn check_rules(file: &Path) -> Result<String, String> {
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

/// A Prometheus server of its own; killed (and its directory removed) when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    // Field order: the process goes before its directory.
    process: Guard,
    dir: TempDir,
}

impl Prometheus {
    /// Start scraping `targets` (`host:port`, path `/metrics`) every second as job
    /// `smtp-sidecar`, evaluating `rule_files` every second; ready when this returns.
    pub async fn start(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Prometheus {
        require_binaries();
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|f| format!("\"{}\"", f.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: smtp-sidecar\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = dir.0.join("prometheus.log");
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{PROMETHEUS}: {e}"));
        let mut p = Prometheus {
            addr,
            process: Guard(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = p.process.0.try_wait().unwrap() {
                panic!("prometheus exited at start ({status}):\n{}", p.log());
            }
            if let Ok((200, _)) = get(addr, "/-/ready").await {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready on {addr} after 15 s:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Prometheus logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=EXPR` (evaluated now): the result vector, or the error
    /// Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let json = self.api(&path).await?;
        match json["data"]["result"].as_array() {
            Some(result) => Ok(result.clone()),
            None => Err(format!("no data.result in {json}")),
        }
    }

    /// A GET of the HTTP API: the JSON, if its `status` is `success`.
    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = get(self.addr, path).await?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}, {e}: {body}"))?;
        if json["status"] == "success" {
            Ok(json)
        } else {
            Err(format!("HTTP {code}: {json}"))
        }
    }

    /// Poll `expr` until `accept` likes its result; panics after `within`.
    pub async fn wait_for(
        &self,
        expr: &str,
        within: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(expr).await;
            if let Ok(result) = &got {
                if accept(result) {
                    return result.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: not as expected within {within:?}; last: {got:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of one instant-vector sample.
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// An HTTP/1.0 GET on 127.0.0.1: status code and body (10 s at most).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut all = Vec::new();
        s.read_to_end(&mut all).await?;
        Ok::<_, std::io::Error>(all)
    };
    let all = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {path}: no response in 10 s"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let all = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = all
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: not HTTP: {all:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// Percent-encoding of a query parameter: everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- grafana/dashboard.json ------------------------------------------------------------------

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel target's `expr` (rows' nested panels included).
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "panel {title:?}: a target without expr");
                out.push(PanelQuery {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                    expr: expr.to_owned(),
                });
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A dashboard expression as Prometheus gets it: `$listener` matching every listener, the
/// interval variables as a fixed range. Panics on any variable left over.
pub fn substitute(expr: &str) -> String {
    let out = expr
        .replace("${listener}", ".*")
        .replace("$listener", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

// ---- grafana/alerts.yaml ---------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
pub struct Rule {
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

pub fn rule_file(path: &Path) -> RuleFile {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The left-hand side of each `or` arm of an alert condition, the comparison dropped: what
/// the condition compares, which must return data whether or not the alert fires.
/// `a > 0 or (b - c) < 900` gives `["a", "(b - c)"]`. Operators inside (), {}, [] and
/// strings are not at the top level.
pub fn condition_sides(expr: &str) -> Vec<String> {
    split_top_level(expr, &["or"])
        .into_iter()
        .map(|arm| {
            let lhs = first_comparison(&arm).map_or(arm.as_str(), |i| &arm[..i]);
            lhs.trim().to_owned()
        })
        .collect()
}

/// Byte offsets of `s` at bracket depth 0 outside strings, with the byte.
fn top_level(s: &str) -> Vec<(usize, u8)> {
    let (mut depth, mut quote) = (0i32, None::<u8>);
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                _ if depth == 0 => out.push((i, b)),
                _ => {}
            },
        }
        i += 1;
    }
    out
}

/// `s` split at the top-level keywords `words` (whole words, any case).
fn split_top_level(s: &str, words: &[&str]) -> Vec<String> {
    let top: Vec<usize> = top_level(s).into_iter().map(|(i, _)| i).collect();
    let lower = s.to_ascii_lowercase();
    let is_word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let mut cuts = Vec::new();
    for &i in &top {
        for w in words {
            let end = i + w.len();
            if lower.get(i..end) == Some(w)
                && !is_word(lower.as_bytes().get(i.wrapping_sub(1)).filter(|_| i > 0))
                && !is_word(lower.as_bytes().get(end))
                && (i..end).all(|j| top.contains(&j))
            {
                cuts.push((i, end));
            }
        }
    }
    let mut out = Vec::new();
    let mut from = 0;
    for (start, end) in cuts {
        out.push(s[from..start].trim().to_owned());
        from = end;
    }
    out.push(s[from..].trim().to_owned());
    out
}

/// The offset of the first top-level comparison operator (`==`, `!=`, `>=`, `<=`, `>`, `<`).
fn first_comparison(s: &str) -> Option<usize> {
    let top = top_level(s);
    let bytes = s.as_bytes();
    top.iter().find_map(|&(i, b)| match b {
        b'>' | b'<' => Some(i),
        b'=' | b'!' if bytes.get(i + 1) == Some(&b'=') => Some(i),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_of_conditions() {
        assert_eq!(condition_sides("up == 0"), ["up"]);
        assert_eq!(
            condition_sides("(a{x=\"<\"} - time()) < 14 * 86400"),
            ["(a{x=\"<\"} - time())"]
        );
        assert_eq!(
            condition_sides("increase(a[15m]) > 0\nor\n(time() - b) < 900"),
            ["increase(a[15m])", "(time() - b)"]
        );
        assert_eq!(
            condition_sides("sum by (sort) (x{color=\"or\"}) >= 1"),
            ["sum by (sort) (x{color=\"or\"})"]
        );
    }
}
