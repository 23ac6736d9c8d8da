//! `fleet-config`: validate a fleet repository or print its release digest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_config::{digest_dir, validate_dir, Severity};

/// Check and digest fleet repositories (what operators `git push` to release).
#[derive(Parser)]
#[command(name = "fleet-config", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report every problem in a fleet repository as FILE:LINE:COL: message; exit 1 if any
    /// error was found, 0 with a one-line summary when it is valid.
    Validate {
        /// The repository's root directory (a Git checkout or a plain copy).
        path: PathBuf,
    },
    /// Print the release digest (sha256 over the tree, `.git` excluded).
    Digest {
        /// The repository's root directory.
        path: PathBuf,
    },
}

/// How a file inside the repository is shown: relative to where the user pointed.
fn shown(root: &Path, file: &str) -> String {
    if root == Path::new(".") {
        file.to_owned()
    } else {
        root.join(file).display().to_string()
    }
}

fn validate(path: &Path) -> ExitCode {
    let validation = match validate_dir(path) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("fleet-config: cannot read repository: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let diags = &validation.diagnostics;
    for d in diags.sorted() {
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(
            out,
            "{}:{}:{}: {kind}: {}",
            shown(path, &d.file),
            d.pos.line,
            d.pos.col,
            d.message
        );
    }
    match &validation.repo {
        Some(repo) => {
            let digest = match digest_dir(path) {
                Ok(d) => d.to_string(),
                Err(e) => {
                    eprintln!("fleet-config: cannot digest repository: {e}");
                    return ExitCode::from(1);
                }
            };
            let warnings = match diags.warning_count() {
                0 => String::new(),
                1 => ", 1 warning".into(),
                n => format!(", {n} warnings"),
            };
            let _ = writeln!(
                out,
                "ok: fleet `{}` is valid: {} devices ({} canaries), {} stacks, {} waves{warnings}; digest {digest}",
                repo.fleet.name,
                repo.devices.devices.len(),
                repo.canaries().len(),
                repo.stacks.len(),
                repo.fleet.rollout.waves.len(),
            );
            ExitCode::SUCCESS
        }
        None => {
            let n = diags.error_count();
            eprintln!(
                "fleet-config: {} is not valid: {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { path } => validate(&path),
        Command::Digest { path } => match digest_dir(&path) {
            Ok(d) => {
                println!("{d}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-config: cannot digest repository: {e}");
                ExitCode::from(1)
            }
        },
    }
}
