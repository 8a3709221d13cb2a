//! Headless Chromium (Debian's `chromium`) loading a page, as an operator's browser would:
//! the DOM after it has been parsed and laid out (`--dump-dom`), and a screenshot. Each run has
//! a profile directory of its own, a deadline, and is killed with its whole process group if
//! it outlives it. A missing browser is a failure, never a skip.
//!
//! Included with `#[path = "common/chromium.rs"] mod chromium;` next to `mod common;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::process::TempDir;

/// How long one Chromium run may take (it takes about half a second here).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The browser: `chromium` on PATH (Debian's package, installed by scripts/test.sh).
pub fn binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("chromium");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "chromium not found on PATH: the status page is tested in a real browser; \
         `apt-get install chromium` (scripts/test.sh does it)"
    );
}

/// Run Chromium headless on `url` with `args`; its standard output.
fn run(url: &str, args: &[&str]) -> String {
    let profile = TempDir::new("chromium");
    let out_path = profile.0.join("stdout");
    let err_path = profile.0.join("stderr");
    let mut child = Command::new(binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.0.join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        // Its own process group, so that the browser's helpers go with it on a kill.
        .process_group(0)
        .spawn()
        .expect("starting chromium");
    let pid = child.id();
    let kill_group = || {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            kill_group();
            let _ = child.wait();
            panic!(
                "chromium on {url} still running after {DEADLINE:?}; killed. stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Helpers that outlived the browser itself.
    kill_group();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium on {url}: {status}; stderr:\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    stdout
}

/// The DOM of `url` as the browser built it.
pub fn dump_dom(url: &str) -> String {
    run(url, &["--dump-dom"])
}

/// A `width`×`height` screenshot of `url` saved as PNG at `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(path);
    run(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
        ],
    );
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

/// The text of each cell of the first `<tr` that contains `marker` (e.g.
/// `data-listener="inbound"`), tags stripped, entities of `&amp;`, `&lt;`, `&gt;` decoded.
pub fn row_cells(dom: &str, marker: &str) -> Vec<String> {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{dom}"));
    let row = &dom[start..];
    let row = &row[..row.find("</tr>").expect("row end")];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let cell = &cell[cell.find('>').unwrap() + 1..];
            text(cell)
        })
        .collect()
}

/// Markup to text: tags dropped, the common entities decoded.
pub fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}
