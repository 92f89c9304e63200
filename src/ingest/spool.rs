//! The on-disk spool of one server: batches it could not take yet, one file
//! each, replayed oldest first (many files merged into one COPY).
//!
//! A file appears whole or not at all (written to a temp name, synced,
//! renamed, directory synced), so a crash or kill -9 never leaves half a
//! batch; a batch committed but not yet removed is harmless, since replay
//! inserts only absent rows. Rows are stored compactly (varints, f32 where
//! exact), about a third of their JSON size. The spool is capped
//! (`spool_max_mb`) and keeps a free-disk floor (`spool_min_free_mb`): at
//! either, new rows are refused and counted as lost, never dropped silently.
//! Batches a server refused for good go to `rejected/`, with the error beside.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::{Batch, Row};
use crate::modbus::value::Value;
use crate::schema::TableSpec;

/// A spool file of the current format.
pub const EXTENSION: &str = "spool";
/// Spool files of essops before the compact format (JSON lines); still replayed.
const JSON_EXTENSION: &str = "batch";
pub const REJECTED_DIR: &str = "rejected";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Header {
    table: String,
    columns: Vec<String>,
    rows: u64,
    #[serde(default)]
    first_t: i64,
    #[serde(default)]
    last_t: i64,
}

/// One spool file as listed.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    pub path: PathBuf,
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub first_t: i64,
    pub last_t: i64,
}

/// How much a spool may hold (0: no cap): `spool_max_mb` and `spool_min_free_mb`.
pub type SpoolLimits = crate::config::SpoolSettings;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    files: VecDeque<SpoolFile>,
    rows: u64,
    bytes: u64,
    seq: u64,
    limits: SpoolLimits,
    warned_full: bool,
    /// Bytes of the batches in `rejected/`: they count toward the cap.
    rejected_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool file {path} is unreadable ({reason}); moved to {to} with the reason beside it (`essops spool list` counts it among the rejected)"
    )]
    Corrupt {
        path: PathBuf,
        to: PathBuf,
        reason: String,
    },
    #[error(
        "spool {dir} is full: {why}; these rows are lost. Bring the server back (its rows then replay), or raise spool_max_mb or free disk space; `essops spool list` shows what is held"
    )]
    Full { dir: PathBuf, why: String },
}

