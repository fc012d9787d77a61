//! `fwp`: the toolkit's utility command.
//! - `fwp info` prints the compiled CUDA architectures, the GPUs this machine shows (through the CUDA
//!   driver, via cudarc) and whether libtorch sees CUDA.
//! - `fwp speed` times the Fused and Chunked fast-weight backends against causal softmax attention.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use tch::Kind;

#[derive(Parser)]
#[command(version, about = "Fast Weight Programmers toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DType {
    F32,
    Bf16,
    F16,
    F64,
}

#[derive(Subcommand)]
enum Command {
    /// Print the build's CUDA architectures and the visible GPUs.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time Fused and Chunked fast weights (sum and delta rules) against softmax attention.
    Speed {
        /// cpu, or cuda / cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DType,
        #[arg(long, default_value_t = 2)]
        batch: i64,
        #[arg(long, default_value_t = 8)]
        heads: i64,
        #[arg(long, default_value_t = 64)]
        d_head: i64,
        /// sequence lengths, comma-separated
        #[arg(long, value_delimiter = ',', default_value = "512,2048")]
        t: Vec<i64>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Print JSON instead of a table.
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
        Command::Speed {
            device,
            dtype,
            batch,
            heads,
            d_head,
            t,
            repeats,
            json,
        } => {
            let kind = match dtype {
                DType::F32 => Kind::Float,
                DType::Bf16 => Kind::BFloat16,
                DType::F16 => Kind::Half,
                DType::F64 => Kind::Double,
            };
            let cfg = fwp::speed::SpeedConfig {
                batch,
                heads,
                d_head,
                kind,
                device: fwp::check::device(&device)?,
                repeats,
            };
            for (name, v) in [("batch", batch), ("heads", heads), ("d_head", d_head)] {
                fwp::check::positive(name, v)?;
            }
            let mut rows = Vec::new();
            for &len in &t {
                fwp::check::positive("t", len)?;
                rows.extend(fwp::speed::measure(&cfg, len)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("fwp speed: {device}, {dtype:?}, B={batch} H={heads} d={d_head}, median of {repeats}");
                print!("{}", fwp::speed::table(&rows));
            }
        }
    }
    Ok(())
}
