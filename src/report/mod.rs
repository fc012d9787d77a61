//! Writing results: JSON-lines records appended atomically (so an interrupted sweep loses nothing and
//! resumes where it stopped), markdown tables, and line plots as PNG and SVG.

mod jsonl;
mod plot;

pub use jsonl::{append_record, read_records};
pub use plot::{line_plot, Axis, Series};

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
