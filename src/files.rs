//! Writing files without losing data: every output goes to a uniquely named temporary file
//! beside its destination and is renamed over it only when complete; ponder replaces only
//! regular files (never a device node, a directory or a link's target); a run holds a lock
//! on its output directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A temporary name beside `path`, unique to this process and call: two runs (or two
/// threads) writing the same destination never share a temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let nonce = crate::util::fresh_seed() & 0xffff_ffff;
    path.with_file_name(format!(
        ".{name}.{}-{n}-{nonce:08x}.tmp",
        std::process::id()
    ))
}

/// Refuse to replace `path` unless it is absent or a regular file.
pub fn check_replaceable(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(Error::invalid(
            "output",
            format!(
                "{} exists and is not a regular file ({}); ponder will not replace it",
                path.display(),
                if m.is_dir() {
                    "a directory"
                } else if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "a device, socket or pipe"
                }
            ),
        )),
    }
}

/// Write `bytes` to a fresh temporary file beside `path` and flush it to disk. The caller
/// renames it into place (or removes it). On error the temporary file is removed.
pub fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    check_replaceable(path)?;
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(tmp)
}

/// Write `bytes` to `path` atomically: a reader sees the old file or the new one, never a
/// mixture, and a failed write (a full disk) leaves the old file as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    failpoint("before-rename");
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Write a new file at `path`, never replacing one: the bytes go to a temporary file that
/// is then hard-linked to `path`, which fails if `path` exists by then (a file another
/// process made meanwhile is kept). Where hard links are unsupported, the existence check
/// and a rename are used instead.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let exists = |p: &Path| {
        Error::file(
            p,
            "already exists; ponder does not overwrite a file: choose another --out",
        )
    };
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let tmp = write_temp(path, bytes)?;
    failpoint("before-rename");
    let linked = std::fs::hard_link(&tmp, path);
    let result = match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(path)),
        Err(_) if std::fs::symlink_metadata(path).is_err() => {
            return std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(path, e)
            })
        }
        Err(e) => Err(Error::io(path, e)),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Fault injection for the crash-and-resume tests: with `PONDER_TEST_KILL_AT=NAME` or
/// `NAME:N`, the process aborts the N-th time (default the first) it reaches the point
/// `NAME`. An abort runs no destructors and cleans nothing up, as a SIGKILL would, but it
/// lands exactly in the window a test wants (between writing a temporary file and
/// renaming it, in the middle of pruning) instead of wherever a timer happens to fall.
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SPEC: std::sync::OnceLock<Option<(String, usize)>> = std::sync::OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("PONDER_TEST_KILL_AT").ok()?;
        Some(match v.split_once(':') {
            Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    let Some((want, nth)) = spec else {
        return;
    };
    if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        eprintln!("ponder: test failpoint {name}:{nth} reached, aborting");
        std::process::abort();
    }
}

/// Write several files as one step: every file is written to a temporary name first, and
/// only when all of them are complete are they renamed into place. A failure (a full
/// disk) on any one leaves every destination untouched and no temporary file behind.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut temps: Vec<(PathBuf, &Path)> = Vec::new();
    for (path, bytes) in files {
        match write_temp(path, bytes) {
            Ok(t) => temps.push((t, path)),
            Err(e) => {
                for (t, _) in &temps {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e);
            }
        }
    }
    for (i, (tmp, path)) in temps.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            for (t, _) in &temps[i..] {
                let _ = std::fs::remove_file(t);
            }
            return Err(Error::io(path, e));
        }
        if i == 0 {
            failpoint("between-renames");
        }
    }
    Ok(())
}

/// Remove temporary files that a killed run left in `dir` (ours only: `.NAME.PID-N-X.tmp`
/// whose process is gone).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let pid = name
            .trim_end_matches(".tmp")
            .rsplit('.')
            .next()
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !process_alive(pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true // unknown: keep the file
    }
}