/// A spool file that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("header: {0}")]
    Header(serde_json::Error),
    #[error("row: {0}")]
    Row(serde_json::Error),
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    #[error("truncated")]
    Truncated,
    #[error("varint too long")]
    LongVarint,
    #[error("unknown value tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("device id out of range")]
    DeviceId,
    #[error("{found} rows, header says {header}")]
    Count { found: usize, header: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) a spool directory and lists what an earlier run
    /// left. Only the spool's owner opens it (ingest, or a replay holding
    /// the site's ingest lock), so only it removes a temp file a crash left:
    /// anyone else could be removing one a running writer is about to rename.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        remove_leftover_temp(dir)?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            files: list(dir)?.into(),
            rows: 0,
            bytes: 0,
            seq: 0,
            limits,
            warned_full: false,
            rejected_bytes: 0,
        };
        spool.rows = spool.files.iter().map(|f| f.rows).sum();
        spool.bytes = spool.files.iter().map(|f| f.bytes).sum();
        spool.rejected_bytes = list(&dir.join(REJECTED_DIR))?.iter().map(|f| f.bytes).sum();
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Rows waiting.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends a batch durably, unless the cap or the disk floor forbids it.
    pub fn push(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let body = encode_rows(batch);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.seq += 1;
        let path = self
            .dir
            .join(format!("{nanos:020}-{:08}.{EXTENSION}", self.seq));
        let (first_t, last_t) = span(&batch.rows);
        let header = Header {
            table: batch.spec.name.to_string(),
            columns: batch.columns.to_vec(),
            rows: batch.rows.len() as u64,
            first_t,
            last_t,
        };
        let mut head = serde_json::to_vec(&header).expect("a header serializes");
        head.push(b'\n');
        self.check_room((head.len() + body.len()) as u64)?;
        let _dir = dir_lock(&self.dir)?;
        let bytes = write_file(&self.dir, &path, &head, &body)?;
        self.rows += header.rows;
        self.bytes += bytes;
        self.files.push_back(SpoolFile {
            path,
            table: header.table,
            rows: header.rows,
            bytes,
            first_t,
            last_t,
        });
        Ok(())
    }

    fn check_room(&mut self, adding: u64) -> Result<(), SpoolError> {
        let full = |why: String| SpoolError::Full {
            dir: self.dir.clone(),
            why,
        };
        let max = self.limits.max_bytes;
        // Rejected batches are on the same disk: they count toward the cap.
        let held = self.bytes + self.rejected_bytes;
        if max > 0 && held + adding > max {
            return Err(full(match self.rejected_bytes {
                0 => format!("it holds {held} B of its {max} B cap (spool_max_mb)"),
                r => format!(
                    "it holds {held} B of its {max} B cap (spool_max_mb), {r} B of them rejected batches (`essops spool requeue` once their cause is fixed, or `essops spool discard --rejected`, frees those)"
                ),
            }));
        }
        if max > 0 && !self.warned_full && (held + adding) * 10 >= max * 8 {
            self.warned_full = true;
            tracing::warn!(dir = %self.dir.display(), bytes = self.bytes, cap = max, "spool is at 80 % of its cap (spool_max_mb); at the cap new rows are lost");
        }
        if self.limits.min_free_bytes > 0
            && let Some(free) = crate::disk::free_bytes(&self.dir)
            && free < self.limits.min_free_bytes + adding
        {
            return Err(full(format!(
                "{free} B free on its disk, under the {} B floor (spool_min_free_mb)",
                self.limits.min_free_bytes
            )));
        }
        Ok(())
    }

    /// The oldest files, up to `max_rows` rows in all (at least one file).
    /// The oldest pending batch's first sample (unix seconds), if any.
    pub fn oldest_t(&self) -> Option<i64> {
        self.files.front().map(|f| f.first_t)
    }

    pub fn front(&self, max_rows: u64) -> Vec<SpoolFile> {
        let mut out = Vec::new();
        let mut rows = 0;
        for f in &self.files {
            if !out.is_empty() && rows + f.rows > max_rows {
                break;
            }
            rows += f.rows;
            out.push(f.clone());
        }
        out
    }

    /// Removes files once their rows are committed (or set aside).
    pub fn remove(&mut self, done: &[SpoolFile]) -> Result<(), SpoolError> {
        let _dir = dir_lock(&self.dir)?;
        for f in done {
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&f.path)(e)),
            }
            self.forget(&f.path);
        }
        Ok(())
    }

    /// Drops a file from the list without touching the disk (it is gone:
    /// `essops spool discard` deleted it, or it was moved).
    pub fn forget(&mut self, path: &Path) {
        if let Some(i) = self.files.iter().position(|f| f.path == path) {
            let f = self.files.remove(i).expect("position is in range");
            self.rows -= f.rows;
            self.bytes -= f.bytes;
        }
        if self.limits.max_bytes > 0 && self.bytes * 10 < self.limits.max_bytes * 7 {
            self.warned_full = false;
        }
    }

    /// Moves a file the server refused for good to `rejected/`, with the error beside it.
    pub fn reject(&mut self, file: &SpoolFile, error: &str) -> Result<PathBuf, SpoolError> {
        let _dir = dir_lock(&self.dir)?;
        let dir = self.dir.join(REJECTED_DIR);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = file.path.file_name().unwrap_or_default();
        let to = dir.join(name);
        fs::rename(&file.path, &to).map_err(io(&file.path))?;
        fs::write(to.with_extension("error"), format!("{error}\n")).map_err(io(&to))?;
        self.forget(&file.path);
        self.rejected_bytes += file.bytes;
        Ok(to)
    }

    /// Writes a batch straight to `rejected/` (it was never spooled).
    pub fn reject_batch(&mut self, batch: &Batch, error: &str) -> Result<PathBuf, SpoolError> {
        self.push(batch)?;
        let file = self.files.back().cloned().expect("just pushed");
        self.reject(&file, error)
    }

    /// Moves a file that cannot be read to `rejected/`, with the reason
    /// beside it: it never stops the replay, and the cap still counts it.
    pub fn quarantine_unreadable(&mut self, file: &SpoolFile, reason: String) -> SpoolError {
        let to = match self.reject(file, &format!("unreadable spool file: {reason}")) {
            Ok(to) => to,
            Err(e) => {
                // Not even movable: forget it for this run, so the replay
                // does not spin on it; it stays where it is.
                self.forget(&file.path);
                return e;
            }
        };
        SpoolError::Corrupt {
            path: file.path.clone(),
            to,
            reason,
        }
    }
}

/// The spool folder's own lock (`<server>.lock` beside the folder, so the
/// folder holds batches only), held by the writer around each file
/// operation and by `essops spool discard` while it deletes: a file is never
/// deleted halfway through being written, moved or removed.
pub fn dir_lock(dir: &Path) -> Result<File, SpoolError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.with_extension("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    Ok(file)
}

/// Removes the temp files of writes a crash cut short: their rows were
/// never acknowledged as spooled.
fn remove_leftover_temp(dir: &Path) -> Result<(), SpoolError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

