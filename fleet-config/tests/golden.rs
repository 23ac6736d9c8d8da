//! Golden tests: every broken repository of the corpus gives exactly its expected output.
//!
//! Each case under `tests/corpus/cases/<name>/` is the valid `tests/corpus/base` repository
//! with one fault: files in `overlay/` replace or add files, paths listed in `remove` are
//! deleted. The test builds the repository in a temporary directory, runs the real
//! `fleet-config validate .` there and compares stdout with `expected.txt` byte for byte.
//! `FLEET_BLESS=1 cargo test --test golden` rewrites the expected files (review the diff!).
//!
//! Cases under `tests/corpus/accepted/<name>/` have the same layout but add a construct that
//! must be accepted: validation exits 0 and prints exactly `expected.txt` (the warnings that
//! name the construct, if any, and the summary line).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type().expect("file type");
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).expect("read link");
            let _ = fs::remove_file(&dst);
            std::os::unix::fs::symlink(target, &dst).expect("symlink");
        } else {
            fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn run_validate(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-config"))
        .args(["validate", "."])
        .current_dir(dir)
        .output()
        .expect("run fleet-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cases() -> Vec<PathBuf> {
    cases_in("cases")
}

fn cases_in(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(corpus().join(dir))
        .expect("cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn base_repository_is_valid() {
    let (code, stdout, stderr) = run_validate(&corpus().join("base"));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "a valid repository prints one line:\n{stdout}"
    );
    assert!(stdout.starts_with("ok: fleet `example-fleet` is valid: 10 devices (2 canaries), 2 stacks, 4 waves; digest sha256:"), "{stdout}");
}

#[test]
fn the_shipped_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
    let (code, stdout, stderr) = run_validate(&example);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

#[test]
fn corpus_has_enough_cases() {
    assert!(
        cases().len() >= 25,
        "the corpus must have at least 25 broken repositories"
    );
}

/// Builds `case` over the base repository and runs the validator on it: (name, exit code,
/// stdout, stderr, expected output).
fn run_case(case: &Path, bless: bool) -> (String, i32, String, String, String) {
    let name = case
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    copy_tree(&corpus().join("base"), &repo);
    if case.join("overlay").is_dir() {
        copy_tree(&case.join("overlay"), &repo);
    }
    if let Ok(list) = fs::read_to_string(case.join("remove")) {
        for p in list.lines().filter(|l| !l.trim().is_empty()) {
            fs::remove_file(repo.join(p)).expect("remove listed file");
        }
    }
    let (code, stdout, stderr) = run_validate(&repo);
    let expected_path = case.join("expected.txt");
    if bless {
        fs::write(&expected_path, &stdout).expect("bless");
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    (name, code, stdout, stderr, expected)
}

#[test]
fn every_broken_repository_gives_its_expected_output() {
    let bless = std::env::var_os("FLEET_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let (name, code, stdout, stderr, expected) = run_case(&case, bless);
        if code != 1 {
            failures.push(format!(
                "{name}: exit code {code}, expected 1\n{stdout}{stderr}"
            ));
        }
        if !stdout.lines().any(|l| l.contains(": error: ")) {
            failures.push(format!("{name}: no error reported"));
        }
        if !stderr.contains("is not valid") {
            failures.push(format!("{name}: stderr lacks the summary: {stderr}"));
        }
        if stdout != expected {
            failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}--- actual\n{stdout}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_accepted_construct_validates_with_its_expected_output() {
    let bless = std::env::var_os("FLEET_BLESS").is_some();
    let mut failures = Vec::new();
    let cases = cases_in("accepted");
    assert!(!cases.is_empty(), "no accepted cases found");
    for case in cases {
        let (name, code, stdout, stderr, expected) = run_case(&case, bless);
        if code != 0 {
            failures.push(format!(
                "{name}: exit code {code}, expected 0\n{stdout}{stderr}"
            ));
        }
        if stdout.lines().any(|l| l.contains(": error: ")) {
            failures.push(format!("{name}: an error was reported"));
        }
        if !stdout.lines().any(|l| l.starts_with("ok: ")) {
            failures.push(format!("{name}: no summary line"));
        }
        if stdout != expected {
            failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}--- actual\n{stdout}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
