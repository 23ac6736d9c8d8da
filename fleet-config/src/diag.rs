//! Diagnostics: problems found in a fleet repository, each tied to a file, line and column.
//!
//! Validation never stops at the first problem: every check pushes into a [`Diagnostics`]
//! collector and the caller decides what to do with the whole list.

use std::fmt;

/// How bad a problem is. Errors make a repository invalid; warnings are printed but accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The repository cannot be released.
    Error,
    /// Accepted, but probably not what the operator meant.
    Warning,
}

/// A position in a file, 1-based like an editor shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line, counting from 1.
    pub line: usize,
    /// Column in characters, counting from 1.
    pub col: usize,
}

impl Pos {
    /// The start of a file; used for problems that concern a whole file.
    pub const START: Pos = Pos { line: 1, col: 1 };
}

/// One problem: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// Path of the file relative to the repository root, with `/` separators.
    pub file: String,
    /// Where in the file.
    pub pos: Pos,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, and where useful what to do instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, kind, self.message
        )
    }
}

/// Collects every problem found in one validation run.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error at `pos` in `file`.
    pub fn error(&mut self, file: &str, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Error, message.into());
    }

    /// Records a warning at `pos` in `file`.
    pub fn warning(&mut self, file: &str, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Warning, message.into());
    }

    fn push(&mut self, file: &str, pos: Pos, severity: Severity, message: String) {
        self.items.push(Diagnostic {
            file: file.to_owned(),
            pos,
            severity,
            message,
        });
    }

    /// True when at least one error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Number of warnings.
    pub fn warning_count(&self) -> usize {
        self.items.len() - self.error_count()
    }

    /// All problems, sorted by file, position, then severity, without exact duplicates.
    pub fn sorted(&self) -> Vec<Diagnostic> {
        let mut v = self.items.clone();
        v.sort();
        v.dedup();
        v
    }

    /// True when nothing at all was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
