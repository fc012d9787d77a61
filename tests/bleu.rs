//! fwp's BLEU and chrF against the `sacrebleu` package (2.6.0, in the project's Python) on the
//! fixture pair `tests/fixtures/mt/bleu.{hyp,ref}` and parts of it, to 0.01.

mod common;

use std::path::{Path, PathBuf};

use fwp::mt::bleu::{corpus_bleu, corpus_chrf, tokenize_13a, BLEU_SIGNATURE, CHRF_SIGNATURE};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mt")
        .join(name)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// sacreBLEU's (BLEU, its four precisions, BP, chrF, BLEU signature, chrF signature, the 13a
/// tokens of every hypothesis) for the hypotheses and references given as JSON.
fn sacrebleu(hyps: &[String], refs: &[String]) -> serde_json::Value {
    let script = "import json, sys\n\
                  from sacrebleu.metrics import BLEU, CHRF\n\
                  from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a\n\
                  h, r = json.loads(sys.stdin.read())\n\
                  b, c, t = BLEU(), CHRF(), Tokenizer13a()\n\
                  s = b.corpus_score(h, [r])\n\
                  print(json.dumps({'bleu': s.score, 'precisions': s.precisions, 'bp': s.bp,\n\
                      'chrf': c.corpus_score(h, [r]).score, 'bleu_sig': str(b.get_signature()),\n\
                      'chrf_sig': str(c.get_signature()), 'tok': [t(x.rstrip()) for x in h]}))";
    let mut child = std::process::Command::new(common::python())
        .args(["-W", "ignore", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&(hyps, refs)).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sacrebleu failed (is sacrebleu==2.6.0 in the project's Python? make setup installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(label: &str, hyps: &[String], refs: &[String]) {
    let want = sacrebleu(hyps, refs);
    let bleu = corpus_bleu(hyps, refs).unwrap();
    let chrf = corpus_chrf(hyps, refs).unwrap();
    println!(
        "{label}: fwp {bleu} chrF2 {chrf:.4}; sacrebleu {} / {}",
        want["bleu"], want["chrf"]
    );
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(
        (bleu.score - f(&want["bleu"])).abs() < 0.01,
        "{label}: BLEU {} vs {}",
        bleu.score,
        want["bleu"]
    );
    assert!(
        (chrf - f(&want["chrf"])).abs() < 0.01,
        "{label}: chrF {chrf} vs {}",
        want["chrf"]
    );
    assert!(
        (bleu.brevity_penalty - f(&want["bp"])).abs() < 1e-9,
        "{label}: BP"
    );
    for (n, p) in bleu.precisions.iter().enumerate() {
        assert!(
            (p - f(&want["precisions"][n])).abs() < 1e-9,
            "{label}: precision {}",
            n + 1
        );
    }
    for (h, t) in hyps.iter().zip(want["tok"].as_array().unwrap()) {
        assert_eq!(
            tokenize_13a(h),
            t.as_str().unwrap(),
            "{label}: 13a tokens of {h:?}"
        );
    }
    assert_eq!(want["bleu_sig"], BLEU_SIGNATURE);
    assert_eq!(want["chrf_sig"], CHRF_SIGNATURE);
}

#[test]
fn bleu_and_chrf_match_sacrebleu_on_the_fixture_and_its_parts() {
    let (hyps, refs) = (lines(&fixture("bleu.hyp")), lines(&fixture("bleu.ref")));
    assert_eq!(hyps.len(), refs.len());
    check("whole file", &hyps, &refs);
    // small parts: orders without any match (the exp smoothing), a short hypothesis (BP < 1),
    // no 4-grams at all
    check("lines 1-2", &hyps[..2], &refs[..2]);
    check("line 5", &hyps[4..5], &refs[4..5]);
    check("line 10", &hyps[9..10], &refs[9..10]);
    check("lines 11-12", &hyps[10..], &refs[10..]);
    // identical text scores 100
    let perfect = corpus_bleu(&refs, &refs).unwrap();
    assert!((perfect.score - 100.0).abs() < 1e-9, "{perfect}");
}

#[test]
fn bleu_refuses_unpaired_inputs_and_scores_nothing_as_zero() {
    let a = vec!["a b c".to_string()];
    let err = corpus_bleu(&a, &[]).unwrap_err().to_string();
    assert!(err.contains("1 hypotheses for 0 references"), "{err}");
    assert!(corpus_chrf(&a, &[]).is_err());
    let empty = vec![String::new()];
    assert_eq!(corpus_bleu(&empty, &a).unwrap().score, 0.0);
    assert_eq!(corpus_chrf(&empty, &a).unwrap(), 0.0);
}
