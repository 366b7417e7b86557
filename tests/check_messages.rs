//! `portcullis check` on a corpus of broken configs (`tests/check/*/`), compared line for line
//! with what it printed when the corpus was written (`expected.txt`). Every message, its
//! `file:line` and its order are part of the interface: a refactor of the loaders must leave
//! them alone, and a deliberate change shows up here as a diff to review.
//! `PORTCULLIS_BLESS=1 cargo test --test check_messages` rewrites the expected files.

use std::path::Path;
use std::process::Command;

fn run_check(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c", "portcullis.yaml"])
        .current_dir(dir)
        .env_remove("PORTCULLIS_GOLDEN_UNSET")
        .output()
        .unwrap();
    format!(
        "{}{}exit {}\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

#[test]
fn check_prints_what_the_corpus_expects() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("portcullis.yaml").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "the corpus is missing: {root:?}");
    let bless = std::env::var_os("PORTCULLIS_BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = run_check(case);
        let expected_file = case.join("expected.txt");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if got != expected {
            let first = got
                .lines()
                .zip(expected.lines())
                .position(|(g, e)| g != e)
                .unwrap_or(got.lines().count().min(expected.lines().count()));
            failures.push(format!(
                "{}: first difference at line {}:\n  expected: {:?}\n  got:      {:?}\n--- full output ---\n{got}",
                case.file_name().unwrap().to_string_lossy(),
                first + 1,
                expected.lines().nth(first),
                got.lines().nth(first),
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
