//! Who runs a pass: a token naming this process precisely enough that a later process on
//! the same machine can tell whether it is still alive.
//!
//! The token is `host/boot-id/pid/start-time`: the boot id and the process's start time
//! (clock ticks since boot, from `/proc/<pid>/stat`) make a reused pid, or one from before
//! a reboot, a different owner. Runs owned by another host are never judged here: the
//! daemon's leases decide those.

use std::sync::OnceLock;

/// Whether the owner of a run is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The owner is this process, or a process on this machine that is still running.
    Alive,
    /// The owner was a process on this machine that has exited (or the machine rebooted).
    Gone,
    /// The owner is on another host, or the token cannot be read: assume it may be running.
    Unknown,
}

/// This process's token.
pub fn current() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let pid = std::process::id();
        format!("{}/{}/{pid}/{}", host_name(), boot_id(), start_time(pid).unwrap_or_default())
    })
}

/// Whether the process that `token` names is alive.
pub fn liveness(token: &str) -> Liveness {
    if token == current() {
        return Liveness::Alive;
    }
    let mut parts = token.rsplitn(4, '/');
    let (Some(start), Some(pid), Some(boot), Some(host)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Liveness::Unknown;
    };
    if host != host_name() {
        return Liveness::Unknown;
    }
    if boot != boot_id() {
        return Liveness::Gone; // this machine rebooted since: every process of then is gone
    }
    let Ok(pid) = pid.parse::<u32>() else { return Liveness::Unknown };
    match start_time(pid) {
        Some(now) if now.to_string() == start => Liveness::Alive,
        Some(_) => Liveness::Gone, // the pid was reused
        None => Liveness::Gone,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown-boot".to_owned())
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name, which may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_an_exited_one_is_gone() {
        assert_eq!(liveness(current()), Liveness::Alive);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let token = format!("{}/{}/{pid}/{}", host_name(), boot_id(), start_time(pid).unwrap_or(1));
        child.wait().unwrap();
        assert_eq!(liveness(&token), Liveness::Gone);
        // A reused pid: the same number with another start time.
        let me = std::process::id();
        assert_eq!(liveness(&format!("{}/{}/{me}/1", host_name(), boot_id())), Liveness::Gone);
        assert_eq!(liveness(&format!("{}/another-boot/{me}/1", host_name())), Liveness::Gone);
        assert_eq!(liveness("other-host/b/1/2"), Liveness::Unknown);
        assert_eq!(liveness("garbage"), Liveness::Unknown);
    }
}
