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
