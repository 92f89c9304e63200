//! The on-disk spool: batches a server could not take yet, one file each,
//! replayed oldest first. A file appears whole or not at all (written to a
//! temp name, synced, renamed, directory synced), so a crash or kill -9
//! never leaves half a batch; a batch committed but not yet removed from
//! the spool is harmless, since replay inserts only absent rows.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::{Batch, Row};
use crate::schema::TableSpec;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    table: String,
    columns: Vec<String>,
    rows: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Files in replay order, with their row counts.
    files: VecDeque<(PathBuf, u64)>,
    rows: u64,
    seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool file {path} is unreadable ({reason}); moved aside to {path}.bad")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) a spool directory and lists what an earlier run left.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("batch") => names.push(path),
                // A write cut short by a crash: its rows were never acknowledged as spooled.
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        names.sort();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            files: VecDeque::new(),
            rows: 0,
            seq: 0,
        };
        for path in names {
            let rows = read_header(&path).map(|h| h.rows).unwrap_or(0);
            spool.rows += rows;
            spool.files.push_back((path, rows));
        }
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Rows waiting.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a batch durably.
    pub fn push(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.seq += 1;
        let path = self.dir.join(format!("{nanos:020}-{:08}.batch", self.seq));
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::new(File::create(&tmp)?);
            let header = Header {
                table: batch.spec.name.to_string(),
                columns: batch.columns.to_vec(),
                rows: batch.rows.len() as u64,
            };
            serde_json::to_writer(&mut out, &header)?;
            out.write_all(b"\n")?;
            for row in &batch.rows {
                serde_json::to_writer(&mut out, row)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            SpoolError::Io {
                path: tmp.clone(),
                source,
            }
        })?;
        self.rows += batch.rows.len() as u64;
        self.files.push_back((path, batch.rows.len() as u64));
        Ok(())
    }

    /// The oldest batch, read back. A file that cannot be parsed is moved
    /// aside (never deleted) and reported.
    pub fn front(&mut self) -> Option<Result<Batch, SpoolError>> {
        let (path, _) = self.files.front()?.clone();
        Some(read_batch(&path).map_err(|reason| {
            let _ = fs::rename(&path, path.with_extension("batch.bad"));
            self.forget_front();
            SpoolError::Corrupt { path, reason }
        }))
    }

    /// Removes the oldest batch once it is committed.
    pub fn pop_front(&mut self) -> Result<(), SpoolError> {
        if let Some((path, _)) = self.files.front().cloned() {
            fs::remove_file(&path).map_err(io(&path))?;
            self.forget_front();
        }
        Ok(())
    }

    fn forget_front(&mut self) {
        if let Some((_, rows)) = self.files.pop_front() {
            self.rows -= rows;
        }
    }
}

fn read_header(path: &Path) -> Result<Header, String> {
    let mut line = String::new();
    BufReader::new(File::open(path).map_err(|e| e.to_string())?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| e.to_string())
}

fn read_batch(path: &Path) -> Result<Batch, String> {
    let file = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let mut lines = file.lines();
    let header: Header = serde_json::from_str(
        &lines
            .next()
            .ok_or("empty file")?
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("header: {e}"))?;
    let spec = TableSpec::by_name(&header.table)
        .ok_or_else(|| format!("unknown table `{}`", header.table))?;
    let rows = lines
        .map(|l| {
            let l = l.map_err(|e| e.to_string())?;
            serde_json::from_str::<Row>(&l).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rows.len() as u64 != header.rows {
        return Err(format!("{} rows, header says {}", rows.len(), header.rows));
    }
    Ok(Batch {
        spec,
        columns: Arc::new(header.columns),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::value::Value;
    use crate::schema::RACK;

    #[test]
    fn ingest_spool_keeps_batches_across_reopen_in_order() {
        let dir = std::env::temp_dir().join(format!("essops-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let batch = |t: i64| Batch {
            spec: RACK,
            columns: Arc::new(vec!["SOC".into(), "STATUS".into()]),
            rows: vec![Row {
                device: vec![1, 2],
                t,
                values: vec![Some(Value::Float(55.5)), Some(Value::Int(3))],
                device_index: 0,
                polled: None,
            }],
        };
        let mut s = Spool::open(&dir).unwrap();
        s.push(&batch(10)).unwrap();
        s.push(&batch(11)).unwrap();
        fs::write(dir.join("x.tmp"), "half").unwrap();
        let mut s = Spool::open(&dir).unwrap();
        assert_eq!(s.rows(), 2);
        assert!(!dir.join("x.tmp").exists());
        let first = s.front().unwrap().unwrap();
        assert_eq!(
            (first.rows[0].t, first.rows[0].values[1]),
            (10, Some(Value::Int(3)))
        );
        s.pop_front().unwrap();
        assert_eq!(s.front().unwrap().unwrap().rows[0].t, 11);
        s.pop_front().unwrap();
        assert!(s.is_empty() && s.front().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
