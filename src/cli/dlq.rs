//! `walsink dlq`: list, inspect, redrive and purge a directory's dead letters.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};

use super::{Exit, Failure, walsink_dir};
use crate::dead_letter::StoredEntry;
use crate::dead_letter::{DeadLetterError, DeadLetterStore, Selection, StoreFiles, rfc3339};
use crate::wal::storage::{RealStorage, Storage};

/// `walsink dlq` subcommands; each takes the sink's directory.
#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// Print how many dead letters the directory holds.
    Count {
        /// The sink's directory (`SinkConfig::dir`).
        dir: PathBuf,
    },
    /// List dead letters in seq order (exit 1 if none is listed).
    List {
        /// The sink's directory.
        dir: PathBuf,
        /// First original seq to list.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        /// Most dead letters to list.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
        /// One JSON object per line: seq, reason, error, attempts, first_failed_at,
        /// dead_lettered_at, len, payload_hex.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload.
    Show {
        /// The sink's directory.
        dir: PathBuf,
        /// Its original seq.
        seq: u64,
        /// How to print the payload.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Append dead letters back to the WAL as new records (the sink must be stopped).
    Redrive {
        /// The sink's directory.
        dir: PathBuf,
        #[command(flatten)]
        which: Which,
    },
    /// Delete dead letters for good (the sink must be stopped).
    Purge {
        /// The sink's directory.
        dir: PathBuf,
        #[command(flatten)]
        which: Which,
    },
}

/// Which dead letters a change takes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(super) struct Which {
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// These original seqs.
    #[arg(long = "seq", value_name = "SEQ", num_args = 1..)]
    seqs: Vec<u64>,
}

impl Which {
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else {
            Selection::Seqs(self.seqs.clone())
        }
    }
}

/// Payload formats for `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    /// The context, then the payload as text (invalid UTF-8 replaced).
    Text,
    /// The context, then a hex dump of the payload.
    Hex,
    /// One JSON object, as `list --json` prints.
    Json,
}

