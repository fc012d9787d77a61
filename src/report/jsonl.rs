use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

/// Appends `record` as one JSON line with a single write (O_APPEND: concurrent appenders never
/// interleave within a line) and syncs it to disk before returning.
/// A last line left incomplete by a crash is cut off first, so the new record starts a line.
pub fn append_record<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .with_context(|| format!("opening {} to append", path.display()))?;
    cut_torn_tail(&mut f).with_context(|| format!("repairing the end of {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))?;
    f.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Truncates the file after its last newline if it does not end with one.
fn cut_torn_tail(f: &mut std::fs::File) -> std::io::Result<()> {
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
    f.set_len(keep as u64)
}

/// Every record of a JSON-lines file (none if it does not exist). A last line cut short by a crash
/// is skipped with a warning; a malformed line elsewhere is an error naming the line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let lines: Vec<String> = BufReader::new(f).lines().collect::<std::io::Result<_>>()?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) if i + 1 == lines.len() => {
                eprintln!(
                    "warning: {}:{}: ignoring an incomplete last line ({e})",
                    path.display(),
                    i + 1
                )
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))
            }
        }
    }
    Ok(out)
}
