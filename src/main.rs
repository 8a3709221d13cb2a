//! The `smtp-sidecar` binary: see [`smtp_sidecar::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    smtp_sidecar::cli::main()
}
