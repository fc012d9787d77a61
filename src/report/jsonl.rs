//! JSON-lines results files: one record per line, appended with a single synced write, read back
//! line by line so that one bad line never costs the others.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};

use super::finite::check_finite;

/// Appends `record` as one JSON line with a single write (O_APPEND: concurrent appenders never
/// interleave within a line) and syncs it to disk before returning; appenders take the file's lock
/// in turn. A last line left without its newline by a crash is mended first: completed if it is a
/// whole record (the write stopped just short of the newline), cut off otherwise.
/// A record holding a non-finite number that JSON cannot represent is refused (nothing is written):
/// fields that may legitimately be NaN or infinite are written with [`super::real`].
pub fn append_record<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    check_finite(record).with_context(|| format!("not appending to {}", path.display()))?;
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    refuse_directory(path)?;
    let created = !path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening {} to append", path.display()))?;
    f.lock()
        .with_context(|| format!("locking {} to append", path.display()))?;
    mend_tail(&mut f).with_context(|| format!("repairing the end of {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    if created {
        match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => super::sync_dir(d)?,
            _ => super::sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

fn refuse_directory(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a directory, not a JSON-lines results file",
            path.display()
        );
    }
    Ok(())
}

/// If the file does not end with a newline: adds one when its last line is a whole JSON value,
/// else truncates it after its last newline.
fn mend_tail(f: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::End(-1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut bytes)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if parse::<serde_json::Value>(&bytes[keep..]).is_ok() {
        f.write_all(b"\n")
    } else {
        f.set_len(keep as u64)
    }
}

/// A line of a JSON-lines file that did not give a record.
#[derive(Clone, Debug, PartialEq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// One line of a file: its 1-based number, its bytes (without the newline), and whether it is
/// complete (a last line without its newline is an append cut short).
type Line = (usize, Vec<u8>, bool);

/// The lines of `path`; None if the file does not exist.
fn lines(path: &Path) -> Result<Option<Vec<Line>>> {
    refuse_directory(path)?;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(Some(
        bytes
            .split_inclusive(|&b| b == b'\n')
            .enumerate()
            .map(|(n, chunk)| match chunk.strip_suffix(b"\n") {
                Some(body) => (n + 1, body.to_vec(), true),
                None => (n + 1, chunk.to_vec(), false),
            })
            .collect(),
    ))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Every record of a JSON-lines file (none if it does not exist), and the lines that gave none:
/// blank lines are skipped; a last line without its newline counts if it is a whole record (the
/// next append completes it) and is dropped silently otherwise (an append cut short by a crash,
/// which the next append removes); any other line that does not parse is listed.
pub fn read_records_checked<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Vec<BadLine>)> {
    let Some(lines) = lines(path)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (mut records, mut bad) = (Vec::with_capacity(lines.len()), Vec::new());
    for (line, bytes, complete) in lines {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(&bytes) {
            Ok(r) => records.push(r),
            Err(_) if !complete => {}
            Err(reason) => bad.push(BadLine { line, reason }),
        }
    }
    Ok((records, bad))
}

/// [`read_records_checked`], with a warning on stderr for each line that gave no record (its file,
/// line and reason; the line stays in the file until it is mended or deleted).
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let (records, bad) = read_records_checked(path)?;
    for b in &bad {
        eprintln!(
            "warning: {}:{}: skipped, not a valid record ({}); the other records are read. Mend or \
             delete that line to silence this.",
            path.display(),
            b.line,
            b.reason
        );
    }
    Ok(records)
}

/// Rewrites `path` keeping, byte for byte, the lines whose JSON value `keep` accepts, and the
/// complete lines that do not parse (they are not this function's to drop); a last line without its
/// newline is kept (and completed) only if it is a whole record that `keep` accepts. Atomic: a crash
/// leaves the old file or the new one.
pub fn retain_records(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    let Some(lines) = lines(path)? else {
        return Ok(());
    };
    let mut out = Vec::new();
    for (_, bytes, complete) in lines {
        let kept = match parse::<serde_json::Value>(&bytes) {
            Ok(v) => keep(&v),
            Err(_) => complete,
        };
        if kept {
            out.extend_from_slice(&bytes);
            out.push(b'\n');
        }
    }
    super::atomic_write(path, &out)
}

/// [`read_records`] of `path`, or none where there is no such file (a run not evaluated yet).
pub fn read_records_if_any<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> anyhow::Result<Vec<T>> {
    if path.is_file() {
        read_records(path)
    } else {
        Ok(Vec::new())
    }
}
