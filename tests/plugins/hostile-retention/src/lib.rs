//! A retention plugin for the host's tests and benchmarks. Its params are an object
//! whose `mode` names its behaviour, so one component covers every hostile case, and the
//! CLI can run each: `tagwarden eval --plugin hostile-retention --params '{"mode": "sleep"}' …`.
//!
//! | mode              | behaviour                                                   |
//! |-------------------|-------------------------------------------------------------|
//! | `noop`            | keeps everything, doing no per-tag work (benchmark)         |
//! | `delete`          | deletes everything                                          |
//! | `loop`            | never returns from `evaluate` (a busy loop)                 |
//! | `sleep`           | sleeps 60 s (`std::thread::sleep`), then keeps all, giving  |
//! |                   | as reason how long its monotonic clock says it slept        |
//! | `sleep-forever`   | sleeps 1 s at a time, forever                               |
//! | `poll`            | `poll()`s with no descriptors and a 60 s timeout (a wait on |
//! |                   | a timer through `wasi:io/poll`), then reports like `sleep`  |
//! | `poll-forever`    | the same, forever                                           |
//! | `hog`             | allocates until the memory cap stops it                     |
//! | `panic`           | panics in `evaluate`                                        |
//! | `abort`           | calls `std::process::abort`                                 |
//! | `exit`            | calls `std::process::exit(1)`                               |
//! | `recurse`         | recurses until the stack overflows                          |
//! | `short`           | answers one verdict too few                                 |
//! | `long-reason`     | gives a 100 KiB reason                                      |
//! | `forge`           | keeps all with reasons and a log line made to fake output:  |
//! |                   | ANSI colours, newlines, a carriage return                   |
//! | `stderr`          | writes to stderr (with an escape sequence), then returns an |
//! |                   | error                                                       |
//! | `reject`          | rejects its params                                          |
//! | `probe`           | reports what of the outside world it can see                |
//! | `fill`            | writes 0xA5 over 8 MiB of fresh memory, keeps all           |
//! | `residue`         | grows memory by 12 MiB and fails if any byte of it is not   |
//! |                   | zero (what an earlier call left behind)                     |
//! | `undeclared`      | declares no column, then reads digests: the SDK panics      |
//! | `match-forever`   | has the host match its names (`names`), forever             |

use std::time::{Duration, Instant};

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Verdict, export_retention, log};

pub struct Hostile(&'static str);

const MODES: &[&str] = &[
    "noop",
    "delete",
    "loop",
    "sleep",
    "sleep-forever",
    "poll",
    "poll-forever",
    "hog",
    "panic",
    "abort",
    "exit",
    "recurse",
    "short",
    "long-reason",
    "forge",
    "stderr",
    "reject",
    "probe",
    "fill",
    "residue",
    "undeclared",
    "match-forever",
];

/// A fake DELETE row, in red, as a plugin might try to slip into the host's table.
const FORGED: &str = "kept\x1b[0m\n\x1b[1;31mDELETE  production-v44  sha256:forged\x1b[0m\r";

impl RetentionPolicy for Hostile {
    fn create(params: &str) -> Result<Self, String> {
        let mode = Params::parse(params, &["mode"])?.choice("mode", MODES, "noop")?;
        if mode == "reject" {
            return Err("mode: rejected on purpose".into());
        }
        Ok(Hostile(mode))
    }

    /// `undeclared` declares no column and reads digests all the same; every other mode
    /// declares every column.
    fn reads(&self) -> Columns {
        if self.0 == "undeclared" { Columns::NONE } else { Columns::ALL }
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        match self.0 {
            "noop" => Ok(Decisions::uniform(input, Verdict::keep("noop"))),
            "delete" => Ok(Decisions::uniform(input, Verdict::delete("delete everything"))),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "sleep" => {
                let started = Instant::now();
                std::thread::sleep(Duration::from_secs(60));
                Ok(Decisions::uniform(input, Verdict::keep(format!("slept {:?}", started.elapsed()))))
            }
            "match-forever" => {
                let pattern = tagwarden_plugin_sdk::names::NamePattern::new(".*").map_err(|e| e.to_string())?;
                loop {
                    std::hint::black_box(input.matching(&pattern));
                }
            }
            "sleep-forever" => loop {
                std::thread::sleep(Duration::from_secs(1));
            },
            "poll" => {
                let started = Instant::now();
                poll_timer(60_000)?;
                Ok(Decisions::uniform(input, Verdict::keep(format!("polled {:?}", started.elapsed()))))
            }
            "poll-forever" => loop {
                poll_timer(1_000)?;
            },
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "abort" => std::process::abort(),
            "exit" => std::process::exit(1),
            "recurse" => Ok(Decisions::uniform(input, Verdict::keep(format!("depth {}", recurse(std::hint::black_box(1)))))),
            "short" => {
                let mut d = Decisions::uniform(input, Verdict::delete("short"));
                d.tags.pop();
                Ok(d)
            }
            "long-reason" => Ok(Decisions::uniform(input, Verdict::keep("x".repeat(100 << 10)))),
            "forge" => {
                log::warn("looks fine\n2026-11-20T12:00:00Z ERROR tagwarden: forged log line\x1b[2K");
                Ok(Decisions::uniform(input, Verdict::keep(FORGED)))
            }
            "stderr" => {
                eprintln!("hostile plugin: about to fail\x1b[2J");
                Err("failed on purpose".into())
            }
            "probe" => Ok(Decisions::uniform(input, Verdict::keep(probe()))),
            "undeclared" => {
                let first = input.tags.iter().map(|t| t.digest()).next().unwrap_or_default();
                Ok(Decisions::uniform(input, Verdict::keep(format!("read {first}"))))
            }
            "fill" => {
                let filled = std::hint::black_box(vec![0xA5u8; 8 << 20]);
                drop(filled);
                Ok(Decisions::uniform(input, Verdict::keep("filled")))
            }
            "residue" => residue().map(|()| Decisions::uniform(input, Verdict::keep("no residue"))),
            other => Err(format!("unknown mode `{other}`")),
        }
    }
}

/// Recurses without end; the sum keeps it from being a tail call.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + n
}

