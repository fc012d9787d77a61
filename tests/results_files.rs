//! Results files (JSON lines) never become unreadable: non-finite numbers round-trip or are refused
//! before anything is written, a bad line costs only itself (reported with its file and line), the
//! appender never buries a bad last line, and rewriting keeps the bytes of the lines it keeps.

use std::path::PathBuf;

use fwp::lm::train::EvalLog;
use fwp::report::{append_record, read_records, read_records_checked, retain_records};
use fwp::retrieval::RunResult;
use serde::Serialize;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwp-results-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn result(final_eval_loss: f64, best_eval_loss: f64) -> RunResult {
    RunResult {
        final_eval_loss,
        best_eval_loss,
        steps: 0,
        seconds: 0.5,
        solved: false,
        history: vec![(100, f64::NAN), (200, 0.25)],
    }
}

#[test]
fn non_finite_losses_and_perplexities_round_trip() {
    let dir = scratch("nonfinite");
    let path = dir.join("results.jsonl");
    append_record(&path, &result(f64::NAN, f64::INFINITY)).unwrap();
    append_record(&path, &result(0.125, f64::NEG_INFINITY)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("null"), "{text}");
    let back: Vec<RunResult> = read_records(&path).unwrap();
    assert_eq!(back.len(), 2);
    assert!(back[0].final_eval_loss.is_nan());
    assert_eq!(back[0].best_eval_loss, f64::INFINITY);
    assert!(back[0].history[0].1.is_nan() && back[0].history[1] == (200, 0.25));
    assert_eq!(back[1].final_eval_loss, 0.125);
    assert_eq!(back[1].best_eval_loss, f64::NEG_INFINITY);

    // a diverged model's perplexity, and the null an older version wrote for one
    let evals = dir.join("eval.jsonl");
    let log = |perplexity| EvalLog {
        step: 3,
        split: "valid".into(),
        mode: "segments".into(),
        perplexity,
    };
    append_record(&evals, &log(f64::NAN)).unwrap();
    append_record(&evals, &log(f64::INFINITY)).unwrap();
    std::fs::write(
        &evals,
        std::fs::read_to_string(&evals).unwrap()
            + "{\"step\":4,\"split\":\"valid\",\"mode\":\"segments\",\"perplexity\":null}\n",
    )
    .unwrap();
    let back: Vec<EvalLog> = read_records(&evals).unwrap();
    assert_eq!(back.len(), 3);
    assert!(back[0].perplexity.is_nan() && back[2].perplexity.is_nan());
    assert_eq!(back[1].perplexity, f64::INFINITY);
    std::fs::remove_dir_all(&dir).ok();
}

#[derive(Serialize)]
struct Plain {
    name: &'static str,
    inner: Inner,
}

#[derive(Serialize)]
struct Inner {
    rates: Vec<f64>,
}

#[test]
fn a_number_json_cannot_hold_is_refused_before_writing() {
    let dir = scratch("refuse");
    let path = dir.join("results.jsonl");
    append_record(&path, &serde_json::json!({"s": 1})).unwrap();
    let before = std::fs::read(&path).unwrap();
    let bad = Plain {
        name: "x",
        inner: Inner {
            rates: vec![1.0, f64::INFINITY],
        },
    };
    let e = format!("{:#}", append_record(&path, &bad).unwrap_err());
    assert!(e.contains("inner.rates[1]") && e.contains("inf"), "{e}");
    assert!(e.contains("results.jsonl"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_lines_cost_only_themselves() {
    let dir = scratch("bad");
    let path = dir.join("results.jsonl");
    append_record(&path, &serde_json::json!({"s": 1})).unwrap();
    // a complete but invalid last line: a bad record, not a torn append
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap() + "{\"s\": oops}\n",
    )
    .unwrap();
    let (recs, bad) = read_records_checked::<serde_json::Value>(&path).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].line, 2);
    // the appender keeps it (it is not torn) and the next records are read after it
    append_record(&path, &serde_json::json!({"s": 3})).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\xff\xfe not utf-8\n");
    std::fs::write(&path, &bytes).unwrap();
    append_record(&path, &serde_json::json!({"s": 5})).unwrap();
    let (recs, bad) = read_records_checked::<serde_json::Value>(&path).unwrap();
    assert_eq!(
        recs.iter()
            .map(|r| r["s"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 3, 5]
    );
    assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 4]);
    assert!(bad[1].reason.contains("UTF-8"), "{:?}", bad[1]);
    // a torn last line (no newline) is dropped silently, and replaced by the next append
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"s\": 6");
    std::fs::write(&path, &bytes).unwrap();
    let (recs, bad) = read_records_checked::<serde_json::Value>(&path).unwrap();
    assert_eq!((recs.len(), bad.len()), (3, 2));
    append_record(&path, &serde_json::json!({"s": 7})).unwrap();
    let (recs, _) = read_records_checked::<serde_json::Value>(&path).unwrap();
    assert_eq!(recs.last().unwrap()["s"], 7);
    assert!(!std::fs::read(&path)
        .unwrap()
        .windows(6)
        .any(|w| w == b"\"s\": 6"));
    // a whole record whose newline did not make it to disk counts, and the next append completes it
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"s\": 8}");
    std::fs::write(&path, &bytes).unwrap();
    let (recs, _) = read_records_checked::<serde_json::Value>(&path).unwrap();
    assert_eq!(recs.last().unwrap()["s"], 8);
    append_record(&path, &serde_json::json!({"s": 9})).unwrap();
    let (recs, _) = read_records_checked::<serde_json::Value>(&path).unwrap();
    let tail: Vec<i64> = recs
        .iter()
        .rev()
        .take(2)
        .map(|r| r["s"].as_i64().unwrap())
        .collect();
    assert_eq!(tail, vec![9, 8]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_directory_or_unreadable_path_is_named() {
    let dir = scratch("dir");
    let path = dir.join("results.jsonl");
    std::fs::create_dir_all(&path).unwrap();
    let e = read_records::<serde_json::Value>(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("results.jsonl") && e.contains("directory"),
        "{e}"
    );
    let e = append_record(&path, &serde_json::json!({"s": 1}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("results.jsonl") && e.contains("directory"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rewriting_keeps_the_bytes_of_the_kept_lines() {
    let dir = scratch("retain");
    let path = dir.join("train.jsonl");
    // numbers a parse-and-print would change: 17 significant digits, an exponent, spacing
    let lines = [
        "{\"step\":0,\"loss\":0.30000000000000004}",
        "{\"step\": 1, \"loss\": 1e-7}",
        "{\"step\":2,\"loss\":2.2250738585072014e-308,\"lr\":0.1000000000000000055511151231257827}",
        "{\"step\":3,\"loss\":6.0}",
    ];
    std::fs::write(&path, lines.join("\n") + "\n{\"step\":4,").unwrap();
    retain_records(&path, |v| v["step"].as_u64().is_some_and(|s| s < 3)).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        lines[..3].join("\n") + "\n"
    );
    // a whole last record without its newline is kept (and completed) when it is to be kept
    std::fs::write(&path, lines.join("\n")).unwrap();
    retain_records(&path, |_| true).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        lines.join("\n") + "\n"
    );
    std::fs::remove_dir_all(&dir).ok();
}
