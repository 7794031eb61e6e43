//! The checked-in fuzz corpora (`fuzz/corpus/<target>/`, minimized by `scripts/fuzz.sh`)
//! as a regression suite on stable: every file goes once through its target's function
//! (`sca_dispatch::fuzzing`), which panics when an invariant breaks.
#![cfg(feature = "fuzzing")]

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in sca_dispatch::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("a corpus file");
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} breaks an invariant", f.display());
            }
        }
        total += files.len();
    }
    assert!(total >= sca_dispatch::fuzzing::TARGETS.len());
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in sca_dispatch::fuzzing::TARGETS {
        let f = root.join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.contains(&format!("sca_dispatch::fuzzing::{name}(")),
            "{}",
            f.display()
        );
    }
}
