//! The `walsink` command-line tool: what an operator runs against a sink's directory
//! (docs/OPERATIONS.md has the runbook).
//!
//! Exit codes, for every command:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | damage found, or nothing matched (like `grep`) |
//! | 2 | unusable directory, or bad arguments |
//! | 3 | the directory is locked by a live sink and the command would change it |
//!
//! Reading commands work while a sink runs. Any failure is one line on stderr; no
//! directory content makes the tool panic.

/// Writes to stdout, ignoring a closed pipe (`walsink verify --json DIR | head -1`):
/// the rest of the output is dropped, the exit code stays the command's.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = std::io::stdout().lock().write_fmt(format_args!($($arg)*));
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        out!("{}\n", format_args!($($arg)*));
    }};
}

mod dlq;
mod overlay;
mod repair;
mod wal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::wal::format::{CURSOR_FILE, DEAD_LETTER_DIR, LOCK_FILE, SEGMENT_SUFFIX, SEQ_LEASE_FILE};

/// How a command ended (the process exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Done = 0,
    DamageOrNoMatch = 1,
    Unusable = 2,
    Locked = 3,
}

/// A command's failure: its exit code and one line for stderr.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl fmt::Display) -> Self {
        Self {
            exit,
            message: message.to_string(),
        }
    }
}

impl From<crate::DeadLetterError> for Failure {
    fn from(e: crate::DeadLetterError) -> Self {
        use crate::DeadLetterError as E;
        let exit = match &e {
            E::Locked { .. } => Exit::Locked,
            E::NotAWalDirectory { .. } => Exit::Unusable,
            _ => Exit::DamageOrNoMatch,
        };
        Self::new(exit, e)
    }
}

/// Operator tooling for a walsink directory.
#[derive(Debug, Parser)]
#[command(name = "walsink", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What the directory holds: segments, cursor, lease, pending, dead letters, lock.
    #[command(after_help = "Example: walsink inspect /var/lib/app/dlq-wal --json")]
    Inspect {
        /// The sink's directory (`SinkConfig::dir`).
        dir: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check every segment header, frame and register; exit 1 if anything is damaged.
    #[command(after_help = "Example: walsink verify /var/lib/app/dlq-wal && echo intact")]
    Verify {
        /// The sink's directory.
        dir: PathBuf,
        /// One JSON object per problem (`file`, `offset`, `kind`).
        #[arg(long)]
        json: bool,
    },
    /// Print the records in the WAL with their seq and size.
    #[command(
        after_help = "Example: walsink dump /var/lib/app/dlq-wal --from 1000 --limit 5 --format json"
    )]
    Dump {
        /// The sink's directory.
        dir: PathBuf,
        /// First seq to print.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// How to print payloads.
        #[arg(long, value_enum, default_value_t = wal::DumpFormat::Text)]
        format: wal::DumpFormat,
    },
    /// Do offline what `open` does: cut a torn tail, quarantine what cannot be read.
    #[command(after_help = "Example: walsink repair /var/lib/app/dlq-wal --dry-run")]
    Repair {
        /// The sink's directory.
        dir: PathBuf,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The sink's codec id, when no readable segment or dead letter names it
        /// (1 bincode, 2 raw).
        #[arg(long, value_name = "ID")]
        codec_id: Option<u32>,
    },
    /// Dead letters: records the drain rejected permanently or that no longer decode.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

/// The `walsink` binary's entry point: parses the arguments, runs the command, and
/// returns its exit code (see the module doc).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version are not errors.
            let code = if e.use_stderr() {
                Exit::Unusable as u8
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walsink: cannot start a runtime: {e}");
            return ExitCode::from(Exit::Unusable as u8);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Inspect { dir, json } => wal::inspect(&dir, json),
            Command::Verify { dir, json } => wal::verify(&dir, json),
            Command::Dump {
                dir,
                from,
                limit,
                format,
            } => wal::dump(&dir, from, limit, format),
            Command::Repair {
                dir,
                dry_run,
                codec_id,
            } => repair::repair(&dir, dry_run, codec_id),
            Command::Dlq(c) => dlq::run(c).await,
        }
    });
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(f) => {
            eprintln!("walsink: {}", f.message);
            ExitCode::from(f.exit as u8)
        }
    }
}

/// Checks that `dir` is a walsink directory: exists, is a directory, and holds one of
/// the files a sink creates.
fn walsink_dir(dir: &Path) -> Result<PathBuf, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(Exit::Unusable, format!("{}: {e}", dir.display())))?;
    let ours = entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        [LOCK_FILE, CURSOR_FILE, SEQ_LEASE_FILE, DEAD_LETTER_DIR].contains(&name.as_ref())
            || name.ends_with(SEGMENT_SUFFIX)
    });
    if !ours {
        return Err(Failure::new(
            Exit::Unusable,
            format!(
                "{}: not a walsink directory (no LOCK, CURSOR, segment or dead-letters)",
                dir.display()
            ),
        ));
    }
    Ok(dir.to_path_buf())
}