/// An exclusive lock on an output directory, held while a run writes into it and released
/// when dropped, or by the OS when the process dies (so a killed run leaves no stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    /// Lock `dir` (created if missing), or fail naming the directory when another run holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(".ponder.lock");
        check_replaceable(&path)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A lock just released can stay held for a moment by a child process that this
        // process is forking (the child shares the open file until it execs), so a busy
        // lock is tried again for up to half a second before it counts as another run's.
        let mut tries = 0;
        let got = loop {
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if tries < 25 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match got {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::invalid(
                    "output",
                    format!(
                        "{} is in use by another ponder run ({}); wait for it or choose another --out",
                        dir.display(),
                        holder.trim()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let _ = file.set_len(0);
        let _ = write!(file, "pid {}", std::process::id());
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuse anything but a regular file (links followed) before opening it: a FIFO named
/// by a checkpoint would block the open for ever, a device would be read without end.
pub fn require_regular(path: &Path) -> Result<()> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if m.is_file() {
        Ok(())
    } else {
        Err(Error::file(
            path,
            if m.is_dir() {
                "is a directory, not a file"
            } else {
                "is not a regular file (a FIFO, socket or device); ponder reads model files only from regular files"
            },
        ))
    }
}

/// Read a model file as text, from a regular file only (see [`require_regular`]).
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    require_regular(path)?;
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Read a regular file of at most `max` bytes as UTF-8 text (`what` names it in errors):
/// a FIFO or device is refused instead of blocking, a huge file instead of filling memory.
pub fn read_text_bounded(path: &Path, max: usize, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::file(path, format!("{what} must be a regular file")));
    }
    if meta.len() > max as u64 {
        return Err(Error::file(
            path,
            format!("{what} is {} bytes; at most {max} are accepted", meta.len()),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() > max {
        return Err(Error::file(
            path,
            format!("{what} grew past {max} bytes while read"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| Error::file(path, format!("{what} is not UTF-8 text")))
}

/// Refuse an output file that is one of the command's inputs (the same file by any path,
/// links included): writing it would destroy the input it is computed from.
pub fn check_not_input(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let Ok(o) = std::fs::canonicalize(out) else {
        return Ok(()); // absent: it cannot be an existing input
    };
    for (flag, input) in inputs {
        if std::fs::canonicalize(input).is_ok_and(|i| i == o) {
            return Err(Error::file(
                out,
                format!("is also the {flag} input; writing it would overwrite that input: choose another output"),
            ));
        }
    }
    Ok(())
}

/// Refuse an output file inside one of the command's input directories (a model or a
/// tokenizer folder): it could replace one of that folder's files.
pub fn check_not_inside(out: &Path, dirs: &[(&str, &Path)]) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(p) = std::fs::canonicalize(parent) else {
        return Ok(());
    };
    for (flag, dir) in dirs {
        if std::fs::canonicalize(dir).is_ok_and(|d| p.starts_with(&d)) {
            return Err(Error::file(
                out,
                format!("is inside the {flag} directory; writing it could replace one of that folder's files: choose another output"),
            ));
        }
    }
    Ok(())
}

/// The file that marks a directory as a ponder command's output: `{"command": "..."}`.
pub const OUT_MARKER: &str = ".ponder-out.json";

/// The command whose output `dir` is, from its marker (None: no marker, or not ours).
pub fn out_command(dir: &Path) -> Option<String> {
    let path = dir.join(OUT_MARKER);
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("command")?.as_str().map(str::to_string)
}

/// Whether `dir` holds nothing but ponder's own lock file.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.file_name() != ".ponder.lock" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Why `dir` may not be `command`'s output directory, or None when it may: it is absent,
/// empty, or marked as made by the same command.
fn out_dir_refusal(dir: &Path, command: &str) -> Result<Option<String>> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(_) => return Ok(None),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        // follow a link to a directory, as a user who links runs/ elsewhere expects
        if !dir.is_dir() {
            return Ok(Some(
                "is a link to something that is not a directory".into(),
            ));
        }
    } else if !meta.is_dir() {
        return Ok(Some("exists and is not a directory".into()));
    }
    if is_empty_dir(dir)? {
        return Ok(None);
    }
    Ok(match out_command(dir) {
        Some(c) if c == command => None,
        Some(c) => Some(format!(
            "holds the output of `ponder {c}`, not of `ponder {command}`"
        )),
        None => Some("is not empty and was not made by ponder".into()),
    })
}

/// Claim `dir` as the output directory of `command` (e.g. "sft", "thinkpo"), and lock it
/// for this run. An output directory is new, empty, or one that ponder made for the same
/// command (its marker file says so); anything else is refused before a file is written,
/// so no user file is ever overwritten or deleted.
pub fn claim_out_dir(dir: &Path, command: &str) -> Result<DirLock> {
    let refuse = |why: String| {
        Error::file(
            dir,
            format!("{why}; ponder writes only into a new or empty directory, or one it made for `ponder {command}`: choose another --out"),
        )
    };
    if let Some(why) = out_dir_refusal(dir, command)? {
        return Err(refuse(why));
    }
    let lock = DirLock::acquire(dir)?;
    // checked again under the lock: another run may have filled it meanwhile
    if let Some(why) = out_dir_refusal(dir, command)? {
        return Err(refuse(why));
    }
    if out_command(dir).is_none() {
        let marker = serde_json::json!({"command": command, "version": env!("CARGO_PKG_VERSION")});
        write_atomic(&dir.join(OUT_MARKER), format!("{marker}\n").as_bytes())?;
    }
    Ok(lock)
}

/// Remove the temporary files of killed runs from `dir` and the folders below it (to
/// `depth` levels).
pub fn remove_stale_temps_below(dir: &Path, depth: usize) {
    remove_stale_temps(dir);
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_stale_temps_below(&e.path(), depth - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ponder-files-{tag}-{}-{:x}",
            std::process::id(),
            crate::util::fresh_seed()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temp_names_are_unique() {
        let p = Path::new("/x/y/model.safetensors");
        let a = temp_path(p);
        let b = temp_path(p);
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
    }

    #[test]
    fn atomic_write_replaces_regular_files_only() {
        let d = tmpdir("replace");
        let f = d.join("a.txt");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let sub = d.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let err = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(sub.is_dir());
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn all_or_nothing_when_one_write_fails() {
        let d = tmpdir("all");
        let a = d.join("a");
        std::fs::write(&a, b"old").unwrap();
        // the second destination is a directory: its write is refused before any rename
        let b = d.join("b");
        std::fs::create_dir_all(&b).unwrap();
        let err = write_all_atomic(&[(a.clone(), b"new".to_vec()), (b.clone(), b"x".to_vec())]);
        assert!(err.is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_lock_excludes_a_second_holder() {
        let d = tmpdir("lock");
        let l1 = DirLock::acquire(&d).unwrap();
        let err = DirLock::acquire(&d).unwrap_err().to_string();
        assert!(err.contains("in use by another ponder run"), "{err}");
        drop(l1);
        DirLock::acquire(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_out_dir_is_new_empty_or_made_by_the_same_command() {
        let d = tmpdir("claim");
        // new
        let out = d.join("run");
        let l = claim_out_dir(&out, "sft").unwrap();
        drop(l);
        assert_eq!(out_command(&out).as_deref(), Some("sft"));
        std::fs::write(out.join("metrics.jsonl"), b"{}\n").unwrap();
        // the same command again
        drop(claim_out_dir(&out, "sft").unwrap());
        // another command
        let err = claim_out_dir(&out, "dpo").unwrap_err().to_string();
        assert!(err.contains("ponder sft"), "{err}");
        // a user's folder: refused, and nothing written into it
        let user = d.join("user");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("notes.txt"), b"mine").unwrap();
        let err = claim_out_dir(&user, "thinkpo").unwrap_err().to_string();
        assert!(err.contains("not made by ponder"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&user)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // an empty folder
        let empty = d.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        drop(claim_out_dir(&empty, "init").unwrap());
        // a file
        let err = claim_out_dir(&user.join("notes.txt"), "init")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
