//! A retention plugin for the host's tests and benchmarks. Its params are one word
//! naming its behaviour, so one component covers every hostile case:
//!
//! | params      | behaviour                                           |
//! |-------------|-----------------------------------------------------|
//! | `"noop"`    | keeps everything, doing no per-tag work (benchmark) |
//! | `"delete"`  | deletes everything                                  |
//! | `"loop"`    | never returns from `evaluate`                       |
//! | `"hog"`     | allocates until the memory cap stops it             |
//! | `"panic"`   | panics in `evaluate`                                |
//! | `"short"`   | answers one verdict too few                         |
//! | `"stderr"`  | writes to stderr, then returns an error             |
//! | `"reject"`  | rejects its params                                  |
//! | `"probe"`   | reports what of the outside world it can see        |
//! | `"fill"`    | writes 0xA5 over 8 MiB of fresh memory, keeps all   |
//! | `"residue"` | grows memory by 12 MiB and fails if any byte of it  |
//! |             | is not zero (what an earlier call left behind)      |

use tagwarden_plugin_sdk::{Decisions, RetentionInput, RetentionPolicy, Verdict, export_retention};

pub struct Hostile(String);

impl RetentionPolicy for Hostile {
    fn create(params: &str) -> Result<Self, String> {
        let mode = params.trim().trim_matches('"').to_owned();
        if mode == "reject" {
            return Err("mode: rejected on purpose".into());
        }
        Ok(Hostile(mode))
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        match self.0.as_str() {
            "noop" => Ok(Decisions::uniform(input, Verdict::keep("noop"))),
            "delete" => Ok(Decisions::uniform(input, Verdict::delete("delete everything"))),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "short" => {
                let mut d = Decisions::uniform(input, Verdict::delete("short"));
                d.tags.pop();
                Ok(d)
            }
            "stderr" => {
                eprintln!("hostile plugin: about to fail");
                Err("failed on purpose".into())
            }
            "probe" => Ok(Decisions::uniform(input, Verdict::keep(probe()))),
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
