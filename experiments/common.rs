//! What the experiment binaries share: the Ctrl-C flag and outcome of training commands, and
//! progress bars that still report when stderr is not a
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

/// A flag that the first Ctrl-C sets (the training loop then saves a checkpoint and stops); a second
/// Ctrl-C exits at once.
#[allow(dead_code)] // bench has no training loop
pub fn stop_on_ctrl_c() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use anyhow::Context;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "interrupt: finishing the current update, then saving a checkpoint (Ctrl-C again to quit now)"
        );
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Shows an update on a training bar: its position, and loss, learning rate and speed where the
/// update was logged (also to stderr when the bar is hidden).
#[allow(dead_code)]
pub fn show_update(bar: &ProgressBar, step: usize, loss: f64, lr: f64, tokens_per_s: Option<f64>) {
    bar.set_position(step as u64);
    if let Some(rate) = tokens_per_s {
        let line = format!("loss {loss:.3} lr {lr:.2e} {rate:.0} tok/s");
        if bar.is_hidden() {
            eprintln!("update {step}: {line}");
        }
        bar.set_message(line);
    }
}

/// The progress display of a training call: the bar's position, loss, learning rate and speed
/// ([`show_update`]), and a line for every evaluation, which `eval_line` writes from the update
/// and the validation score.
#[allow(dead_code)]
pub fn train_progress<'a>(
    bar: &'a ProgressBar,
    eval_line: impl Fn(usize, f64) -> String + 'a,
) -> impl Fn(fwp::training::TrainEvent) + 'a {
    use fwp::training::TrainEvent;
    move |e| match e {
        TrainEvent::Start { step, .. } => bar.set_position(step as u64),
        TrainEvent::Update {
            step,
            loss,
            lr,
            tokens_per_s,
        } => show_update(bar, step, loss, lr, tokens_per_s),
        TrainEvent::Eval { step, score } => say(bar, eval_line(step, score)),
    }
}

/// Prints how a training call ended; a fresh run refused for an existing checkpoint gets the hint
/// to resume it. A run stopped by Ctrl-C (checkpoint saved) ends the process with status 130.
#[allow(dead_code)]
pub fn report_outcome(
    run: &std::path::Path,
    resume: bool,
    outcome: anyhow::Result<fwp::training::Outcome>,
) -> anyhow::Result<()> {
    use fwp::training::Outcome;
    let outcome = outcome.map_err(|e| {
        if !resume && e.to_string().contains("already holds a checkpoint") {
            e.context("pass --resume to continue that run")
        } else {
            e
        }
    });
    match outcome? {
        Outcome::Finished { step } => println!(
            "finished: {step} updates; checkpoint in {}/checkpoint",
            run.display()
        ),
        Outcome::Interrupted { step } => {
            println!("interrupted after {step} updates; checkpoint saved; continue with --resume");
            // 130, the shell's status for a command ended by SIGINT: a script that goes on to
            // evaluate the finished run (scripts/mt-bible-tiny) stops here instead
            std::process::exit(130);
        }
    }
    Ok(())
}

/// The `report` command of a training experiment: `table` of the runs in `runs` (folders with a
/// checkpoint), printed, or written to `out` with the plot beside it as `<stem>-valid.{png,svg}`.
#[allow(dead_code)] // bench has no runs
pub fn write_report(
    runs: &std::path::Path,
    out: Option<&std::path::Path>,
    table: impl Fn(&[std::path::PathBuf], Option<&std::path::Path>) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let dirs = fwp::training::checkpoint::runs_in(runs)?;
    if let Some(parent) = out
        .and_then(|o| o.parent())
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
    }
    let stem = out.map(|o| {
        let name = o.file_stem().and_then(|s| s.to_str()).unwrap_or("table");
        o.with_file_name(format!("{name}-valid"))
    });
    let text = table(&dirs, stem.as_deref())?;
    match out {
        Some(o) => {
            fwp::report::atomic_write(o, text.as_bytes())?;
            println!("wrote {}", o.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Flushes denormal floats to zero for the whole run (`fwp::ops::set_flush_denormal`): call first
/// thing in `main`, before libtorch starts its CPU threads, so that they inherit it.
#[allow(dead_code)] // bench measures kernels on normal inputs and leaves the CPU's default
pub fn flush_denormals() {
    if !fwp::ops::set_flush_denormal(true) {
        eprintln!("note: this CPU cannot flush denormal floats to zero; FAVOR+ may train slowly");
    }
}

/// Sets libtorch's CPU thread count where one is given.
#[allow(dead_code)] // not every binary takes --threads
pub fn set_threads(threads: Option<i32>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        fwp::check::positive("threads", n as i64)?;
        tch::set_num_threads(n);
    }
    Ok(())
}
