//! The subword vocabulary: one byte-level BPE (Sennrich et al. 2016, on bytes as GPT-2) trained
//! on the source and target sides of the training split together, so that both languages share
//! one vocabulary and one embedding (docs/translate.md, "Vocabulary"). Built with the `tokenizers`
//! crate and saved with every run as its `tokenizer.json`.
//!
//! Ids 0, 1 and 2 are `<pad>`, `<s>` (begin) and `</s>` (end). Byte-level BPE has no unknown
//! token: any text encodes, and decoding gives it back (without the leading space the
//! pre-tokeniser adds).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// Padding id.
pub const PAD: i64 = 0;
/// Begin-of-sentence id: the decoder's first input.
pub const BOS: i64 = 1;
/// End-of-sentence id: the last target token.
pub const EOS: i64 = 2;
const SPECIAL: [&str; 3] = ["<pad>", "<s>", "</s>"];

/// A trained byte-level BPE.
pub struct Bpe {
    tokenizer: Tokenizer,
}

fn tk(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl Bpe {
    /// Learns merges from `texts` until the vocabulary (the 256 bytes, the three special tokens
    /// and the merges) has `vocab_size` entries, or no pair occurs twice. Deterministic.
    pub fn train<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Bpe> {
        let min = 256 + SPECIAL.len() + 1;
        if vocab_size < min {
            bail!("BPE vocabulary size {vocab_size}: must be at least {min} (the 256 bytes, the special tokens and one merge)");
        }
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(
                SPECIAL
                    .iter()
                    .map(|s| AddedToken::from(s.to_string(), true))
                    .collect(),
            )
            .build()
            .into();
        let byte_level = ByteLevel::default().add_prefix_space(true);
        let mut tokenizer: Tokenizer = TokenizerBuilder::<
            ModelWrapper,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default().into())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(tk)?
        .into();
        tokenizer.train(&mut trainer, texts).map_err(tk)?;
        let bpe = Bpe { tokenizer };
        bpe.check()?;
        Ok(bpe)
    }

    /// The special tokens must have the ids this module promises.
    fn check(&self) -> Result<()> {
        for (id, s) in SPECIAL.iter().enumerate() {
            if self.tokenizer.token_to_id(s) != Some(id as u32) {
                bail!(
                    "BPE vocabulary: {s} must have id {id}, has {:?}",
                    self.tokenizer.token_to_id(s)
                );
            }
        }
        Ok(())
    }

    /// The vocabulary as JSON (`tokenizer.json`).
    pub fn to_json(&self) -> Result<String> {
        self.tokenizer.to_string(true).map_err(tk)
    }

    pub fn from_json(json: &str) -> Result<Bpe> {
        let tokenizer: Tokenizer = json.parse().map_err(tk)?;
        let bpe = Bpe { tokenizer };
        bpe.check()?;
        Ok(bpe)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::report::atomic_write(path, self.to_json()?.as_bytes())
    }

    pub fn load(path: &Path) -> Result<Bpe> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading the BPE vocabulary {}", path.display()))?;
        Bpe::from_json(&json)
            .with_context(|| format!("{}: not a BPE vocabulary of fwp", path.display()))
    }

    /// Entries of the vocabulary (the model's vocabulary size).
    pub fn len(&self) -> i64 {
        self.tokenizer.get_vocab_size(true) as i64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of `text` (no `<s>` or `</s>`).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.tokenizer.encode(text, false).map_err(tk)?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// The text of `ids`; special tokens are skipped, ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&u| (u as i64) < self.len())
                    .ok_or_else(|| {
                        anyhow!("token id {i} is outside the vocabulary (0..{})", self.len())
                    })
            })
            .collect::<Result<_>>()?;
        let text = self.tokenizer.decode(&ids, true).map_err(tk)?;
        Ok(text.strip_prefix(' ').unwrap_or(&text).to_string())
    }
}
