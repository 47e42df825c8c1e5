//! What both benchmarks report about the machine they ran on, so figures can be
//! compared only with figures from a similar, similarly quiet machine.

use std::process::Command;

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The first line `program arg` prints (stdout, else stderr), e.g. a version.
pub fn first_line(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(if o.stdout.is_empty() { o.stderr } else { o.stdout }).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| format!("{program} (version unknown)"))
}

/// `rustc --version` of the compiler cargo uses.
pub fn rustc_version() -> String {
    first_line(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()), "--version")
}

/// The 1-minute load average, to tell a quiet machine from a busy one.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