pub(super) async fn run(cmd: DlqCommand) -> Result<Exit, Failure> {
    match cmd {
        DlqCommand::Count { dir } => {
            let store = read_store(&dir)?;
            outln!("{}", store.count());
            Ok(damage_exit(&dir, &store))
        }
        DlqCommand::List {
            dir,
            from,
            limit,
            json,
        } => {
            let store = read_store(&dir)?;
            let seqs = store.seqs(from, limit);
            let mut out = String::new();
            if !json && !seqs.is_empty() {
                out.push_str(
                    "seq\treason\tattempts\tfirst_failed_at\tdead_lettered_at\tlen\terror\n",
                );
            }
            let mut listed = 0;
            for seq in seqs {
                let Some(e) = read_entry(&store, seq)? else {
                    continue;
                };
                listed += 1;
                if json {
                    out.push_str(&json_line(&e));
                } else {
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        e.meta.seq,
                        e.meta.reason,
                        e.meta.attempts,
                        rfc3339(e.meta.first_failed_at),
                        rfc3339(e.meta.dead_lettered_at),
                        e.payload.len(),
                        one_line(&e.meta.error)
                    );
                }
            }
            out!("{out}");
            let exit = damage_exit(&dir, &store);
            if listed == 0 {
                eprintln!("walsink: no dead letter at or above seq {from}");
                return Ok(Exit::DamageOrNoMatch);
            }
            Ok(exit)
        }
        DlqCommand::Show { dir, seq, format } => {
            let store = read_store(&dir)?;
            let Some(e) = read_entry(&store, seq)? else {
                return Err(Failure::new(
                    Exit::DamageOrNoMatch,
                    format!("no dead letter with seq {seq} in {}", dir.display()),
                ));
            };
            let codec_id = store.codec_id().unwrap_or(0);
            match format {
                Format::Json => out!("{}", json_line(&e)),
                Format::Text | Format::Hex => {
                    let mut out = String::new();
                    let m = &e.meta;
                    let _ = writeln!(out, "seq:              {}", m.seq);
                    let _ = writeln!(out, "reason:           {}", m.reason);
                    let _ = writeln!(out, "attempts:         {}", m.attempts);
                    let _ = writeln!(out, "first_failed_at:  {}", rfc3339(m.first_failed_at));
                    let _ = writeln!(out, "dead_lettered_at: {}", rfc3339(m.dead_lettered_at));
                    let _ = writeln!(out, "codec_id:         {codec_id}");
                    let _ = writeln!(out, "len:              {}", e.payload.len());
                    let _ = writeln!(out, "error:            {}", one_line(&m.error));
                    out.push_str("payload:\n");
                    if format == Format::Hex {
                        out.push_str(&hex_dump(&e.payload));
                    } else {
                        out.push_str(&String::from_utf8_lossy(&e.payload));
                        out.push('\n');
                    }
                    out!("{out}");
                }
            }
            Ok(damage_exit(&dir, &store))
        }
        DlqCommand::Redrive { dir, which } => {
            let dir = walsink_dir(&dir)?;
            let store = DeadLetterStore::open(&dir).await?;
            let selected = selected(&store, &which).await?;
            let moved = match store.redrive(which.selection()).await {
                Ok(m) => m,
                Err(DeadLetterError::Sink { redriven, source }) => {
                    // What moved before the failure is in the WAL and out of the store.
                    for (old, new) in &redriven {
                        outln!("seq {old} -> {new}");
                    }
                    return Err(Failure::new(
                        Exit::DamageOrNoMatch,
                        format!(
                            "redrive stopped after {} dead letters: {source}",
                            redriven.len()
                        ),
                    ));
                }
                Err(DeadLetterError::Purge { redriven, source }) => {
                    // In the WAL now, and possibly still in the store as well.
                    for (old, new) in &redriven {
                        outln!("seq {old} -> {new}");
                    }
                    let seqs: Vec<String> = redriven.iter().map(|(o, _)| o.to_string()).collect();
                    return Err(Failure::new(
                        Exit::DamageOrNoMatch,
                        format!(
                            "{} dead letters were appended to the WAL, but removing them from the store failed: {source}; remove them with `walsink dlq purge {} --seq {}` instead of redriving them again",
                            redriven.len(),
                            dir.display(),
                            seqs.join(" --seq ")
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            for (old, new) in &moved {
                outln!("seq {old} -> {new}");
            }
            outln!("redriven {} dead letters", moved.len());
            held_back(selected, moved.len() as u64);
            Ok(if moved.is_empty() {
                Exit::DamageOrNoMatch
            } else {
                Exit::Done
            })
        }
        DlqCommand::Purge { dir, which } => {
            let dir = walsink_dir(&dir)?;
            let store = DeadLetterStore::open(&dir).await?;
            let selected = selected(&store, &which).await?;
            let n = store.purge(which.selection()).await?;
            outln!("purged {n} dead letters");
            held_back(selected, n);
            Ok(if n == 0 {
                Exit::DamageOrNoMatch
            } else {
                Exit::Done
            })
        }
    }
}

/// How many dead letters `which` names in `store` now.
async fn selected(store: &DeadLetterStore, which: &Which) -> Result<u64, Failure> {
    if which.all {
        return Ok(store.count().await?);
    }
    let mut seqs = which.seqs.clone();
    seqs.sort_unstable();
    seqs.dedup();
    let mut n = 0;
    for seq in seqs {
        if store.get(seq).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Says on stderr why some selected dead letters were left in the store.
fn held_back(selected: u64, done: u64) {
    if selected > done {
        eprintln!(
            "walsink: {} selected dead letters were left: their records are not yet durably acknowledged in the WAL (a crash could deliver and store them again); run the sink, then retry",
            selected - done
        );
    }
}

/// Opens the store read-only (nothing on disk changes; works beside a running sink).
fn read_store(dir: &Path) -> Result<StoreFiles, Failure> {
    let dir = walsink_dir(dir)?;
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    StoreFiles::open(storage, &dir, 0, u64::MAX, false).map_err(|e| {
        Failure::new(
            Exit::Unusable,
            format!("{}: cannot read the dead letters: {e}", dir.display()),
        )
    })
}

/// Reads one entry; damage found since the scan is reported and skipped.
fn read_entry(store: &StoreFiles, seq: u64) -> Result<Option<StoredEntry>, Failure> {
    match store.get(seq) {
        Ok(e) => Ok(e),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            eprintln!("walsink: {e}");
            Ok(None)
        }
        Err(e) => Err(Failure::new(Exit::DamageOrNoMatch, e)),
    }
}

/// Exit 1 (with a line on stderr) if the scan found damage, else 0.
fn damage_exit(dir: &Path, store: &StoreFiles) -> Exit {
    match store.damaged() {
        0 => Exit::Done,
        n => {
            eprintln!(
                "walsink: {n} damaged entries or files skipped in {}",
                dir.join(crate::dead_letter::DEAD_LETTER_DIR).display()
            );
            Exit::DamageOrNoMatch
        }
    }
}

/// The `list --json` object for one entry, with its newline.
fn json_line(e: &StoredEntry) -> String {
    let v = serde_json::json!({
        "seq": e.meta.seq,
        "reason": e.meta.reason.as_str(),
        "error": e.meta.error,
        "attempts": e.meta.attempts,
        "first_failed_at": rfc3339(e.meta.first_failed_at),
        "dead_lettered_at": rfc3339(e.meta.dead_lettered_at),
        "len": e.payload.len(),
        "payload_hex": hex(&e.payload),
    });
    format!("{v}\n")
}

pub(super) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// `offset  16 bytes in hex  |printable|` lines.
pub(super) fn hex_dump(b: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in b.chunks(16).enumerate() {
        let _ = write!(out, "{:08x} ", i * 16);
        for x in line {
            let _ = write!(out, " {x:02x}");
        }
        for _ in line.len()..16 {
            out.push_str("   ");
        }
        out.push_str("  |");
        out.extend(line.iter().map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// The error text on one line (newlines and tabs escaped).
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c.is_control() {
            // Newlines, tabs, ESC and CR would break lines or drive the terminal.
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