/// Every spool file in `dir`, oldest first. Changes nothing: `essops spool
/// list` runs beside a writer that may be renaming a temp file right now.
pub fn list(dir: &Path) -> Result<Vec<SpoolFile>, SpoolError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if let Some(EXTENSION | JSON_EXTENSION) = path.extension().and_then(|e| e.to_str()) {
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            let h = read_header(&path).unwrap_or_default();
            out.push(SpoolFile {
                path,
                table: h.table,
                rows: h.rows,
                bytes,
                first_t: h.first_t,
                last_t: h.last_t,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn span(rows: &[Row]) -> (i64, i64) {
    let first = rows.iter().map(|r| r.t).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.t).max().unwrap_or(0);
    (first, last)
}

fn write_file(dir: &Path, path: &Path, head: &[u8], body: &[u8]) -> Result<u64, SpoolError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<u64> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        out.write_all(head)?;
        out.write_all(body)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok((head.len() + body.len()) as u64)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        SpoolError::Io {
            path: tmp.clone(),
            source,
        }
    })
}

fn read_header(path: &Path) -> Result<Header, FormatError> {
    let mut line = String::new();
    BufReader::new(File::open(path)?).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(FormatError::Header)
}

/// Reads a spool file back into its batch.
pub fn read_batch(path: &Path) -> Result<Batch, FormatError> {
    let mut file = BufReader::new(File::open(path)?);
    let mut line = String::new();
    file.read_line(&mut line)?;
    let header: Header = serde_json::from_str(&line).map_err(FormatError::Header)?;
    let spec = TableSpec::by_name(&header.table)
        .ok_or_else(|| FormatError::UnknownTable(header.table.clone()))?;
    let rows = match path.extension().and_then(|e| e.to_str()) {
        Some(JSON_EXTENSION) => file
            .lines()
            .map(|l| serde_json::from_str::<Row>(&l?).map_err(FormatError::Row))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            let mut body = Vec::new();
            file.read_to_end(&mut body)?;
            decode_rows(&body, &header, spec.device_columns.len())?
        }
    };
    if rows.len() as u64 != header.rows {
        return Err(FormatError::Count {
            found: rows.len(),
            header: header.rows,
        });
    }
    Ok(Batch {
        spec,
        columns: Arc::new(header.columns),
        rows,
    })
}

const NULL: u8 = 0;
const INT: u8 = 1;
const F64: u8 = 2;
const F32: u8 = 3;

/// Rows as varints (ids, seconds after the batch's first, integers) and
/// floats (4 bytes where f32 holds the value exactly, else 8).
fn encode_rows(batch: &Batch) -> Vec<u8> {
    let (first, _) = span(&batch.rows);
    let mut out = Vec::with_capacity(batch.rows.len() * 64);
    for row in &batch.rows {
        for id in &row.device {
            varint(&mut out, i64::from(*id));
        }
        varint(&mut out, row.t - first);
        for v in &row.values {
            match v {
                None => out.push(NULL),
                Some(Value::Int(i)) => {
                    out.push(INT);
                    varint(&mut out, *i);
                }
                Some(Value::Float(f)) if f64::from(*f as f32) == *f || f.is_nan() => {
                    out.push(F32);
                    out.extend((*f as f32).to_le_bytes());
                }
                Some(Value::Float(f)) => {
                    out.push(F64);
                    out.extend(f.to_le_bytes());
                }
            }
        }
    }
    out
}

