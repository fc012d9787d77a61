//! `fwp`: the toolkit's utility command.
//! - `fwp info` prints the compiled CUDA architectures, the GPUs this machine shows (through the CUDA
//!   driver, via cudarc) and whether libtorch sees CUDA.
//! - `fwp selftest --device cuda` runs every kernel once on a small shape against its reference
//!   twin (fused recurrence, both rules, forward and backward; sum normalisation) and exits non-zero
//!   on a mismatch; small enough to run under compute-sanitizer.
//!
//! Timing and memory of the backends against softmax attention are the `bench` experiment's.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Fast Weight Programmers toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the build's CUDA architectures, the CPU kernels it runs and the visible GPUs.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run every kernel once on a small shape against its reference twin.
    Selftest {
        /// cpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Info { json } => {
            let info = fwp::info::build_info();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{info}");
            }
        }
        Command::Selftest { device } => {
            let device = fwp::check::device(&device)?;
            let checks = fwp::selftest::run(device)?;
            let mut failed = 0;
            for c in &checks {
                let verdict = if c.passed() { "ok" } else { "FAILED" };
                println!(
                    "{:<34} error {:.2e} (tolerance {:.0e}) {verdict}",
                    c.name, c.error, c.tolerance
                );
                failed += usize::from(!c.passed());
            }
            if failed > 0 {
                bail!("{failed} of {} checks failed on {device:?}", checks.len());
            }
            println!("all {} checks passed on {device:?}", checks.len());
        }
    }
    Ok(())
}
