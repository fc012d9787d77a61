//! `fwp`: the toolkit's utility command.
//! - `fwp info` prints the compiled CUDA architectures, the GPUs this machine shows (through the CUDA
//!   driver, via cudarc) and whether libtorch sees CUDA.
//!
//! Timing and memory of the backends against softmax attention are the `bench` experiment's.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Fast Weight Programmers toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the build's CUDA architectures and the visible GPUs.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
    }
    Ok(())
}
