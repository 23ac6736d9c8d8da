//! Running the external commands the demo needs (git, docker, the product's CLIs), with errors
//! that say which command failed and what it printed.

use std::path::Path;
use std::process::{Command, Stdio};

/// A command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
}

/// Runs `program args` in `cwd` (if given) with `input` on stdin; returns its stdout.
pub fn run_with(
    program: &str,
    args: &[&str],
    cwd: Option<&Path>,
    input: Option<&[u8]>,
) -> Result<String, CmdError> {
    let mut c = Command::new(program);
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let spawn_err = |source| CmdError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = c.spawn().map_err(spawn_err)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(data).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args`; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String, CmdError> {
    run_with(program, args, None, None)
}