fn decode_rows(body: &[u8], header: &Header, ids: usize) -> Result<Vec<Row>, FormatError> {
    let mut r = Reader { body, at: 0 };
    // The header's count is the file's word, not a fact: a corrupt one must
    // not size an allocation. Each row takes at least one byte per column.
    let at_most = body.len() / (ids + header.columns.len()).max(1);
    let mut rows = Vec::with_capacity((header.rows as usize).min(at_most));
    while r.at < body.len() {
        let mut device = Vec::with_capacity(ids);
        for _ in 0..ids {
            device.push(i16::try_from(r.varint()?).map_err(|_| FormatError::DeviceId)?);
        }
        let t = header.first_t + r.varint()?;
        let mut values = Vec::with_capacity(header.columns.len());
        for _ in 0..header.columns.len() {
            values.push(match r.byte()? {
                NULL => None,
                INT => Some(Value::Int(r.varint()?)),
                F32 => Some(Value::Float(f64::from(f32::from_le_bytes(r.array()?)))),
                F64 => Some(Value::Float(f64::from_le_bytes(r.array()?))),
                tag => return Err(FormatError::Tag { tag, at: r.at }),
            });
        }
        rows.push(Row {
            device,
            t,
            values,
            device_index: 0,
            polled: None,
        });
    }
    Ok(rows)
}

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, FormatError> {
        let b = *self.body.get(self.at).ok_or(FormatError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let s = self
            .body
            .get(self.at..self.at + N)
            .ok_or(FormatError::Truncated)?;
        self.at += N;
        Ok(s.try_into().expect("slice of N bytes"))
    }

    fn varint(&mut self) -> Result<i64, FormatError> {
        let mut z = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(FormatError::LongVarint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RACK;

    fn batch(t: i64) -> Batch {
        Batch {
            spec: RACK,
            columns: Arc::new(vec!["SOC".into(), "STATUS".into(), "V".into(), "X".into()]),
            rows: vec![Row {
                device: vec![1, 2],
                t,
                values: vec![
                    Some(Value::Float(55.5)),
                    Some(Value::Int(-3)),
                    Some(Value::Float(3.301)),
                    None,
                ],
                device_index: 0,
                polled: None,
            }],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("essops-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn ingest_spool_writes_wait_while_discard_holds_the_folder_lock() {
        let dir = scratch("dirlock");
        let mut s = Spool::open(&dir, SpoolLimits::default()).unwrap();
        let held = dir_lock(&dir).unwrap();
        let writer = std::thread::spawn(move || {
            s.push(&batch(20)).unwrap();
            s.rows()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!writer.is_finished(), "the write went ahead under the lock");
        assert_eq!(list(&dir).unwrap().len(), 0);
        drop(held);
        assert_eq!(writer.join().unwrap(), 1);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "the folder holds the batch only"
        );
    }

    #[test]
    fn ingest_spool_keeps_batches_across_reopen_in_order_and_values_exact() {
        let dir = scratch("order");
        let mut s = Spool::open(&dir, SpoolLimits::default()).unwrap();
        s.push(&batch(10)).unwrap();
        s.push(&batch(11)).unwrap();
        fs::write(dir.join("x.tmp"), "half").unwrap();
        // Listing leaves a writer's temp file alone; the owner's open removes it.
        assert_eq!(list(&dir).unwrap().len(), 2);
        assert!(dir.join("x.tmp").exists());
        let mut s = Spool::open(&dir, SpoolLimits::default()).unwrap();
        assert_eq!(s.rows(), 2);
        assert!(!dir.join("x.tmp").exists());
        let front = s.front(1);
        assert_eq!(front.len(), 1);
        let first = read_batch(&front[0].path).unwrap();
        assert_eq!(first.rows[0].t, 10);
        assert_eq!(first.rows[0].values, batch(10).rows[0].values);
        assert_eq!(first.rows[0].device, vec![1, 2]);
        s.remove(&front).unwrap();
        assert_eq!(s.front(100).len(), 1);
        assert_eq!(read_batch(&s.front(100)[0].path).unwrap().rows[0].t, 11);
        s.remove(&s.front(100)).unwrap();
        assert!(s.is_empty() && s.front(100).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ingest_spool_refuses_rows_past_its_cap_and_rejects_into_their_own_folder() {
        let dir = scratch("cap");
        let mut s = Spool::open(
            &dir,
            SpoolLimits {
                max_bytes: 300,
                min_free_bytes: 0,
            },
        )
        .unwrap();
        let mut pushed = 0;
        let err = loop {
            match s.push(&batch(pushed)) {
                Ok(()) => pushed += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert!(pushed >= 1 && s.bytes() <= 300);
        let f = s.front(1)[0].clone();
        let to = s.reject(&f, "22003: value out of range").unwrap();
        assert!(to.exists() && to.with_extension("error").exists());
        assert_eq!(s.rows(), pushed as u64 - 1);
        // The rejected batch still takes its room, in this run and the next.
        let err = s.push(&batch(99)).unwrap_err().to_string();
        assert!(err.contains("rejected batches"), "{err}");
        let mut again = Spool::open(&dir, s.limits).unwrap();
        assert!(again.push(&batch(99)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ingest_spool_a_corrupt_row_count_sizes_nothing() {
        let dir = scratch("corrupt");
        let mut s = Spool::open(&dir, SpoolLimits::default()).unwrap();
        s.push(&batch(10)).unwrap();
        let path = s.front(1)[0].path.clone();
        let bytes = fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, _) = text.split_once('\n').unwrap();
        let mut h: serde_json::Value = serde_json::from_str(head).unwrap();
        h["rows"] = serde_json::json!(u64::MAX / 2);
        let mut corrupt = serde_json::to_vec(&h).unwrap();
        corrupt.extend_from_slice(&bytes[head.len()..]);
        fs::write(&path, corrupt).unwrap();
        // Before: a capacity of 2^63 rows aborted the process.
        match read_batch(&path) {
            Err(FormatError::Count { found, .. }) => assert_eq!(found, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ingest_spool_varints_round_trip() {
        for v in [0, 1, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(Reader { body: &out, at: 0 }.varint().unwrap(), v);
        }
    }
}
