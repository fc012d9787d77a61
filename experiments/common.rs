//! What the experiment binaries share: progress bars that still report when stderr is not a
//! terminal (a log file, CI), where indicatif draws nothing and its `println` is silent.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps drawn with `template` (hidden when stderr is not a terminal).
pub fn bar(len: u64, template: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template)?);
    Ok(bar)
}

/// Prints `line` above the bar on a terminal; elsewhere to stderr, so that logs keep it.
pub fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line.as_ref());
    }
}
