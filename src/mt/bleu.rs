//! Corpus BLEU and chrF with sacreBLEU's default settings (Post 2018, sacreBLEU 2.6.0), so that
//! scores here can be compared with scores reported elsewhere:
//!
//! - BLEU: the `13a` tokenisation (mteval-v13a's, as WMT), case kept, n-grams up to 4, clipped
//!   counts summed over the corpus, brevity penalty from the summed lengths, and the `exp`
//!   smoothing (a zero n-gram count of order n counts as 1 / 2^k, k the number of zero orders up
//!   to n). Signature `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
//! - chrF2: character n-grams up to 6 with whitespace removed, beta 2, precision and recall
//!   averaged over the orders that occur. Signature
//!   `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
//!
//! `tests/bleu.rs` checks both against the `sacrebleu` package on a file pair.

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::{bail, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// sacreBLEU's signature of [`corpus_bleu`]'s settings.
pub const BLEU_SIGNATURE: &str = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0";
/// sacreBLEU's signature of [`corpus_chrf`]'s settings.
pub const CHRF_SIGNATURE: &str = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0";

const MAX_ORDER: usize = 4;

/// Python's `str.isspace`, which `str.split()` and `str.rstrip()` use: Unicode white space and
/// the four ASCII separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

static RULES_13A: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("a valid 13a pattern");
    [
        // punctuation and symbols become tokens of their own
        (re(r"([\{-~\[-` -&\(-\+:-@/])"), " $1 "),
        // period and comma unless preceded by a digit
        (re(r"([^0-9])([\.,])"), "$1 $2 "),
        // period and comma unless followed by a digit
        (re(r"([\.,])([^0-9])"), " $1 $2"),
        // a dash after a digit
        (re(r"([0-9])(-)"), "$1 $2 "),
    ]
});

/// The `13a` tokenisation of one segment (sacreBLEU's `Tokenizer13a` applied after `rstrip`):
/// tokens separated by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .trim_end_matches(is_py_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, with) in RULES_13A.iter() {
        line = re.replace_all(&line, *with).into_owned();
    }
    py_split(&line).collect::<Vec<_>>().join(" ")
}

/// A corpus BLEU score and its parts, as sacreBLEU prints them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bleu {
    /// 0..=100.
    pub score: f64,
    /// Smoothed n-gram precisions in percent, n = 1..=4.
    pub precisions: [f64; MAX_ORDER],
    pub brevity_penalty: f64,
    pub hyp_len: usize,
    pub ref_len: usize,
}

impl std::fmt::Display for Bleu {
    /// sacreBLEU's line: `BLEU = 44.07 86.7/53.8/36.4/22.2 (BP = 1.000 ratio = 1.071 ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        let ratio = self.hyp_len as f64 / self.ref_len.max(1) as f64;
        write!(
            f,
            "BLEU = {:.2} {} (BP = {:.3} ratio = {ratio:.3} hyp_len = {} ref_len = {})",
            self.score,
            p.join("/"),
            self.brevity_penalty,
            self.hyp_len,
            self.ref_len
        )
    }
}

fn same_length(hyps: &[String], refs: &[String]) -> Result<()> {
    if hyps.len() != refs.len() {
        bail!(
            "{} hypotheses for {} references: they must pair line by line",
            hyps.len(),
            refs.len()
        );
    }
    Ok(())
}

/// Counts of every n-gram, n = 1..=max_order, of a token list.
fn ngram_counts<'a>(tokens: &'a [&'a str], max_order: usize) -> HashMap<&'a [&'a str], usize> {
    let mut counts = HashMap::new();
    for n in 1..=max_order {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU of `hyps` against one reference each (sacreBLEU's defaults; see the module docs).
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<Bleu> {
    same_length(hyps, refs)?;
    let (mut correct, mut total) = ([0usize; MAX_ORDER], [0usize; MAX_ORDER]);
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (h, r) in hyps.iter().zip(refs) {
        let (h, r) = (tokenize_13a(h), tokenize_13a(r));
        let ht: Vec<&str> = h.split(' ').filter(|w| !w.is_empty()).collect();
        let rt: Vec<&str> = r.split(' ').filter(|w| !w.is_empty()).collect();
        hyp_len += ht.len();
        ref_len += rt.len();
        let rc = ngram_counts(&rt, MAX_ORDER);
        for (gram, count) in ngram_counts(&ht, MAX_ORDER) {
            let n = gram.len() - 1;
            total[n] += count;
            correct[n] += count.min(rc.get(gram).copied().unwrap_or(0));
        }
    }
    let brevity_penalty = match (hyp_len, ref_len) {
        (h, r) if h >= r => 1.0,
        (0, _) => 0.0,
        (h, r) => (1.0 - r as f64 / h as f64).exp(),
    };
    let mut precisions = [0.0; MAX_ORDER];
    if correct.iter().all(|&c| c == 0) {
        return Ok(Bleu {
            score: 0.0,
            precisions,
            brevity_penalty,
            hyp_len,
            ref_len,
        });
    }
    let mut smooth = 1.0;
    for n in 0..MAX_ORDER {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // sacreBLEU floors log(0) at -9999999999 (an order with no n-grams at all)
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let mean_log = precisions.iter().map(|&p| log(p)).sum::<f64>() / MAX_ORDER as f64;
    Ok(Bleu {
        score: brevity_penalty * mean_log.exp(),
        precisions,
        brevity_penalty,
        hyp_len,
        ref_len,
    })
}

const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// Per order: [hypothesis n-grams, reference n-grams, matches].
fn chrf_stats(hyp: &str, reference: &str) -> [[usize; 3]; CHRF_ORDER] {
    let squeeze = |s: &str| -> Vec<char> { py_split(s).flat_map(str::chars).collect() };
    let (h, r) = (squeeze(hyp), squeeze(reference));
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (n, s) in stats.iter_mut().enumerate() {
        let mut rc: HashMap<&[char], usize> = HashMap::new();
        for g in r.windows(n + 1) {
            *rc.entry(g).or_insert(0) += 1;
        }
        let mut hc: HashMap<&[char], usize> = HashMap::new();
        for g in h.windows(n + 1) {
            *hc.entry(g).or_insert(0) += 1;
        }
        let hyp_count: usize = hc.values().sum();
        let matches: usize = hc
            .iter()
            .map(|(g, c)| (*c).min(rc.get(g).copied().unwrap_or(0)))
            .sum();
        // sacreBLEU counts no hypothesis n-grams of an order the reference lacks
        *s = [
            if rc.is_empty() { 0 } else { hyp_count },
            rc.values().sum(),
            matches,
        ];
    }
    stats
}

/// Corpus chrF2 (0..=100) of `hyps` against one reference each (sacreBLEU's defaults).
pub fn corpus_chrf(hyps: &[String], refs: &[String]) -> Result<f64> {
    same_length(hyps, refs)?;
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (h, r) in hyps.iter().zip(refs) {
        for (total, s) in stats.iter_mut().zip(chrf_stats(h, r)) {
            for i in 0..3 {
                total[i] += s[i];
            }
        }
    }
    let (mut prec, mut rec, mut orders) = (0.0, 0.0, 0usize);
    for [n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            prec += n_match as f64 / n_hyp as f64;
            rec += n_match as f64 / n_ref as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return Ok(0.0);
    }
    let (prec, rec) = (prec / orders as f64, rec / orders as f64);
    let f = CHRF_BETA * CHRF_BETA;
    Ok(if prec + rec > 0.0 {
        100.0 * (1.0 + f) * prec * rec / (f * prec + rec)
    } else {
        0.0
    })
}