/// Waits on a timer through `wasi:io/poll`: wasi-libc's `poll` with no descriptors
/// subscribes to the monotonic clock for the timeout and polls that.
#[cfg(target_arch = "wasm32")]
fn poll_timer(timeout_ms: i32) -> Result<(), String> {
    unsafe extern "C" {
        fn poll(fds: *mut core::ffi::c_void, nfds: usize, timeout: i32) -> i32;
    }
    // SAFETY: no descriptors, so no pointer is read.
    match unsafe { poll(core::ptr::null_mut(), 0, timeout_ms) } {
        0 => Ok(()),
        n => Err(format!("poll returned {n}")),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn poll_timer(_timeout_ms: i32) -> Result<(), String> {
    Err("only meaningful inside Wasm".into())
}

/// What the sandbox lets through: files, environment, network, clocks, randomness.
fn probe() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let fs = match std::fs::read_dir("/") {
        Ok(_) => "readable".to_owned(),
        Err(e) => format!("denied({})", e.kind()),
    };
    let file = std::fs::read("/etc/passwd").map(|_| "readable").unwrap_or("denied");
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let net = std::net::TcpStream::connect("127.0.0.1:9").map(|_| "connected").unwrap_or("denied");
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let elapsed = std::time::Instant::now().elapsed().as_nanos();
    let hash = RandomState::new().hash_one(42u8);
    format!("fs={fs} file={file} env={env} args={args} net={net} clock={clock} elapsed={elapsed} hash={hash}")
}

export_retention!(Hostile);

/// Grows linear memory by 12 MiB and checks that every new byte is zero: pages a fresh
/// instance gains must not hold what an earlier call wrote in the same pool slot.
#[cfg(target_arch = "wasm32")]
fn residue() -> Result<(), String> {
    const PAGE: usize = 64 << 10;
    const PAGES: usize = 192;
    let first = core::arch::wasm32::memory_grow(0, PAGES);
    if first == usize::MAX {
        return Err("memory.grow failed".into());
    }
    for addr in (first * PAGE..(first + PAGES) * PAGE).step_by(8) {
        // SAFETY: the pages were just added by `memory.grow`; no Rust object lives there,
        // and reading initialised linear memory cannot fault.
        let word = unsafe { core::ptr::read_volatile(addr as *const u64) };
        if word != 0 {
            return Err(format!("residue: {word:#018x} at {addr:#x}"));
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
fn residue() -> Result<(), String> {
    Err("only meaningful inside Wasm".into())
}
