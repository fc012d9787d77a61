//! Writing results: JSON-lines records appended atomically (so an interrupted sweep loses nothing and
//! resumes where it stopped), files replaced atomically, markdown tables, and line plots as PNG
//! and SVG.

mod finite;
mod jsonl;
mod plot;
pub mod real;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

pub use finite::check_finite;
pub use jsonl::{
    append_record, read_records, read_records_checked, read_records_if_any, retain_records, BadLine,
};
pub use plot::{line_plot, Axis, Series};

/// Replaces `path` with `bytes` so that a reader, or a crash at any moment, sees the old file or the
/// new one, never a part: the bytes go to a temporary file beside it, which is synced to disk and
/// renamed over `path`; then the directory is synced so that the rename itself is durable.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    // a name of its own per process and call, so that writers of the same path never share one
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("writing {} (through {})", path.display(), tmp.display()));
    }
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// Syncs a directory, so that the renames and new entries in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// A markdown table from a header and rows of cells.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        s += &format!("| {} |\n", r.join(" | "));
    }
    s
}

/// The median of `xs` (the mean of the middle two for an even count; NaN for none); NaN sorts last.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
