//! The `tagwarden` command line. All logic lives in the library; this is glue.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: see its entry in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = tagwarden::cli::Cli::parse();
    tagwarden::cli::init_logging(cli.verbose, cli.log_format);
    match tagwarden::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line first (what failed, where, what to do); causes and plugin
            // stderr follow indented for those who need them. Escaped: messages quote
            // plugins and input files, which must not restyle the terminal.
            use tagwarden::untrusted::escape_lines;
            let mut chain = e.chain();
            eprintln!("error: {}", escape_lines(&chain.next().map(|c| c.to_string()).unwrap_or_default(), "  "));
            for cause in chain {
                eprintln!("  caused by: {}", escape_lines(&cause.to_string(), "    "));
            }
            ExitCode::FAILURE
        }
    }
}
