//! Processes that look as if they ran on machines of their own: each in a UTS namespace with
//! a host name of its own (`unshare --uts`), so a program that tells its peers apart by host
//! name (tagwarden's owner tokens) cannot see them as processes on its machine, and must rely
//! on what it would rely on across machines (leases).

use std::path::Path;
use std::process::Command;

/// A command running `program` under the host name `host_name`; add its arguments with
/// [`Command::args`]. The program keeps the command's pid (`unshare` and `sh` exec it), so
/// killing the child kills the program. As root the namespace is created directly; otherwise
/// inside an unprivileged user namespace (where the kernel allows those).
pub fn on_own_machine(program: &Path, host_name: &str) -> Command {
    let mut cmd = Command::new("unshare");
    if !crate::postgres::is_root() {
        cmd.args(["--user", "--map-root-user"]);
    }
    // `$0` is the host name, `$@` the program and its arguments.
    cmd.args(["--uts", "--", "sh", "-c", r#"hostname "$0" && exec "$@""#, host_name]).arg(program);
    cmd
}
